"""`qstrata console`: the operator's console, a web page on loopback that shows the levels of
the network `qstrata up` runs (from the file it writes, `qstrata-stack.json`) together and
live, and acts on them as the person logged in.

It logs in to every level over NETCONF, pinning the host keys the stack file holds (or those
of a known_hosts file, --known-hosts). Its users are the levels' own: the read-write user
(admin) may cut and repair spans, attach eavesdroppers, crash devices and apply intents; the
read-only user (monitor) may look, and every action of theirs is refused by the levels, whose
access rules judge it. Passwords are the ones `qstrata up` printed.

It follows each level by an on-change YANG-Push subscription where the level offers one
(--follow push, the default: a change is applied to the console's copy, no read), or re-reads
a level on each of its notifications (--follow reread). Where the sites are drawn is kept in
--state-dir (default: `qstrata-console/` beside the stack file), one layout per network."""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys

from tools.cmd_up import STATE_FILE, StackNotFound
from tools.console_stack import console_levels, console_users


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("console", help="the operator's web console of a running stack",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="the console's HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--stack-file", type=pathlib.Path, default=pathlib.Path(STATE_FILE),
                        help=f"the file `qstrata up` wrote (default ./{STATE_FILE})")
    parser.add_argument("--known-hosts", type=pathlib.Path,
                        help="an OpenSSH known_hosts file to check the levels' host keys against instead")
    parser.add_argument("--follow", choices=("push", "reread"), default="push",
                        help="how a level's changes reach the console: its YANG-Push updates applied to a copy "
                             "(default), or a read of the level on each notification")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        help="where the layout is kept (default: qstrata-console/ beside the stack file)")
    parser.add_argument("--parent-pid", type=int, metavar="PID", help="exit when process PID ends (Linux)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    if not 0 <= args.port <= 65535:
        print(f"qstrata console: --port must be within 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        data = json.loads(args.stack_file.read_text())
        rows, topology = data["levels"], data.get("topology", "qstrata")
        levels = console_levels(rows, str(args.known_hosts) if args.known_hosts else None)
    except FileNotFoundError:
        print(f"qstrata console: no {args.stack_file}: run `qstrata up` in this directory, or give --stack-file",
              file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"qstrata console: {StackNotFound(f'{args.stack_file} is not a file written by `qstrata up`: {error}')}",
              file=sys.stderr)
        return 1
    if args.parent_pid is not None:
        from tools.cmd_run import _exit_with

        if not _exit_with(args.parent_pid):
            return 1
    state_dir = args.state_dir or args.stack_file.absolute().parent / "qstrata-console"
    return asyncio.run(_serve(levels, console_users(rows), args.port, topology, args.follow, state_dir))


async def _serve(levels: list, users: dict, port: int, title: str, follow: str, state_dir: pathlib.Path) -> int:
    from console.server import ConsoleServer
    from tools.console_stack import start_line
    from tools.running import until_stopped

    console = ConsoleServer(levels, users, port=port, title=title, follow=follow, state_dir=state_dir)
    try:
        await console.start()
    except OSError as error:
        print(f"qstrata console: cannot listen on 127.0.0.1:{port}: {error.strerror}", file=sys.stderr)
        return 1
    try:
        print(start_line(console, users), flush=True)
        print("Ctrl-C stops.", flush=True)
        await until_stopped()
    finally:
        await console.stop()
    return 0
