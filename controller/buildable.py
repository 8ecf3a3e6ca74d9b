"""PHYS QKD links that could be built: pairs of free QKD interfaces (qi-forwarding) that the
fibre plant joins (qi-connectivity), each over its lowest-loss optical route through trusted
nodes, or an optical bypass of some where no such route exists (`qkd_physics.reach`), at the
effective key rate and QBER the link model expects at the route's loss. A span that carries
an optical path already, or is down or tapped, carries no new one. Named like the
orchestrator's new links: 'node.tp-node.tp', the lower end first."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from models import network as nw
from models.connectivity import read_fibre_network
from models.ns import FORWARDING
from qkd_physics import expected_eskr, link_performance
from qkd_physics.reach import optical_routes

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


def buildable_links(forwarding: etree._Element | None, fibre: etree._Element | None) -> list[BuildableLink]:
    """The links that could be built, from a qi-forwarding and a qi-connectivity <data> tree."""
    owner, sites, used = _qkd_interfaces(forwarding)
    network = read_fibre_network(fibre)
    taken = {span for route in network.optical_paths.values() for span in route}
    nodes, spans = list(network.nodes.values()), list(network.spans.values())
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


def _qkd_interfaces(data: etree._Element | None) -> tuple[dict[Port, Port], dict[str, str], set[Port]]:
    """Fibre attachment -> (QKD node, tp); each node's site; the interfaces PHYS links use."""
    network = nw.find_network(data, network_type=FORWARDING("qkd-network"))
    owner, sites, used = {}, {}, set()
    for node in nw.nodes(network):
        node_id = nw.node_id(node)
        sites[node_id] = FORWARDING.text(node, "qkd-node/site", "")
        for tp in nw.termination_points(node):
            support = nw.supporting_tp(tp)
            if support is not None:
                owner[support] = (node_id, nw.tp_id(tp))
    for link in nw.links(network):
        if FORWARDING.text(link, "qkd-link/link-type", "").endswith("PHYS"):
            used.update((nw.link_source(link), nw.link_destination(link)))
    return owner, sites, used
