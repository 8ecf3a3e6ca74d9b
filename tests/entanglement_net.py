"""What the entanglement tests share: the embedded entanglement network (devices/topologies/
entanglement.yaml) in a device host, with its fabric controller and entanglement service
controller, each on 127.0.0.1 and reached over NETCONF like any client would.

`split=True`: the network's twin service runs alone and the devices in three device hosts
(each with its own twin client, as separate processes would be): the end node qn-alice with
the fibre plant, the repeaters, and the end node qn-bob."""
from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

from controller.entanglement import EntanglementController
from controller.fabric import FabricController
from devices.base import DEMO_PASSWORDS, network_users
from devices.host import DeviceHost
from devices.topology import build_twin, embedded_topology
from devices.twin import Clock
from devices.twin_service import TwinAddress, TwinService
from netconf_core import Endpoint, NetconfClient, trusted_host_keys

TOPOLOGY = "entanglement.yaml"
SPLIT = ({"fibre-plant", "qn-alice"}, {"qn-r1", "qn-r2", "qn-r3"}, {"qn-bob"})


class EntanglementNet:
    def __init__(self, stack: AsyncExitStack, tmp_path) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.topology = embedded_topology(TOPOLOGY)
        self.users = network_users(DEMO_PASSWORDS)
        self.host: DeviceHost | None = None
        self.hosts: list[DeviceHost] = []
        self.twin_service: TwinService | None = None
        self.fabric: FabricController | None = None
        self.service: EntanglementController | None = None

    async def start(self, service: bool = True, split: bool = False) -> EntanglementNet:
        if split:
            self.twin_service = TwinService(build_twin(self.topology, Clock(), random.Random(11)), "net-token")
            await self.twin_service.start()
            self.stack.push_async_callback(self.twin_service.stop)
            address = TwinAddress("127.0.0.1", self.twin_service.port, "net-token")
            self.hosts = [DeviceHost(self.topology, twin=address, run=run) for run in SPLIT]
        else:
            self.hosts = [DeviceHost(self.topology, seed=11)]
        for host in self.hosts:
            await host.start()
            self.stack.push_async_callback(host.stop)
        self.host = self.hosts[0]
        nodes = [Endpoint(n.id, "127.0.0.1", self.host_of(n.id).device(n.id).port, "admin", "admin",
                          host_key=self.host_of(n.id).public_host_key) for n in self.topology.quantum_nodes]
        self.fabric = FabricController("fabric", nodes, self.users, resync_period=2.0)
        await self.fabric.start()
        self.stack.push_async_callback(self.fabric.stop)
        await self.fabric.wait_synced(20)
        if service:
            fabric = Endpoint("fabric", "127.0.0.1", self.fabric.port, "admin", "admin",
                              host_key=self.fabric.server.public_host_key)
            self.service = EntanglementController("entanglement", nodes, fabric, self.users, period=0.5)
            await self.service.start()
            self.stack.push_async_callback(self.service.stop)
            await self.service.wait_synced(20)
        return self

    async def session(self, name: str) -> NetconfClient:
        """An admin session to a device or to 'fabric' / 'entanglement', host key pinned."""
        if name == "fabric":
            port, key = self.fabric.port, self.fabric.server.public_host_key
        elif name == "entanglement":
            port, key = self.service.port, self.service.server.public_host_key
        else:
            port, key = self.host_of(name).device(name).port, self.host_of(name).public_host_key
        return await self.stack.enter_async_context(
            await NetconfClient.connect("127.0.0.1", port, "admin", "admin", known_hosts=trusted_host_keys(key)))

    def host_of(self, device_id: str) -> DeviceHost:
        return next(h for h in self.hosts if device_id in h.devices)

    @staticmethod
    async def until(condition, timeout: float = 15.0, step: float = 0.1):
        async with asyncio.timeout(timeout):
            while not (result := await condition()):
                await asyncio.sleep(step)
            return result


def run(tmp_path, test, service: bool = True, timeout: float = 90, split: bool = False) -> None:
    async def main():
        async with AsyncExitStack() as stack:
            net = await EntanglementNet(stack, tmp_path).start(service, split)
            await test(net)
    asyncio.run(asyncio.wait_for(main(), timeout))
