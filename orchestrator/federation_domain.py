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
- the domain's border key managers peered with the key managers across their inter-domain
  links: each border node is advertised with its key manager's KM-to-KM URL (the key
  manager's own peer-interface/url), and the URL a neighbour advertises for the far end is
  written into the near end's qi-key-manager `peers` (added or changed, never removed: the
  KM-to-KM TLS handshake checks the km-id, so a stale entry reaches nobody else);
- the advertisement current: the border nodes, the SAEs the policy shares among those its key
  managers serve now (read from their qi-key-manager saes, with each one's description: an
  SAE that moves to another member's key manager moves to that member's advertisement, and
  the platform's services follow it), and each link
  with the eskr its forwarding stratum observed when it came up, 0 while it is not ACTIVE
  (so the platform routes around a link that failed);
- the charging: `report` tells the platform what the domain's key managers counted for each
  segment since the last report, at both its ends (qi-key-manager relay-statistics of the
  service's pair of SAEs): at the ingress, the border key manager's forwarded count (its
  received count when it serves the destination SAE), or in the source domain the source
  SAE's key manager's forwarded count; at the egress, the border key manager's forwarded
  count, or in the destination domain the destination SAE's key manager's received count.
  The platform bills a hop on what its two domains' reports both confirm. Counters are
  remembered per key manager, so a segment that moves away from a key manager and back
  never reports its keys twice; when a segment's end moves, or the segment goes, its old
  end is read and reported once more. With a state directory these baselines (what was
  reported, and where each segment's ends are counted) are kept in its `charging.json`, written
  once the platform took a report: a restarted agent neither reports a key again nor loses one.
It speaks NETCONF only: to the platform through the agent, to its strata and its key managers
as any client.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import pathlib
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from netconf_core.notifications import now

import asyncssh
from lxml import etree

from models.federation import DeliveryReport, EndCount
from models.forwarding import ExternalLinkRequest, ForwardingView, QkdLink, external_links_config, links_delete
from models.key_manager import (CONFIG_FILTER, COUNTERS_FILTER, PEER_INTERFACE_FILTER, KmConfig, KmCounters, KmView,
                                km_edit, peer_interface_url)
from models.ns import KEY_MANAGER
from models.intent import INTENTS_FILTER, IntentSpec, generations, intent_elements, segment_intent as intent_edit
from models.ns import INTENT, NW
from models.service import SegmentEnds
from netconf_core import ReconcileLoop, write_atomically
from netconf_core.client import NetconfClient, SessionClosedError
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint
from netconf_core.ns import BASE
from orchestrator.federation import SEGMENT_TIMEOUT, Segment, SegmentReply
from orchestrator.federation_agent import Advertisement, DomainResources, ExternalLink, FederationAgent, Node, Sae

log = logging.getLogger(__name__)

INTENT_PREFIX = "fed-"
DECISION_S = 0.8 * SEGMENT_TIMEOUT  # how long a request waits for the orchestrator's verdict
RECHECK_S = 2.0  # while it waits, how often it reads the intent's state
TELL_GAP_S = 0.2   # between two attempts to tell the platform of a change it cannot place yet
TELL_ATTEMPTS = 50
LINK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qstrata:federation:inter-domain-link")
SEGMENT_STATUS = {"active": "active", "degraded": "degraded", "repairing": "degraded", "failed": "failed",
                  "removing": "failed", "removed": "failed"}  # intent state -> segment status; others: pending
PASS_ERRORS = (RPCError, SessionClosedError, OSError, asyncio.TimeoutError, asyncssh.Error)
SAES_FILTER = f'<key-manager xmlns="{KEY_MANAGER}"><saes/></key-manager>'


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
        self._generations: dict[str, int] = {}         # intent -> its generation when last asked for it
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
        pending = SegmentReply("pending", name, f"intent {name} of {self.member_id} is still being set up")
        if _spec(current, name) == IntentSpec.from_xml(wanted[0]):
            return self._verdict(name, intent_elements(current)[name]) or pending
        changes = self._waiting[name] = asyncio.Queue()
        try:
            await nc.edit_config(wanted)
            return await self._decision(nc, name, changes) or pending
        finally:
            del self._waiting[name]

    async def _decision(self, nc: NetconfClient, name: str, changes: asyncio.Queue) -> SegmentReply | None:
        """The orchestrator's verdict (active or failed) on the configuration just written, if
        it comes within DECISION_S. A pass that began before the edit may end after it: its
        state, read or notified, is about the old configuration and is passed over. A pass on
        the new one that leaves the state as it was notifies nothing, so the state is read
        again every RECHECK_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DECISION_S
        while loop.time() < deadline:
            intent = intent_elements(await nc.get(("subtree", _intent_filter(name)))).get(name)
            if intent is None:
                return None  # removed again since (by the operator): the next request says
            verdict = self._verdict(name, intent)
            if verdict is not None and verdict.status in ("active", "failed"):
                return verdict
            try:
                async with asyncio.timeout(min(RECHECK_S, max(deadline - loop.time(), 0))):
                    while (change := await changes.get())[0] not in ("active", "failed") or \
                            change[2] < self._generations[name]:
                        pass
                return _reply(name, change[0], change[1])
            except TimeoutError:
                continue
        return None

    def _verdict(self, name: str, intent: etree._Element) -> SegmentReply | None:
        """The reply that the intent's state gives, once it is about its configuration now."""
        generation, observed = generations(intent)
        self._generations[name] = generation
        if observed < generation:
            return None
        return _reply(name, INTENT.text(intent, "state", ""), INTENT.text(intent, "reason", ""))

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
        self._generations.pop(name, None)

    async def _notified(self, link: DeviceLink, notification: etree._Element) -> None:
        change = INTENT.find(notification, "intent-state-change")
        name = INTENT.text(change, "name", "")
        if name not in self.services:
            return
        state, reason = INTENT.text(change, "to", ""), INTENT.text(change, "reason", "")
        generation = int(INTENT.text(change, "generation", "0") or 0)
        if name in self._waiting:
            self._waiting[name].put_nowait((state, reason, generation))
            return
        if generation < self._generations.get(name, 0):
            return  # the verdict of a pass on a configuration since replaced
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


@dataclass(frozen=True)
class CountedEnd:
    """Where one end of a segment is counted: the link there (None at a local SAE), the key
    manager and its counter (forwarded or received) for the service's pair of SAEs."""

    link_id: str | None
    km_id: str
    counter: str


class FederatedDomain:
    """`key_managers`: how to reach the domain's own key managers, by km-id (their counters are
    what the domain reports for charging, their SAEs what it may advertise); `saes`: SAEs of
    key managers not among them, advertised as given; `state_dir`: where the charging baselines
    are kept (None: in memory only)."""

    def __init__(self, agent: FederationAgent, border_links: tuple[BorderLink, ...], saes: tuple[Sae, ...],
                 forwarding: Endpoint, orchestrator: Endpoint, key_managers: dict[str, Endpoint],
                 period: float = 1.0, state_dir: pathlib.Path | str | None = None):
        self.agent = agent
        self.border_links = border_links
        self.saes = saes
        self.period = period
        self.forwarding = DeviceLink(forwarding, ("qi-forwarding",), on_notification=self._woken)
        self.orchestrator = DeviceLink(orchestrator, ("qi-intent",), on_notification=self._woken)
        self.key_managers = {km: DeviceLink(endpoint, ("qi-key-manager",)) for km, endpoint in key_managers.items()}
        self.capacity: dict[str, int] = {}             # link -> eskr observed when it came up
        self.border_kms: dict[str, str] = {}           # inter-domain link -> key manager of its local node
        # what was reported: (km, counter, pair) -> (keys, bits); service -> (pair, end -> where counted)
        self.readings: dict[tuple[str, str, tuple[str, str]], tuple[int, int]] = {}
        self.ends: dict[str, tuple[tuple[str, str], dict[str, CountedEnd]]] = {}
        # per border key manager, on its current session: its KM-to-KM URL, and the peers written
        self._km_url: dict[str, tuple[object, str | None]] = {}
        self._km_peers: dict[str, tuple[object, dict[str, str]]] = {}
        self._state_file = pathlib.Path(state_dir) / "charging.json" if state_dir is not None else None
        self._load()
        self._lock = asyncio.Lock()
        self._loop = ReconcileLoop(f"federated domain {agent.member_id}", self._pass, period=period,
                                   backoff_initial=None, expected=PASS_ERRORS, logger=log)

    @property
    def member_id(self) -> str:
        return self.agent.member_id

    async def start(self, timeout: float = 30.0) -> None:
        for link in self.key_managers.values():
            link.start()  # read when there is something to report
        links = (self.forwarding, self.orchestrator)
        for link in links:
            link.start()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(link.connected.wait() for link in links))
        await self.sync()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self.agent.close()
        links = (self.forwarding, self.orchestrator, *self.key_managers.values())
        await asyncio.gather(*(link.stop() for link in links))

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
            self.border_kms = {b.link_id: fwd.nodes[b.local_node].km_id for b in self.border_links
                               if b.local_node in fwd.nodes}
            if stale:
                await forwarding.edit_config(external_links_config(fwd.network_id, stale))
            if gone:
                await forwarding.edit_config(links_delete(fwd.network_id, gone))
            await self._peer_border_kms(wanted, members)  # before keys cross: the link comes up first
            resources = self._resources(fwd, await self._attached_saes(), await self._km_urls(fwd))
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

    async def _attached_saes(self) -> tuple[Sae, ...]:
        """The SAEs the domain's key managers serve now, with their descriptions."""
        async def of(km_id: str) -> list[Sae]:
            nc = await self.key_managers[km_id].session()
            data = await nc.get_config(filter=("subtree", SAES_FILTER))
            return [Sae(KEY_MANAGER.text(e, "sae-id", ""), km_id, KEY_MANAGER.text(e, "description") or None)
                    for e in KEY_MANAGER.all(data, "key-manager/saes/sae")]
        read = await asyncio.gather(*(of(km) for km in sorted(self.key_managers)))
        fixed = [s for s in self.saes if s.km_id not in self.key_managers]
        return tuple(sorted((s for found in (*read, fixed) for s in found), key=lambda s: (s.sae_id, s.km_id)))

    async def _km_urls(self, fwd: ForwardingView) -> dict[str, str]:
        """The KM-to-KM URL of each border node's key manager, as the key manager reports it."""
        kms = sorted({fwd.nodes[b.local_node].km_id for b in self.border_links if b.local_node in fwd.nodes}
                     & set(self.key_managers))

        async def url(km_id: str) -> str | None:
            """Read once per session: a key manager that restarts may serve elsewhere."""
            nc = await self.key_managers[km_id].session()
            session, known = self._km_url.get(km_id, (None, None))
            if session is not nc:
                known = peer_interface_url(await nc.get(("subtree", PEER_INTERFACE_FILTER)))
                self._km_url[km_id] = (nc, known)
            return known
        return {km: found for km, found in zip(kms, await asyncio.gather(*(url(km) for km in kms))) if found}

    async def _peer_border_kms(self, wanted: list[ExternalLinkRequest],
                               members: dict[str, tuple[str, Advertisement | None]]) -> None:
        """Each border key manager peered with the key manager across its link, at the URL the
        neighbour advertises for it (see the module's docstring)."""
        local_km = {b.link_id: self.border_kms.get(b.link_id) for b in self.border_links}
        peers: dict[str, dict[str, str]] = {}
        for request in wanted:
            offer = members.get(request.peer_member, ("", None))[1]
            far = next((n for n in offer.border_nodes if n.km_id == request.peer_km), None) if offer else None
            near = local_km.get(request.link_id)
            if far is not None and far.km_url and near in self.key_managers:
                peers.setdefault(near, {})[far.km_id] = far.km_url
        for km, want in sorted(peers.items()):
            nc = await self.key_managers[km].session()
            if self._km_peers.get(km) == (nc, want):
                continue  # written (or found) on this session already
            data = await nc.get_config(filter=("subtree", CONFIG_FILTER))
            root = KEY_MANAGER.find(data, "key-manager") if data is not None else None
            have = KmView.from_xml(root).config.peers if root is not None else {}
            edit = km_edit(KmConfig(peers={k: have[k] for k in want if k in have}), KmConfig(peers=want))
            if edit is not None:
                await nc.edit_config(edit)
            self._km_peers[km] = (nc, want)

    def _resources(self, fwd: ForwardingView, saes: tuple[Sae, ...], km_urls: dict[str, str]) -> DomainResources:
        """What the policy may share: border nodes (with their key managers' KM-to-KM URLs),
        SAEs, and each inter-domain link with the key rate it had when it came up (0 while it
        is down)."""
        local = {b.local_node for b in self.border_links}
        nodes = tuple(Node(n.id, n.km_id, n.site or None, n.qkdn_id or None, km_urls.get(n.km_id))
                      for n in sorted(fwd.nodes.values(), key=lambda n: n.id) if n.id in local)
        links = tuple(ExternalLink(b.link_id, b.local_node, b.peer_member, b.peer_node,
                                   self._capacity(b.link_id, fwd.links.get(b.link_id)), b.local_interface)
                      for b in self.border_links)
        return DomainResources(nodes, (), links, saes)

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
        """Report to the platform, for each segment, what the key managers at its two ends
        counted since the last report (zero too: the platform compares each report with the
        other end's); ends a segment left, and segments that went, are reported once more."""
        if not self.agent.admitted:
            return
        async with self._lock:
            segments = {spec.service: spec for spec in (await self._segments()).values() if spec.service}
            for service_id, spec in segments.items():
                pair, ends = (spec.source_sae, spec.destination_sae), self._counted_ends(spec)
                _, before = self.ends.get(service_id, (pair, {}))
                left = {end: where for end, where in before.items() if ends.get(end) != where}
                if left:
                    await self._report(service_id, pair, left, final=True)
                if ends:
                    self.ends[service_id] = (pair, ends)
                    await self._report(service_id, pair, ends)
            for service_id in [s for s in self.ends if s not in segments]:
                pair, ends = self.ends.pop(service_id)
                await self._report(service_id, pair, ends, final=True)
            self._save()

    def _counted_ends(self, spec: IntentSpec) -> dict[str, CountedEnd]:
        """Where the segment's two ends are counted (see the module's docstring); an end whose
        border node is not known yet is left out."""
        segment = spec.segment
        assert segment is not None
        ends = {}
        if segment.ingress_link is None:
            ends["ingress"] = CountedEnd(None, segment.source_km, "forwarded")
        elif (km := self.border_kms.get(segment.ingress_link)) is not None:
            ends["ingress"] = CountedEnd(segment.ingress_link, km,
                                         "received" if km == segment.destination_km else "forwarded")
        if segment.egress_link is None:
            ends["egress"] = CountedEnd(None, segment.destination_km, "received")
        elif (km := self.border_kms.get(segment.egress_link)) is not None:
            ends["egress"] = CountedEnd(segment.egress_link, km, "forwarded")
        return {end: where for end, where in ends.items() if where.km_id in self.key_managers}

    async def _report(self, service_id: str, pair: tuple[str, str], ends: dict[str, CountedEnd],
                      final: bool = False) -> None:
        """Read the key managers of `ends` and report what they counted since the last report;
        the readings count as reported only once the platform took them (a final report the
        platform refuses is dropped)."""
        kms = sorted({where.km_id for where in ends.values()})
        read_start = _now()
        counters = await asyncio.gather(*(self._read_counters(km) for km in kms))
        read_end = _now()
        by_km = dict(zip(kms, counters))
        counts, readings = [], {}
        for end, where in sorted(ends.items()):
            value = getattr(by_km[where.km_id], where.counter).get(pair, (0, 0))
            key = (where.km_id, where.counter, pair)
            last = self.readings.get(key, (0, 0))
            delta = tuple(v - l for v, l in zip(value, last)) if all(v >= l for v, l in zip(value, last)) else value
            counts.append(EndCount(end, where.link_id, *delta))
            readings[key] = value
        try:
            await self.agent.report_delivery(DeliveryReport(service_id, read_start, read_end, tuple(counts)))
        except RPCError as err:
            log.warning("federated domain %s: counts for %s not taken%s: %s", self.member_id, service_id,
                        " (dropped)" if final else "", err.message)
            if not final:
                return
        if any(self.readings.get(key) != value for key, value in readings.items()):
            self.readings.update(readings)
            self._save()  # the platform took these: a restart must not report them again

    def _save(self) -> None:
        """Write the baselines atomically (a crash leaves the old file or the new one), when changed."""
        if self._state_file is None:
            return
        readings = sorted(self.readings.items())
        state = {"readings": [[km, counter, *pair, *value] for (km, counter, pair), value in readings],
                 "ends": {service: {"pair": list(pair), "ends": {end: [w.link_id, w.km_id, w.counter]
                                                                 for end, w in sorted(ends.items())}}
                          for service, (pair, ends) in sorted(self.ends.items())}}
        text = json.dumps(state, indent=1)
        if self._saved == text:
            return
        write_atomically(self._state_file, text)
        self._saved = text

    def _load(self) -> None:
        self._saved = None
        if self._state_file is None or not self._state_file.exists():
            return
        state = json.loads(self._state_file.read_text())
        self.readings = {(km, counter, (master, slave)): (keys, bits)
                         for km, counter, master, slave, keys, bits in state.get("readings", [])}
        self.ends = {service: ((entry["pair"][0], entry["pair"][1]),
                               {end: CountedEnd(*where) for end, where in entry["ends"].items()})
                     for service, entry in state.get("ends", {}).items()}
        self._saved = self._state_file.read_text()

    async def _read_counters(self, km_id: str) -> KmCounters:
        nc = await self.key_managers[km_id].session()
        return KmCounters.parse(await nc.get(("subtree", COUNTERS_FILTER)))


def _now() -> str:
    """A yang:date-and-time to the microsecond."""
    return now().isoformat(timespec="microseconds").replace("+00:00", "Z")


def _configured(link: QkdLink | None, request: ExternalLinkRequest) -> bool:
    return link is not None and (link.a, link.b, link.qkdl_id, link.peer_km) == (
        request.local, request.remote, request.qkdl_id, request.peer_km)
