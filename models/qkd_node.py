"""A QKD node's model as the levels exchange it: etsi-qkd-sdn-node (ETSI GS QKD 015) with
qi-qkd-node-ext. The QKD node (devices/qkd_node.py) builds its state and notifications here
and reads the links the forwarding controller writes with `node_link_element`; the forwarding
controller reads the node's configuration and state with `read_node`.

Identities of etsi-qkd-node-types are written by leaves that declare the prefix themselves
(`identity_leaf`): the engine merges state into a tree leaf by leaf."""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from models.ns import ETSI_NODE, ETSI_TYPES, NODE_EXT
from netconf_core.ns import BASE, Namespace, decimal, identity

TYPES_PREFIX = "etsi-qkdn-types"


def _int(text: str | None) -> int | None:
    return int(text) if text else None


def identity_leaf(parent: etree._Element, tag: str, value: str, ns: Namespace = ETSI_NODE) -> etree._Element:
    """A leaf `tag` holding the etsi-qkd-node-types identity `value`, declaring its prefix."""
    nsmap = {TYPES_PREFIX: str(ETSI_TYPES)}
    if etree.QName(parent).namespace != ns:
        nsmap[None] = str(ns)
    leaf = etree.SubElement(parent, ns(tag), nsmap=nsmap)
    leaf.text = f"{TYPES_PREFIX}:{value}"
    return leaf


def types_identity(leaf: etree._Element | None) -> str | None:
    """The name of the etsi-qkd-node-types identity `leaf` holds, whatever prefix it uses (None
    when it holds an identity of another module)."""
    if leaf is None or not leaf.text:
        return None
    prefix, _, name = leaf.text.strip().rpartition(":")
    return name if leaf.nsmap.get(prefix or None) == ETSI_TYPES else None


# --- what the node says (configuration and state), as the forwarding controller reads it -------

@dataclass(frozen=True)
class Interface:
    qkdi_id: int
    att_device: str | None
    att_port: int | None
    technology: str | None
    role: str | None
    status: str | None


@dataclass(frozen=True)
class NodeLinkConfig:
    """The part of an ETSI qkd_link entry the forwarding controller writes."""

    qkdl_id: str
    link_type: str  # PHYS or VIRT
    local_qkdn: str | None
    local_qkdi: int | None
    remote_qkdn: str | None
    remote_qkdi: int | None
    role: str | None = None
    wavelength: int | None = None
    prev_hop: str | None = None
    next_hops: tuple[str, ...] = ()
    bandwidth: int | None = None


@dataclass(frozen=True)
class LinkState:
    status: str | None = None
    skr: int | None = None
    eskr: int | None = None
    expected_consumption: int | None = None
    qber: float | None = None  # percent
    stored: int | None = None


@dataclass
class NodeView:
    name: str
    qkdn_id: str
    site: str | None
    status: str | None
    interfaces: dict[int, Interface]
    links: dict[str, NodeLinkConfig]  # by qkdl_id
    states: dict[str, LinkState]  # by qkdl_id
    qber_threshold: float | None


def read_node(name: str, root: etree._Element) -> NodeView:
    """A NodeView of an ETSI qkd_node element (config and state, defaults reported)."""
    E = ETSI_NODE
    interfaces = {}
    for iface in E.all(root, "qkd_interfaces/qkd_interface"):
        qkdi = int(E.text(iface, "qkdi_id"))
        interfaces[qkdi] = Interface(qkdi, E.text(iface, "qkdi_att_point/device"),
                                     _int(E.text(iface, "qkdi_att_point/port")), identity(E.text(iface, "qkdi_type")),
                                     identity(E.text(iface, "qkdi_capabilities/role_support")),
                                     identity(E.text(iface, "qkdi_status")))
    links, states = {}, {}
    for entry in E.all(root, "qkd_links/qkd_link"):
        qkdl = E.text(entry, "qkdl_id")
        links[qkdl] = NodeLinkConfig(
            qkdl, identity(E.text(entry, "qkdl_type")) or "PHYS",
            E.text(entry, "qkdl_local/qkdn_id"), _int(E.text(entry, "qkdl_local/qkdi_id")),
            E.text(entry, "qkdl_remote/qkdn_id"), _int(E.text(entry, "qkdl_remote/qkdi_id")),
            identity(E.text(entry, "phys_qkd_role")), _int(E.text(entry, "phys_wavelength")),
            E.text(entry, "virt_prev_hop"), tuple(h.text for h in E.all(entry, "virt_next_hop")),
            _int(E.text(entry, "virt_bandwidth")))
        states[qkdl] = _link_state(entry)
    return NodeView(name, E.text(root, "qkdn_id"), E.text(root, "qkdn_location_id"),
                    identity(E.text(root, "qkdn_status")), interfaces, links, states,
                    NODE_EXT.number(root, "qber-alarm-threshold"))


def _link_state(entry: etree._Element) -> LinkState:
    E = ETSI_NODE
    perf = E.find(entry, "qkdl_performance")
    qber = None
    for figure in E.all(perf, "phys_perf"):
        if identity(E.text(figure, "perf_type")) == "QBER":
            qber = E.number(figure, "value")
    return LinkState(identity(E.text(entry, "qkdl_status")), _int(E.text(perf, "skr")),
                     _int(E.text(perf, "eskr")), _int(E.text(perf, "expected_consumption")), qber,
                     _int(NODE_EXT.text(entry, "key-pool/stored")))


def read_link_states(data: etree._Element) -> dict[str, LinkState]:
    """The link states (by qkdl_id) of whatever part of a node's qkd_links `data` (a <data>
    root) holds, such as what a subscription to their status and performance selects;
    what it does not hold is None."""
    node = ETSI_NODE.find(data, "qkd_node")
    return {ETSI_NODE.text(entry, "qkdl_id"): _link_state(entry) for entry in ETSI_NODE.all(node, "qkd_links/qkd_link")}


# --- the links the forwarding controller writes ---------------------------------------------------

def node_link_element(config: NodeLinkConfig) -> etree._Element:
    """A qkd_link entry replacing the node's entry of the same qkdl_id."""
    E = ETSI_NODE
    entry = E.element("qkd_link")
    entry.set(BASE("operation"), "replace")
    E.sub(entry, "qkdl_id", config.qkdl_id)
    E.sub(entry, "qkdl_enable", "true")
    for end, qkdn, qkdi in (("qkdl_local", config.local_qkdn, config.local_qkdi),
                            ("qkdl_remote", config.remote_qkdn, config.remote_qkdi)):
        element = E.sub(entry, end)
        E.sub(element, "qkdn_id", qkdn)
        if qkdi is not None:
            E.sub(element, "qkdi_id", qkdi)
    identity_leaf(entry, "qkdl_type", config.link_type)
    if config.prev_hop:
        E.sub(entry, "virt_prev_hop", config.prev_hop)
    for hop in config.next_hops:
        E.sub(entry, "virt_next_hop", hop)
    if config.bandwidth is not None:
        E.sub(entry, "virt_bandwidth", config.bandwidth)
    if config.wavelength is not None:
        E.sub(entry, "phys_wavelength", config.wavelength)
    if config.role:
        identity_leaf(entry, "phys_qkd_role", config.role)
    return entry


def link_removal(qkdl_id: str) -> etree._Element:
    """A qkd_link entry removing the node's link `qkdl_id`."""
    entry = ETSI_NODE.element("qkd_link")
    entry.set(BASE("operation"), "remove")
    ETSI_NODE.sub(entry, "qkdl_id", qkdl_id)
    return entry


def node_links_edit(entries: list[etree._Element]) -> etree._Element:
    """An edit-config <config> of the node's qkd_links with `entries`."""
    config = BASE.element("config")
    ETSI_NODE.sub(ETSI_NODE.sub(config, "qkd_node"), "qkd_links").extend(entries)
    return config


# --- the node's state and notifications, as the QKD node builds them ---------------------------------

@dataclass(frozen=True)
class KeyPool:
    """qi-qkd-node-ext key-pool counters of a PHYS link, in bits."""

    stored: int
    generated: int
    consumed: int


def performance_element(tag: str, expected: int, skr: int, eskr: int, qber: float | None) -> etree._Element:
    """A qkdl_performance-like container `tag` (QBER in percent, omitted when None)."""
    performance = ETSI_NODE.element(tag, leaves={"expected_consumption": expected, "skr": skr, "eskr": eskr})
    if qber is not None:
        perf = ETSI_NODE.sub(performance, "phys_perf")
        identity_leaf(perf, "perf_type", "QBER")
        ETSI_NODE.sub(perf, "value", decimal(qber, 3))
    return performance


def node_state(status: str, interfaces: dict[int, str],
               links: list[tuple[str, str, etree._Element, KeyPool | None]]) -> etree._Element:
    """The <qkd_node> state: its status, each interface's status, and per link (qkdl_id, status,
    qkdl_performance element, key pool or None)."""
    E = ETSI_NODE
    node = E.element("qkd_node")
    identity_leaf(node, "qkdn_status", status)
    if interfaces:
        container = E.sub(node, "qkd_interfaces")
        for qkdi_id, interface_status in interfaces.items():
            interface = E.sub(container, "qkd_interface")
            E.sub(interface, "qkdi_id", qkdi_id)
            identity_leaf(interface, "qkdi_status", interface_status)
    if links:
        container = E.sub(node, "qkd_links")
        for link_id, link_status, performance, pool in links:
            link = E.sub(container, "qkd_link")
            E.sub(link, "qkdl_id", link_id)
            identity_leaf(link, "qkdl_status", link_status)
            link.append(performance)
            if pool is not None:
                link.append(NODE_EXT.element("key-pool", leaves={"stored": pool.stored, "generated": pool.generated,
                                                                 "consumed": pool.consumed}))
    return node


def link_event(kind: str, link_id: str, reason: str | None = None,
               performance: etree._Element | None = None) -> etree._Element:
    """An sdqkdn_link_* notification about link `link_id`."""
    root = ETSI_NODE.element(kind)
    link = ETSI_NODE.sub(root, "qkd_link")
    ETSI_NODE.sub(link, "qkdl_id", link_id)
    if reason is not None:
        ETSI_NODE.sub(link, "reason", reason[:1024])
    if performance is not None:
        link.append(performance)
    return root


def status_event(kind: str, about: str, keys: dict[str, object], status_leaf: str, status: str, message: str,
                 severity: str) -> etree._Element:
    """An alarm or event notification about an interface or link (`about`), named by `keys`."""
    root = ETSI_NODE.element(kind)
    entry = ETSI_NODE.sub(root, about)
    for name, value in keys.items():
        ETSI_NODE.sub(entry, name, value)
    identity_leaf(entry, status_leaf, status)
    ETSI_NODE.sub(entry, "message", message)
    identity_leaf(entry, "severity", severity)
    return root
