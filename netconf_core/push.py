"""YANG-Push: dynamic subscriptions (RFC 8639) to the NETCONF event stream and to datastores
(RFC 8641), over NETCONF (RFC 8640: the notifications go out on the session that subscribed).

A datastore subscription selects a subtree of running, candidate, startup, intended (running
here) or operational with a subtree or xpath filter, pruned by NACM for the subscriber, and
sends it

- periodically (`push-update`, every `period` centiseconds, aligned on `anchor-time`), or
- on change (`push-change-update` holding a YANG Patch, RFC 8072, of what changed since the
  last update; a first `push-update` with sync-on-start).

On-change over running is driven by commits: each new running configuration is queued to the
subscription, so that N commits give N updates (fewer with a dampening period, which coalesces
the changes of the period into one update). Operational state comes from state providers that
are only called on demand, so an on-change subscription to operational (or to candidate or
startup, which change outside commits) takes a snapshot of its selection every
ON_CHANGE_POLL seconds and after every commit, and sends the difference from the last one;
on a server whose providers signal their changes (`NetconfServer.signals_state`, with
`state_changed()`), one to operational takes it only after a signal or a commit. State that
moves continuously (a counter) is then seen as it is at those moments.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lxml import etree

from . import filters, ns
from .errors import RPCError
from .notifications import STREAM, Event, now, parse_time

if TYPE_CHECKING:  # the server and its sessions use this module: no import of them here (no cycle)
    from .schema import Schema


log = logging.getLogger(__name__)

SN_NS = ns.SUBSCRIBED_NOTIFICATIONS
YP_NS = ns.YANG_PUSH
DS_NS = ns.DATASTORES
NC_NOTIFICATIONS_NS = ns.NETMOD_NOTIFICATION
NC_NOTIF_NS = ns.NC_NOTIFICATIONS

# Operational (and candidate, startup) on-change subscriptions look for changes this often.
ON_CHANGE_POLL = 0.25
# The shortest period a periodic subscription may ask for (centiseconds): 50 ms.
MIN_PERIOD_CS = 5
# Subscriptions one session may hold at a time: each costs a task and its snapshots.
MAX_PER_SESSION = 16
CHANGE_TYPES = ("create", "delete", "insert", "move", "replace")
DATASTORE_NAMES = {"running": "running", "candidate": "candidate", "startup": "startup",
                   "intended": "running", "operational": "operational"}
OPERATIONS = ("establish-subscription", "modify-subscription", "delete-subscription", "kill-subscription",
              "resync-subscription")


def _sn(tag: str) -> str:
    return f"{{{SN_NS}}}{tag}"


def _yp(tag: str) -> str:
    return f"{{{YP_NS}}}{tag}"


def _error(tag: str, message: str, reason: str, element: str | None = None) -> RPCError:
    """An RFC 8639 error: the reason identity is the error-app-tag (RFC 8640 section 5)."""
    return RPCError(tag, message, type="application", app_tag=reason,
                    info={"bad-element": element} if element else {})


def _filter_error(operation: etree._Element, err: RPCError) -> RPCError:
    """A filter that libyang refused: say which filter, what it says and what is wrong."""
    for tag in (_yp("datastore-xpath-filter"), _sn("stream-xpath-filter")):
        node = operation.find(tag)
        if node is not None and err.path and err.path.endswith(etree.QName(tag).localname):
            err.message = f"{etree.QName(tag).localname} '{(node.text or '').strip()}' is not valid XPath: {err.message}"
            err.app_tag = "ietf-subscribed-notifications:filter-unsupported"
            err.info = {"bad-element": etree.QName(tag).localname}
    return err


# --- differences between two data trees ------------------------------------------------

@dataclass
class Change:
    """One edit between two data trees: `chain` is the changed node with its ancestors (from
    the tree after for create and replace, before for delete), `value` the new node."""

    operation: str  # create, delete, replace; insert and move in a list or leaf-list ordered by the user
    chain: list[etree._Element]
    value: etree._Element | None
    where: str | None = None  # insert, move: "first", or "after" the entry `point` (its chain)
    point: list[etree._Element] | None = None


def diff(schema: "Schema", before: etree._Element, after: etree._Element) -> list[Change]:
    """The edits that turn `before` into `after` (two datastore roots), each at the topmost
    node that differs: a new list entry is one create, a changed leaf one replace."""
    changes: list[Change] = []
    _diff_children(schema, before, after, None, [], changes)
    return changes


def _entries(schema: "Schema", parent: etree._Element, parent_path: str | None) -> dict:
    entries: dict = {}
    seen: collections.Counter = collections.Counter()
    for child in parent:
        if not isinstance(child.tag, str):
            continue
        q = etree.QName(child)
        info = schema.child(parent_path, q.namespace or "", q.localname)
        if info is not None and info.keyword == "list" and info.keys:
            key = (child.tag, tuple((child.findtext(f"{{{info.namespace}}}{k}") or "").strip() for k in info.keys))
        elif info is not None and info.keyword == "leaf-list":
            key = (child.tag, (child.text or "").strip())
        else:  # containers, leaves, anydata: one each; keyless lists by position
            seen[child.tag] += 1
            key = (child.tag, seen[child.tag])
        entries[key] = (child, info)
    return entries


def _diff_children(schema, before, after, parent_path, chain, changes) -> None:
    old = _entries(schema, before, parent_path)
    new = _entries(schema, after, parent_path)
    kept = _kept_in_order(old, new)
    previous_entry: dict[str, etree._Element] = {}  # of each user-ordered list: the entry before
    for key, (element, info) in new.items():
        ordered = info is not None and info.ordered_by_user
        before_it = previous_entry.get(element.tag)
        if ordered:
            previous_entry[element.tag] = element
        if ordered and (key not in old or key not in kept):
            where, point = ("after", chain + [before_it]) if before_it is not None else ("first", None)
            changes.append(Change("insert" if key not in old else "move", chain + [element], element, where, point))
            if key not in old:
                continue
        elif key not in old:
            changes.append(Change("create", chain + [element], element))
            continue
        previous, _ = old[key]
        if previous is element or (parent_path is None and etree.tostring(previous) == etree.tostring(element)):
            continue  # an unchanged top-level subtree is skipped whole (serialising is fast)
        if info is not None and info.keyword in ("container", "list"):
            _diff_children(schema, previous, element, info.schema_path, chain + [element], changes)
        elif info is not None and info.keyword in ("leaf", "leaf-list"):
            if (previous.text or "").strip() != (element.text or "").strip():
                changes.append(Change("replace", chain + [element], element))
        elif etree.tostring(previous) != etree.tostring(element):
            changes.append(Change("replace", chain + [element], element))
    for key, (element, _) in old.items():
        if key not in new:
            changes.append(Change("delete", chain + [element], None))


def _kept_in_order(old: dict, new: dict) -> set:
    """Of the entries of user-ordered lists and leaf-lists found in both trees, the most that
    keep their relative order (a longest common subsequence per list); the others moved."""
    kept = set()
    tags = {key[0] for key, (_, info) in new.items() if info is not None and info.ordered_by_user}
    for tag in tags:
        first = [key for key in old if key[0] == tag and key in new]
        second = [key for key in new if key[0] == tag and key in old]
        if first == second:
            kept.update(first)
            continue
        # LCS by dynamic programming: user-ordered lists are short (routes, name servers).
        table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
        for i in range(len(first) - 1, -1, -1):
            for j in range(len(second) - 1, -1, -1):
                table[i][j] = table[i + 1][j + 1] + 1 if first[i] == second[j] else max(table[i + 1][j],
                                                                                          table[i][j + 1])
        i = j = 0
        while i < len(first) and j < len(second):
            if first[i] == second[j]:
                kept.add(first[i])
                i, j = i + 1, j + 1
            elif table[i + 1][j] >= table[i][j + 1]:
                i += 1
            else:
                j += 1
    return kept


def _keys(schema: "Schema", chain: list[etree._Element], i: int) -> list[tuple[str, str]]:
    info = schema.node_for_path(chain[: i + 1])
    if info is None:
        return []
    if info.keyword == "list":
        return [(k, (chain[i].findtext(f"{{{info.namespace}}}{k}") or "").strip()) for k in info.keys]
    return []


def resource_path(schema: "Schema", chain: list[etree._Element]) -> str:
    """The RESTCONF data-resource identifier (RFC 8040 section 3.5.3) of a node: what a YANG
    Patch edit's target is."""
    parts, module = [], None
    for i, element in enumerate(chain):
        info = schema.node_for_path(chain[: i + 1])
        name = etree.QName(element).localname
        segment = name if info is not None and info.module == module else f"{info.module if info else '?'}:{name}"
        module = info.module if info else None
        if info is not None and info.keyword == "list" and info.keys:
            segment += "=" + ",".join(urllib.parse.quote(v, safe="") for _, v in _keys(schema, chain, i))
        elif info is not None and info.keyword == "leaf-list":
            segment += "=" + urllib.parse.quote((element.text or "").strip(), safe="")
        parts.append(segment)
    return "/" + "/".join(parts)


def instance_identifier(schema: "Schema", chain: list[etree._Element]) -> tuple[str, dict[str, str]]:
    """The instance-identifier of a node (RFC 7950 section 9.13), prefixed with module names,
    and the namespaces of those prefixes."""
    parts, nsmap = [], {}
    for i, element in enumerate(chain):
        info = schema.node_for_path(chain[: i + 1])
        if info is None:
            break
        nsmap[info.module] = info.namespace
        segment = f"{info.module}:{info.name}"
        for key, value in _keys(schema, chain, i):
            quote = "'" if "'" not in value else '"'
            segment += f"[{info.module}:{key}={quote}{value}{quote}]"
        if info.keyword == "leaf-list":
            value = (element.text or "").strip()
            quote = "'" if "'" not in value else '"'
            segment += f"[.={quote}{value}{quote}]"
        parts.append(segment)
    return "/" + "/".join(parts), nsmap


def config_change_edits(schema: "Schema", before: etree._Element, after: etree._Element) -> list[etree._Element]:
    """The <edit> records of a netconf-config-change notification (RFC 6470 section 2.2)."""
    edits = []
    for change in diff(schema, before, after):
        path, nsmap = instance_identifier(schema, change.chain)
        edit = etree.Element(f"{{{NC_NOTIF_NS}}}edit")
        etree.SubElement(edit, f"{{{NC_NOTIF_NS}}}target", nsmap=nsmap).text = path
        # RFC 6470 has no insert or move: an entry placed anew is a create, one moved a replace.
        operation = {"insert": "create", "move": "replace"}.get(change.operation, change.operation)
        etree.SubElement(edit, f"{{{NC_NOTIF_NS}}}operation").text = operation
        edits.append(edit)
    return edits


# --- subscriptions ----------------------------------------------------------------------

def _selection_filter(selection: tuple | None) -> etree._Element | None:
    """The <get> filter that selects what a datastore subscription's selection does."""
    if selection is None:
        return None
    if selection[0] == "subtree":
        flt = etree.Element("filter", type="subtree")
        flt.extend(etree.fromstring(etree.tostring(node)) for node in selection[1])
        return flt
    return etree.Element("filter", type="xpath", select=selection[1], nsmap=selection[2])


@dataclass
class Subscription:
    id: int
    session: "Session"
    stream: str | None = None  # a stream subscription, or a datastore one (datastore set)
    stream_filter: etree._Element | None = None  # a <filter> as RFC 5277 filters are matched
    replay_start: dt.datetime | None = None
    datastore: str | None = None  # the identity's name: running, operational, ...
    selection: tuple | None = None  # ("subtree", [nodes]) or ("xpath", select, nsmap)
    stop_time: dt.datetime | None = None
    period: int | None = None  # centiseconds
    anchor: dt.datetime | None = None
    on_change: bool = False
    dampening: int = 0  # centiseconds
    sync_on_start: bool = True
    excluded: frozenset[str] = frozenset()
    sent: int = 0
    excluded_records: int = 0
    patches: itertools.count = field(default_factory=itertools.count)
    last: etree._Element | None = None  # the selection as last reported (on change)
    commits: collections.deque = field(default_factory=collections.deque)  # running trees to diff
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    resync: bool = False


class PushManager:
    """The subscriptions of one server: establish, modify, delete, kill, and their updates."""

    def __init__(self, server: "NetconfServer"):
        self.server = server
        self.subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)

    # --- operations -------------------------------------------------------

    async def handle(self, session: "Session", name: str, operation: etree._Element):
        try:
            self.server._validate_operation(operation)  # types, choices, mandatory leaves: libyang
        except RPCError as err:
            raise _filter_error(operation, err) from None
        if name == "establish-subscription":
            return await self.establish(session, operation)
        if name == "modify-subscription":
            return await self.modify(session, operation)
        if name == "resync-subscription":
            sub = self._own(session, operation, "ietf-yang-push:no-such-subscription-resync")
            if not sub.on_change:
                raise _error("invalid-value", f"subscription {sub.id} is not on-change",
                             "ietf-yang-push:no-such-subscription-resync", "id")
            sub.resync = True
            sub.wake.set()
            return None
        sub_id = self._id(operation)
        sub = self.subscriptions.get(sub_id)
        if sub is None or (name == "delete-subscription" and sub.session is not session):
            raise _error("invalid-value", f"no subscription {sub_id}"
                         + (" on this session" if name == "delete-subscription" else ""),
                         "ietf-subscribed-notifications:no-such-subscription", "id")
        if name == "kill-subscription":
            self._terminated(sub, "ietf-subscribed-notifications:no-such-subscription")
        self.end(sub)
        return None

    def _id(self, operation: etree._Element) -> int:
        text = (operation.findtext(_sn("id")) or operation.findtext(_yp("id")) or "").strip()  # yp: resync
        return int(text) if text.isdigit() else -1

    def _own(self, session, operation, reason) -> Subscription:
        sub = self.subscriptions.get(self._id(operation))
        if sub is None or sub.session is not session:
            raise _error("invalid-value", f"no subscription {self._id(operation)} on this session", reason, "id")
        return sub

    async def establish(self, session: "Session", op: etree._Element) -> list[etree._Element]:
        if sum(1 for s in self.subscriptions.values() if s.session is session) >= MAX_PER_SESSION:
            raise RPCError("resource-denied", f"this session has {MAX_PER_SESSION} subscriptions, its limit; "
                           "delete one first", type="application",
                           app_tag="ietf-subscribed-notifications:insufficient-resources")
        sub = Subscription(next(self._ids), session)
        self._parse_target(sub, op, establishing=True)
        self._parse_policy(sub, op)
        if sub.datastore is not None:
            await self._check_selection(sub)
        self.subscriptions[sub.id] = sub
        self._start(sub)
        out = etree.Element(_sn("id"), nsmap={None: SN_NS})
        out.text = str(sub.id)
        return [out]

    async def modify(self, session: "Session", op: etree._Element) -> None:
        sub = self._own(session, op, "ietf-subscribed-notifications:no-such-subscription")
        changed = Subscription(sub.id, session, stream=sub.stream, stream_filter=sub.stream_filter,
                               datastore=sub.datastore, selection=sub.selection, stop_time=sub.stop_time,
                               period=sub.period, anchor=sub.anchor, on_change=sub.on_change,
                               dampening=sub.dampening, sync_on_start=sub.sync_on_start, excluded=sub.excluded,
                               sent=sub.sent, excluded_records=sub.excluded_records, patches=sub.patches)
        self._parse_target(changed, op, establishing=False)
        self._parse_policy(changed, op, modifying=True)
        if changed.datastore is not None:
            await self._check_selection(changed)
        if sub.task is not None:
            sub.task.cancel()
        changed.sync_on_start = False  # a modified on-change subscription starts from what it selects now
        changed.last = await self._snapshot(changed) if changed.on_change else None
        self.subscriptions[sub.id] = changed
        self._start(changed)

    def _parse_target(self, sub: Subscription, op: etree._Element, establishing: bool) -> None:
        stream = op.findtext(_sn("stream"))
        datastore = op.find(_yp("datastore"))
        if stream is not None:
            if stream.strip() != STREAM:
                raise _error("invalid-value", f"no stream '{stream.strip()}'; this server has '{STREAM}'",
                             "ietf-subscribed-notifications:stream-unavailable", "stream")
            sub.stream, sub.datastore = STREAM, None
        if datastore is not None:
            text = (datastore.text or "").strip()
            prefix, _, name = text.rpartition(":")
            if datastore.nsmap.get(prefix or None) != DS_NS or name not in DATASTORE_NAMES:
                raise _error("invalid-value", f"datastore '{text}' cannot be subscribed to (subscribable: "
                             + ", ".join(f"ds:{n}" for n in DATASTORE_NAMES) + ")",
                             "ietf-yang-push:datastore-not-subscribable", "datastore")
            sub.datastore, sub.stream = DATASTORE_NAMES[name], None
        if establishing and sub.stream is None and sub.datastore is None:
            raise _error("missing-element", "establish-subscription needs a stream or a datastore",
                         "ietf-subscribed-notifications:stream-unavailable", "stream")
        subtree, xpath = op.find(_sn("stream-subtree-filter")), op.find(_sn("stream-xpath-filter"))
        if subtree is not None or xpath is not None:
            flt = etree.Element("filter")
            if subtree is not None:
                flt.set("type", "subtree")
                flt.extend(etree.fromstring(etree.tostring(c)) for c in subtree if isinstance(c.tag, str))
            else:
                flt = etree.Element("filter", nsmap={k: v for k, v in xpath.nsmap.items() if k})
                flt.set("type", "xpath")
                flt.set("select", (xpath.text or "").strip())
            sub.stream_filter = flt
        if op.find(_sn("stream-filter-name")) is not None or op.find(_yp("selection-filter-ref")) is not None:
            raise _error("invalid-value", "filters by reference are not supported: give the filter in the "
                         "subscription", "ietf-subscribed-notifications:filter-unavailable")
        subtree, xpath = op.find(_yp("datastore-subtree-filter")), op.find(_yp("datastore-xpath-filter"))
        if subtree is not None:
            sub.selection = ("subtree", [etree.fromstring(etree.tostring(c)) for c in subtree
                                         if isinstance(c.tag, str)])
        elif xpath is not None:
            sub.selection = ("xpath", (xpath.text or "").strip(), {k: v for k, v in xpath.nsmap.items() if k})
        replay = op.findtext(_sn("replay-start-time"))
        if replay is not None:
            if sub.stream is None:
                raise _error("invalid-value", "replay-start-time is for stream subscriptions",
                             "ietf-subscribed-notifications:replay-unsupported", "replay-start-time")
            start = parse_time(replay, "replay-start-time")
            if start > now():
                raise _error("invalid-value", "replay-start-time is in the future",
                             "ietf-subscribed-notifications:replay-unsupported", "replay-start-time")
            sub.replay_start = start

    def _parse_policy(self, sub: Subscription, op: etree._Element, modifying: bool = False) -> None:
        stop = op.findtext(_sn("stop-time"))
        if stop is not None:
            sub.stop_time = parse_time(stop, "stop-time")
            if sub.stop_time <= now():
                raise _error("invalid-value", "stop-time is in the past",
                             "ietf-subscribed-notifications:insufficient-resources", "stop-time")
        encoding = op.findtext(_sn("encoding"))
        if encoding is not None and encoding.strip().rpartition(":")[2] != "encode-xml":
            raise _error("invalid-value", f"encoding '{encoding.strip()}' is not offered (encode-xml)",
                         "ietf-subscribed-notifications:encoding-unsupported", "encoding")
        periodic, on_change = op.find(_yp("periodic")), op.find(_yp("on-change"))
        if periodic is not None:
            period = int(periodic.findtext(_yp("period")) or 0)
            if period < MIN_PERIOD_CS:
                raise RPCError("invalid-value", f"period {period} cs is shorter than this server's shortest, "
                               f"{MIN_PERIOD_CS} cs", app_tag="ietf-yang-push:period-unsupported",
                               info={"bad-element": "period"})
            anchor = periodic.findtext(_yp("anchor-time"))
            sub.period, sub.on_change = period, False
            sub.anchor = parse_time(anchor, "anchor-time") if anchor else None
        elif on_change is not None:
            sub.on_change, sub.period = True, None
            sub.dampening = int(on_change.findtext(_yp("dampening-period")) or 0)
            if not modifying:
                sub.sync_on_start = (on_change.findtext(_yp("sync-on-start")) or "true").strip() == "true"
                sub.excluded = frozenset((e.text or "").strip() for e in on_change.iterfind(_yp("excluded-change")))
        if sub.datastore is not None and sub.period is None and not sub.on_change:
            raise _error("missing-element", "a datastore subscription needs periodic or on-change",
                         "ietf-yang-push:period-unsupported", "periodic")
        if sub.stream is not None and (periodic is not None or on_change is not None):
            raise _error("invalid-value", "periodic and on-change are for datastore subscriptions",
                         "ietf-subscribed-notifications:stream-unavailable", "stream")

    async def _check_selection(self, sub: Subscription) -> None:
        """A filter that cannot be applied is refused now, with what is wrong with it."""
        if sub.selection is None or sub.selection[0] != "xpath":
            return
        try:
            await self._snapshot(sub)
        except RPCError as err:
            raise RPCError("invalid-value", f"datastore-xpath-filter '{sub.selection[1]}': {err.message}",
                           type="application", app_tag="ietf-subscribed-notifications:filter-unsupported",
                           info={"bad-element": "datastore-xpath-filter"}) from None

    # --- life of a subscription ------------------------------------------

    def _start(self, sub: Subscription) -> None:
        if sub.stream is not None:
            if sub.replay_start is not None:
                asyncio.get_running_loop().call_soon(self._replay, sub)
            coro = self._until_stop(sub)
        elif sub.on_change:
            coro = self._run_on_change(sub)
        else:
            coro = self._run_periodic(sub)
        sub.task = asyncio.get_running_loop().create_task(coro)

    def end(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.id) is sub:
            del self.subscriptions[sub.id]
        if sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()

    def session_ended(self, session: "Session") -> None:
        for sub in [s for s in self.subscriptions.values() if s.session is session]:
            self.end(sub)

    def stop(self) -> None:
        for sub in list(self.subscriptions.values()):
            self.end(sub)

    def _send(self, sub: Subscription, content: etree._Element) -> None:
        sub.sent += 1
        sub.session.out_notifications += 1
        sub.session.send(Event(now(), "ietf-yang-push", etree.QName(content).localname, content).to_xml())

    def _notice(self, sub: Subscription, name: str, reason: str | None = None) -> None:
        content = etree.Element(_sn(name), nsmap={None: SN_NS, "sn": SN_NS})
        etree.SubElement(content, _sn("id")).text = str(sub.id)
        if reason is not None:
            etree.SubElement(content, _sn("reason")).text = "sn:" + reason.rpartition(":")[2]
        sub.session.out_notifications += 1
        sub.session.send(Event(now(), "ietf-subscribed-notifications", name, content).to_xml())

    def _terminated(self, sub: Subscription, reason: str) -> None:
        self._notice(sub, "subscription-terminated", reason)

    async def _until_stop(self, sub: Subscription) -> None:
        if sub.stop_time is None:
            return
        await asyncio.sleep(max((sub.stop_time - now()).total_seconds(), 0))
        self._completed(sub)

    def _completed(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.id) is sub:
            self._notice(sub, "subscription-completed")
            self.end(sub)

    def _past_stop(self, sub: Subscription) -> bool:
        if sub.stop_time is not None and now() >= sub.stop_time:
            self._completed(sub)
            return True
        return False

    # --- stream subscriptions --------------------------------------------

    def deliver_event(self, session: "Session", event: Event) -> None:
        """An event of the NETCONF stream, to the session's stream subscriptions."""
        for sub in list(self.subscriptions.values()):
            if sub.session is session and sub.stream is not None:
                self._event(sub, event)

    def _event(self, sub: Subscription, event: Event) -> None:
        if event.module == "nc-notifications":
            return  # RFC 5277's own control events are not part of the stream
        if not self.server.may_notify(sub.session, event) or (
                sub.stream_filter is not None and not self.server.notification_matches(event, sub.stream_filter)):
            sub.excluded_records += 1
            return
        sub.sent += 1
        sub.session.out_notifications += 1
        sub.session.send(event.to_xml())

    def _replay(self, sub: Subscription) -> None:
        if self.subscriptions.get(sub.id) is not sub:
            return
        for event in self.server.replay.between(sub.replay_start, sub.stop_time):
            self._event(sub, event)
        self._notice(sub, "replay-completed")

    # --- datastore subscriptions -----------------------------------------

    async def _tree(self, sub: Subscription) -> etree._Element:
        if sub.datastore == "operational":
            # As for a <get> with the same filter: only the state the selection can hold is built.
            return await self.server.operational_tree(flt=_selection_filter(sub.selection))
        return self.server.datastores[sub.datastore]

    async def _snapshot(self, sub: Subscription, tree: etree._Element | None = None) -> etree._Element:
        """What the subscription selects of `tree` (by default the datastore as it is now), as
        its subscriber may read it."""
        if tree is None:
            tree = await self._tree(sub)
        tree = self.server.nacm_prune(sub.session, tree)
        if sub.selection is None:
            return tree
        if sub.selection[0] == "subtree":
            return filters.subtree(self.server.schema, tree, sub.selection[1])
        return filters.xpath(self.server.schema, tree, sub.selection[1], sub.selection[2], self.server.xpath_budget)

    def _push_update(self, sub: Subscription, selected: etree._Element) -> None:
        update = etree.Element(_yp("push-update"), nsmap={None: YP_NS})
        etree.SubElement(update, _yp("id")).text = str(sub.id)
        contents = etree.SubElement(update, _yp("datastore-contents"))
        contents.extend(etree.fromstring(etree.tostring(c)) for c in selected if isinstance(c.tag, str))
        self._send(sub, update)

    def _push_change_update(self, sub: Subscription, changes: list[Change]) -> None:
        update = etree.Element(_yp("push-change-update"), nsmap={None: YP_NS})
        etree.SubElement(update, _yp("id")).text = str(sub.id)
        patch = etree.SubElement(etree.SubElement(update, _yp("datastore-changes")), _yp("yang-patch"))
        etree.SubElement(patch, _yp("patch-id")).text = f"patch-{next(sub.patches)}"
        for number, change in enumerate(changes, 1):
            edit = etree.SubElement(patch, _yp("edit"))
            etree.SubElement(edit, _yp("edit-id")).text = f"edit-{number}"
            etree.SubElement(edit, _yp("operation")).text = change.operation
            etree.SubElement(edit, _yp("target")).text = resource_path(self.server.schema, change.chain)
            if change.point is not None:
                etree.SubElement(edit, _yp("point")).text = resource_path(self.server.schema, change.point)
            if change.where is not None:
                etree.SubElement(edit, _yp("where")).text = change.where
            if change.value is not None:
                etree.SubElement(edit, _yp("value")).append(etree.fromstring(etree.tostring(change.value)))
        self._send(sub, update)

    async def _run_periodic(self, sub: Subscription) -> None:
        """A push-update every period; with an anchor-time, at anchor + k * period."""
        loop = asyncio.get_running_loop()
        period = sub.period / 100
        start = loop.time()
        if sub.anchor is not None:
            offset = ((now() - sub.anchor).total_seconds()) % period
            start += (period - offset) % period
        ticks = itertools.count()
        while True:
            delay = start + next(ticks) * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._past_stop(sub):
                return
            try:
                self._push_update(sub, await self._snapshot(sub))
            except RPCError as err:
                self._failed(sub, err)
                return

    def _failed(self, sub: Subscription, err: RPCError) -> None:
        log.info("%s: subscription %d ends: its filter fails: %s", self.server.name, sub.id, err)
        self._terminated(sub, "ietf-subscribed-notifications:filter-unavailable")
        self.end(sub)

    def running_changed(self, after: etree._Element) -> None:
        """A new running configuration: queued to on-change subscriptions of running; the
        others (operational, candidate, startup) look again now."""
        for sub in self.subscriptions.values():
            if sub.on_change:
                if sub.datastore == "running":
                    if sub.dampening:
                        sub.commits.clear()  # a dampened update only compares with the latest
                    sub.commits.append(after)
                sub.wake.set()

    def state_changed(self) -> None:
        for sub in self.subscriptions.values():
            if sub.on_change and sub.datastore == "operational":
                sub.wake.set()

    async def _run_on_change(self, sub: Subscription) -> None:
        loop = asyncio.get_running_loop()
        signalled = sub.datastore == "operational" and self.server.signals_state
        polled = sub.datastore != "running" and not signalled
        changes_between_commits = sub.datastore != "running"
        try:
            if sub.last is None:
                sub.last = await self._snapshot(sub)
                if sub.sync_on_start:
                    self._push_update(sub, sub.last)
            last_sent = -float("inf")
            while True:
                timeout = ON_CHANGE_POLL if polled else None
                if sub.stop_time is not None:
                    left = (sub.stop_time - now()).total_seconds()
                    timeout = left if timeout is None else min(timeout, left)
                try:
                    async with asyncio.timeout(max(timeout, 0) if timeout is not None else None):
                        await sub.wake.wait()
                except TimeoutError:
                    pass
                sub.wake.clear()
                if self._past_stop(sub):
                    return
                if sub.resync:
                    sub.resync = False
                    sub.commits.clear()
                    sub.last = await self._snapshot(sub)
                    self._push_update(sub, sub.last)
                    continue
                if sub.dampening:
                    wait = last_sent + sub.dampening / 100 - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if changes_between_commits:
                    trees = [None]
                    sub.commits.clear()
                elif sub.dampening:
                    trees = [sub.commits[-1]] if sub.commits else []
                    sub.commits.clear()
                else:
                    trees = list(sub.commits)
                    sub.commits.clear()
                for tree in trees:
                    current = await self._snapshot(sub, tree)
                    changes = diff(self.server.schema, sub.last, current)
                    kept = [c for c in changes if c.operation not in sub.excluded]
                    sub.excluded_records += len(changes) - len(kept)
                    sub.last = current
                    if kept:
                        self._push_change_update(sub, kept)
                        last_sent = loop.time()
        except RPCError as err:
            self._failed(sub, err)

    # --- state ------------------------------------------------------------

    def state(self) -> list[etree._Element]:
        """nc-notifications streams (RFC 5277), ietf-subscribed-notifications streams and
        subscriptions (RFC 8639, RFC 8641)."""
        created = self.server.replay.created.isoformat()
        m = lambda tag: f"{{{NC_NOTIFICATIONS_NS}}}{tag}"
        netconf = etree.Element(m("netconf"), nsmap={None: NC_NOTIFICATIONS_NS})
        stream = etree.SubElement(etree.SubElement(netconf, m("streams")), m("stream"))
        for tag, value in (("name", STREAM), ("description", "the server's notifications"),
                           ("replaySupport", "true"), ("replayLogCreationTime", created)):
            etree.SubElement(stream, m(tag)).text = value
        streams = etree.Element(_sn("streams"), nsmap={None: SN_NS})
        stream = etree.SubElement(streams, _sn("stream"))
        etree.SubElement(stream, _sn("name")).text = STREAM
        etree.SubElement(stream, _sn("description")).text = "the server's notifications"
        etree.SubElement(stream, _sn("replay-support"))
        etree.SubElement(stream, _sn("replay-log-creation-time")).text = created
        out = [netconf, streams]
        if self.subscriptions:
            subscriptions = etree.Element(_sn("subscriptions"), nsmap={None: SN_NS, "ds": DS_NS, "sn": SN_NS})
            for sub in sorted(self.subscriptions.values(), key=lambda s: s.id):
                subscriptions.append(self._subscription_state(sub))
            out.append(subscriptions)
        return out

    def _subscription_state(self, sub: Subscription) -> etree._Element:
        entry = etree.Element(_sn("subscription"))
        etree.SubElement(entry, _sn("id")).text = str(sub.id)
        if sub.stream is not None:
            flt = sub.stream_filter
            if flt is not None and flt.get("type") == "xpath":
                etree.SubElement(entry, _sn("stream-xpath-filter"), nsmap=flt.nsmap).text = flt.get("select")
            elif flt is not None:
                etree.SubElement(entry, _sn("stream-subtree-filter")).extend(
                    etree.fromstring(etree.tostring(c)) for c in flt)
            etree.SubElement(entry, _sn("stream")).text = sub.stream
        else:
            ident = "running" if sub.datastore == "running" else sub.datastore
            etree.SubElement(entry, _yp("datastore")).text = f"ds:{ident}"
            if sub.selection is not None and sub.selection[0] == "xpath":
                etree.SubElement(entry, _yp("datastore-xpath-filter"), nsmap=sub.selection[2]).text = sub.selection[1]
            elif sub.selection is not None:
                etree.SubElement(entry, _yp("datastore-subtree-filter")).extend(
                    etree.fromstring(etree.tostring(c)) for c in sub.selection[1])
        if sub.stop_time is not None:
            etree.SubElement(entry, _sn("stop-time")).text = sub.stop_time.isoformat()
        etree.SubElement(entry, _sn("encoding")).text = "sn:encode-xml"
        if sub.period is not None:
            periodic = etree.SubElement(entry, _yp("periodic"))
            etree.SubElement(periodic, _yp("period")).text = str(sub.period)
            if sub.anchor is not None:
                etree.SubElement(periodic, _yp("anchor-time")).text = sub.anchor.isoformat()
        elif sub.on_change:
            on_change = etree.SubElement(entry, _yp("on-change"))
            etree.SubElement(on_change, _yp("dampening-period")).text = str(sub.dampening)
            etree.SubElement(on_change, _yp("sync-on-start")).text = str(sub.sync_on_start).lower()
            for change in sorted(sub.excluded):
                etree.SubElement(on_change, _yp("excluded-change")).text = change
        receiver = etree.SubElement(etree.SubElement(entry, _sn("receivers")), _sn("receiver"))
        etree.SubElement(receiver, _sn("name")).text = f"session-{sub.session.id}"
        etree.SubElement(receiver, _sn("sent-event-records")).text = str(sub.sent)
        etree.SubElement(receiver, _sn("excluded-event-records")).text = str(sub.excluded_records)
        etree.SubElement(receiver, _sn("state")).text = "active"
        return entry
