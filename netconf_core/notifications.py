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
    """The last `size` events, each kept as its text: an lxml tree of a notification's few
    elements takes about six times the memory of its text, and a host of many servers holds a
    buffer for each. Replays, which are rare, parse them back."""

    def __init__(self, size: int):
        self.events: collections.deque[tuple[dt.datetime, str, str, bytes]] = collections.deque(maxlen=size)
        self.created = now()

    def add(self, event: Event) -> None:
        self.events.append((event.time, event.module, event.name, etree.tostring(event.content, with_tail=False)))

    def between(self, start: dt.datetime, stop: dt.datetime | None) -> list[Event]:
        return [Event(time, module, name, etree.fromstring(content)) for time, module, name, content in self.events
                if time >= start and (stop is None or time <= stop)]


@dataclass
class Subscription:
    filter: etree._Element | None
    start: dt.datetime | None
    stop: dt.datetime | None
