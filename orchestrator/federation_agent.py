"""A domain's federation agent: what a domain's orchestrator hosts to take part in a federation
of QKD networks. It talks to the federation platform over NETCONF (the Fm face) and only over it.

It applies to join once, through the platform's enrolment account, registering the member's SSH
public key; from then on it logs in as the member with that key. Once admitted it advertises
what the provider's sharing policy allows of the domain's resources (border nodes, inter-domain
links and the capacity offered on them), and keeps that advertisement current: when the domain
changes (`update`) and when members join or leave (a link can only name a peer the platform
knows). The advertisement is computed from the policy alone, so nothing of the domain's
internal topology ever leaves the agent. It reports the key its domain delivered for
cross-domain services, for charging, reads what the other members advertise (their border
nodes and links towards it), and withdraws cleanly.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import asyncssh
from lxml import etree

from netconf_core import ReconcileLoop
from netconf_core.client import NetconfClient, SessionClosedError
from netconf_core.errors import BASE_NS, RPCError

log = logging.getLogger(__name__)

FED_NS = "urn:qstrata:yang:qi-federation"
POLL = 0.05  # seconds between two reads of the membership while waiting for admission
RECONNECT_MAX_S = 5.0  # longest wait between two attempts to reach a platform that dropped the session
MEMBERSHIP_EVENTS = ("subtree", f'<member-joined xmlns="{FED_NS}"/><member-left xmlns="{FED_NS}"/>')


def _f(tag: str) -> str:
    return f"{{{FED_NS}}}{tag}"


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _leaf(parent: etree._Element, tag: str, value: object) -> etree._Element:
    element = etree.SubElement(parent, _f(tag))
    element.text = str(value)
    return element


@dataclass(frozen=True)
class PlatformEndpoint:
    """How to reach the federation platform. `known_hosts` checks the platform's host key
    (asyncssh's forms); None accepts any key, which suits loopback emulation only."""

    host: str
    port: int
    enrol_password: str
    enrol_user: str = "enrol"
    known_hosts: Any = None


@dataclass(frozen=True)
class Node:
    node_id: str
    km_id: str
    site: str | None = None
    qkdn_id: str | None = None  # ETSI GS QKD 015 qkdn_id: what a neighbour names as its link's remote end


@dataclass(frozen=True)
class Sae:
    """An SAE of the domain and its key manager (ETSI GS QKD 014 KME)."""

    sae_id: str
    km_id: str


@dataclass(frozen=True)
class InternalLink:
    """A QKD link inside the domain: never shared."""

    node_a: str
    node_b: str
    skr: int


@dataclass(frozen=True)
class ExternalLink:
    """A QKD link from a node of the domain to a border node of another member."""

    link_id: str
    local_node: str
    peer_member: str
    peer_node: str
    capacity: int  # key rate the link can spare for cross-domain services, bit/s
    local_interface: int | None = None  # qkdi_id of the local node's interface on the link


@dataclass(frozen=True)
class DomainResources:
    """What the domain's orchestrator knows of its network."""

    nodes: tuple[Node, ...]
    internal_links: tuple[InternalLink, ...] = ()
    external_links: tuple[ExternalLink, ...] = ()
    saes: tuple[Sae, ...] = ()


@dataclass(frozen=True)
class Advertisement:
    border_nodes: tuple[Node, ...]
    links: tuple[ExternalLink, ...]  # capacity: what is offered
    saes: tuple[Sae, ...] = ()


@dataclass(frozen=True)
class SharingPolicy:
    """What a provider lets the federation see: these border nodes, the links from them to
    these peers (None: to any member), this share of each link's spare capacity, and these
    SAEs (those cross-domain services may join)."""

    border_nodes: frozenset[str]
    peers: frozenset[str] | None = None
    capacity_share: Fraction = Fraction(1)
    saes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 0 <= self.capacity_share <= 1:
            raise ValueError(f"capacity_share must be between 0 and 1, not {self.capacity_share}")

    def advertisement(self, resources: DomainResources) -> Advertisement:
        nodes = {n.node_id: n for n in resources.nodes if n.node_id in self.border_nodes}
        links = tuple(replace(link, capacity=int(link.capacity * self.capacity_share))
                      for link in resources.external_links
                      if link.local_node in nodes and (self.peers is None or link.peer_member in self.peers))
        saes = tuple(sorted((s for s in resources.saes if s.sae_id in self.saes), key=lambda s: s.sae_id))
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
        self.resources = resources
        await self.apply()
        await self.wait_admitted(timeout)

    async def apply(self) -> str:
        """apply-membership through the enrolment account; returns the membership status."""
        p = self.platform
        op = etree.Element(_f("apply-membership"), nsmap={None: FED_NS})
        for tag, value in (("member-id", self.member_id), ("name", self.name), ("ssh-public-key", self.public_key),
                           ("agent-address", self.agent_address), ("agent-port", self.agent_port)):
            _leaf(op, tag, value)
        async with await NetconfClient.connect(p.host, p.port, p.enrol_user, password=p.enrol_password,
                                               known_hosts=p.known_hosts) as nc:
            reply = await nc.dispatch(op)
        return (reply.findtext(f".//{_f('status')}") or "").strip() if reply is not None else ""

    async def session(self) -> NetconfClient:
        """The member's own session on the platform, opened with its key on first use and
        again once the platform has dropped it (a restart)."""
        if self._session is None or self._session.closed:
            p = self.platform
            self._session = await NetconfClient.connect(p.host, p.port, self.member_id, client_keys=[self.key],
                                                        known_hosts=p.known_hosts)
        return self._session

    async def status(self) -> str | None:
        """The membership's status as the platform reports it."""
        nc = await self.session()
        data = await nc.get(("subtree", f'<federation xmlns="{FED_NS}"><members><member>'
                                        f"<member-id>{self.member_id}</member-id></member></members></federation>"))
        status = data.findtext(f".//{_f('member')}/{_f('status')}") if data is not None else None
        return status.strip() if status else None

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
        self.resources = resources
        if self._admitted:
            await self._advertise()

    async def _advertise(self) -> None:
        async with self._lock:
            nc = await self.session()
            members = await nc.get_config(filter=("subtree", f'<federation xmlns="{FED_NS}"><members><member>'
                                                            "<member-id/></member></members></federation>"))
            known = {(e.text or "").strip() for e in members.iter(_f("member-id"))} if members is not None else set()
            offer = self.policy.advertisement(self.resources)
            offer = replace(offer, links=tuple(l for l in offer.links if l.peer_member in known))
            await nc.edit_config(self._advertisement_xml(offer))
            self.advertised = offer

    def _advertisement_xml(self, offer: Advertisement) -> etree._Element:
        fed = etree.Element(_f("federation"), nsmap={None: FED_NS, "nc": BASE_NS})
        ad = etree.SubElement(etree.SubElement(fed, _f("advertisements")), _f("advertisement"))
        ad.set(f"{{{BASE_NS}}}operation", "replace")
        _leaf(ad, "member-id", self.member_id)
        for node in offer.border_nodes:
            element = etree.SubElement(ad, _f("border-node"))
            for tag, value in (("node-id", node.node_id), ("km-id", node.km_id), ("qkdn-id", node.qkdn_id),
                               ("site", node.site)):
                if value:
                    _leaf(element, tag, value)
        for sae in offer.saes:
            element = etree.SubElement(ad, _f("sae"))
            _leaf(element, "sae-id", sae.sae_id)
            _leaf(element, "km-id", sae.km_id)
        for link in offer.links:
            element = etree.SubElement(ad, _f("inter-domain-link"))
            for tag, value in (("link-id", link.link_id), ("local-border-node", link.local_node),
                               ("local-interface", link.local_interface), ("peer-member", link.peer_member),
                               ("peer-border-node", link.peer_node), ("capacity", link.capacity)):
                if value is not None:
                    _leaf(element, tag, value)
        return fed

    async def members(self) -> dict[str, tuple[str, Advertisement | None]]:
        """Every member the platform shows this one, with its membership status and what it
        advertises (links with their capacity as offered)."""
        nc = await self.session()
        data = await nc.get(("subtree", f'<federation xmlns="{FED_NS}"><members><member><member-id/><status/>'
                                        "</member></members><advertisements/></federation>"))
        text = lambda element, tag: (element.findtext(_f(tag)) or "").strip() or None
        offers = {}
        for ad in data.iter(_f("advertisement")) if data is not None else ():
            nodes = tuple(Node(text(n, "node-id") or "", text(n, "km-id") or "", text(n, "site"), text(n, "qkdn-id"))
                          for n in ad.iterfind(_f("border-node")))
            links = tuple(ExternalLink(text(l, "link-id") or "", text(l, "local-border-node") or "",
                                       text(l, "peer-member") or "", text(l, "peer-border-node") or "",
                                       int(text(l, "capacity") or 0), _int(text(l, "local-interface")))
                          for l in ad.iterfind(_f("inter-domain-link")))
            saes = tuple(Sae(text(s, "sae-id") or "", text(s, "km-id") or "") for s in ad.iterfind(_f("sae")))
            offers[text(ad, "member-id")] = Advertisement(nodes, links, saes)
        return {text(m, "member-id") or "": (text(m, "status") or "", offers.get(text(m, "member-id")))
                for m in data.iter(_f("member"))} if data is not None else {}

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
        await self._advertise()

    async def _read_events(self, nc: NetconfClient) -> None:
        async for _ in nc.notifications():
            self._follower.wake()  # the membership changed: re-advertise
        if self._admitted:
            self._follower.wake_after(POLL)  # the session ended: subscribe again

    async def allow_service_user(self, user: str) -> None:
        """Let a service-layer (Fa) account of the platform request services the member pays for."""
        fed = etree.Element(_f("federation"), nsmap={None: FED_NS})
        member = etree.SubElement(etree.SubElement(fed, _f("members")), _f("member"))
        _leaf(member, "member-id", self.member_id)
        _leaf(member, "service-user", user)
        await (await self.session()).edit_config(fed)

    async def report_delivery(self, service_id: str, keys: int, bits: int) -> None:
        """Key the domain delivered for a service since the previous report."""
        op = etree.Element(_f("report-delivery"), nsmap={None: FED_NS})
        for tag, value in (("service-id", service_id), ("keys", keys), ("bits", bits)):
            _leaf(op, tag, value)
        await (await self.session()).dispatch(op)

    async def withdraw(self, reason: str = "") -> None:
        """Leave the federation: the platform drops the advertisement and ends the session."""
        op = etree.Element(_f("withdraw"), nsmap={None: FED_NS})
        _leaf(op, "member-id", self.member_id)
        if reason:
            _leaf(op, "reason", reason)
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
