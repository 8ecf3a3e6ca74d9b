"""What every emulated device shares: a NETCONF server of the engine serving the device's
modules, the twin service and key network of its emulated network, and two hooks in the
sysrepo style: `apply` reacts to a new running configuration (raise RPCError to refuse it),
`state` supplies operational data at get time. Devices never touch sessions or framing.

Devices reach the fibre plant, the clock and the link key streams only through the network's
twin service (devices/twin_service.py), with the context's `TwinClient`: the service of
another process or host (`twin_service`), or one the context runs itself on its host's
loopback around the `twin` it is given."""
from __future__ import annotations

import asyncio
import copy
import pathlib
import secrets
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import asyncssh
from lxml import etree

from devices.keystore import KeyNetwork
from devices.twin import PlantChange, Twin
from devices.twin_service import TwinAddress, TwinClient, TwinService
from netconf_core import NetconfServer, Schema, User, schema_for, standard_nacm
from netconf_core.datastore import empty_tree
from netconf_core.ns import Namespace

ADMIN_USER = "admin"
MONITOR_USER = "monitor"
# Fixed passwords, for tests and the README's examples only: a stack generates its own.
DEMO_PASSWORDS = {ADMIN_USER: "admin", MONITOR_USER: "monitor"}


def network_users(passwords: dict[str, str]) -> dict[str, User]:
    """The accounts of an emulated network's devices: `admin` (read-write) and `monitor`
    (read-only), with the passwords given."""
    return {user: User(password=passwords[user]) for user in (ADMIN_USER, MONITOR_USER)}


@dataclass
class NetworkContext:
    """What the devices of one emulated network share. `twin`: the plant an embedded twin
    service serves (on `host`, a free port) while a device runs; None with `twin_service`, the
    address of the network's own twin service."""

    twin: Twin | None
    keys: KeyNetwork
    users: dict[str, User] = field(default_factory=lambda: network_users(DEMO_PASSWORDS))
    read_write: tuple[str, ...] = (ADMIN_USER,)
    read_only: tuple[str, ...] = (MONITOR_USER,)
    host: str = "127.0.0.1"
    state_dir: pathlib.Path | None = None
    host_key: asyncssh.SSHKey = field(default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519"))
    # ETSI 014 of the key managers: a TLS context requiring client certificates, made per key
    # manager id (the standard's way: the SAE is its certificate's common name); or, only with
    # insecure_sae_header, plain HTTP where the caller names itself in an X-SAE-ID header.
    etsi014_tls: Callable[[str], ssl.SSLContext] | None = None
    # The KM-to-KM interface (devices/km_peer.py), served beside ETSI 014: a client TLS context
    # per key manager id, presenting its certificate (CN and DNS name = km-id) to its peers.
    km_peer_tls: Callable[[str], ssl.SSLContext] | None = None
    insecure_sae_header: bool = False
    # Objects the devices of one kind share within this network, by name (the QKD nodes'
    # registry, with which the two ends of a link find each other).
    shared: dict[str, Any] = field(default_factory=dict)
    twin_service: TwinAddress | None = None
    key_manager_sites: dict[str, str] = field(default_factory=dict)  # who may fetch which streams
    client: TwinClient = field(default_factory=lambda: TwinClient(None))
    _service: TwinService | None = field(default=None, init=False, repr=False)
    _members: int = field(default=0, init=False, repr=False)

    async def join(self) -> TwinClient:
        """The client of the twin service, started by the first member (the embedded service
        too) and stopped when the last one leaves."""
        if self._members == 0:
            if self.twin_service is None:
                if self.twin is None:
                    raise ValueError("a network needs a twin to serve, or the address of its twin service")
                self._service = TwinService(self.twin, secrets.token_urlsafe(32), self.host, 0,
                                            self.key_manager_sites)
                await self._service.start()
                self.client.address = TwinAddress(self.host, self._service.port, self._service.token)
            else:
                self.client.address = self.twin_service
            try:
                await self.client.start()
            except BaseException:
                await self._stop_service()
                raise
        self._members += 1
        return self.client

    async def leave(self) -> None:
        self._members -= 1
        if self._members == 0:
            await self.client.stop()
            await self._stop_service()

    async def _stop_service(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None

    @property
    def service(self) -> TwinService | None:
        """The embedded twin service, while it runs."""
        return self._service

    def device_dir(self, device_id: str) -> pathlib.Path | None:
        return self.state_dir / device_id if self.state_dir else None


class Device:
    """Base of the emulated devices. Subclasses set `modules` and override `apply`, `state`
    and `initial_config`."""

    kind: ClassVar[str] = "device"
    modules: ClassVar[tuple[str, ...]] = ()
    watches_plant: ClassVar[bool] = False  # hear the twin service's events (`twin_event`) while running
    # The top-level nodes `state` serves ("/module:node"): it runs only for a <get> whose filter
    # can select one of them. None: for every <get>.
    state_paths: ClassVar[tuple[str, ...] | None] = None
    # The device calls `self.server.state_changed()` whenever what `state` gives changes, so
    # on-change subscriptions to its operational state need not poll (NetconfServer.signals_state).
    signals_state: ClassVar[bool] = False

    def __init__(self, device_id: str, network: NetworkContext, port: int = 0):
        self.id = device_id
        self.network = network
        directory = network.device_dir(device_id)
        self.server = NetconfServer(
            schema_for(self.modules), network.users, host=network.host, port=port,
            host_key=network.host_key, datastore_dir=directory / "datastores" if directory else None,
            nacm=standard_nacm(list(network.read_write), list(network.read_only)), name=device_id)
        self.server.signals_state = self.signals_state
        self.server.on_change(self.apply)
        self.server.add_state_provider(self.state, list(self.state_paths) if self.state_paths else None)
        self._tasks: set[asyncio.Task] = set()
        self._unsubscribe_plant: Callable[[], None] | None = None
        self._joined = False

    @property
    def twin(self) -> TwinClient:
        """The network's twin service, as this device speaks to it."""
        return self.network.client

    @property
    def schema(self) -> Schema:
        return self.server.schema

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        """Bring the device up with its saved configuration, or its initial one the first time."""
        await self.network.join()
        self._joined = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        if self.watches_plant:
            self._unsubscribe_plant = self.twin.watch(self.twin_event)
        running = self.server.running()
        initial = self.initial_config()
        if initial is not None and not _has_own_config(running, self.modules, self.schema):
            tree = copy.deepcopy(running)
            tree.extend(initial)
            await self.server.replace_running(tree)
            self.server.save_startup()
        else:
            await self.apply(empty_tree(), running)
        await self.server.start()

    async def stop(self) -> None:
        if self._unsubscribe_plant is not None:
            self._unsubscribe_plant()
            self._unsubscribe_plant = None
        await self.server.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._joined:
            self._joined = False
            await self.network.leave()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task of the device, cancelled by `stop`: work started by synchronous
        callbacks such as twin subscriptions."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def twin_event(self, event: dict) -> None:
        """An event of the twin service (for devices that set `watches_plant`): plant changes
        go to `plant_changed`; after a lost event stream ('resync') anything may have changed."""
        if event["type"] == "plant":
            self.plant_changed(PlantChange(event["kind"], event["element"]))
        elif event["type"] == "resync":
            self.plant_changed(PlantChange("resync", ""))

    def plant_changed(self, change: PlantChange) -> None:
        """A span or cross-connect of the twin changed (called for devices that set
        `watches_plant`)."""

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        """Make the device do what `after` (the new running configuration) says."""

    async def state(self) -> etree._Element | None:
        """Operational (config false) data, as a <data> tree merged into <get> replies."""
        return None

    def initial_config(self) -> list[etree._Element] | None:
        """Top-level config elements the device boots with when it has none saved."""
        return None

    async def notify(self, notification: etree._Element) -> None:
        await self.server.notify(notification)


def _has_own_config(running: etree._Element, modules: tuple[str, ...], schema: Schema) -> bool:
    own = {schema.namespace_of_module(m) for m in modules}
    return any(etree.QName(child).namespace in own for child in running)


def element(ns: str, tag: str, text: object = None, leaves: dict[str, object] | None = None) -> etree._Element:
    """<tag>text</tag> in namespace `ns`, with one leaf child per entry of `leaves` that is not None
    (`Namespace.element`, for the callers that hold a namespace as a string)."""
    return Namespace(ns).element(tag, text, leaves=leaves)
