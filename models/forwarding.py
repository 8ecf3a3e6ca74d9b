"""qi-forwarding: the QKD network a forwarding controller serves (an RFC 8345 network of type
qkd-network), read into one set of view classes by every level that consumes it (the service
controller, the orchestrator, the command line), and the link requests written to it. The
forwarding controller builds its side here too: the topology it writes into its running
datastore, its state and notifications, and `link_requests`, its reader of the links asked for."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lxml import etree

from models import network as network_model
from models.connectivity import tp_id as fibre_tp_id
from models.network import Port as PortRef
from models.ns import ETSI_TYPES, FORWARDING, NT, NW
from models.qkd_node import NodeView, identity_leaf
from netconf_core.ns import BASE, identity

MAX_REASON = 1024  # characters of a notification's reason

LINK_UP = "ACTIVE"

@dataclass(frozen=True)
class QkdNode:
    id: str
    km_id: str
    site: str
    interfaces: dict[str, PortRef | None] = field(default_factory=dict, compare=False, hash=False)
    """tp-id -> fibre attachment (node, tp)"""
    qkdn_id: str = ""         # ETSI GS QKD 015 identifier of the node
    external: bool = False    # another member domain's border node, at the far end of an inter-domain link


@dataclass(frozen=True)
class QkdLink:
    id: str
    a: PortRef
    b: PortRef
    qkdl_id: str
    link_type: str            # PHYS or VIRT
    status: str | None        # ETSI link status: ACTIVE, PASSIVE, PENDING, OFF
    skr: float | None         # bit/s
    eskr: float | None        # bit/s
    qber: float | None        # percent
    optical_path: str | None
    peer_km: str | None = None          # an inter-domain link: the key manager of its far end, another domain's node
    channel_loss: float | None = None   # dB
    buildable: bool = False             # not there yet: the forwarding stratum could build it (plan-path only)

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
        """The qkd-network of a <get> reply (a <data> tree holding nw:networks)."""
        view = cls()
        network = network_model.find_network(data, network_type=FORWARDING("qkd-network"))
        if network is None:
            return view
        view.network_id = network_model.network_id(network)
        for node in network_model.nodes(network):
            qkd = FORWARDING.find(node, "qkd-node")
            interfaces = {network_model.tp_id(tp): network_model.supporting_tp(tp)
                          for tp in network_model.termination_points(node)}
            node_id = network_model.node_id(node)
            view.nodes[node_id] = QkdNode(node_id, FORWARDING.text(qkd, "km-id", ""), FORWARDING.text(qkd, "site", ""),
                                          interfaces, FORWARDING.text(qkd, "qkdn-id", ""))
        for link in network_model.links(network):
            qkd = FORWARDING.find(link, "qkd-link")
            if qkd is None:
                continue
            link_id = network_model.link_id(link)
            view.links[link_id] = QkdLink(
                link_id, network_model.link_source(link), network_model.link_destination(link),
                FORWARDING.text(qkd, "qkdl-id", ""), identity(FORWARDING.text(qkd, "link-type")) or "PHYS",
                identity(FORWARDING.text(qkd, "status")), FORWARDING.number(qkd, "skr"),
                FORWARDING.number(qkd, "eskr"), FORWARDING.number(qkd, "qber"),
                FORWARDING.text(qkd, "optical-path"), FORWARDING.text(qkd, "external-peer/km-id"),
                FORWARDING.number(qkd, "channel-loss"))
        return view

    def node_of_km(self, km_id: str) -> str | None:
        return next((n.id for n in self.nodes.values() if n.km_id == km_id), None)

    def km_of(self, node_id: str) -> str | None:
        """The key manager of a node, or of the far node of an inter-domain link."""
        if node_id in self.nodes:
            return self.nodes[node_id].km_id
        return next((l.peer_km for l in self.links.values() if l.external and l.b[0] == node_id), None)

    def is_external(self, node_id: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.external

    def used_interfaces(self) -> set[PortRef]:
        return {end for link in self.links.values() if link.link_type == "PHYS" for end in (link.a, link.b)}

    def key_paths(self, km_by_site: dict[str, str]) -> ForwardingView:
        """What key paths are planned over (the service controller): the PHYS links only, with
        status OFF and eskr 0 when unknown; a node without a km-id gets the key manager of
        its site; the far node of an inter-domain link is an external node."""
        nodes = {n.id: dataclasses.replace(n, km_id=n.km_id or km_by_site.get(n.site, "")) for n in self.nodes.values()}
        links = {}
        for link in self.links.values():
            if link.link_type != "PHYS":
                continue
            links[link.id] = dataclasses.replace(link, status=link.status or "OFF", eskr=int(link.eskr or 0))
            if link.external:
                far = link.b[0]
                nodes[far] = QkdNode(far, link.peer_km or "", "", external=True)
        return ForwardingView(self.network_id, nodes, links)


# --- what the orchestrator writes: QKD links -----------------------------------------------------

OPERATION = BASE("operation")


@dataclass(frozen=True)
class ExternalLinkRequest:
    """This domain's end of an inter-domain PHYS link (qi-forwarding external-peer)."""

    link_id: str
    local: PortRef    # (node, tp) in this domain
    remote: PortRef   # (node, tp) of the peer's border node
    qkdl_id: str
    peer_member: str
    peer_qkdn_id: str
    peer_km: str


def _network(network_id: str) -> tuple[etree._Element, etree._Element]:
    networks = etree.Element(NW("networks"), nsmap={None: NW, "nt": NT, "qi-fwd": FORWARDING,
                                                    "etsi-qkdn-types": ETSI_TYPES, "nc": BASE})
    return networks, network_model.add_network(networks, network_id)


def add_phys_link(network: etree._Element, link_id: str, a: PortRef, b: PortRef, qkdl_id: str) -> etree._Element:
    """A PHYS link from node-tp `a` to node-tp `b`; returns its qkd-link container."""
    qkd = FORWARDING.sub(network_model.add_link(network, link_id, a, b), "qkd-link")
    FORWARDING.sub(qkd, "qkdl-id", qkdl_id)
    identity_leaf(qkd, "link-type", "PHYS", FORWARDING)
    return qkd


def links_config(network_id: str, links: list) -> etree._Element:
    """New PHYS links, each with `link_id`, ends `a` and `b` (node, tp) and the `qkdl_id` both
    QKD nodes will share (the orchestrator's planned candidates)."""
    networks, network = _network(network_id)
    for link in links:
        add_phys_link(network, link.link_id, link.a, link.b, link.qkdl_id)
    return networks


def external_links_config(network_id: str, requests: list[ExternalLinkRequest]) -> etree._Element:
    """The domain's ends of inter-domain links, each replacing what the link was."""
    networks, network = _network(network_id)
    for request in requests:
        qkd = add_phys_link(network, request.link_id, request.local, request.remote, request.qkdl_id)
        qkd.getparent().set(OPERATION, "replace")
        peer = FORWARDING.sub(qkd, "external-peer")
        FORWARDING.sub(peer, "member", request.peer_member)
        FORWARDING.sub(peer, "qkdn-id", request.peer_qkdn_id)
        FORWARDING.sub(peer, "km-id", request.peer_km)
    return networks


def links_delete(network_id: str, link_ids: list[str]) -> etree._Element:
    networks, network = _network(network_id)
    for link_id in link_ids:
        link = NT.sub(network, "link")
        link.set(OPERATION, "remove")
        NT.sub(link, "link-id", link_id)
    return networks


# --- what the forwarding controller reads: the links asked of it ----------------------------------

@dataclass(frozen=True)
class ExternalPeer:
    """The far end of an inter-domain link, in another member's domain."""

    member: str
    qkdn_id: str
    km_id: str


@dataclass(frozen=True)
class LinkRequest:
    """A link of the qkd network as configured."""

    link_id: str
    source: PortRef
    destination: PortRef
    qkdl_id: str
    link_type: str  # PHYS or VIRT
    optical_path: str | None = None
    wavelength: int | None = None
    virt_bandwidth: int | None = None
    supporting: frozenset[str] = frozenset()
    external: ExternalPeer | None = None

    @property
    def has_optical_path(self) -> bool:
        """PHYS links inside the domain ride on an optical path of the connectivity controller."""
        return self.link_type == "PHYS" and self.external is None

    @property
    def path_name(self) -> str:
        """Name of the optical path of a PHYS link at the connectivity controller."""
        return self.optical_path or self.link_id


def _integer(element: etree._Element | None, path: str) -> int | None:
    value = FORWARDING.number(element, path)
    return int(value) if value is not None else None


def link_requests(tree: etree._Element | None, network_id: str) -> dict[str, LinkRequest]:
    """The qkd-link links of network `network_id` in a datastore tree, by link-id."""
    F = FORWARDING
    out = {}
    for link in network_model.links(network_model.find_network(tree, network_id=network_id)):
        qkd = F.find(link, "qkd-link")
        if qkd is None:
            continue
        link_id = network_model.link_id(link)
        peer = F.find(qkd, "external-peer")
        out[link_id] = LinkRequest(
            link_id, network_model.link_source(link), network_model.link_destination(link),
            F.text(qkd, "qkdl-id"), identity(F.text(qkd, "link-type")) or "PHYS",
            F.text(qkd, "optical-path"), _integer(qkd, "wavelength"), _integer(qkd, "virt-bandwidth"),
            frozenset(network_model.supporting_links(link)),
            ExternalPeer(*(F.text(peer, leaf) for leaf in ("member", "qkdn-id", "km-id")))
            if peer is not None else None)
    return out


# --- what the forwarding controller writes: its topology, state and notifications ----------------

def topology_config(network_id: str, fibre_network: str, nodes: list[NodeView],
                    km_by_site: dict[str, str]) -> tuple[etree._Element, etree._Element]:
    """The <networks> holding the qkd network with the discovered `nodes` (sorted by name), each
    supported by the fibre nodes its interfaces attach to, and the network (for the links).
    The network supports itself (VIRT links ride on its PHYS links) and the fibre network."""
    F = FORWARDING
    networks = network_model.networks_element()
    network = network_model.add_network(networks, network_id, F("qkd-network"), [network_id, fibre_network])
    for node in sorted(nodes, key=lambda n: n.name):
        fibre_nodes = sorted({i.att_device for i in node.interfaces.values() if i.att_device})
        element = network_model.add_node(network, node.name, [(fibre_network, fibre) for fibre in fibre_nodes])
        attributes = F.sub(element, "qkd-node")
        F.sub(attributes, "qkdn-id", node.qkdn_id)
        if node.site:
            F.sub(attributes, "site", node.site)
            if node.site in km_by_site:
                F.sub(attributes, "km-id", km_by_site[node.site])
        for iface in sorted(node.interfaces.values(), key=lambda i: i.qkdi_id):
            point = network_model.add_termination_point(
                element, str(iface.qkdi_id),
                (iface.att_device, fibre_tp_id(iface.att_port)) if iface.att_device else None, fibre_network)
            qkd = F.sub(point, "qkd-interface")
            F.sub(qkd, "qkdi-id", iface.qkdi_id)
            if iface.technology:
                identity_leaf(qkd, "technology", iface.technology, F)
            if iface.role:
                identity_leaf(qkd, "role", iface.role, F)
    return networks, network


@dataclass(frozen=True)
class NodeStatus:
    """What the controller reports of a node: its ETSI status and its interfaces' (by qkdi-id)."""

    node_id: str
    status: str | None
    interfaces: dict[int, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkStatus:
    """What the controller reports of a configured link (rates in bit/s, QBER in percent,
    channel loss in dB; None when not known)."""

    link_id: str
    status: str = "OFF"
    skr: float | None = None
    eskr: float | None = None
    expected_consumption: float | None = None
    qber: float | None = None
    channel_loss: float | None = None
    stored_key: int | None = None


def forwarding_state(network_id: str, nodes: list[NodeStatus], links: list[LinkStatus]) -> etree._Element:
    """The qi-forwarding state of the qkd network (<networks>), in the order given."""
    F = FORWARDING
    networks = network_model.networks_element()
    network = NW.sub(networks, "network")
    NW.sub(network, "network-id", network_id)
    for node in nodes:
        element = network_model.add_node(network, node.node_id)
        if node.status:
            identity_leaf(F.sub(element, "qkd-node"), "status", node.status, F)
        for qkdi_id, status in sorted(node.interfaces.items()):
            if status:
                point = network_model.add_termination_point(element, str(qkdi_id))
                identity_leaf(F.sub(point, "qkd-interface"), "status", status, F)
    for report in links:
        link = NT.sub(network, "link")
        NT.sub(link, "link-id", report.link_id)
        qkd = F.sub(link, "qkd-link")
        identity_leaf(qkd, "status", report.status, F)
        for tag, value in (("skr", report.skr), ("eskr", report.eskr),
                           ("expected-consumption", report.expected_consumption), ("qber", report.qber),
                           ("channel-loss", report.channel_loss), ("stored-key", report.stored_key)):
            if value is not None:
                F.sub(qkd, tag, f"{value:.3f}" if isinstance(value, float) else value)
    return networks


def link_status_change(network_id: str, link_id: str, qkdl_id: str, status: str, previous_status: str | None,
                       reason: str) -> etree._Element:
    """The link-status-change notification (its reason cut to MAX_REASON characters)."""
    event = FORWARDING.element("link-status-change", leaves={
        "network-id": network_id, "link-id": link_id, "qkdl-id": qkdl_id})
    identity_leaf(event, "status", status, FORWARDING)
    if previous_status:
        identity_leaf(event, "previous-status", previous_status, FORWARDING)
    FORWARDING.sub(event, "reason", reason[:MAX_REASON])
    return event


def qber_alarm(network_id: str, link_id: str, qkdl_id: str, qber: float, threshold: float,
               raised: bool) -> etree._Element:
    """The qber-alarm notification: a link's QBER crossed its threshold, up (raised) or down."""
    return FORWARDING.element("qber-alarm", leaves={
        "network-id": network_id, "link-id": link_id, "qkdl-id": qkdl_id, "qber": f"{qber:.3f}",
        "threshold": f"{threshold:.3f}", "raised": raised})
