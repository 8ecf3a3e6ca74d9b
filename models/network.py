"""ietf-network and ietf-network-topology (RFC 8345) as the levels exchange them: reading
networks, nodes, termination points and links out of a <data> or datastore tree, and
building them. The stratum models (qi-connectivity, qi-forwarding) augment these lists; their
readers and builders take the elements found or made here and read or add the augmentation.

A port is `(node-id, tp-id)` of one network. Readers accept `None` (an absent subtree) and
return nothing for it; builders return the element they make, for the augmentations."""
from __future__ import annotations

from lxml import etree

from models.ns import NT, NW

Port = tuple[str, str]
"""(node-id, tp-id) in one network."""

NETWORKS = NW("networks")
RESOURCE_PREFIXES = {"nw": str(NW), "nt": str(NT)}
"""The prefixes `link_resource` uses, for whoever writes or evaluates such a resource."""


# --- reading ---------------------------------------------------------------------------------

def networks_of(data: etree._Element | None) -> etree._Element | None:
    """The <networks> container: `data` itself, or its child (a <data>, <config> or datastore root)."""
    if data is None or data.tag == NETWORKS:
        return data
    return data.find(NETWORKS)


def networks(data: etree._Element | None) -> list[etree._Element]:
    """Every <network> of `data`."""
    return NW.all(networks_of(data), "network")


def find_network(data: etree._Element | None, *, network_id: str | None = None,
                 network_type: str | None = None) -> etree._Element | None:
    """The first network with this network-id and/or whose network-types holds `network_type`
    (the Clark name of the type container, e.g. `CONNECTIVITY("fibre-network")`)."""
    for network in networks(data):
        if network_id is not None and NW.text(network, "network-id") != network_id:
            continue
        if network_type is not None and network_type not in network_types(network):
            continue
        return network
    return None


def network_id(network: etree._Element | None) -> str:
    return NW.text(network, "network-id", "")


def network_types(network: etree._Element | None) -> list[str]:
    """The Clark names of the network's types (the children of network-types)."""
    types = NW.find(network, "network-types")
    return [child.tag for child in types if isinstance(child.tag, str)] if types is not None else []


def supporting_networks(network: etree._Element | None) -> list[str]:
    return [NW.text(s, "network-ref", "") for s in NW.all(network, "supporting-network")]


def nodes(network: etree._Element | None) -> list[etree._Element]:
    return NW.all(network, "node")


def node_id(node: etree._Element | None) -> str:
    return NW.text(node, "node-id", "")


def supporting_nodes(node: etree._Element | None) -> list[tuple[str, str]]:
    """(network-ref, node-ref) of each supporting node."""
    return [(NW.text(s, "network-ref", ""), NW.text(s, "node-ref", "")) for s in NW.all(node, "supporting-node")]


def termination_points(node: etree._Element | None) -> list[etree._Element]:
    return NT.all(node, "termination-point")


def tp_id(tp: etree._Element | None) -> str:
    return NT.text(tp, "tp-id", "")


def supporting_tp(tp: etree._Element | None) -> Port | None:
    """(node-ref, tp-ref) of the first supporting termination point, or None."""
    support = NT.find(tp, "supporting-termination-point")
    return (NT.text(support, "node-ref", ""), NT.text(support, "tp-ref", "")) if support is not None else None


def links(network: etree._Element | None) -> list[etree._Element]:
    return NT.all(network, "link")


def link_id(link: etree._Element | None) -> str:
    return NT.text(link, "link-id", "")


def link_source(link: etree._Element | None) -> Port:
    return NT.text(link, "source/source-node", ""), NT.text(link, "source/source-tp", "")


def link_destination(link: etree._Element | None) -> Port:
    return NT.text(link, "destination/dest-node", ""), NT.text(link, "destination/dest-tp", "")


def supporting_links(link: etree._Element | None) -> list[str]:
    """The link-ref of each supporting link."""
    return [NT.text(s, "link-ref", "") for s in NT.all(link, "supporting-link")]


# --- building --------------------------------------------------------------------------------

def networks_element() -> etree._Element:
    """An empty <networks> container."""
    return etree.Element(NETWORKS, nsmap={None: str(NW), "nt": str(NT)})


def add_network(networks: etree._Element, network_id: str, network_type: str | None = None,
                supporting: list[str] = ()) -> etree._Element:
    """A new <network> with its id, its type (a Clark name, see find_network) and supporting networks."""
    network = NW.sub(networks, "network")
    NW.sub(network, "network-id", network_id)
    if network_type is not None:
        etree.SubElement(NW.sub(network, "network-types"), network_type)
    for ref in supporting:
        NW.sub(NW.sub(network, "supporting-network"), "network-ref", ref)
    return network


def add_node(network: etree._Element, node_id: str, supporting: list[tuple[str, str]] = ()) -> etree._Element:
    """A new <node>; `supporting` as supporting_nodes reads it."""
    node = NW.sub(network, "node")
    NW.sub(node, "node-id", node_id)
    for network_ref, node_ref in supporting:
        support = NW.sub(node, "supporting-node")
        NW.sub(support, "network-ref", network_ref)
        NW.sub(support, "node-ref", node_ref)
    return node


def add_termination_point(node: etree._Element, tp_id: str, supporting: Port | None = None,
                          supporting_network: str | None = None) -> etree._Element:
    """A new <termination-point>; `supporting` (node-ref, tp-ref) in network `supporting_network`."""
    tp = NT.sub(node, "termination-point")
    NT.sub(tp, "tp-id", tp_id)
    if supporting is not None:
        support = NT.sub(tp, "supporting-termination-point")
        NT.sub(support, "network-ref", supporting_network)
        NT.sub(support, "node-ref", supporting[0])
        NT.sub(support, "tp-ref", supporting[1])
    return tp


def add_link(network: etree._Element, link_id: str, source: Port, destination: Port,
             supporting: list[str] = (), supporting_network: str | None = None) -> etree._Element:
    """A new <link> from `source` to `destination`; `supporting` link-refs in `supporting_network`."""
    link = NT.sub(network, "link")
    NT.sub(link, "link-id", link_id)
    end = NT.sub(link, "source")
    NT.sub(end, "source-node", source[0])
    NT.sub(end, "source-tp", source[1])
    end = NT.sub(link, "destination")
    NT.sub(end, "dest-node", destination[0])
    NT.sub(end, "dest-tp", destination[1])
    for ref in supporting:
        support = NT.sub(link, "supporting-link")
        NT.sub(support, "network-ref", supporting_network)
        NT.sub(support, "link-ref", ref)
    return link


# --- links as resources (alarms) ---------------------------------------------------------------

def link_resource(network_id: str, link_id: str) -> str:
    """The instance-identifier of a link, with the prefixes of RESOURCE_PREFIXES (an alarm's resource)."""
    return f"/nw:networks/nw:network[nw:network-id='{network_id}']/nt:link[nt:link-id='{link_id}']"


def resource_link(resource: str) -> str:
    """The link-id of a link_resource (the resource itself when it names no link)."""
    return resource.rpartition("[nt:link-id='")[2].removesuffix("']")
