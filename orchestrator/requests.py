"""What the orchestrator asks of the strata, as NETCONF <config> content: QKD links of the
forwarding controller (qi-forwarding) and key-delivery sessions of the service controller
(qi-service). The forwarding controller asks the connectivity controller for the optical
path a new link needs, so the orchestrator never writes qi-connectivity."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from orchestrator.planner import Candidate
from orchestrator.views import ETSI_TYPES_NS, FWD_NS, NT_NS, NW_NS, SVC_NS

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


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

    def config(self) -> etree._Element:
        sessions = etree.Element(f"{{{SVC_NS}}}sessions", nsmap={None: SVC_NS})
        session = etree.SubElement(sessions, f"{{{SVC_NS}}}session")
        leaves = [("name", self.name), ("source-sae", self.source_sae), ("destination-sae", self.destination_sae),
                  ("rate", self.rate), ("key-size", self.key_size), ("ttl", self.ttl), ("max-hops", self.max_hops)]
        leaves += [("avoid-nodes", n) for n in self.avoid_nodes] + [("avoid-links", l) for l in self.avoid_links]
        leaves.append(("qber-ceiling", None if self.qber_ceiling is None else f"{self.qber_ceiling:.3f}"))
        for tag, value in leaves:
            if value is not None:
                etree.SubElement(session, f"{{{SVC_NS}}}{tag}").text = str(value)
        return sessions

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


def links_config(network_id: str, candidates: list[Candidate]) -> etree._Element:
    """New PHYS links, one per candidate, with the qkdl-id both QKD nodes will share."""
    networks, network = _network(network_id)
    for candidate in candidates:
        link = etree.SubElement(network, f"{{{NT_NS}}}link")
        etree.SubElement(link, f"{{{NT_NS}}}link-id").text = candidate.link_id
        source = etree.SubElement(link, f"{{{NT_NS}}}source")
        etree.SubElement(source, f"{{{NT_NS}}}source-node").text = candidate.a[0]
        etree.SubElement(source, f"{{{NT_NS}}}source-tp").text = candidate.a[1]
        destination = etree.SubElement(link, f"{{{NT_NS}}}destination")
        etree.SubElement(destination, f"{{{NT_NS}}}dest-node").text = candidate.b[0]
        etree.SubElement(destination, f"{{{NT_NS}}}dest-tp").text = candidate.b[1]
        qkd = etree.SubElement(link, f"{{{FWD_NS}}}qkd-link")
        etree.SubElement(qkd, f"{{{FWD_NS}}}qkdl-id").text = candidate.qkdl_id
        etree.SubElement(qkd, f"{{{FWD_NS}}}link-type").text = "etsi-qkdn-types:PHYS"
    return networks


def links_delete(network_id: str, link_ids: list[str]) -> etree._Element:
    networks, network = _network(network_id)
    for link_id in link_ids:
        link = etree.SubElement(network, f"{{{NT_NS}}}link")
        link.set(f"{{{NC_NS}}}operation", "remove")
        etree.SubElement(link, f"{{{NT_NS}}}link-id").text = link_id
    return networks
