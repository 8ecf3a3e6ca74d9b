"""The `federation-peer` level: one provider's peering agent (orchestrator/federation_peering.py)
with its FederatedDomain, as `qstrata run federation-peer` runs it from its deployment file
(read by tools/deployment.py)."""
from __future__ import annotations


class PeeringProvider:
    """One provider's standing peering: its agent, its FederatedDomain, its border key managers
    peered with the ones across the link (what `qstrata run federation-peer` runs)."""

    def __init__(self, agent, domain, key_managers: dict, border_key_managers: dict[str, dict[str, str]]):
        self.agent, self.domain = agent, domain
        self.key_managers, self.border_key_managers = key_managers, border_key_managers

    @property
    def port(self) -> int:
        return self.agent.port

    async def start(self) -> None:
        from orchestrator.federation_service import peer_key_managers

        await self.agent.start()
        await peer_key_managers(self.key_managers, self.border_key_managers)
        await self.domain.start(None)

    async def stop(self) -> None:
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
