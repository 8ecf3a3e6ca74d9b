"""RFC 5277 notifications: the NETCONF stream, its bounded replay buffer, subscriptions."""
from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass

from lxml import etree

from .errors import RPCError
from .ns import NETMOD_NOTIFICATION, NOTIFICATION

STREAM = "NETCONF"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def parse_time(text: str, param: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RPCError("bad-element", f"{param} '{text}' is not a date-and-time", type="protocol",
                       info={"bad-element": param}) from None
    if value.tzinfo is None:
        raise RPCError("bad-element", f"{param} '{text}' has no time zone", type="protocol",
                       info={"bad-element": param})
    return value


@dataclass
class Event:
    time: dt.datetime
    module: str
    name: str
    content: etree._Element  # the notification's top element, as the model defines it

    def to_xml(self) -> bytes:
        notification = etree.Element(NOTIFICATION("notification"), nsmap={None: NOTIFICATION})
        etree.SubElement(notification, NOTIFICATION("eventTime")).text = self.time.isoformat()
        notification.append(self.content)
        try:
            return etree.tostring(notification)
        finally:
            notification.remove(self.content)


def control_event(name: str) -> Event:
    """replayComplete / notificationComplete (RFC 5277 section 2.1.2 and 3.3)."""
    return Event(now(), "nc-notifications", name, etree.Element(NETMOD_NOTIFICATION(name)))


class ReplayBuffer:
    def __init__(self, size: int):
        self.events: collections.deque[Event] = collections.deque(maxlen=size)
        self.created = now()

    def add(self, event: Event) -> None:
        self.events.append(event)

    def between(self, start: dt.datetime, stop: dt.datetime | None) -> list[Event]:
        return [e for e in self.events if e.time >= start and (stop is None or e.time <= stop)]


@dataclass
class Subscription:
    filter: etree._Element | None
    start: dt.datetime | None
    stop: dt.datetime | None
