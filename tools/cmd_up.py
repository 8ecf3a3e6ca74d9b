"""`qstrata up [TOPOLOGY]`: run the whole stack (devices, the three stratum controllers and
the orchestrator) in this process until Ctrl-C or SIGTERM, print the address, port and
credentials of every level, and write them to `qstrata-stack.json` in the working
directory, where `qstrata intent` and `qstrata status` find them.

The orchestrator listens on port 8830 unless --port says otherwise; the other levels take
free ports of 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import sys

from devices.topology import Topology
from tools.running import topology_argument, until_stopped

STATE_FILE = "qstrata-stack.json"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_ORCHESTRATOR_PORT = 8830
DEFAULT_USER = ("admin", "admin")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run devices, controllers and orchestrator; print every level",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topology", nargs="?", type=pathlib.Path,
                        help="topology file (default: the embedded Madrid network)")
    parser.add_argument("--port", type=int, default=DEFAULT_ORCHESTRATOR_PORT,
                        help=f"the orchestrator's NETCONF port (default {DEFAULT_ORCHESTRATOR_PORT}; 0: any free port)")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        help="keep datastores, key pools and the intent store here across runs "
                             "(default: a temporary directory)")
    parser.add_argument("--speed", type=float, default=1.0, help="emulated seconds per real second (default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    topology = topology_argument(args.topology, args.speed, "up")
    if isinstance(topology, int):
        return topology
    return asyncio.run(_run(topology, args.state_dir, args.speed, args.port))


async def _run(topology: Topology, state_dir: pathlib.Path | None, speed: float, port: int) -> int:
    from tools.stack import Stack  # imported here: it loads asyncssh, libyang and aiohttp

    stack = Stack(topology, state_dir=state_dir, speed=speed, orchestrator_port=port)
    print(f"starting network {topology.name} ...", flush=True)
    try:
        await stack.start()
    except OSError as error:
        print(f"qstrata up: cannot start the stack: {error}", file=sys.stderr)
        return 1
    state_file = pathlib.Path.cwd() / STATE_FILE
    try:
        rows = stack.table()
        print(format_levels(rows))
        write_state(state_file, topology.name, rows)
        user, password = rows[-1].read_write
        reader, reader_password = rows[-1].read_only
        print(f"\nnetwork {topology.name}: {len(rows)} NETCONF servers on {DEFAULT_HOST}; users {user}/{password} "
              f"(read-write), {reader}/{reader_password} (read-only). Wrote {STATE_FILE}. Ctrl-C stops.", flush=True)
        await until_stopped()
    finally:
        state_file.unlink(missing_ok=True)
        await stack.stop()
    print("stopped", flush=True)
    return 0


def format_levels(rows: list) -> str:
    """The rows of `Stack.table()` as aligned text, controllers and orchestrator last."""
    header = ("LEVEL", "NAME", "NETCONF", "READ-WRITE", "READ-ONLY", "ETSI 014")
    lines = [(r.level, r.name, f"{r.host}:{r.port}", "/".join(r.read_write), "/".join(r.read_only),
              r.etsi014_url or "-") for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header] + lines)


def write_state(path: pathlib.Path, topology: str, rows: list) -> None:
    """Who listens where, for the other commands; readable by this user only (it holds passwords)."""
    data = {"topology": topology, "pid": os.getpid(), "levels": [dataclasses.asdict(r) for r in rows]}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out, indent=1)


# --- how the other commands reach the stack ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """Where one level listens and how to log in."""

    level: str
    host: str
    port: int
    user: str
    password: str


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help=f"orchestrator address (default: from {STATE_FILE}, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int,
                        help=f"orchestrator NETCONF port (default: from {STATE_FILE}, else {DEFAULT_ORCHESTRATOR_PORT})")
    parser.add_argument("--user", help=f"NETCONF user (default: from {STATE_FILE}, else {DEFAULT_USER[0]})")
    parser.add_argument("--password", help=f"its password (default: from {STATE_FILE}, else {DEFAULT_USER[1]})")
    parser.add_argument("--stack-file", type=pathlib.Path, default=pathlib.Path(STATE_FILE),
                        help=f"the file `qstrata up` wrote (default ./{STATE_FILE})")


class StackNotFound(Exception):
    pass


def levels(args: argparse.Namespace) -> dict[str, dict]:
    """The levels `qstrata up` wrote, by level (empty when there is no file)."""
    path: pathlib.Path = args.stack_file
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {row["level"]: row for row in data["levels"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StackNotFound(f"{path} is not a file written by `qstrata up`: {error}") from None


def target(args: argparse.Namespace, level: str = "orchestrator") -> Target:
    """Connection details of a level: flags (address and port for the orchestrator only),
    then the stack file, then the defaults of `qstrata up` (the orchestrator only). The
    orchestrator is reached as the read-write user (intents are edited there), the
    controllers as the read-only one (they are only read)."""
    row = levels(args).get(level)
    if level == "orchestrator":
        user = args.user or (row["read_write"][0] if row else DEFAULT_USER[0])
        password = args.password or (row["read_write"][1] if row else DEFAULT_USER[1])
        return Target(level, args.host or (row["host"] if row else DEFAULT_HOST),
                      args.port or (row["port"] if row else DEFAULT_ORCHESTRATOR_PORT), user, password)
    if row is None:
        raise StackNotFound(f"no {level} level in {args.stack_file}: run `qstrata up` in this directory "
                            f"or give --stack-file")
    return Target(level, row["host"], row["port"], args.user or row["read_only"][0],
                  args.password or row["read_only"][1])


async def connect(t: Target):
    from netconf_core.client import NetconfClient

    try:
        return await NetconfClient.connect(t.host, t.port, t.user, password=t.password, timeout=10)
    except (OSError, asyncio.TimeoutError) as error:
        raise StackNotFound(f"cannot reach the {t.level} at {t.host}:{t.port}: {error or type(error).__name__}; "
                            f"is `qstrata up` running?") from None
