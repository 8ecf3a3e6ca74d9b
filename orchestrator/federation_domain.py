"""The two sides of a member domain's part in a federation of QKD networks, between the
platform (orchestrator/federation.py) and the domain's own strata.

`IntentSegments` is the platform's SegmentHandler for one member: each segment of a
cross-domain service becomes an intent of the member's orchestrator (qi-intent with a
`segment`), written over NETCONF at the endpoint the member registered. It answers once the
orchestrator has realised the new intent or given up on it (or says pending), and passes the
intent's later changes of state on to the platform (`segment_changed`).

`FederatedDomain` runs beside a domain's orchestrator, with the domain's FederationAgent. Its
pass is level-triggered (a period, and the notifications of its forwarding controller and
orchestrator: a segment that degrades gets its deliveries reported before it goes); it keeps
- the domain's own end of each inter-domain link configured on its forwarding controller
  (qi-forwarding external-peer) while the domain and the peer are admitted and the peer
  advertises the other end (its node's qkdn_id, key manager and interface). Both ends derive
  the same qkdl-id from the two nodes and interfaces, so the advertisements are all the two
  operators need to exchange. A link no longer wanted (the peer, or this domain, left) stays
  while a segment of the domain still uses it: the platform moves services before it
  releases their old segments, and keys keep flowing meanwhile;
- the advertisement current: the border nodes, the SAEs the policy shares, and each link
  with the eskr its forwarding stratum observed when it came up, 0 while it is not ACTIVE
  (so the platform routes around a link that failed);
- the charging: `report` tells the platform the keys the domain delivered for each segment
  since the last report, from the service stratum's counters.
It speaks NETCONF only: to the platform through the agent, to its strata as any client.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncssh
from lxml import etree

from models.forwarding import ExternalLinkRequest, ForwardingView, QkdLink, external_links_config, links_delete
from models.intent import INTENTS_FILTER, IntentSpec, intent_elements, segment_intent as intent_edit
from models.ns import INTENT, NW
from models.service import SESSIONS_FILTER, SegmentEnds, ServiceView
from netconf_core import ReconcileLoop
from netconf_core.client import SessionClosedError
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint
from netconf_core.ns import BASE
from orchestrator.federation import SEGMENT_TIMEOUT, Segment, SegmentReply
from orchestrator.federation_agent import Advertisement, DomainResources, ExternalLink, FederationAgent, Node, Sae

log = logging.getLogger(__name__)

INTENT_PREFIX = "fed-"
DECISION_S = 0.8 * SEGMENT_TIMEOUT  # how long a request waits for the orchestrator's verdict
TELL_GAP_S = 0.2   # between two attempts to tell the platform of a change it cannot place yet
TELL_ATTEMPTS = 50
LINK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qstrata:federation:inter-domain-link")
SEGMENT_STATUS = {"active": "active", "degraded": "degraded", "repairing": "degraded", "failed": "failed",
                  "removing": "failed", "removed": "failed"}  # intent state -> segment status; others: pending
PASS_ERRORS = (RPCError, SessionClosedError, OSError, asyncio.TimeoutError, asyncssh.Error)


def intent_name(service_id: str) -> str:
    """The intent that carries a service's segment in a domain (a qit:identifier)."""
    name = INTENT_PREFIX + service_id
    return name if len(name) <= 64 else INTENT_PREFIX + hashlib.sha256(service_id.encode()).hexdigest()[:32]


def segment_intent(service_id: str, segment: Segment) -> etree._Element:
    """The <intents> edit that makes `segment` the domain's intent for the service."""
    assert segment.source_km is not None and segment.destination_km is not None
    ends = SegmentEnds(segment.source_km, segment.destination_km, segment.ingress.link_id if segment.ingress else None,
                       segment.egress.link_id if segment.egress else None)
    return intent_edit(intent_name(service_id), service_id, segment.source_sae, segment.destination_sae, segment.rate,
                       ends)


def _spec(data: etree._Element | None, name: str) -> IntentSpec | None:
    """The configuration of intent `name` in a <data> reply."""
    element = intent_elements(data).get(name) if data is not None else None
    return IntentSpec.from_xml(element) if element is not None else None


def _intent_filter(name: str) -> str:
    return f'<intents xmlns="{INTENT}"><intent><name>{name}</name></intent></intents>'


def _reply(name: str, state: str, reason: str) -> SegmentReply:
    return SegmentReply(SEGMENT_STATUS.get(state, "pending"), name, reason)


class IntentSegments:
    """The platform's SegmentHandler for one member, over its orchestrator's qi-intent.
    `on_change(service_id, member_id, reply)` is the platform's segment_changed."""

    def __init__(self, member_id: str, orchestrator: Endpoint,
                 on_change: Callable[[str, str, SegmentReply], Awaitable[None]]):
        self.member_id = member_id
        self.on_change = on_change
        self.link = DeviceLink(orchestrator, ("qi-intent",), on_notification=self._notified)
        self.services: dict[str, str] = {}             # intent -> service, for the intents made here
        self._waiting: dict[str, asyncio.Queue] = {}   # intent -> its state changes, while a request waits
        self._latest: dict[str, SegmentReply] = {}     # service -> the change to tell the platform
        self._telling: dict[str, asyncio.Task] = {}

    def start(self) -> None:
        self.link.start()

    async def stop(self) -> None:
        for task in self._telling.values():
            task.cancel()
        await self.link.stop()

    async def request_segment(self, service_id: str, segment: Segment) -> SegmentReply:
        unknown = [sae for sae, km in ((segment.source_sae, segment.source_km),
                                       (segment.destination_sae, segment.destination_km)) if km is None]
        if unknown:
            return SegmentReply("failed", reason=f"SAE {unknown[0]} is not advertised by its member, so no domain "
                                                 "knows its key manager")
        name, wanted = intent_name(service_id), segment_intent(service_id, segment)
        nc = await self.link.session()
        current = await nc.get(("subtree", _intent_filter(name)))
        self.services[name] = service_id
        if _spec(current, name) == IntentSpec.from_xml(wanted[0]):
            intent = intent_elements(current)[name]
            return _reply(name, INTENT.text(intent, "state", ""), INTENT.text(intent, "reason", ""))
        changes = self._waiting[name] = asyncio.Queue()
        try:
            await nc.edit_config(wanted)
            async with asyncio.timeout(DECISION_S):
                while (change := await changes.get())[0] not in ("active", "failed"):
                    pass
            return _reply(name, *change)
        except TimeoutError:
            return SegmentReply("pending", name, f"intent {name} of {self.member_id} is still being set up")
        finally:
            del self._waiting[name]

    async def release_segment(self, service_id: str, segment: Segment) -> None:
        """Remove the intent if it still carries this segment (a newer request may have
        changed it already: make before break)."""
        name = intent_name(service_id)
        nc = await self.link.session()
        current = await nc.get_config(filter=("subtree", _intent_filter(name)))
        if segment.source_km is None or segment.destination_km is None or \
                _spec(current, name) != IntentSpec.from_xml(segment_intent(service_id, segment)[0]):
            return
        await nc.edit_config(f'<intents xmlns="{INTENT}" xmlns:nc="{BASE}"><intent nc:operation="remove">'
                             f"<name>{name}</name></intent></intents>")
        self.services.pop(name, None)

    async def _notified(self, link: DeviceLink, notification: etree._Element) -> None:
        change = INTENT.find(notification, "intent-state-change")
        name = INTENT.text(change, "name", "")
        if name not in self.services:
            return
        state, reason = INTENT.text(change, "to", ""), INTENT.text(change, "reason", "")
        if name in self._waiting:
            self._waiting[name].put_nowait((state, reason))
            return
        service_id = self.services[name]
        self._latest[service_id] = _reply(name, state, reason)
        if service_id not in self._telling:
            self._telling[service_id] = asyncio.get_running_loop().create_task(self._tell(service_id))

    async def _tell(self, service_id: str) -> None:
        """Tell the platform the latest change; it may not have recorded the segment yet (its
        request is still being answered), so try again a little later."""
        try:
            for _ in range(TELL_ATTEMPTS):
                reply = self._latest[service_id]
                try:
                    await self.on_change(service_id, self.member_id, reply)
                except ValueError:
                    await asyncio.sleep(TELL_GAP_S)
                    continue
                if self._latest[service_id] == reply:
                    return
        finally:
            del self._telling[service_id]


# --- the domain's side --------------------------------------------------------------------------


@dataclass(frozen=True)
class BorderLink:
    """An inter-domain fibre as the operator knows it: the local QKD node and interface it
    reaches, and the member and border node at its other end."""

    link_id: str
    local_node: str
    local_interface: int
    peer_member: str
    peer_node: str


def shared_qkdl_id(a: tuple[str, int], b: tuple[str, int]) -> str:
    """The qkdl_id both ends of an inter-domain link derive from its (qkdn_id, qkdi_id) ends."""
    first, second = sorted((a, b))
    return str(uuid.uuid5(LINK_NAMESPACE, f"{first[0]}/{first[1]}-{second[0]}/{second[1]}"))


class FederatedDomain:
    def __init__(self, agent: FederationAgent, border_links: tuple[BorderLink, ...], saes: tuple[Sae, ...],
                 forwarding: Endpoint, service: Endpoint, orchestrator: Endpoint, period: float = 1.0):
        self.agent = agent
        self.border_links = border_links
        self.saes = saes
        self.period = period
        self.forwarding = DeviceLink(forwarding, ("qi-forwarding",), on_notification=self._woken)
        self.service = DeviceLink(service, ("qi-service",))
        self.orchestrator = DeviceLink(orchestrator, ("qi-intent",), on_notification=self._woken)
        self.capacity: dict[str, int] = {}             # link -> eskr observed when it came up
        self.reported: dict[str, tuple[int, int]] = {}  # segment intent -> (keys, bits) reported so far
        self._lock = asyncio.Lock()
        self._loop = ReconcileLoop(f"federated domain {agent.member_id}", self._pass, period=period,
                                   backoff_initial=None, expected=PASS_ERRORS, logger=log)

    @property
    def member_id(self) -> str:
        return self.agent.member_id

    async def start(self, timeout: float = 30.0) -> None:
        links = (self.forwarding, self.service, self.orchestrator)
        for link in links:
            link.start()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(link.connected.wait() for link in links))
        await self.sync()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self.agent.close()
        await asyncio.gather(*(link.stop() for link in (self.forwarding, self.service, self.orchestrator)))

    async def withdraw(self, reason: str = "") -> None:
        """Report what is still owed and leave the federation; the domain's ends of its
        inter-domain links go once the platform has released the segments that use them."""
        await self.report()
        await self.agent.withdraw(reason)
        await self.sync()

    async def _woken(self, link: DeviceLink, notification: etree._Element) -> None:
        self._loop.wake()

    async def _pass(self) -> None:
        """Woken by a notification of the forwarding controller or orchestrator, or the period;
        a failed pass waits for the next."""
        await self.sync()
        await self.report()

    # --- inter-domain links and the advertisement --------------------------------------------------

    async def sync(self) -> None:
        """One pass: the domain's ends of the inter-domain links, and the advertisement."""
        async with self._lock:
            forwarding = await self.forwarding.session()
            fwd = ForwardingView.parse(await forwarding.get(("subtree", f'<networks xmlns="{NW}"/>')))
            members = await self.agent.members() if self.agent.admitted else {}
            wanted = [r for border in self.border_links if (r := self._link_request(border, fwd, members))]
            stale = [r for r in wanted if not _configured(fwd.links.get(r.link_id), r)]
            in_use = {link for spec in (await self._segments()).values() if spec.segment
                      for link in (spec.segment.ingress_link, spec.segment.egress_link) if link}
            gone = sorted({l.id for l in fwd.links.values() if l.external} - {r.link_id for r in wanted} - in_use)
            if stale:
                await forwarding.edit_config(external_links_config(fwd.network_id, stale))
            if gone:
                await forwarding.edit_config(links_delete(fwd.network_id, gone))
            resources = self._resources(fwd)
            if resources != self.agent.resources:
                await self.agent.update(resources)

    def _link_request(self, border: BorderLink, fwd: ForwardingView,
                      members: dict[str, tuple[str, Advertisement | None]]) -> ExternalLinkRequest | None:
        """This domain's end of the link, once the peer is admitted and advertises the other."""
        status, offer = members.get(border.peer_member, ("", None))
        local = fwd.nodes.get(border.local_node)
        if status != "admitted" or offer is None or local is None or not local.qkdn_id:
            return None
        mirror = next((l for l in offer.links if (l.local_node, l.peer_member, l.peer_node)
                       == (border.peer_node, self.member_id, border.local_node)), None)
        peer = next((n for n in offer.border_nodes if n.node_id == border.peer_node), None)
        if mirror is None or mirror.local_interface is None or peer is None or not peer.qkdn_id:
            return None
        return ExternalLinkRequest(border.link_id, (border.local_node, str(border.local_interface)),
                                   (border.peer_node, str(mirror.local_interface)),
                                   shared_qkdl_id((local.qkdn_id, border.local_interface),
                                                  (peer.qkdn_id, mirror.local_interface)),
                                   border.peer_member, peer.qkdn_id, peer.km_id)

    def _resources(self, fwd: ForwardingView) -> DomainResources:
        """What the policy may share: border nodes, SAEs, and each inter-domain link with the
        key rate it had when it came up (0 while it is down)."""
        local = {b.local_node for b in self.border_links}
        nodes = tuple(Node(n.id, n.km_id, n.site or None, n.qkdn_id or None)
                      for n in sorted(fwd.nodes.values(), key=lambda n: n.id) if n.id in local)
        links = tuple(ExternalLink(b.link_id, b.local_node, b.peer_member, b.peer_node,
                                   self._capacity(b.link_id, fwd.links.get(b.link_id)), b.local_interface)
                      for b in self.border_links)
        return DomainResources(nodes, (), links, self.saes)

    def _capacity(self, link_id: str, link: QkdLink | None) -> int:
        if link is None or not link.up or not link.eskr:
            self.capacity.pop(link_id, None)
            return 0
        return self.capacity.setdefault(link_id, int(link.eskr))

    async def _segments(self) -> dict[str, IntentSpec]:
        """The domain's intents that are segments of cross-domain services, by name."""
        intents = await (await self.orchestrator.session()).get_config(
            filter=("subtree", INTENTS_FILTER))
        specs = (IntentSpec.from_xml(e) for e in intent_elements(intents).values()) if intents is not None else ()
        return {spec.name: spec for spec in specs if spec.segment is not None}

    # --- charging -----------------------------------------------------------------------------------

    async def report(self) -> None:
        """Report to the platform the keys each segment delivered since the last report. A
        counter that went down started again (the segment's session was re-created after a
        failure, or another key manager counts it now): what it counted since the previous
        report is not charged, which is why the pass reports every period."""
        if not self.agent.admitted:
            return
        async with self._lock:
            services = {name: spec.service for name, spec in (await self._segments()).items() if spec.service}
            sessions = ServiceView.parse(await (await self.service.session()).get(
                ("subtree", SESSIONS_FILTER))).sessions
            self.reported = {name: count for name, count in self.reported.items() if name in services}
            for name, service_id in services.items():
                session = sessions.get(name)
                if session is None:
                    continue
                keys, bits = self.reported.get(name, (0, 0))
                if session.delivered_keys < keys:
                    keys, bits = 0, 0
                if session.delivered_keys > keys:
                    self.reported[name] = (session.delivered_keys, session.delivered_bits)
                    try:
                        await self.agent.report_delivery(service_id, session.delivered_keys - keys,
                                                         session.delivered_bits - bits)
                    except RPCError as err:
                        log.warning("federated domain %s: delivery for %s not charged: %s", self.member_id,
                                    service_id, err.message)


def _configured(link: QkdLink | None, request: ExternalLinkRequest) -> bool:
    return link is not None and (link.a, link.b, link.qkdl_id, link.peer_km) == (
        request.local, request.remote, request.qkdl_id, request.peer_km)
