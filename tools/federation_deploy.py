"""A federation of QKD networks as operators run it, and what the in-process federation
(tools/federated_stack.py) shares with it.

- The operators' side, used by both: `border_links` (what a domain's operator knows of its
  inter-domain links, from a multi-domain topology), and `federate`, what the federation's
  administrator does (admit each applicant, agree transit between neighbours, wait until
  every inter-domain link is usable). `border_km_peers` fills the agent deployment's optional
  `border_key_managers` (agents peer their border key managers from the advertisements).
- `platform_level` and `agent_level`: the objects `qstrata run federation` and `qstrata run
  federation-agent` run, from their deployment files (docs/deployment.md).

`qstrata up` of a topology with domains (tools/cmd_up.py, FederatedProcessStack) runs those
levels, each domain's own, and the platform as processes, then calls `federate`; with
`--peering A,B` it runs two domains' levels and their peering agents (level federation-peer),
no platform, and calls `agree_peering`.
"""
from __future__ import annotations

import asyncio
from fractions import Fraction

from devices.topology import Topology
from models.ns import FEDERATION
from netconf_core import NetconfClient
from orchestrator.federation_domain import BorderLink

ADMIN = "admin"
PLATFORM_USER = "federation"  # the platform's account on each domain's orchestrator
PRICE_PER_KBIT = "0.001"
POLL_S = 0.2
NS = {"f": FEDERATION}
DOMAIN_LEVELS = ("connectivity", "forwarding", "service", "orchestrator")
PLATFORM, AGENT = "federation", "federation-agent"
FEDERATION_PORTS_FILE = "federation-ports.json"
FEDERATION_CREDENTIALS_FILE = "federation-credentials.json"
CLIENT_KEY_FILE = "client_ed25519_key"   # the platform's key towards the members' orchestrators
MEMBER_KEY_FILE = "member_ed25519_key"   # a member's key on the platform


def service_user(domain: str) -> str:
    """The platform's service-layer (Fa) account that acts for a domain's users."""
    return f"users-{domain}"


# --- what an operator knows of its domain ---------------------------------------------------------

def border_links(topology: Topology, domain: str) -> tuple[BorderLink, ...]:
    """The domain's ends of the inter-domain spans that have a QKD interface at both ends."""
    attached = {i.attach: (n.id, i.id) for n in topology.qkd_nodes for i in n.interfaces}
    links = []
    for span in topology.inter_domain_spans():
        for near, far in ((span.a, span.b), (span.b, span.a)):
            if topology.domain_of(near.node) == domain and near in attached and far in attached:
                links.append(BorderLink(span.id, *attached[near], topology.domain_of(far.node) or "", attached[far][0]))
    return tuple(links)


def border_km_peers(topology: Topology, domain: str, km_urls: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each border key manager of the domain -> the key manager across its inter-domain link
    and where that one serves the KM-to-KM protocol (`km_urls`: km-id -> URL): what the
    operators of two neighbouring domains tell each other."""
    km_of_site = {km.site: km.id for km in topology.key_managers}
    km_of_node = {n.id: km_of_site.get(n.site) for n in topology.qkd_nodes}
    wanted: dict[str, dict[str, str]] = {}
    for border in border_links(topology, domain):
        near, far = km_of_node.get(border.local_node), km_of_node.get(border.peer_node)
        if near is not None and far in km_urls:
            wanted.setdefault(near, {})[far] = km_urls[far]
    return wanted


# --- what the federation's administrator does -------------------------------------------------------

async def federate(admin: NetconfClient, members: dict[str, tuple[BorderLink, ...]], timeout: float, *,
                   join=None, admitted=None) -> None:
    """As the platform's administrator (session `admin`): admit every domain of `members`
    (domain -> its border links) once it has applied, agree transit between every two
    neighbours at one price, and return once every inter-domain link is usable at the
    platform. `join()`: the operators apply (awaited first; standing agents apply by
    themselves); `admitted()`: what the operators do once admitted (awaited before the
    agreements). A TimeoutError says what was still awaited."""
    waiting = set(members)
    wanted = [(d, b.link_id) for d, links in members.items() for b in links]
    stage = "the operators' applications"
    try:
        async with asyncio.timeout(timeout):
            if join is not None:
                await join()
            while waiting:
                stage = f"the applications of {', '.join(sorted(waiting))}"
                status = await member_statuses(admin)
                for domain in sorted(waiting):
                    if status.get(domain) in ("applied", "suspended"):
                        await admin.dispatch(f'<admit-member xmlns="{FEDERATION}"><member-id>{domain}</member-id>'
                                             "</admit-member>")
                    if status.get(domain) in ("applied", "suspended", "admitted"):
                        waiting.discard(domain)
                if waiting:
                    await asyncio.sleep(POLL_S)
            stage = "the operators, once admitted"
            if admitted is not None:
                await admitted()
            pairs = sorted({tuple(sorted((b.peer_member, d))) for d, links in members.items() for b in links})
            await admin.edit_config(f'<federation xmlns="{FEDERATION}"><agreements>' + "".join(
                f"<agreement><agreement-id>{a}-{b}</agreement-id><member-a>{a}</member-a><member-b>{b}</member-b>"
                f"<transit-allowed>true</transit-allowed><price-per-kbit>{PRICE_PER_KBIT}</price-per-kbit>"
                "</agreement>" for a, b in pairs) + "</agreements></federation>")
            while missing := await links_missing(admin, wanted):
                stage = "usable inter-domain links: " + ", ".join(f"{d} {link}" for d, link in missing)
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"not federated within {timeout:g} s: still waiting for {stage}") from None


async def agree_peering(first: NetconfClient, second: NetconfClient, agreement_id: str, timeout: float) -> None:
    """What two directly peered providers' operators do (sessions to their own peering agents
    as administrators): the first proposes an agreement at PRICE_PER_KBIT, the second takes it
    once its agent sees the offer; return once both agents hold it in force. Nothing is
    written when it is already in force (a restart with the same state directory)."""
    from decimal import Decimal

    from models.federation import Agreement
    from models.federation_peering import accept_agreement, agreement_entry, read_peering

    async def peering(nc: NetconfClient):
        return read_peering(await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"/>')))

    async def agreed(nc: NetconfClient) -> bool:
        state = await peering(nc)
        return state is not None and any(a.agreement_id == agreement_id and a.status == "agreed"
                                         for a in state.agreements)

    stage = f"agreement {agreement_id} in force at both providers"
    try:
        async with asyncio.timeout(timeout):
            if await agreed(first) and await agreed(second):
                return
            mine, theirs = (await peering(first)), (await peering(second))
            if mine is None or theirs is None:
                raise ValueError("a session is not to a peering agent (it has no peering state)")
            entry = agreement_entry(Agreement(agreement_id, frozenset((mine.member_id, theirs.member_id)), False,
                                              Decimal(PRICE_PER_KBIT), None))
            config = FEDERATION.element("federation")
            FEDERATION.sub(config, "agreements").append(entry)
            await first.edit_config(config)
            stage = f"{theirs.member_id} to see {mine.member_id}'s offer of {agreement_id}"
            while not any(o.agreement_id == agreement_id for o in (await peering(second)).offers):
                await asyncio.sleep(POLL_S)
            await second.dispatch(accept_agreement(agreement_id))
            stage = f"agreement {agreement_id} in force at both providers"
            while not (await agreed(first) and await agreed(second)):
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"not peered within {timeout:g} s: still waiting for {stage}") from None


async def member_statuses(admin: NetconfClient) -> dict[str, str]:
    """Every member's membership status, as the administrator sees it."""
    data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><members><member><member-id/><status/>'
                                       "</member></members></federation>"))
    return {m.findtext("f:member-id", namespaces=NS): m.findtext("f:status", "", namespaces=NS)
            for m in (data.iterfind(".//f:member", NS) if data is not None else ())}


async def links_missing(admin: NetconfClient, wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (member, link) of `wanted` that are not advertised with capacity left."""
    data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><advertisements/></federation>'))
    available = {(ad.findtext("f:member-id", namespaces=NS), link.findtext("f:link-id", namespaces=NS)):
                 int(link.findtext("f:available", "0", namespaces=NS))
                 for ad in (data.iterfind(".//f:advertisement", NS) if data is not None else ())
                 for link in ad.iterfind("f:inter-domain-link", NS)}
    return [key for key in wanted if available.get(key, 0) <= 0]


async def service_users_allowed(admin: NetconfClient, users: dict[str, str]) -> bool:
    """Whether each member (member -> account) lists that account as a service user."""
    data = await admin.get_config(filter=("subtree", f'<federation xmlns="{FEDERATION}"><members><member>'
                                                     "<member-id/><service-user/></member></members></federation>"))
    listed = {(m.findtext("f:member-id", namespaces=NS), u.text)
              for m in (data.iterfind(".//f:member", NS) if data is not None else ())
              for u in m.iterfind("f:service-user", NS)}
    return all(item in listed for item in users.items())


# --- the two levels, from their deployments ---------------------------------------------------------

def platform_level(d):
    """The federation platform of deployment `d` (level federation)."""
    import asyncssh

    from orchestrator.federation import FederationPlatform
    from orchestrator.federation_service import MemberOrchestrators, OrchestratorPin, StandingPlatform
    from tools.deployment import PLATFORM_ADMIN, host_key, netconf_users

    part = d.part
    pins = {m.id: OrchestratorPin(m.host_key, str(m.known_hosts) if m.known_hosts else None) for m in part.members}
    orchestrators = MemberOrchestrators(asyncssh.read_private_key(str(part.client_key_file)), pins.get,
                                        part.client_user)
    platform = FederationPlatform(netconf_users(d), d.access(PLATFORM_ADMIN)[0], d.state_dir, d.listen.port,
                                  host=d.listen.address, segment_handlers=orchestrators, host_key=host_key(d),
                                  name=d.name)
    return StandingPlatform(platform, orchestrators)


def agent_level(d):
    """One member domain's federation agent of deployment `d` (level federation-agent)."""
    import asyncssh

    from devices.topology import load_topology
    from orchestrator.federation_agent import FederationAgent, PlatformEndpoint, Sae, SharingPolicy
    from orchestrator.federation_domain import FederatedDomain
    from orchestrator.federation_service import StandingMember
    from tools.deployment import endpoint, secret

    part = d.part
    member = part.member_id
    if part.topology is not None:
        topology = load_topology(part.topology)
        links = border_links(topology, member)
        saes = tuple(Sae(s.id, s.km) for s in topology.domain_part(member).saes)
    else:
        links = tuple(BorderLink(e.link_id, e.local_node, e.local_interface, e.peer_member, e.peer_node)
                      for e in part.border_links)
        saes = tuple(Sae(e.id, e.km) for e in part.saes)
    platform_peer, orchestrator = d.peer(part.platform), d.peer(part.orchestrator)
    platform = PlatformEndpoint(platform_peer.address, platform_peer.port,
                                secret(platform_peer.password, platform_peer.password_file) or "",
                                enrol_user=platform_peer.user, host_key=platform_peer.host_key,
                                known_hosts=str(platform_peer.known_hosts) if platform_peer.known_hosts else None)
    policy = SharingPolicy(frozenset(b.local_node for b in links),
                           frozenset(part.share_with) if part.share_with is not None else None,
                           Fraction(part.capacity_share).limit_denominator(1000),
                           None if part.visitors else frozenset(s.sae_id for s in saes))
    agent = FederationAgent(member, part.member_name or f"Operator {member}",
                            asyncssh.read_private_key(str(part.key_file)), platform, policy,
                            agent_address=part.fm_address or orchestrator.address,
                            agent_port=part.fm_port or orchestrator.port)
    key_managers = {p.name: endpoint(p) for p in d.device_peers()}
    domain = FederatedDomain(agent, links, saes, endpoint(d.peer(part.forwarding)), endpoint(orchestrator),
                             key_managers, state_dir=d.state_dir)
    return StandingMember(domain, key_managers, part.border_key_managers, part.service_users)


def agent_where(d) -> str:
    """Where the agent's ready line says it is."""
    platform = d.peer(d.part.platform)
    return f"platform {platform.address}:{platform.port} as member {d.part.member_id}"
