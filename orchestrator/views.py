"""What the orchestrator reads of the three strata, as plain data: the fibre network
(qi-connectivity), the QKD network (qi-forwarding) and the key-delivery sessions
(qi-service), each parsed from a controller's <get> reply (RFC 8345 networks), and a
controller's alarm list (RFC 8632 ietf-alarms)."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

NW_NS = "urn:ietf:params:xml:ns:yang:ietf-network"
NT_NS = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD_NS = "urn:qstrata:yang:qi-forwarding"
CONN_NS = "urn:qstrata:yang:qi-connectivity"
SVC_NS = "urn:qstrata:yang:qi-service"
ETSI_TYPES_NS = "urn:etsi:qkd:yang:etsi-qkd-node-types"
AL_NS = "urn:ietf:params:xml:ns:yang:ietf-alarms"

LINK_UP = "ACTIVE"
DEFAULT_KEY_SIZE = 256  # qi-service key-size default


def nw(tag: str) -> str:
    return f"{{{NW_NS}}}{tag}"


def nt(tag: str) -> str:
    return f"{{{NT_NS}}}{tag}"


def _text(element: etree._Element | None, path: str, default: str | None = None) -> str | None:
    if element is None:
        return default
    value = element.findtext(path)
    return value.strip() if value is not None else default


def _number(element: etree._Element | None, path: str) -> float | None:
    value = _text(element, path)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _identity(value: str | None) -> str | None:
    """'etsi-qkdn-types:ACTIVE' -> 'ACTIVE'."""
    return value.rpartition(":")[2] if value else value


PortRef = tuple[str, str]
"""(node-id, tp-id) in one network."""


# --- connectivity -------------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    id: str
    a: PortRef
    b: PortRef
    loss_db: float
    up: bool
    eavesdropper: bool

    def far_end(self, near: PortRef) -> PortRef:
        return self.b if near == self.a else self.a


@dataclass(frozen=True)
class FibreNode:
    id: str
    kind: str  # site or optical-switch
    site: str
    ports: tuple[str, ...]
    insertion_loss: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    fabric_loss: float = 0.0  # a switch's, crossed once per cross-connect


@dataclass
class FibreView:
    network_id: str = ""
    nodes: dict[str, FibreNode] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)
    span_at: dict[PortRef, str] = field(default_factory=dict)
    optical_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> spans of its route

    @classmethod
    def parse(cls, data: etree._Element | None) -> FibreView:
        view = cls()
        network = _network_of_type(data, f"{{{CONN_NS}}}fibre-network")
        if network is None:
            return view
        view.network_id = _text(network, nw("network-id"), "")
        c = lambda tag: f"{{{CONN_NS}}}{tag}"
        for node in network.iterfind(nw("node")):
            node_id = _text(node, nw("node-id"), "")
            fibre = node.find(c("fibre-node"))
            ports, losses = [], {}
            for tp in node.iterfind(nt("termination-point")):
                tp_id = _text(tp, nt("tp-id"), "")
                ports.append(tp_id)
                loss = _number(tp, f"{c('fibre-port')}/{c('insertion-loss')}")
                if loss is not None:
                    losses[tp_id] = loss
            view.nodes[node_id] = FibreNode(node_id, _text(fibre, c("kind"), "site"),
                                            _text(fibre, c("site"), node_id), tuple(ports), losses,
                                            _number(fibre, c("fabric-loss")) or 0.0)
        for link in network.iterfind(nt("link")):
            span = link.find(c("fibre-span"))
            if span is None:
                continue
            link_id = _text(link, nt("link-id"), "")
            a = (_text(link, f"{nt('source')}/{nt('source-node')}", ""), _text(link, f"{nt('source')}/{nt('source-tp')}", ""))
            b = (_text(link, f"{nt('destination')}/{nt('dest-node')}", ""), _text(link, f"{nt('destination')}/{nt('dest-tp')}", ""))
            loss = _number(span, c("total-loss"))
            if loss is None:
                loss = (_number(span, c("length")) or 0.0) * (_number(span, c("attenuation")) or 0.2) \
                    + (_number(span, c("extra-loss")) or 0.0)
            up = _text(span, c("oper-status"), "up") in ("up", "degraded")
            eavesdropper = _text(span, c("eavesdropper-present"), "false") == "true"
            view.spans[link_id] = Span(link_id, a, b, loss, up, eavesdropper)
            view.span_at[a] = view.span_at[b] = link_id
        for path in network.iterfind(f"{c('optical-paths')}/{c('optical-path')}"):
            route = tuple(_text(hop, c("span"), "") for hop in path.iterfind(f"{c('route')}/{c('hop')}"))
            view.optical_paths[_text(path, c("name"), "")] = route
        return view

    def healthy(self, span_id: str) -> bool:
        span = self.spans.get(span_id)
        return span is not None and span.up and not span.eavesdropper


# --- forwarding ---------------------------------------------------------------------------

@dataclass(frozen=True)
class QkdNode:
    id: str
    km_id: str
    site: str
    interfaces: dict[str, PortRef | None]  # tp-id -> fibre attachment (node, tp)
    qkdn_id: str = ""  # ETSI GS QKD 015 identifier of the node


@dataclass(frozen=True)
class QkdLink:
    id: str
    a: PortRef
    b: PortRef
    qkdl_id: str
    link_type: str  # PHYS or VIRT
    status: str | None
    skr: float | None
    eskr: float | None
    qber: float | None
    optical_path: str | None
    peer_km: str | None = None  # an inter-domain link: the key manager of its far end, another domain's node

    @property
    def up(self) -> bool:
        return self.status == LINK_UP

    @property
    def external(self) -> bool:
        return self.peer_km is not None

    def nodes(self) -> tuple[str, str]:
        return self.a[0], self.b[0]


@dataclass
class ForwardingView:
    network_id: str = ""
    nodes: dict[str, QkdNode] = field(default_factory=dict)
    links: dict[str, QkdLink] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: etree._Element | None) -> ForwardingView:
        view = cls()
        network = _network_of_type(data, f"{{{FWD_NS}}}qkd-network")
        if network is None:
            return view
        view.network_id = _text(network, nw("network-id"), "")
        f = lambda tag: f"{{{FWD_NS}}}{tag}"
        for node in network.iterfind(nw("node")):
            node_id = _text(node, nw("node-id"), "")
            qkd = node.find(f("qkd-node"))
            interfaces: dict[str, PortRef | None] = {}
            for tp in node.iterfind(nt("termination-point")):
                support = tp.find(nt("supporting-termination-point"))
                interfaces[_text(tp, nt("tp-id"), "")] = (
                    (_text(support, nt("node-ref"), ""), _text(support, nt("tp-ref"), "")) if support is not None else None)
            view.nodes[node_id] = QkdNode(node_id, _text(qkd, f("km-id"), ""), _text(qkd, f("site"), ""), interfaces,
                                          _text(qkd, f("qkdn-id"), ""))
        for link in network.iterfind(nt("link")):
            qkd = link.find(f("qkd-link"))
            if qkd is None:
                continue
            link_id = _text(link, nt("link-id"), "")
            view.links[link_id] = QkdLink(
                link_id,
                (_text(link, f"{nt('source')}/{nt('source-node')}", ""), _text(link, f"{nt('source')}/{nt('source-tp')}", "")),
                (_text(link, f"{nt('destination')}/{nt('dest-node')}", ""), _text(link, f"{nt('destination')}/{nt('dest-tp')}", "")),
                _text(qkd, f("qkdl-id"), ""), _identity(_text(qkd, f("link-type"))) or "PHYS",
                _identity(_text(qkd, f("status"))), _number(qkd, f("skr")), _number(qkd, f("eskr")),
                _number(qkd, f("qber")), _text(qkd, f("optical-path")),
                _text(qkd, f"{f('external-peer')}/{f('km-id')}"))
        return view

    def node_of_km(self, km_id: str) -> str | None:
        return next((n.id for n in self.nodes.values() if n.km_id == km_id), None)

    def km_of(self, node_id: str) -> str | None:
        """The key manager of a node, or of the far node of an inter-domain link."""
        if node_id in self.nodes:
            return self.nodes[node_id].km_id
        return next((l.peer_km for l in self.links.values() if l.external and l.b[0] == node_id), None)

    def used_interfaces(self) -> set[PortRef]:
        return {end for link in self.links.values() if link.link_type == "PHYS" for end in (link.a, link.b)}


# --- service ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    km_id: str
    node_id: str
    link_id: str | None


@dataclass(frozen=True)
class SessionConfig:
    """What a qi-service session asks for (its configuration), in a form two can be compared in:
    what the orchestrator wants, and what the service stratum holds."""

    source_sae: str
    destination_sae: str
    rate: int
    key_size: int
    ttl: int | None
    max_hops: int | None
    avoid_nodes: frozenset[str]
    avoid_links: frozenset[str]
    qber_ceiling: float | None
    segment: tuple[str | None, ...] | None  # source-km, destination-km, ingress-link, egress-link

    @classmethod
    def parse(cls, session: etree._Element) -> SessionConfig:
        s = lambda tag: f"{{{SVC_NS}}}{tag}"
        number = lambda tag: int(n) if (n := _number(session, s(tag))) is not None else None
        segment = session.find(s("segment"))
        return cls(_text(session, s("source-sae"), ""), _text(session, s("destination-sae"), ""),
                   number("rate") or 0, number("key-size") or DEFAULT_KEY_SIZE, number("ttl"), number("max-hops"),
                   frozenset((e.text or "").strip() for e in session.iterfind(s("avoid-nodes"))),
                   frozenset((e.text or "").strip() for e in session.iterfind(s("avoid-links"))),
                   _number(session, s("qber-ceiling")),
                   tuple(_text(segment, s(tag)) for tag in ("source-km", "destination-km", "ingress-link",
                                                            "egress-link")) if segment is not None else None)


@dataclass(frozen=True)
class Session:
    name: str
    source_sae: str
    destination_sae: str
    rate: int
    status: str | None
    reason: str
    path: tuple[Hop, ...]
    delivered_keys: int = 0
    delivered_bits: int = 0
    config: SessionConfig | None = None  # as the service stratum holds it

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(h.link_id for h in self.path if h.link_id)


@dataclass
class ServiceView:
    sessions: dict[str, Session] = field(default_factory=dict)
    saes: dict[str, str] = field(default_factory=dict)  # sae-id -> km-id

    @classmethod
    def parse(cls, data: etree._Element | None) -> ServiceView:
        view = cls()
        if data is None:
            return view
        s = lambda tag: f"{{{SVC_NS}}}{tag}"
        for session in data.iterfind(f"{s('sessions')}/{s('session')}"):
            name = _text(session, s("name"), "")
            view.sessions[name] = Session(
                name, _text(session, s("source-sae"), ""), _text(session, s("destination-sae"), ""),
                int(_number(session, s("rate")) or 0), _text(session, s("status")), _text(session, s("reason"), ""),
                parse_hops(session.find(s("path")), SVC_NS), int(_number(session, s("delivered-keys")) or 0),
                int(_number(session, s("delivered-bits")) or 0), SessionConfig.parse(session))
        for sae in data.iterfind(f"{s('sae-directory')}/{s('sae')}"):
            view.saes[_text(sae, s("sae-id"), "")] = _text(sae, s("km-id"), "")
        return view


# --- alarms (RFC 8632) ----------------------------------------------------------------------

@dataclass(frozen=True)
class Alarm:
    """An entry of a controller's alarm list (ietf-alarms)."""

    resource: str
    type_id: str       # the alarm type identity, without its prefix
    cleared: bool
    severity: str
    text: str
    last_changed: str

    @property
    def link_id(self) -> str | None:
        """The link of a QKD or fibre network the resource (an instance-identifier) names."""
        _, found, tail = self.resource.rpartition("link-id=")
        quote = tail[:1]
        return tail[1:].removesuffix("]").removesuffix(quote) if found and quote in ("'", '"') else None


def parse_alarms(data: etree._Element | None) -> list[Alarm]:
    """The alarm list of a <get> reply of /alarms."""
    a = lambda tag: f"{{{AL_NS}}}{tag}"
    if data is None:
        return []
    return [Alarm(_text(e, a("resource"), ""), _identity(_text(e, a("alarm-type-id"))) or "",
                  _text(e, a("is-cleared")) == "true", _text(e, a("perceived-severity"), ""),
                  _text(e, a("alarm-text"), ""), _text(e, a("last-changed"), ""))
            for e in data.iterfind(f"{a('alarms')}/{a('alarm-list')}/{a('alarm')}")]


def qber_alarms(alarms: list[Alarm]) -> dict[str, str]:
    """Link id -> text of the QBER alarms raised now."""
    return {alarm.link_id: alarm.text for alarm in alarms
            if alarm.type_id == "qber-above-threshold" and not alarm.cleared and alarm.link_id}


def parse_hops(parent: etree._Element | None, ns: str) -> tuple[Hop, ...]:
    """The hops of a qi-types key-path grouping, in index order."""
    if parent is None:
        return ()
    q = lambda tag: f"{{{ns}}}{tag}"
    hops = sorted(parent.iterfind(q("hop")), key=lambda h: int(_text(h, q("index"), "0")))
    return tuple(Hop(_text(h, q("km-id"), ""), _text(h, q("node-id"), ""), _text(h, q("link-id"))) for h in hops)


def _network_of_type(data: etree._Element | None, type_tag: str) -> etree._Element | None:
    if data is None:
        return None
    for network in data.iterfind(f"{nw('networks')}/{nw('network')}"):
        types = network.find(nw("network-types"))
        if types is not None and types.find(type_tag) is not None:
            return network
    return None
