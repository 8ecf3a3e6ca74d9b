"""Alarms as state (RFC 8632, ietf-alarms): the alarm list a controller serves as
operational state, with the alarm-notification sent for every change of it.

The list is level-triggered: the controller says, after each observation, which alarms
are raised now (`AlarmList.update`); an alarm of the list's types that is not among them is
cleared, whatever made its cause go away (the cause ended, or its resource was deleted).
Cleared alarms stay in the list, as RFC 8632 has it, up to MAX_CLEARED of them (the oldest
cleared ones go first), so that the list cannot grow without bound."""
from __future__ import annotations

import collections
import datetime
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from lxml import etree

from controller.base import qname as _q, sub_element as _sub

AL = "urn:ietf:params:xml:ns:yang:ietf-alarms"
MAX_STATUS_CHANGES = 32   # the model's default max-alarm-status-changes
MAX_CLEARED = 256         # cleared alarms kept in the list
MAX_TEXT = 1024


@dataclass(frozen=True)
class AlarmType:
    """An identity derived from al:alarm-type-id, in module namespace `namespace` (prefix `prefix`)."""

    identity: str
    namespace: str
    prefix: str
    description: str
    severities: tuple[str, ...] = ("major",)

    @property
    def value(self) -> str:
        return f"{self.prefix}:{self.identity}"


AlarmKey = tuple[str, str]  # (resource, alarm type identity); the qualifier is always ""
LINK_NS = {"nw": "urn:ietf:params:xml:ns:yang:ietf-network",
           "nt": "urn:ietf:params:xml:ns:yang:ietf-network-topology"}  # the prefixes of link_resource


def link_resource(network_id: str, link_id: str) -> str:
    """The instance-identifier of a link of an RFC 8345 network, as an alarm's resource."""
    return f"/nw:networks/nw:network[nw:network-id='{network_id}']/nt:link[nt:link-id='{link_id}']"


def resource_link(resource: str) -> str:
    """The link-id of a link_resource."""
    return resource.rpartition("[nt:link-id='")[2].removesuffix("']")


@dataclass
class Alarm:
    resource: str
    alarm_type: AlarmType
    created: str
    raised: str
    changed: str
    cleared: bool
    severity: str
    text: str
    changes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_STATUS_CHANGES))


def timestamp() -> str:
    """yang:date-and-time to the microsecond: status-change entries are keyed by their time."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AlarmList:
    """The alarms of one controller; resources are instance-identifiers using the prefixes of `resource_ns`."""

    def __init__(self, types: list[AlarmType], resource_ns: dict[str, str],
                 notify: Callable[[etree._Element], Awaitable[None]]):
        self.types = {t.identity: t for t in types}
        self.resource_ns = dict(resource_ns)
        self.notify = notify
        self.alarms: dict[AlarmKey, Alarm] = {}
        self.last_changed: str | None = None

    def active(self) -> dict[AlarmKey, Alarm]:
        return {key: alarm for key, alarm in self.alarms.items() if not alarm.cleared}

    async def update(self, raised: dict[AlarmKey, tuple[str, str]], clear_text: Callable[[Alarm], str]) -> None:
        """Make the list say that exactly `raised` (key -> (severity, text)) are raised now;
        every other alarm still raised is cleared, with the text `clear_text` gives it. An
        alarm raised again keeps its entry; its text is only renewed on a change of
        severity, so that a value that moves does not make a new status change each time."""
        for key, (severity, text) in raised.items():
            alarm = self.alarms.get(key)
            if alarm is None:
                now = self._stamp()
                alarm = self.alarms[key] = Alarm(key[0], self.types[key[1]], now, now, now, False, severity, text)
            elif not alarm.cleared and alarm.severity == severity:
                continue
            else:
                alarm.changed = self._stamp()
                if alarm.cleared:
                    alarm.raised = alarm.changed
                alarm.cleared, alarm.severity, alarm.text = False, severity, text
            await self._changed(alarm, severity)
        for key, alarm in list(self.alarms.items()):
            if key not in raised and not alarm.cleared:
                alarm.cleared, alarm.changed, alarm.text = True, self._stamp(), clear_text(alarm)[:MAX_TEXT]
                await self._changed(alarm, "cleared")
        cleared = sorted((a.changed, k) for k, a in self.alarms.items() if a.cleared)
        for _, key in cleared[:max(0, len(cleared) - MAX_CLEARED)]:
            del self.alarms[key]

    def _stamp(self) -> str:
        """A time after the list's last change (two changes within one microsecond stay apart)."""
        now = timestamp()
        if self.last_changed is not None and now <= self.last_changed:
            moment = datetime.datetime.fromisoformat(self.last_changed.replace("Z", "+00:00"))
            now = (moment + datetime.timedelta(microseconds=1)).isoformat(timespec="microseconds").replace(
                "+00:00", "Z")
        self.last_changed = now
        return now

    async def _changed(self, alarm: Alarm, severity: str) -> None:
        alarm.text = alarm.text[:MAX_TEXT]
        alarm.changes.append((alarm.changed, severity, alarm.text))
        event = etree.Element(_q(AL, "alarm-notification"), nsmap={None: AL})
        self._key_leaves(event, alarm)
        _sub(event, AL, "time", alarm.changed)
        _sub(event, AL, "perceived-severity", severity)
        _sub(event, AL, "alarm-text", alarm.text)
        await self.notify(event)

    def _key_leaves(self, parent: etree._Element, alarm: Alarm) -> None:
        # The leaves declare their prefixes themselves: the engine merges state leaf by leaf.
        resource = etree.SubElement(parent, _q(AL, "resource"), nsmap={None: AL, **self.resource_ns})
        resource.text = alarm.resource
        kind = etree.SubElement(parent, _q(AL, "alarm-type-id"),
                                nsmap={None: AL, alarm.alarm_type.prefix: alarm.alarm_type.namespace})
        kind.text = alarm.alarm_type.value
        _sub(parent, AL, "alarm-type-qualifier", "")

    def state(self) -> etree._Element:
        """The <alarms> container: the alarm inventory and the alarm list."""
        root = etree.Element(_q(AL, "alarms"), nsmap={None: AL})
        inventory = _sub(root, AL, "alarm-inventory")
        for alarm_type in self.types.values():
            entry = _sub(inventory, AL, "alarm-type")
            kind = etree.SubElement(entry, _q(AL, "alarm-type-id"),
                                    nsmap={None: AL, alarm_type.prefix: alarm_type.namespace})
            kind.text = alarm_type.value
            _sub(entry, AL, "alarm-type-qualifier", "")
            _sub(entry, AL, "will-clear", "true")
            for severity in alarm_type.severities:
                _sub(entry, AL, "severity-level", severity)
            _sub(entry, AL, "description", alarm_type.description)
        alarm_list = _sub(root, AL, "alarm-list")
        _sub(alarm_list, AL, "number-of-alarms", len(self.alarms))
        if self.last_changed is not None:
            _sub(alarm_list, AL, "last-changed", self.last_changed)
        for alarm in sorted(self.alarms.values(), key=lambda a: (a.resource, a.alarm_type.identity)):
            entry = _sub(alarm_list, AL, "alarm")
            self._key_leaves(entry, alarm)
            _sub(entry, AL, "time-created", alarm.created)
            _sub(entry, AL, "is-cleared", "true" if alarm.cleared else "false")
            _sub(entry, AL, "last-raised", alarm.raised)
            _sub(entry, AL, "last-changed", alarm.changed)
            _sub(entry, AL, "perceived-severity", alarm.severity)
            _sub(entry, AL, "alarm-text", alarm.text)
            for time, severity, text in alarm.changes:
                change = _sub(entry, AL, "status-change")
                _sub(change, AL, "time", time)
                _sub(change, AL, "perceived-severity", severity)
                _sub(change, AL, "alarm-text", text)
        return root
