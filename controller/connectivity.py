"""The connectivity controller: the fibre topology and the optical paths over it.

Southbound it talks NETCONF to the fibre plant (qi-fibre-plant: sites, switches, spans and
their faults) and to the optical switches (qi-optical-switch: ports and cross-connects);
which is which it learns from each device's yang-library. Northbound it serves
qi-connectivity: one ietf-network network "fibre" (type fibre-network).

The topology is discovered, not configured: the controller writes it into its own running
datastore (nodes = sites and switches; termination points = switch ports, numbered like
the switch's port-id, and the site panel positions where spans end; links = spans) with a
server-originated commit, and refuses a client's edit that changes it. Its state (span
status, loss, faults, eavesdropper; port and switch status) is kept from the devices'
notifications and the periodic resync, and merged at get time.

Clients configure optical-paths. A path is routed on a graph of termination points whose
edges are the spans that are up (weight: span loss) and, inside each switch, port-to-fabric
edges (weight: port loss plus half the fabric loss), so a route crosses each switch once
through one cross-connect of loss in-port + out-port + fabric, as qi-optical-switch defines
it. Dijkstra gives the lowest-loss route. The emulated switches are fibre (space) switches:
a port carries one cross-connect whatever the wavelength, so a port, a span or an end
already used by another path, or held by a cross-connect set by someone else, is not
usable; the wavelength is a label the path carries (the requested one, or channel 1).

A path that cannot be routed is refused at commit (resource-denied, naming the path and
why): a request the network cannot carry should fail where the client can see it, not
linger as config that does nothing. The cross-connects of every switch on the route are
written as ONE transaction (controller.transaction), each named after its path; a switch
that refuses makes the commit fail, naming the switch, and no switch keeps anything.

On a span cut (plant notification, or found by resync) span-down goes north, the paths over
the span go down and are re-routed around it when the network allows, in one transaction;
optical-path-status-change reports every status change with its reason. A repaired span
brings its paths back up. The resync re-reads every device, and repairs cross-connects that
differ from the placed routes (drift: a switch restarted with another configuration).
"""
from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field

import networkx as nx
from lxml import etree

from controller.alarms import AlarmList, AlarmType
from controller.base import Controller, same_content
from models import connectivity as model
from models.connectivity import (CrossConnect, Fibre, PathRequest, Span, Switch, SwitchPort,  # noqa: F401 (Switch)
                                 TermPoint)
from models.network import RESOURCE_PREFIXES, link_resource, resource_link
from models.ns import CONNECTIVITY, FIBRE_PLANT, NT, NW, OPTICAL_SWITCH, QI_ALARMS
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint, IncompatibleDevice, TransactionError, implemented_modules
from netconf_core.server import User

log = logging.getLogger(__name__)

PLANT_MODULE = "qi-fibre-plant"
SWITCH_MODULE = "qi-optical-switch"

NETWORK_ID = "fibre"
DEFAULT_WAVELENGTH = 1
LINK_SCHEMA = "/ietf-network:networks/network/ietf-network-topology:link"
PATHS_XPATH = f"/ietf-network:networks/network[network-id='{NETWORK_ID}']/qi-connectivity:optical-paths"
XPATH_NS = {"ietf-network": NW, "qi-connectivity": CONNECTIVITY}
MAX_REASON = 1024


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


# --- routing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    span: str
    from_node: str
    to_node: str


@dataclass(frozen=True)
class Route:
    hops: tuple[Hop, ...]
    cross_connects: tuple[tuple[str, CrossConnect], ...]  # (switch, cross-connect), from the source
    wavelength: int
    loss: float
    length: float

    @property
    def spans(self) -> set[str]:
        return {hop.span for hop in self.hops}

    def describe(self) -> str:
        spans = ", ".join(hop.span for hop in self.hops) or "no span"
        switches = ", ".join(sw for sw, _ in self.cross_connects)
        return f"over {spans}" + (f" through {switches}" if switches else "")


class NoRoute(Exception):
    """No route meets the request; the message says why."""


@dataclass
class Busy:
    """What other paths and foreign cross-connects hold, by holder name."""

    ports: dict[tuple[str, int], str] = field(default_factory=dict)
    spans: dict[str, str] = field(default_factory=dict)
    ends: dict[TermPoint, str] = field(default_factory=dict)

    def hold(self, holder: str, request: PathRequest | None, route: Route | None) -> None:
        if request is not None:
            self.ends[request.source] = self.ends[request.destination] = holder
        for switch, xc in route.cross_connects if route else ():
            self.hold_cross_connect(switch, xc, holder)
        for span in route.spans if route else ():
            self.spans[span] = holder

    def hold_cross_connect(self, switch: str, xc: CrossConnect, holder: str) -> None:
        self.ports[(switch, xc.in_port)] = self.ports[(switch, xc.out_port)] = holder


@dataclass(frozen=True)
class _Fabric:
    """The graph node inside a switch that its ports meet at."""

    switch: str


def find_route(fibre: Fibre, request: PathRequest, busy: Busy, switches: set[str]) -> Route:
    """The lowest-loss route for `request` over spans that are up and switches in
    `switches`, using nothing `busy` holds. Raises NoRoute with the reason."""
    src, dst = request.source, request.destination
    for end in (src, dst):
        if not fibre.has(end):
            raise NoRoute(f"{end} is not a termination point of the fibre network")
        if end in busy.ends:
            raise NoRoute(f"{end} already ends optical path {busy.ends[end]!r}")
        if end.node in fibre.switches and (end.node, int(end.tp)) in busy.ports:
            raise NoRoute(f"port {end} is in use by {busy.ports[(end.node, int(end.tp))]!r}")
        if end.node in fibre.switches and end.node not in switches:
            raise NoRoute(f"switch {end.node} is not reachable")
    graph = nx.Graph()
    for span in fibre.spans.values():
        if span.up and span.id not in request.avoid_spans and span.id not in busy.spans:
            graph.add_edge(span.a, span.b, loss=span.loss, span=span.id)
    for switch in fibre.switches.values():
        if switch.id not in switches:
            continue
        for port in switch.ports.values():
            if port.enabled and (switch.id, port.id) not in busy.ports:
                graph.add_edge(TermPoint(switch.id, str(port.id)), _Fabric(switch.id),
                               loss=port.insertion_loss + switch.fabric_loss / 2)
    try:
        nodes = nx.dijkstra_path(graph, src, dst, weight="loss")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        raise NoRoute(f"no free route from {src} to {dst}" + _obstacles(fibre, request, switches)) from None
    route = _route_from(nodes, graph, fibre, request)
    if request.max_loss is not None and route.loss > request.max_loss + 1e-9:
        raise NoRoute(f"the lowest-loss route from {src} to {dst} ({route.describe()}) has "
                      f"{route.loss:.3f} dB, above max-loss {request.max_loss:.3f} dB")
    return route


def _obstacles(fibre: Fibre, request: PathRequest, switches: set[str]) -> str:
    notes = []
    down = sorted(s.id for s in fibre.spans.values() if not s.up)
    if down:
        notes.append(f"spans down: {', '.join(down)}")
    if request.avoid_spans:
        notes.append(f"avoided: {', '.join(sorted(request.avoid_spans))}")
    unreachable = sorted(set(fibre.switches) - switches)
    if unreachable:
        notes.append(f"switches unreachable: {', '.join(unreachable)}")
    notes.append("ports and spans of other paths excluded")
    return " (" + "; ".join(notes) + ")"


def _route_from(nodes: list, graph: nx.Graph, fibre: Fibre, request: PathRequest) -> Route:
    wavelength = request.wavelength or DEFAULT_WAVELENGTH
    xcs = []
    for before, node, after in zip(nodes, nodes[1:], nodes[2:]):
        if isinstance(node, _Fabric):
            xc = CrossConnect(request.name, int(before.tp), int(after.tp), wavelength)
            xcs.append((node.switch, xc))
    hops = tuple(Hop(graph.edges[a, b]["span"], a.node, b.node)
                 for a, b in zip(nodes, nodes[1:]) if "span" in graph.edges[a, b])
    loss = (sum(fibre.spans[h.span].loss for h in hops)
            + sum(fibre.switches[sw].cross_connect_loss(xc) for sw, xc in xcs))
    length = sum(fibre.spans[h.span].length for h in hops)
    return Route(hops, tuple(xcs), wavelength, round(loss, 3), round(length, 3))


# --- the datastore ------------------------------------------------------------------------------

def _fibre_network(tree: etree._Element) -> etree._Element | None:
    return model.fibre_network(tree, NETWORK_ID)


def path_requests(tree: etree._Element) -> dict[str, PathRequest]:
    """The optical paths configured in a datastore tree."""
    return model.read_path_requests(_fibre_network(tree))


topology = model.without_paths


@dataclass
class SwitchChange:
    remove: set[str] = field(default_factory=set)
    put: dict[str, CrossConnect] = field(default_factory=dict)

    def config(self) -> etree._Element:
        return model.cross_connect_edit(self.remove, list(self.put.values()))


@dataclass
class Placement:
    """Where a configured path is, and how it is doing."""

    request: PathRequest
    route: Route | None
    status: str  # up, down, no-route (qi-connectivity optical-path-status)
    reason: str


SPAN_ALARMS = {  # identities of qi-alarms
    "span-cut": AlarmType("span-cut", QI_ALARMS, "qi-al", "A fibre span is cut."),
    "span-tapped": AlarmType("span-tapped", QI_ALARMS, "qi-al",
                             "An eavesdropper intercepts pulses on a fibre span.", ("critical",)),
}


# --- the controller ---------------------------------------------------------------------------

class ConnectivityController(Controller):
    kind = "connectivity-controller"
    # qi-types implemented: its fault identities are used; ietf-alarms and qi-alarms: the alarm list
    modules = ("qi-connectivity", "qi-types", "ietf-alarms", "qi-alarms")
    device_modules = ()  # the plant needs qi-fibre-plant, a switch qi-optical-switch: checked on connect
    state_paths = ("/ietf-network:networks", "/ietf-alarms:alarms")

    def __init__(self, name: str, devices: list[Endpoint], users: dict[str, User], **kwargs):
        super().__init__(name, devices, users, **kwargs)
        self.fibre = Fibre()
        self.placements: dict[str, Placement] = {}
        self.plant: str | None = None  # the plant's link name
        self.switch_links: dict[str, str] = {}  # switch id -> link name
        self._synced: set[str] = set()  # links read since their last (re)connection
        self._deleted: set[str] = set()  # deleted paths: an unreachable switch may still hold their cross-connects
        self._lock = asyncio.Lock()  # placements; switch writes and switch reads
        self.synced = asyncio.Event()  # every device read and the topology in running
        self.alarm_list = AlarmList(list(SPAN_ALARMS.values()), RESOURCE_PREFIXES, self.server.notify)
        for action, handler in (("cut", self._cut), ("repair", self._repair),
                                ("attach-eavesdropper", self._attach_eavesdropper),
                                ("remove-eavesdropper", self._remove_eavesdropper)):
            self.server.add_rpc(f"{LINK_SCHEMA}/qi-connectivity:fibre-span/{action}", handler)

    async def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every device has been read and the topology written into running."""
        async with asyncio.timeout(timeout):
            await self.synced.wait()

    # --- devices --------------------------------------------------------------------------

    async def device_connected(self, link: DeviceLink) -> None:
        self._synced.discard(link.name)
        modules = await implemented_modules(await link.session())
        if PLANT_MODULE in modules:
            self.plant = link.name
        elif SWITCH_MODULE not in modules:
            raise IncompatibleDevice(f"device {link.name} implements neither {PLANT_MODULE} nor {SWITCH_MODULE}")
        await self._read_device(link)
        await self._update_alarms()
        await self._publish_topology()
        await self.reconcile()

    async def device_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        event = next((c for c in notification if isinstance(c.tag, str) and etree.QName(c).localname != "eventTime"),
                     None)
        if event is None:
            return
        if (status := model.read_span_status_change(event)) is not None:
            span = self.fibre.spans.get(status.span_id)
            if span is None:
                return
            was_up = span.up
            span.up, span.eavesdropper = status.up, status.eavesdropper
            await self._update_alarms()
            await self._span_changed(span, was_up)
        elif (port_status := model.read_port_status_change(event)) is not None:
            switch = self.fibre.switches.get(port_status.switch_id)
            port = port_status.port_id
            if switch is not None and port in switch.ports:
                old = switch.ports[port]
                switch.ports[port] = SwitchPort(old.id, old.insertion_loss, old.enabled, port_status.oper_status)

    async def resync(self) -> None:
        """Re-read every device; act on span changes that notifications missed; repair drift."""
        for link in self.links.values():
            if link.status == "connected" and link.name in self._synced:
                await self._read_device(link)
        await self._update_alarms()
        await self._publish_topology()
        await self.reconcile()

    async def _read_device(self, link: DeviceLink) -> None:
        client = await link.session()
        if link.name == self.plant:
            data = await client.get(filter=("subtree", f'<fibre-plant xmlns="{FIBRE_PLANT}"/>'))
            plant = FIBRE_PLANT.find(data, "fibre-plant")
            if plant is None:
                raise IncompatibleDevice(f"device {link.name} serves no fibre-plant data")
            await self._plant_read(model.read_plant(plant))
        else:
            # Under the lock that every switch write holds: a read must not land between a
            # transaction's confirmed commit and its confirm or cancel-commit, where the switch
            # shows a change that may yet be refused (the view would keep a cross-connect the
            # switch no longer has), nor replace a view that a write updated after the read.
            async with self._lock:
                data = await client.get(filter=("subtree", f'<optical-switch xmlns="{OPTICAL_SWITCH}"/>'),
                                        with_defaults="report-all")
                root = OPTICAL_SWITCH.find(data, "optical-switch")
                if root is None:
                    raise IncompatibleDevice(f"device {link.name} serves no optical-switch data")
                switch = model.read_switch(root)
                inventory = self.fibre.switches.get(switch.id)
                switch.site = switch.site or (inventory.site if inventory else "")
                self.fibre.switches[switch.id] = switch
                self.switch_links[switch.id] = link.name
        self._synced.add(link.name)

    async def _plant_read(self, plant: Fibre) -> None:
        before = self.fibre.spans
        self.fibre.sites = plant.sites
        self.fibre.spans = plant.spans
        for switch in plant.switches.values():
            known = self.fibre.switches.get(switch.id)
            if known is None or not known.from_device:
                self.fibre.switches[switch.id] = switch
        for span in plant.spans.values():
            old = before.get(span.id)
            if old is not None and old.up != span.up:
                await self._span_changed(span, old.up)

    def _usable_switches(self) -> set[str]:
        """Switches whose configuration is known and that can be written now."""
        return {sw for sw, name in self.switch_links.items()
                if name in self._synced and self.links[name].status == "connected"}

    # --- the topology in running --------------------------------------------------------------

    async def _publish_topology(self) -> None:
        """Write the discovered topology into running, keeping the configured optical paths."""
        if not self.fibre.spans and not self.fibre.switches:
            return

        def build(tree: etree._Element) -> etree._Element:
            network = _fibre_network(tree)
            return model.topology_element(NETWORK_ID, self.fibre, CONNECTIVITY.find(network, "optical-paths"))
        await self.publish_networks(build)

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        if not same_content(topology(before), topology(after)):
            raise RPCError("invalid-value", "the fibre topology (nodes, termination points, links) is discovered "
                           "from the devices and cannot be edited; only optical-paths can (if the candidate "
                           "predates a topology change, discard-changes and edit again)",
                           path="/ietf-network:networks", path_nsmap=XPATH_NS)
        old, new = path_requests(before), path_requests(after)
        if old != new:
            async with self._lock:
                await self._realise(old, new)

    async def _realise(self, old: dict[str, PathRequest], new: dict[str, PathRequest]) -> None:
        """Route the new and changed paths and write every switch's share as one transaction;
        remove the cross-connects of deleted paths. Raises RPCError and changes nothing when a
        path cannot be routed or a switch refuses."""
        changed = {name for name, request in new.items() if old.get(name) != request}
        released = changed | (set(old) - set(new))
        kept = {n: p for n, p in self.placements.items() if n in new and n not in changed}
        planned: dict[str, Placement] = {}
        for name in sorted(changed):
            try:
                route = find_route(self.fibre, new[name], self._busy(kept | planned, name, released),
                                   self._usable_switches())
            except NoRoute as err:
                raise RPCError("resource-denied", f"optical path {name!r}: {err}",
                               path=f"{PATHS_XPATH}/optical-path[name='{name}']", path_nsmap=XPATH_NS) from None
            planned[name] = Placement(new[name], route, "up", f"routed {route.describe()}")
        await self._write(self._switch_changes(released, planned))
        self._deleted = (self._deleted | set(old)) - set(new)
        previous = self.placements
        self.placements = kept | planned
        for name in sorted(planned):
            await self._notify_path(name, planned[name], previous.get(name))

    def _busy(self, placements: dict[str, Placement], routing: str, released: set[str]) -> Busy:
        """What `routing` may not use: other placed paths, and cross-connects on the switches
        that belong to nobody being (re)placed or released."""
        busy = Busy()
        for switch in self.fibre.switches.values():
            for xc in switch.cross_connects.values():
                if xc.name != routing and xc.name not in placements and xc.name not in released:
                    busy.hold_cross_connect(switch.id, xc, xc.name)
        for name, placement in placements.items():
            if name != routing:
                busy.hold(name, placement.request, placement.route)
        return busy

    def _switch_changes(self, released: set[str], placements: dict[str, Placement]) -> dict[str, SwitchChange]:
        """Per usable switch: its cross-connects of `released` paths that the routes of
        `placements` do not keep, and the cross-connects those routes need that it lacks."""
        changes: dict[str, SwitchChange] = {}
        wanted: dict[str, dict[str, CrossConnect]] = {}
        for placement in placements.values():
            for switch, xc in placement.route.cross_connects if placement.route else ():
                wanted.setdefault(switch, {})[xc.name] = xc
        for switch_id in self._usable_switches():
            actual = self.fibre.switches[switch_id].cross_connects
            need = wanted.get(switch_id, {})
            change = SwitchChange(
                remove={name for name in actual if (name in released or name in placements) and name not in need},
                put={name: xc for name, xc in need.items() if actual.get(name) != xc})
            if change.remove or change.put:
                changes[switch_id] = change
        return changes

    async def _write(self, changes: dict[str, SwitchChange]) -> None:
        """One transaction over the switches; the switches' views follow when it succeeds."""
        if not changes:
            return
        try:
            await self.transaction({self.switch_links[sw]: change.config() for sw, change in changes.items()})
        except TransactionError as err:
            raise err.as_rpc_error() from None
        for switch_id, change in changes.items():
            xcs = self.fibre.switches[switch_id].cross_connects
            for name in change.remove:
                xcs.pop(name, None)
            xcs.update(change.put)

    async def reconcile(self) -> None:
        """Level-triggered: place configured paths that have no route (once every device is
        read), re-route paths that are down, forget deleted ones, repair cross-connects that
        differ from the routes."""
        async with self._lock:
            requests = path_requests(self.server.running())
            self.placements = {n: p for n, p in self.placements.items() if n in requests}
            if self._all_synced():
                for name in sorted(set(requests) - set(self.placements)):
                    self.placements[name] = Placement(requests[name], None, "no-route", "not yet placed")
                stranded = [n for n, p in self.placements.items() if p.status != "up"]
                await self._reroute(sorted(stranded), "re-placed")
                self.synced.set()
            drift = self._switch_changes(set(self.placements) | self._deleted, self.placements)
            if drift:
                log.warning("%s: cross-connects differ from the routes on %s: repairing",
                            self.name, ", ".join(sorted(drift)))
                try:
                    await self._write(drift)
                except RPCError as err:
                    log.warning("%s: drift repair failed: %s", self.name, err)

    def _all_synced(self) -> bool:
        return self.plant is not None and all(
            link.name in self._synced and link.status == "connected" for link in self.links.values())

    async def _reroute(self, names: list[str], verb: str) -> None:
        """Find new routes for `names` (paths without a working route) and write them as one
        transaction; a path with no route stays as it is, with the reason."""
        planned: dict[str, Placement] = {}
        for name in names:
            current = self.placements[name]
            try:
                route = find_route(self.fibre, current.request, self._busy(self.placements | planned, name, {name}),
                                   self._usable_switches())
            except NoRoute as err:
                await self._set_status(name, "down" if current.route else "no-route", str(err))
                continue
            planned[name] = Placement(current.request, route, "up", f"{verb} {route.describe()}")
        if not planned:
            return
        try:
            await self._write(self._switch_changes(set(planned), planned))
        except RPCError as err:
            for name in planned:
                await self._set_status(name, self.placements[name].status, f"{verb} route refused: {err.message}")
            return
        for name, placement in planned.items():
            previous = self.placements[name]
            self.placements[name] = placement
            await self._notify_path(name, placement, previous)

    async def _span_changed(self, span: Span, was_up: bool) -> None:
        if span.up == was_up:
            return
        await self.server.notify(model.span_event(span.up, NETWORK_ID, span.id,
                                                  f"span {span.id} was {'repaired' if span.up else 'cut'}"))
        async with self._lock:
            over = sorted(n for n, p in self.placements.items() if p.route and span.id in p.route.spans)
            if not span.up:
                for name in over:
                    await self._set_status(name, "down", f"span {span.id} is down")
                await self._reroute(over, f"re-routed around span {span.id}")
            else:
                for name in over:
                    route = self.placements[name].route
                    if all(self.fibre.spans[s].up for s in route.spans if s in self.fibre.spans):
                        await self._set_status(name, "up", f"span {span.id} repaired")
                stranded = sorted(n for n, p in self.placements.items() if p.route is None)
                await self._reroute(stranded, "placed after span repair")

    async def _set_status(self, name: str, status: str, reason: str) -> None:
        placement = self.placements[name]
        previous = Placement(placement.request, placement.route, placement.status, placement.reason)
        placement.status, placement.reason = status, reason[:MAX_REASON]
        await self._notify_path(name, placement, previous)

    async def _notify_path(self, name: str, placement: Placement, previous: Placement | None) -> None:
        if previous is not None and previous.status == placement.status:
            return
        await self.server.notify(model.optical_path_status_change(
            NETWORK_ID, name, placement.status, previous.status if previous is not None else None,
            placement.reason[:MAX_REASON], _now()))

    # --- northbound state ---------------------------------------------------------------------

    async def _update_alarms(self) -> None:
        """The alarm list says which spans are cut or tapped now (RFC 8632: alarms are state)."""
        raised = {}
        for span in self.fibre.spans.values():
            resource = link_resource(NETWORK_ID, span.id)
            if not span.up:
                raised[(resource, "span-cut")] = ("major", f"span {span.id} is cut")
            if span.eavesdropper > 0:
                raised[(resource, "span-tapped")] = (
                    "critical", f"span {span.id} is tapped: {span.eavesdropper:.3f} of the pulses intercepted")

        def cleared(alarm) -> str:
            span_id = resource_link(alarm.resource)
            if span_id not in self.fibre.spans:
                return f"span {span_id} is no longer in the fibre plant"
            repaired = alarm.alarm_type.identity == "span-cut"
            return f"span {span_id} " + ("is repaired" if repaired else "is no longer tapped")
        await self.alarm_list.update(raised, cleared)

    async def state(self) -> etree._Element | None:
        data = empty_tree()
        data.append(self.alarm_list.state())
        if _fibre_network(self.server.running()) is None:
            return data
        network = model.state_network(data, NETWORK_ID)
        usable = self._usable_switches()
        for site in sorted(self.fibre.sites):
            model.add_node_state(network, site, "up", [(tp, "up") for tp in self.fibre.site_tps(site)])
        for switch in sorted(self.fibre.switches.values(), key=lambda s: s.id):
            reachable = switch.id in usable
            model.add_node_state(network, switch.id, "up" if reachable else "unknown", [
                (str(port.id), (port.oper_status if reachable else "unknown") if port.enabled else "down")
                for port in sorted(switch.ports.values(), key=lambda p: p.id)])
        for span in sorted(self.fibre.spans.values(), key=lambda s: s.id):
            model.add_span_state(network, span)
        configured = path_requests(self.server.running())
        if configured:
            paths = CONNECTIVITY.sub(network, "optical-paths")
            for name in sorted(configured):
                model.add_path_state(paths, name, _path_state(self.placements.get(name)))
        return data

    # --- span actions, relayed to the plant ------------------------------------------------------

    async def _plant_rpc(self, context: etree._Element, rpc: str, **leaves: str) -> None:
        if self.plant is None:
            raise RPCError("operation-failed", "the fibre plant is not connected")
        span_id = NT.text(context.getparent(), "link-id")  # context: the link's fibre-span
        operation = model.plant_operation(rpc, span_id, **leaves)
        client = await self.links[self.plant].session()
        try:
            await client.dispatch(operation)
        except RPCError as err:
            raise RPCError(err.tag, f"the fibre plant refused {rpc} of span {span_id}: {err.message}") from None

    async def _cut(self, session, action: etree._Element, context: etree._Element) -> None:
        await self._plant_rpc(context, "cut-span")

    async def _repair(self, session, action: etree._Element, context: etree._Element) -> None:
        await self._plant_rpc(context, "repair-span")

    async def _attach_eavesdropper(self, session, action: etree._Element, context: etree._Element) -> None:
        fraction = CONNECTIVITY.text(action, "intercept-fraction") or "1"
        await self._plant_rpc(context, "attach-eavesdropper", fraction=fraction)

    async def _remove_eavesdropper(self, session, action: etree._Element, context: etree._Element) -> None:
        await self._plant_rpc(context, "remove-eavesdropper")


def _path_state(placement: Placement | None) -> model.PathState:
    if placement is None:
        return model.PathState("computing", "waiting for the devices to be read")
    route = placement.route
    if route is None:
        return model.PathState(placement.status, placement.reason[:MAX_REASON])
    return model.PathState(placement.status, placement.reason[:MAX_REASON], route.wavelength, route.loss,
                           route.length, tuple(model.PathHop(h.span, h.from_node, h.to_node) for h in route.hops))
