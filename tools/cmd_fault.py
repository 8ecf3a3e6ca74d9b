"""`qstrata fault`: inject faults into a running emulated network over NETCONF, as any NMS
would, through the device at --host/--port:

    cut-span SPAN | repair-span SPAN                 the fibre plant device's RPCs
    eavesdrop SPAN --fraction P | clear-eavesdropper SPAN
    drain-pool KM LINK                               the key manager's flush action
    crash DEVICE [--outage S] | restart DEVICE       the device's restart action (a QKD node
                                                     or a key manager): down for the outage
                                                     (none for restart), then back from disk

DEVICE and KM name the device at --host/--port (a QKD node by its topology id or its
qkdn_id); the command refuses to act on another one. The device's host key is checked
against the one `qstrata up` wrote in its stack file (--stack-file, by host and port), or a
known_hosts file (--known-hosts); the user and password default to that file's read-write
account. A device found in neither is refused unless --no-host-key-check is given.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from dataclasses import dataclass

import asyncssh

from models.ns import ETSI_NODE, FIBRE_PLANT, KEY_MANAGER, NODE_EXT
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.ns import YANG_XML
from netconf_core.ssh import trusted_host_keys
from tools.cmd_up import STATE_FILE

DEFAULT_CRASH_OUTAGE_S = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--host", default="127.0.0.1", help="device address (default 127.0.0.1)")
    connection.add_argument("--port", type=int, required=True, help="the device's NETCONF port")
    connection.add_argument("--user", help="NETCONF user (default: from the stack file, else admin)")
    connection.add_argument("--password", help="its password (default: from the stack file, else admin)")
    connection.add_argument("--stack-file", type=pathlib.Path, default=pathlib.Path(STATE_FILE),
                            help=f"the file `qstrata up` wrote, for the device's host key (default ./{STATE_FILE})")
    connection.add_argument("--known-hosts", type=pathlib.Path,
                            help="an OpenSSH known_hosts file to check the device's host key against instead")
    connection.add_argument("--no-host-key-check", action="store_true",
                            help="accept any host key (anyone on the path can pose as the device): tests only")
    parser = subparsers.add_parser("fault", help="inject faults over NETCONF", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="fault", required=True)

    def command(name: str, help: str, *arguments: tuple[str, str], run) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, parents=[connection])
        for argument, text in arguments:
            sub.add_argument(argument, help=text)
        sub.set_defaults(func=lambda args: asyncio.run(_act(args, run)))
        return sub

    span = ("span", "span id")
    command("cut-span", "cut a fibre span (at the fibre plant device)", span, run=_plant_rpc("cut-span", "cut"))
    command("repair-span", "repair a cut span (at the fibre plant device)", span,
            run=_plant_rpc("repair-span", "repaired"))
    eavesdrop = command("eavesdrop", "attach an intercept-resend eavesdropper to a span (at the fibre plant device)",
                        span, run=_plant_rpc("attach-eavesdropper", "tapped"))
    eavesdrop.add_argument("--fraction", type=_fraction, required=True,
                           help="fraction of the pulses it intercepts, in (0, 1]")
    command("clear-eavesdropper", "remove a span's eavesdropper (at the fibre plant device)", span,
            run=_plant_rpc("remove-eavesdropper", "no longer tapped"))
    command("drain-pool", "empty a key pool at both ends of its link (at the key manager KM)",
            ("km", "key manager id"), ("link", "link id (qkdl_id) of the pool"), run=_drain_pool)
    crash = command("crash", "take a QKD node or key manager down for an outage, then back from disk",
                    ("device", "device id"), run=_restart)
    crash.add_argument("--outage", type=int, default=DEFAULT_CRASH_OUTAGE_S,
                       help=f"seconds of emulated time the device stays down (default {DEFAULT_CRASH_OUTAGE_S})")
    command("restart", "restart a QKD node or key manager now, from disk", ("device", "device id"),
            run=_restart).set_defaults(outage=0)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"the fraction must be within (0, 1], got {text}")
    return value


def _login(args: argparse.Namespace) -> tuple[str, str, object]:
    """(user, password, known_hosts) for the device at --host/--port."""
    row = None
    if args.stack_file.exists():
        try:
            rows = json.loads(args.stack_file.read_text())["levels"]
            row = next((r for r in rows if (r["host"], r["port"]) == (args.host, args.port)), None)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise FaultError(f"{args.stack_file} is not a file written by `qstrata up`: {error}") from None
    user = args.user or (row["read_write"][0] if row else "admin")
    password = args.password or (row["read_write"][1] if row else "admin")
    if args.known_hosts:
        return user, password, str(args.known_hosts)
    if row is not None and row.get("host_key"):
        return user, password, trusted_host_keys(row["host_key"])
    if args.no_host_key_check:
        return user, password, None
    raise FaultError(f"no host key for {args.host}:{args.port}: not in {args.stack_file} (run this where `qstrata up` "
                     "runs, or give --stack-file or --known-hosts)")


async def _act(args: argparse.Namespace, run) -> int:
    where = f"{args.host}:{args.port}"
    try:
        user, password, known_hosts = _login(args)
    except FaultError as error:
        print(f"qstrata fault: {error}", file=sys.stderr)
        return 2
    try:
        nc = await NetconfClient.connect(args.host, args.port, user, password, known_hosts=known_hosts)
    except (OSError, asyncio.TimeoutError) as error:
        print(f"qstrata fault: cannot open a NETCONF session to {where}: {error}", file=sys.stderr)
        return 2
    except asyncssh.Error as error:  # authentication and SSH protocol errors
        print(f"qstrata fault: NETCONF session to {where} refused: {error}", file=sys.stderr)
        return 2
    try:
        async with nc:
            print(await run(nc, args))
    except (RPCError, FaultError) as error:
        print(f"qstrata fault: {where}: {error}", file=sys.stderr)
        return 1
    return 0


class FaultError(Exception):
    """The device at the address is not the one the command names, or cannot take the fault."""


# -- the fibre plant -------------------------------------------------------------------------

def _plant_rpc(rpc: str, done: str):
    async def run(nc: NetconfClient, args: argparse.Namespace) -> str:
        fraction = getattr(args, "fraction", None)
        await nc.dispatch(FIBRE_PLANT.element(rpc, leaves={
            "span-id": args.span, "fraction": f"{fraction:.9f}" if fraction is not None else None}))
        return f"span {args.span} {done}"
    return run


# -- key managers and QKD nodes --------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    kind: str  # "key-manager" or "qkd-node"
    names: frozenset[str]  # what the device answers to: a km-id, a qkdn_id


async def _identify(nc: NetconfClient) -> Identity:
    data = await nc.get(("subtree", f'<key-manager xmlns="{KEY_MANAGER}"><km-id/></key-manager>'
                                    f'<qkd_node xmlns="{ETSI_NODE}"><qkdn_id/></qkd_node>'))
    if data is not None:
        km_id = KEY_MANAGER.text(data, "key-manager/km-id")
        if km_id:
            return Identity("key-manager", frozenset({km_id}))
        qkdn_id = ETSI_NODE.text(data, "qkd_node/qkdn_id")
        if qkdn_id:
            return Identity("qkd-node", frozenset({qkdn_id}))
    raise FaultError("the device is neither a key manager nor a QKD node")


async def _expect(nc: NetconfClient, name: str, kinds: tuple[str, ...]) -> Identity:
    identity = await _identify(nc)
    if identity.kind not in kinds:
        raise FaultError(f"the device is a {identity.kind}, not a {' or '.join(kinds)}")
    from devices.qkd_node import node_uuid  # how the emulator names a topology's QKD nodes

    if name not in identity.names and node_uuid(name) not in identity.names:
        raise FaultError(f"the device is {' / '.join(sorted(identity.names))}, not {name}")
    return identity


async def _drain_pool(nc: NetconfClient, args: argparse.Namespace) -> str:
    await _expect(nc, args.km, ("key-manager",))
    action = YANG_XML.element("action")
    pool = KEY_MANAGER.sub(KEY_MANAGER.sub(KEY_MANAGER.sub(action, "key-manager"), "key-pools"), "key-pool")
    KEY_MANAGER.sub(pool, "link-id", args.link)
    KEY_MANAGER.sub(pool, "flush")
    reply = await nc.dispatch(action)
    discarded = KEY_MANAGER.text(reply, "discarded")
    return f"key manager {args.km}: pool of link {args.link} drained at both ends ({discarded or 0} bits discarded)"


async def _restart(nc: NetconfClient, args: argparse.Namespace) -> str:
    identity = await _expect(nc, args.device, ("key-manager", "qkd-node"))
    if identity.kind == "key-manager":
        action = YANG_XML.element("action")
        KEY_MANAGER.sub(KEY_MANAGER.sub(KEY_MANAGER.sub(action, "key-manager"), "restart"), "outage", args.outage)
    else:  # a QKD node's restart is an RPC of its device
        action = NODE_EXT.element("restart", leaves={"outage": args.outage})
    await nc.dispatch(action)
    return (f"{identity.kind} {args.device} restarting" if args.outage == 0
            else f"{identity.kind} {args.device} down for {args.outage} s, then back from disk")

