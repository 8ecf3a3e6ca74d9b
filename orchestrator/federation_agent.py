"""A domain's federation agent: what a domain's orchestrator hosts to take part in a federation
of QKD networks. It talks to the federation platform over NETCONF (the Fm face) and only over it.

It applies to join once, through the platform's enrolment account, registering the member's SSH
public key; from then on it logs in as the member with that key. Once admitted it advertises
what the provider's sharing policy allows of the domain's resources (border nodes, inter-domain
links and the capacity offered on them), and keeps that advertisement current: when the domain
changes (`update`) and when members join or leave (a link can only name a peer the platform
knows). The advertisement is computed from the policy alone, so nothing of the domain's
internal topology ever leaves the agent. It publishes the member's agreement offers and takes
up other members' (the broker: pre-established agreements, Y.QKDNf 6.2). It reports what its
domain's key managers counted at the two ends of each segment of a cross-domain service, for
charging, reads what the other members advertise (their border nodes and links towards it),
and withdraws cleanly.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import asyncssh

from models.federation import (Advertisement, AgreementOffer, DeliveryReport, ExternalLink, Node, Sae,
                               advertisement_config, delivery_report, offer_config, read_members, take_offer)
from models.ns import FEDERATION
from netconf_core import ReconcileLoop, UnpinnedEndpoint, trusted_host_keys
from netconf_core.client import NetconfClient, SessionClosedError
from netconf_core.errors import RPCError

log = logging.getLogger(__name__)

POLL = 0.05  # seconds between two reads of the membership while waiting for admission
RECONNECT_MAX_S = 5.0  # longest wait between two attempts to reach a platform that dropped the session
MEMBERSHIP_EVENTS = ("subtree", f'<member-joined xmlns="{FEDERATION}"/><member-left xmlns="{FEDERATION}"/>')


@dataclass(frozen=True)
class PlatformEndpoint:
    """How to reach the federation platform, and how to know it is the platform: `host_key`,
    its OpenSSH public host key line (NetconfServer.public_host_key), or `known_hosts`, a
    known_hosts file; one of them is required (a changed or unknown key is refused)."""

    host: str
    port: int
    enrol_password: str
    enrol_user: str = "enrol"
    known_hosts: Any = None
    host_key: str | None = None

    def __post_init__(self) -> None:
        if not self.host_key and not self.known_hosts:
            raise UnpinnedEndpoint(f"the federation platform at {self.host}:{self.port} pins no host key: give "
                                   "host_key or known_hosts")

    def trusted(self) -> Any:
        """The `known_hosts` argument of NetconfClient.connect for the platform."""
        return trusted_host_keys(self.host_key) if self.host_key else self.known_hosts


@dataclass(frozen=True)
class InternalLink:
    """A QKD link inside the domain: never shared."""

    node_a: str
    node_b: str
    skr: int


@dataclass(frozen=True)
class DomainResources:
    """What the domain's orchestrator knows of its network."""

    nodes: tuple[Node, ...]
    internal_links: tuple[InternalLink, ...] = ()
    external_links: tuple[ExternalLink, ...] = ()
    saes: tuple[Sae, ...] = ()


@dataclass(frozen=True)
class SharingPolicy:
    """What a provider lets the federation see: these border nodes, the links from them to
    these peers (None: to any member), this share of each link's spare capacity, and these
    SAEs (those cross-domain services may join; None: every SAE its key managers serve, a
    visiting one too), each with the service types its application offers (discovery)."""

    border_nodes: frozenset[str]
    peers: frozenset[str] | None = None
    capacity_share: Fraction = Fraction(1)
    saes: frozenset[str] | None = frozenset()
    service_types: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.capacity_share <= 1:
            raise ValueError(f"capacity_share must be between 0 and 1, not {self.capacity_share}")

    def advertisement(self, resources: DomainResources) -> Advertisement:
        nodes = {n.node_id: n for n in resources.nodes if n.node_id in self.border_nodes}
        links = tuple(replace(link, capacity=int(link.capacity * self.capacity_share))
                      for link in resources.external_links
                      if link.local_node in nodes and (self.peers is None or link.peer_member in self.peers))
        saes = tuple(sorted((replace(s, service_types=tuple(self.service_types.get(s.sae_id, s.service_types)))
                             for s in resources.saes if self.saes is None or s.sae_id in self.saes),
                            key=lambda s: s.sae_id))
        return Advertisement(tuple(nodes[n] for n in sorted(nodes)), links, saes)


class FederationAgent:
    """One member's agent. `key` is the member's SSH private key; `agent_address` and
    `agent_port` are where the platform will reach the agent (Fm), registered on application."""

    def __init__(self, member_id: str, name: str, key: asyncssh.SSHKey, platform_endpoint: PlatformEndpoint,
                 policy: SharingPolicy, *, agent_address: str = "127.0.0.1", agent_port: int = 830):
        self.member_id = member_id
        self.name = name
        self.key = key
        self.platform = platform_endpoint
        self.policy = policy
        self.agent_address = agent_address
        self.agent_port = agent_port
        self.resources = DomainResources(())
        self._described = False  # the domain has said what it has (join or update): nothing is advertised before
        self.advertised: Advertisement | None = None  # what the platform holds, as last written
        self._session: NetconfClient | None = None
        self._admitted = False
        self._lock = asyncio.Lock()
        # Keeps the membership subscription up and the advertisement current: woken by each
        # membership event, and POLL after the platform dropped the session; a failed pass is
        # tried again after POLL, doubled up to RECONNECT_MAX_S, until the platform answers.
        self._follower = ReconcileLoop(f"federation agent {member_id}", self._follow, backoff_initial=POLL,
                                       backoff_cap=RECONNECT_MAX_S, logger=log,
                                       expected=(OSError, asyncssh.Error, RPCError, SessionClosedError))
        self._events: asyncio.Task | None = None  # reads the membership events of the live subscription

    @property
    def admitted(self) -> bool:
        return self._admitted

    @property
    def public_key(self) -> str:
        return self.key.export_public_key().decode().strip()

    async def join(self, resources: DomainResources, timeout: float = 10.0) -> None:
        """Apply, wait for the administrator's admission, advertise."""
        self.resources, self._described = resources, True
        await self.apply()
        await self.wait_admitted(timeout)

    async def apply(self) -> str:
        """apply-membership through the enrolment account; returns the membership status."""
        p = self.platform
        op = FEDERATION.element("apply-membership", leaves={
            "member-id": self.member_id, "name": self.name, "ssh-public-key": self.public_key,
            "agent-address": self.agent_address, "agent-port": self.agent_port})
        async with await NetconfClient.connect(p.host, p.port, p.enrol_user, password=p.enrol_password,
                                               known_hosts=p.trusted()) as nc:
            reply = await nc.dispatch(op)
        status = next(reply.iter(FEDERATION("status")), None) if reply is not None else None
        return (status.text or "").strip() if status is not None else ""

    async def session(self) -> NetconfClient:
        """The member's own session on the platform, opened with its key on first use and
        again once the platform has dropped it (a restart)."""
        if self._session is None or self._session.closed:
            p = self.platform
            self._session = await NetconfClient.connect(p.host, p.port, self.member_id, client_keys=[self.key],
                                                        known_hosts=p.trusted())
        return self._session

    async def status(self) -> str | None:
        """The membership's status as the platform reports it."""
        nc = await self.session()
        data = await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"><members><member>'
                                        f"<member-id>{self.member_id}</member-id></member></members></federation>"))
        members = data.iter(FEDERATION("member")) if data is not None else ()
        return next((FEDERATION.text(m, "status") for m in members if FEDERATION.find(m, "status") is not None),
                    None) or None

    async def wait_admitted(self, timeout: float = 10.0) -> None:
        """Wait for admission (or raise PermissionError if the membership ended instead, or
        TimeoutError), then advertise and follow the federation's membership."""
        async with asyncio.timeout(timeout):
            while (status := await self.status()) != "admitted":
                if status in (None, "withdrawn"):
                    raise PermissionError(f"the platform has no live membership for {self.member_id} ({status})")
                await asyncio.sleep(POLL)
        self._admitted = True
        await self._follow()  # its errors are the caller's
        self._follower.start()

    async def update(self, resources: DomainResources) -> None:
        """The domain changed: advertise what the policy allows of it now."""
        self.resources, self._described = resources, True
        if self._admitted:
            await self._advertise()

    async def _advertise(self) -> None:
        async with self._lock:
            nc = await self.session()
            members = await nc.get_config(filter=("subtree", f'<federation xmlns="{FEDERATION}"><members><member>'
                                                            "<member-id/></member></members></federation>"))
            known = {(e.text or "").strip() for e in members.iter(FEDERATION("member-id"))} \
                if members is not None else set()
            offer = self.policy.advertisement(self.resources)
            offer = replace(offer, links=tuple(l for l in offer.links if l.peer_member in known))
            await nc.edit_config(advertisement_config(self.member_id, offer))
            self.advertised = offer

    async def members(self) -> dict[str, tuple[str, Advertisement | None]]:
        """Every member the platform shows this one, with its membership status and what it
        advertises (links with their capacity as offered)."""
        nc = await self.session()
        data = await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"><members><member><member-id/><status/>'
                                        "</member></members><advertisements/></federation>"))
        return read_members(data)

    async def _follow(self) -> None:
        """A pass of the follower: subscribed to the federation's membership events on a live
        session (a new one after the platform dropped it: it restarted), and the advertisement
        current. Nothing once no longer a member."""
        if not self._admitted:
            return
        if self._events is None or self._events.done():
            nc = await self.session()
            await nc.create_subscription(filter=MEMBERSHIP_EVENTS)
            self._events = asyncio.get_running_loop().create_task(self._read_events(nc))
        if self._described:  # a restarted agent does not wipe the advertisement before its domain is read
            await self._advertise()

    async def _read_events(self, nc: NetconfClient) -> None:
        async for _ in nc.notifications():
            self._follower.wake()  # the membership changed: re-advertise
        if self._admitted:
            self._follower.wake_after(POLL)  # the session ended: subscribe again

    async def allow_service_user(self, user: str) -> None:
        """Let a service-layer (Fa) account of the platform request services the member pays for."""
        fed = FEDERATION.element("federation")
        member = FEDERATION.sub(FEDERATION.sub(fed, "members"), "member")
        FEDERATION.sub(member, "member-id", self.member_id)
        FEDERATION.sub(member, "service-user", user)
        await (await self.session()).edit_config(fed)

    async def move_sae(self, sae_id: str) -> None:
        """An SAE moved to one of the domain's key managers: its services follow it here (the
        advertisement must list it already: `FederatedDomain.sync` after attaching it)."""
        op = FEDERATION.element("move-sae", leaves={"sae-id": sae_id, "member-id": self.member_id})
        await (await self.session()).dispatch(op)

    async def publish_offer(self, offer: AgreementOffer) -> None:
        """Offer terms that a member admitted later may take up (the broker, Y.QKDNf 6.2)."""
        await (await self.session()).edit_config(offer_config(replace(offer, member_id=self.member_id)))

    async def withdraw_offer(self, offer_id: str) -> None:
        """Take an offer back; the agreements already taken up from it stay."""
        await (await self.session()).edit_config(offer_config(AgreementOffer(self.member_id, offer_id), "remove"))

    async def take_offer(self, member_id: str, offer_id: str) -> str:
        """Take up member `member_id`'s offer: returns the agreement the platform wrote."""
        reply = await (await self.session()).dispatch(take_offer(member_id, offer_id))
        found = next(reply.iter(FEDERATION("agreement-id")), None) if reply is not None else None
        return (found.text or "").strip() if found is not None else ""

    async def report_delivery(self, report: DeliveryReport) -> None:
        """What the domain's key managers counted at the ends of its segment of a service since
        the previous report (see qi-federation report-delivery)."""
        await (await self.session()).dispatch(delivery_report(report))

    async def withdraw(self, reason: str = "") -> None:
        """Leave the federation: the platform drops the advertisement and ends the session."""
        op = FEDERATION.element("withdraw", leaves={"member-id": self.member_id, "reason": reason or None})
        await (await self.session()).dispatch(op)
        self._admitted = False
        self.advertised = None
        await self.close()

    async def close(self) -> None:
        await self._follower.stop()
        if self._events is not None:
            self._events.cancel()
            await asyncio.gather(self._events, return_exceptions=True)
            self._events = None
        if self._session is not None:
            session, self._session = self._session, None
            try:
                await session.close_session()
            except (RPCError, ConnectionError, asyncio.TimeoutError):
                session.close()
