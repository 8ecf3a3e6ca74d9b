"""`qstrata status`: the intents (orchestrator), the QKD links with their key rates and QBER
(forwarding controller), and what is alarming now: the alarms raised in the RFC 8632 alarm
lists of the forwarding controller (QBER above threshold, a link down) and of the
connectivity controller (a span cut or tapped), links that are not ACTIVE, and spans in
another abnormal state. Read over NETCONF, like any NMS; where each level
listens comes from the file `qstrata up` writes."""
from __future__ import annotations

import argparse
import asyncio
import sys

from models import network as network_model
from models.alarms import Alarm, read_alarms
from models.forwarding import ForwardingView, QkdLink
from models.ns import ALARMS, CONNECTIVITY, NW
from netconf_core.ns import identity
from tools.cmd_intent import format_intents, intent_states, rate, table
from tools.cmd_up import StackNotFound, add_connection_options, connect, target

NETWORKS = ("subtree", f'<networks xmlns="{NW}"/>')
ALARM_NAMES = {"qber-above-threshold": "QBER alarm", "link-down": "link-down alarm",
               "span-cut": "span-cut alarm", "span-tapped": "eavesdropper alarm"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="intents, QKD links (skr, QBER) and alarms of a running stack",
                                   description=__doc__)
    add_connection_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from netconf_core.errors import RPCError

    try:
        print(asyncio.run(status(args)))
    except StackNotFound as error:
        print(f"qstrata status: {error}", file=sys.stderr)
        return 1
    except (RPCError, asyncio.TimeoutError) as error:
        print(f"qstrata status: {error or type(error).__name__}", file=sys.stderr)
        return 1
    return 0


async def status(args: argparse.Namespace) -> str:
    targets = [target(args), target(args, "forwarding"), target(args, "connectivity")]
    orchestrator, forwarding, connectivity = await asyncio.gather(*(connect(t) for t in targets))
    try:
        intents, links, spans, link_alarms, span_alarms = await asyncio.gather(
            intent_states(orchestrator), qkd_links(forwarding), fibre_spans(connectivity), raised_alarms(forwarding),
            raised_alarms(connectivity))
    finally:
        for session in (orchestrator, forwarding, connectivity):
            session.close()
    return "\n\n".join(["INTENTS\n" + format_intents(intents),
                        "QKD LINKS\n" + format_links(links),
                        "ALARMS\n" + format_alarms(links, spans, link_alarms, span_alarms)])


async def qkd_links(nc) -> list[QkdLink]:
    links = ForwardingView.parse(await nc.get(filter=NETWORKS)).links
    return [links[link_id] for link_id in sorted(links)]


async def fibre_spans(nc) -> list[dict[str, str]]:
    network = network_model.find_network(await nc.get(filter=NETWORKS),
                                         network_type=CONNECTIVITY("fibre-network"))
    out = []
    for link in network_model.links(network):
        span = CONNECTIVITY.find(link, "fibre-span")
        if span is None:
            continue
        out.append({"id": network_model.link_id(link), "status": CONNECTIVITY.text(span, "oper-status", ""),
                    "faults": ", ".join(identity(e.text or "") for e in CONNECTIVITY.all(span, "active-faults")),
                    "eavesdropper": CONNECTIVITY.text(span, "eavesdropper-present", "")})
    return out


async def raised_alarms(nc) -> list[Alarm]:
    """The alarms raised now, from the alarm list (state, not a replay of notifications)."""
    data = await nc.get(filter=("subtree", f'<alarms xmlns="{ALARMS}"><alarm-list/></alarms>'))
    return [alarm for alarm in read_alarms(data) if not alarm.cleared]


def format_links(links: list[QkdLink]) -> str:
    if not links:
        return "no QKD links"
    rows = [(l.id, f"{l.a[0]} - {l.b[0]}", l.link_type, l.status or "", rate(l.skr), rate(l.eskr),
             f"{l.qber:.2f} %" if l.qber is not None else "-",
             f"{l.channel_loss:.1f} dB" if l.channel_loss is not None else "-")
            for l in links]
    return table(("LINK", "NODES", "TYPE", "STATUS", "SKR", "ESKR", "QBER", "LOSS"), rows)


def format_alarms(links: list[QkdLink], spans: list[dict[str, str]], link_alarms: list[Alarm],
                  span_alarms: list[Alarm]) -> str:
    lines = [_alarm_line(a, "link") for a in sorted(link_alarms, key=lambda a: (a.link_id or a.resource, a.type_id))]
    lines += [_alarm_line(a, "span") for a in sorted(span_alarms, key=lambda a: (a.link_id or a.resource, a.type_id))]
    lines += [f"link {l.id} ({l.a[0]} - {l.b[0]}) is {l.status or ''}" for l in links if not l.up]
    lines += [f"span {span['id']} is {span['status']}" + (f" ({span['faults']})" if span["faults"] else "")
              for span in spans if span["status"] not in ("", "up", "down")]  # a cut span has its alarm
    return "\n".join(lines) if lines else "none"


def _alarm_line(alarm: Alarm, noun: str) -> str:
    where = f"{noun} {alarm.link_id}" if alarm.link_id else alarm.resource
    return (f"{ALARM_NAMES.get(alarm.type_id, alarm.type_id + ' alarm')} ({alarm.severity}) on {where}: "
            f"{alarm.text} (since {alarm.last_changed})")
