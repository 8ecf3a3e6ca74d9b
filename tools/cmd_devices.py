"""`qstrata devices up [TOPOLOGY]`: run every device of a topology in this process until
Ctrl-C or SIGTERM, each on its own port of 127.0.0.1."""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys

from devices.base import ADMIN_USER, MONITOR_USER
from devices.topology import Topology
from tools.running import topology_argument, until_stopped


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("devices", help="run emulated devices", description=__doc__)
    commands = parser.add_subparsers(dest="devices_command", required=True)
    up = commands.add_parser("up", help="start every device of a topology and print who listens where")
    up.add_argument("topology", nargs="?", type=pathlib.Path,
                    help="topology file (default: the embedded Madrid network)")
    up.add_argument("--speed", type=float, default=1.0, help="emulated seconds per real second (default 1)")
    up.add_argument("--state-dir", type=pathlib.Path,
                    help="keep datastores and key pools here across runs (default: a temporary directory)")
    up.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    topology = topology_argument(args.topology, args.speed, "devices up")
    if isinstance(topology, int):
        return topology
    try:
        return asyncio.run(_run(topology, args.state_dir, args.speed))
    except OSError as error:  # a port or the state directory
        print(f"qstrata devices up: {error}", file=sys.stderr)
        return 1


async def _run(topology: Topology, state_dir: pathlib.Path | None, speed: float) -> int:
    from devices.host import DeviceHost  # imported here: it loads asyncssh, libyang and aiohttp

    host = DeviceHost(topology, state_dir=state_dir, speed=speed)
    users = host.network.users
    async with host:
        print(format_table(host.table()))
        print(f"\nnetwork {topology.name}: {len(host.devices)} devices, clock speed {speed}; NETCONF users "
              f"{ADMIN_USER}/{users[ADMIN_USER].password} (read-write), "
              f"{MONITOR_USER}/{users[MONITOR_USER].password} (read-only); Ctrl-C stops", flush=True)
        await until_stopped()
    print("stopped", flush=True)
    return 0


def format_table(rows: list) -> str:
    """The rows of `DeviceHost.table()` as aligned text."""
    header = ("DEVICE", "KIND", "NETCONF", "MODULES", "ETSI 014")
    lines = [(r.id, r.kind, f"{r.host}:{r.port}", " ".join(r.modules), r.etsi014_url or "-") for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header] + lines)
