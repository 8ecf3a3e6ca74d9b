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

from lxml import etree

from orchestrator.views import Alarm, parse_alarms
from tools.cmd_intent import format_intents, intent_states, rate, table
from tools.cmd_up import StackNotFound, add_connection_options, connect, target

NW_NS = "urn:ietf:params:xml:ns:yang:ietf-network"
NT_NS = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD_NS = "urn:qstrata:yang:qi-forwarding"
CONN_NS = "urn:qstrata:yang:qi-connectivity"
AL_NS = "urn:ietf:params:xml:ns:yang:ietf-alarms"
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


def _t(element: etree._Element, path: str) -> str:
    return (element.findtext(path) or "").strip()


async def qkd_links(nc) -> list[dict[str, str]]:
    data = await nc.get(filter=("subtree", f'<networks xmlns="{NW_NS}"/>'))
    f = lambda tag: f"{{{FWD_NS}}}{tag}"
    t = lambda tag: f"{{{NT_NS}}}{tag}"
    out = []
    for link in data.iter(t("link")) if data is not None else []:
        qkd = link.find(f("qkd-link"))
        if qkd is None:
            continue
        out.append({"id": _t(link, t("link-id")), "a": _t(link, f"{t('source')}/{t('source-node')}"),
                    "b": _t(link, f"{t('destination')}/{t('dest-node')}"),
                    "type": _t(qkd, f("link-type")).split(":")[-1], "status": _t(qkd, f("status")).split(":")[-1],
                    "skr": _t(qkd, f("skr")), "eskr": _t(qkd, f("eskr")), "qber": _t(qkd, f("qber")),
                    "loss": _t(qkd, f("channel-loss"))})
    return sorted(out, key=lambda l: l["id"])


async def fibre_spans(nc) -> list[dict[str, str]]:
    data = await nc.get(filter=("subtree", f'<networks xmlns="{NW_NS}"/>'))
    c = lambda tag: f"{{{CONN_NS}}}{tag}"
    out = []
    for link in data.iter(f"{{{NT_NS}}}link") if data is not None else []:
        span = link.find(c("fibre-span"))
        if span is None:
            continue
        out.append({"id": _t(link, f"{{{NT_NS}}}link-id"), "status": _t(span, c("oper-status")),
                    "faults": ", ".join((e.text or "").split(":")[-1] for e in span.iterfind(c("active-faults"))),
                    "eavesdropper": _t(span, c("eavesdropper-present"))})
    return out


async def raised_alarms(nc) -> list[Alarm]:
    """The alarms raised now, from the alarm list (state, not a replay of notifications)."""
    data = await nc.get(filter=("subtree", f'<alarms xmlns="{AL_NS}"><alarm-list/></alarms>'))
    return [alarm for alarm in parse_alarms(data) if not alarm.cleared]


def format_links(links: list[dict[str, str]]) -> str:
    if not links:
        return "no QKD links"
    rows = [(l["id"], f"{l['a']} - {l['b']}", l["type"], l["status"], rate(l["skr"]), rate(l["eskr"]),
             f"{float(l['qber']):.2f} %" if l["qber"] else "-", f"{float(l['loss']):.1f} dB" if l["loss"] else "-")
            for l in links]
    return table(("LINK", "NODES", "TYPE", "STATUS", "SKR", "ESKR", "QBER", "LOSS"), rows)


def format_alarms(links: list[dict[str, str]], spans: list[dict[str, str]], link_alarms: list[Alarm],
                  span_alarms: list[Alarm]) -> str:
    lines = [_alarm_line(a, "link") for a in sorted(link_alarms, key=lambda a: (a.link_id or a.resource, a.type_id))]
    lines += [_alarm_line(a, "span") for a in sorted(span_alarms, key=lambda a: (a.link_id or a.resource, a.type_id))]
    lines += [f"link {l['id']} ({l['a']} - {l['b']}) is {l['status']}" for l in links if l["status"] != "ACTIVE"]
    lines += [f"span {span['id']} is {span['status']}" + (f" ({span['faults']})" if span["faults"] else "")
              for span in spans if span["status"] not in ("", "up", "down")]  # a cut span has its alarm
    return "\n".join(lines) if lines else "none"


def _alarm_line(alarm: Alarm, noun: str) -> str:
    where = f"{noun} {alarm.link_id}" if alarm.link_id else alarm.resource
    return (f"{ALARM_NAMES.get(alarm.type_id, alarm.type_id + ' alarm')} ({alarm.severity}) on {where}: "
            f"{alarm.text} (since {alarm.last_changed})")
