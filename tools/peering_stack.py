"""Two QKD network providers peered directly, with no federation platform (ITU-T Y.QKDNf
Figure 2), on loopback: the domains of a multi-domain topology's pair, each its own stack
(controllers and orchestrator over its own devices), and beside each orchestrator a
`PeeringAgent` with its `FederatedDomain`. The two agents talk over NETCONF only, each logging
in to the other with its provider's SSH key, host keys pinned both ways; each agent writes
intents to its own orchestrator as its `federation` account (an intent writer).

One device host runs the plant, as in tools/federated_stack.py; each provider configures its
border key managers with the KM-to-KM address of the one across the link (what the two
operators tell each other), so inter-domain keys travel between the providers' key managers.
"""
from __future__ import annotations

import asyncio
import secrets

import asyncssh

from devices.base import network_users
from devices.host import DeviceHost
from devices.topology import Topology
from netconf_core import Endpoint, NetconfClient, User, trusted_host_keys
from orchestrator.federation_agent import Sae, SharingPolicy
from orchestrator.federation_domain import FederatedDomain
from orchestrator.federation_peering import PeerAgent, PeeringAgent
from orchestrator.federation_service import peer_key_managers
from tools.federation_deploy import ADMIN, PLATFORM_USER, border_km_peers, border_links, service_user
from tools.stack import READY_TIMEOUT_S, KeyDeliveryPki, Stack, stack_passwords


class PeeredStack:
    def __init__(self, topology: Topology, pair: tuple[str, str], speed: float = 1.0):
        if not set(pair) <= set(topology.domains) or pair[0] == pair[1]:
            raise ValueError(f"peering needs two domains of topology {topology.name} ({', '.join(topology.domains)}), "
                             f"not {pair}")
        self.topology, self.pair = topology, pair
        self.pki = KeyDeliveryPki(None)
        self.host = DeviceHost(topology, speed=speed, users=network_users(stack_passwords(None)),
                               etsi014_tls=self.pki.server_tls, km_peer_tls=self.pki.km_peer_tls)
        self.keys = {d: asyncssh.generate_private_key("ssh-ed25519") for d in pair}
        self.host_keys = {d: asyncssh.generate_private_key("ssh-ed25519") for d in pair}
        self.stacks = {d: Stack(topology, host=self.host, domain=d, pki=self.pki, orchestrator_users={
            PLATFORM_USER: User(authorized_keys=[self.public(d)])}) for d in pair}
        self.passwords = {d: {ADMIN: secrets.token_urlsafe(12), service_user(d): secrets.token_urlsafe(12)}
                          for d in pair}
        self.agents: dict[str, PeeringAgent] = {}
        self.domains: dict[str, FederatedDomain] = {}

    def public(self, domain: str) -> str:
        return self.keys[domain].export_public_key().decode().strip()

    def other(self, domain: str) -> str:
        return self.pair[1] if domain == self.pair[0] else self.pair[0]

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        try:
            await self.host.start()
            await asyncio.gather(*(stack.start(timeout) for stack in self.stacks.values()))
            rows = {row.id: row for row in self.host.table()}
            urls = {km: row.etsi014_url for km, row in rows.items() if row.etsi014_url}
            for domain, stack in self.stacks.items():
                wanted = border_km_peers(self.topology, domain, urls)
                await peer_key_managers({km: stack.endpoint(km, rows[km].port, rows[km].host_key) for km in wanted},
                                        wanted)
            for domain, stack in self.stacks.items():
                self.agents[domain] = self._agent(domain, stack)
                await self.agents[domain].listen()
            for domain, agent in self.agents.items():
                other = self.other(domain)
                agent.peer = PeerAgent(other, self.host.network.host, self.agents[other].port, self.public(other),
                                       host_key=self.agents[other].server.public_host_key)
                await agent.start()
            for domain, stack in self.stacks.items():
                kms = {km.id for km in stack.topology.key_managers}
                self.domains[domain] = FederatedDomain(
                    self.agents[domain], border_links(self.topology, domain), self._saes(stack),
                    stack.endpoint("forwarding", stack.forwarding.port),
                    stack.endpoint("orchestrator", stack.orchestrator.port),
                    {row.id: stack.endpoint(row.id, row.port, row.host_key) for row in rows.values() if row.id in kms})
                await self.domains[domain].start(timeout)
        except BaseException:
            await self.stop()
            raise

    @staticmethod
    def _saes(stack: Stack) -> tuple[Sae, ...]:
        return tuple(Sae(s.id, s.km) for s in stack.topology.saes)

    def _agent(self, domain: str, stack: Stack) -> PeeringAgent:
        other = self.other(domain)
        borders = border_links(self.topology, domain)
        policy = SharingPolicy(frozenset(b.local_node for b in borders), saes=None)
        orchestrator = Endpoint(f"orchestrator of {domain}", self.host.network.host, stack.orchestrator.port,
                                PLATFORM_USER, client_keys=(self.keys[domain],),
                                host_key=stack.host_key_of("orchestrator"))
        users = {name: User(password=password) for name, password in self.passwords[domain].items()}
        return PeeringAgent(domain, f"Operator {domain}", self.keys[domain],
                            PeerAgent(other, self.host.network.host, 0, self.public(other)), policy, orchestrator,
                            users, (ADMIN,), (service_user(domain),), host=self.host.network.host,
                            host_key=self.host_keys[domain], period=0.5)

    async def stop(self) -> None:
        for domain in list(self.domains.values()):
            await domain.stop()
        self.domains = {}
        for agent in self.agents.values():
            await agent.stop()
        self.agents = {}
        for stack in self.stacks.values():
            await stack.stop()
        await self.host.stop()
        self.pki.cleanup()

    async def __aenter__(self) -> PeeredStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def sae_ssl(self, sae_id: str):
        return self.stacks[self.pair[0]].sae_ssl(sae_id)

    async def connect(self, domain: str, user: str = ADMIN) -> NetconfClient:
        """A session to a provider's peering agent as one of its accounts (host key pinned)."""
        agent = self.agents[domain]
        return await NetconfClient.connect(self.host.network.host, agent.port, user,
                                           password=self.passwords[domain][user],
                                           known_hosts=trusted_host_keys(agent.server.public_host_key))
