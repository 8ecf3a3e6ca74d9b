"""The emulated QKD node: serves etsi-qkd-sdn-node (ETSI GS QKD 015) and qi-qkd-node-ext.

Inventory (the initial configuration, from the topology): qkdn_id is `node_uuid(topology id)`,
qkdn_location_id the site; one qkd_interface per topology interface, qkdi_id its number,
qkdi_att_point and fibre-attachment the switch port or site position where its fibre enters
the plant. Interfaces and identity are hardware: an edit that changes qkdn_id, adds an
interface the node lacks or moves one is refused (invalid-value); so is a link whose local
end names another node or an interface not configured here.

PHYS links. A link is configured on both nodes with the same qkdl_id. The node finds the
remote end through the network's `QkdNodeRegistry` (in `NetworkContext.shared`, where each
running node registers under its qkdn_id). The link generates key only when both nodes are
up, both ends enabled and agreeing (each end's remote is the other's node and local
interface), the twin has an optical path between the two interfaces' attachment points with
no span cut, and the QBER is under both ends' qber-alarm-threshold (above it the node stops
distilling key). Then skr comes from `twin.link_reading` with the device profile and jitter
of the end with the lower qkdn_id; the registry keeps that reading for a period and both ends
report it. eskr = skr - authentication (qkd_physics.AUTHENTICATION_SHARE of skr), and the link's key
stream (`network.keys.stream(qkdl_id)`, shared with the key managers) is set to eskr, or 0
when the link stops generating.

qkdl_status, for each end: OFF when that end is disabled or its node down; ACTIVE when
generating; otherwise PASSIVE when the link has distilled key before (the key managers may
still hold it: the node cannot see their pools), PENDING when it never has.
expected_consumption is the bandwidth of the applications listed on the link (max_bandwidth,
else min_bandwidth) plus the virt_bandwidth of every VIRT link riding on it.

VIRT links are configured on every node of their relay path with virt_prev_hop /
virt_next_hop; a hop X -> Y is X's PHYS link whose remote is Y. A VIRT link's skr and eskr are
the smallest eskr of its hops, capped by its virt_bandwidth; it is ACTIVE when every hop
generates, PENDING while its path is incomplete, PASSIVE otherwise. Relaying a VIRT link's key
is counted in the expected_consumption of its PHYS hops, not subtracted from their eskr
(ETSI's text does both; once is enough).

The node's own key-pool (qi-qkd-node-ext) hands key to the key managers as it is distilled:
stored is 0 and consumed equals generated, the bits the link distilled since it was
configured here. So a cold restart (flush-key-pools) has nothing to lose in the node.

Notifications (ETSI 015), sent by each end from its periodic refresh (every `period` real
seconds, and at once after a plant or configuration change): sdqkdn_link_perf_update when
skr moves by more than PERF_UPDATE_SHARE since the last one, sdqkdn_link_down when a link
stops being ACTIVE, sdqkdn_link_overloaded when an ACTIVE link's expected_consumption
exceeds its eskr, alarm (MAJOR) when a PHYS link's QBER rises over the threshold and event
when it falls back; alarm and event for the interfaces on inject-failure and clear-failure.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from lxml import etree

from devices.base import Device, NetworkContext
from devices.keystore import KeyStream
from devices.topology import QkdNodeSpec
from devices.twin import Endpoint, LinkReading, PlantChange, Twin
from netconf_core import RestconfServer
from netconf_core.datastore import empty_tree
from models import qkd_node as model
from models.ns import ETSI_NODE, NODE_EXT
from netconf_core.errors import RPCError
from netconf_core.session import Session
from qkd_physics import DeviceProfile, effective_key_rate

log = logging.getLogger(__name__)

MODULE = "etsi-qkd-sdn-node"
EXT_MODULE = "qi-qkd-node-ext"
ROOT_PATH = f"/{MODULE}:qkd_node"

PERIOD_S = 1.0
PERF_UPDATE_SHARE = 0.10
UINT32_MAX = 2**32 - 1
REGISTRY = "qkd-nodes"  # its name in NetworkContext.shared
_NODE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qstrata:qkd-node")


def node_uuid(node_id: str) -> str:
    """The qkdn_id of the QKD node that a topology calls `node_id`."""
    return str(uuid.uuid5(_NODE_NAMESPACE, node_id))


def _path(*steps: str) -> str:
    return "/".join((ROOT_PATH,) + steps)


def _refused(message: str, path: str) -> RPCError:
    return RPCError("invalid-value", message, path=path, path_nsmap={MODULE: ETSI_NODE})


# -- configuration, as read from a running datastore with its defaults ---------------------

@dataclass(frozen=True)
class LinkConfig:
    link_id: str
    kind: str | None  # PHYS, VIRT, or None when qkdl_type is not set
    enabled: bool
    local_node: str | None
    local_if: int | None
    remote_node: str | None
    remote_if: int | None
    apps: tuple[str, ...]
    prev_hop: str | None = None
    next_hops: tuple[str, ...] = ()
    virt_bandwidth: int | None = None

    @property
    def path(self) -> str:
        return _path(f"qkd_links/qkd_link[qkdl_id='{self.link_id}']")


@dataclass(frozen=True)
class NodeConfig:
    qkdn_id: str
    attach: dict[int, Endpoint]  # configured interfaces -> where each meets the plant
    att_points: dict[int, tuple[str | None, int | None]]  # qkdi_att_point as configured
    links: dict[str, LinkConfig]
    app_bandwidth: dict[str, int]
    profile: DeviceProfile
    jitter: float
    qber_threshold: float  # percent

    def phys(self) -> dict[str, LinkConfig]:
        return {i: link for i, link in self.links.items() if link.kind == "PHYS"}

    def virt(self) -> dict[str, LinkConfig]:
        return {i: link for i, link in self.links.items() if link.kind == "VIRT"}

    @classmethod
    def read(cls, tree: etree._Element, hardware: dict[int, Endpoint]) -> NodeConfig | None:
        E = ETSI_NODE
        node = E.find(tree, "qkd_node")
        if node is None:
            return None
        att_points = {int(E.text(i, "qkdi_id")): (E.text(i, "qkdi_att_point/device"),
                                                  _int(E.text(i, "qkdi_att_point/port")))
                      for i in E.all(node, "qkd_interfaces/qkd_interface")}
        links = [_read_link(link) for link in E.all(node, "qkd_links/qkd_link")]
        apps = {E.text(app, "app_id"): int(E.text(app, "app_qos/max_bandwidth")
                                           or E.text(app, "app_qos/min_bandwidth") or 0)
                for app in E.all(node, "qkd_applications/qkd_app")}
        profile = NODE_EXT.find(node, "device-profile")
        number = lambda tag: float(NODE_EXT.text(profile, tag))  # noqa: E731
        mu = NODE_EXT.text(profile, "mean-photon-number")
        return cls(E.text(node, "qkdn_id"), {i: hardware[i] for i in att_points if i in hardware}, att_points,
                   {link.link_id: link for link in links}, apps,
                   DeviceProfile(alpha_db_per_km=number("alpha"), eta_bob=number("eta-bob"), y0=number("y0"),
                                 e_det=number("e-det") / 100, f_ec=number("f-ec"), f_rep=number("f-rep"),
                                 detector_cap_bps=number("detector-cap"), pp_cap_bps=number("detector-cap"),
                                 mu=float(mu) if mu is not None else None),
                   number("rate-jitter") / 100, float(NODE_EXT.text(node, "qber-alarm-threshold")))


def _read_link(link: etree._Element) -> LinkConfig:
    E = ETSI_NODE
    return LinkConfig(
        E.text(link, "qkdl_id"), model.types_identity(E.find(link, "qkdl_type")), E.text(link, "qkdl_enable") == "true",
        E.text(link, "qkdl_local/qkdn_id"), _int(E.text(link, "qkdl_local/qkdi_id")),
        E.text(link, "qkdl_remote/qkdn_id"), _int(E.text(link, "qkdl_remote/qkdi_id")),
        tuple(app.text for app in E.all(link, "qkdl_applications")),
        E.text(link, "virt_prev_hop"), tuple(hop.text for hop in E.all(link, "virt_next_hop")),
        _int(E.text(link, "virt_bandwidth")))


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


# -- what the two ends of a link share -----------------------------------------------------

@dataclass(frozen=True)
class PhysReading:
    """A PHYS link as both its ends see it now. `pair`: the two qkdn_ids when they agree."""

    generating: bool
    why_not: str = ""
    skr: float = 0.0
    eskr: float = 0.0
    qber: float | None = None  # percent; None when no photons arrive
    pair: frozenset[str] = frozenset()
    taken_at: float = field(default_factory=time.monotonic, compare=False)


class QkdNodeRegistry:
    """The running QKD nodes of one emulated network by qkdn_id, and the latest reading of each
    PHYS link, which the registry keeps for a node's period so that both ends report the same
    figures. The readings are dropped whenever the plant or a node's configuration changes."""

    def __init__(self, twin: Twin, keys_stream: Callable[[str], KeyStream]) -> None:
        self.twin = twin
        self.nodes: dict[str, QkdNodeDevice] = {}
        self._stream = keys_stream
        self._readings: dict[str, PhysReading] = {}
        self._rate_set_by: dict[str, frozenset[str]] = {}  # link -> the pair that set its key rate
        self._virt_load: dict[str, int] | None = None
        twin.subscribe(lambda change: self.invalidate())

    @classmethod
    def of(cls, network: NetworkContext) -> QkdNodeRegistry:
        if REGISTRY not in network.shared:
            network.shared[REGISTRY] = cls(network.twin, network.keys.stream)
        return network.shared[REGISTRY]

    def invalidate(self) -> None:
        self._readings.clear()
        self._virt_load = None

    def name(self, qkdn_id: str | None) -> str:
        node = self.nodes.get(qkdn_id or "")
        return node.id if node else f"node {qkdn_id}"

    def phys_reading(self, node: QkdNodeDevice, link: LinkConfig) -> PhysReading:
        cached = self._readings.get(link.link_id)
        if cached is not None and node.qkdn_id in cached.pair and time.monotonic() - cached.taken_at < node.period:
            return cached
        reading = self._read(node, link)
        if reading.pair:
            self._readings[link.link_id] = reading
            self._set_rate(link.link_id, reading.pair, reading.eskr if reading.generating else 0.0)
        elif node.qkdn_id in self._rate_set_by.get(link.link_id, ()):
            self._set_rate(link.link_id, self._rate_set_by[link.link_id], 0.0)
        return reading

    def link_gone(self, node: QkdNodeDevice, link_id: str) -> None:
        """A PHYS link was removed from, or stopped with, `node`: it distils no more key."""
        self._readings.pop(link_id, None)
        pair = self._rate_set_by.get(link_id, frozenset())
        if node.qkdn_id in pair:
            self._set_rate(link_id, pair, 0.0)

    def _set_rate(self, link_id: str, pair: frozenset[str], eskr: float) -> None:
        self._stream(link_id).set_rate(eskr)
        self._rate_set_by[link_id] = pair

    def _read(self, node: QkdNodeDevice, link: LinkConfig) -> PhysReading:
        if not node.up:
            return PhysReading(False, f"{node.id} is {node.down_reason}")
        if not link.enabled:
            return PhysReading(False, "the link is disabled here")
        if link.local_if is None or link.local_if not in node.config.attach:
            return PhysReading(False, "no local interface")
        remote = self.nodes.get(link.remote_node or "")
        if remote is None:
            return PhysReading(False, f"remote {self.name(link.remote_node)} is not reachable")
        if not remote.up:
            return PhysReading(False, f"remote {remote.id} is {remote.down_reason or 'not configured'}")
        other = remote.config.phys().get(link.link_id) if remote.config else None
        if other is None or not other.enabled:
            return PhysReading(False, f"remote {remote.id} has no enabled PHYS link {link.link_id}")
        if (other.remote_node, other.remote_if) != (node.qkdn_id, link.local_if):
            return PhysReading(False, f"remote {remote.id} pairs link {link.link_id} with "
                                      f"{self.name(other.remote_node)} interface {other.remote_if}")
        if other.local_if != link.remote_if or other.local_if not in remote.config.attach:
            return PhysReading(False, f"remote {remote.id} has no interface {link.remote_if} on link {link.link_id}")
        pair = frozenset((node.qkdn_id, remote.qkdn_id))
        ends = sorted([(node, link), (remote, other)], key=lambda end: end[0].qkdn_id)
        (first, first_link), (second, second_link) = ends
        reading = self.twin.link_reading(first.config.attach[first_link.local_if],
                                         second.config.attach[second_link.local_if],
                                         first.config.profile, first.config.jitter)
        threshold = min(node.config.qber_threshold, remote.config.qber_threshold)
        return _judge(reading, threshold, pair, self.twin)

    def virt_hops(self, node: QkdNodeDevice, link_id: str) -> tuple[list[tuple[QkdNodeDevice, LinkConfig]], str]:
        """The PHYS hops of a VIRT link along its relay path, and '' or why the path is incomplete."""
        start, seen = node, {node.qkdn_id}
        while (prev := start.config.virt()[link_id].prev_hop) is not None:
            before = self.nodes.get(prev)
            if before is None or before.config is None or link_id not in before.config.virt() or prev in seen:
                return [], f"{self.name(prev)} does not carry VIRT link {link_id}"
            start = before
            seen.add(prev)
        hops, todo, seen = [], [start], {start.qkdn_id}
        while todo:
            here = todo.pop()
            for next_id in here.config.virt()[link_id].next_hops:
                after = self.nodes.get(next_id)
                if after is None or after.config is None or link_id not in after.config.virt():
                    return [], f"{self.name(next_id)} does not carry VIRT link {link_id}"
                phys = next((p for p in here.config.phys().values() if p.remote_node == next_id and p.enabled), None)
                if phys is None:
                    return [], f"{here.id} has no PHYS link to {after.id}"
                hops.append((here, phys))
                if next_id not in seen:
                    seen.add(next_id)
                    todo.append(after)
        return hops, "" if hops else f"VIRT link {link_id} has no hop"

    def virt_load(self) -> dict[str, int]:
        """PHYS link -> the virt_bandwidth of the VIRT links riding on it."""
        if self._virt_load is None:
            load: dict[str, int] = {}
            counted: set[str] = set()
            for node in self.nodes.values():
                for link in node.config.virt().values() if node.config else ():
                    if link.link_id in counted:
                        continue
                    counted.add(link.link_id)
                    for _, phys in self.virt_hops(node, link.link_id)[0]:
                        load[phys.link_id] = load.get(phys.link_id, 0) + (link.virt_bandwidth or 0)
            self._virt_load = load
        return self._virt_load


def _judge(reading: LinkReading, threshold: float, pair: frozenset[str], twin: Twin) -> PhysReading:
    if not reading.up:
        cut = [s for s in reading.path.spans if twin.spans[s].cut] if reading.path else []
        why = f"span {', '.join(cut)} cut" if cut else "no optical path between the two interfaces"
        return PhysReading(False, why, pair=pair)
    qber = reading.qber * 100
    if qber > threshold:
        return PhysReading(False, f"QBER {qber:.2f} % above the {threshold:.2f} % threshold", qber=qber, pair=pair)
    if reading.skr_bps <= 0:
        return PhysReading(False, f"no secret key at {reading.loss_db:.2f} dB", qber=qber, pair=pair)
    return PhysReading(True, skr=reading.skr_bps, eskr=effective_key_rate(reading.skr_bps), qber=qber,
                       pair=pair)


# -- the device ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkView:
    """One link as this node reports it."""

    status: str  # ACTIVE, PASSIVE, PENDING, OFF
    why_not: str
    skr: int
    eskr: int
    expected: int
    qber: float | None  # PHYS only


@dataclass
class Reported:
    """What was last notified about a link."""

    status: str = "PENDING"
    skr: int = 0
    overloaded: bool = False
    qber_alarm: bool = False


class QkdNodeDevice(Device):
    kind = "qkd-node"
    modules = ("etsi-qkd-node-types", MODULE, EXT_MODULE)
    watches_plant = True
    state_paths = (ROOT_PATH,)

    def __init__(self, spec: QkdNodeSpec, network: NetworkContext, port: int = 0, restconf_port: int | None = None):
        """`restconf_port`: serve the node over RESTCONF too, as ETSI 015 controllers (TeraFlowSDN)
        drive it: plain HTTP on the network's host, on that port (0: a free one; they expect
        8080), accepting their departures from RFC 8040 (netconf_core.restconf, `lenient`)."""
        self.spec = spec
        super().__init__(spec.id, network, port)
        self.restconf = (RestconfServer(self.server, network.host, restconf_port, lenient=True)
                         if restconf_port is not None else None)
        self.qkdn_id = node_uuid(spec.id)
        self.hardware = {i.id: i.attach for i in spec.interfaces}
        self.registry = QkdNodeRegistry.of(network)
        self.config: NodeConfig | None = None
        self.period = PERIOD_S
        self.down_reason: str | None = None  # 'restarting' or the injected failure's reason
        self.failed = False
        self.reported: dict[str, Reported] = {}
        self.baseline: dict[str, int] = {}  # PHYS link -> bits its stream had produced when configured here
        self._ticker: asyncio.Task | None = None
        self._restart: asyncio.Task | None = None
        actions = {"restart": self._restart_action, "inject-failure": self._inject_failure,
                   "clear-failure": self._clear_failure}
        for name, handler in actions.items():
            self.server.add_rpc(f"/{EXT_MODULE}:{name}", handler)  # RPCs: the node is the device

    @property
    def up(self) -> bool:
        return self.down_reason is None and self.config is not None

    def initial_config(self) -> list[etree._Element]:
        E = ETSI_NODE
        node = E.element("qkd_node", leaves={"qkdn_id": self.qkdn_id, "qkdn_location_id": self.spec.site})
        interfaces = E.sub(node, "qkd_interfaces")
        for spec in self.spec.interfaces:
            interface = E.sub(interfaces, "qkd_interface")
            E.sub(interface, "qkdi_id", spec.id)
            interface.append(E.element("qkdi_att_point", leaves={"device": spec.attach.node, "port": spec.attach.port}))
            on_switch = spec.attach.node in self.network.twin.switches
            interface.append(NODE_EXT.element("fibre-attachment", leaves={
                "site": self.spec.site, "switch": spec.attach.node if on_switch else None,
                "port": spec.attach.port if on_switch else None}))
        return [node]

    async def start(self) -> None:
        if self.registry.nodes.get(self.qkdn_id) not in (None, self):
            raise RuntimeError(f"QKD node {self.id} is already running in this network")
        self.registry.nodes[self.qkdn_id] = self
        await super().start()
        if self.restconf is not None:
            await self.restconf.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name=f"{self.id} refresh")

    async def stop(self) -> None:
        for task in (self._ticker, self._restart):
            if task is not None:
                task.cancel()
        if self.registry.nodes.get(self.qkdn_id) is self:
            del self.registry.nodes[self.qkdn_id]
        for link_id in self.config.phys() if self.config else ():
            self.registry.link_gone(self, link_id)
        self.registry.invalidate()
        self._wake_peers(self.config)
        if self.restconf is not None:
            await self.restconf.stop()
        await super().stop()

    # -- configuration ------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        config = NodeConfig.read(self.server.with_defaults(after, "report-all", config_only=True), self.hardware)
        if config is not None:
            self._check(config)
        old, self.config = self.config, config
        for link_id in old.phys() if old else ():
            if config is None or link_id not in config.phys():
                self.registry.link_gone(self, link_id)
        for link_id in config.phys() if config else ():
            if link_id not in self.baseline:
                self.baseline[link_id] = self.network.keys.stream(link_id).produced_bits()
        self.registry.invalidate()
        if self._ticker is not None:  # running: report at once; the first report comes with the ticker
            await self.refresh()
        self._wake_peers(old)
        self._wake_peers(config)

    def _check(self, config: NodeConfig) -> None:
        if config.qkdn_id != self.qkdn_id:
            raise _refused(f"qkdn_id {config.qkdn_id} is not this node's: {self.id} is {self.qkdn_id}",
                           _path("qkdn_id"))
        for qkdi_id, (device, port) in config.att_points.items():
            where = _path(f"qkd_interfaces/qkd_interface[qkdi_id='{qkdi_id}']")
            if qkdi_id not in self.hardware:
                raise _refused(f"{self.id} has no interface {qkdi_id} (its interfaces: "
                               f"{', '.join(map(str, sorted(self.hardware)))})", where)
            attach = self.hardware[qkdi_id]
            if (device, port) != (attach.node, attach.port) and (device, port) != (None, None):
                raise _refused(f"interface {qkdi_id} of {self.id} is attached at {attach}, not at "
                               f"{device}:{port}", f"{where}/qkdi_att_point")
        for link in config.links.values():
            if link.local_node is not None and link.local_node != self.qkdn_id:
                raise _refused(f"link {link.link_id}: qkdl_local names node {link.local_node}, but this is "
                               f"{self.id} ({self.qkdn_id})", f"{link.path}/qkdl_local/qkdn_id")
            if link.local_if is not None and link.local_if not in config.attach:
                raise _refused(f"link {link.link_id}: {self.id} has no configured interface {link.local_if}",
                               f"{link.path}/qkdl_local/qkdi_id")

    def _wake_peers(self, config: NodeConfig | None) -> None:
        """Have the nodes at the other end of this node's links refresh now."""
        if config is None:
            return
        peers = {link.remote_node for link in config.links.values()}
        peers |= {hop for link in config.virt().values() for hop in (link.prev_hop, *link.next_hops)}
        for qkdn_id in peers:
            peer = self.registry.nodes.get(qkdn_id or "")
            if peer is not None and peer is not self:
                peer.spawn(peer.refresh())

    def plant_changed(self, change: PlantChange) -> None:
        self.spawn(self.refresh())

    # -- links as this node sees them ----------------------------------------------------

    def views(self) -> dict[str, LinkView]:
        if self.config is None:
            return {}
        load = self.registry.virt_load()
        views = {}
        for link in self.config.links.values():
            apps = sum(self.config.app_bandwidth.get(app, 0) for app in link.apps)
            if link.kind == "PHYS":
                reading = self.registry.phys_reading(self, link)
                idle = "PASSIVE" if self.network.keys.stream(link.link_id).produced_bits() > 0 else "PENDING"
                views[link.link_id] = self._view(link, reading.generating, idle, reading.why_not, reading.skr,
                                                 reading.eskr, apps + load.get(link.link_id, 0), reading.qber)
            elif link.kind == "VIRT":
                views[link.link_id] = self._virt_view(link, apps)
            else:
                views[link.link_id] = self._view(link, False, "PENDING", "qkdl_type is not set", 0, 0, apps, None)
        return views

    def _virt_view(self, link: LinkConfig, apps: int) -> LinkView:
        hops, incomplete = self.registry.virt_hops(self, link.link_id)
        if incomplete:
            return self._view(link, False, "PENDING", incomplete, 0, 0, apps, None)
        readings = [self.registry.phys_reading(node, phys) for node, phys in hops]
        down = next((f"hop {phys.link_id}: {r.why_not}" for (_, phys), r in zip(hops, readings) if not r.generating),
                    "")
        rate = min(r.eskr for r in readings)
        if link.virt_bandwidth is not None:
            rate = min(rate, link.virt_bandwidth)
        return self._view(link, not down, "PASSIVE", down, rate, rate, apps, None)

    def _view(self, link: LinkConfig, generating: bool, idle: str, why_not: str, skr: float, eskr: float,
              expected: int, qber: float | None) -> LinkView:
        """The link's view from this end; `idle` is its status when it is on but not generating."""
        if not self.up:
            status, why_not = "OFF", f"{self.id} is {self.down_reason}"
        elif not link.enabled:
            status, why_not = "OFF", "the link is disabled here"
        else:
            status = "ACTIVE" if generating else idle
        if status != "ACTIVE":
            skr = eskr = 0
        return LinkView(status, why_not, min(round(skr), UINT32_MAX), min(round(eskr), UINT32_MAX),
                        min(expected, UINT32_MAX), qber)

    # -- periodic work and notifications ----------------------------------------------

    async def _tick(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # one bad refresh must not end the node's reports
                log.exception("%s: refresh failed", self.id)
            await asyncio.sleep(self.period)

    async def refresh(self) -> None:
        """Notify what changed in the node's links since the last report."""
        views = self.views()
        for link_id in set(self.reported) - set(views):
            del self.reported[link_id]
        for link_id, view in views.items():
            await self._report(link_id, view, self.reported.setdefault(link_id, Reported()))

    async def _report(self, link_id: str, view: LinkView, last: Reported) -> None:
        if last.status == "ACTIVE" and view.status != "ACTIVE":
            await self.notify(self._link_element("sdqkdn_link_down", link_id, reason=view.why_not))
        if abs(view.skr - last.skr) > PERF_UPDATE_SHARE * last.skr or (view.skr == 0) != (last.skr == 0):
            await self.notify(self._link_element("sdqkdn_link_perf_update", link_id, view))
            last.skr = view.skr
        overloaded = view.status == "ACTIVE" and view.expected > view.eskr
        if overloaded and not last.overloaded:
            await self.notify(self._link_element("sdqkdn_link_overloaded", link_id, view, with_qber=False))
        qber_alarm = last.qber_alarm if view.qber is None else view.qber > self.config.qber_threshold
        if qber_alarm != last.qber_alarm:
            kind, severity = ("alarm", "MAJOR") if qber_alarm else ("event", "MINOR")
            message = (f"QBER {view.qber:.2f} % above the {self.config.qber_threshold:.2f} % threshold" if qber_alarm
                       else f"QBER back under the {self.config.qber_threshold:.2f} % threshold")
            await self.notify(self._status_element(kind, "link", {"qkdl_id": link_id},
                                                   "qkdl_status", view.status, message, severity))
        last.status, last.overloaded, last.qber_alarm = view.status, overloaded, qber_alarm

    def _link_element(self, kind: str, link_id: str, view: LinkView | None = None, reason: str | None = None,
                      with_qber: bool = True) -> etree._Element:
        return model.link_event(kind, link_id, reason,
                                _performance("performance", view, with_qber) if view is not None else None)

    def _status_element(self, kind: str, about: str, keys: dict[str, object], status_leaf: str, status: str,
                        message: str, severity: str) -> etree._Element:
        return model.status_event(kind, about, keys, status_leaf, status, message, severity)

    # -- state --------------------------------------------------------------------------

    async def state(self) -> etree._Element | None:
        if self.config is None:
            return None
        status = "ENABLED" if self.up else "FAILED" if self.failed else "DISABLED"
        links = []
        for link_id, view in self.views().items():
            pool = None
            if link_id in self.config.phys():
                generated = self.network.keys.stream(link_id).produced_bits() - self.baseline.get(link_id, 0)
                pool = model.KeyPool(stored=0, generated=generated, consumed=generated)
            links.append((link_id, view.status, _performance("qkdl_performance", view, with_qber=True), pool))
        node = model.node_state("OPERATING" if self.up else "DOWN", {qkdi_id: status for qkdi_id in self.config.attach},
                                links)
        data = empty_tree()
        data.append(node)
        return data

    # -- actions ------------------------------------------------------------------------

    async def _go_down(self, reason: str) -> None:
        self.down_reason = reason
        self.registry.invalidate()
        await self.refresh()
        self._wake_peers(self.config)

    async def _come_up(self) -> None:
        self.down_reason, self.failed = None, False
        self.registry.invalidate()
        await self.refresh()
        self._wake_peers(self.config)

    async def _restart_action(self, session: Session, action: etree._Element, context: etree._Element | None) -> None:
        if self.failed:
            raise RPCError("operation-failed", f"{self.id} has failed ({self.down_reason}): clear-failure first",
                           path=f"/{EXT_MODULE}:restart", path_nsmap={EXT_MODULE: NODE_EXT})
        outage = float(NODE_EXT.text(action, "outage") or 1)
        if self._restart is not None:
            self._restart.cancel()
        await self._go_down("restarting")
        self._restart = asyncio.get_running_loop().create_task(self._finish_restart(outage))

    async def _finish_restart(self, outage: float) -> None:
        await asyncio.sleep(outage / self.network.twin.clock.speed)
        self._restart = None
        await self._come_up()

    async def _inject_failure(self, session: Session, action: etree._Element, context: etree._Element | None) -> None:
        reason = NODE_EXT.text(action, "reason") or "injected failure"
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self.failed = True
        await self._go_down(f"failed: {reason}")
        for qkdi_id in self.config.attach if self.config else ():
            await self.notify(self._status_element("alarm", "interface", {"qkdi_id": qkdi_id}, "qkdi_status",
                                                   "FAILED", reason, "MAJOR"))

    async def _clear_failure(self, session: Session, action: etree._Element, context: etree._Element | None) -> None:
        if not self.failed:
            return
        await self._come_up()
        for qkdi_id in self.config.attach if self.config else ():
            await self.notify(self._status_element("event", "interface", {"qkdi_id": qkdi_id}, "qkdi_status",
                                                   "ENABLED", "failure cleared", "MINOR"))


def _performance(tag: str, view: LinkView, with_qber: bool) -> etree._Element:
    return model.performance_element(tag, view.expected, view.skr, view.eskr, view.qber if with_qber else None)
