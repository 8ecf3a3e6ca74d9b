"""The `federation-peer` level: one provider's peering agent (orchestrator/federation_peering.py)
with its FederatedDomain, as `qstrata run federation-peer` runs it from its deployment file
(read by tools/deployment.py)."""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class PeeringProvider:
    """One provider's standing peering: its agent, its FederatedDomain, its border key managers
    peered with the ones across the link (what `qstrata run federation-peer` runs). The levels
    it is a client of may start after it (`qstrata up` starts every process at once): the key
    managers are peered by a loop that backs off until they answer, and the domain starts once
    its forwarding controller and orchestrator answer."""

    def __init__(self, agent, domain, key_managers: dict, border_key_managers: dict[str, dict[str, str]]):
        from netconf_core import ReconcileLoop
        from orchestrator.federation_service import BACKOFF_CAP_S, ERRORS

        self.agent, self.domain = agent, domain
        self.key_managers, self.border_key_managers = key_managers, border_key_managers
        self.peered = asyncio.Event()
        self._domain_start: asyncio.Task | None = None
        self._loop = ReconcileLoop(f"peering {agent.member_id}: border key managers", self._peer_key_managers,
                                   backoff_cap=BACKOFF_CAP_S, expected=ERRORS, logger=log)

    @property
    def port(self) -> int:
        return self.agent.port

    @property
    def links(self) -> dict:
        """The domain's levels it is a client of (named in a not-in-sync warning)."""
        return {"forwarding": self.domain.forwarding, "orchestrator": self.domain.orchestrator}

    async def start(self) -> None:
        await self.agent.start()
        self._loop.start()
        self._loop.wake()
        self._domain_start = asyncio.get_running_loop().create_task(self._start_domain())

    async def _peer_key_managers(self) -> None:
        from orchestrator.federation_service import peer_key_managers

        if not self.peered.is_set():
            await peer_key_managers(self.key_managers, self.border_key_managers)
            self.peered.set()

    async def _start_domain(self) -> None:
        from orchestrator.federation_service import ERRORS

        try:
            await self.domain.start(None)
        except ERRORS as error:
            log.warning("peering %s: first pass failed (%s); the domain's loop tries again", self.agent.member_id,
                        error)
            self.domain._loop.start()   # FederatedDomain.start stops short of it when its first pass fails

    async def wait_synced(self, timeout: float) -> None:
        """Until the key managers are peered and the domain's levels reached (TimeoutError after `timeout`)."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(self.peered.wait(), asyncio.shield(self._domain_start))

    async def stop(self) -> None:
        await self._loop.stop()
        if self._domain_start is not None and not self._domain_start.done():
            self._domain_start.cancel()
        await asyncio.gather(*(t for t in (self._domain_start,) if t is not None), return_exceptions=True)
        await self.domain.stop()
        await self.agent.stop()


def peer_level(d):
    """The peering of deployment `d` (level federation-peer)."""
    from fractions import Fraction

    import asyncssh

    from devices.topology import load_topology
    from orchestrator.federation_agent import Sae, SharingPolicy
    from orchestrator.federation_domain import FederatedDomain
    from orchestrator.federation_peering import PeerAgent, PeeringAgent
    from tools.deployment import PLATFORM_ADMIN, SERVICE_USER, endpoint, host_key, netconf_users
    from tools.federation_deploy import border_links

    part = d.part
    topology = load_topology(part.topology)
    links = tuple(b for b in border_links(topology, part.member_id) if b.peer_member == part.peer_member_id)
    saes = tuple(Sae(s.id, s.km) for s in topology.domain_part(part.member_id).saes)
    entry = d.peer(part.peer)
    key = asyncssh.read_private_key(str(entry.private_key_file))
    peer = PeerAgent(part.peer_member_id, entry.address, entry.port, part.peer_public_key, entry.host_key,
                     str(entry.known_hosts) if entry.known_hosts else None, part.peer_member_name)
    policy = SharingPolicy(frozenset(b.local_node for b in links), capacity_share=Fraction(part.capacity_share)
                           .limit_denominator(1000), saes=None)
    agent = PeeringAgent(part.member_id, part.member_name or f"Operator {part.member_id}", key, peer, policy,
                         endpoint(d.peer(part.orchestrator)), netconf_users(d), d.access(PLATFORM_ADMIN),
                         d.access(SERVICE_USER), host=d.listen.address, port=d.listen.port, host_key=host_key(d),
                         store_dir=d.state_dir)
    roles = (part.peer, part.forwarding, part.orchestrator)
    key_managers = {p.name: endpoint(p) for p in d.peers if p.name not in roles}
    domain = FederatedDomain(agent, links, saes, endpoint(d.peer(part.forwarding)), endpoint(d.peer(part.orchestrator)),
                             key_managers)
    return PeeringProvider(agent, domain, key_managers, part.border_key_managers)
