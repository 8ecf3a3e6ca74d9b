"""The connectivity stratum's vocabulary: qi-fibre-plant (the plant device's inventory and
span events), qi-optical-switch (a switch's ports and cross-connects) and qi-connectivity
(the fibre network, an RFC 8345 network of type fibre-network, and its optical paths).

Producers and consumers share these: the fibre plant and switches (devices) build what the
connectivity controller reads; the connectivity controller builds the fibre network and the
optical paths' state, which the forwarding controller and the orchestrator read, and the
forwarding controller writes optical-path requests the connectivity controller reads.
decimal64 leaves are written with three fraction digits, as the controllers always did."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from models import network as nw
from models.ns import CONNECTIVITY, FIBRE_PLANT, NT, NW, OPTICAL_SWITCH, QI_TYPES
from netconf_core.ns import BASE, decimal

PANEL_TP = "panel"  # tp-id of a site's one unnumbered termination (a span end without a port)
FIBRE_NETWORK_TYPE = CONNECTIVITY("fibre-network")


def _d3(value: float) -> str:
    return f"{value:.3f}"


# --- the fibre as the plant and the switches describe it -----------------------------------

@dataclass(frozen=True)
class TermPoint:
    """A termination point of the fibre network: a node (site or switch) and a tp-id."""

    node: str
    tp: str

    def __str__(self) -> str:
        return f"{self.node}:{self.tp}"


def tp_id(port: int | None) -> str:
    """The tp-id of a switch port or site panel position (PANEL_TP when it has no number)."""
    return PANEL_TP if port is None else str(port)


@dataclass
class Span:
    id: str
    a: TermPoint
    b: TermPoint
    length: float
    attenuation: float
    loss: float
    up: bool = True
    eavesdropper: float = 0.0


@dataclass(frozen=True)
class SwitchPort:
    id: int
    insertion_loss: float = 0.0
    enabled: bool = True
    oper_status: str = "up"


@dataclass(frozen=True)
class CrossConnect:
    name: str
    in_port: int
    out_port: int
    wavelength: int | None = None


@dataclass
class Switch:
    id: str
    site: str
    fabric_loss: float
    ports: dict[int, SwitchPort]
    cross_connects: dict[str, CrossConnect] = field(default_factory=dict)
    from_device: bool = False  # read from the switch itself, not only from the plant's inventory

    def cross_connect_loss(self, xc: CrossConnect) -> float:
        return self.ports[xc.in_port].insertion_loss + self.ports[xc.out_port].insertion_loss + self.fabric_loss


@dataclass
class Fibre:
    sites: set[str] = field(default_factory=set)
    switches: dict[str, Switch] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)

    def site_tps(self, site: str) -> list[str]:
        ends = [end for span in self.spans.values() for end in (span.a, span.b) if end.node == site]
        return sorted({end.tp for end in ends}, key=_tp_order)

    def has(self, point: TermPoint) -> bool:
        if point.node in self.switches:
            return point.tp.isdigit() and int(point.tp) in self.switches[point.node].ports
        return point.node in self.sites and point.tp in self.site_tps(point.node)


def _tp_order(tp: str) -> tuple[int, str]:
    return (int(tp), "") if tp.isdigit() else (-1, tp)


# --- qi-fibre-plant ----------------------------------------------------------------------------

def read_plant(plant: etree._Element) -> Fibre:
    """The sites, switches (ports from the inventory) and spans of a <fibre-plant> state tree."""
    P = FIBRE_PLANT
    fibre = Fibre()
    fibre.sites = {P.text(s, "site-id") for s in P.all(plant, "sites/site")}
    for sw in P.all(plant, "switches/switch"):
        switch_id = P.text(sw, "switch-id")
        fibre.switches[switch_id] = Switch(switch_id, P.text(sw, "site", ""), P.number(sw, "insertion-loss") or 0.0,
                                           {int(e.text): SwitchPort(int(e.text)) for e in P.all(sw, "port")})
    for span in P.all(plant, "spans/span"):
        ends = []
        for end in ("a-end", "b-end"):
            port = P.text(span, f"{end}/port")
            ends.append(TermPoint(P.text(span, f"{end}/node"), tp_id(int(port) if port else None)))
        length, attenuation = float(P.text(span, "length")), float(P.text(span, "attenuation"))
        loss = P.text(span, "loss")
        span_id = P.text(span, "span-id")
        fibre.spans[span_id] = Span(span_id, ends[0], ends[1], length, attenuation,
                                    float(loss) if loss else length * attenuation,
                                    up=P.text(span, "status") != "cut",
                                    eavesdropper=P.number(span, "eavesdropper-fraction") or 0.0)
    return fibre


def _plant_end(tag: str, point: TermPoint) -> etree._Element:
    return FIBRE_PLANT.element(tag, leaves={"node": point.node, "port": None if point.tp == PANEL_TP else point.tp})


def plant_state(network: str, emulated_time: float, sites: list[tuple[str, str]], switches: list[Switch],
                spans: list[Span]) -> etree._Element:
    """The <fibre-plant> state of the plant device: `sites` as (site-id, name), each switch's
    inventory (its ports; `fabric_loss` is the plant's insertion-loss) and the spans (a span
    that is not up is cut), in the order given. read_plant reads it back."""
    P = FIBRE_PLANT
    plant = P.element("fibre-plant", leaves={"network": network})
    plant.append(P.element("clock", leaves={"emulated-time": decimal(emulated_time, 3)}))
    container = P.sub(plant, "sites")
    for site_id, name in sites:
        container.append(P.element("site", leaves={"site-id": site_id, "name": name}))
    if switches:
        container = P.sub(plant, "switches")
        for switch in switches:
            entry = P.element("switch", leaves={"switch-id": switch.id, "site": switch.site})
            for port in switch.ports:
                P.sub(entry, "port", port)
            P.sub(entry, "insertion-loss", decimal(switch.fabric_loss, 3))
            container.append(entry)
    if spans:
        container = P.sub(plant, "spans")
        for span in spans:
            entry = P.element("span", leaves={"span-id": span.id})
            entry.append(_plant_end("a-end", span.a))
            entry.append(_plant_end("b-end", span.b))
            for tag, value in (("length", decimal(span.length, 3)), ("attenuation", decimal(span.attenuation, 3)),
                               ("loss", decimal(span.loss, 3)), ("status", "up" if span.up else "cut"),
                               ("eavesdropper-fraction", decimal(span.eavesdropper, 9))):
                P.sub(entry, tag, value)
            container.append(entry)
    return plant


@dataclass(frozen=True)
class SpanStatus:
    """A span-status-change notification."""

    span_id: str
    up: bool
    eavesdropper: float


def read_span_status_change(event: etree._Element) -> SpanStatus | None:
    """The span-status-change `event` carries, or None if it is another event."""
    if event.tag != FIBRE_PLANT("span-status-change"):
        return None
    return SpanStatus(FIBRE_PLANT.text(event, "span-id", ""), FIBRE_PLANT.text(event, "status") != "cut",
                      FIBRE_PLANT.number(event, "eavesdropper-fraction") or 0.0)


def plant_operation(rpc: str, span_id: str, **leaves: str) -> etree._Element:
    """A fault RPC of the plant (cut-span, repair-span, attach-eavesdropper, remove-eavesdropper)."""
    return FIBRE_PLANT.element(rpc, leaves={"span-id": span_id, **leaves})


# --- qi-optical-switch ---------------------------------------------------------------------------

def read_switch(root: etree._Element) -> Switch:
    """A switch as its <optical-switch> tree (config and state, defaults reported) describes it."""
    O = OPTICAL_SWITCH
    ports = {}
    for port in O.all(root, "ports/port"):
        port_id = int(O.text(port, "port-id"))
        ports[port_id] = SwitchPort(port_id, float(O.text(port, "insertion-loss") or 0.3),
                                    O.text(port, "enabled") != "false", O.text(port, "oper-status") or "up")
    xcs = {}
    for xc in O.all(root, "cross-connects/cross-connect"):
        wavelength = O.text(xc, "wavelength")
        name = O.text(xc, "name")
        xcs[name] = CrossConnect(name, int(O.text(xc, "in-port")), int(O.text(xc, "out-port")),
                                 int(wavelength) if wavelength else None)
    return Switch(O.text(root, "switch-id"), O.text(root, "site") or "", float(O.text(root, "fabric-loss") or 0.5),
                  ports, xcs, from_device=True)


def cross_connect_edit(remove: set[str], put: list[CrossConnect]) -> etree._Element:
    """An edit-config <config> removing the cross-connects named in `remove` and replacing `put`."""
    config = BASE.element("config")
    xcs = OPTICAL_SWITCH.sub(OPTICAL_SWITCH.sub(config, "optical-switch"), "cross-connects")
    for name in sorted(remove):
        entry = OPTICAL_SWITCH.sub(xcs, "cross-connect")
        entry.set(BASE("operation"), "remove")
        OPTICAL_SWITCH.sub(entry, "name", name)
    for xc in put:
        entry = OPTICAL_SWITCH.sub(xcs, "cross-connect")
        entry.set(BASE("operation"), "replace")
        OPTICAL_SWITCH.sub(entry, "name", xc.name)
        OPTICAL_SWITCH.sub(entry, "in-port", xc.in_port)
        OPTICAL_SWITCH.sub(entry, "out-port", xc.out_port)
        if xc.wavelength is not None:
            OPTICAL_SWITCH.sub(entry, "wavelength", xc.wavelength)
    return config


def switch_state(port_status: dict[int, str], cross_connects: list[tuple[str, str, float]]) -> etree._Element:
    """The <optical-switch> state of a switch: each port's oper-status, and each cross-connect's
    (name, oper-status, insertion loss). read_switch reads it, merged with the configuration."""
    O = OPTICAL_SWITCH
    root = O.element("optical-switch")
    ports = O.sub(root, "ports")
    for port, status in port_status.items():
        ports.append(O.element("port", leaves={"port-id": port, "oper-status": status}))
    if cross_connects:
        xcs = O.sub(root, "cross-connects")
        for name, status, loss in cross_connects:
            xcs.append(O.element("cross-connect", leaves={"name": name, "oper-status": status,
                                                           "insertion-loss": decimal(loss, 3)}))
    return root


@dataclass(frozen=True)
class PortStatus:
    """A port-status-change notification."""

    switch_id: str
    port_id: int
    oper_status: str


def read_port_status_change(event: etree._Element) -> PortStatus | None:
    if event.tag != OPTICAL_SWITCH("port-status-change"):
        return None
    return PortStatus(OPTICAL_SWITCH.text(event, "switch-id", ""), int(OPTICAL_SWITCH.text(event, "port-id") or 0),
                      OPTICAL_SWITCH.text(event, "oper-status") or "unknown")


# --- qi-connectivity: optical paths ----------------------------------------------------------------

@dataclass(frozen=True)
class PathRequest:
    """An optical path as a client configured it."""

    name: str
    source: TermPoint
    destination: TermPoint
    wavelength: int | None = None
    max_loss: float | None = None
    avoid_spans: frozenset[str] = frozenset()


def fibre_network(tree: etree._Element | None, network_id: str) -> etree._Element | None:
    """The network `network_id` of a datastore or <data> tree."""
    return nw.find_network(tree, network_id=network_id)


def read_path_requests(network: etree._Element | None) -> dict[str, PathRequest]:
    """The optical paths configured in a fibre network element."""
    C = CONNECTIVITY
    out = {}
    for path in C.all(network, "optical-paths/optical-path"):
        name = C.text(path, "name")
        ends = [TermPoint(C.text(path, f"{end}/node"), C.text(path, f"{end}/tp")) for end in ("source", "destination")]
        wavelength, max_loss = C.text(path, "wavelength"), C.text(path, "max-loss")
        out[name] = PathRequest(name, ends[0], ends[1], int(wavelength) if wavelength else None,
                                float(max_loss) if max_loss else None,
                                frozenset(e.text for e in C.all(path, "avoid-spans")))
    return out


def path_request_element(request: PathRequest, operation: str | None = None) -> etree._Element:
    """An optical-path entry as a client writes it (with an edit-config `operation` if given)."""
    C = CONNECTIVITY
    path = C.element("optical-path")
    if operation is not None:
        path.set(BASE("operation"), operation)
    C.sub(path, "name", request.name)
    for end, point in (("source", request.source), ("destination", request.destination)):
        element = C.sub(path, end)
        C.sub(element, "node", point.node)
        C.sub(element, "tp", point.tp)
    if request.wavelength is not None:
        C.sub(path, "wavelength", request.wavelength)
    if request.max_loss is not None:
        C.sub(path, "max-loss", _d3(request.max_loss))
    for span in sorted(request.avoid_spans):
        C.sub(path, "avoid-spans", span)
    return path


def path_removal(name: str) -> etree._Element:
    path = CONNECTIVITY.element("optical-path")
    path.set(BASE("operation"), "remove")
    CONNECTIVITY.sub(path, "name", name)
    return path


def optical_paths_edit(network_id: str, entries: list[etree._Element]) -> etree._Element:
    """An edit-config <config> of the optical paths of fibre network `network_id`."""
    config = BASE.element("config")
    network = NW.sub(NW.sub(config, "networks"), "network")
    NW.sub(network, "network-id", network_id)
    CONNECTIVITY.sub(network, "optical-paths").extend(entries)
    return config


def optical_paths_filter(network_id: str) -> str:
    """A subtree filter of the optical paths of fibre network `network_id`."""
    return (f'<networks xmlns="{NW}"><network><network-id>{network_id}</network-id>'
            f'<optical-paths xmlns="{CONNECTIVITY}"/></network></networks>')


def read_path_losses(data: etree._Element | None) -> dict[str, float]:
    """Optical path name -> its total loss, for the paths of a <get> reply that have one."""
    losses = {}
    for path in data.iter(CONNECTIVITY("optical-path")) if data is not None else []:
        loss = CONNECTIVITY.text(path, "total-loss")
        if loss:
            losses[CONNECTIVITY.text(path, "name")] = float(loss)
    return losses


def read_path_names(data: etree._Element | None) -> set[str]:
    """The names of the optical paths of a <get> reply."""
    return {e.text for e in data.iter(CONNECTIVITY("name"))} if data is not None else set()


@dataclass(frozen=True)
class PathHop:
    span: str
    from_node: str
    to_node: str


@dataclass(frozen=True)
class PathState:
    """The state of an optical path (no route: wavelength, loss and length None, no hops)."""

    status: str  # up, down, no-route, computing
    reason: str
    wavelength: int | None = None
    loss: float | None = None
    length: float | None = None
    hops: tuple[PathHop, ...] = ()


def add_path_state(paths: etree._Element, name: str, state: PathState) -> etree._Element:
    C = CONNECTIVITY
    path = C.sub(paths, "optical-path")
    C.sub(path, "name", name)
    C.sub(path, "status", state.status)
    C.sub(path, "reason", state.reason)
    if state.wavelength is None:
        return path
    C.sub(path, "assigned-wavelength", state.wavelength)
    C.sub(path, "total-loss", _d3(state.loss))
    C.sub(path, "length", _d3(state.length))
    hops = C.sub(path, "route")
    for index, hop in enumerate(state.hops):
        entry = C.sub(hops, "hop")
        C.sub(entry, "index", index)
        C.sub(entry, "span", hop.span)
        C.sub(entry, "from-node", hop.from_node)
        C.sub(entry, "to-node", hop.to_node)
    return path


def read_path_states(network: etree._Element | None) -> dict[str, PathState]:
    """The state of each optical path of a fibre network element (add_path_state's reader)."""
    C = CONNECTIVITY
    out = {}
    for path in C.all(network, "optical-paths/optical-path"):
        wavelength = C.text(path, "assigned-wavelength")
        hops = sorted(C.all(path, "route/hop"), key=lambda h: int(C.text(h, "index", "0")))
        out[C.text(path, "name", "")] = PathState(
            C.text(path, "status", ""), C.text(path, "reason", ""), int(wavelength) if wavelength else None,
            C.number(path, "total-loss"), C.number(path, "length"),
            tuple(PathHop(C.text(h, "span", ""), C.text(h, "from-node", ""), C.text(h, "to-node", "")) for h in hops))
    return out


def optical_path_status_change(network_id: str, name: str, status: str, previous: str | None, reason: str,
                               time: str) -> etree._Element:
    return CONNECTIVITY.element("optical-path-status-change", leaves={
        "network-id": network_id, "name": name, "status": status, "previous-status": previous,
        "reason": reason, "time": time})


def read_optical_path_status_change(notification: etree._Element) -> str | None:
    """The new status an optical-path-status-change anywhere in `notification` reports, or None."""
    change = notification.find(f".//{CONNECTIVITY('optical-path-status-change')}")
    return CONNECTIVITY.text(change, "status", "") if change is not None else None


def _fault_leaf(parent: etree._Element, tag: str, fault: str) -> None:
    """A leaf holding a qi-types fault identity that declares the prefix itself: state leaves
    are merged into the running tree one by one, away from their parents' declarations."""
    leaf = etree.SubElement(parent, CONNECTIVITY(tag), nsmap={None: str(CONNECTIVITY), "qit": str(QI_TYPES)})
    leaf.text = f"qit:{fault}"


def span_event(up: bool, network_id: str, link_id: str, reason: str) -> etree._Element:
    """span-up or span-down (the cause: a fibre cut)."""
    event = CONNECTIVITY.element("span-up" if up else "span-down",
                                 leaves={"network-id": network_id, "link-id": link_id})
    _fault_leaf(event, "cause", "fibre-cut")
    CONNECTIVITY.sub(event, "reason", reason)
    return event


# --- qi-connectivity: the fibre network ------------------------------------------------------------

def fibre_network_filter() -> str:
    """A subtree filter of the networks' ids and types (to find the fibre network)."""
    return f'<networks xmlns="{NW}"><network><network-id/><network-types/></network></networks>'


def find_fibre_network_id(data: etree._Element | None) -> str | None:
    """The network-id of the network of type fibre-network in `data`, if any."""
    network = nw.find_network(data, network_type=FIBRE_NETWORK_TYPE)
    return nw.network_id(network) if network is not None else None


def without_paths(tree: etree._Element) -> etree._Element | None:
    """A copy of the networks of a datastore tree without the optical paths: what only the
    connectivity controller may change."""
    networks = nw.networks_of(tree)
    if networks is None:
        return None
    networks = copy.deepcopy(networks)
    for paths in networks.iter(CONNECTIVITY("optical-paths")):
        paths.getparent().remove(paths)
    return networks


def _fibre_node(network: etree._Element, node_id: str, kind: str, site: str | None) -> etree._Element:
    node = nw.add_node(network, node_id)
    attributes = CONNECTIVITY.sub(node, "fibre-node")
    CONNECTIVITY.sub(attributes, "kind", kind)
    if site:
        CONNECTIVITY.sub(attributes, "site", site)
    return node


def topology_element(network_id: str, fibre: Fibre, paths: etree._Element | None) -> etree._Element:
    """The <networks> container of the fibre network as discovered (configuration), with
    `paths` (the configured optical-paths element) kept as it is."""
    C = CONNECTIVITY
    networks = nw.networks_element()
    network = nw.add_network(networks, network_id, FIBRE_NETWORK_TYPE)
    for site in sorted(fibre.sites):
        node = _fibre_node(network, site, "site", site)
        for tp in fibre.site_tps(site):
            point = nw.add_termination_point(node, tp)
            C.sub(C.sub(point, "fibre-port"), "insertion-loss", _d3(0.0))
    for switch in sorted(fibre.switches.values(), key=lambda s: s.id):
        node = _fibre_node(network, switch.id, "optical-switch", switch.site)
        C.sub(C.find(node, "fibre-node"), "fabric-loss", _d3(switch.fabric_loss))
        for port in sorted(switch.ports.values(), key=lambda p: p.id):
            point = nw.add_termination_point(node, str(port.id))
            fibre_port = C.sub(point, "fibre-port")
            C.sub(fibre_port, "switch-port", port.id)
            C.sub(fibre_port, "insertion-loss", _d3(port.insertion_loss))
    for span in sorted(fibre.spans.values(), key=lambda s: s.id):
        link = nw.add_link(network, span.id, (span.a.node, span.a.tp), (span.b.node, span.b.tp))
        attributes = C.sub(link, "fibre-span")
        C.sub(attributes, "length", _d3(span.length))
        C.sub(attributes, "attenuation", _d3(span.attenuation))
        extra = span.loss - span.length * span.attenuation
        if extra > 0.0005:
            C.sub(attributes, "extra-loss", _d3(extra))
    if paths is not None:
        network.append(copy.deepcopy(paths))
    return networks


def state_network(data: etree._Element, network_id: str) -> etree._Element:
    """A new fibre network (its id only) in a <data> tree, for the state builders below."""
    network = NW.sub(NW.sub(data, "networks"), "network")
    NW.sub(network, "network-id", network_id)
    return network


def add_node_state(network: etree._Element, node_id: str, status: str, tp_status: list[tuple[str, str]]) -> None:
    """A node's oper-status and its termination points' (tp-id, oper-status)."""
    node = nw.add_node(network, node_id)
    CONNECTIVITY.sub(CONNECTIVITY.sub(node, "fibre-node"), "oper-status", status)
    for tp, tp_status_value in tp_status:
        point = nw.add_termination_point(node, tp)
        CONNECTIVITY.sub(CONNECTIVITY.sub(point, "fibre-port"), "oper-status", tp_status_value)


def add_span_state(network: etree._Element, span: Span) -> None:
    """A span's state: total loss, status, faults and eavesdropper."""
    C = CONNECTIVITY
    link = NT.sub(network, "link")
    NT.sub(link, "link-id", span.id)
    attributes = C.sub(link, "fibre-span")
    C.sub(attributes, "total-loss", _d3(span.loss))
    C.sub(attributes, "oper-status", "up" if span.up else "down")
    for fault, present in (("fibre-cut", not span.up), ("eavesdropper", span.eavesdropper > 0)):
        if present:
            _fault_leaf(attributes, "active-faults", fault)
    C.sub(attributes, "eavesdropper-present", "true" if span.eavesdropper > 0 else "false")
    if span.eavesdropper > 0:
        C.sub(attributes, "intercept-fraction", f"{span.eavesdropper:.9f}")


# --- reading the fibre network, as the levels above see it ---------------------------------------

@dataclass(frozen=True)
class FibreNode:
    id: str
    kind: str  # site or optical-switch
    site: str
    ports: tuple[str, ...]
    insertion_loss: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    fabric_loss: float = 0.0  # a switch's, crossed once per cross-connect


@dataclass(frozen=True)
class FibreSpan:
    id: str
    a: nw.Port
    b: nw.Port
    loss_db: float
    up: bool
    eavesdropper: bool

    @property
    def usable(self) -> bool:
        return self.up and not self.eavesdropper


@dataclass
class FibreNetwork:
    """The fibre network of a qi-connectivity <get> reply (configuration and state)."""

    network_id: str = ""
    nodes: dict[str, FibreNode] = field(default_factory=dict)
    spans: dict[str, FibreSpan] = field(default_factory=dict)
    optical_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> spans of its route


def read_fibre_network(data: etree._Element | None) -> FibreNetwork:
    """The fibre network (the network of type fibre-network) of `data`; empty when there is none.
    A span's loss is its total-loss, else length x attenuation (0.2 dB/km by default) + extra-loss."""
    C = CONNECTIVITY
    view = FibreNetwork()
    network = nw.find_network(data, network_type=FIBRE_NETWORK_TYPE)
    if network is None:
        return view
    view.network_id = nw.network_id(network)
    for node in nw.nodes(network):
        node_id = nw.node_id(node)
        fibre = C.find(node, "fibre-node")
        ports, losses = [], {}
        for tp in nw.termination_points(node):
            tp_name = nw.tp_id(tp)
            ports.append(tp_name)
            loss = C.number(tp, "fibre-port/insertion-loss")
            if loss is not None:
                losses[tp_name] = loss
        view.nodes[node_id] = FibreNode(node_id, C.text(fibre, "kind", "site"), C.text(fibre, "site", node_id),
                                        tuple(ports), losses, C.number(fibre, "fabric-loss") or 0.0)
    for link in nw.links(network):
        span = C.find(link, "fibre-span")
        if span is None:
            continue
        link_name = nw.link_id(link)
        loss = C.number(span, "total-loss")
        if loss is None:
            loss = (C.number(span, "length") or 0.0) * (C.number(span, "attenuation") or 0.2) \
                + (C.number(span, "extra-loss") or 0.0)
        view.spans[link_name] = FibreSpan(link_name, nw.link_source(link), nw.link_destination(link), loss,
                                          C.text(span, "oper-status", "up") in ("up", "degraded"),
                                          C.text(span, "eavesdropper-present", "false") == "true")
    for path in C.all(network, "optical-paths/optical-path"):
        view.optical_paths[C.text(path, "name", "")] = tuple(C.text(hop, "span", "")
                                                             for hop in C.all(path, "route/hop"))
    return view
