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

Security of the emulation, as a real deployment would have it:
- every client link pins the host key of the server it calls (the devices' shared key, each
  controller's own), and every host key is kept in the state directory (0600), so a restart
  with the same state_dir keeps them;
- the users admin (read-write) and monitor (read-only) get random passwords per stack, kept
  in `<state_dir>/credentials.json` (0600) and reused on restart; `passwords=DEMO_PASSWORDS`
  (devices.base) keeps admin/admin and monitor/monitor, for tests and the README;
- the key managers serve ETSI 014 over TLS with client certificates of a local CA under
  `<state_dir>/pki` (tools/pki.py; a temporary directory without state_dir), one certificate
  per key manager and per SAE, whose common name is the SAE_ID (`sae_credential`);
  `insecure_sae_header=True` serves plain HTTP with the X-SAE-ID header instead.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import ssl
import tempfile
from dataclasses import dataclass

from controller.connectivity import ConnectivityController
from controller.entanglement import EntanglementController
from controller.fabric import FabricController
from controller.forwarding import ForwardingController
from controller.service import ServiceController
from devices.base import ADMIN_USER, MONITOR_USER, network_users
from devices.host import PLANT_ID, DeviceHost, plant_of
from devices.topology import Topology
from netconf_core import Endpoint, User
from orchestrator.intents import Orchestrator
from devices.km_peer import client_ssl_context as km_client_context
from tools.pki import Credential, LocalCA, client_context, curl_command, server_context

CONNECTIVITY_MODULES = {"qi-fibre-plant", "qi-optical-switch"}
FORWARDING_MODULES = {"etsi-qkd-sdn-node"}
SERVICE_MODULES = {"qi-key-manager"}
QUANTUM_NODE_MODULES = {"qi-quantum-node"}  # the fabric and entanglement service controllers'
READY_TIMEOUT_S = 60.0
CREDENTIALS_FILE = "credentials.json"
PKI_DIR = "pki"


def stack_passwords(state_dir: pathlib.Path | None) -> dict[str, str]:
    """A random password per user of the network (admin, monitor), kept in
    `<state_dir>/credentials.json` (mode 0600) and reused from there on restart; without a
    state directory, new ones each time."""
    path = state_dir / CREDENTIALS_FILE if state_dir is not None else None
    if path is not None and path.exists():
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and all(isinstance(stored.get(u), str) for u in (ADMIN_USER, MONITOR_USER)):
            return {u: stored[u] for u in (ADMIN_USER, MONITOR_USER)}
    passwords = {user: secrets.token_urlsafe(12) for user in (ADMIN_USER, MONITOR_USER)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            json.dump(passwords, out, indent=1)
        os.replace(scratch, path)
    return passwords


def add_security_options(parser) -> None:
    """The flags of `qstrata up` and `qstrata devices up` that weaken the defaults, for demos."""
    parser.add_argument("--demo-credentials", action="store_true",
                        help="fixed users admin/admin and monitor/monitor instead of random passwords per stack "
                             f"(kept in <state-dir>/{CREDENTIALS_FILE})")
    parser.add_argument("--insecure-sae-header", action="store_true",
                        help="serve ETSI 014 over plain HTTP, the caller named by an X-SAE-ID header (anyone may pose "
                             "as any SAE), instead of HTTPS with a client certificate per SAE")


def demo_passwords(demo: bool) -> dict[str, str] | None:
    """`passwords` of a Stack for --demo-credentials (None: generated)."""
    from devices.base import DEMO_PASSWORDS

    return dict(DEMO_PASSWORDS) if demo else None


def sae_curl(pki: KeyDeliveryPki, master: str, slave: str, url: str) -> str:
    """A working curl command line: SAE `master` asks its key manager (ETSI 014 at `url`) for
    the status of its keys with `slave`, with its client certificate."""
    return curl_command(pki.sae(master), f"{url}/api/v1/keys/{slave}/status")


class KeyDeliveryPki:
    """The local CA of a stack's ETSI 014 APIs: a server certificate per key manager, a client
    certificate per SAE (CN = SAE_ID), under `directory` (a temporary one when None)."""

    def __init__(self, directory: pathlib.Path | None) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="qstrata-pki-") if directory is None else None
        self.ca = LocalCA(directory if directory is not None else pathlib.Path(self._scratch.name))

    def km(self, km_id: str) -> Credential:
        """Key manager `km_id`'s certificate: CN and a DNS subject alternative name are its id,
        so that its peers check whom they reached (docs/km-protocol.md)."""
        return self.ca.server(km_id, hosts=(km_id,))

    def server_tls(self, km_id: str) -> ssl.SSLContext:
        """The TLS context of key manager `km_id`'s ETSI 014 API (DeviceHost's `etsi014_tls`)."""
        return server_context(self.km(km_id))

    def km_peer_tls(self, km_id: str) -> ssl.SSLContext:
        """The TLS context key manager `km_id` calls its peers with (DeviceHost's `km_peer_tls`)."""
        return km_client_context(*self.km(km_id).ssl_files())

    def sae(self, sae_id: str) -> Credential:
        return self.ca.client(sae_id)

    def cleanup(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


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
    host_key: str | None = None    # the OpenSSH public line of its SSH host key: what clients pin


class Stack:
    """The levels of one network. With `host` and `domain`, those of one domain of the host's
    multi-domain topology; `orchestrator_users` are further accounts of the orchestrator that
    may manage intents and nothing else (a federation platform's).

    `passwords` (user -> password, for admin and monitor): fixed ones (tests, the README's
    demo); by default random ones per stack (`stack_passwords`). `insecure_sae_header`: ETSI
    014 over plain HTTP with the X-SAE-ID header instead of TLS with client certificates.
    Over a given `host`, its users, key managers and CA (`pki`) are the host's owner's."""

    def __init__(self, topology: Topology, state_dir: pathlib.Path | str | None = None, speed: float = 1.0,
                 orchestrator_port: int = 0, *, host: DeviceHost | None = None, domain: str | None = None,
                 orchestrator_users: dict[str, User] | None = None, passwords: dict[str, str] | None = None,
                 insecure_sae_header: bool = False, pki: KeyDeliveryPki | None = None):
        self.topology = topology.domain_part(domain) if domain else topology
        self.state_dir = pathlib.Path(state_dir) if state_dir is not None else None
        self.owns_host = host is None
        self.pki = pki
        self._owns_pki = False
        if host is None:
            if self.pki is None and not insecure_sae_header:
                self.pki = KeyDeliveryPki(self.state_dir / PKI_DIR if self.state_dir else None)
                self._owns_pki = True
            users = network_users(passwords if passwords is not None else stack_passwords(self.state_dir))
            host = DeviceHost(topology, state_dir=self.state_dir / "devices" if self.state_dir else None, speed=speed,
                              users=users, etsi014_tls=self.pki.server_tls if self.pki else None,
                              km_peer_tls=self.pki.km_peer_tls if self.pki else None,
                              insecure_sae_header=insecure_sae_header)
        self.host = host
        self.users = self.host.network.users
        self.orchestrator_users = dict(orchestrator_users or {})
        self.orchestrator_federation: Endpoint | None = None  # the platform, for roaming intents (set before start)
        self.devices = {plant_of(domain) if domain else PLANT_ID} | {
            d.id for d in (*self.topology.switches, *self.topology.qkd_nodes, *self.topology.key_managers,
                           *self.topology.quantum_nodes)}
        self.connectivity: ConnectivityController | None = None
        self.forwarding: ForwardingController | None = None
        self.service: ServiceController | None = None
        self.orchestrator: Orchestrator | None = None   # a client of the three controllers
        # With quantum nodes in the topology, the entanglement levels too (a client of the nodes).
        self.fabric: FabricController | None = None
        self.entanglement: EntanglementController | None = None
        self.orchestrator_port = orchestrator_port
        self._intent_scratch: tempfile.TemporaryDirectory | None = None

    def _credentials(self, user: str) -> tuple[str, str]:
        password = self.users[user].password
        assert password is not None
        return user, password

    def endpoint(self, name: str, port: int, host_key: str | None = None) -> Endpoint:
        """How the levels (and the federation glue) reach a server of this stack as its
        administrator, pinning its host key: `host_key`, or that of the level or device `name`."""
        user, password = self._credentials(ADMIN_USER)
        return Endpoint(name, self.host.network.host, port, user, password,
                        host_key=host_key or self.host_key_of(name))

    def host_key_of(self, name: str) -> str:
        """The OpenSSH public host key line of a controller, the orchestrator, or a device."""
        level = {"connectivity": self.connectivity, "forwarding": self.forwarding, "service": self.service,
                 "orchestrator": self.orchestrator, "fabric": self.fabric,
                 "entanglement": self.entanglement}.get(name)
        if level is not None:
            return level.server.public_host_key
        if name in self.host.devices:
            return self.host.public_host_key
        raise ValueError(f"no level or device {name!r} in this stack (is it started?)")

    def _devices(self, modules: set[str]) -> list[Endpoint]:
        return [self.endpoint(row.id, row.port, row.host_key) for row in self.host.table()
                if row.id in self.devices and modules & set(row.modules)]

    def sae_credential(self, sae_id: str) -> Credential | None:
        """The client certificate of SAE `sae_id` for ETSI 014 (None in the insecure header mode)."""
        return self.pki.sae(sae_id) if self.pki is not None else None

    def sae_ssl(self, sae_id: str) -> ssl.SSLContext | None:
        """A TLS context presenting SAE `sae_id`'s certificate to its key manager (None in the
        insecure header mode, where the SAE names itself in the X-SAE-ID header)."""
        credential = self.sae_credential(sae_id)
        return client_context(credential) if credential is not None else None

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
            if self.topology.quantum_nodes:
                self.fabric = FabricController("fabric", self._devices(QUANTUM_NODE_MODULES), self.users,
                                               connectivity=self.endpoint("connectivity", self.connectivity.port),
                                               state_dir=self._state("fabric"))
                await self.fabric.start()
                self.entanglement = EntanglementController(
                    "entanglement", self._devices(QUANTUM_NODE_MODULES), self.endpoint("fabric", self.fabric.port),
                    self.users, state_dir=self._state("entanglement"))
                await self.entanglement.start()
            self.orchestrator = Orchestrator(
                "orchestrator", self.endpoint("service", self.service.port),
                self.endpoint("forwarding", self.forwarding.port),
                self.endpoint("connectivity", self.connectivity.port), {**self.users, **self.orchestrator_users},
                self._intent_store(), read_write=(ADMIN_USER,), intent_writers=tuple(self.orchestrator_users),
                port=self.orchestrator_port,
                entanglement=self.endpoint("entanglement", self.entanglement.port) if self.entanglement else None,
                federation=self.orchestrator_federation)
            await self.orchestrator.start()
            await self.connectivity.wait_synced(timeout)
            if self.topology.qkd_nodes or not self.topology.quantum_nodes:  # an entanglement network has no QKD node
                await self.forwarding.wait_synced(timeout)
            await self.service.wait_synced(timeout)
            for level in (self.fabric, self.entanglement):
                if level is not None:
                    await level.wait_synced(timeout)
            await self.orchestrator.wait_connected(timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every level top-down (safe to call twice, or after a failed start)."""
        for controller in (self.orchestrator, self.entanglement, self.fabric, self.service, self.forwarding,
                           self.connectivity):
            if controller is not None:
                await controller.stop()
        self.orchestrator = self.service = self.forwarding = self.connectivity = None
        self.entanglement = self.fabric = None
        if self.owns_host:
            await self.host.stop()
        if self._intent_scratch is not None:
            self._intent_scratch.cleanup()
            self._intent_scratch = None
        if self._owns_pki and self.pki is not None:
            self.pki.cleanup()

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
        rows = [Level(row.kind, row.id, row.host, row.port, read_write, read_only, row.etsi014_url, row.host_key)
                for row in self.host.table() if row.id in self.devices]
        for level, server in (("connectivity", self.connectivity), ("forwarding", self.forwarding),
                              ("service", self.service), ("fabric", self.fabric), ("entanglement", self.entanglement),
                              ("orchestrator", self.orchestrator)):
            if server is not None:
                rows.append(Level(level, server.name, self.host.network.host, server.port, read_write, read_only,
                                  host_key=server.server.public_host_key))
        return rows
