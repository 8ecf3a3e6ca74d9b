"""The console's picture of the network, kept current, and the pages that follow it.

One `LevelWatch` per level read: a DeviceLink (the read-only account, host key pinned)
subscribed to the level's notification stream, and a ReconcileLoop that re-reads the level
when a notification arrives and, for what has no notification (key rates, QBER, key pool
levels), every `period` seconds. A read that differs from the last one is published to
every page as one `level` message; every notification also goes to the event log and to the
pages as an `event` message. A page's stream is a bounded queue: a page that does not keep up
is dropped (its EventSource reconnects and gets the whole picture again)."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Awaitable, Callable

from lxml import etree

from console.levels import READ_ONLY, LevelAccess
from console.views import READERS, event_view
from netconf_core import DeviceLink, ReconcileLoop, RPCError, SessionClosedError

log = logging.getLogger(__name__)

EVENT_LOG_SIZE = 500
PAGE_QUEUE = 256              # messages a page may lag behind before it is dropped
DROPPED = ("dropped", "")     # the last message of a dropped page's queue
READ_TIMEOUT_S = 30.0
PERIODS = {"connectivity": 10.0, "forwarding": 2.0, "service": 3.0, "orchestrator": 10.0, "key-manager": 4.0}


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


class LevelWatch:
    """Keeps `hub.views[key]` equal to what the level serves (see the module docstring)."""

    def __init__(self, hub: Hub, level: LevelAccess, read: Callable[[object], Awaitable[dict]], key: str,
                 period: float):
        self.hub, self.level, self.read, self.key = hub, level, read, key
        self._cause: float | None = None    # when the notification that asked for the next read arrived
        self.link = DeviceLink(level.endpoint(READ_ONLY), (), on_connect=self._connected,
                               on_notification=self._notified)
        self.loop = ReconcileLoop(f"console {key}", self._refresh, period=period, debounce=0.02,
                                  backoff_initial=0.5, backoff_cap=5.0,
                                  expected=(RPCError, SessionClosedError, OSError, asyncio.TimeoutError))

    def start(self) -> None:
        self.link.start()
        self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()
        await self.link.stop()

    async def _connected(self, link: DeviceLink) -> None:
        self.loop.wake()

    async def _notified(self, link: DeviceLink, notification: etree._Element) -> None:
        event = event_view(self.key, notification)
        if event is not None:
            self.hub.add_event(event)
        if self._cause is None:
            self._cause = time.time()
        self.loop.wake()

    async def _refresh(self) -> None:
        if not self.link.connected.is_set():
            self.hub.set_status(self.key, False, self.link.reason or self.link.status)
            return None   # the link's on_connect wakes the loop again
        cause, self._cause = self._cause, None
        try:
            nc = await self.link.session(timeout=1.0)
            async with asyncio.timeout(READ_TIMEOUT_S):
                view = await self.read(nc)
        except BaseException:
            self.hub.set_status(self.key, False, self.link.reason or "read failed")
            raise
        self.hub.set_status(self.key, True, "")
        self.hub.set_view(self.key, view, cause)
        return None


def watches_for(hub: Hub, levels: list[LevelAccess]) -> list[LevelWatch]:
    """A watch of each level the console shows: the controllers, the orchestrator, the key managers."""
    watches = []
    for level in levels:
        read = READERS.get(level.kind)
        if read is None:
            continue
        key = f"km:{level.name}" if level.kind == "key-manager" else level.kind
        watches.append(LevelWatch(hub, level, read, key, PERIODS[level.kind]))
    return watches
