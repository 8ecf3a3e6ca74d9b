"""The forwarding controller: the QKD topology and its key-association links.

Southbound it talks NETCONF to the QKD nodes (etsi-qkd-sdn-node, ETSI GS QKD 015) and, as
any client would, to the connectivity controller (qi-connectivity). Northbound it serves
qi-forwarding: one ietf-network network "qkd" (type qkd-network), which lists itself as a
supporting network so that VIRT links can name their PHYS hops as supporting links.

Nodes are discovered, not configured: node-id is the device's name (its Endpoint name),
qkdn-id its qkdn_id, site its qkdn_location_id, and km-id the key manager of that site from
the `km_by_site` argument (a QKD node does not know its key manager; the one at its site
feeds it). Termination points are the QKD interfaces, tp-id being the qkdi_id. The
controller writes them into its running datastore (server-originated commit) and refuses a
client edit that changes them.

Links are configured by clients, and PHYS links found consistent on both their nodes are
discovered (adopted into running with link-id = qkdl-id, source = the transmitter). A PHYS
link request (link-type PHYS, qkdl-id, source/destination node+tp) is realised in order:
1. the optical path: an optical-path named after the link's optical-path leaf (or its
   link-id) between the two interfaces' attachment points (qkdi_att_point device and port are
   the fibre node and tp) is committed on the connectivity controller; its refusal refuses
   the commit, with the connectivity controller's reason;
2. both QKD nodes get the link (local/remote node and interface, PHYS, transmitter at the
   source) as one transaction; a refusal deletes the optical path again and names the node.
A VIRT link (supporting-link = its PHYS hops, in any order, chained from source to
destination) is configured on every node of that relay path, virt_prev_hop and virt_next_hop
naming the neighbouring nodes' qkdn_ids (none before the source, none after the
destination), as the nodes need to find its hops. Deleting a link removes it from every node
that has it, then deletes its optical path.

An inter-domain PHYS link (external-peer: its destination is a border node of another member
of a federation, named by the peer's qkdn_id and key manager) is this domain's end only: the
source node gets the link, with the peer's qkdn_id and interface as remote, and no optical
path is asked for (the inter-domain fibre joins the two interfaces directly). It comes up
when the peer domain configures its own end with the same qkdl-id. Of the two ends, the one
with the lower qkdn_id transmits.

Link state (status, skr, eskr, expected consumption, QBER, stored key) is read from the
source node (the destination when the source is unreachable) when a node connects, on each
ETSI notification about a link (sdqkdn_link_down, sdqkdn_link_perf_update, alarm...) and,
from a node that offers YANG-Push, on each push-change-update of the on-change subscription
the controller keeps on its links' status and performance (LINK_STATE_WATCH: the update's
YANG Patch is applied to the link's copy of the selection, and the links' state is taken from
there, with no read of the node; the stored key, outside the selection, is the one last read);
a node without YANG-Push is read whole at every resync instead. The resync reads every node's
configuration either way, for drift, and the state of a node whose subscription is not
running. channel-loss is the optical path's total loss at the connectivity
controller, read after the controller makes optical paths, at every resync, and once per
burst of optical-path-status-change notifications (a path going down keeps its route and
its loss). A status change is sent north as link-status-change, a QBER crossing the node's
qber-alarm-threshold (either way) as qber-alarm. The resync also repairs nodes whose links
differ from running (drift) and re-creates the optical paths it made that the connectivity
controller lost.

Alarms are state: the controller serves an RFC 8632 alarm list (ietf-alarms, alarm types of
qi-alarms): qber-above-threshold while a link's QBER is above the threshold, link-down while
a link that was ACTIVE is not. Each observation says which alarms are raised; any other is
cleared, also when its link is deleted (with alarm-notification, and qber-alarm raised=false
for a QBER alarm), so that no level above keeps an alarm of a link that is gone.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging

from lxml import etree

from controller.alarms import Alarm, AlarmList, AlarmType
from controller.base import Controller, same_content
from models import connectivity as conn_model, forwarding as fwd_model, network as nw
from models.forwarding import LinkRequest, LinkStatus, NodeStatus
from models.network import RESOURCE_PREFIXES, link_resource, resource_link
from models.ns import ETSI_NODE, FORWARDING, NT, NW, QI_ALARMS
from models.qkd_node import (LinkState, NodeLinkConfig, NodeView, link_removal, node_link_element, node_links_edit,
                             read_link_states, read_node)
from netconf_core import Watch
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError, transaction
from netconf_core.server import User

log = logging.getLogger(__name__)

NETWORK_ID = "qkd"
DEFAULT_FIBRE_NETWORK = "fibre"
PANEL_TP = conn_model.PANEL_TP  # the connectivity controller's tp-id of a site's unnumbered fibre termination
LINKS_XPATH = f"/ietf-network:networks/network[network-id='{NETWORK_ID}']/ietf-network-topology:link"
XPATH_NS = {"ietf-network": NW, "ietf-network-topology": NT}
# A node's links' status and performance (skr, eskr, expected consumption, QBER); the emulated
# nodes refresh them every second: a change waits at most half a period to be pushed.
_LINK = "/etsi-qkd-sdn-node:qkd_node/etsi-qkd-sdn-node:qkd_links/etsi-qkd-sdn-node:qkd_link"
LINK_STATE_WATCH = Watch(f"{_LINK}/etsi-qkd-sdn-node:qkdl_status | {_LINK}/etsi-qkd-sdn-node:qkdl_performance",
                         (("etsi-qkd-sdn-node", str(ETSI_NODE)),), "operational", dampening=0.5)


def _qkd_network(tree: etree._Element) -> etree._Element | None:
    return nw.find_network(tree, network_id=NETWORK_ID)


def link_requests(tree: etree._Element) -> dict[str, LinkRequest]:
    """The links of the qkd network asked for in a datastore tree, by link-id."""
    return fwd_model.link_requests(tree, NETWORK_ID)


def topology(tree: etree._Element) -> etree._Element | None:
    """A copy of the networks of a datastore tree without the qkd network's links: what only
    the controller may change."""
    tree = copy.deepcopy(tree)
    network = _qkd_network(tree)
    for link in nw.links(network):
        network.remove(link)
    return nw.networks_of(tree)


def virt_chain(request: LinkRequest, requests: dict[str, LinkRequest]) -> list[str]:
    """The node-ids from a VIRT link's source to its destination along its supporting links.
    Raises ValueError when they do not chain."""
    hops = {requests[r].link_id: requests[r] for r in request.supporting if r in requests}
    if len(hops) != len(request.supporting):
        missing = sorted(request.supporting - set(hops))
        raise ValueError(f"supporting links {', '.join(missing)} are not links of network {NETWORK_ID}")
    chain = [request.source[0]]
    left = dict(hops)
    while left:
        here = chain[-1]
        step = next((h for h in sorted(left) if here in (left[h].source[0], left[h].destination[0])), None)
        if step is None:
            break
        hop = left.pop(step)
        chain.append(hop.destination[0] if hop.source[0] == here else hop.source[0])
    if left or chain[-1] != request.destination[0]:
        raise ValueError(f"its supporting links ({', '.join(sorted(request.supporting))}) do not chain from "
                         f"{request.source[0]} to {request.destination[0]}")
    return chain


# --- alarms (RFC 8632) ----------------------------------------------------------------------------

ALARM_TYPES = {  # identities of qi-alarms
    "qber-above-threshold": AlarmType("qber-above-threshold", QI_ALARMS, "qi-al",
                                      "The QBER of a PHYS link is above the qber-alarm-threshold of its nodes."),
    "link-down": AlarmType("link-down", QI_ALARMS, "qi-al", "A QKD link that was ACTIVE no longer is."),
}


def _clear_text(alarm: Alarm, requests: dict[str, LinkRequest]) -> str:
    link_id = resource_link(alarm.resource)
    if link_id not in requests:
        return f"link {link_id} was deleted"
    if alarm.alarm_type.identity == "link-down":
        return f"link {link_id} is ACTIVE again"
    return f"the QBER of link {link_id} is back below the threshold"


# --- the controller ----------------------------------------------------------------------------

class ForwardingController(Controller):
    kind = "forwarding-controller"
    # etsi-qkd-node-types and qi-types implemented: their identities are values of our data.
    modules = ("qi-forwarding", "etsi-qkd-node-types", "qi-types", "ietf-alarms", "qi-alarms")
    device_modules = ("etsi-qkd-sdn-node",)
    state_paths = ("/ietf-network:networks", "/ietf-alarms:alarms")
    watches = (LINK_STATE_WATCH,)

    def __init__(self, name: str, devices: list[Endpoint], connectivity: Endpoint, users: dict[str, User], *,
                 km_by_site: dict[str, str] | None = None, **kwargs):
        super().__init__(name, devices, users, **kwargs)
        self.km_by_site = dict(km_by_site or {})
        self.connectivity = self.link(connectivity, ("qi-connectivity",), self._connectivity_connected,
                                      self._connectivity_notification)
        self.fibre_network = DEFAULT_FIBRE_NETWORK
        self.nodes: dict[str, NodeView] = {}  # by node-id (device name)
        self.path_loss: dict[str, float] = {}  # optical path name -> total loss at the connectivity controller
        self.observed: dict[str, LinkState] = {}  # by link-id, as last reported north
        # link-id whose QBER is above the threshold -> (qkdl-id, qber, threshold), as last reported
        self.alarmed: dict[str, tuple[str, float, float]] = {}
        self._parsed_running: tuple[etree._Element, dict[str, LinkRequest]] | None = None
        self.was_active: set[str] = set()  # link-ids seen ACTIVE since they were configured
        self.alarm_list = AlarmList(list(ALARM_TYPES.values()), RESOURCE_PREFIXES, self.server.notify)
        self._released: set[str] = set()  # qkdl-ids deleted by clients: removed from nodes wherever found
        self._paths_made: set[str] = set()  # optical paths this controller asked for (re-made if lost)
        self._lock = asyncio.Lock()
        # Bursts of (re)connections and of path notifications are one pass each; a failed
        # pass is not retried: the next connection, change or resync tries again.
        self._settler = self.loop(f"{name} settle", self._settle_now, backoff_initial=None, logger=log)
        self._unsettled: str | None = None
        self._path_refresher = self.loop(f"{name} paths", self._refresh_stale_paths, backoff_initial=None, logger=log)
        self._paths_stale = False
        self.synced = asyncio.Event()  # every node read and the topology in running

    async def start(self) -> None:
        await super().start()
        self._settler.start()
        self._path_refresher.start()
        self.connectivity.start()
        if not self.links:   # no QKD node (an entanglement network): nothing to read, publish the empty topology
            self._settle("no QKD nodes")

    async def stop(self) -> None:
        await asyncio.gather(self._settler.stop(), self._path_refresher.stop())
        await self.connectivity.stop()
        await super().stop()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(super().wait_connected(timeout), self.connectivity.connected.wait())

    async def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every node has been read, the topology written into running, and the
        connectivity controller connected."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(self.synced.wait(), self.connectivity.connected.wait())

    # --- southbound: QKD nodes --------------------------------------------------------------

    async def device_connected(self, link: DeviceLink) -> None:
        await self._read_node(link)
        self._settle(f"node {link.name} connected")

    def _settle(self, reason: str) -> None:
        """Publish the nodes, reconcile and report once the current burst of (re)connections
        has been read, not once per node: many nodes connect at once."""
        self._unsettled = reason
        self._settler.wake()

    async def _settle_now(self) -> None:
        await asyncio.sleep(0)  # let the connections of this burst that are read already come in
        reason, self._unsettled = self._unsettled, None
        if not reason:
            return
        await self._publish_topology()
        await self.reconcile()
        await self._observe(reason)
        if all(name in self.nodes for name in self.links):
            self.synced.set()

    async def device_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        event = next((c for c in notification if isinstance(c.tag, str) and etree.QName(c).namespace == ETSI_NODE), None)
        if event is None:
            return
        reason = event.findtext(f".//{ETSI_NODE('reason')}") or event.findtext(f".//{ETSI_NODE('message')}")
        await self._read_node(link)
        await self._observe(reason or f"{etree.QName(event).localname} from {link.name}")

    async def device_update(self, link: DeviceLink, watch: Watch, content: etree._Element) -> None:
        """A node's link status or performance changed: its links' state is taken from the
        subscription's copy (`link.replica`), without reading the node again; the stored key,
        which the subscription does not select, is kept. The first push-update, as the
        subscription starts, comes with the connection, whose read covers it. Not while a
        change is being realised: the nodes' links change before running does, and this would
        judge them by the old running (a deleted link's alarms cleared as if it were still
        there)."""
        if etree.QName(content).localname != "push-change-update":
            return
        async with self._lock:
            known = self.nodes.get(link.name)
            if known is None:
                return  # not read yet: the connection's read comes first
            pushed = read_link_states(link.replica(watch))
            states = dict(known.states)
            for qkdl, state in pushed.items():
                stored = known.states[qkdl].stored if qkdl in known.states else None
                states[qkdl] = dataclasses.replace(state, stored=stored)
            self.nodes[link.name] = dataclasses.replace(known, states=states)
            await self._observe(f"link state of {link.name} changed")

    async def resync(self) -> None:
        """Read the nodes whose link state no subscription pushes, and the configuration of
        the others (enough for drift), then repair and report."""
        connected = [link for link in self.links.values() if link.status == "connected"]
        results = await asyncio.gather(*(self._read_node(link, state=self.polled(link)) for link in connected),
                                       return_exceptions=True)
        for link, result in zip(connected, results):
            if isinstance(result, Exception):
                log.warning("%s: cannot read %s: %s", self.name, link.name, result)
        await self._refresh_paths()
        await self._publish_topology()
        await self.reconcile()
        await self._observe("periodic resync")

    async def _read_node(self, link: DeviceLink, state: bool = True) -> None:
        """Read a node's configuration and state; with `state` False, of a node already read,
        only its configuration (its links' state and the rest of its state are kept)."""
        client = await link.session()
        query = f'<qkd_node xmlns="{ETSI_NODE}"/>'
        state = state or link.name not in self.nodes
        if state:
            data = await client.get(filter=("subtree", query), with_defaults="report-all")
        else:
            data = await client.get_config(filter=("subtree", query), with_defaults="report-all")
        root = ETSI_NODE.find(data, "qkd_node")
        if root is None:
            log.warning("%s: device %s serves no qkd_node", self.name, link.name)
            return
        view = read_node(link.name, root)
        known = self.nodes.get(link.name)  # as it is now: a pushed change may have been read meanwhile
        if not state and known is not None:
            view = dataclasses.replace(known, links=view.links, qber_threshold=view.qber_threshold)
        self.nodes[link.name] = view

    def _reachable(self, node: str) -> bool:
        link = self.links.get(node)
        return link is not None and link.status == "connected" and node in self.nodes

    # --- southbound: the connectivity controller ------------------------------------------------

    async def _connectivity_connected(self, link: DeviceLink) -> None:
        data = await (await link.session()).get(filter=("subtree", conn_model.fibre_network_filter()))
        self.fibre_network = conn_model.find_fibre_network_id(data) or self.fibre_network
        await self._refresh_paths()

    async def _connectivity_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        status = conn_model.read_optical_path_status_change(notification)
        # A path that goes down keeps its route, and so its loss: only the other changes are read.
        if status is not None and status != "down":
            self._paths_changed()

    def _paths_changed(self) -> None:
        """Re-read the optical paths once the current burst of their notifications has been
        received, not once per notification: a change of many links moves many paths at once,
        and each read is a full one."""
        self._paths_stale = True
        self._path_refresher.wake()

    async def _refresh_stale_paths(self) -> None:
        await asyncio.sleep(0)
        # After a change being realised, which reads them itself when it is done.
        async with self._lock:
            if self._paths_stale:
                await self._refresh_paths()

    async def _refresh_paths(self) -> None:
        """Losses of the optical paths, from the connectivity controller's state. A read covers
        every path notification received before it starts."""
        self._paths_stale = False
        if self.connectivity.status != "connected":
            return
        client = await self.connectivity.session()
        data = await client.get(filter=("subtree", conn_model.optical_paths_filter(self.fibre_network)))
        self.path_loss = conn_model.read_path_losses(data)

    def _optical_path_xml(self, request: LinkRequest) -> etree._Element:
        """The optical-path entry that carries a PHYS link."""
        ends = []
        for node_id, tp in (request.source, request.destination):
            node = self.nodes.get(node_id)
            iface = node.interfaces.get(int(tp)) if node and tp.isdigit() else None
            if iface is None or iface.att_device is None:
                raise RPCError("operation-failed", f"link {request.link_id}: interface {tp} of {node_id} has no "
                               "known attachment point to the fibre",
                               path=f"{LINKS_XPATH}[link-id='{request.link_id}']", path_nsmap=XPATH_NS)
            ends.append(conn_model.TermPoint(iface.att_device, conn_model.tp_id(iface.att_port)))
        return conn_model.path_request_element(
            conn_model.PathRequest(request.path_name, ends[0], ends[1], request.wavelength), "replace")

    @staticmethod
    def _path_removal(name: str) -> etree._Element:
        return conn_model.path_removal(name)

    async def _edit_paths(self, entries: list[etree._Element]) -> None:
        """One transaction on the connectivity controller's optical paths."""
        if not entries:
            return
        config = conn_model.optical_paths_edit(self.fibre_network, entries)
        try:
            await transaction({self.connectivity: config})
        except TransactionError as err:
            inner = err.error
            raise RPCError("operation-failed", "the connectivity controller refused the optical paths: "
                           + (inner.message if isinstance(inner, RPCError) else str(inner)),
                           info={"bad-element": self.connectivity.name}) from None

    # --- the topology in running ----------------------------------------------------------------

    def _topology_xml(self, running_network: etree._Element | None) -> etree._Element:
        networks, network = fwd_model.topology_config(NETWORK_ID, self.fibre_network, list(self.nodes.values()),
                                                      self.km_by_site)
        # A node not read yet since a restart keeps what running said of it: the links on it
        # stay valid, and the levels above do not see it vanish and come back.
        for element in nw.nodes(running_network):
            node_id = nw.node_id(element)
            if node_id in self.links and node_id not in self.nodes:
                network.append(copy.deepcopy(element))
        configured = nw.links(running_network)
        network.extend(copy.deepcopy(link) for link in configured)
        known = {FORWARDING.text(link, "qkd-link/qkdl-id") for link in configured}
        self._add_discovered_links(network, known | self._released)
        return networks

    def _add_discovered_links(self, network: etree._Element, known: set[str]) -> None:
        """Add the PHYS links configured consistently on two reachable nodes and unknown to running."""
        by_qkdn = {node.qkdn_id: node for node in self.nodes.values()}
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            for config in node.links.values():
                peer = by_qkdn.get(config.remote_qkdn or "")
                if config.qkdl_id in known or config.link_type != "PHYS" or config.role == "RECEIVER" or peer is None:
                    continue
                mirror = peer.links.get(config.qkdl_id)
                if (mirror is None or (mirror.remote_qkdn, mirror.remote_qkdi, mirror.local_qkdi)
                        != (node.qkdn_id, config.local_qkdi, config.remote_qkdi)
                        or config.local_qkdi not in node.interfaces or config.remote_qkdi not in peer.interfaces
                        or (config.role is None and node.name > peer.name)):
                    continue
                known.add(config.qkdl_id)
                fwd_model.add_phys_link(network, config.qkdl_id, (node.name, str(config.local_qkdi)),
                                        (peer.name, str(config.remote_qkdi)), config.qkdl_id)

    async def _publish_topology(self) -> None:
        """Write the discovered nodes (and discovered links) into running, keeping the
        configured links."""
        if self.nodes:
            await self.publish_networks(lambda tree: self._topology_xml(_qkd_network(tree)))

    # --- realising client changes ------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        if not same_content(topology(before), topology(after)):
            raise RPCError("invalid-value", "the QKD nodes and their interfaces are discovered from the devices and "
                           "cannot be edited; only links can (if the candidate predates a topology change, "
                           "discard-changes and edit again)", path="/ietf-network:networks", path_nsmap=XPATH_NS)
        old, new = link_requests(before), link_requests(after)
        if old != new:
            async with self._lock:
                await self._realise(old, new)

    async def _realise(self, old: dict[str, LinkRequest], new: dict[str, LinkRequest]) -> None:
        """Optical paths of new PHYS links first (a refusal changes nothing), then every node
        concerned as one transaction (a refusal undoes those optical paths), then the optical
        paths of deleted links. Raises RPCError naming who refused and why."""
        changed = {link_id for link_id, request in new.items() if old.get(link_id) != request}
        gone = {link_id: old[link_id] for link_id in set(old) - set(new) | (changed & set(old))}
        wanted_paths = {r.path_name for r in new.values() if r.has_optical_path}
        new_paths = [new[i] for i in sorted(changed) if new[i].has_optical_path]
        edits = self._node_edits({i: new[i] for i in changed}, new, gone)
        await self._edit_paths([self._optical_path_xml(r) for r in new_paths])
        try:
            await self.transaction(edits)
        except (TransactionError, RPCError) as err:
            undo = [self._optical_path_xml(gone[r.link_id]) if self._same_path(gone.get(r.link_id), r)
                    else self._path_removal(r.path_name) for r in new_paths]
            try:
                await self._edit_paths(undo)
            except RPCError as undo_err:
                log.warning("%s: could not undo the optical paths: %s", self.name, undo_err)
            raise err.as_rpc_error() if isinstance(err, TransactionError) else err from None
        self._released = (self._released | {r.qkdl_id for r in gone.values()}) - {r.qkdl_id for r in new.values()}
        stale = sorted({r.path_name for r in gone.values() if r.has_optical_path} - wanted_paths)
        self._paths_made = (self._paths_made | {r.path_name for r in new_paths}) - set(stale)
        try:
            await self._edit_paths([self._path_removal(name) for name in stale])
        except RPCError as err:
            log.warning("%s: optical paths %s were not deleted: %s", self.name, ", ".join(stale), err)
        for name in stale:
            self.path_loss.pop(name, None)
        ends = {end for r in list(new.values()) + list(gone.values()) for end in (r.source[0], r.destination[0])}
        reads = [self._read_node(self.links[node]) for node in sorted(ends) if self._reachable(node)]
        if new_paths:  # their losses; those of the other paths have not changed
            reads.append(self._refresh_paths())
        await asyncio.gather(*reads)
        await self._observe("link configured", new)

    @staticmethod
    def _same_path(old: LinkRequest | None, new: LinkRequest) -> bool:
        """Whether `old` (a link being replaced) had its optical path under `new`'s path name."""
        return old is not None and old.has_optical_path and old.path_name == new.path_name

    def _node_config(self, request: LinkRequest, requests: dict[str, LinkRequest]) -> dict[str, NodeLinkConfig]:
        """What each end node of a link gets, by node-id (the local end only, for an
        inter-domain link)."""
        where = f"{LINKS_XPATH}[link-id='{request.link_id}']"

        def end(node_id: str, tp: str) -> tuple[NodeView, int | None]:
            node = self.nodes.get(node_id)
            if node is None:
                raise RPCError("operation-failed", f"link {request.link_id}: node {node_id} has not been read",
                               path=where, path_nsmap=XPATH_NS)
            return node, int(tp) if tp.isdigit() else None
        a, a_if = end(*request.source)
        if request.external is not None:
            peer = request.external.qkdn_id
            peer_if = int(request.destination[1]) if request.destination[1].isdigit() else None
            return {a.name: NodeLinkConfig(request.qkdl_id, "PHYS", a.qkdn_id, a_if, peer, peer_if,
                                           "TRANSMITTER" if a.qkdn_id < peer else "RECEIVER", request.wavelength)}
        b, b_if = end(*request.destination)
        if request.link_type == "PHYS":
            return {a.name: NodeLinkConfig(request.qkdl_id, "PHYS", a.qkdn_id, a_if, b.qkdn_id, b_if,
                                           "TRANSMITTER", request.wavelength),
                    b.name: NodeLinkConfig(request.qkdl_id, "PHYS", b.qkdn_id, b_if, a.qkdn_id, a_if,
                                           "RECEIVER", request.wavelength)}
        try:
            chain = virt_chain(request, requests)
        except ValueError as err:
            raise RPCError("invalid-value", f"VIRT link {request.link_id}: {err}", path=where,
                           path_nsmap=XPATH_NS) from None
        missing = [n for n in chain if n not in self.nodes]
        if missing:
            raise RPCError("operation-failed", f"VIRT link {request.link_id}: node {missing[0]} has not been read",
                           path=where, path_nsmap=XPATH_NS)
        qkdn = [self.nodes[n].qkdn_id for n in chain]
        last = len(chain) - 1
        # Each node's remote is the far end: the destination, or the source for the destination.
        return {node: NodeLinkConfig(request.qkdl_id, "VIRT", qkdn[i], None, qkdn[-1] if i < last else qkdn[0], None,
                                     prev_hop=qkdn[i - 1] if i > 0 else None,
                                     next_hops=(qkdn[i + 1],) if i < last else (), bandwidth=request.virt_bandwidth)
                for i, node in enumerate(chain)}

    def _node_edits(self, put: dict[str, LinkRequest], requests: dict[str, LinkRequest],
                    gone: dict[str, LinkRequest]) -> dict[str, etree._Element]:
        """Per node: replace the entries of `put`, remove those of `gone` that nothing replaces."""
        entries: dict[str, dict[str, etree._Element]] = {}
        for request in gone.values():
            holders = {n for n, view in self.nodes.items() if request.qkdl_id in view.links}
            for node in holders | {request.source[0], request.destination[0]}:
                entries.setdefault(node, {})[request.qkdl_id] = link_removal(request.qkdl_id)
        for request in put.values():
            for node, config in self._node_config(request, requests).items():
                entries.setdefault(node, {})[config.qkdl_id] = node_link_element(config)
        return {node: node_links_edit(list(e.values())) for node, e in entries.items() if node in self.links}

    async def reconcile(self) -> None:
        """Repair nodes whose links differ from running (drift), remove links clients deleted,
        and re-create the optical paths it made that the connectivity controller lost."""
        async with self._lock:
            requests = self._running_requests()
            edits: dict[str, list[etree._Element]] = {}
            wanted: dict[str, dict[str, NodeLinkConfig]] = {}
            for request in requests.values():
                try:
                    configs = self._node_config(request, requests)
                except RPCError:
                    continue
                for node, config in configs.items():
                    wanted.setdefault(node, {})[config.qkdl_id] = config
            for node_id, node in self.nodes.items():
                if not self._reachable(node_id):
                    continue
                for qkdl, config in wanted.get(node_id, {}).items():
                    if node.links.get(qkdl) != config:
                        edits.setdefault(node_id, []).append(node_link_element(config))
                for qkdl in node.links.keys() & self._released:
                    edits.setdefault(node_id, []).append(link_removal(qkdl))
            if edits:
                log.warning("%s: links on %s differ from the configuration: repairing",
                            self.name, ", ".join(sorted(edits)))
                try:
                    await self.transaction({node: node_links_edit(e) for node, e in edits.items()})
                    for node in edits:
                        await self._read_node(self.links[node])
                except (TransactionError, RPCError) as err:
                    log.warning("%s: drift repair failed: %s", self.name, err)
            await self._repair_paths(requests)

    async def _repair_paths(self, requests: dict[str, LinkRequest]) -> None:
        if self.connectivity.status != "connected":
            return
        client = await self.connectivity.session()
        data = await client.get_config(filter=("subtree", conn_model.optical_paths_filter(self.fibre_network)))
        present = conn_model.read_path_names(data)
        missing = [r for r in requests.values()
                   if r.has_optical_path and r.path_name in self._paths_made and r.path_name not in present]
        if missing:
            log.warning("%s: optical paths %s are missing at the connectivity controller: re-creating",
                        self.name, ", ".join(r.path_name for r in missing))
            try:
                await self._edit_paths([self._optical_path_xml(r) for r in missing])
            except RPCError as err:
                log.warning("%s: optical paths not re-created: %s", self.name, err)

    # --- northbound state and notifications ------------------------------------------------------

    def _running_requests(self) -> dict[str, LinkRequest]:
        """running's links, parsed once per running tree (running is replaced whole, never
        changed in place): every node's link-state update reads them, and parsing them each
        time made a second of updates cost nodes x links."""
        running = self.server.running()
        if self._parsed_running is None or self._parsed_running[0] is not running:
            self._parsed_running = (running, link_requests(running))
        return dict(self._parsed_running[1])

    def _link_state(self, request: LinkRequest) -> LinkState | None:
        for node_id in (request.source[0], request.destination[0]):
            node = self.nodes.get(node_id)
            if node is not None and self._reachable(node_id) and request.qkdl_id in node.states:
                return node.states[request.qkdl_id]
        return None

    def _threshold(self, request: LinkRequest) -> float | None:
        node = self.nodes.get(request.source[0])
        return node.qber_threshold if node else None

    async def _observe(self, reason: str, requests: dict[str, LinkRequest] | None = None) -> None:
        """Compare the links' state with what was last reported north; notify the changes and
        bring the alarm list up to date (the alarms of deleted links are cleared)."""
        if requests is None:
            requests = self._running_requests()
        self.observed = {k: v for k, v in self.observed.items() if k in requests}
        self.was_active &= set(requests)
        for link_id in sorted(set(self.alarmed) - set(requests)):
            qkdl_id, qber, threshold = self.alarmed.pop(link_id)
            await self._qber_event(link_id, qkdl_id, qber, threshold, raised=False)
        raised: dict[tuple[str, str], tuple[str, str]] = {}
        for request in requests.values():
            state = self._link_state(request) or LinkState(status="OFF")
            previous = self.observed.get(request.link_id)
            self.observed[request.link_id] = state
            if previous is None or previous.status != state.status:
                await self.server.notify(fwd_model.link_status_change(
                    NETWORK_ID, request.link_id, request.qkdl_id, state.status or "OFF",
                    previous.status if previous is not None else None, reason))
            if state.status == "ACTIVE":
                self.was_active.add(request.link_id)
            elif request.link_id in self.was_active:  # the text of an alarm already raised is kept
                raised[(link_resource(NETWORK_ID, request.link_id), "link-down")] = (
                    "major", f"link {request.link_id} is {state.status or 'OFF'}: {reason}")
            threshold = self._threshold(request)
            above = state.qber is not None and threshold is not None and state.qber > threshold
            if above:
                raised[(link_resource(NETWORK_ID, request.link_id), "qber-above-threshold")] = (
                    "major", f"QBER {state.qber:.3f} % above the threshold {threshold:.3f} % on link "
                             f"{request.link_id}")
            if above != (request.link_id in self.alarmed):
                if above:
                    self.alarmed[request.link_id] = (request.qkdl_id, state.qber, threshold)
                else:
                    self.alarmed.pop(request.link_id)
                await self._qber_event(request.link_id, request.qkdl_id, state.qber or 0.0, threshold or 0.0, above)
        await self.alarm_list.update(raised, lambda alarm: _clear_text(alarm, requests))

    async def _qber_event(self, link_id: str, qkdl_id: str, qber: float, threshold: float, raised: bool) -> None:
        await self.server.notify(fwd_model.qber_alarm(NETWORK_ID, link_id, qkdl_id, qber, threshold, raised))

    async def state(self) -> etree._Element | None:
        running = self.server.running()
        data = empty_tree()
        data.append(self.alarm_list.state())
        if _qkd_network(running) is None:
            return data
        nodes = [NodeStatus(node.name, node.status if self._reachable(node.name) else "FAILURE",
                            {i.qkdi_id: i.status for i in node.interfaces.values()})
                 for node in sorted(self.nodes.values(), key=lambda n: n.name)]
        requests = sorted(self._running_requests().values(), key=lambda r: r.link_id)
        data.append(fwd_model.forwarding_state(NETWORK_ID, nodes, [self._link_status(r) for r in requests]))
        return data

    def _link_status(self, request: LinkRequest) -> LinkStatus:
        state = self._link_state(request)
        if state is None:
            return LinkStatus(request.link_id, channel_loss=self._channel_loss(request))
        return LinkStatus(request.link_id, state.status or "OFF", state.skr, state.eskr, state.expected_consumption,
                          state.qber if request.link_type == "PHYS" else None, self._channel_loss(request),
                          state.stored)

    def _channel_loss(self, request: LinkRequest) -> float | None:
        return self.path_loss.get(request.path_name) if request.has_optical_path else None
