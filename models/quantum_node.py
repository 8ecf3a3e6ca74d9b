"""qi-quantum-node as the levels exchange it: the quantum node (devices/quantum_node.py) reads
its configuration with `read_node` and builds its state, RPC replies and notifications here;
the fabric controller reads nodes with `read_node` (a <get> reply holds configuration and
state); the entanglement service controller writes sessions with `sessions_edit`; the delivery
client reads pairs with `read_pairs`."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from models.ns import QUANTUM_NODE as QN
from netconf_core.ns import BASE, decimal, identity

FILTER = f'<quantum-node xmlns="{QN}"/>'


def _int(text: str | None, default: int | None = None) -> int | None:
    return int(text) if text else default


def _float(text: str | None, default: float | None = None) -> float | None:
    return float(text) if text else default


def _bool(text: str | None, default: bool) -> bool:
    return default if text is None else text == "true"


# --- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Attachment:
    site: str | None
    switch: str | None
    port: int | None


@dataclass(frozen=True)
class ElementaryLink:
    link_id: str
    interface: str
    peer_node: str
    peer_interface: str | None
    link_type: str  # identity name: single-click, double-click, source-in-the-middle
    midpoint: str | None = None
    length_km: float | None = None
    optical_path: str | None = None
    fidelity_threshold: float = 0.5
    enabled: bool = True


@dataclass(frozen=True)
class Hop:
    index: int
    node_id: str
    link_id: str | None = None
    purification_rounds: int = 0
    swap_step: int | None = None


@dataclass(frozen=True)
class SessionPlan:
    """A session as configured on every node of its path."""

    name: str
    hops: tuple[Hop, ...]
    max_age_s: float | None = None

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(h.node_id for h in self.hops)

    @property
    def link_ids(self) -> tuple[str, ...]:
        return tuple(h.link_id or "" for h in self.hops[:-1])


@dataclass(frozen=True)
class Photonics:
    emission_probability: float = 5.1e-4
    detector_efficiency: float = 1.0
    dark_count_probability: float = 1.5e-7
    hom_visibility: float = 0.9
    bright_state_population: float = 0.1
    alpha: float = 0.2
    preparation_time_s: float = 0.0
    modes: int = 1


@dataclass(frozen=True)
class NodeConfig:
    node_id: str | None
    role: str | None  # end-node or repeater
    site: str | None
    storage_qubits: int = 1
    storage_t2_s: float | None = None
    gate_fidelity: float = 1.0
    measurement_fidelity: float = 1.0
    swap_success: float = 1.0
    can_swap: bool = True
    can_purify: bool = True
    can_measure: bool = True
    photonics: Photonics = Photonics()
    applications: tuple[str, ...] = ()
    interfaces: dict[str, Attachment] = field(default_factory=dict)
    links: dict[str, ElementaryLink] = field(default_factory=dict)
    sessions: dict[str, SessionPlan] = field(default_factory=dict)

    @property
    def swap_fidelity(self) -> float:
        """The factor a swap here applies to the Werner parameter: a two-qubit gate and two
        measurements (depolarising model)."""
        return self.gate_fidelity * self.measurement_fidelity


def read_node(root: etree._Element | None) -> NodeConfig | None:
    """The configuration in a <quantum-node> element (read with its defaults reported)."""
    if root is None:
        return None
    ops, caps, ph = QN.find(root, "operations"), QN.find(root, "capabilities"), QN.find(root, "photonics")
    photonics = Photonics(
        _float(QN.text(ph, "emission-probability"), 5.1e-4), _float(QN.text(ph, "detector-efficiency"), 1.0),
        _float(QN.text(ph, "dark-count-probability"), 1.5e-7), _float(QN.text(ph, "hom-visibility"), 0.9),
        _float(QN.text(ph, "bright-state-population"), 0.1), _float(QN.text(ph, "alpha"), 0.2),
        _float(QN.text(ph, "preparation-time"), 0.0), _int(QN.text(ph, "modes"), 1))
    interfaces = {QN.text(i, "name"): Attachment(QN.text(i, "fibre-attachment/site"),
                                                 QN.text(i, "fibre-attachment/switch"),
                                                 _int(QN.text(i, "fibre-attachment/port")))
                  for i in QN.all(root, "interfaces/interface")}
    links = {}
    for entry in QN.all(root, "elementary-links/link"):
        link_id = QN.text(entry, "link-id")
        links[link_id] = ElementaryLink(
            link_id, QN.text(entry, "interface", ""), QN.text(entry, "peer-node", ""),
            QN.text(entry, "peer-interface"), identity(QN.text(entry, "type")) or "",
            QN.text(entry, "midpoint"), _float(QN.text(entry, "length")), QN.text(entry, "optical-path"),
            _float(QN.text(entry, "fidelity-threshold"), 0.5), _bool(QN.text(entry, "enabled"), True))
    sessions = {}
    for entry in QN.all(root, "sessions/session"):
        hops = sorted((Hop(int(QN.text(h, "index")), QN.text(h, "node-id", ""), QN.text(h, "link-id"),
                           _int(QN.text(h, "purification-rounds"), 0), _int(QN.text(h, "swap-step")))
                       for h in QN.all(entry, "hop")), key=lambda h: h.index)
        name = QN.text(entry, "name")
        sessions[name] = SessionPlan(name, tuple(hops), _float(QN.text(entry, "max-age")))
    return NodeConfig(
        QN.text(root, "node-id"), identity(QN.text(root, "role")), QN.text(root, "site"),
        _int(QN.text(root, "storage-qubits/count"), 1), _float(QN.text(root, "storage-qubits/t2")),
        _float(QN.text(ops, "gate-fidelity"), 1.0), _float(QN.text(ops, "measurement-fidelity"), 1.0),
        _float(QN.text(ops, "swap-success-probability"), 1.0), _bool(QN.text(caps, "swap"), True),
        _bool(QN.text(caps, "purify"), True), _bool(QN.text(caps, "measure-directly"), True), photonics,
        tuple(a.text for a in QN.all(root, "application")), interfaces, links, sessions)


def session_element(plan: SessionPlan) -> etree._Element:
    """A <session> entry replacing the node's entry of the same name."""
    entry = QN.element("session")
    entry.set(BASE("operation"), "replace")
    QN.sub(entry, "name", plan.name)
    for hop in plan.hops:
        element = QN.sub(entry, "hop")
        QN.sub(element, "index", hop.index)
        QN.sub(element, "node-id", hop.node_id)
        if hop.link_id is not None:
            QN.sub(element, "link-id", hop.link_id)
            QN.sub(element, "purification-rounds", hop.purification_rounds)
        if hop.swap_step is not None:
            QN.sub(element, "swap-step", hop.swap_step)
    if plan.max_age_s is not None:
        QN.sub(entry, "max-age", decimal(plan.max_age_s, 9))
    return entry


def session_removal(name: str) -> etree._Element:
    entry = QN.element("session")
    entry.set(BASE("operation"), "remove")
    QN.sub(entry, "name", name)
    return entry


def sessions_edit(entries: list[etree._Element]) -> etree._Element:
    """An edit-config <config> of the node's sessions with `entries`."""
    config = BASE.element("config")
    QN.sub(QN.sub(config, "quantum-node"), "sessions").extend(entries)
    return config


# --- state -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkState:
    status: str  # up or down
    reason: str | None = None
    channel_loss: float | None = None
    success_probability: float | None = None
    attempt_cycle_s: float | None = None
    generation_rate: float | None = None
    fidelity: float | None = None
    pairs_generated: int = 0
    pairs_stored: int = 0


@dataclass(frozen=True)
class SessionState:
    status: str  # waiting or active
    reason: str | None = None
    pairs_delivered: int = 0
    pairs_served: int = 0
    pairs_discarded: int = 0
    pairs_waiting: int = 0
    delivered_fidelity: float | None = None
    delivered_rate: float | None = None


@dataclass(frozen=True)
class NodeState:
    in_use: int
    failed_qubits: int
    decoherence_rate: float
    links: dict[str, LinkState]
    sessions: dict[str, SessionState]


def _dec(value: float | None, digits: int) -> str | None:
    return None if value is None else decimal(value, digits)


def _fidelity(value: float | None) -> str | None:
    return None if value is None else decimal(min(1.0, max(0.0, value)), 6)


def node_state(state: NodeState) -> etree._Element:
    """The config false part of <quantum-node>."""
    node = QN.element("quantum-node")
    QN.sub(QN.sub(node, "storage-qubits"), "in-use", state.in_use)
    QN.sub(node, "decoherence-rate", decimal(state.decoherence_rate, 6))
    QN.sub(node, "failed-storage-qubits", state.failed_qubits)
    if state.links:
        container = QN.sub(node, "elementary-links")
        for link_id, link in state.links.items():
            entry = QN.sub(container, "link")
            QN.sub(entry, "link-id", link_id)
            for tag, value in (("status", link.status), ("reason", link.reason and link.reason[:1024]),
                               ("channel-loss", _dec(link.channel_loss, 2)),
                               ("success-probability", _probability(link.success_probability)),
                               ("attempt-cycle", _dec(link.attempt_cycle_s, 9)),
                               ("generation-rate", _dec(link.generation_rate, 6)),
                               ("fidelity", _fidelity(link.fidelity)), ("pairs-generated", link.pairs_generated),
                               ("pairs-stored", link.pairs_stored)):
                if value is not None:
                    QN.sub(entry, tag, value)
    if state.sessions:
        container = QN.sub(node, "sessions")
        for name, session in state.sessions.items():
            entry = QN.sub(container, "session")
            QN.sub(entry, "name", name)
            for tag, value in (("status", session.status), ("reason", session.reason and session.reason[:1024]),
                               ("pairs-delivered", session.pairs_delivered), ("pairs-served", session.pairs_served),
                               ("pairs-discarded", session.pairs_discarded), ("pairs-waiting", session.pairs_waiting),
                               ("delivered-fidelity", _fidelity(session.delivered_fidelity)),
                               ("delivered-rate", _dec(session.delivered_rate, 6))):
                if value is not None:
                    QN.sub(entry, tag, value)
    return node


def _probability(value: float | None) -> str | None:
    """qit:probability has 6 fraction digits: a tiny probability is kept as the smallest step
    above 0 rather than shown as 0, which would read as 'never'."""
    if value is None:
        return None
    return decimal(value, 6) if value == 0 or value >= 1e-6 else "0.000001"


def read_state(root: etree._Element | None) -> NodeState:
    """The state in a <get> reply's <quantum-node>."""
    links = {QN.text(e, "link-id"): LinkState(
        QN.text(e, "status", "down"), QN.text(e, "reason"), _float(QN.text(e, "channel-loss")),
        _float(QN.text(e, "success-probability")), _float(QN.text(e, "attempt-cycle")),
        _float(QN.text(e, "generation-rate")), _float(QN.text(e, "fidelity")),
        _int(QN.text(e, "pairs-generated"), 0), _int(QN.text(e, "pairs-stored"), 0))
        for e in QN.all(root, "elementary-links/link")}
    sessions = {QN.text(e, "name"): SessionState(
        QN.text(e, "status", "waiting"), QN.text(e, "reason"), _int(QN.text(e, "pairs-delivered"), 0),
        _int(QN.text(e, "pairs-served"), 0), _int(QN.text(e, "pairs-discarded"), 0),
        _int(QN.text(e, "pairs-waiting"), 0), _float(QN.text(e, "delivered-fidelity")),
        _float(QN.text(e, "delivered-rate")))
        for e in QN.all(root, "sessions/session")}
    return NodeState(_int(QN.text(root, "storage-qubits/in-use"), 0), _int(QN.text(root, "failed-storage-qubits"), 0),
                     _float(QN.text(root, "decoherence-rate"), 0.0), links, sessions)


# --- notifications -----------------------------------------------------------------------------

def link_status_change(link_id: str, status: str, previous: str | None, reason: str) -> etree._Element:
    return QN.element("link-status-change", leaves={"link-id": link_id, "status": status,
                                                    "previous-status": previous, "reason": reason[:1024]})


def fidelity_alarm(link_id: str, fidelity: float, threshold: float, raised: bool) -> etree._Element:
    return QN.element("fidelity-alarm", leaves={"link-id": link_id, "fidelity": _fidelity(fidelity),
                                                "threshold": _fidelity(threshold), "raised": raised})


def memory_alarm(fault: str, raised: bool, decoherence_rate: float, in_service: int, pairs_lost: int,
                 reason: str) -> etree._Element:
    """A fault of the storage qubits began or ended (fault: coherence-loss or memory-failure)."""
    return QN.element("memory-alarm", leaves={"fault": fault, "raised": raised,
                                              "decoherence-rate": decimal(decoherence_rate, 6),
                                              "storage-qubits-in-service": in_service, "pairs-lost": pairs_lost,
                                              "reason": reason[:1024]})


# --- delivered pairs (create-pairs and receive-pairs) ---------------------------------------------

@dataclass(frozen=True)
class DeliveredPair:
    pair_id: str
    session: str
    sequence: int
    remote_node: str
    goodness: float
    bell_state: str
    time_of_goodness: float
    basis: str | None = None
    outcome: int | None = None


def pair_element(pair: DeliveredPair) -> etree._Element:
    return QN.element("pair", leaves={
        "pair-id": pair.pair_id, "session": pair.session, "sequence": pair.sequence,
        "remote-node": pair.remote_node, "goodness": _fidelity(pair.goodness), "bell-state": pair.bell_state,
        "time-of-goodness": decimal(pair.time_of_goodness, 9), "basis": pair.basis, "outcome": pair.outcome})


def read_pairs(reply: etree._Element | None) -> list[DeliveredPair]:
    """The pairs of a create-pairs or receive-pairs reply, in order."""
    return [DeliveredPair(QN.text(e, "pair-id"), QN.text(e, "session", ""), _int(QN.text(e, "sequence"), 0),
                          QN.text(e, "remote-node", ""), float(QN.text(e, "goodness")), QN.text(e, "bell-state", ""),
                          float(QN.text(e, "time-of-goodness")), QN.text(e, "basis"), _int(QN.text(e, "outcome")))
            for e in (reply.iter(QN("pair")) if reply is not None else ())]


def create_request(remote_node: str, number: int, min_fidelity: float = 0.5, kind: str = "create-and-keep",
                   bases: tuple[str, ...] = (), max_time_s: float = 10.0) -> etree._Element:
    rpc = QN.element("create-pairs", leaves={"remote-node": remote_node, "number": number,
                                             "min-fidelity": _fidelity(min_fidelity), "type": kind})
    for basis in bases:
        QN.sub(rpc, "basis", basis)
    QN.sub(rpc, "max-time", decimal(max_time_s, 9))
    return rpc


def receive_request(remote_node: str, number: int = 1000) -> etree._Element:
    return QN.element("receive-pairs", leaves={"remote-node": remote_node, "number": number})
