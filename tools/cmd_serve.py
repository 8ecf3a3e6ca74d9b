"""`qstrata serve`: the NETCONF engine alone, serving any YANG modules as a validated datastore."""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import re
import secrets
import sys

import libyang

from netconf_core.datastore import DatastoreError
from netconf_core.schema import Schema
from netconf_core.server import NetconfServer, User, standard_nacm
from netconf_core.yangdirs import SEARCH_DIRS
from tools.running import until_stopped


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve YANG modules over NETCONF (no device behind them)",
                              description=__doc__)
    p.add_argument("--yang", action="append", default=[], metavar="DIR", help="directory of YANG modules (repeatable)")
    p.add_argument("--module", action="append", required=True, metavar="NAME", help="module to implement (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8300, help="TCP port (0: any free port)")
    p.add_argument("--user", default="admin", help="read-write user")
    p.add_argument("--password", help="its password (default: a random one, printed)")
    p.add_argument("--authorized-keys", type=pathlib.Path, help="OpenSSH authorized_keys file for the user")
    p.add_argument("--read-only-user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="a user of the read-only NACM group (repeatable)")
    p.add_argument("--datastore-dir", type=pathlib.Path, help="persist running/startup here")
    p.add_argument("--sshd-socket", type=pathlib.Path, metavar="PATH",
                   help="also take sessions OpenSSH's sshd hands over on this Unix socket (docs/sshd-handoff.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    password = args.password or secrets.token_urlsafe(12)
    keys = args.authorized_keys.read_text().splitlines() if args.authorized_keys else []
    users = {args.user: User(password=password, authorized_keys=[k for k in keys if k.strip()])}
    readers = []
    for spec in args.read_only_user:
        name, _, secret = spec.partition(":")
        users[name] = User(password=secret)
        readers.append(name)
    yang_dirs = [pathlib.Path(d) for d in args.yang]
    try:
        schema = Schema(args.module, yang_dirs)
    except libyang.LibyangError as err:
        print(f"qstrata serve: {_load_error(err, [*yang_dirs, *SEARCH_DIRS])}", file=sys.stderr)
        return 2
    try:
        server = NetconfServer(schema, users, host=args.host, port=args.port, datastore_dir=args.datastore_dir,
                               nacm=standard_nacm([args.user], readers), name="qstrata-serve",
                               sshd_socket=args.sshd_socket)
    except DatastoreError as err:  # a damaged file in --datastore-dir: its name and what is wrong
        print(f"qstrata serve: {err}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(server, args.user, password))


def _load_error(err: libyang.LibyangError, dirs: list[pathlib.Path]) -> str:
    """What went wrong loading the modules: the module libyang did not find (one asked for, or
    one they import) and where it looked, or libyang's own message."""
    missing = re.search(r'Data model "([^"]+)" not found', str(err))
    if missing is None:
        return f"cannot load the modules: {err}"
    return (f"module {missing.group(1)} not found; looked in {', '.join(str(d) for d in dirs)} "
            "(add its directory with --yang DIR)")


async def _serve(server: NetconfServer, user: str, password: str) -> int:
    await server.start()
    print(f"NETCONF server on {server.host}:{server.port} (user {user}, password {password})", flush=True)
    await until_stopped()
    await server.stop()
    return 0
