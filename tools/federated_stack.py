"""A federation of QKD networks on loopback: the domains of a multi-domain topology, each run
by its own operator, and the federation platform between them.

One device host runs the whole plant: one twin and one key network (the key managers'
classical channel spans the domains, as real key managers reach each other over the
Internet). Each domain runs its own stratum controllers and orchestrator over its own devices
(a domain `Stack`), and beside its orchestrator a `FederatedDomain` with its FederationAgent,
whose Fm endpoint is the orchestrator itself (it peers the domain's border key managers with
their neighbours' from the advertisements): the platform reaches it with its own SSH key,
authorised there as the account `federation`, and asks for segments as intents. The platform
starts first: each orchestrator reaches it as its domain's service-layer account
(`users-<domain>`, host key pinned) to escalate roaming intents.

`federate` plays the operators and the federation's administrator: every domain applies, the
administrator admits it, each member lets its service-layer account request services, the
administrator agrees transit between every two neighbouring domains at one price, and it
returns once every inter-domain link is up and usable at the platform.
"""
from __future__ import annotations

import asyncio
import pathlib
import secrets

import asyncssh
from lxml import etree

from devices.host import DeviceHost
from devices.topology import Topology
from devices.base import network_users
from netconf_core import Endpoint, NetconfClient, User, trusted_host_keys
from models.federation import ServiceRequest, service_config
from orchestrator.federation import ENROL_USER, FederationPlatform
from orchestrator.federation_agent import FederationAgent, PlatformEndpoint, Sae, SharingPolicy
from orchestrator.federation_domain import FederatedDomain
from orchestrator.federation_service import MemberOrchestrators, OrchestratorPin
from tools.federation_deploy import (ADMIN, PLATFORM_USER, PRICE_PER_KBIT, border_links,  # noqa: F401
                                     federate, service_user)
from tools.stack import PKI_DIR, READY_TIMEOUT_S, KeyDeliveryPki, Stack, stack_passwords



def service_request(service_id: str, payer: str, source: tuple[str, str], destination: tuple[str, str],
                    rate: int) -> etree._Element:
    """A cross-domain key service as a user asks the platform for it: source and destination
    are (SAE, member domain)."""
    return service_config(ServiceRequest(service_id, payer, *source, *destination, rate))


class FederatedStack:
    def __init__(self, topology: Topology, state_dir: pathlib.Path | str | None = None, speed: float = 1.0, *,
                 passwords: dict[str, str] | None = None, insecure_sae_header: bool = False,
                 service_types: dict[str, tuple[str, ...]] | None = None):
        """`passwords`, `insecure_sae_header`: as for a Stack (random passwords per federation,
        ETSI 014 over TLS with client certificates of one local CA, by default);
        `service_types`: what each SAE's application offers, as its domain advertises it."""
        if len(topology.domains) < 2:
            raise ValueError(f"topology {topology.name} has {len(topology.domains)} domain(s): a federation needs two "
                             "or more (give each site a domain)")
        self.topology = topology
        self.service_types = dict(service_types or {})
        state = self.state = pathlib.Path(state_dir) if state_dir is not None else None
        self.pki = None if insecure_sae_header else KeyDeliveryPki(state / PKI_DIR if state else None)
        users = network_users(passwords if passwords is not None else stack_passwords(state))
        self.host = DeviceHost(topology, state_dir=state / "devices" if state else None, speed=speed, users=users,
                               etsi014_tls=self.pki.server_tls if self.pki else None,
                               km_peer_tls=self.pki.km_peer_tls if self.pki else None,
                               insecure_sae_header=insecure_sae_header)
        self.platform_key = asyncssh.generate_private_key("ssh-ed25519")
        platform_account = {PLATFORM_USER: User(authorized_keys=[self.platform_key.export_public_key().decode()])}
        self.stacks = {d: Stack(topology, state / d if state else None, host=self.host, domain=d,
                                orchestrator_users=platform_account, pki=self.pki) for d in topology.domains}
        self.passwords = {user: secrets.token_urlsafe(12)
                          for user in (ADMIN, ENROL_USER, *map(service_user, topology.domains))}
        # The platform pins each member's orchestrator host key (here: its in-process stack's).
        self.orchestrators = MemberOrchestrators(self.platform_key, self._orchestrator_pin, PLATFORM_USER)
        self.platform = FederationPlatform({u: User(password=p) for u, p in self.passwords.items()}, ADMIN,
                                           state / "platform" if state else None,
                                           segment_handlers=self.orchestrators)
        self.orchestrators.on_change = self.platform.segment_changed
        self.members: dict[str, FederatedDomain] = {}

    def _orchestrator_pin(self, member_id: str) -> OrchestratorPin | None:
        stack = self.stacks.get(member_id)
        if stack is None or stack.orchestrator is None:
            return None   # not one of this federation's domains: no host key to pin
        return OrchestratorPin(stack.orchestrator.server.public_host_key)

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the plant, every domain's levels, the platform and every domain's federation
        glue; what was started is stopped again if a part cannot start."""
        try:
            await self.host.start()
            await self.platform.start()  # first: each orchestrator escalates roaming intents to it
            for domain, stack in self.stacks.items():
                stack.orchestrator_federation = self.fa_endpoint(service_user(domain))
            await asyncio.gather(*(stack.start(timeout) for stack in self.stacks.values()))
            for domain in self.stacks:
                self.members[domain] = self.member(domain, asyncssh.generate_private_key("ssh-ed25519"))
                await self.members[domain].start(timeout)
        except BaseException:
            await self.stop()
            raise

    def member(self, domain: str, key: asyncssh.SSHKey, state_dir: pathlib.Path | None = None) -> FederatedDomain:
        """Domain `domain`'s federation glue, its agent logging in with `key` (a restarted
        agent is given the member's key again), its charging baselines kept in `state_dir`
        (default: the domain's `agent` directory of the stack's state, if it has one)."""
        stack = self.stacks[domain]
        assert stack.orchestrator and stack.forwarding
        platform = PlatformEndpoint(self.host.network.host, self.platform.port, self.passwords[ENROL_USER],
                                    host_key=self.platform.server.public_host_key)
        borders = border_links(self.topology, domain)
        saes = tuple(Sae(s.id, s.km) for s in stack.topology.saes)
        # Every SAE its key managers serve, a visiting one too (mobility).
        policy = SharingPolicy(frozenset(b.local_node for b in borders), saes=None, service_types=self.service_types)
        agent = FederationAgent(domain, f"Operator {domain}", key, platform, policy,
                                agent_address=self.host.network.host, agent_port=stack.orchestrator.port)
        kms = {km.id for km in stack.topology.key_managers}
        return FederatedDomain(agent, borders, saes, stack.endpoint("forwarding", stack.forwarding.port),
                               stack.endpoint("orchestrator", stack.orchestrator.port),
                               {row.id: stack.endpoint(row.id, row.port, row.host_key)
                                for row in self.host.table() if row.id in kms},
                               state_dir=state_dir or (self.state / domain / "agent" if self.state else None))

    async def stop(self) -> None:
        """Stop everything, top-down (safe to call twice, or after a failed start)."""
        for member in self.members.values():
            await member.stop()
        self.members = {}
        await self.platform.stop()
        await self.orchestrators.stop()
        for stack in self.stacks.values():
            await stack.stop()
        await self.host.stop()
        if self.pki is not None:
            self.pki.cleanup()

    async def __aenter__(self) -> FederatedStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def sae_ssl(self, sae_id: str):
        """A TLS context presenting SAE `sae_id`'s client certificate (None in the insecure
        header mode)."""
        return self.stacks[next(iter(self.stacks))].sae_ssl(sae_id)

    def fa_endpoint(self, user: str) -> Endpoint:
        """How a level reaches the platform as one of its service-layer accounts (host key pinned)."""
        return Endpoint("federation platform", self.host.network.host, self.platform.port, user,
                        self.passwords[user], host_key=self.platform.server.public_host_key)

    async def connect(self, user: str) -> NetconfClient:
        """A NETCONF session to the platform as one of its own accounts."""
        return await NetconfClient.connect(self.host.network.host, self.platform.port, user,
                                           password=self.passwords[user],
                                           known_hosts=trusted_host_keys(self.platform.server.public_host_key))

    async def federate(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every domain joins and is admitted; neighbours agree transit; returns once every
        inter-domain link is usable at the platform (tools.federation_deploy.federate, with
        this process playing each domain's operator too)."""
        async def join() -> None:
            for member in self.members.values():
                await member.agent.apply()

        async def admitted() -> None:
            for domain, member in self.members.items():
                await member.agent.wait_admitted(timeout)
                await member.agent.allow_service_user(service_user(domain))

        async with await self.connect(ADMIN) as admin:
            await federate(admin, {d: m.border_links for d, m in self.members.items()}, timeout, join=join,
                           admitted=admitted)
