"""`qstrata fault`: inject faults into a running emulated network over NETCONF, as any NMS
would, through the device at --host/--port:

    cut-span SPAN | repair-span SPAN                 the fibre plant device's RPCs
    eavesdrop SPAN --fraction P | clear-eavesdropper SPAN
    drain-pool KM LINK                               the key manager's flush action
    crash DEVICE [--outage S] | restart DEVICE       the device's restart action (a QKD node
                                                     or a key manager): down for the outage
                                                     (none for restart), then back from disk

DEVICE and KM name the device at --host/--port (a QKD node by its topology id or its
qkdn_id); the command refuses to act on another one.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

import asyncssh
from lxml import etree

from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError

PLANT_NS = "urn:qstrata:yang:qi-fibre-plant"
KM_NS = "urn:qstrata:yang:qi-key-manager"
NODE_NS = "urn:etsi:qkd:yang:etsi-qkd-node"
NODE_EXT_NS = "urn:qstrata:yang:qi-qkd-node-ext"
ACTION_NS = "urn:ietf:params:xml:ns:yang:1"
DEFAULT_CRASH_OUTAGE_S = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--host", default="127.0.0.1", help="device address (default 127.0.0.1)")
    connection.add_argument("--port", type=int, required=True, help="the device's NETCONF port")
    connection.add_argument("--user", default="admin", help="NETCONF user (default admin)")
    connection.add_argument("--password", default="admin", help="its password (default admin)")
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


async def _act(args: argparse.Namespace, run) -> int:
    where = f"{args.host}:{args.port}"
    try:
        nc = await NetconfClient.connect(args.host, args.port, args.user, args.password)
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
        op = etree.Element(f"{{{PLANT_NS}}}{rpc}", nsmap={None: PLANT_NS})
        etree.SubElement(op, f"{{{PLANT_NS}}}span-id").text = args.span
        if getattr(args, "fraction", None) is not None:
            etree.SubElement(op, f"{{{PLANT_NS}}}fraction").text = f"{args.fraction:.9f}"
        await nc.dispatch(op)
        return f"span {args.span} {done}"
    return run


# -- key managers and QKD nodes --------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    kind: str  # "key-manager" or "qkd-node"
    names: frozenset[str]  # what the device answers to: a km-id, a qkdn_id


async def _identify(nc: NetconfClient) -> Identity:
    data = await nc.get(("subtree", f'<key-manager xmlns="{KM_NS}"><km-id/></key-manager>'
                                    f'<qkd_node xmlns="{NODE_NS}"><qkdn_id/></qkd_node>'))
    if data is not None:
        km_id = data.findtext(f"{{{KM_NS}}}key-manager/{{{KM_NS}}}km-id")
        if km_id:
            return Identity("key-manager", frozenset({km_id.strip()}))
        qkdn_id = data.findtext(f"{{{NODE_NS}}}qkd_node/{{{NODE_NS}}}qkdn_id")
        if qkdn_id:
            return Identity("qkd-node", frozenset({qkdn_id.strip()}))
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
    reply = await nc.dispatch(
        f'<action xmlns="{ACTION_NS}"><key-manager xmlns="{KM_NS}"><key-pools><key-pool>'
        f"<link-id>{_xml_text(args.link)}</link-id><flush/></key-pool></key-pools></key-manager></action>")
    discarded = reply.findtext(f"{{{KM_NS}}}discarded") if reply is not None else None
    return f"key manager {args.km}: pool of link {args.link} drained at both ends ({discarded or 0} bits discarded)"


async def _restart(nc: NetconfClient, args: argparse.Namespace) -> str:
    identity = await _expect(nc, args.device, ("key-manager", "qkd-node"))
    outage = f"<outage>{args.outage}</outage>"
    if identity.kind == "key-manager":
        body = f'<key-manager xmlns="{KM_NS}"><restart>{outage}</restart></key-manager>'
    else:
        body = f'<qkd_node xmlns="{NODE_NS}"><restart xmlns="{NODE_EXT_NS}">{outage}</restart></qkd_node>'
    await nc.dispatch(f'<action xmlns="{ACTION_NS}">{body}</action>')
    return (f"{identity.kind} {args.device} restarting" if args.outage == 0
            else f"{identity.kind} {args.device} down for {args.outage} s, then back from disk")


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
