"""`qstrata federation`: the federation platform's settlement and ratings, over NETCONF like any client.

    qstrata federation settle MEMBER [--from T] [--to T]   what MEMBER is owed and owes in a period
    qstrata federation ratings                             the members' ratings the user may see

T is a date (2026-12-01, midnight UTC) or a date-and-time (2026-12-01T12:00:00Z); the period
is from --from (default: 30 days before --to) to --to (default: now). The platform is reached
at --host/--port as --user with --password or, kept out of the process list, the first line of
--password-file (a member's own account or a service user may settle its own member only; the
administrator any), its host key checked against --host-key (an OpenSSH public key line) or
--known-hosts.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import pathlib
import sys

DEFAULT_DAYS = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("federation", help="settlement and ratings on the federation platform",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="federation_command", required=True)
    settle = commands.add_parser("settle", help="one member's settlement for a period")
    settle.add_argument("member")
    settle.add_argument("--from", dest="start", type=_time, help="start of the period (included)")
    settle.add_argument("--to", dest="end", type=_time, help="end of the period (excluded; default now)")
    settle.set_defaults(func=lambda args: _run(_settle(args)))
    ratings = commands.add_parser("ratings", help="the members' ratings (delivery, availability, disputes)")
    ratings.set_defaults(func=lambda args: _run(_ratings(args)))
    for sub in (settle, ratings):
        sub.add_argument("--host", default="127.0.0.1", help="platform address (default 127.0.0.1)")
        sub.add_argument("--port", type=int, required=True, help="platform NETCONF port")
        sub.add_argument("--user", default="admin", help="NETCONF user (default admin)")
        secret = sub.add_mutually_exclusive_group(required=True)
        secret.add_argument("--password", help="its password (one that starts with '-' as --password=VALUE)")
        secret.add_argument("--password-file", dest="password", type=_password_file, metavar="FILE",
                            help="a file whose first line is its password")
        trust = sub.add_mutually_exclusive_group(required=True)
        trust.add_argument("--host-key", help="the platform's SSH host key (OpenSSH public key line)")
        trust.add_argument("--known-hosts", type=pathlib.Path, help="an OpenSSH known_hosts file")


def _time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or date-and-time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _password_file(name: str) -> str:
    """The password in the file `name`, read as deployments read theirs (tools.deployment.secret)."""
    from tools.deployment import secret

    try:
        password = secret(None, pathlib.Path(name))
    except (OSError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"cannot read the password file: {error}") from None
    if not password:
        raise argparse.ArgumentTypeError(f"the password file {name} is empty")
    return password


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _run(coro) -> int:
    from netconf_core.errors import RPCError

    try:
        return asyncio.run(coro)
    except RPCError as error:
        print(f"qstrata federation: the platform refused: {error.tag}: {error.message}", file=sys.stderr)
    except (OSError, asyncio.TimeoutError) as error:
        print(f"qstrata federation: cannot reach the platform: {error or type(error).__name__}", file=sys.stderr)
    return 1


async def _connect(args: argparse.Namespace):
    from netconf_core.client import NetconfClient
    from netconf_core.ssh import trusted_host_keys

    known_hosts = trusted_host_keys(args.host_key) if args.host_key else str(args.known_hosts)
    return await NetconfClient.connect(args.host, args.port, args.user, password=args.password,
                                       known_hosts=known_hosts, timeout=10)


async def _settle(args: argparse.Namespace) -> int:
    from models.federation import read_settlement, settle_request

    end = args.end or dt.datetime.now(dt.timezone.utc)
    start = args.start or end - dt.timedelta(days=DEFAULT_DAYS)
    async with await _connect(args) as nc:
        bill = read_settlement(await nc.dispatch(settle_request(args.member, _stamp(start), _stamp(end))))
    print(f"settlement of {bill.member_id} from {bill.period_start} to {bill.period_end}")
    print(f"{'direction':<11} {'counterparty':<13} {'agreement':<12} {'keys':>8} {'bits':>10} {'credits/kbit':>13} "
          f"{'amount':>14} {'disputed keys':>14}")
    for line in bill.lines:
        print(f"{line.direction:<11} {line.counterparty:<13} {line.agreement or '-':<12} {line.keys:>8} "
              f"{line.bits:>10} {line.price_per_kbit:>13} {line.amount:>14} {line.disputed_keys:>14}")
    for d in bill.disputes:
        print(f"dispute {d.dispute_id}: service {d.service_id}, link {d.hop} from {d.sender} to {d.receiver}: "
              f"{d.disputed[0]} keys not billed ({d.time})")
    print(f"receivable {bill.receivable}  payable {bill.payable}  net {bill.net}")
    return 0


async def _ratings(args: argparse.Namespace) -> int:
    from models.federation import read_ratings
    from models.ns import FEDERATION

    async with await _connect(args) as nc:
        ratings = read_ratings(await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"><ratings/></federation>')))
    print(f"{'member':<10} {'requested':>10} {'delivered':>10} {'delivery':>9} {'availability':>13} {'disputes':>9} "
          f"{'score':>6}")
    for member, r in sorted(ratings.items()):
        print(f"{member:<10} {r.requested_keys:>10} {r.delivered_keys:>10} {r.delivery_ratio:>9} "
              f"{r.availability:>13} {r.disputes:>9} {r.score:>6}" + ("  below the threshold" if r.below_threshold
                                                                      else ""))
    return 0
