"""The console's picture of the network, kept current, and the pages that follow it.

One `LevelWatch` per level shown: a DeviceLink (the read-only account, host key pinned)
subscribed to the level's notification stream, and a ReconcileLoop that keeps the view.

- follow="push" (the default), for a level whose reader has a `Watch` and that offers
  YANG-Push: an on-change subscription to what the view shows; each update is applied to the
  link's copy (netconf_core Replica) and the view is built from the copy, with no read of the
  level. A notification's own facts (a span down or up, an intent's new state) are applied to
  the view at once (views.apply_event); the update that follows brings the rest.
- follow="reread", or a level without YANG-Push (or whose subscription ended): a notification
  re-reads the level at once (a burst is one read), and what has no notification (key rates,
  QBER, key pool levels) is read again every `period` seconds.

A view that differs from the last one is published to every page as one `level` message;
every notification also goes to the event log and to the pages as an `event` message. A
page's stream is a bounded queue: a page that does not keep up is dropped (its EventSource
reconnects and gets the whole picture again)."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time

from lxml import etree

from console.levels import READ_ONLY, LevelAccess
from console.views import READERS, Reader, apply_event, event_view
from netconf_core import DeviceLink, ReconcileLoop, RPCError, SessionClosedError

log = logging.getLogger(__name__)

EVENT_LOG_SIZE = 500
PAGE_QUEUE = 256              # messages a page may lag behind before it is dropped
DROPPED = ("dropped", "")     # the last message of a dropped page's queue
READ_TIMEOUT_S = 30.0
PERIODS = {"connectivity": 10.0, "forwarding": 2.0, "service": 3.0, "orchestrator": 10.0, "key-manager": 4.0,
           "fabric": 2.0, "entanglement": 3.0}


class Hub:
    """Every level's latest view, the event log, and the pages' queues."""

    def __init__(self) -> None:
        self.views: dict[str, dict] = {}          # "connectivity", "km:ID", ... -> view
        self.status: dict[str, dict] = {}         # the same keys -> {"reachable": bool, "reason": str}
        self.events: collections.deque[dict] = collections.deque(maxlen=EVENT_LOG_SIZE)
        self.sequence = 0
        self._pages: set[asyncio.Queue] = set()

    def snapshot(self) -> dict:
        return {"sequence": self.sequence, "views": self.views, "status": self.status, "events": list(self.events)}

    def publish(self, kind: str, body: dict) -> None:
        self.sequence += 1
        message = json.dumps({"sequence": self.sequence, "sent": time.time(), **body}, separators=(",", ":"))
        for page in list(self._pages):
            try:
                page.put_nowait((kind, message))
            except asyncio.QueueFull:   # too slow: dropped, it reconnects and starts from a snapshot
                self._pages.discard(page)
                while not page.empty():
                    page.get_nowait()
                page.put_nowait(DROPPED)

    def set_view(self, key: str, view: dict, cause: float | None) -> None:
        if self.views.get(key) == view:
            return
        self.views[key] = view
        self.publish("level", {"key": key, "view": view, "cause": cause})

    def set_status(self, key: str, reachable: bool, reason: str) -> None:
        status = {"reachable": reachable, "reason": reason}
        if self.status.get(key) != status:
            self.status[key] = status
            self.publish("status", {"key": key, "status": status})

    def add_event(self, event: dict) -> None:
        self.events.append(event)
        self.publish("event", {"event": event})

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(PAGE_QUEUE)
        self._pages.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._pages.discard(queue)

    @property
    def pages(self) -> int:
        return len(self._pages)


FOLLOW_MODES = ("push", "reread")


class LevelWatch:
    """Keeps `hub.views[key]` equal to what the level serves (see the module docstring)."""

    def __init__(self, hub: Hub, level: LevelAccess, reader: Reader, key: str, period: float,
                 follow: str = "push"):
        if follow not in FOLLOW_MODES:
            raise ValueError(f"follow must be one of {', '.join(FOLLOW_MODES)}, not {follow!r}")
        self.hub, self.level, self.reader, self.key = hub, level, reader, key
        self.watch = reader.watch if follow == "push" else None
        self._cause: float | None = None    # when the notification or update that asked for the view arrived
        self._pushed = False                # an update came that the view has not been built from yet
        self.reads = 0                      # <get>s of the level (a benchmark's count)
        self.link = DeviceLink(level.endpoint(READ_ONLY), (), on_connect=self._connected,
                               on_notification=self._notified, watches=(self.watch,) if self.watch else (),
                               on_update=self._updated)
        self.loop = ReconcileLoop(f"console {key}", self._refresh, period=period, debounce=0.02,
                                  backoff_initial=0.5, backoff_cap=5.0,
                                  expected=(RPCError, SessionClosedError, OSError, asyncio.TimeoutError))

    @property
    def pushed(self) -> bool:
        """The view follows the level's YANG-Push updates (no read on a change)."""
        return self.watch is not None and self.link.pushing

    def start(self) -> None:
        self.link.start()
        self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()
        await self.link.stop()

    async def _connected(self, link: DeviceLink) -> None:
        self._pushed = False   # the first update of the new subscription brings the whole selection
        self.loop.wake()

    async def _notified(self, link: DeviceLink, notification: etree._Element) -> None:
        event = event_view(self.key, notification)
        if event is not None:
            self.hub.add_event(event)
        if not self.pushed:
            self._woken()
        elif event is not None:   # what it says is shown at once; the subscription's update brings the rest
            patched = apply_event(self.hub.views.get(self.key), event)
            if patched is not None:
                self.hub.set_view(self.key, patched, time.time())

    async def _updated(self, link: DeviceLink, watch, content: etree._Element) -> None:
        self._pushed = True
        self._woken()

    def _woken(self) -> None:
        if self._cause is None:
            self._cause = time.time()
        self.loop.wake()

    async def _refresh(self) -> None:
        if not self.link.connected.is_set():
            self.hub.set_status(self.key, False, self.link.reason or self.link.status)
            return None   # the link's on_connect wakes the loop again
        if self.pushed:
            if not self._pushed:
                return None   # nothing new since the last view; the first update is on its way
            self._pushed = False
            cause, self._cause = self._cause, None
            view = self.reader.view(self.link.replica(self.watch))
        else:
            cause, self._cause = self._cause, None
            try:
                nc = await self.link.session(timeout=1.0)
                async with asyncio.timeout(READ_TIMEOUT_S):
                    view = await self.reader.read(nc)
                self.reads += 1
            except BaseException:
                self.hub.set_status(self.key, False, self.link.reason or "read failed")
                raise
        self.hub.set_status(self.key, True, "")
        self.hub.set_view(self.key, view, cause)
        return None


def watches_for(hub: Hub, levels: list[LevelAccess], follow: str = "push") -> list[LevelWatch]:
    """A watch of each level the console shows: the controllers, the orchestrator, the key managers."""
    watches = []
    for level in levels:
        reader = READERS.get(level.kind)
        if reader is None:
            continue
        key = f"km:{level.name}" if level.kind == "key-manager" else level.kind
        watches.append(LevelWatch(hub, level, reader, key, PERIODS[level.kind], follow))
    return watches
