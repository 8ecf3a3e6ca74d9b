"""What the orchestrator asks of the strata, as NETCONF <config> content: QKD links of the
forwarding controller (qi-forwarding) and key-delivery sessions of the service controller
(qi-service). The forwarding controller asks the connectivity controller for the optical
path a new link needs, so the orchestrator never writes qi-connectivity. A session is always
written whole (operation replace): the request states the entire desired session."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from orchestrator.planner import Candidate
from orchestrator.views import ETSI_TYPES_NS, FWD_NS, NT_NS, NW_NS, SVC_NS, SessionConfig

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


@dataclass(frozen=True)
class SegmentEnds:
    """Where a segment of a cross-domain service enters and leaves the domain, and the key
    managers of the service's SAEs (qi-intent and qi-service `segment`)."""

    source_km: str
    destination_km: str
    ingress_link: str | None
    egress_link: str | None

    def append_to(self, parent: etree._Element, ns: str) -> None:
        for tag, value in (("source-km", self.source_km), ("destination-km", self.destination_km),
                           ("ingress-link", self.ingress_link), ("egress-link", self.egress_link)):
            if value is not None:
                etree.SubElement(parent, f"{{{ns}}}{tag}").text = value


@dataclass(frozen=True)
class SessionRequest:
    """The qi-service session that carries an intent's keys."""

    name: str
    source_sae: str
    destination_sae: str
    rate: int
    key_size: int
    ttl: int | None
    max_hops: int | None
    avoid_nodes: tuple[str, ...]
    avoid_links: tuple[str, ...]
    qber_ceiling: float | None
    segment: SegmentEnds | None = None

    def config(self) -> etree._Element:
        """The whole session entry, replacing what the service stratum held (a merge would keep
        avoid-links and avoid-nodes entries the intent no longer asks for)."""
        sessions = etree.Element(f"{{{SVC_NS}}}sessions", nsmap={None: SVC_NS, "nc": NC_NS})
        session = etree.SubElement(sessions, f"{{{SVC_NS}}}session")
        session.set(f"{{{NC_NS}}}operation", "replace")
        leaves = [("name", self.name), ("source-sae", self.source_sae), ("destination-sae", self.destination_sae),
                  ("rate", self.rate), ("key-size", self.key_size), ("ttl", self.ttl), ("max-hops", self.max_hops)]
        leaves += [("avoid-nodes", n) for n in self.avoid_nodes] + [("avoid-links", l) for l in self.avoid_links]
        leaves.append(("qber-ceiling", None if self.qber_ceiling is None else f"{self.qber_ceiling:.3f}"))
        for tag, value in leaves:
            if value is not None:
                etree.SubElement(session, f"{{{SVC_NS}}}{tag}").text = str(value)
        if self.segment is not None:
            self.segment.append_to(etree.SubElement(session, f"{{{SVC_NS}}}segment"), SVC_NS)
        return sessions

    def wanted(self) -> SessionConfig:
        """What the service stratum should hold for this session, to compare with what it holds."""
        segment = self.segment
        return SessionConfig(self.source_sae, self.destination_sae, self.rate, self.key_size, self.ttl,
                             self.max_hops, frozenset(self.avoid_nodes), frozenset(self.avoid_links),
                             round(self.qber_ceiling, 3) if self.qber_ceiling is not None else None,
                             (segment.source_km, segment.destination_km, segment.ingress_link, segment.egress_link)
                             if segment is not None else None)

    @staticmethod
    def delete(name: str) -> etree._Element:
        sessions = etree.Element(f"{{{SVC_NS}}}sessions", nsmap={None: SVC_NS, "nc": NC_NS})
        session = etree.SubElement(sessions, f"{{{SVC_NS}}}session")
        session.set(f"{{{NC_NS}}}operation", "remove")
        etree.SubElement(session, f"{{{SVC_NS}}}name").text = name
        return sessions


def _network(network_id: str) -> tuple[etree._Element, etree._Element]:
    networks = etree.Element(f"{{{NW_NS}}}networks", nsmap={None: NW_NS, "nt": NT_NS, "qi-fwd": FWD_NS,
                                                             "etsi-qkdn-types": ETSI_TYPES_NS, "nc": NC_NS})
    network = etree.SubElement(networks, f"{{{NW_NS}}}network")
    etree.SubElement(network, f"{{{NW_NS}}}network-id").text = network_id
    return networks, network


def _phys_link(network: etree._Element, link_id: str, a: tuple[str, str], b: tuple[str, str],
               qkdl_id: str) -> etree._Element:
    """A PHYS link from node-tp `a` to node-tp `b`; returns its qkd-link container."""
    link = etree.SubElement(network, f"{{{NT_NS}}}link")
    etree.SubElement(link, f"{{{NT_NS}}}link-id").text = link_id
    for end, node_tag, tp_tag, (node, tp) in (("source", "source-node", "source-tp", a),
                                              ("destination", "dest-node", "dest-tp", b)):
        element = etree.SubElement(link, f"{{{NT_NS}}}{end}")
        etree.SubElement(element, f"{{{NT_NS}}}{node_tag}").text = node
        etree.SubElement(element, f"{{{NT_NS}}}{tp_tag}").text = tp
    qkd = etree.SubElement(link, f"{{{FWD_NS}}}qkd-link")
    etree.SubElement(qkd, f"{{{FWD_NS}}}qkdl-id").text = qkdl_id
    etree.SubElement(qkd, f"{{{FWD_NS}}}link-type").text = "etsi-qkdn-types:PHYS"
    return qkd


def links_config(network_id: str, candidates: list[Candidate]) -> etree._Element:
    """New PHYS links, one per candidate, with the qkdl-id both QKD nodes will share."""
    networks, network = _network(network_id)
    for candidate in candidates:
        _phys_link(network, candidate.link_id, candidate.a, candidate.b, candidate.qkdl_id)
    return networks


@dataclass(frozen=True)
class ExternalLinkRequest:
    """This domain's end of an inter-domain PHYS link (qi-forwarding external-peer)."""

    link_id: str
    local: tuple[str, str]   # (node, tp) in this domain
    remote: tuple[str, str]  # (node, tp) of the peer's border node
    qkdl_id: str
    peer_member: str
    peer_qkdn_id: str
    peer_km: str


def external_links_config(network_id: str, requests: list[ExternalLinkRequest]) -> etree._Element:
    """The domain's ends of inter-domain links, each replacing what the link was."""
    networks, network = _network(network_id)
    for request in requests:
        qkd = _phys_link(network, request.link_id, request.local, request.remote, request.qkdl_id)
        qkd.getparent().set(f"{{{NC_NS}}}operation", "replace")
        peer = etree.SubElement(qkd, f"{{{FWD_NS}}}external-peer")
        for tag, value in (("member", request.peer_member), ("qkdn-id", request.peer_qkdn_id),
                           ("km-id", request.peer_km)):
            etree.SubElement(peer, f"{{{FWD_NS}}}{tag}").text = value
    return networks


def links_delete(network_id: str, link_ids: list[str]) -> etree._Element:
    networks, network = _network(network_id)
    for link_id in link_ids:
        link = etree.SubElement(network, f"{{{NT_NS}}}link")
        link.set(f"{{{NC_NS}}}operation", "remove")
        etree.SubElement(link, f"{{{NT_NS}}}link-id").text = link_id
    return networks
