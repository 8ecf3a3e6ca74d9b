"""The emulated optical switch: serves qi-optical-switch; its cross-connects are the twin's.

A configured cross-connect whose two ports are enabled is a cross-connect of the digital
twin, with the insertion loss the model defines: both ports' connector losses plus the
fabric loss. The switch sets its whole set of made cross-connects in the twin service at
once (devices/twin_service.py), all or none. Editing a cross-connect, a port's loss or the
fabric loss remakes it in the twin; removing it, or disabling one of its ports, undoes it.

The switch is a fibre (space) switch, as the twin models it: light entering a port leaves by
one other port, whatever its wavelength, so a port carries at most one cross-connect. The
model's own rules (checked by the engine before the device sees an edit) refuse a port
reused on the same wavelength or beside a whole-fibre cross-connect, with
operation-failed / must-violation (RFC 7950 section 15.4); this device also refuses a port
reused on another wavelength, which a WDM switch could carry but this one cannot.

The device refuses, naming the offending entry in error-path (RFC 6241 Appendix A):
- in-use: a cross-connect needs a port another cross-connect already holds. The port is a
  resource that is already in use; the request itself is well-formed.
- invalid-value: a cross-connect or port entry names a port the switch does not have, or
  switch-id is not this switch's: the value itself is unacceptable here.
Nothing changes when an edit is refused.

State: each configured port's oper-status (down when disabled or when the span plugged into
it is cut), each cross-connect's insertion loss and oper-status (up when it is made and both
its ports are up). port-status-change and cross-connect-status-change are sent when those
statuses change, whatever the cause (a span cut or repaired, a configuration change).
"""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from devices.base import Device, NetworkContext
from devices.topology import SwitchSpec
from devices.twin import Endpoint, PlantChange
from devices.twin_service import TwinError
from netconf_core.datastore import empty_tree
from models.connectivity import switch_state
from models.ns import OPTICAL_SWITCH as NS
from netconf_core.errors import RPCError
from netconf_core.ns import decimal

MODULE = "qi-optical-switch"
ROOT_PATH = f"/{MODULE}:optical-switch"


@dataclass(frozen=True)
class PortConfig:
    port_id: int
    insertion_loss_db: float
    enabled: bool


@dataclass(frozen=True)
class CrossConnectConfig:
    name: str
    in_port: int
    out_port: int
    wavelength: int | None

    @property
    def path(self) -> str:
        return f"{ROOT_PATH}/cross-connects/cross-connect[name='{self.name}']"


@dataclass(frozen=True)
class SwitchConfig:
    switch_id: str
    fabric_loss_db: float
    ports: dict[int, PortConfig]
    cross_connects: tuple[CrossConnectConfig, ...]

    @classmethod
    def read(cls, tree: etree._Element) -> SwitchConfig | None:
        """The switch's configuration in a datastore tree whose defaults are filled in."""
        root = NS.find(tree, "optical-switch")
        if root is None:
            return None
        ports = {}
        for port in NS.all(root, "ports/port"):
            port_id = int(NS.text(port, "port-id"))
            ports[port_id] = PortConfig(port_id, float(NS.text(port, "insertion-loss")), NS.text(port, "enabled") == "true")
        cross_connects = tuple(
            CrossConnectConfig(NS.text(xc, "name"), int(NS.text(xc, "in-port")), int(NS.text(xc, "out-port")),
                               int(NS.text(xc, "wavelength")) if NS.find(xc, "wavelength") is not None else None)
            for xc in NS.all(root, "cross-connects/cross-connect"))
        return cls(NS.text(root, "switch-id"), float(NS.text(root, "fabric-loss")), ports, cross_connects)

    def loss_db(self, xc: CrossConnectConfig) -> float:
        ports = self.ports[xc.in_port], self.ports[xc.out_port]
        return sum(port.insertion_loss_db for port in ports) + self.fabric_loss_db

    def passes_light(self, xc: CrossConnectConfig) -> bool:
        """Whether the cross-connect is made in the fibre: both its ports enabled."""
        return self.ports[xc.in_port].enabled and self.ports[xc.out_port].enabled


class OpticalSwitchDevice(Device):
    kind = "optical-switch"
    modules = (MODULE,)
    watches_plant = True
    state_paths = (ROOT_PATH,)

    def __init__(self, spec: SwitchSpec, network: NetworkContext, port: int = 0):
        self.spec = spec
        super().__init__(spec.id, network, port)
        self.config: SwitchConfig | None = None
        self.made: dict[str, tuple[CrossConnectConfig, float]] = {}  # cross-connects in the twin, with their loss
        self.port_status: dict[int, str] = {}
        self.xc_status: dict[str, str] = {}
        self.spans: dict[int, str] = {}  # port -> the span plugged into it, from the twin's fibre plant

    def initial_config(self) -> list[etree._Element]:
        """Every port of the hardware, with the span it carries; the topology's insertion loss
        is the fabric's, connectors adding nothing. No cross-connects."""
        root = NS.element("optical-switch", leaves={"switch-id": self.id, "site": self.spec.site,
                                                     "fabric-loss": decimal(self.spec.insertion_loss_db, 3)})
        ports = NS.sub(root, "ports")
        for port_id in self.spec.ports:
            ports.append(NS.element("port", leaves={"port-id": port_id, "span": self.spans.get(port_id),
                                                     "insertion-loss": decimal(0, 3)}))
        return [root]

    async def start(self) -> None:
        """Boot: the fibre keeps no cross-connect of an earlier run; the configuration makes them."""
        await super().start()

    async def _start(self) -> None:
        spans = self.twin.plant["spans"]
        self.spans = {end.port: span_id for span_id, span in spans.items()
                      for end in map(Endpoint.parse, (span["a"], span["b"])) if end.node == self.id}
        await self._make({})
        await super()._start()

    async def _make(self, wanted: dict[str, tuple[CrossConnectConfig, float]]) -> None:
        """Have the twin hold exactly these cross-connects (all or none)."""
        try:
            await self.twin.request("PUT", f"/switches/{self.id}/cross-connects", self.id, {
                "cross_connects": [[xc.in_port, xc.out_port, loss] for xc, loss in wanted.values()]})
        except TwinError as error:
            raise RPCError("operation-failed", f"the twin service refused the cross-connects: {error}",
                           path=f"{ROOT_PATH}/cross-connects", path_nsmap={MODULE: NS}) from None

    # -- configuration ------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        config = SwitchConfig.read(self.server.with_defaults(after, "report-all", config_only=True))
        if config is not None:
            self._check(config)
        wanted = {xc.name: (xc, config.loss_db(xc)) for xc in config.cross_connects
                  if config.passes_light(xc)} if config else {}
        if wanted != self.made:
            await self._make(wanted)
            self.made = wanted
        self.config = config
        await self._report_changes("configuration changed")

    def _check(self, config: SwitchConfig) -> None:
        if config.switch_id != self.id:
            raise RPCError("invalid-value", f"switch-id {config.switch_id!r} is not this switch: it is {self.id!r}",
                           path=f"{ROOT_PATH}/switch-id", path_nsmap={MODULE: NS})
        hardware = set(self.spec.ports)
        holder: dict[int, str] = {}
        # Cross-connects already made claim their ports first, so that the new one is refused.
        for xc in sorted(config.cross_connects, key=lambda xc: xc.name not in self.made):
            for port in (xc.in_port, xc.out_port):
                if port not in hardware:
                    raise RPCError("invalid-value", f"cross-connect {xc.name!r} names port {port}, which switch "
                                   f"{self.id!r} does not have (its ports: {_port_list(hardware)})",
                                   path=xc.path, path_nsmap={MODULE: NS})
                if port in holder:
                    raise RPCError("in-use", f"cross-connect {xc.name!r} needs port {port}, already used by "
                                   f"cross-connect {holder[port]!r}; this fibre switch gives a port one "
                                   f"cross-connect, whatever the wavelength", path=xc.path, path_nsmap={MODULE: NS})
                holder[port] = xc.name
        for port in config.ports:
            if port not in hardware:
                raise RPCError("invalid-value", f"switch {self.id!r} has no port {port} "
                               f"(its ports: {_port_list(hardware)})",
                               path=f"{ROOT_PATH}/ports/port[port-id='{port}']", path_nsmap={MODULE: NS})

    # -- state and notifications --------------------------------------------------------

    def _port_up(self, port: int) -> bool:
        span = self.spans.get(port)
        return self.config.ports[port].enabled and (span is None or not self.twin.plant["spans"][span]["cut"])

    def _statuses(self) -> tuple[dict[int, str], dict[str, str]]:
        if self.config is None:
            return {}, {}
        ports = {port: "up" if self._port_up(port) else "down" for port in self.config.ports}
        xcs = {xc.name: "up" if xc.name in self.made and ports[xc.in_port] == ports[xc.out_port] == "up" else "down"
               for xc in self.config.cross_connects}
        return ports, xcs

    async def state(self) -> etree._Element | None:
        if self.config is None:
            return None
        port_status, xc_status = self._statuses()
        root = switch_state(port_status, [(xc.name, xc_status[xc.name], self.config.loss_db(xc))
                                          for xc in self.config.cross_connects])
        data = empty_tree()
        data.append(root)
        return data

    async def _report_changes(self, reason: str) -> None:
        """Notify every port and cross-connect whose status differs from the last one reported."""
        port_status, xc_status = self._statuses()
        for port, status in port_status.items():
            if self.port_status.get(port, "up") != status:
                await self.notify(NS.element("port-status-change", leaves={
                    "switch-id": self.id, "port-id": port, "oper-status": status, "reason": reason}))
        for name, status in xc_status.items():
            if self.xc_status.get(name, "down") != status:
                await self.notify(NS.element("cross-connect-status-change", leaves={
                    "switch-id": self.id, "name": name, "oper-status": status, "reason": reason}))
        self.port_status, self.xc_status = port_status, xc_status

    def plant_changed(self, change: PlantChange) -> None:
        if change.kind in ("span-cut", "span-repaired"):
            self.spawn(self._report_changes(f"span {change.element} {change.kind.removeprefix('span-')}"))
        elif change.kind == "resync":
            self.spawn(self._report_changes("the twin service was reconnected"))


def _port_list(ports: set[int]) -> str:
    return ", ".join(map(str, sorted(ports)))
