"""Direct peering of two QKD network providers, with no federation platform (ITU-T Y.QKDNf,
Figure 2: the QKDNf functions of two providers talk over Ff/Fq directly).

Each provider runs a `PeeringAgent`: a NETCONF server of qi-federation (the bilateral subset:
its two members, the agreement, its own advertisement, the services its users request, the
charging records) and qi-federation-peering (each agreement's negotiation status, the peer's
offers, request-segment, release-segment, accept-agreement). The peer logs in as its
member-id with its SSH key; the agent logs in to the peer's agent the same way, each host key
pinned. Nothing is pushed into the other side's configuration: each agent declares what it
signs and offers in its own datastore and reads the peer's (woken by the peer's
netconf-config-change notifications, and every period), and asks the peer only for what the
peer must act on (a segment, its release, a delivery count).

Agreement. A provider proposes by writing the agreement in its own `agreements` (the terms it
signs); the peer sees it as an offer in its `peering` state and accepts it with
accept-agreement, which copies the offer's terms as they stand into its own agreements. The
agreement is in force while both agents hold the same terms (status agreed on both sides);
different terms under one id are `differs`, with the terms that differ; either provider ends it
by deleting its entry. No service is set up, and none is kept, without an agreement in force.

Services. A user of the provider writes a service between an SAE of its domain and one of the
peer's (it pays for it). The agent's pass plans the route from both advertisements with the
platform's algorithm (orchestrator/federation_routes.py), makes its own segment an intent of
its own orchestrator (`IntentSegments`, as the platform does) and asks the peer's agent for the
peer's segment (request-segment), which the peer's agent plans the same way from the same two
advertisements and makes an intent of its orchestrator. Both requests are idempotent and are
asked again every pass, so a segment that degrades, fails or comes back is seen within a period.

Charging (orchestrator/federation_charging.py, the platform's bookkeeping). Each agent keeps
the records of every service of the peering (both segments, on the one inter-domain hop). Its
`FederatedDomain` reports what its own key managers counted; the agent sends that report to
the peer's agent first (qi-federation report-delivery) and takes it itself once the peer did,
so both agents hold both ends' counts, confirm the same keys and find the same disputes; what
the two ends' counts contradict is a dispute, not billed. `settle` answers either member.

The agent is also the `FederatedDomain`'s agent (the interface of FederationAgent it uses:
`admitted`, `members`, `update`, `report_delivery`, `close`): the domain's end of the
inter-domain link is configured on its forwarding controller once the agreement is in force and
the peer advertises the other end, and the advertisement follows the domain.
"""
from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal

import asyncssh
from lxml import etree

from models.federation import (Advertisement, Agreement, DeliveryReport, EndCount, FederationConfig, SegmentStatus,
                               ServiceRequest, ServiceStatus, add_member, advertisement_config, delivery_report,
                               federation_state, read_advertisement, read_delivery_report, read_settle_request,
                               settlement_output)
from models.federation_peering import (AgreementStatus, Peering, agreement_entry, differences, peering_state,
                                       read_segment_reply, read_segment_request, release_segment, segment_reply,
                                       segment_request)
from models.intent import clip
from models.ns import FEDERATION, FEDERATION_PEERING as PEERING
from netconf_core import DeviceLink, Endpoint, NetconfServer, ReconcileLoop, Schema, User, write_atomically
from netconf_core.client import SessionClosedError
from netconf_core.errors import RPCError
from netconf_core.ns import NACM
from netconf_core.session import Session
from orchestrator.federation import SegmentReply, service_status
from orchestrator.federation_agent import DomainResources, SharingPolicy
from orchestrator.federation_charging import Charging, Hop, ReportError
from orchestrator.federation_domain import IntentSegments
from orchestrator.federation_routes import DomainView, Ledger, Route, Segment, plan_route, route_problem

log = logging.getLogger(__name__)

MODULE, PEER_MODULE = "qi-federation", "qi-federation-peering"
MODULES = ["qi-types", MODULE, PEER_MODULE]
PERIOD_S = 1.0          # between two passes when nothing wakes the agent
BACKOFF_CAP_S = 10.0    # longest wait between two attempts to reach a peer that does not answer
PASS_ERRORS = (RPCError, SessionClosedError, OSError, asyncio.TimeoutError, asyncssh.Error)
PEER_FILTER = f'<federation xmlns="{FEDERATION}"><agreements/><advertisements/></federation>'
STATE_FILE = "peering.json"


@dataclass(frozen=True)
class PeerAgent:
    """The peer provider's agent: where it listens, the key it logs in here with (its
    `public_key` line), and its host key (`host_key` line or a `known_hosts` file: one is
    required)."""

    member_id: str
    host: str
    port: int
    public_key: str
    host_key: str | None = None
    known_hosts: str | None = None
    name: str | None = None


@dataclass
class PeerService:
    """A service of the peering as one agent holds it: the request, the route, each segment's
    last reply (by index), its status."""

    request: ServiceRequest
    route: Route | None = None
    segments: dict[int, tuple[Segment, SegmentReply]] = field(default_factory=dict)
    status: str = "requested"
    reason: str = ""


def _error_path(*steps: str) -> dict:
    qualified = [f"qi-fed:{name}" + (f"[qi-fed:{key}" if key else "") for name, _, key in
                 (step.partition("[") for step in steps)]
    return {"path": "/" + "/".join(qualified), "path_nsmap": {"qi-fed": FEDERATION}}


def peering_rules(admins: tuple[str, ...], service_users: tuple[str, ...], peer: str) -> etree._Element:
    """The agent's NACM (RFC 8341): the administrators may do anything; service users read the
    peering and write its services; the peer reads it (not the access rules), receives its
    notifications and calls request-segment, release-segment, report-delivery and settle."""
    nacm = NACM.element("nacm")
    for leaf, value in (("enable-nacm", "true"), ("read-default", "deny"), ("write-default", "deny"),
                        ("exec-default", "deny")):
        NACM.sub(nacm, leaf, value)
    groups = NACM.sub(nacm, "groups")
    for name, users in (("admin", admins), ("service-user", service_users), ("peer", (peer,))):
        group = NACM.sub(groups, "group")
        NACM.sub(group, "name", name)
        for user in users:
            NACM.sub(group, "user-name", user)
    base = [("exec", "ietf-netconf", op) for op in ("get", "get-config", "close-session")]

    def rule_list(name: str, rules: list[tuple]) -> None:
        element = NACM.sub(nacm, "rule-list")
        NACM.sub(element, "name", name)
        NACM.sub(element, "group", name)
        for i, (action, ops, module, kind, value) in enumerate(rules):
            rule = NACM.sub(element, "rule")
            NACM.sub(rule, "name", f"{name}-{i}")
            NACM.sub(rule, "module-name", module)
            if kind == "rpc":
                NACM.sub(rule, "rpc-name", value)
            elif kind == "path":
                etree.SubElement(rule, NACM("path"), nsmap={"qi-fed": FEDERATION}).text = value
            NACM.sub(rule, "access-operations", ops)
            NACM.sub(rule, "action", action)

    rule_list("admin", [("permit", "*", "*", None, None)])
    rule_list("service-user", [
        *[("permit", ops, module, "rpc", op) for ops, module, op in
          base + [("exec", "ietf-netconf", op) for op in ("edit-config", "validate", "commit")]],
        ("permit", "exec", MODULE, "rpc", "settle"),
        ("permit", "create update delete", MODULE, "path", "/qi-fed:federation/qi-fed:services"),
        ("deny", "read", "ietf-netconf-acm", None, None),
        ("permit", "read", "*", None, None)])
    rule_list("peer", [
        *[("permit", ops, module, "rpc", op) for ops, module, op in base],
        ("permit", "exec", "notifications", "rpc", "create-subscription"),
        *[("permit", "exec", PEER_MODULE, "rpc", op) for op in ("request-segment", "release-segment")],
        *[("permit", "exec", MODULE, "rpc", op) for op in ("report-delivery", "settle")],
        ("deny", "read", "ietf-netconf-acm", None, None),
        ("permit", "read", "*", None, None)])
    return nacm


class PeeringAgent:
    """One provider's peering agent. `key`: the provider's SSH private key (how it logs in to
    the peer's agent, whose deployment holds its public line); `orchestrator`: its own
    orchestrator, as an intent writer; `users`: its own accounts, `admins` and `service_users`
    among them."""

    def __init__(self, member_id: str, name: str, key: asyncssh.SSHKey, peer: PeerAgent, policy: SharingPolicy,
                 orchestrator: Endpoint, users: dict[str, User], admins: tuple[str, ...],
                 service_users: tuple[str, ...] = (), *, host: str = "127.0.0.1", port: int = 0, host_key=None,
                 store_dir: pathlib.Path | str | None = None, period: float = PERIOD_S):
        if peer.member_id == member_id:
            raise ValueError(f"a provider does not peer with itself ({member_id})")
        clash = sorted(set(users) & {member_id, peer.member_id})
        if clash:
            raise ValueError(f"user {clash[0]!r} is the name a member logs in with: the peer logs in as its member-id")
        if not admins or set(admins + service_users) - set(users):
            raise ValueError("the administrators and service users must be among the agent's users")
        self.member_id, self.name, self.key = member_id, name, key
        self.peer = peer
        self.policy = replace(policy, peers=frozenset({peer.member_id}))
        self.admins, self.service_users = admins, service_users
        self.resources = DomainResources(())
        self.advertised: Advertisement | None = None
        store = pathlib.Path(store_dir) if store_dir is not None else None
        self._state_file = store / STATE_FILE if store else None
        self.server = NetconfServer(Schema(MODULES), {**users, peer.member_id: User(authorized_keys=[peer.public_key])},
                                    host=host, port=port, host_key=host_key, name=f"peering {member_id}",
                                    datastore_dir=store / "datastores" if store else None)
        self.server.on_change(self._check_change)
        self.server.add_state_provider(self._state, f"/{MODULE}:federation")
        for module, rpc, handler in ((PEER_MODULE, "accept-agreement", self._accept),
                                     (PEER_MODULE, "request-segment", self._request_segment),
                                     (PEER_MODULE, "release-segment", self._release_segment),
                                     (MODULE, "report-delivery", self._report_delivery),
                                     (MODULE, "settle", self._settle)):
            self.server.add_rpc(f"/{module}:{rpc}", handler)
        self.segments = IntentSegments(member_id, orchestrator, self._segment_changed)
        self.peer_link: DeviceLink | None = None   # made by start(), once the peer's address is known
        self._listening = False
        self.charging = self._load()
        self.services: dict[str, PeerService] = {}   # requested by this provider's users
        self.held: dict[str, PeerService] = {}       # requested by the peer: this provider's segment of them
        self.theirs = FederationConfig()             # the peer's agreements and advertisement, as last read
        self.reachable, self.unreachable_because = False, "not read yet"
        self._loop = ReconcileLoop(f"peering agent {member_id}", self._pass, period=period, backoff_initial=period,
                                   backoff_cap=BACKOFF_CAP_S, expected=PASS_ERRORS, logger=log)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def admitted(self) -> bool:
        """Always in its own peering (what FederatedDomain asks of an agent)."""
        return True

    @property
    def public_key(self) -> str:
        return self.key.export_public_key().decode().strip()

    async def listen(self) -> None:
        """Serve (before start(): two agents that learn each other's port first)."""
        if not self._listening:
            await self.server.start()
            self._listening = True

    async def start(self) -> None:
        await self.listen()
        await self.server.update_running(self._own_entries)
        peer = self.peer
        self.peer_link = DeviceLink(Endpoint(f"peering agent of {peer.member_id}", peer.host, peer.port,
                                             self.member_id, client_keys=(self.key,), host_key=peer.host_key,
                                             known_hosts=peer.known_hosts),
                                    (PEER_MODULE,), on_notification=self._peer_changed)
        self.segments.start()
        self.peer_link.start()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self.peer_link is not None:
            await self.peer_link.stop()
        await self.segments.stop()
        await self.server.stop()
        self._listening = False

    async def close(self) -> None:
        """What FederatedDomain calls when it stops; the agent stops with stop()."""

    async def settled(self) -> None:
        await self._loop.idle()

    def _own_entries(self, tree: etree._Element) -> etree._Element:
        """The two members (this provider and its peer, from the deployment) and the access rules."""
        fed = FEDERATION.child(tree, "federation")
        old = FEDERATION.find(fed, "members")
        if old is not None:
            fed.remove(old)
        members = etree.Element(FEDERATION("members"))
        fed.insert(0, members)
        add_member(members, self.member_id, self.name, self.public_key, self.server.host, self.server.port or 830)
        add_member(members, self.peer.member_id, self.peer.name or f"Operator {self.peer.member_id}",
                   self.peer.public_key, self.peer.host, self.peer.port)
        old_rules = tree.find(NACM("nacm"))
        if old_rules is not None:
            tree.remove(old_rules)
        tree.append(peering_rules(self.admins, self.service_users, self.peer.member_id))
        return tree

    # --- what FederatedDomain asks of its agent ------------------------------------------------

    async def members(self) -> dict[str, tuple[str, Advertisement | None]]:
        """The peer, 'admitted' while the agreement is in force, with what it advertises."""
        ad = self._peer_advertisement()
        return {self.peer.member_id: ("admitted" if self.in_force() else "applied", ad)}

    async def update(self, resources: DomainResources) -> None:
        """Advertise what the policy allows of the domain now (links towards the peer only)."""
        self.resources = resources
        offer = self.policy.advertisement(resources)
        entry = advertisement_config(self.member_id, offer)[0][0]
        entry.attrib.clear()

        def replace_ad(tree: etree._Element) -> etree._Element:
            ads = FEDERATION.child(FEDERATION.child(tree, "federation"), "advertisements")
            for old in FEDERATION.all(ads, "advertisement"):
                ads.remove(old)
            ads.append(entry)
            return tree
        await self.server.update_running(replace_ad)
        self.advertised = offer
        self._loop.wake()

    async def report_delivery(self, report: DeliveryReport) -> None:
        """What this provider's key managers counted: the peer's agent takes it first, then this
        one (so that a count is never taken twice when the peer does not answer)."""
        ends = self._resolve(self.member_id, report)
        nc = await self._peer_session()
        await nc.dispatch(delivery_report(report))
        self._take(self.member_id, report, ends)

    # --- the negotiation ----------------------------------------------------------------------

    def mine(self) -> FederationConfig:
        return FederationConfig.read(self.server.running())

    def negotiation(self) -> tuple[Agreement | None, list[AgreementStatus], list[Agreement]]:
        """The agreement in force (or None), each of this provider's agreements' status, and
        the peer's offers this provider has not taken."""
        mine = list(self.mine().agreements.values())
        theirs = {a.agreement_id: a for a in self.theirs.agreements.values()
                  if a.members == frozenset((self.member_id, self.peer.member_id))}
        in_force, statuses = None, []
        peer = self.peer.member_id
        for agreement in mine:
            other = theirs.get(agreement.agreement_id)
            if other is None:
                statuses.append(AgreementStatus(agreement.agreement_id, "proposed", f"{peer} has not accepted it"))
            elif other == agreement:
                in_force = agreement
                statuses.append(AgreementStatus(agreement.agreement_id, "agreed",
                                                f"{self.member_id} and {peer} hold the same terms"))
            else:
                statuses.append(AgreementStatus(agreement.agreement_id, "differs",
                                                "; ".join(differences(agreement, other))))
        taken = {a.agreement_id for a in mine}
        return in_force, statuses, [a for i, a in sorted(theirs.items()) if i not in taken]

    def in_force(self) -> Agreement | None:
        return self.negotiation()[0]

    def why_no_agreement(self) -> str:
        """Why no service can be set up now (there is no agreement in force)."""
        _, statuses, offers = self.negotiation()
        me, peer = self.member_id, self.peer.member_id
        for status in statuses:
            if status.status == "proposed":
                return (f"agreement {status.agreement_id} is proposed by {me} and not accepted by {peer}: "
                        f"no service until {peer} accepts it")
            if status.status == "differs":
                return f"agreement {status.agreement_id}: {status.reason}: no service until both hold the same terms"
        if offers:
            return (f"{peer} proposes agreement {offers[0].agreement_id}, which {me} has not accepted "
                    "(accept-agreement): no service until it does")
        return f"no agreement between {me} and {peer}: one of them proposes one, the other accepts it"

    async def _read_peer(self) -> None:
        try:
            nc = await self._peer_session()
            data = await nc.get_config(filter=("subtree", PEER_FILTER))
        except PASS_ERRORS as error:
            self.reachable, self.unreachable_because = False, clip(f"{type(error).__name__}: {error}")
            raise
        self.theirs = FederationConfig.read(data if data is not None else etree.Element("data"))
        self._peer_ad = next((read_advertisement(ad) for ad in FEDERATION.all(data, "federation/advertisements/"
                                                                                     "advertisement")
                              if FEDERATION.text(ad, "member-id") == self.peer.member_id), None) \
            if data is not None else None
        self.reachable, self.unreachable_because = True, ""

    async def _peer_session(self):
        if self.peer_link is None:
            raise RPCError("operation-failed", f"the peering agent of {self.member_id} is not started")
        return await self.peer_link.session()

    def _peer_advertisement(self) -> Advertisement | None:
        return getattr(self, "_peer_ad", None)

    async def _accept(self, session: Session, op: etree._Element, _context) -> None:
        """accept-agreement: the peer's offer, as it stands now, becomes this provider's agreement."""
        agreement_id = PEERING.text(op, "agreement-id", "")
        await self._read_peer()
        _, _, offers = self.negotiation()
        offer = next((a for a in offers if a.agreement_id == agreement_id), None)
        if offer is None:
            held = next((a for a in self.mine().agreements.values() if a.agreement_id == agreement_id), None)
            why = f"{self.member_id} holds agreement {agreement_id} already" if held else \
                f"{self.peer.member_id} offers no agreement {agreement_id}" + (
                    f" (it offers {', '.join(a.agreement_id for a in offers)})" if offers else "")
            raise RPCError("invalid-value", why, info={"bad-element": "agreement-id"})

        def take(tree: etree._Element) -> etree._Element:
            agreements = FEDERATION.child(FEDERATION.child(tree, "federation"), "agreements")
            for old in FEDERATION.all(agreements, "agreement"):
                agreements.remove(old)   # one agreement per pair of members
            agreements.append(agreement_entry(offer))
            return tree
        await self.server.update_running(take)
        log.info("peering %s: accepted agreement %s of %s", self.member_id, agreement_id, self.peer.member_id)
        self._loop.wake()

    # --- checks of a client's edit --------------------------------------------------------------

    async def _check_change(self, before: etree._Element, after: etree._Element) -> None:
        old, new = FederationConfig.read(before), FederationConfig.read(after)
        me, peer = self.member_id, self.peer.member_id
        if old.members != new.members:
            raise RPCError("invalid-value", f"the members are this provider ({me}) and its peer ({peer}), from the "
                           "agent's deployment", **_error_path("federation", "members"))
        if old.offers != new.offers or old.sae_kms != new.sae_kms:
            raise RPCError("invalid-value", f"the agent writes {me}'s advertisement from its sharing policy; the "
                           f"peer's is read from {peer}'s agent", **_error_path("federation", "advertisements"))
        pair = frozenset((me, peer))
        for agreement in new.agreements.values():
            where = ("federation", "agreements", f"agreement[agreement-id='{agreement.agreement_id}']")
            if agreement.members != pair:
                raise RPCError("invalid-value", f"an agreement of this peering joins {me} and {peer}, not "
                               f"{' and '.join(sorted(agreement.members))}", **_error_path(*where))
        for service_id, request in new.services.items():
            if old.services.get(service_id) == request:
                continue
            where = ("federation", "services", f"service[service-id='{service_id}']")
            if request.requesting_member != me:
                raise RPCError("invalid-value", f"a service requested here is paid for by {me}, not "
                               f"{request.requesting_member}", **_error_path(*where, "requesting-member"))
            if {request.source_domain, request.destination_domain} != pair:
                raise RPCError("invalid-value", f"a service of the peering joins an SAE of {me} and one of {peer}, "
                               f"not of {request.source_domain} and {request.destination_domain}",
                               **_error_path(*where))
        self._loop.wake()

    # --- the pass -----------------------------------------------------------------------------

    async def _peer_changed(self, link: DeviceLink, notification: etree._Element) -> None:
        self._loop.wake()   # the peer's configuration changed (RFC 6470 netconf-config-change)

    async def _segment_changed(self, service_id: str, member_id: str, reply: SegmentReply) -> None:
        self._loop.wake()   # the next pass asks for the segment again and sees its state

    async def _pass(self) -> None:
        """Read the peer; release what no agreement carries any more; keep each service of this
        provider's users on its route or move it, or say why it has none."""
        await self._read_peer()
        agreement = self.in_force()
        view = self._view(agreement)
        ledger = Ledger()
        if agreement is None:
            for service_id in list(self.held):
                await self._release_held(service_id)
        for state in self.held.values():
            if state.route is not None:
                ledger.take(state.route, state.request.rate, view)
        wanted = self.mine().services
        for service_id in [s for s in self.services if s not in wanted]:
            await self._drop(self.services.pop(service_id), "released", "the service was deleted")
        for service_id, request in sorted(wanted.items()):
            await self._place(request, agreement, view, ledger)
        self._save()

    def _view(self, agreement: Agreement | None) -> DomainView:
        """Both members, the agreement in force, both advertisements: the routes' domain view."""
        tree = etree.Element("data")
        fed = FEDERATION.child(tree, "federation")
        running = FEDERATION.find(self.server.running(), "federation")
        for part in ("members", "advertisements"):
            found = FEDERATION.find(running, part) if running is not None else None
            if found is not None:
                fed.append(etree.fromstring(etree.tostring(found)))
        ads = FEDERATION.child(fed, "advertisements")
        peer_ad = self._peer_advertisement()
        if peer_ad is not None:
            entry = advertisement_config(self.peer.member_id, peer_ad)[0][0]
            entry.attrib.clear()
            ads.append(entry)
        if agreement is not None:
            FEDERATION.child(fed, "agreements").append(agreement_entry(agreement))
        config = FederationConfig.read(tree)
        status = "admitted" if agreement is not None else "applied"
        return DomainView(config, {self.member_id: "admitted", self.peer.member_id: status})

    async def _place(self, request: ServiceRequest, agreement: Agreement | None, view: DomainView,
                     ledger: Ledger) -> None:
        state = self.services.setdefault(request.service_id, PeerService(request))
        if agreement is None:
            await self._drop(state, "failed" if state.route else "rejected", self.why_no_agreement())
            return
        if agreement.max_rate is not None and request.rate > agreement.max_rate:
            await self._drop(state, "failed" if state.route else "rejected",
                             f"agreement {agreement.agreement_id} allows {agreement.max_rate} bit/s, the service "
                             f"needs {request.rate}")
            return
        route = state.route if state.route and state.request == request and \
            route_problem(state.route, request, view, ledger) is None else plan_route(request, view, ledger)
        if isinstance(route, str):
            await self._drop(state, "failed" if state.route else "rejected", route)
            return
        ledger.take(route, request.rate, view)
        wanted = route.segments(request, view.config.sae_kms)
        if state.route is not None and (state.route != route or state.request != request):
            await self._drop(state, "establishing", "re-routing")
        state.request, state.route = request, route
        own = next(s for s in wanted if s.domain == self.member_id)
        peer = next(s for s in wanted if s.domain != self.member_id)
        replies = await asyncio.gather(self.segments.request_segment(request.service_id, own),
                                       self._ask_peer(request), return_exceptions=True)
        replies = [r if isinstance(r, SegmentReply) else SegmentReply("failed", reason=f"{type(r).__name__}: {r}")
                   for r in replies]
        state.segments = {own.index: (own, replies[0]), peer.index: (peer, replies[1])}
        self._open_records(request, route, agreement, view)
        status, reason = service_status([(s.domain, r) for s, r in state.segments.values()])
        state.status, state.reason = status, clip(reason or f"routed through {', '.join(route.domains)}")

    async def _ask_peer(self, request: ServiceRequest) -> SegmentReply:
        nc = await self._peer_session()
        status, intent, reason = read_segment_reply(await nc.dispatch(segment_request(request)))
        return SegmentReply(status, intent, reason)

    async def _drop(self, state: PeerService, status: str, reason: str) -> None:
        """Release the service's segments (here and at the peer) and close its records."""
        if state.segments:
            own = [s for s, _ in state.segments.values() if s.domain == self.member_id]
            for segment in own:
                await self.segments.release_segment(state.request.service_id, segment)
            try:
                nc = await self._peer_session()
                await nc.dispatch(release_segment(state.request.service_id))
            except PASS_ERRORS as error:   # the peer releases it by itself once no agreement carries it
                log.warning("peering %s: %s did not release its segment of %s: %s", self.member_id,
                            self.peer.member_id, state.request.service_id, error)
        state.segments, state.route = {}, None
        self.charging.close_records(state.request.service_id, set(), time.time())
        state.status, state.reason = status, clip(reason)

    # --- the peer's requests ----------------------------------------------------------------

    def _from_peer(self, session: Session) -> str:
        if session.username != self.peer.member_id and session.username not in self.admins:
            raise RPCError("access-denied", f"only the peer {self.peer.member_id} asks for segments")
        return self.peer.member_id

    async def _request_segment(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        """request-segment: this provider's segment of a service the peer pays for."""
        payer = self._from_peer(session)
        request = read_segment_request(op, payer)
        if {request.source_domain, request.destination_domain} != {self.member_id, payer}:
            raise RPCError("invalid-value", f"a service of the peering joins an SAE of {self.member_id} and one of "
                           f"{payer}, not of {request.source_domain} and {request.destination_domain}",
                           info={"bad-element": "domain"})
        await self._read_peer()
        agreement = self.in_force()
        if agreement is None:
            raise RPCError("operation-failed", f"no agreement in force between {self.member_id} and {payer}: "
                           f"{self.why_no_agreement()}")
        view = self._view(agreement)
        ledger = Ledger()
        for service_id, other in [*self.held.items(), *self.services.items()]:
            if other.route is not None and service_id != request.service_id:
                ledger.take(other.route, other.request.rate, view)
        state = self.held.get(request.service_id)
        if state is not None and state.request == request and state.route is not None and \
                route_problem(state.route, request, view, ledger) is None:
            route: Route | str = state.route
        elif agreement.max_rate is not None and request.rate > agreement.max_rate:
            route = f"agreement {agreement.agreement_id} allows {agreement.max_rate} bit/s, the service needs " \
                    f"{request.rate}"
        else:
            route = plan_route(request, view, ledger)
        if isinstance(route, str):
            if state is not None:
                await self._release_held(request.service_id)
            return segment_reply("failed", None, route)
        segment = next(s for s in route.segments(request, view.config.sae_kms) if s.domain == self.member_id)
        if state is not None and (state.segments.get(segment.index) or (None,))[0] != segment:
            await self._release_held(request.service_id)
        reply = await self.segments.request_segment(request.service_id, segment)
        self.held[request.service_id] = PeerService(request, route, {segment.index: (segment, reply)}, reply.status,
                                                    reply.reason)
        self._open_records(request, route, agreement, view)
        self._save()
        return segment_reply(reply.status, reply.intent, reply.reason)

    async def _release_segment(self, session: Session, op: etree._Element, _context) -> None:
        self._from_peer(session)
        await self._release_held(PEERING.text(op, "service-id", ""))
        self._save()

    async def _release_held(self, service_id: str) -> None:
        state = self.held.pop(service_id, None)
        if state is None:
            return
        for segment, _ in state.segments.values():
            await self.segments.release_segment(service_id, segment)
        self.charging.close_records(service_id, set(), time.time())

    # --- charging -----------------------------------------------------------------------------

    def _open_records(self, request: ServiceRequest, route: Route, agreement: Agreement, view: DomainView) -> None:
        """Both segments' records on the route's one hop: the payer's own at no price, the
        other's under the agreement (as the platform opens them)."""
        link = route.links[0]
        sender, receiver = route.domains
        hop = self.charging.hop(request.service_id, sender, link.at(sender).link_id, receiver,
                                link.at(receiver).link_id)
        for index, domain in enumerate(route.domains):
            paid = domain != request.requesting_member
            self.charging.open_record(domain, request.service_id, request.requesting_member, index, hop,
                                      agreement.agreement_id if paid else None,
                                      agreement.price_per_kbit if paid else Decimal(0), time.time())

    def _resolve(self, member: str, report: DeliveryReport) -> list[tuple[EndCount, Hop | None]]:
        try:
            return self.charging.check_report(member, report)
        except ReportError as error:
            raise RPCError("invalid-value", str(error), info={"bad-element": error.element}) from None

    def _take(self, member: str, report: DeliveryReport, ends: list[tuple[EndCount, Hop | None]]) -> None:
        for dispute in self.charging.take_report(member, report, ends, time.time()):
            log.warning("peering %s: dispute %d on service %s: %s counted %d keys, %s %d", self.member_id,
                        dispute.dispute_id, dispute.service_id, dispute.sender, dispute.sent[0],
                        dispute.receiver, dispute.received[0])
        self._save()

    async def _report_delivery(self, session: Session, op: etree._Element, _context) -> None:
        """report-delivery from the peer: what its key managers counted."""
        if session.username != self.peer.member_id:
            raise RPCError("access-denied", f"only the peer {self.peer.member_id} reports its counts here")
        report = read_delivery_report(op)
        self._take(self.peer.member_id, report, self._resolve(self.peer.member_id, report))

    async def _settle(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        member, start, end = read_settle_request(op)
        if member not in (self.member_id, self.peer.member_id):
            raise RPCError("invalid-value", f"no member {member} in this peering", info={"bad-element": "member-id"})
        return settlement_output(self.charging.settle_period(member, start, end))

    # --- state and persistence ------------------------------------------------------------------

    async def _state(self) -> etree._Element:
        config = self.mine()
        services = [ServiceStatus(s.request.service_id, s.status, s.reason, s.route.domains if s.route else (),
                                  tuple(SegmentStatus(i, seg.domain, seg.ingress.local_node if seg.ingress else None,
                                                      seg.egress.local_node if seg.egress else None, r.intent,
                                                      r.status)
                                        for i, (seg, r) in sorted(s.segments.items())),
                                  s.request.source_domain, s.request.destination_domain)
                    for service_id, s in self.services.items() if service_id in config.services]
        charging = self.charging
        fed = federation_state([], {}, services,
                               [charging.charge(r) for r in sorted(charging.records.values(),
                                                                   key=lambda r: r.record_id)],
                               [charging.dispute_view(d) for d in sorted(charging.disputes.values(),
                                                                          key=lambda d: d.dispute_id)])
        _, statuses, offers = self.negotiation()
        for element in peering_state(Peering(self.member_id, self.peer.member_id, self.reachable,
                                             self.unreachable_because, tuple(offers),
                                             tuple(s for s in statuses if s.agreement_id in
                                                   {a.agreement_id for a in config.agreements.values()}))):
            fed.append(element)
        data = etree.Element("data")
        data.append(fed)
        return data

    def _save(self) -> None:
        if self._state_file is None:
            return
        write_atomically(self._state_file, json.dumps(self.charging.to_json(), indent=1))

    def _load(self) -> Charging:
        if self._state_file is None or not self._state_file.exists():
            return Charging()
        return Charging.from_json(json.loads(self._state_file.read_text()))
