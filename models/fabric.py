"""qi-fabric: the entanglement fabric a fabric controller serves (an RFC 8345 network of type
entanglement-fabric), built here by the fabric controller (the topology it writes into its
running datastore, its state and its notification) and read here by every level that consumes
it (`FabricView.parse`: the entanglement service controller, the command line)."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from models import network as network_model
from models.ns import FABRIC, NT, NW, QUANTUM_NODE
from netconf_core.ns import decimal, identity

NETWORK_ID = "fabric"
QN_PREFIX = "qi-qn"
FILTER = f'<networks xmlns="{NW}"/>'


@dataclass(frozen=True)
class FabricNode:
    id: str
    role: str  # end-node or repeater
    site: str | None = None
    interfaces: tuple[str, ...] = field(default=(), compare=False)
    storage_qubits: int | None = None
    free_qubits: int | None = None
    decoherence_rate: float | None = None
    swap_fidelity: float | None = None
    swap_success: float | None = None
    can_swap: bool | None = None
    can_purify: bool | None = None
    status: str | None = None


@dataclass(frozen=True)
class FabricLink:
    id: str
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]
    link_type: str
    length_km: float | None = None
    optical_path: str | None = None
    status: str | None = None
    success_probability: float | None = None
    attempt_cycle_s: float | None = None
    generation_rate: float | None = None
    fidelity: float | None = None
    reserved_rate: float | None = None

    @property
    def up(self) -> bool:
        return self.status == "up"


def _container(parent: etree._Element, tag: str) -> etree._Element:
    """A qi-fabric container declaring the qi-quantum-node prefix its identities use."""
    return etree.SubElement(parent, FABRIC(tag), nsmap={None: str(FABRIC), QN_PREFIX: str(QUANTUM_NODE)})


def _leaves(parent: etree._Element, leaves: dict[str, object]) -> None:
    for tag, value in leaves.items():
        if value is not None:
            FABRIC.sub(parent, tag, "true" if value is True else "false" if value is False else value)


def _dec(value: float | None, digits: int) -> str | None:
    return None if value is None else decimal(value, digits)


def _unit(value: float | None) -> str | None:
    return None if value is None else decimal(min(1.0, max(0.0, value)), 6)


def topology_element(nodes: list[FabricNode], links: list[FabricLink], network_id: str = NETWORK_ID,
                     state: bool = False) -> etree._Element:
    """<networks> with the fabric: its configuration (what the controller writes into running)
    or, with `state`, its config false leaves (what it serves at get time)."""
    networks = network_model.networks_element()
    network = network_model.add_network(networks, network_id, None if state else FABRIC("entanglement-fabric"))
    for node in nodes:
        element = network_model.add_node(network, node.id)
        if not state:
            for name in node.interfaces:
                network_model.add_termination_point(element, name)
        qn = _container(element, "quantum-node")
        if not state:
            _leaves(qn, {"role": f"{QN_PREFIX}:{node.role}", "site": node.site})
        else:
            _leaves(qn, {"storage-qubits": node.storage_qubits, "free-qubits": node.free_qubits,
                         "decoherence-rate": _dec(node.decoherence_rate, 6), "swap-fidelity": _unit(node.swap_fidelity),
                         "swap-success-probability": _unit(node.swap_success), "can-swap": node.can_swap,
                         "can-purify": node.can_purify, "status": node.status})
    for link in links:
        if state:
            element = NT.sub(network, "link")
            NT.sub(element, "link-id", link.id)
        else:
            element = network_model.add_link(network, link.id, link.a, link.b)
        entry = _container(element, "entanglement-link")
        if not state:
            _leaves(entry, {"link-type": f"{QN_PREFIX}:{link.link_type}", "length": _dec(link.length_km, 3),
                            "optical-path": link.optical_path})
        else:
            probability = link.success_probability
            _leaves(entry, {"status": link.status,
                            "success-probability": None if probability is None else
                            (decimal(probability, 6) if probability == 0 or probability >= 1e-6 else "0.000001"),
                            "attempt-cycle": _dec(link.attempt_cycle_s, 9),
                            "generation-rate": _dec(link.generation_rate, 6), "fidelity": _unit(link.fidelity),
                            "reserved-rate": _dec(link.reserved_rate, 6)})
    return networks


def link_change(link: FabricLink, reason: str, network_id: str = NETWORK_ID) -> etree._Element:
    return FABRIC.element("entanglement-link-change", leaves={
        "network-id": network_id, "link-id": link.id, "status": link.status or "down",
        "generation-rate": _dec(link.generation_rate or 0.0, 6), "fidelity": _unit(link.fidelity),
        "reason": reason[:1024]})


@dataclass
class FabricView:
    network_id: str = ""
    nodes: dict[str, FabricNode] = field(default_factory=dict)
    links: dict[str, FabricLink] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: etree._Element | None) -> FabricView:
        """The entanglement fabric of a <get> reply (a <data> tree holding nw:networks)."""
        view = cls()
        network = network_model.find_network(data, network_type=FABRIC("entanglement-fabric"))
        if network is None:
            return view
        view.network_id = network_model.network_id(network)
        number, text = FABRIC.number, FABRIC.text
        for node in network_model.nodes(network):
            qn = FABRIC.find(node, "quantum-node")
            node_id = network_model.node_id(node)
            flag = lambda tag: None if text(qn, tag) is None else text(qn, tag) == "true"
            view.nodes[node_id] = FabricNode(
                node_id, identity(text(qn, "role")) or "", text(qn, "site"),
                tuple(network_model.tp_id(tp) for tp in network_model.termination_points(node)),
                _int(text(qn, "storage-qubits")), _int(text(qn, "free-qubits")), number(qn, "decoherence-rate"),
                number(qn, "swap-fidelity"), number(qn, "swap-success-probability"), flag("can-swap"),
                flag("can-purify"), text(qn, "status"))
        for link in network_model.links(network):
            entry = FABRIC.find(link, "entanglement-link")
            if entry is None:
                continue
            link_id = network_model.link_id(link)
            view.links[link_id] = FabricLink(
                link_id, network_model.link_source(link), network_model.link_destination(link),
                identity(text(entry, "link-type")) or "", number(entry, "length"), text(entry, "optical-path"),
                text(entry, "status"), number(entry, "success-probability"), number(entry, "attempt-cycle"),
                number(entry, "generation-rate"), number(entry, "fidelity"), number(entry, "reserved-rate"))
        return view


def _int(text: str | None) -> int | None:
    return int(text) if text else None
