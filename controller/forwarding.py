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
ETSI notification about a link (sdqkdn_link_down, sdqkdn_link_perf_update, alarm...) and at
every resync; channel-loss is the optical path's total loss at the connectivity controller,
read after the controller makes optical paths, at every resync, and once per burst of
optical-path-status-change notifications (a path going down keeps its route and its loss).
A status change is sent north as link-status-change, a QBER crossing the node's
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
import logging
from dataclasses import dataclass

from lxml import etree

from controller.alarms import LINK_NS, Alarm, AlarmList, AlarmType, link_resource, resource_link
from controller.base import Controller, qname as _q, same_content, sub_element as _sub
from netconf_core import ReconcileLoop
from netconf_core.datastore import empty_tree
from netconf_core.errors import BASE_NS, RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError, transaction
from netconf_core.server import User

log = logging.getLogger(__name__)

NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD = "urn:qstrata:yang:qi-forwarding"
CONN = "urn:qstrata:yang:qi-connectivity"
ETSI = "urn:etsi:qkd:yang:etsi-qkd-node"
TYPES = "urn:etsi:qkd:yang:etsi-qkd-node-types"
EXT = "urn:qstrata:yang:qi-qkd-node-ext"
QI_ALARMS = "urn:qstrata:yang:qi-alarms"
NETWORK_ID = "qkd"
DEFAULT_FIBRE_NETWORK = "fibre"
PANEL_TP = "panel"  # the connectivity controller's tp-id of a site's unnumbered fibre termination
LINKS_XPATH = f"/ietf-network:networks/network[network-id='{NETWORK_ID}']/ietf-network-topology:link"
XPATH_NS = {"ietf-network": NW, "ietf-network-topology": NT}
MAX_REASON = 1024



def _identity_leaf(parent: etree._Element, ns: str, tag: str, identity: str) -> None:
    """A leaf holding an etsi-qkd-node-types identity that declares the prefix itself: state
    leaves are merged into the running tree one by one, away from their parents' declarations."""
    leaf = etree.SubElement(parent, _q(ns, tag), nsmap={None: ns, "etsi-qkdn-types": TYPES})
    leaf.text = f"etsi-qkdn-types:{identity}"


def _identity(text: str | None) -> str | None:
    """The local name of an identityref value ('etsi-qkdn-types:PHYS' -> 'PHYS')."""
    return text.strip().rpartition(":")[2] if text else None


def _float(text: str | None) -> float | None:
    return float(text) if text else None


def _int(text: str | None) -> int | None:
    return int(text) if text else None


# --- what the nodes say -----------------------------------------------------------------

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
    """The part of an ETSI qkd_link entry this controller writes."""

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
    qber: float | None = None
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
    e = lambda tag: _q(ETSI, tag)  # noqa: E731
    interfaces = {}
    for iface in root.iterfind(f"{e('qkd_interfaces')}/{e('qkd_interface')}"):
        qkdi = int(iface.findtext(e("qkdi_id")))
        port = iface.findtext(f"{e('qkdi_att_point')}/{e('port')}")
        interfaces[qkdi] = Interface(qkdi, iface.findtext(f"{e('qkdi_att_point')}/{e('device')}"), _int(port),
                                     _identity(iface.findtext(e("qkdi_type"))),
                                     _identity(iface.findtext(f"{e('qkdi_capabilities')}/{e('role_support')}")),
                                     _identity(iface.findtext(e("qkdi_status"))))
    links, states = {}, {}
    for entry in root.iterfind(f"{e('qkd_links')}/{e('qkd_link')}"):
        qkdl = entry.findtext(e("qkdl_id"))
        end = lambda side, leaf: entry.findtext(f"{e(side)}/{e(leaf)}")  # noqa: E731
        links[qkdl] = NodeLinkConfig(
            qkdl, _identity(entry.findtext(e("qkdl_type"))) or "PHYS",
            end("qkdl_local", "qkdn_id"), _int(end("qkdl_local", "qkdi_id")),
            end("qkdl_remote", "qkdn_id"), _int(end("qkdl_remote", "qkdi_id")),
            _identity(entry.findtext(e("phys_qkd_role"))), _int(entry.findtext(e("phys_wavelength"))),
            entry.findtext(e("virt_prev_hop")), tuple(h.text for h in entry.iterfind(e("virt_next_hop"))),
            _int(entry.findtext(e("virt_bandwidth"))))
        perf = entry.find(e("qkdl_performance"))
        qber = None
        if perf is not None:
            for figure in perf.iterfind(e("phys_perf")):
                if _identity(figure.findtext(e("perf_type"))) == "QBER":
                    qber = _float(figure.findtext(e("value")))
        states[qkdl] = LinkState(
            _identity(entry.findtext(e("qkdl_status"))),
            _int(perf.findtext(e("skr"))) if perf is not None else None,
            _int(perf.findtext(e("eskr"))) if perf is not None else None,
            _int(perf.findtext(e("expected_consumption"))) if perf is not None else None,
            qber, _int(entry.findtext(f"{_q(EXT, 'key-pool')}/{_q(EXT, 'stored')}")))
    return NodeView(name, root.findtext(e("qkdn_id")), root.findtext(e("qkdn_location_id")),
                    _identity(root.findtext(e("qkdn_status"))), interfaces, links, states,
                    _float(root.findtext(_q(EXT, "qber-alarm-threshold"))))


def _node_link_xml(config: NodeLinkConfig) -> etree._Element:
    entry = etree.Element(_q(ETSI, "qkd_link"), nsmap={None: ETSI})
    entry.set(_q(BASE_NS, "operation"), "replace")
    _sub(entry, ETSI, "qkdl_id", config.qkdl_id)
    _sub(entry, ETSI, "qkdl_enable", "true")
    for end, qkdn, qkdi in (("qkdl_local", config.local_qkdn, config.local_qkdi),
                            ("qkdl_remote", config.remote_qkdn, config.remote_qkdi)):
        element = _sub(entry, ETSI, end)
        _sub(element, ETSI, "qkdn_id", qkdn)
        if qkdi is not None:
            _sub(element, ETSI, "qkdi_id", qkdi)
    _identity_leaf(entry, ETSI, "qkdl_type", config.link_type)
    if config.prev_hop:
        _sub(entry, ETSI, "virt_prev_hop", config.prev_hop)
    for hop in config.next_hops:
        _sub(entry, ETSI, "virt_next_hop", hop)
    if config.bandwidth is not None:
        _sub(entry, ETSI, "virt_bandwidth", config.bandwidth)
    if config.wavelength is not None:
        _sub(entry, ETSI, "phys_wavelength", str(config.wavelength))
    if config.role:
        _identity_leaf(entry, ETSI, "phys_qkd_role", config.role)
    return entry


def _node_edit(entries: list[etree._Element]) -> etree._Element:
    config = etree.Element(_q(BASE_NS, "config"), nsmap={None: BASE_NS})
    links = _sub(_sub(config, ETSI, "qkd_node"), ETSI, "qkd_links")
    links.extend(entries)
    return config


def _remove_entry(qkdl_id: str) -> etree._Element:
    entry = etree.Element(_q(ETSI, "qkd_link"), nsmap={None: ETSI})
    entry.set(_q(BASE_NS, "operation"), "remove")
    _sub(entry, ETSI, "qkdl_id", qkdl_id)
    return entry


# --- what clients ask -----------------------------------------------------------------------

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
    source: tuple[str, str]  # node-id, tp-id
    destination: tuple[str, str]
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


def _qkd_network(tree: etree._Element) -> etree._Element | None:
    for network in tree.iterfind(f"{_q(NW, 'networks')}/{_q(NW, 'network')}"):
        if network.findtext(_q(NW, "network-id")) == NETWORK_ID:
            return network
    return None


def link_requests(tree: etree._Element) -> dict[str, LinkRequest]:
    network = _qkd_network(tree)
    if network is None:
        return {}
    t = lambda tag: _q(NT, tag)  # noqa: E731
    f = lambda tag: _q(FWD, tag)  # noqa: E731
    out = {}
    for link in network.iterfind(t("link")):
        qkd = link.find(f("qkd-link"))
        if qkd is None:
            continue
        link_id = link.findtext(t("link-id"))
        end = lambda side, node, tp: tuple(link.findtext(f"{t(side)}/{t(leaf)}") for leaf in (node, tp))  # noqa: E731
        peer = qkd.find(f("external-peer"))
        out[link_id] = LinkRequest(
            link_id, end("source", "source-node", "source-tp"), end("destination", "dest-node", "dest-tp"),
            qkd.findtext(f("qkdl-id")), _identity(qkd.findtext(f("link-type"))) or "PHYS",
            qkd.findtext(f("optical-path")), _int(qkd.findtext(f("wavelength"))),
            _int(qkd.findtext(f("virt-bandwidth"))),
            frozenset(s.findtext(t("link-ref")) for s in link.iterfind(t("supporting-link"))),
            ExternalPeer(*(peer.findtext(f(leaf)) for leaf in ("member", "qkdn-id", "km-id")))
            if peer is not None else None)
    return out


def topology(tree: etree._Element) -> etree._Element | None:
    """A copy of the networks of a datastore tree without the qkd network's links: what only
    the controller may change."""
    tree = copy.deepcopy(tree)
    network = _qkd_network(tree)
    for link in network.findall(_q(NT, "link")) if network is not None else []:
        network.remove(link)
    return tree.find(_q(NW, "networks"))


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

    def __init__(self, name: str, devices: list[Endpoint], connectivity: Endpoint, users: dict[str, User], *,
                 km_by_site: dict[str, str] | None = None, **kwargs):
        super().__init__(name, devices, users, **kwargs)
        self.km_by_site = dict(km_by_site or {})
        self.connectivity = DeviceLink(connectivity, ("qi-connectivity",), self._connectivity_connected,
                                       self._connectivity_notification)
        self.fibre_network = DEFAULT_FIBRE_NETWORK
        self.nodes: dict[str, NodeView] = {}  # by node-id (device name)
        self.path_loss: dict[str, float] = {}  # optical path name -> total loss at the connectivity controller
        self.observed: dict[str, LinkState] = {}  # by link-id, as last reported north
        # link-id whose QBER is above the threshold -> (qkdl-id, qber, threshold), as last reported
        self.alarmed: dict[str, tuple[str, float, float]] = {}
        self.was_active: set[str] = set()  # link-ids seen ACTIVE since they were configured
        self.alarm_list = AlarmList(list(ALARM_TYPES.values()), LINK_NS, self.server.notify)
        self._released: set[str] = set()  # qkdl-ids deleted by clients: removed from nodes wherever found
        self._paths_made: set[str] = set()  # optical paths this controller asked for (re-made if lost)
        self._lock = asyncio.Lock()
        # Bursts of (re)connections and of path notifications are one pass each; a failed
        # pass is not retried: the next connection, change or resync tries again.
        self._settler = ReconcileLoop(f"{name} settle", self._settle_now, backoff_initial=None, logger=log)
        self._unsettled: str | None = None
        self._path_refresher = ReconcileLoop(f"{name} paths", self._refresh_stale_paths, backoff_initial=None,
                                             logger=log)
        self._paths_stale = False
        self.synced = asyncio.Event()  # every node read and the topology in running

    async def start(self) -> None:
        await super().start()
        self._settler.start()
        self._path_refresher.start()
        self.connectivity.start()

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
        event = next((c for c in notification if isinstance(c.tag, str) and etree.QName(c).namespace == ETSI), None)
        if event is None:
            return
        reason = event.findtext(f".//{_q(ETSI, 'reason')}") or event.findtext(f".//{_q(ETSI, 'message')}")
        await self._read_node(link)
        await self._observe(reason or f"{etree.QName(event).localname} from {link.name}")

    async def resync(self) -> None:
        connected = [link for link in self.links.values() if link.status == "connected"]
        results = await asyncio.gather(*(self._read_node(link) for link in connected), return_exceptions=True)
        for link, result in zip(connected, results):
            if isinstance(result, Exception):
                log.warning("%s: cannot read %s: %s", self.name, link.name, result)
        await self._refresh_paths()
        await self._publish_topology()
        await self.reconcile()
        await self._observe("periodic resync")

    async def _read_node(self, link: DeviceLink) -> None:
        client = await link.session()
        data = await client.get(filter=("subtree", f'<qkd_node xmlns="{ETSI}"/>'), with_defaults="report-all")
        root = data.find(_q(ETSI, "qkd_node")) if data is not None else None
        if root is None:
            log.warning("%s: device %s serves no qkd_node", self.name, link.name)
            return
        self.nodes[link.name] = read_node(link.name, root)

    def _reachable(self, node: str) -> bool:
        link = self.links.get(node)
        return link is not None and link.status == "connected" and node in self.nodes

    # --- southbound: the connectivity controller ------------------------------------------------

    async def _connectivity_connected(self, link: DeviceLink) -> None:
        data = await (await link.session()).get(filter=("subtree", f'<networks xmlns="{NW}"><network>'
                                                        f'<network-id/><network-types/></network></networks>'))
        for network in data.iterfind(f".//{_q(NW, 'network')}") if data is not None else []:
            if network.find(f"{_q(NW, 'network-types')}/{_q(CONN, 'fibre-network')}") is not None:
                self.fibre_network = network.findtext(_q(NW, "network-id"))
        await self._refresh_paths()

    async def _connectivity_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        change = notification.find(f".//{_q(CONN, 'optical-path-status-change')}")
        # A path that goes down keeps its route, and so its loss: only the other changes are read.
        if change is not None and change.findtext(_q(CONN, "status")) != "down":
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
        data = await client.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>'
                                                   f'{self.fibre_network}</network-id><optical-paths xmlns="{CONN}"/>'
                                                   f'</network></networks>'))
        losses = {}
        for path in data.iter(_q(CONN, "optical-path")) if data is not None else []:
            loss = path.findtext(_q(CONN, "total-loss"))
            if loss:
                losses[path.findtext(_q(CONN, "name"))] = float(loss)
        self.path_loss = losses

    def _optical_path_xml(self, request: LinkRequest) -> etree._Element:
        """The optical-path entry that carries a PHYS link."""
        path = etree.Element(_q(CONN, "optical-path"), nsmap={None: CONN})
        path.set(_q(BASE_NS, "operation"), "replace")
        _sub(path, CONN, "name", request.path_name)
        for end, (node_id, tp) in (("source", request.source), ("destination", request.destination)):
            node = self.nodes.get(node_id)
            iface = node.interfaces.get(int(tp)) if node and tp.isdigit() else None
            if iface is None or iface.att_device is None:
                raise RPCError("operation-failed", f"link {request.link_id}: interface {tp} of {node_id} has no "
                               "known attachment point to the fibre",
                               path=f"{LINKS_XPATH}[link-id='{request.link_id}']", path_nsmap=XPATH_NS)
            element = _sub(path, CONN, end)
            _sub(element, CONN, "node", iface.att_device)
            _sub(element, CONN, "tp", str(iface.att_port) if iface.att_port is not None else PANEL_TP)
        if request.wavelength is not None:
            _sub(path, CONN, "wavelength", request.wavelength)
        return path

    @staticmethod
    def _path_removal(name: str) -> etree._Element:
        path = etree.Element(_q(CONN, "optical-path"), nsmap={None: CONN})
        path.set(_q(BASE_NS, "operation"), "remove")
        _sub(path, CONN, "name", name)
        return path

    async def _edit_paths(self, entries: list[etree._Element]) -> None:
        """One transaction on the connectivity controller's optical paths."""
        if not entries:
            return
        config = etree.Element(_q(BASE_NS, "config"), nsmap={None: BASE_NS})
        network = _sub(_sub(config, NW, "networks"), NW, "network")
        _sub(network, NW, "network-id", self.fibre_network)
        _sub(network, CONN, "optical-paths").extend(entries)
        try:
            await transaction({self.connectivity: config})
        except TransactionError as err:
            inner = err.error
            raise RPCError("operation-failed", "the connectivity controller refused the optical paths: "
                           + (inner.message if isinstance(inner, RPCError) else str(inner)),
                           info={"bad-element": self.connectivity.name}) from None

    # --- the topology in running ----------------------------------------------------------------

    def _topology_xml(self, running_network: etree._Element | None) -> etree._Element:
        networks = etree.Element(_q(NW, "networks"), nsmap={None: NW})
        network = _sub(networks, NW, "network")
        _sub(network, NW, "network-id", NETWORK_ID)
        _sub(_sub(network, NW, "network-types"), FWD, "qkd-network")
        # VIRT links ride on this network's PHYS links; QKD interfaces sit on fibre ports.
        for supporting in (NETWORK_ID, self.fibre_network):
            _sub(_sub(network, NW, "supporting-network"), NW, "network-ref", supporting)
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            element = _sub(network, NW, "node")
            _sub(element, NW, "node-id", node.name)
            for fibre_node in sorted({i.att_device for i in node.interfaces.values() if i.att_device}):
                supporting = _sub(element, NW, "supporting-node")
                _sub(supporting, NW, "network-ref", self.fibre_network)
                _sub(supporting, NW, "node-ref", fibre_node)
            attributes = _sub(element, FWD, "qkd-node")
            _sub(attributes, FWD, "qkdn-id", node.qkdn_id)
            if node.site:
                _sub(attributes, FWD, "site", node.site)
                if node.site in self.km_by_site:
                    _sub(attributes, FWD, "km-id", self.km_by_site[node.site])
            for iface in sorted(node.interfaces.values(), key=lambda i: i.qkdi_id):
                point = _sub(element, NT, "termination-point")
                _sub(point, NT, "tp-id", str(iface.qkdi_id))
                if iface.att_device:
                    fibre_port = _sub(point, NT, "supporting-termination-point")
                    _sub(fibre_port, NT, "network-ref", self.fibre_network)
                    _sub(fibre_port, NT, "node-ref", iface.att_device)
                    _sub(fibre_port, NT, "tp-ref", str(iface.att_port) if iface.att_port is not None else PANEL_TP)
                qkd = _sub(point, FWD, "qkd-interface")
                _sub(qkd, FWD, "qkdi-id", iface.qkdi_id)
                if iface.technology:
                    _identity_leaf(qkd, FWD, "technology", iface.technology)
                if iface.role:
                    _identity_leaf(qkd, FWD, "role", iface.role)
        # A node not read yet since a restart keeps what running said of it: the links on it
        # stay valid, and the levels above do not see it vanish and come back.
        for element in running_network.iterfind(_q(NW, "node")) if running_network is not None else []:
            node_id = element.findtext(_q(NW, "node-id"))
            if node_id in self.links and node_id not in self.nodes:
                network.append(copy.deepcopy(element))
        configured = list(running_network.iterfind(_q(NT, "link"))) if running_network is not None else []
        network.extend(copy.deepcopy(link) for link in configured)
        known = {link.findtext(f"{_q(FWD, 'qkd-link')}/{_q(FWD, 'qkdl-id')}") for link in configured}
        for link in self._discovered_links(known | self._released):
            network.append(link)
        return networks

    def _discovered_links(self, known: set[str]) -> list[etree._Element]:
        """PHYS links configured consistently on two reachable nodes and unknown to running."""
        by_qkdn = {node.qkdn_id: node for node in self.nodes.values()}
        found = []
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
                link = etree.Element(_q(NT, "link"), nsmap={None: NT})
                _sub(link, NT, "link-id", config.qkdl_id)
                source = _sub(link, NT, "source")
                _sub(source, NT, "source-node", node.name)
                _sub(source, NT, "source-tp", str(config.local_qkdi))
                destination = _sub(link, NT, "destination")
                _sub(destination, NT, "dest-node", peer.name)
                _sub(destination, NT, "dest-tp", str(config.remote_qkdi))
                qkd = _sub(link, FWD, "qkd-link")
                _sub(qkd, FWD, "qkdl-id", config.qkdl_id)
                _identity_leaf(qkd, FWD, "link-type", "PHYS")
                found.append(link)
        return found

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
                entries.setdefault(node, {})[request.qkdl_id] = _remove_entry(request.qkdl_id)
        for request in put.values():
            for node, config in self._node_config(request, requests).items():
                entries.setdefault(node, {})[config.qkdl_id] = _node_link_xml(config)
        return {node: _node_edit(list(e.values())) for node, e in entries.items() if node in self.links}

    async def reconcile(self) -> None:
        """Repair nodes whose links differ from running (drift), remove links clients deleted,
        and re-create the optical paths it made that the connectivity controller lost."""
        async with self._lock:
            requests = link_requests(self.server.running())
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
                        edits.setdefault(node_id, []).append(_node_link_xml(config))
                for qkdl in node.links.keys() & self._released:
                    edits.setdefault(node_id, []).append(_remove_entry(qkdl))
            if edits:
                log.warning("%s: links on %s differ from the configuration: repairing",
                            self.name, ", ".join(sorted(edits)))
                try:
                    await self.transaction({node: _node_edit(e) for node, e in edits.items()})
                    for node in edits:
                        await self._read_node(self.links[node])
                except (TransactionError, RPCError) as err:
                    log.warning("%s: drift repair failed: %s", self.name, err)
            await self._repair_paths(requests)

    async def _repair_paths(self, requests: dict[str, LinkRequest]) -> None:
        if self.connectivity.status != "connected":
            return
        client = await self.connectivity.session()
        data = await client.get_config(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>'
                                                          f'{self.fibre_network}</network-id><optical-paths '
                                                          f'xmlns="{CONN}"/></network></networks>'))
        present = {e.text for e in data.iter(_q(CONN, "name"))} if data is not None else set()
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
            requests = link_requests(self.server.running())
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
                event = etree.Element(_q(FWD, "link-status-change"), nsmap={None: FWD})
                _sub(event, FWD, "network-id", NETWORK_ID)
                _sub(event, FWD, "link-id", request.link_id)
                _sub(event, FWD, "qkdl-id", request.qkdl_id)
                _identity_leaf(event, FWD, "status", state.status or 'OFF')
                if previous is not None and previous.status:
                    _identity_leaf(event, FWD, "previous-status", previous.status)
                _sub(event, FWD, "reason", reason[:MAX_REASON])
                await self.server.notify(event)
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
        event = etree.Element(_q(FWD, "qber-alarm"), nsmap={None: FWD})
        _sub(event, FWD, "network-id", NETWORK_ID)
        _sub(event, FWD, "link-id", link_id)
        _sub(event, FWD, "qkdl-id", qkdl_id)
        _sub(event, FWD, "qber", float(qber))
        _sub(event, FWD, "threshold", float(threshold))
        _sub(event, FWD, "raised", "true" if raised else "false")
        await self.server.notify(event)

    async def state(self) -> etree._Element | None:
        running = self.server.running()
        data = empty_tree()
        data.append(self.alarm_list.state())
        if _qkd_network(running) is None:
            return data
        network = _sub(_sub(data, NW, "networks"), NW, "network")
        _sub(network, NW, "network-id", NETWORK_ID)
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            element = _sub(network, NW, "node")
            _sub(element, NW, "node-id", node.name)
            status = node.status if self._reachable(node.name) else "FAILURE"
            if status:
                attributes = _sub(element, FWD, "qkd-node")
                _identity_leaf(attributes, FWD, "status", status)
            for iface in sorted(node.interfaces.values(), key=lambda i: i.qkdi_id):
                if iface.status:
                    point = _sub(element, NT, "termination-point")
                    _sub(point, NT, "tp-id", str(iface.qkdi_id))
                    qkd = _sub(point, FWD, "qkd-interface")
                    _identity_leaf(qkd, FWD, "status", iface.status)
        for request in sorted(link_requests(running).values(), key=lambda r: r.link_id):
            state = self._link_state(request)
            link = _sub(network, NT, "link")
            _sub(link, NT, "link-id", request.link_id)
            qkd = _sub(link, FWD, "qkd-link")
            _identity_leaf(qkd, FWD, "status", state.status if state and state.status else 'OFF')
            for tag, value in (("skr", state.skr if state else None), ("eskr", state.eskr if state else None),
                               ("expected-consumption", state.expected_consumption if state else None),
                               ("qber", state.qber if state and request.link_type == "PHYS" else None),
                               ("channel-loss", self.path_loss.get(request.path_name)
                                if request.has_optical_path else None),
                               ("stored-key", state.stored if state else None)):
                if value is not None:
                    _sub(qkd, FWD, tag, value)
        return data
