"""The fabric controller: the quantum fabric stratum of an entanglement network.

Southbound it talks NETCONF to the quantum nodes (qi-quantum-node); northbound it serves
qi-fabric: one RFC 8345 network "fabric" of type entanglement-fabric. Everything in it is
discovered, not configured:

- a node per quantum node (node-id = the device's name), with its role and site, a
  termination point per interface; in state its storage qubits in service (not failed: what
  the planner may use), the free ones (of those, holding no pair), its decoherence rate, its
  swap factor (gate times measurement fidelity) and success probability, whether it swaps and
  purifies, and whether it is up;
- a link per elementary link configured consistently on both its nodes (the same link-id,
  each naming the other as peer-node): source the node with the lower node-id, with its
  type, length and optical path; in state what the source node reports (status, success
  probability, attempt cycle, generation rate, fresh fidelity; the destination's report
  while the source is unreachable).

The topology is written into the controller's running datastore (a server-originated
commit); a client edit of it is refused. Nodes are read when they connect, on each of their
link-status-change, fidelity-alarm and memory-alarm notifications, and at every resync; then the links are
compared with what was last reported north and entanglement-link-change is sent for a link
that changed status or whose rate or fidelity moved by more than HYSTERESIS (a link that
disappeared is reported down). The service stratum re-plans on these notifications.

Optical paths: the light of an elementary link may cross optical switches, which must be
cross-connected for it. With a connectivity controller (`connectivity`), the controller asks
it, as any client would and as the forwarding controller does for PHYS QKD links, for an
optical path between the two interfaces' attachment points of every link, named after the
link's optical-path leaf (or its link-id), when the connectivity controller does not have it;
it deletes the paths it made once their link is gone. A refusal is logged and asked again at
the next refresh; the link stays down meanwhile ("no optical path"), which is what the
fabric reports. Without a connectivity controller the links must run over direct fibre.
"""
from __future__ import annotations

import asyncio
import logging

from lxml import etree

from controller.base import Controller, same_content
from models import connectivity as conn_model, fabric as fabric_model, quantum_node as qn_model
from models.fabric import FabricLink, FabricNode
from models.network import networks_of
from models.ns import NT, NW, QUANTUM_NODE
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError, transaction
from netconf_core.server import User

log = logging.getLogger(__name__)

HYSTERESIS = 0.10  # relative change of rate or fidelity worth an entanglement-link-change


class FabricController(Controller):
    kind = "fabric-controller"
    # qi-quantum-node implemented: its identities are values of our data.
    modules = ("qi-fabric", "qi-quantum-node", "qi-types")
    device_modules = ("qi-quantum-node",)
    state_paths = ("/ietf-network:networks",)

    def __init__(self, name: str, devices: list[Endpoint], users: dict[str, User], *,
                 connectivity: Endpoint | None = None, **kwargs):
        super().__init__(name, devices, users, **kwargs)
        self.connectivity = self.link(connectivity, ("qi-connectivity",), self._connectivity_connected,
                                      self._connectivity_notification) if connectivity is not None else None
        self.fibre_network = "fibre"
        self.paths_made: set[str] = set()  # optical paths this controller asked for
        self.nodes: dict[str, tuple[qn_model.NodeConfig, qn_model.NodeState]] = {}  # by device name
        self.reported: dict[str, FabricLink] = {}  # by link-id, as last reported north
        self.synced = asyncio.Event()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await super().start()
        if self.connectivity is not None:
            self.connectivity.start()
        if not self.links:
            self.synced.set()

    async def stop(self) -> None:
        if self.connectivity is not None:
            await self.connectivity.stop()
        await super().stop()

    async def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every quantum node has been read and the fabric published."""
        async with asyncio.timeout(timeout):
            await self.synced.wait()

    # --- southbound ------------------------------------------------------------------------

    async def device_connected(self, link: DeviceLink) -> None:
        await self._read(link)
        await self._refresh(f"node {link.name} connected")
        if all(name in self.nodes for name in self.links):
            self.synced.set()

    async def device_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        event = next((c for c in notification if isinstance(c.tag, str)
                      and etree.QName(c).namespace == QUANTUM_NODE), None)
        if event is None:
            return
        await self._read(link)
        reason = QUANTUM_NODE.text(event, "reason") or f"{etree.QName(event).localname} from {link.name}"
        await self._refresh(reason)

    async def resync(self) -> None:
        connected = [link for link in self.links.values() if link.status == "connected"]
        results = await asyncio.gather(*(self._read(link) for link in connected), return_exceptions=True)
        for link, result in zip(connected, results):
            if isinstance(result, Exception):
                log.warning("%s: cannot read %s: %s", self.name, link.name, result)
        await self._refresh("periodic resync")

    async def _read(self, link: DeviceLink) -> None:
        client = await link.session()
        data = await client.get(filter=("subtree", qn_model.FILTER), with_defaults="report-all")
        root = QUANTUM_NODE.find(data, "quantum-node")
        config = qn_model.read_node(root)
        if config is None:
            self.nodes.pop(link.name, None)
            return
        self.nodes[link.name] = (config, qn_model.read_state(root))

    async def _connectivity_connected(self, link: DeviceLink) -> None:
        data = await (await link.session()).get(filter=("subtree", conn_model.fibre_network_filter()))
        self.fibre_network = conn_model.find_fibre_network_id(data) or self.fibre_network
        await self._refresh("the connectivity controller connected")

    async def _connectivity_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        """Optical paths come and go: the nodes see it in their links, and notify."""

    def _reachable(self, name: str) -> bool:
        link = self.links.get(name)
        return link is not None and link.status == "connected" and name in self.nodes

    # --- the fabric ---------------------------------------------------------------------------

    def fabric(self) -> tuple[list[FabricNode], list[FabricLink]]:
        nodes = []
        for name in sorted(self.nodes):
            config, state = self.nodes[name]
            up = self._reachable(name)
            in_service = max(0, config.storage_qubits - state.failed_qubits)   # what a plan may use
            free = max(0, in_service - state.in_use)
            nodes.append(FabricNode(name, config.role or "end-node", config.site, tuple(config.interfaces),
                                    in_service, free, state.decoherence_rate, config.swap_fidelity,
                                    config.swap_success, config.can_swap, config.can_purify, "up" if up else "down"))
        links: dict[str, FabricLink] = {}
        for name in sorted(self.nodes):
            config, _ = self.nodes[name]
            for link_id, link in config.links.items():
                peer = self.nodes.get(link.peer_node)
                other = peer[0].links.get(link_id) if peer is not None else None
                if other is None or other.peer_node != name or link_id in links or not name < link.peer_node:
                    continue
                links[link_id] = self._link(name, link, link.peer_node, other)
        return nodes, [links[k] for k in sorted(links)]

    def _link(self, source: str, link: qn_model.ElementaryLink, destination: str,
              other: qn_model.ElementaryLink) -> FabricLink:
        reading = None
        for node in (source, destination):
            if self._reachable(node):
                reading = self.nodes[node][1].links.get(link.link_id)
                if reading is not None:
                    break
        status = reading.status if reading is not None else "unknown"
        return FabricLink(link.link_id, (source, link.interface), (destination, other.interface), link.link_type,
                          link.length_km, link.optical_path, status,
                          reading.success_probability if reading else None,
                          reading.attempt_cycle_s if reading else None,
                          reading.generation_rate if reading else 0.0, reading.fidelity if reading else None, 0.0)

    def _path_request(self, link: FabricLink) -> conn_model.PathRequest | None:
        """The optical path between a link's two attachment points (None while an end's
        interface is unknown)."""
        ends = []
        for node, interface in (link.a, link.b):
            attach = self.nodes[node][0].interfaces.get(interface) if node in self.nodes else None
            if attach is None:
                return None
            ends.append(attach)
        points = [conn_model.TermPoint(end.switch or end.site, conn_model.tp_id(end.port)) for end in ends]
        return conn_model.PathRequest(link.optical_path or link.id, points[0], points[1])

    async def _ensure_paths(self, links: list[FabricLink]) -> None:
        """Ask the connectivity controller for the optical paths the links need and lack, and
        delete those made for links that are gone."""
        if self.connectivity is None or self.connectivity.status != "connected":
            return
        wanted = {r.name: r for r in (self._path_request(link) for link in links) if r is not None}
        client = await self.connectivity.session()
        present = conn_model.read_path_names(await client.get_config(
            filter=("subtree", conn_model.optical_paths_filter(self.fibre_network))))
        entries = [conn_model.path_request_element(r, "replace") for name, r in sorted(wanted.items())
                   if name not in present]
        stale = sorted((self.paths_made & present) - set(wanted))
        entries += [conn_model.path_removal(name) for name in stale]
        if not entries:
            return
        try:
            await transaction({self.connectivity: conn_model.optical_paths_edit(self.fibre_network, entries)})
        except (TransactionError, RPCError) as err:
            log.warning("%s: the connectivity controller refused optical paths: %s", self.name, err)
            return
        self.paths_made = (self.paths_made | {n for n in wanted if n not in present}) - set(stale)

    async def _refresh(self, reason: str) -> None:
        async with self._lock:
            nodes, links = self.fabric()
            await self._ensure_paths(links)
            if nodes:
                await self.publish_networks(lambda tree: fabric_model.topology_element(nodes, links))
            now = {link.id: link for link in links}
            for link_id in sorted(set(self.reported) - set(now)):
                gone = self.reported.pop(link_id)
                await self.server.notify(fabric_model.link_change(
                    FabricLink(link_id, gone.a, gone.b, gone.link_type, status="down"), f"link {link_id} is gone"))
            for link in links:
                last = self.reported.get(link.id)
                if last is None or _moved(last, link):
                    self.reported[link.id] = link
                    await self.server.notify(fabric_model.link_change(link, reason))

    # --- northbound -----------------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        if not same_content(networks_of(before), networks_of(after)):
            raise RPCError("invalid-value", "the entanglement fabric is discovered from the quantum nodes and cannot "
                           "be edited", path="/ietf-network:networks",
                           path_nsmap={"ietf-network": NW, "ietf-network-topology": NT})

    async def state(self) -> etree._Element | None:
        data = empty_tree()
        if fabric_model.FabricView.parse(self.server.running()).network_id:
            nodes, links = self.fabric()
            data.append(fabric_model.topology_element(nodes, links, state=True))
        return data


def _moved(last: FabricLink, now: FabricLink) -> bool:
    if last.status != now.status:
        return True
    for old, new in ((last.generation_rate, now.generation_rate), (last.fidelity, now.fidelity)):
        if (old is None) != (new is None):
            return True
        if old is not None and abs(new - old) > HYSTERESIS * max(abs(old), 1e-12):
            return True
    return False
