"""qi-entanglement-service: the entanglement-delivery sessions a service controller serves.
The controller reads the sessions asked for with `session_requests` and builds their state and
notifications here; its clients (the orchestrator, the command line, the tests) write requests
with `SessionRequest.config` and read them back with `EntanglementView.parse`."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from models.ns import ENTANGLEMENT_SERVICE as ES
from netconf_core.ns import BASE, decimal

FILTER = f'<sessions xmlns="{ES}"/>'
REASON_LENGTH = 1024


@dataclass(frozen=True)
class SessionRequest:
    name: str
    source_endpoint: str
    destination_endpoint: str
    min_fidelity: float
    source_node: str | None = None
    destination_node: str | None = None
    pair_rate: float | None = None
    number_of_pairs: int | None = None
    max_age_s: float | None = None
    delivery_type: str = "create-and-keep"
    bases: tuple[str, ...] = ()
    max_hops: int | None = None
    avoid_nodes: tuple[str, ...] = ()

    @classmethod
    def read(cls, entry: etree._Element) -> SessionRequest:
        number = ES.number
        return cls(ES.text(entry, "name"), ES.text(entry, "source-endpoint", ""),
                   ES.text(entry, "destination-endpoint", ""), number(entry, "min-fidelity") or 0.5,
                   ES.text(entry, "source-node"), ES.text(entry, "destination-node"), number(entry, "pair-rate"),
                   _int(ES.text(entry, "number-of-pairs")), number(entry, "max-age"),
                   ES.text(entry, "delivery-type", "create-and-keep"), tuple(b.text for b in ES.all(entry, "basis")),
                   _int(ES.text(entry, "max-hops")), tuple(n.text for n in ES.all(entry, "avoid-nodes")))

    def config(self) -> etree._Element:
        """An edit-config <config> putting this session (replacing one of the same name)."""
        config = BASE.element("config")
        entry = ES.sub(ES.sub(config, "sessions"), "session")
        entry.set(BASE("operation"), "replace")
        for tag, value in (("name", self.name), ("source-endpoint", self.source_endpoint),
                           ("destination-endpoint", self.destination_endpoint), ("source-node", self.source_node),
                           ("destination-node", self.destination_node),
                           ("pair-rate", None if self.pair_rate is None else decimal(self.pair_rate, 6)),
                           ("number-of-pairs", self.number_of_pairs),
                           ("min-fidelity", decimal(self.min_fidelity, 6)),
                           ("max-age", None if self.max_age_s is None else decimal(self.max_age_s, 9)),
                           ("delivery-type", self.delivery_type), ("max-hops", self.max_hops)):
            if value is not None:
                ES.sub(entry, tag, value)
        for basis in self.bases:
            ES.sub(entry, "basis", basis)
        for node in self.avoid_nodes:
            ES.sub(entry, "avoid-nodes", node)
        return config


def session_requests(tree: etree._Element | None) -> dict[str, SessionRequest]:
    return {r.name: r for r in (SessionRequest.read(e) for e in ES.all(tree, "sessions/session"))}


def session_removal(name: str) -> etree._Element:
    config = BASE.element("config")
    entry = ES.sub(ES.sub(config, "sessions"), "session")
    entry.set(BASE("operation"), "remove")
    ES.sub(entry, "name", name)
    return config


@dataclass(frozen=True)
class PlanHop:
    index: int
    node_id: str
    link_id: str | None = None
    purification_rounds: int | None = None
    swap_step: int | None = None


@dataclass(frozen=True)
class SessionStatus:
    name: str
    status: str | None = None
    reason: str | None = None
    since: str | None = None
    hops: tuple[PlanHop, ...] = ()
    expected_rate: float | None = None
    expected_fidelity: float | None = None
    delivered_pairs: int | None = None
    discarded_pairs: int | None = None
    delivered_fidelity: float | None = None
    delivered_rate: float | None = None
    best_fidelity: float | None = None

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(h.node_id for h in self.hops)

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(h.link_id for h in self.hops if h.link_id)


def _unit(value: float | None) -> str | None:
    return None if value is None else decimal(min(1.0, max(0.0, value)), 6)


def plan_element(parent: etree._Element, hops: tuple[PlanHop, ...], rate: float | None, fidelity: float | None,
                 ns=ES) -> etree._Element:
    """The entanglement-plan grouping's content under `parent` (in namespace `ns`)."""
    for hop in hops:
        entry = ns.sub(parent, "hop")
        for tag, value in (("index", hop.index), ("node-id", hop.node_id), ("link-id", hop.link_id),
                           ("purification-rounds", hop.purification_rounds), ("swap-step", hop.swap_step)):
            if value is not None:
                ns.sub(entry, tag, value)
    if rate is not None:
        ns.sub(parent, "expected-rate", decimal(rate, 6))
    if fidelity is not None:
        ns.sub(parent, "expected-fidelity", _unit(fidelity))
    return parent


def read_plan(element: etree._Element | None, ns=ES) -> tuple[tuple[PlanHop, ...], float | None, float | None]:
    hops = tuple(sorted((PlanHop(int(ns.text(h, "index")), ns.text(h, "node-id", ""), ns.text(h, "link-id"),
                                 _int(ns.text(h, "purification-rounds")), _int(ns.text(h, "swap-step")))
                         for h in ns.all(element, "hop")), key=lambda h: h.index))
    return hops, ns.number(element, "expected-rate"), ns.number(element, "expected-fidelity")


def sessions_state(statuses: list[SessionStatus]) -> etree._Element:
    sessions = ES.element("sessions")
    for s in statuses:
        entry = ES.sub(sessions, "session")
        ES.sub(entry, "name", s.name)
        for tag, value in (("status", s.status), ("reason", s.reason and s.reason[:REASON_LENGTH]),
                           ("status-since", s.since), ("best-achievable-fidelity", _unit(s.best_fidelity))):
            if value is not None:
                ES.sub(entry, tag, value)
        if s.hops:
            plan_element(ES.sub(entry, "plan"), s.hops, s.expected_rate, s.expected_fidelity)
        for tag, value in (("delivered-pairs", s.delivered_pairs), ("discarded-pairs", s.discarded_pairs),
                           ("delivered-fidelity", _unit(s.delivered_fidelity)),
                           ("delivered-rate", None if s.delivered_rate is None else decimal(s.delivered_rate, 6))):
            if value is not None:
                ES.sub(entry, tag, value)
    return sessions


def session_status_change(name: str, status: str, previous: str | None, reason: str, time: str) -> etree._Element:
    return ES.element("session-status-change", leaves={"name": name, "status": status, "previous-status": previous,
                                                       "time": time, "reason": reason[:REASON_LENGTH]})


@dataclass
class EntanglementView:
    requests: dict[str, SessionRequest] = field(default_factory=dict)
    sessions: dict[str, SessionStatus] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: etree._Element | None) -> EntanglementView:
        view = cls(session_requests(data))
        for entry in ES.all(data, "sessions/session"):
            hops, rate, fidelity = read_plan(ES.find(entry, "plan"))
            name = ES.text(entry, "name")
            view.sessions[name] = SessionStatus(
                name, ES.text(entry, "status"), ES.text(entry, "reason"), ES.text(entry, "status-since"), hops, rate,
                fidelity, _int(ES.text(entry, "delivered-pairs")), _int(ES.text(entry, "discarded-pairs")),
                ES.number(entry, "delivered-fidelity"), ES.number(entry, "delivered-rate"),
                ES.number(entry, "best-achievable-fidelity"))
        return view


def _int(text: str | None) -> int | None:
    return int(text) if text else None
