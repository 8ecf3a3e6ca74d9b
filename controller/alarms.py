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

from models import alarms as model
from models.alarms import AlarmType

MAX_STATUS_CHANGES = 32   # the model's default max-alarm-status-changes
MAX_CLEARED = 256         # cleared alarms kept in the list
MAX_TEXT = 1024


AlarmKey = tuple[str, str]  # (resource, alarm type identity); the qualifier is always ""


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
        await self.notify(model.alarm_notification(alarm.alarm_type, alarm.resource, alarm.changed, severity,
                                                   alarm.text, self.resource_ns))

    def state(self) -> etree._Element:
        """The <alarms> container: the alarm inventory and the alarm list."""
        entries = [model.Alarm(a.resource, a.alarm_type.identity, a.cleared, a.severity, a.text, a.changed, a.created,
                               a.raised, tuple(model.StatusChange(*change) for change in a.changes))
                   for a in sorted(self.alarms.values(), key=lambda a: (a.resource, a.alarm_type.identity))]
        return model.alarms_element(self.types.values(), entries, self.last_changed, self.resource_ns)
