"""`qstrata intent`: key-service intents on the orchestrator, over NETCONF like any NMS.

    qstrata intent apply FILE [--dry-run] [--no-wait]   create or change intents (YAML, JSON or XML)
    qstrata intent list                                 every intent, its state and path
    qstrata intent show NAME                            conditions, paths and history of one intent
    qstrata intent delete NAME                          tear an intent down and forget it

An intent file in YAML or JSON mirrors the qi-intent tree: one intent, a list of intents,
or `intents:` holding them, e.g.

    name: quintin-distrito
    endpoints: {source-sae: sae-quintin, destination-sae: sae-distrito}
    min-rate: 20000          # bit/s
    priority: 150            # optional, like every other leaf of qi-intent
    avoid-nodes: [qkd-norte]

An XML file holds <intents> or <intent> in the qi-intent namespace. `apply` edits the
candidate and commits it (with --dry-run: asks the orchestrator what the commit would do on
each stratum, then discards the candidate), then follows the intents until they are active
or failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys

import yaml
from lxml import etree

from models.intent import INTENTS_FILTER, read_intents
from models.intent import IntentInputError as IntentFileError, intents_from_data
from models.ns import INTENT
from netconf_core.ns import BASE
from tools.cmd_up import StackNotFound, add_connection_options, connect, target

SETTLED = {"active", "failed", "degraded", "removed"}
DEFAULT_WAIT_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("intent", help="create, list, show and delete intents on the orchestrator",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="intent_command", required=True)
    apply = commands.add_parser("apply", help="create or change the intents of a file")
    apply.add_argument("file", type=pathlib.Path, help="intents in YAML, JSON (.json) or XML (.xml)")
    apply.add_argument("--dry-run", action="store_true",
                       help="only report what each stratum would be asked to do; change nothing")
    apply.add_argument("--no-wait", action="store_true", help="return after the commit")
    apply.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S,
                       help=f"seconds to wait for the intents to settle (default {DEFAULT_WAIT_S:g})")
    apply.set_defaults(func=lambda args: _run(_apply(args)))
    listing = commands.add_parser("list", help="every intent: state, rate, path")
    listing.set_defaults(func=lambda args: _run(_list(args)))
    show = commands.add_parser("show", help="one intent: conditions, paths and history")
    show.add_argument("name")
    show.set_defaults(func=lambda args: _run(_show(args)))
    delete = commands.add_parser("delete", help="tear an intent down and forget it")
    delete.add_argument("name")
    delete.set_defaults(func=lambda args: _run(_delete(args)))
    for sub in (apply, listing, show, delete):
        add_connection_options(sub)


def _run(coro) -> int:
    from netconf_core.errors import RPCError

    try:
        return asyncio.run(coro)
    except (IntentFileError, StackNotFound) as error:
        print(f"qstrata intent: {error}", file=sys.stderr)
        return 1
    except RPCError as error:
        print(f"qstrata intent: the orchestrator refused: {error}", file=sys.stderr)
        return 1


# --- intent files ---------------------------------------------------------------------------

def load_intents(path: pathlib.Path) -> list[etree._Element]:
    """The <intent> elements of a file, or IntentFileError naming the file, intent and problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise IntentFileError(f"{path}: cannot read: {error.strerror}") from None
    if path.suffix == ".xml" or text.lstrip().startswith("<"):
        return _xml_intents(path, text)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise IntentFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    return intents_from_data(data, str(path))


def _xml_intents(path: pathlib.Path, text: str) -> list[etree._Element]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    try:
        root = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError as error:
        raise IntentFileError(f"{path}: not well-formed XML: {error}") from None
    if root.tag == BASE("config") and len(root) == 1:
        root = root[0]
    if root.tag == INTENT("intents"):
        intents = INTENT.all(root, "intent")
    elif root.tag == INTENT("intent"):
        intents = [root]
    else:
        raise IntentFileError(f"{path}: the root element must be <intents> or <intent> in namespace {INTENT}, "
                              f"not <{root.tag}>")
    if not intents:
        raise IntentFileError(f"{path}: no intent in the file")
    return intents


def _names(intents: list[etree._Element]) -> list[str]:
    return [INTENT.text(i, "name", "") for i in intents]


# --- commands -------------------------------------------------------------------------------

async def _apply(args: argparse.Namespace) -> int:
    intents = load_intents(args.file)
    config = INTENT.element("intents")
    config.extend(intents)
    async with await connect(target(args)) as nc:
        await nc.lock("candidate")
        try:
            await nc.edit_config(config, target="candidate")
            if args.dry_run:
                reply = await nc.dispatch(f'<dry-run xmlns="{INTENT}"/>', timeout=60)
                print(format_dry_run(reply))
                return 0
            changed = await _changed(nc, _names(intents))
            if not args.no_wait and changed:
                await nc.create_subscription(filter=("subtree", f'<intent-state-change xmlns="{INTENT}"/>'))
            await nc.commit()
        finally:
            await nc.discard_changes()
            await nc.unlock("candidate")
        unchanged = [n for n in _names(intents) if n not in changed]
        print(f"committed {len(changed)} changed intent(s)" + (f": {', '.join(changed)}" if changed else "")
              + (f"; unchanged: {', '.join(unchanged)}" if unchanged else ""), flush=True)
        if args.no_wait or not changed:
            return 0
        return await follow(nc, set(changed), args.timeout)


async def _changed(nc, names: list[str]) -> list[str]:
    """The intents among `names` whose candidate configuration differs from running."""
    configs = []
    for datastore in ("candidate", "running"):
        data = await nc.get_config(datastore, filter=("subtree", INTENTS_FILTER))
        configs.append({INTENT.text(i, "name", ""): etree.tostring(i, method="c14n")
                        for i in INTENT.all(data, "intents/intent")})
    return [n for n in names if configs[0].get(n) != configs[1].get(n)]


async def follow(nc, names: set[str], timeout: float) -> int:
    """Print the state changes of `names` until each one settles (0 if all are active)."""
    final: dict[str, str] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    stream = nc.notifications().__aiter__()
    while set(final) != names:
        try:
            async with asyncio.timeout_at(deadline):
                notification = await stream.__anext__()
        except (TimeoutError, StopAsyncIteration):
            state = await intent_states(nc)
            for name in sorted(names - set(final)):
                print(f"  {name}: still {state.get(name, {}).get('state', 'unknown')} after {timeout:g} s: "
                      f"{state.get(name, {}).get('reason', '')}")
            return 1
        change = INTENT.find(notification, "intent-state-change")
        name = INTENT.text(change, "name", "")
        if name not in names:
            continue
        to = INTENT.text(change, "to", "")
        print(f"  {name}: {INTENT.text(change, 'from') or '-'} -> {to}: {INTENT.text(change, 'reason', '')}",
              flush=True)
        if to in SETTLED:
            final[name] = to
        else:
            final.pop(name, None)
    return 0 if all(state in ("active", "removed") for state in final.values()) else 1


async def intent_states(nc) -> dict[str, dict]:
    """Every intent of the orchestrator as a dict of its leaves (config and state)."""
    return read_intents(await nc.get(filter=("subtree", INTENTS_FILTER)))


async def _list(args: argparse.Namespace) -> int:
    async with await connect(target(args)) as nc:
        print(format_intents(await intent_states(nc)))
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with await connect(target(args)) as nc:
        intent = (await intent_states(nc)).get(args.name)
    if intent is None:
        print(f"qstrata intent: no intent {args.name!r}", file=sys.stderr)
        return 1
    print(f"intent {args.name}: {intent.get('source-sae')} -> {intent.get('destination-sae')}, "
          f"at least {rate(intent.get('min-rate'))}, priority {intent.get('priority', '100')}")
    print(f"state {intent.get('state', '?')} since {intent.get('state-since', '?')}: {intent.get('reason', '')}")
    for index, path in enumerate(intent["paths"]):
        print(f"path {index} ({'in use' if path['in-use'] else 'standby'}): {' - '.join(path['nodes'])}")
    print("conditions:")
    for c in intent["conditions"]:
        print(f"  {c.get('type', '').split(':')[-1]:<17} {c.get('status', ''):<6} {c.get('reason', '')}: "
              f"{c.get('message', '')}")
    print("history:")
    for t in intent["history"]:
        print(f"  {t.get('sequence', ''):>3} {t.get('time', '')}  {t.get('from', '-'):>10} -> {t.get('to', ''):<10} "
              f"{t.get('reason', '')}")
    return 0


async def _delete(args: argparse.Namespace) -> int:
    async with await connect(target(args)) as nc:
        if args.name not in await intent_states(nc):
            print(f"qstrata intent: no intent {args.name!r}", file=sys.stderr)
            return 1
        await nc.edit_config(f'<intents xmlns="{INTENT}" xmlns:nc="{BASE}"><intent nc:operation="delete">'
                             f'<name>{args.name}</name></intent></intents>', target="candidate")
        await nc.commit()
    print(f"deleted intent {args.name}; the orchestrator tears it down")
    return 0


# --- formatting -----------------------------------------------------------------------------

def rate(value: object) -> str:
    """bit/s as text: 20000 -> '20 kb/s'."""
    try:
        bits = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    for unit, scale in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.3g} {unit}"
    return f"{bits:.0f} b/s"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def format_intents(intents: dict[str, dict]) -> str:
    if not intents:
        return "no intents"
    rows = []
    for name, i in sorted(intents.items()):
        in_use = next((p for p in i["paths"] if p["in-use"]), i["paths"][0] if i["paths"] else None)
        rows.append((name, i.get("state", "?"), i.get("priority", "100"), rate(i.get("min-rate")),
                     rate(i.get("observed-rate")), " - ".join(in_use["nodes"]) if in_use else "-",
                     i.get("reason", "")))
    return table(("INTENT", "STATE", "PRIO", "MIN-RATE", "RATE", "PATH", "REASON"), rows)


def format_dry_run(reply: etree._Element | None) -> str:
    intents = INTENT.all(reply, "intent")
    if not intents:
        return "the commit would change nothing"
    lines = []
    for intent in intents:
        text = lambda element, tag: INTENT.text(element, tag)
        feasible = text(intent, "feasible") == "true"
        lines.append(f"intent {text(intent, 'name')}: {text(intent, 'change')}, "
                     f"{'feasible' if feasible else 'NOT feasible'}: {text(intent, 'reason')}")
        for request in INTENT.all(intent, "request"):
            lines.append(f"  {(text(request, 'stratum') or '').split(':')[-1]:<18} "
                         f"{text(request, 'operation'):<7} {text(request, 'resource'):<12} "
                         f"{text(request, 'name')}: {text(request, 'detail')}")
    lines.append("(dry run: nothing was changed)")
    return "\n".join(lines)
