"""The whole stack in one asyncio process: the emulated devices of a topology and the three
stratum controllers wired to them, every level a NETCONF server on its own free port of
127.0.0.1.

    devices (DeviceHost)  <-  connectivity controller  <-  forwarding controller
                          <-  service controller (key managers, and the forwarding controller)

Each controller is a NETCONF client of the level below, exactly as an external client would
be: the wiring is a list of `Endpoint`s taken from the device host's table (by the modules a
device serves) and the controllers' own ports. The orchestrator sits on top, a client of all
three controllers, with its intent store under state_dir (or in a temporary directory).

A stack can also be one domain's of a multi-domain topology (tools/federated_stack.py): over a
device host that runs the whole plant and that it neither starts nor stops, its controllers
see only the domain's own devices and its own view of the fibre plant.
"""
from __future__ import annotations

import pathlib
import tempfile
from dataclasses import dataclass

from controller.connectivity import ConnectivityController
from controller.forwarding import ForwardingController
from controller.service import ServiceController
from devices.base import ADMIN_USER, MONITOR_USER
from devices.host import PLANT_ID, DeviceHost, plant_of
from devices.topology import Topology
from netconf_core import Endpoint, User
from orchestrator.intents import Orchestrator

CONNECTIVITY_MODULES = {"qi-fibre-plant", "qi-optical-switch"}
FORWARDING_MODULES = {"etsi-qkd-sdn-node"}
SERVICE_MODULES = {"qi-key-manager"}
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Level:
    """One NETCONF server of the stack: a device or a controller, and how to log in."""

    level: str                     # device kind, or connectivity / forwarding / service / orchestrator
    name: str
    host: str
    port: int
    read_write: tuple[str, str]    # (username, password)
    read_only: tuple[str, str]
    etsi014_url: str | None = None


class Stack:
    """The levels of one network. With `host` and `domain`, those of one domain of the host's
    multi-domain topology; `orchestrator_users` are further accounts of the orchestrator that
    may manage intents and nothing else (a federation platform's)."""

    def __init__(self, topology: Topology, state_dir: pathlib.Path | str | None = None, speed: float = 1.0,
                 orchestrator_port: int = 0, *, host: DeviceHost | None = None, domain: str | None = None,
                 orchestrator_users: dict[str, User] | None = None):
        self.topology = topology.domain_part(domain) if domain else topology
        self.state_dir = pathlib.Path(state_dir) if state_dir is not None else None
        self.owns_host = host is None
        self.host = host or DeviceHost(topology, state_dir=self.state_dir / "devices" if self.state_dir else None,
                                       speed=speed)
        self.users = self.host.network.users
        self.orchestrator_users = dict(orchestrator_users or {})
        self.devices = {plant_of(domain) if domain else PLANT_ID} | {
            d.id for d in (*self.topology.switches, *self.topology.qkd_nodes, *self.topology.key_managers)}
        self.connectivity: ConnectivityController | None = None
        self.forwarding: ForwardingController | None = None
        self.service: ServiceController | None = None
        self.orchestrator: Orchestrator | None = None   # a client of the three controllers
        self.orchestrator_port = orchestrator_port
        self._intent_scratch: tempfile.TemporaryDirectory | None = None

    def _credentials(self, user: str) -> tuple[str, str]:
        password = self.users[user].password
        assert password is not None
        return user, password

    def endpoint(self, name: str, port: int) -> Endpoint:
        """How the levels (and the federation glue) reach a server of this stack as its administrator."""
        user, password = self._credentials(ADMIN_USER)
        return Endpoint(name, self.host.network.host, port, user, password)

    def _devices(self, modules: set[str]) -> list[Endpoint]:
        return [self.endpoint(row.id, row.port) for row in self.host.table()
                if row.id in self.devices and modules & set(row.modules)]

    def _state(self, name: str) -> pathlib.Path | None:
        return self.state_dir / name if self.state_dir else None

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start every level bottom-up and wait until each controller has read its devices.
        If a level cannot start, what was started is stopped again."""
        try:
            if self.owns_host:
                await self.host.start()
            self.connectivity = ConnectivityController(
                "connectivity", self._devices(CONNECTIVITY_MODULES), self.users, state_dir=self._state("connectivity"))
            await self.connectivity.start()
            self.forwarding = ForwardingController(
                "forwarding", self._devices(FORWARDING_MODULES),
                self.endpoint("connectivity", self.connectivity.port), self.users,
                km_by_site={km.site: km.id for km in self.topology.key_managers}, state_dir=self._state("forwarding"))
            await self.forwarding.start()
            self.service = ServiceController(
                "service", self._devices(SERVICE_MODULES), self.endpoint("forwarding", self.forwarding.port),
                self.users, connectivity=self.endpoint("connectivity", self.connectivity.port),
                state_dir=self._state("service"))
            await self.service.start()
            self.orchestrator = Orchestrator(
                "orchestrator", self.endpoint("service", self.service.port),
                self.endpoint("forwarding", self.forwarding.port),
                self.endpoint("connectivity", self.connectivity.port), {**self.users, **self.orchestrator_users},
                self._intent_store(), read_write=(ADMIN_USER,), intent_writers=tuple(self.orchestrator_users),
                port=self.orchestrator_port)
            await self.orchestrator.start()
            await self.connectivity.wait_synced(timeout)
            await self.forwarding.wait_synced(timeout)
            await self.service.wait_synced(timeout)
            await self.orchestrator.wait_connected(timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every level top-down (safe to call twice, or after a failed start)."""
        for controller in (self.orchestrator, self.service, self.forwarding, self.connectivity):
            if controller is not None:
                await controller.stop()
        self.orchestrator = self.service = self.forwarding = self.connectivity = None
        if self.owns_host:
            await self.host.stop()
        if self._intent_scratch is not None:
            self._intent_scratch.cleanup()
            self._intent_scratch = None

    def _intent_store(self) -> pathlib.Path:
        """The orchestrator's intent store: under state_dir, or a temporary directory."""
        if self.state_dir is not None:
            return self.state_dir / "orchestrator"
        self._intent_scratch = tempfile.TemporaryDirectory(prefix="qstrata-intents-")
        return pathlib.Path(self._intent_scratch.name)

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def table(self) -> list[Level]:
        """Every NETCONF server of the stack: devices first, then the controllers bottom-up."""
        read_write, read_only = self._credentials(ADMIN_USER), self._credentials(MONITOR_USER)
        rows = [Level(row.kind, row.id, row.host, row.port, read_write, read_only, row.etsi014_url)
                for row in self.host.table() if row.id in self.devices]
        for level, server in (("connectivity", self.connectivity), ("forwarding", self.forwarding),
                              ("service", self.service), ("orchestrator", self.orchestrator)):
            if server is not None:
                rows.append(Level(level, server.name, self.host.network.host, server.port, read_write, read_only))
        return rows
