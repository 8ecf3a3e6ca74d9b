"""`qstrata conform`: run the conformance suite (tools/conform.py) against any server: NETCONF,
and RESTCONF and YANG-Push where the server offers them."""
from __future__ import annotations

import argparse
import json
import ssl
import sys

from ncclient.transport.errors import TransportError

from tools import conform


def register(subparsers) -> None:
    p = subparsers.add_parser("conform", help="NETCONF, RESTCONF and YANG-Push conformance suite (RFC 6241/6242/5277/6243/6022, "
                              "8040/8072, 8639/8641)",
                              description=conform.__doc__.split("\n\n")[0],
                              epilog=f"Checks of edits, filters, errors and defaults need the server to serve "
                                     f"the engine test model {conform.MODULE} (qstrata serve --yang "
                                     f"{conform.MODEL_DIR} --module {conform.MODULE}); against other servers "
                                     "they are skipped, each naming the module it needs. The RESTCONF checks run "
                                     "against --restconf, or the address the server's ietf-restconf-monitoring "
                                     "names; without one they are skipped. "
                                     "Exit status: 0 when no check fails (skipped checks do not fail), 1 when "
                                     "one does, 2 when no session could be opened")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--user", required=True)
    auth = p.add_mutually_exclusive_group(required=True)
    auth.add_argument("--password")
    auth.add_argument("--key", metavar="FILE", help="SSH private key file")
    p.add_argument("--restconf", metavar="URL", help="the server's RESTCONF address, e.g. http://127.0.0.1:8080 "
                   "(default: as its restconf-state names it)")
    p.add_argument("--restconf-cafile", metavar="FILE", help="CA certificates to verify an HTTPS RESTCONF server")
    p.add_argument("--check", action="append", metavar="ID", help="run only this check (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    known = {c.id for c in conform.CHECKS}
    unknown = set(args.check or []) - known
    if unknown:
        print(f"unknown check id(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    context = ssl.create_default_context(cafile=args.restconf_cafile) if args.restconf_cafile else None
    suite = conform.Suite(args.host, args.port, args.user, password=args.password, key_file=args.key,
                          restconf=args.restconf, restconf_ssl=context)
    try:
        results = suite.run(set(args.check) if args.check else None)
    except (TransportError, OSError) as err:
        print(f"cannot open a NETCONF session to {args.host}:{args.port} as {args.user}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(conform.as_json(results), indent=2) if args.json else conform.as_table(results))
    return 1 if conform.failed(results) else 0
