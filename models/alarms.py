"""ietf-alarms (RFC 8632) as the levels exchange it: the alarm list a controller serves as
state (`alarms_element`) and the alarm-notification of each change (`alarm_notification`),
and the reader of either side's consumers (`read_alarms`, `raised_link_alarms`).

The leaves that hold a prefixed value (resource, alarm-type-id) declare their prefixes
themselves: the engine merges state into a tree leaf by leaf, away from their parents."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from lxml import etree

from models.network import RESOURCE_PREFIXES
from models.ns import ALARMS
from netconf_core.ns import identity

QBER_ALARM = "qber-above-threshold"  # qi-alarms identities
LINK_DOWN_ALARM = "link-down"


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


@dataclass(frozen=True)
class StatusChange:
    time: str
    severity: str  # a severity, or "cleared"
    text: str


@dataclass(frozen=True)
class Alarm:
    """An entry of an alarm list, as served and as read."""

    resource: str
    type_id: str       # the alarm type identity, without its prefix
    cleared: bool
    severity: str
    text: str
    last_changed: str
    created: str = ""
    last_raised: str = ""
    changes: tuple[StatusChange, ...] = ()

    @property
    def link_id(self) -> str | None:
        """The link of a QKD or fibre network the resource (an instance-identifier) names."""
        _, found, tail = self.resource.rpartition("link-id=")
        quote = tail[:1]
        return tail[1:].removesuffix("]").removesuffix(quote) if found and quote in ("'", '"') else None


# --- building ----------------------------------------------------------------------------------

def _key_leaves(parent: etree._Element, resource: str, alarm_type: AlarmType, resource_prefixes: dict[str, str]):
    leaf = etree.SubElement(parent, ALARMS("resource"), nsmap={None: str(ALARMS), **resource_prefixes})
    leaf.text = resource
    _type_leaf(parent, alarm_type)
    ALARMS.sub(parent, "alarm-type-qualifier", "")


def _type_leaf(parent: etree._Element, alarm_type: AlarmType) -> None:
    leaf = etree.SubElement(parent, ALARMS("alarm-type-id"),
                            nsmap={None: str(ALARMS), alarm_type.prefix: alarm_type.namespace})
    leaf.text = alarm_type.value


def alarm_notification(alarm_type: AlarmType, resource: str, time: str, severity: str, text: str,
                       resource_prefixes: dict[str, str] = RESOURCE_PREFIXES) -> etree._Element:
    """The alarm-notification of one status change (`severity` is "cleared" when it clears)."""
    event = ALARMS.element("alarm-notification")
    _key_leaves(event, resource, alarm_type, resource_prefixes)
    ALARMS.sub(event, "time", time)
    ALARMS.sub(event, "perceived-severity", severity)
    ALARMS.sub(event, "alarm-text", text)
    return event


def alarms_element(types: Iterable[AlarmType], alarms: Iterable[Alarm], last_changed: str | None,
                   resource_prefixes: dict[str, str] = RESOURCE_PREFIXES) -> etree._Element:
    """The <alarms> container: the inventory of `types` and the list of `alarms` (each of one of
    the types), in the order given."""
    types = {t.identity: t for t in types}
    alarms = list(alarms)
    root = ALARMS.element("alarms")
    inventory = ALARMS.sub(root, "alarm-inventory")
    for alarm_type in types.values():
        entry = ALARMS.sub(inventory, "alarm-type")
        _type_leaf(entry, alarm_type)
        ALARMS.sub(entry, "alarm-type-qualifier", "")
        ALARMS.sub(entry, "will-clear", "true")
        for severity in alarm_type.severities:
            ALARMS.sub(entry, "severity-level", severity)
        ALARMS.sub(entry, "description", alarm_type.description)
    alarm_list = ALARMS.sub(root, "alarm-list")
    ALARMS.sub(alarm_list, "number-of-alarms", len(alarms))
    if last_changed is not None:
        ALARMS.sub(alarm_list, "last-changed", last_changed)
    for alarm in alarms:
        entry = ALARMS.sub(alarm_list, "alarm")
        _key_leaves(entry, alarm.resource, types[alarm.type_id], resource_prefixes)
        ALARMS.sub(entry, "time-created", alarm.created)
        ALARMS.sub(entry, "is-cleared", "true" if alarm.cleared else "false")
        ALARMS.sub(entry, "last-raised", alarm.last_raised)
        ALARMS.sub(entry, "last-changed", alarm.last_changed)
        ALARMS.sub(entry, "perceived-severity", alarm.severity)
        ALARMS.sub(entry, "alarm-text", alarm.text)
        for change in alarm.changes:
            status = ALARMS.sub(entry, "status-change")
            ALARMS.sub(status, "time", change.time)
            ALARMS.sub(status, "perceived-severity", change.severity)
            ALARMS.sub(status, "alarm-text", change.text)
    return root


# --- reading -----------------------------------------------------------------------------------

def read_alarms(data: etree._Element | None) -> list[Alarm]:
    """The alarm list of a <get> reply of /alarms (or of the <alarms> container itself)."""
    if data is None:
        return []
    root = data if data.tag == ALARMS("alarms") else ALARMS.find(data, "alarms")
    return [Alarm(ALARMS.text(e, "resource", ""), identity(ALARMS.text(e, "alarm-type-id")) or "",
                  ALARMS.text(e, "is-cleared") == "true", ALARMS.text(e, "perceived-severity", ""),
                  ALARMS.text(e, "alarm-text", ""), ALARMS.text(e, "last-changed", ""),
                  ALARMS.text(e, "time-created", ""), ALARMS.text(e, "last-raised", ""),
                  tuple(StatusChange(ALARMS.text(c, "time", ""), ALARMS.text(c, "perceived-severity", ""),
                                     ALARMS.text(c, "alarm-text", "")) for c in ALARMS.all(e, "status-change")))
            for e in ALARMS.all(root, "alarm-list/alarm")]


def raised_link_alarms(alarms: Iterable[Alarm], type_id: str = QBER_ALARM) -> dict[str, str]:
    """Link id -> text of the alarms of type `type_id` raised now on a link."""
    return {alarm.link_id: alarm.text for alarm in alarms
            if alarm.type_id == type_id and not alarm.cleared and alarm.link_id}
