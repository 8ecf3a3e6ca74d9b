"""The device host: the elements of one topology as emulated devices, in one process.

The devices of the topology: the fibre plant device, an optical switch per switch, a QKD
node per QKD node, a key manager per key manager; in a multi-domain topology also a plant
device per domain (`fibre-plant-<domain>`) that shows only that domain's own fibre. Each
device listens on its own free port of 127.0.0.1 (a key manager also on a second one for
ETSI GS QKD 014). A host runs them all, or some (`run=`), the others running in other hosts.

The devices reach the fibre plant, the clock and the links' key streams through the
network's twin service (devices/twin_service.py) only: by default one the host runs on its
loopback for as long as it runs; with `twin=` (a `TwinAddress`) the network's own, shared
with the other hosts of the network.

`crash` stops a device as a crash would (its key state and datastores stay on disk);
`restart` builds it again from disk, on the same ports, so a client reconnects where it was.
Without a `state_dir` the host keeps its devices' state in a temporary directory, removed by
`stop`. The devices share one SSH host key, kept in the state directory (0600) unless one is
given (`host_key=`); `table()` gives its public line per device, for clients to pin.

The key managers serve ETSI 014 over TLS with client certificates: give `etsi014_tls`, a
function of a key manager's id returning its server TLS context (requiring client
certificates of the SAEs' CA; tools/pki.py makes them), and `km_peer_tls`, a function of a
key manager's id returning the client TLS context it presents to its peers: key managers
relay keys to each other over the network (devices/km_peer.py, docs/km-protocol.md), on the
same listener. Plain HTTP, where the caller names itself in an `X-SAE-ID` (or, between key
managers, `X-KM-ID`) header, only with `insecure_sae_header=True`.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import pathlib
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

from devices.base import Device, NetworkContext
from devices.key_manager import KeyManagerDevice
from devices.keystore import KeyNetwork
from devices.optical_switch import OpticalSwitchDevice
from devices.plant import DEVICE_ID as PLANT_ID, FibrePlantDevice
from devices.qkd_node import QkdNodeDevice
from devices.quantum_node import QuantumNodeDevice
from devices.topology import Topology, build_twin
from devices.twin import Clock
from devices.twin_service import SyncedClock, TwinAddress, TwinClient
from netconf_core import persistent_host_key, public_key_line
from netconf_core.server import HOST_KEY_FILE

log = logging.getLogger(__name__)
START_CONCURRENCY = 16  # devices of one host starting at once


def plant_of(domain: str) -> str:
    """The device id of a domain's own view of the fibre plant."""
    return f"{PLANT_ID}-{domain}"


@dataclass(frozen=True)
class DeviceRow:
    """Who listens where: one line of `DeviceHost.table()`."""

    id: str
    kind: str
    host: str
    port: int
    modules: tuple[str, ...]
    etsi014_url: str | None
    up: bool
    host_key: str | None = None   # the OpenSSH public line of its SSH host key, to pin
    restconf_url: str | None = None  # a QKD node's RESTCONF (ETSI GS QKD 015), when the host serves it


def key_manager_sites(topology: Topology) -> dict[str, str]:
    """Key manager id -> its site: the key manager of a site gets the streams of the links
    ending there."""
    return {km.id: km.site for km in topology.key_managers}


def device_builders(topology: Topology, network: NetworkContext | None) -> list[tuple[str, functools.partial]]:
    """Every device of the topology, by id, as a builder taking its ports (`port=`, and
    `etsi014_port=` for a key manager); a builder's `func` is the device's class (its kind and
    modules), so that the list can be read without a network (`network=None`)."""
    saes = {km.id: [s for s in topology.saes if s.km == km.id] for km in topology.key_managers}
    return ([(PLANT_ID, functools.partial(FibrePlantDevice, topology, network))]
            + [(plant_of(d), functools.partial(FibrePlantDevice, topology.domain_part(d), network, device_id=plant_of(d)))
               for d in topology.domains]
            + [(s.id, functools.partial(OpticalSwitchDevice, s, network)) for s in topology.switches]
            + [(n.id, functools.partial(QkdNodeDevice, n, network)) for n in topology.qkd_nodes]
            + [(km.id, functools.partial(KeyManagerDevice, km, saes[km.id], network)) for km in topology.key_managers]
            + [(n.id, functools.partial(QuantumNodeDevice, n, topology.entanglement_links, network))
               for n in topology.quantum_nodes])


class DeviceHost:
    def __init__(self, topology: Topology, state_dir: pathlib.Path | str | None = None, speed: float = 1.0,
                 seed: int | None = None, *, ports: dict[str, dict[str, int]] | None = None, restconf: bool = False,
                 twin: TwinAddress | None = None, run: set[str] | frozenset[str] | None = None,
                 **network: Any) -> None:
        """`ports`: by device id, the ports to listen on (`port`, and `etsi014_port` for a key
        manager), free ones otherwise; `restconf`: every QKD node serves RESTCONF too (on its
        `restconf_port` of `ports`, or a free one); `twin`: the network's twin service (which
        keeps the clock: `speed` and `seed` are its then), else the host runs one; `run`: the
        ids of the devices this host runs (default: all); `network`: further NetworkContext
        fields (users, host, host_key...)."""
        self.topology = topology
        unknown = sorted(set(run or ()) - {device_id for device_id, _ in device_builders(topology, None)})
        if unknown:
            raise ValueError(f"no device {', '.join(unknown)} in topology {topology.name}")
        self._scratch = tempfile.TemporaryDirectory(prefix="qstrata-devices-") if state_dir is None else None
        client = TwinClient(None)
        self.network = NetworkContext(None if twin else build_twin(topology, Clock(speed), random.Random(seed)),
                                      KeyNetwork(client.clock),
                                      state_dir=pathlib.Path(state_dir if state_dir is not None else self._scratch.name),
                                      twin_service=twin, key_manager_sites=key_manager_sites(topology), client=client,
                                      **network)
        self.network.keys.stream_source = client
        if "host_key" not in network:   # kept in the state directory (0600): a restart keeps it
            self.network.host_key = persistent_host_key(self.network.state_dir / HOST_KEY_FILE)
        if topology.key_managers and self.network.etsi014_tls is None and not self.network.insecure_sae_header:
            raise ValueError("the key managers serve ETSI 014 over TLS with client certificates: give etsi014_tls "
                             "(a TLS context per key manager id), or insecure_sae_header=True for plain HTTP")
        if topology.key_managers and self.network.etsi014_tls is not None and self.network.km_peer_tls is None:
            raise ValueError("the key managers relay keys to each other over mutually authenticated TLS: give "
                             "km_peer_tls (a client TLS context per key manager id) with etsi014_tls")
        self.devices: dict[str, Device] = {}
        self._builders: dict[str, Callable[..., Device]] = {}
        self._down: set[str] = set()
        self._outages: set[asyncio.Task] = set()
        self._joined = False
        for device_id, build in device_builders(topology, self.network):
            if run is not None and device_id not in run:
                continue
            if device_id in self.devices:
                raise ValueError(f"two devices of topology {topology.name} are called {device_id}")
            build = functools.partial(build, **(ports or {}).get(device_id, {}))
            if restconf and build.func is QkdNodeDevice and "restconf_port" not in build.keywords:
                build = functools.partial(build, restconf_port=0)
            self.devices[device_id] = self._prepare(build())
            self._builders[device_id] = build
        client.key_managers = [d.id for d in self.devices.values() if isinstance(d, KeyManagerDevice)]

    @property
    def clock(self) -> SyncedClock:
        """The network's emulated clock, as the twin service keeps it."""
        return self.network.client.clock

    async def start(self) -> None:
        """Start every device; if one cannot start, stop those already started and raise.

        The fibre plant devices start first (the plant's configuration sets the clock's
        speed), then the others START_CONCURRENCY at a time: a device's start mostly waits
        (the twin service, datastore files), so a big host starts in a fraction of the time."""
        await self.network.join()   # the twin service, for as long as the host runs
        self._joined = True
        started: list[Device] = []
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(device: Device) -> None:
            async with gate:
                await device.start()
                started.append(device)

        plants = [d for d in self.devices.values() if isinstance(d, FibrePlantDevice)]
        try:
            for device in plants:
                await start(device)
            results = await asyncio.gather(*(start(d) for d in self.devices.values() if d not in plants),
                                           return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        except BaseException:
            for device in reversed(started):
                await device.stop()
            self._joined = False
            await self.network.leave()
            raise

    async def stop(self) -> None:
        for task in list(self._outages):
            task.cancel()
        for device_id, device in reversed(self.devices.items()):
            if device_id not in self._down:
                await device.stop()
        if self._joined:
            self._joined = False
            await self.network.leave()
        self._down = set(self.devices)
        if self._scratch is not None:
            self._scratch.cleanup()

    async def __aenter__(self) -> DeviceHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def device(self, device_id: str) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            raise ValueError(f"no device {device_id!r} in network {self.topology.name} "
                             f"(devices: {', '.join(self.devices)})")
        return device

    def table(self) -> list[DeviceRow]:
        return [DeviceRow(d.id, d.kind, self.network.host, d.port, d.modules,
                          d.etsi014_url if isinstance(d, KeyManagerDevice) else None, d.id not in self._down,
                          d.server.public_host_key,
                          d.restconf.url if isinstance(d, QkdNodeDevice) and d.restconf is not None else None)
                for d in self.devices.values()]

    @property
    def public_host_key(self) -> str:
        """The OpenSSH public line of the host key every device of this host serves with."""
        return public_key_line(self.network.host_key)

    # -- faults ------------------------------------------------------------------------------

    async def crash(self, device_id: str) -> None:
        """Stop the device as a crash would: its sessions end, its ports close; what it saved
        on disk (datastores, key pools, undelivered keys) stays."""
        device = self.device(device_id)
        if device_id in self._down:
            raise ValueError(f"device {device_id} is already down")
        await device.stop()
        self._down.add(device_id)

    async def restart(self, device_id: str) -> None:
        """Start the device again from disk (crashing it first if it runs), on the same ports:
        its startup configuration, and for a key manager its pools and undelivered keys."""
        old = self.device(device_id)
        if device_id not in self._down:
            await self.crash(device_id)
        ports = {"port": old.port}
        if isinstance(old, KeyManagerDevice):
            ports["etsi014_port"] = old.etsi014_port
        if isinstance(old, QkdNodeDevice) and old.restconf is not None:
            ports["restconf_port"] = old.restconf.port
        device = self._prepare(self._builders[device_id](**ports))
        await device.start()
        self.devices[device_id] = device
        self._down.discard(device_id)

    def _prepare(self, device: Device) -> Device:
        if isinstance(device, KeyManagerDevice):
            device.on_restart = functools.partial(self._outage, device.id)
        return device

    def _outage(self, device_id: str, outage_s: float) -> None:
        """Crash the device, then restart it after `outage_s` seconds of emulated time. Runs as
        a task, so that the NETCONF reply of the action that asked for it goes out first."""
        async def run() -> None:
            try:
                await self.crash(device_id)
                await asyncio.sleep(outage_s / self.clock.speed)
                await self.restart(device_id)
            except Exception:
                log.exception("the outage of device %s failed", device_id)
        task = asyncio.get_running_loop().create_task(run(), name=f"outage of {device_id}")
        self._outages.add(task)
        task.add_done_callback(self._outages.discard)
