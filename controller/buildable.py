"""PHYS QKD links that could be built: pairs of free QKD interfaces (qi-forwarding) that the
fibre plant joins (qi-connectivity), each over its lowest-loss optical route through trusted
nodes, or an optical bypass of some where no such route exists (`qkd_physics.reach`), at the
effective key rate and QBER the link model expects at the route's loss. A span that carries
an optical path already, or is down or tapped, carries no new one. Named like the
orchestrator's new links: 'node.tp-node.tp', the lower end first."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from qkd_physics import expected_eskr, link_performance
from qkd_physics.reach import optical_routes

NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD = "urn:qstrata:yang:qi-forwarding"
CONN = "urn:qstrata:yang:qi-connectivity"

Port = tuple[str, str]


@dataclass(frozen=True)
class BuildableLink:
    link_id: str
    ends: tuple[str, str]    # QKD node ids
    eskr: int                # bit/s, expected
    qber: float              # percent, expected
    spans: tuple[str, ...]
    loss_db: float
    bypasses: tuple[str, ...] = ()


@dataclass(frozen=True)
class _FibreNode:
    id: str
    kind: str
    site: str
    ports: tuple[str, ...]
    insertion_loss: dict[str, float] = field(default_factory=dict)
    fabric_loss: float = 0.0


@dataclass(frozen=True)
class _Span:
    id: str
    a: Port
    b: Port
    loss_db: float
    usable: bool


def buildable_links(forwarding: etree._Element | None, fibre: etree._Element | None) -> list[BuildableLink]:
    """The links that could be built, from a qi-forwarding and a qi-connectivity <data> tree."""
    owner, sites, used = _qkd_interfaces(forwarding)
    nodes, spans, taken = _fibre(fibre)
    best: dict[tuple[Port, Port], BuildableLink] = {}
    attachments = {attach: sites[end[0]] for attach, end in owner.items()}
    for route in optical_routes(nodes, [s for s in spans if s.usable and s.id not in taken], attachments,
                                starts=[a for a, end in owner.items() if end not in used]):
        near, far = owner[route.start], owner[route.end]
        if far in used or far[0] == near[0]:
            continue
        a, b = sorted((near, far))
        loss = round(route.loss_db, 3)
        found = BuildableLink(f"{a[0]}.{a[1]}-{b[0]}.{b[1]}", (a[0], b[0]), int(expected_eskr(loss)),
                              round(link_performance(loss)[1] * 100, 3), route.spans, loss, route.bypasses)
        held = best.get((a, b))
        if held is None or (len(found.bypasses), found.loss_db) < (len(held.bypasses), held.loss_db):
            best[(a, b)] = found
    return sorted(best.values(), key=lambda link: link.link_id)


def _network(data: etree._Element | None, kind: str) -> etree._Element | None:
    for network in data.iter(f"{{{NW}}}network") if data is not None else ():
        if network.find(f"{{{NW}}}network-types/{kind}") is not None:
            return network
    return None


def _text(element: etree._Element | None, path: str, default: str = "") -> str:
    value = element.findtext(path) if element is not None else None
    return value.strip() if value is not None else default


def _qkd_interfaces(data: etree._Element | None) -> tuple[dict[Port, Port], dict[str, str], set[Port]]:
    """Fibre attachment -> (QKD node, tp); each node's site; the interfaces PHYS links use."""
    network = _network(data, f"{{{FWD}}}qkd-network")
    owner, sites, used = {}, {}, set()
    if network is None:
        return owner, sites, used
    for node in network.iterfind(f"{{{NW}}}node"):
        node_id = _text(node, f"{{{NW}}}node-id")
        sites[node_id] = _text(node, f"{{{FWD}}}qkd-node/{{{FWD}}}site")
        for tp in node.iterfind(f"{{{NT}}}termination-point"):
            support = tp.find(f"{{{NT}}}supporting-termination-point")
            if support is not None:
                owner[(_text(support, f"{{{NT}}}node-ref"), _text(support, f"{{{NT}}}tp-ref"))] = (
                    node_id, _text(tp, f"{{{NT}}}tp-id"))
    for link in network.iterfind(f"{{{NT}}}link"):
        if _text(link, f"{{{FWD}}}qkd-link/{{{FWD}}}link-type").endswith("PHYS"):
            used.add((_text(link, f"{{{NT}}}source/{{{NT}}}source-node"), _text(link, f"{{{NT}}}source/{{{NT}}}source-tp")))
            used.add((_text(link, f"{{{NT}}}destination/{{{NT}}}dest-node"),
                      _text(link, f"{{{NT}}}destination/{{{NT}}}dest-tp")))
    return owner, sites, used


def _fibre(data: etree._Element | None) -> tuple[list[_FibreNode], list[_Span], set[str]]:
    """The fibre network's nodes and spans, and the spans optical paths hold."""
    network = _network(data, f"{{{CONN}}}fibre-network")
    if network is None:
        return [], [], set()
    c = lambda tag: f"{{{CONN}}}{tag}"  # noqa: E731
    number = lambda element, tag: float(_text(element, c(tag), "0") or 0)  # noqa: E731
    nodes = []
    for node in network.iterfind(f"{{{NW}}}node"):
        fibre = node.find(c("fibre-node"))
        tps = [(_text(tp, f"{{{NT}}}tp-id"), number(tp.find(c("fibre-port")), "insertion-loss"))
               for tp in node.iterfind(f"{{{NT}}}termination-point")]
        node_id = _text(node, f"{{{NW}}}node-id")
        nodes.append(_FibreNode(node_id, _text(fibre, c("kind"), "site"), _text(fibre, c("site"), node_id),
                                tuple(tp for tp, _ in tps), dict(tps), number(fibre, "fabric-loss")))
    spans = []
    for link in network.iterfind(f"{{{NT}}}link"):
        span = link.find(c("fibre-span"))
        if span is None:
            continue
        total = _text(span, c("total-loss"))
        loss = float(total) if total else number(span, "length") * (float(_text(span, c("attenuation"), "0.2"))) \
            + number(span, "extra-loss")
        usable = _text(span, c("oper-status"), "up") in ("up", "degraded") and \
            _text(span, c("eavesdropper-present"), "false") != "true"
        spans.append(_Span(_text(link, f"{{{NT}}}link-id"),
                           (_text(link, f"{{{NT}}}source/{{{NT}}}source-node"), _text(link, f"{{{NT}}}source/{{{NT}}}source-tp")),
                           (_text(link, f"{{{NT}}}destination/{{{NT}}}dest-node"),
                            _text(link, f"{{{NT}}}destination/{{{NT}}}dest-tp")), loss, usable))
    taken = {_text(hop, c("span")) for hop in network.iterfind(f"{c('optical-paths')}/{c('optical-path')}/"
                                                                f"{c('route')}/{c('hop')}")}
    return nodes, spans, taken
