"""qi-intent: the intents an orchestrator serves. `IntentSpec` reads an intent's configuration
(the orchestrator, and a federation member's glue reading back what it asked for);
`segment_intent` writes the intent that carries a cross-domain service's segment; the state
of an intent, its state-change notification and a dry-run answer are built here and read by
`read_intents` (the command line); `intents_from_data` builds intents from parsed YAML or JSON
(the command line's intent files, the console's form)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from lxml import etree

from models.ns import INTENT, QI_TYPES
from models.service import SegmentEnds, SessionConfig, parse_hops
from netconf_core.ns import BASE, localname

REASON_MAX = 1024  # qit:reason
INTENTS_FILTER = f'<intents xmlns="{INTENT}"/>'


def clip(reason: str) -> str:
    """A reason cut to what qit:reason holds."""
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 3] + "..."


@dataclass(frozen=True)
class IntentSpec:
    """An intent's configuration, as committed."""

    name: str
    source_sae: str
    destination_sae: str
    min_rate: int
    enabled: bool = True
    key_size: int = 256
    ttl: int | None = None
    disjoint_paths: int = 1
    max_hops: int | None = None
    avoid_nodes: tuple[str, ...] = ()
    avoid_links: tuple[str, ...] = ()
    qber_ceiling: float | None = None
    priority: int = 100
    allow_federation: bool = False
    service: str | None = None          # for a segment: the cross-domain service it is part of
    segment: SegmentEnds | None = None

    @classmethod
    def from_xml(cls, intent: etree._Element) -> IntentSpec:
        text = lambda tag, default=None: INTENT.text(intent, tag) or default
        number = lambda tag: int(text(tag)) if text(tag) is not None else None
        segment = INTENT.find(intent, "segment")
        in_segment = lambda tag: INTENT.text(segment, tag) or None
        return cls(
            name=text("name", ""),
            source_sae=INTENT.text(intent, "endpoints/source-sae", ""),
            destination_sae=INTENT.text(intent, "endpoints/destination-sae", ""),
            min_rate=number("min-rate") or 0,
            enabled=text("enabled", "true") == "true",
            key_size=number("key-size") or 256,
            ttl=number("ttl"),
            disjoint_paths=number("disjoint-paths") or 1,
            max_hops=number("max-hops"),
            avoid_nodes=tuple((e.text or "").strip() for e in INTENT.all(intent, "avoid-nodes")),
            avoid_links=tuple((e.text or "").strip() for e in INTENT.all(intent, "avoid-links")),
            qber_ceiling=float(text("qber-ceiling")) if text("qber-ceiling") else None,
            priority=number("priority") if number("priority") is not None else 100,
            allow_federation=text("allow-federation", "false") == "true",
            service=in_segment("service"),
            segment=SegmentEnds(in_segment("source-km") or "", in_segment("destination-km") or "",
                                in_segment("ingress-link"), in_segment("egress-link")) if segment is not None else None)

    @property
    def needs_local_sae(self) -> bool:
        """Whether an end of the intent is an SAE of this domain (not an inter-domain link)."""
        return self.segment is None or self.segment.ingress_link is None or self.segment.egress_link is None

    def session(self, steer: tuple[str, ...]) -> SessionConfig:
        """The qi-service session that carries the intent's keys, kept off the links `steer`
        names. Its QBER ceiling is rounded as the session's configuration holds it."""
        return SessionConfig(self.source_sae, self.destination_sae, self.min_rate, self.key_size, self.ttl,
                             self.max_hops, frozenset(self.avoid_nodes), frozenset(self.avoid_links) | set(steer),
                             round(self.qber_ceiling, 3) if self.qber_ceiling is not None else None, self.segment)


def intent_elements(tree: etree._Element | None) -> dict[str, etree._Element]:
    """The intents of a datastore or <data> tree, by name."""
    return {INTENT.text(e, "name", ""): e for e in INTENT.all(tree, "intents/intent")}


def segment_intent(name: str, service_id: str, source_sae: str, destination_sae: str, rate: int,
                   ends: SegmentEnds) -> etree._Element:
    """The <intents> edit that makes intent `name` carry the segment `ends` of service `service_id`."""
    intents = etree.Element(INTENT("intents"), nsmap={None: INTENT, "nc": BASE})
    intent = INTENT.sub(intents, "intent")
    intent.set(BASE("operation"), "replace")
    INTENT.sub(intent, "name", name)
    endpoints = INTENT.sub(intent, "endpoints")
    INTENT.sub(endpoints, "source-sae", source_sae)
    INTENT.sub(endpoints, "destination-sae", destination_sae)
    INTENT.sub(intent, "min-rate", rate)
    container = INTENT.sub(intent, "segment")
    INTENT.sub(container, "service", service_id)
    ends.append_to(container, INTENT)
    return intents


# --- state, notifications and dry runs ----------------------------------------------------------

def _hops(parent: etree._Element, hops: list[dict]) -> None:
    """Indexed hops ({km-id, node-id, link-id}, absent or empty keys left out) under `parent`."""
    for position, hop in enumerate(hops):
        element = INTENT.sub(parent, "hop")
        INTENT.sub(element, "index", position)
        for key in ("km-id", "node-id", "link-id"):
            if hop.get(key):
                INTENT.sub(element, key, hop[key])


def intent_state(record, transitions: Iterable, observed_generation: int | None = None) -> etree._Element:
    """The state of one intent: `record` has name, generation, state, state_since, reason and
    the status dict the orchestrator keeps (observed-rate, available-rate, conditions, session,
    paths); each transition has sequence, from_state, to_state, time, reason and count."""
    intent = etree.Element(INTENT("intent"))
    INTENT.sub(intent, "name", record.name)
    INTENT.sub(intent, "generation", record.generation)
    if observed_generation is not None:
        INTENT.sub(intent, "observed-generation", observed_generation)
    INTENT.sub(intent, "state", record.state)
    INTENT.sub(intent, "state-since", record.state_since)
    INTENT.sub(intent, "reason", clip(record.reason))
    status = record.status
    for rate in ("observed-rate", "available-rate"):
        if status.get(rate) is not None:
            INTENT.sub(intent, rate, status[rate])
    conditions = INTENT.sub(intent, "conditions")
    for kind, condition in sorted(status.get("conditions", {}).items()):
        entry = INTENT.sub(conditions, "condition")
        # An identityref of qi-intent without prefix: its namespace is the default one in
        # effect (RFC 7950, 9.10.3), which survives the engine's merge of state into the
        # running tree, where lxml drops a prefix declared for the same namespace.
        INTENT.sub(entry, "type", kind)
        for key in ("status", "reason", "message", "last-transition-time"):
            if condition.get(key) is not None:
                INTENT.sub(entry, key, clip(condition[key]) if key == "message" else condition[key])
    history = INTENT.sub(intent, "history")
    for transition in transitions:
        entry = INTENT.sub(history, "transition")
        INTENT.sub(entry, "sequence", transition.sequence)
        if transition.from_state:
            INTENT.sub(entry, "from", transition.from_state)
        INTENT.sub(entry, "to", transition.to_state)
        INTENT.sub(entry, "time", transition.time)
        INTENT.sub(entry, "reason", clip(transition.reason))
        if transition.count > 1:
            INTENT.sub(entry, "count", transition.count)
    if status.get("session"):
        INTENT.sub(intent, "session", status["session"])
    if status.get("federation"):
        _federation(INTENT.sub(intent, "federation"), status["federation"])
    paths = INTENT.sub(intent, "paths")
    for index, path in enumerate(status.get("paths", [])):
        entry = INTENT.sub(paths, "path")
        INTENT.sub(entry, "index", index)
        INTENT.sub(entry, "in-use", "true" if path["in-use"] else "false")
        for domain in path.get("domains", []):
            INTENT.sub(entry, "domains", domain)
        _hops(entry, path["hops"])
    return intent


def _federation(parent: etree._Element, federation: dict) -> None:
    """The federation container of a roaming intent: {service, status, source-domain,
    destination-domain, domains, segments: [{index, domain, status}]}."""
    for key in ("service", "status", "source-domain", "destination-domain"):
        if federation.get(key):
            INTENT.sub(parent, key, federation[key])
    for domain in federation.get("domains", []):
        INTENT.sub(parent, "domains", domain)
    for segment in federation.get("segments", []):
        entry = INTENT.sub(parent, "segment")
        for key in ("index", "domain", "status"):
            INTENT.sub(entry, key, segment[key])


def read_federation(intent: etree._Element) -> dict:
    """The federation container of an intent in a <get> reply as `_federation` takes it ({} when absent)."""
    fed = INTENT.find(intent, "federation")
    if fed is None:
        return {}
    out = {key: INTENT.text(fed, key) for key in ("service", "status", "source-domain", "destination-domain")}
    out["domains"] = [(e.text or "").strip() for e in INTENT.all(fed, "domains")]
    out["segments"] = [{"index": int(INTENT.text(e, "index", "0")), "domain": INTENT.text(e, "domain"),
                        "status": INTENT.text(e, "status")} for e in INTENT.all(fed, "segment")]
    return out


def generations(intent: etree._Element) -> tuple[int, int]:
    """An intent's generation and observed-generation in a <get> reply (0 when absent)."""
    return tuple(int(INTENT.text(intent, leaf, "0") or 0) for leaf in ("generation", "observed-generation"))


def intent_state_change(name: str, transition, generation: int) -> etree._Element:
    """The intent-state-change notification of a transition (from_state, to_state, time, reason)
    made on the intent's configuration of `generation`."""
    change = INTENT.element("intent-state-change")
    for tag, value in (("name", name), ("from", transition.from_state), ("to", transition.to_state),
                       ("generation", generation), ("time", transition.time), ("reason", transition.reason)):
        if value is not None:
            INTENT.sub(change, tag, value)
    return change


def dry_run_entry(name: str, change: str, feasible: bool, reason: str, hops: list[dict] | None,
                  requests: list[tuple[str, str, str, str, str]]) -> etree._Element:
    """One intent of a dry-run answer: what would change, whether it is feasible and why, its
    path (hops) when planned, and the requests (stratum, operation, resource, name, detail)."""
    entry = etree.Element(INTENT("intent"), nsmap={None: INTENT, "qit": QI_TYPES})
    INTENT.sub(entry, "name", name)
    INTENT.sub(entry, "change", change)
    INTENT.sub(entry, "feasible", "true" if feasible else "false")
    INTENT.sub(entry, "reason", clip(reason))
    if hops is not None:
        _hops(INTENT.sub(entry, "path"), hops)
    for index, (stratum, operation, resource, target, detail) in enumerate(requests):
        request = INTENT.sub(entry, "request")
        INTENT.sub(request, "index", index)
        INTENT.sub(request, "stratum", f"qit:{stratum}")
        INTENT.sub(request, "operation", operation)
        INTENT.sub(request, "resource", resource)
        INTENT.sub(request, "name", target)
        INTENT.sub(request, "detail", clip(detail))
    return entry


def read_intents(data: etree._Element | None) -> dict[str, dict]:
    """Every intent of a <get> reply as a dict of its leaves (configuration and state), with its
    paths (in-use, nodes, links), endpoints, conditions, history and federation (a roaming
    intent's service, {} for others)."""
    leaves = lambda element: {localname(c): (c.text or "").strip() for c in element if len(c) == 0}
    out = {}
    for intent in INTENT.all(data, "intents/intent"):
        entry = leaves(intent)
        paths = []
        for path in INTENT.all(intent, "paths/path"):
            hops = parse_hops(path, INTENT)
            paths.append({"in-use": INTENT.text(path, "in-use") == "true", "nodes": [h.node_id for h in hops],
                          "links": [h.link_id for h in hops if h.link_id]})
        entry["paths"] = paths
        entry["source-sae"] = INTENT.text(intent, "endpoints/source-sae", "")
        entry["destination-sae"] = INTENT.text(intent, "endpoints/destination-sae", "")
        entry["conditions"] = [leaves(c) for c in INTENT.all(intent, "conditions/condition")]
        entry["history"] = [leaves(t) for t in INTENT.all(intent, "history/transition")]
        entry["federation"] = read_federation(intent)
        out[entry.get("name", "")] = entry
    return out


# --- intents from a mapping (the YAML or JSON of `qstrata intent apply` and the console) -------

INTENT_LEAVES = {"name": str, "description": str, "enabled": bool, "min-rate": int, "key-size": int, "ttl": int,
                 "disjoint-paths": int, "max-hops": int, "avoid-nodes": list, "avoid-links": list,
                 "qber-ceiling": float, "priority": int, "allow-federation": bool}
INTENT_ENDPOINTS = ("source-sae", "destination-sae")


class IntentInputError(ValueError):
    """An intent mapping that is not a qi-intent intent; the message names where and what."""


def intents_from_data(data: object, where: str) -> list[etree._Element]:
    """The <intent> elements of parsed YAML or JSON: one intent, a list, or `intents:` holding them."""
    if isinstance(data, dict) and set(data) & {"intents", "qi-intent:intents"}:
        data = data.get("intents", data.get("qi-intent:intents"))
        if isinstance(data, dict) and set(data) == {"intent"}:
            data = data["intent"]
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise IntentInputError(f"{where}: no intent in the file")
    return [intent_xml(entry, f"{where}: intent {i + 1}") for i, entry in enumerate(entries)]


def intent_xml(entry: object, where: str) -> etree._Element:
    """One <intent> of a mapping of qi-intent leaves (endpoints as a mapping, leaf-lists as lists)."""
    if not isinstance(entry, dict):
        raise IntentInputError(f"{where}: an intent is a mapping of qi-intent leaves, not {type(entry).__name__}")
    if isinstance(entry.get("name"), str):
        where = f"{where} ({entry['name']!r})"
    unknown = set(entry) - set(INTENT_LEAVES) - {"endpoints"}
    if unknown:
        raise IntentInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} "
                               f"(expected: {', '.join(['endpoints', *INTENT_LEAVES])})")
    for required in ("name", "endpoints", "min-rate"):
        if required not in entry:
            raise IntentInputError(f"{where}: missing field {required!r}")
    endpoints = entry["endpoints"]
    if not isinstance(endpoints, dict) or set(endpoints) != set(INTENT_ENDPOINTS):
        raise IntentInputError(f"{where}: endpoints must hold exactly source-sae and destination-sae")
    intent = INTENT.element("intent")
    INTENT.sub(intent, "name", _value(where, "name", entry["name"], str))
    ends = INTENT.sub(intent, "endpoints")
    for leaf in INTENT_ENDPOINTS:
        INTENT.sub(ends, leaf, _value(where, leaf, endpoints[leaf], str))
    for leaf, kind in INTENT_LEAVES.items():
        if leaf == "name" or leaf not in entry:
            continue
        value = entry[leaf]
        if kind is list:
            if not isinstance(value, list):
                raise IntentInputError(f"{where}: {leaf} must be a list, got {value!r}")
            for item in value:
                INTENT.sub(intent, leaf, _value(where, leaf, item, str))
        else:
            INTENT.sub(intent, leaf, _value(where, leaf, value, kind))
    return intent


def _value(where: str, leaf: str, value: object, kind: type) -> str:
    if kind is bool:
        if not isinstance(value, bool):
            raise IntentInputError(f"{where}: {leaf} must be true or false, got {value!r}")
        return "true" if value else "false"
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise IntentInputError(f"{where}: {leaf} must be {'an integer' if kind is int else 'a number'}, "
                                   f"got {value!r}")
        return str(int(value)) if kind is int else f"{value:.3f}"
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise IntentInputError(f"{where}: {leaf} must be a non-empty string, got {value!r}")
    return str(value)
