"""A federation of QKD networks on loopback: the domains of a multi-domain topology, each run
by its own operator, and the federation platform between them.

One device host runs the whole plant: one twin and one key network (the key managers'
classical channel spans the domains, as real key managers reach each other over the
Internet). Each domain runs its own stratum controllers and orchestrator over its own devices
(a domain `Stack`), and beside its orchestrator a `FederatedDomain` with its FederationAgent,
whose Fm endpoint is the orchestrator itself: the platform reaches it with its own SSH key,
authorised there as the account `federation`, and asks for segments as intents.

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
from models.key_manager import KmConfig, km_edit
from models.ns import FEDERATION
from orchestrator.federation import ENROL_USER, AgentEndpoint, FederationPlatform
from orchestrator.federation_agent import FederationAgent, PlatformEndpoint, Sae, SharingPolicy
from orchestrator.federation_domain import BorderLink, FederatedDomain, IntentSegments
from tools.stack import PKI_DIR, READY_TIMEOUT_S, KeyDeliveryPki, Stack, stack_passwords

ADMIN = "admin"
PLATFORM_USER = "federation"  # the platform's account on each domain's orchestrator
PRICE_PER_KBIT = "0.001"
POLL_S = 0.2
NS = {"f": FEDERATION}


def service_user(domain: str) -> str:
    """The platform's service-layer (Fa) account that acts for a domain's users."""
    return f"users-{domain}"


def service_request(service_id: str, payer: str, source: tuple[str, str], destination: tuple[str, str],
                    rate: int) -> str:
    """A cross-domain key service as a user asks the platform for it: source and destination
    are (SAE, member domain)."""
    ends = "".join(f"<{end}><sae-id>{sae}</sae-id><domain>{domain}</domain></{end}>"
                   for end, (sae, domain) in (("source", source), ("destination", destination)))
    return (f'<federation xmlns="{FEDERATION}"><services><service><service-id>{service_id}</service-id>'
            f"<requesting-member>{payer}</requesting-member>{ends}<rate>{rate}</rate></service></services>"
            "</federation>")


def border_links(topology: Topology, domain: str) -> tuple[BorderLink, ...]:
    """The domain's ends of the inter-domain spans that have a QKD interface at both ends."""
    attached = {i.attach: (n.id, i.id) for n in topology.qkd_nodes for i in n.interfaces}
    links = []
    for span in topology.inter_domain_spans():
        for near, far in ((span.a, span.b), (span.b, span.a)):
            if topology.domain_of(near.node) == domain and near in attached and far in attached:
                links.append(BorderLink(span.id, *attached[near], topology.domain_of(far.node) or "", attached[far][0]))
    return tuple(links)


class FederatedStack:
    def __init__(self, topology: Topology, state_dir: pathlib.Path | str | None = None, speed: float = 1.0, *,
                 passwords: dict[str, str] | None = None, insecure_sae_header: bool = False):
        """`passwords`, `insecure_sae_header`: as for a Stack (random passwords per federation,
        ETSI 014 over TLS with client certificates of one local CA, by default)."""
        if len(topology.domains) < 2:
            raise ValueError(f"topology {topology.name} has {len(topology.domains)} domain(s): a federation needs two "
                             "or more (give each site a domain)")
        self.topology = topology
        state = pathlib.Path(state_dir) if state_dir is not None else None
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
        self.platform = FederationPlatform({u: User(password=p) for u, p in self.passwords.items()}, ADMIN,
                                           state / "platform" if state else None, segment_handlers=self._segments)
        self.members: dict[str, FederatedDomain] = {}
        self._handlers: list[IntentSegments] = []

    def _segments(self, agent: AgentEndpoint) -> IntentSegments | None:
        """The platform's way to a member's orchestrator, where the member's agent said it is."""
        if agent.address is None:
            return None
        stack = self.stacks.get(agent.member_id)
        if stack is None or stack.orchestrator is None:
            return None   # not one of this federation's domains: no host key to pin
        handler = IntentSegments(agent.member_id, Endpoint(f"orchestrator of {agent.member_id}", agent.address,
                                                           agent.port, PLATFORM_USER, client_keys=(self.platform_key,),
                                                           host_key=stack.orchestrator.server.public_host_key),
                                 self.platform.segment_changed)
        handler.start()
        self._handlers.append(handler)
        return handler

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the plant, every domain's levels, the platform and every domain's federation
        glue; what was started is stopped again if a part cannot start."""
        try:
            await self.host.start()
            await asyncio.gather(*(stack.start(timeout) for stack in self.stacks.values()))
            await self._peer_border_key_managers()
            await self.platform.start()
            platform = PlatformEndpoint(self.host.network.host, self.platform.port, self.passwords[ENROL_USER],
                                        host_key=self.platform.server.public_host_key)
            for domain, stack in self.stacks.items():
                assert stack.orchestrator and stack.forwarding
                borders = border_links(self.topology, domain)
                saes = tuple(Sae(s.id, s.km) for s in stack.topology.saes)
                policy = SharingPolicy(frozenset(b.local_node for b in borders), saes=frozenset(s.sae_id for s in saes))
                agent = FederationAgent(domain, f"Operator {domain}", asyncssh.generate_private_key("ssh-ed25519"),
                                        platform, policy, agent_address=self.host.network.host,
                                        agent_port=stack.orchestrator.port)
                kms = {km.id for km in stack.topology.key_managers}
                member = FederatedDomain(agent, borders, saes, stack.endpoint("forwarding", stack.forwarding.port),
                                         stack.endpoint("orchestrator", stack.orchestrator.port),
                                         {row.id: stack.endpoint(row.id, row.port, row.host_key)
                                          for row in self.host.table() if row.id in kms})
                self.members[domain] = member
                await member.start(timeout)
        except BaseException:
            await self.stop()
            raise

    async def _peer_border_key_managers(self) -> None:
        """The operators of two neighbouring domains tell each other where their border key
        managers serve the KM-to-KM protocol: each border key manager gets the address of the
        one across its inter-domain link (a domain's service controller configures the peers it
        manages, and leaves these as they are)."""
        km_of_site = {km.site: km.id for km in self.topology.key_managers}
        km_of_node = {n.id: km_of_site.get(n.site) for n in self.topology.qkd_nodes}
        rows = {row.id: row for row in self.host.table()}
        for domain, stack in self.stacks.items():
            wanted: dict[str, dict[str, str]] = {}
            for border in border_links(self.topology, domain):
                near, far = km_of_node.get(border.local_node), km_of_node.get(border.peer_node)
                if near in rows and far in rows and rows[far].etsi014_url:
                    wanted.setdefault(near, {})[far] = rows[far].etsi014_url
            for km, peers in wanted.items():
                edit = km_edit(KmConfig(), KmConfig(peers=peers))
                async with await stack.endpoint(km, rows[km].port, rows[km].host_key).connect() as nc:
                    await nc.edit_config(etree.tostring(edit).decode())

    async def stop(self) -> None:
        """Stop everything, top-down (safe to call twice, or after a failed start)."""
        for member in self.members.values():
            await member.stop()
        self.members = {}
        await self.platform.stop()
        for handler in self._handlers:
            await handler.stop()
        self._handlers = []
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

    async def connect(self, user: str) -> NetconfClient:
        """A NETCONF session to the platform as one of its own accounts."""
        return await NetconfClient.connect(self.host.network.host, self.platform.port, user,
                                           password=self.passwords[user],
                                           known_hosts=trusted_host_keys(self.platform.server.public_host_key))

    async def federate(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every domain joins and is admitted; neighbours agree transit; returns once every
        inter-domain link is usable at the platform."""
        async with await self.connect(ADMIN) as admin:
            for member in self.members.values():
                await member.agent.apply()
            for domain in self.members:
                await admin.dispatch(f'<admit-member xmlns="{FEDERATION}"><member-id>{domain}</member-id>'
                                     "</admit-member>")
            for domain, member in self.members.items():
                await member.agent.wait_admitted(timeout)
                await member.agent.allow_service_user(service_user(domain))
            pairs = sorted({tuple(sorted((b.peer_member, d))) for d, m in self.members.items() for b in m.border_links})
            await admin.edit_config(f'<federation xmlns="{FEDERATION}"><agreements>' + "".join(
                f"<agreement><agreement-id>{a}-{b}</agreement-id><member-a>{a}</member-a><member-b>{b}</member-b>"
                f"<transit-allowed>true</transit-allowed><price-per-kbit>{PRICE_PER_KBIT}</price-per-kbit>"
                "</agreement>" for a, b in pairs) + "</agreements></federation>")
            async with asyncio.timeout(timeout):
                while not await self._links_usable(admin):
                    await asyncio.sleep(POLL_S)

    async def _links_usable(self, admin: NetconfClient) -> bool:
        data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><advertisements/></federation>'))
        available = {(ad.findtext("f:member-id", namespaces=NS), link.findtext("f:link-id", namespaces=NS)):
                     int(link.findtext("f:available", "0", namespaces=NS))
                     for ad in (data.iterfind(".//f:advertisement", NS) if data is not None else ())
                     for link in ad.iterfind("f:inter-domain-link", NS)}
        wanted = [(d, b.link_id) for d, m in self.members.items() for b in m.border_links]
        return all(available.get(key, 0) > 0 for key in wanted)
