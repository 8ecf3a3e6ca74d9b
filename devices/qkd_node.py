"""The emulated QKD node: serves etsi-qkd-sdn-node (ETSI GS QKD 015) and qi-qkd-node-ext.

Inventory (the initial configuration, from the topology): qkdn_id is `node_uuid(topology id)`,
qkdn_location_id the site; one qkd_interface per topology interface, qkdi_id its number,
qkdi_att_point and fibre-attachment the switch port or site position where its fibre enters
the plant. Interfaces and identity are hardware: an edit that changes qkdn_id, adds an
interface the node lacks or moves one is refused (invalid-value); so is a link whose local
end names another node or an interface not configured here.

PHYS links. A link is configured on both nodes with the same qkdl_id. Each running node
registers with the network's twin service (devices/twin_service.py) under its qkdn_id: its
links, interfaces, device profile and whether it is up; the service finds the remote end
and applies this rule, so the two nodes may run in different processes or hosts. The link
generates key only when both nodes are
up, both ends enabled and agreeing (each end's remote is the other's node and local
interface), the twin has an optical path between the two interfaces' attachment points with
no span cut, and the QBER is under both ends' qber-alarm-threshold (above it the node stops
distilling key). Then skr comes from `twin.link_reading` with the device profile and jitter
of the end with the lower qkdn_id; the service keeps that reading for a period and both ends
report it. eskr = skr - authentication (qkd_physics.AUTHENTICATION_SHARE of skr), and the link's key
stream (the service's, handed to both ends and their key managers) is set to eskr, or 0
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
import uuid
from dataclasses import dataclass

from lxml import etree

from devices.base import Device, NetworkContext
from devices.topology import QkdNodeSpec
from devices.twin import Endpoint, PlantChange
from devices.twin_service import LinkConfig, NodeRegistration, TwinError
from netconf_core import RestconfServer
from netconf_core.datastore import empty_tree
from models import qkd_node as model
from models.ns import ETSI_NODE, NODE_EXT
from netconf_core.errors import RPCError
from netconf_core.session import Session
from qkd_physics import DeviceProfile

log = logging.getLogger(__name__)

MODULE = "etsi-qkd-sdn-node"
EXT_MODULE = "qi-qkd-node-ext"
ROOT_PATH = f"/{MODULE}:qkd_node"

PERIOD_S = 1.0
PERF_UPDATE_SHARE = 0.10
UINT32_MAX = 2**32 - 1
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


def _link_path(link: LinkConfig) -> str:
    return _path(f"qkd_links/qkd_link[qkdl_id='{link.link_id}']")


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
    produced: int = 0  # PHYS: the bits the link's stream has produced


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
    signals_state = True  # from `refresh`, which every change of the links' state goes through

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
        self.config: NodeConfig | None = None
        self.period = PERIOD_S
        self.down_reason: str | None = None  # 'restarting' or the injected failure's reason
        self.failed = False
        self.leaving = False  # stopping: no more readings asked for (the service forgets the node)
        self.reported: dict[str, Reported] = {}
        self._last_seen: tuple | None = None  # what the last refresh saw (signals_state)
        self.baseline: dict[str, int | None] = {}  # PHYS link -> bits its stream had produced when configured here
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
            on_switch = spec.attach.node in self.twin.plant["switches"]
            interface.append(NODE_EXT.element("fibre-attachment", leaves={
                "site": self.spec.site, "switch": spec.attach.node if on_switch else None,
                "port": spec.attach.port if on_switch else None}))
        return [node]

    async def start(self) -> None:
        self.leaving = False
        await super().start()
        if self.restconf is not None:
            await self.restconf.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name=f"{self.id} refresh")

    async def stop(self) -> None:
        self.leaving = True
        for task in (self._ticker, self._restart):
            if task is not None:
                task.cancel()
        if self.twin.address is not None and self._joined:
            self.twin.node_links.untrack(self.qkdn_id)
            try:  # the service drops its links' readings and rates and wakes the peers
                await self.twin.request("DELETE", f"/nodes/{self.qkdn_id}", self.id)
            except TwinError as error:
                log.warning("%s: could not unregister from the twin service: %s", self.id, error)
        if self.restconf is not None:
            await self.restconf.stop()
        await super().stop()

    # -- configuration ------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        config = NodeConfig.read(self.server.with_defaults(after, "report-all", config_only=True), self.hardware)
        if config is not None:
            self._check(config)
        await self._register(config)
        self.config = config
        for link_id in config.phys() if config else ():
            self.baseline.setdefault(link_id, None)   # known at the next reading
        if self._ticker is not None:  # running: report at once; the first report comes with the ticker
            await self.refresh()

    def registration(self, config: NodeConfig | None) -> NodeRegistration:
        return NodeRegistration(self.id, self.qkdn_id, self.spec.site, self.down_reason is None and config is not None,
                                self.down_reason, self.period, config.attach, config.links, config.profile,
                                config.jitter, config.qber_threshold)

    async def _register(self, config: NodeConfig | None) -> None:
        """Tell the twin service what this node is now (the service wakes the peers concerned);
        a refusal refuses the configuration, so that nothing is half-applied."""
        try:
            if config is None:
                self.twin.node_links.untrack(self.qkdn_id)
                await self.twin.request("DELETE", f"/nodes/{self.qkdn_id}", self.id)
            else:
                await self.twin.request("PUT", f"/nodes/{self.qkdn_id}", self.id,
                                        self.registration(config).to_json())
                self.twin.node_links.track(self.qkdn_id, self.id)
        except TwinError as error:
            raise RPCError("operation-failed", f"{self.id} cannot reach its network's twin service: {error}",
                           path=ROOT_PATH, path_nsmap={MODULE: ETSI_NODE}) from None

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
                               f"{self.id} ({self.qkdn_id})", f"{_link_path(link)}/qkdl_local/qkdn_id")
            if link.local_if is not None and link.local_if not in config.attach:
                raise _refused(f"link {link.link_id}: {self.id} has no configured interface {link.local_if}",
                               f"{_link_path(link)}/qkdl_local/qkdi_id")

    def twin_event(self, event: dict) -> None:
        if event["type"] == "nodes" and self.qkdn_id in event["wake"]:
            self.spawn(self.refresh())
        else:
            super().twin_event(event)

    def plant_changed(self, change: PlantChange) -> None:
        self.spawn(self.refresh())

    # -- links as this node sees them ----------------------------------------------------

    async def readings(self) -> dict[str, dict]:
        """Every link of this node as the twin service read it this period (none when unreachable),
        fetched with those of the process's other nodes (TwinClient.node_links)."""
        if self.config is None or self.leaving:
            return {}
        try:
            return await self.twin.node_links.links(self.qkdn_id, self.period)
        except TwinError as error:
            log.warning("%s: no readings from the twin service: %s", self.id, error)
            return {}

    async def views(self) -> dict[str, LinkView]:
        if self.config is None:
            return {}
        readings = await self.readings()
        views = {}
        for link in self.config.links.values():
            apps = sum(self.config.app_bandwidth.get(app, 0) for app in link.apps)
            r = readings.get(link.link_id)
            if link.kind in ("PHYS", "VIRT") and r is not None:
                produced = r.get("produced_bits", 0)
                if link.kind == "PHYS" and self.baseline.get(link.link_id) is None:
                    self.baseline[link.link_id] = produced
                views[link.link_id] = self._view(link, r["generating"], r["idle"], r["why_not"], r["skr"], r["eskr"],
                                                 apps + r.get("load", 0), r["qber"], produced)
            elif link.kind in ("PHYS", "VIRT"):
                views[link.link_id] = self._view(link, False, "PENDING", "the twin service is unreachable", 0, 0,
                                                 apps, None)
            else:
                views[link.link_id] = self._view(link, False, "PENDING", "qkdl_type is not set", 0, 0, apps, None)
        return views

    def _view(self, link: LinkConfig, generating: bool, idle: str, why_not: str, skr: float, eskr: float,
              expected: int, qber: float | None, produced: int = 0) -> LinkView:
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
                        min(expected, UINT32_MAX), qber, produced)

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
        if self.leaving:  # what it would see now is its own departure, not its links'
            return
        views = await self.views()
        seen = (self.up, self.failed, views)
        if seen != self._last_seen:  # what `state` serves has changed (the key counters aside)
            self._last_seen = seen
            self.server.state_changed()
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
        for link_id, view in (await self.views()).items():
            pool = None
            if link_id in self.config.phys():
                generated = max(0, view.produced - (self.baseline.get(link_id) or 0))
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
        await self._register(self.config)
        await self.refresh()

    async def _come_up(self) -> None:
        self.down_reason, self.failed = None, False
        await self._register(self.config)
        await self.refresh()

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
        await asyncio.sleep(outage / self.twin.clock.speed)
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
