"""What the entanglement tests share: the embedded entanglement network (devices/topologies/
entanglement.yaml) in a device host, with its fabric controller and entanglement service
controller, each on 127.0.0.1 and reached over NETCONF like any client would."""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from controller.entanglement import EntanglementController
from controller.fabric import FabricController
from devices.base import DEMO_PASSWORDS, network_users
from devices.host import DeviceHost
from devices.topology import embedded_topology
from netconf_core import Endpoint, NetconfClient, trusted_host_keys

TOPOLOGY = "entanglement.yaml"


class EntanglementNet:
    def __init__(self, stack: AsyncExitStack, tmp_path) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.topology = embedded_topology(TOPOLOGY)
        self.users = network_users(DEMO_PASSWORDS)
        self.host: DeviceHost | None = None
        self.fabric: FabricController | None = None
        self.service: EntanglementController | None = None

    async def start(self, service: bool = True) -> EntanglementNet:
        self.host = DeviceHost(self.topology, seed=11)
        await self.host.start()
        self.stack.push_async_callback(self.host.stop)
        key = self.host.public_host_key
        nodes = [Endpoint(n.id, "127.0.0.1", self.host.device(n.id).port, "admin", "admin", host_key=key)
                 for n in self.topology.quantum_nodes]
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
            port, key = self.host.device(name).port, self.host.public_host_key
        return await self.stack.enter_async_context(
            await NetconfClient.connect("127.0.0.1", port, "admin", "admin", known_hosts=trusted_host_keys(key)))

    @staticmethod
    async def until(condition, timeout: float = 15.0, step: float = 0.1):
        async with asyncio.timeout(timeout):
            while not (result := await condition()):
                await asyncio.sleep(step)
            return result


def run(tmp_path, test, service: bool = True, timeout: float = 90) -> None:
    async def main():
        async with AsyncExitStack() as stack:
            net = await EntanglementNet(stack, tmp_path).start(service)
            await test(net)
    asyncio.run(asyncio.wait_for(main(), timeout))
