"""The federation platform of a federation of QKD networks (after ITU-T Y.QKDNf): one
NETCONF server of qi-federation with two faces. Fm is the members' federation agents (each
hosted by a domain's orchestrator); Fa is the service layer: users and their applications,
accounts of the platform that act for one member (listed in that member's `service-user`).

Membership. The account `enrol` (ENROL_USER, when the platform is given one) may only call
apply-membership: an applicant uses it once, with the federation's enrolment password, to
register its member-id and SSH public key. From then on the applicant logs in as its
member-id with that key (the platform adds it to the engine's users at run time) and can read
only its own membership until the administrator admits it. admit-member and suspend-member are
the administrator's; withdraw is the member's own (also for an applicant, its application) or
the administrator's. A withdrawn member's key no longer authenticates and its sessions end.

Access. Who may do what is NACM (RFC 8341) in the platform's running configuration, which the
platform owns and rewrites whenever membership changes: groups `admin`, `member`,
`service-user`, `applicant` and `enrol`, plus one group per member (`self-<id>`) whose rules
name the member's own entries by key: its membership entry, its advertisement (the only one
it may write), its service-user list. NACM paths select list entries by their keys only, and
who may see a service or a charging record depends on other leaves (requesting-member,
member-id) and on state (the route), so these questions are answered beside NACM, per session
user, by the server's access policy (`_PlatformAccess`, which narrows what NACM allows:
see NetconfServer.set_access_policy); a state provider is called without the session, so it cannot do this. A
user sees the services its member requested (a member's own account also those routed
through its domain) and their service-status-change notifications, the charging records owed
to its member or paid by it, and writes only the services its member pays for.

Routing. A pass of the reconcile loop is level-triggered: it reads the configuration and the
membership, and keeps each service on a route that is still valid or moves it. Domains are
the admitted members; two of them are adjacent when they have an agreement and an
inter-domain link that both ends advertise (same border nodes) with capacity left; a route of
more than one hop uses transit-allowed agreements only (each transit domain needs them with
both neighbours). Transit members their rating flags are used only when there is no other way;
then fewest domains, the smallest rating penalty, the cheapest, by name (federation_routes.py).
A service whose route crosses a flagged transit member moves when a route without one exists.

Charging (federation_charging.py): one record per service, segment and agreement, billed on
what both ends of an inter-domain hop report their key managers counted (report-delivery);
counts that contradict each other are a dispute, not billed; `settle` answers a member's
settlement for a period; ratings (delivery, availability, disputes over a sliding window)
are state, each member seeing its own.

Broker (Y.QKDNf 6.2): a member publishes agreement offers (offers/member-offers, its own only,
by NACM); an admitted member takes one up with take-offer and the platform writes the
agreement with the offer's terms, no administrator step, or says precisely why not.

A failed service is placed again after a back-off (1 s, doubling to 16 s while it keeps
failing), not only on the next change: a domain that answered too late may be ready now.

Segments: each segment of a route is handed to a `SegmentHandler` that the
`segment_handlers` factory returns for a member's agent endpoint (orchestrator/
federation_domain.py has the one that makes it an intent of the domain's orchestrator);
`segment_changed` is how a domain reports a segment that degraded or failed later.
request_segment must be idempotent: after a restart the platform asks again for the
segments of every routed service. Every segment names the service's two SAEs and their key
managers, as the SAEs' members advertise them, since every domain on the route relays keys
towards them.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import pathlib
import time
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any, Callable, Protocol

from lxml import etree

from models.federation import (FederationConfig, MemberStatus, SegmentStatus, ServiceRequest, ServiceStatus,
                               UserApplication, add_agreement, add_member, add_user_application, application_status,
                               federation_state, member_joined, member_left, read_delivery_report,
                               read_settle_request, service_status_change, settlement_output)
from models.intent import clip
from models.ns import FEDERATION
from netconf_core import AccessPolicy, ReconcileLoop, write_atomically
from netconf_core.errors import RPCError
from netconf_core.notifications import Event, now
from netconf_core.ns import NACM
from netconf_core.schema import Schema
from netconf_core.server import NetconfServer, User
from netconf_core.session import Session
from orchestrator.federation_access import ENROL_USER, LIVE, MODULE, access_rules
from orchestrator.federation_charging import Charging, Hop, ReportError
from orchestrator.federation_routes import (DomainView, Ledger, Route, Segment, flagged_transit, plan_route,
                                            route_problem)

log = logging.getLogger(__name__)

SEGMENT_TIMEOUT = 10.0  # seconds a domain may take to answer for one segment
RETRY_FAILED_S, RETRY_FAILED_MAX_S = 1.0, 16.0  # a failed service is tried again, doubling, up to this
RECHECK_PENDING_S = 2.0  # a segment still setting up is asked for its state again after this
UNSETTLED = ("failed", "pending")  # the segment statuses a pass asks its domain about again


def _error_path(*steps: str) -> dict[str, Any]:
    """error-path arguments of an RPCError for a qi-federation node, a prefix on every step
    and key; a step is 'name' or "name[key='value']"."""
    qualified = [f"{MODULE}:{name}" + (f"[{MODULE}:{key}" if key else "")
                 for name, _, key in (step.partition("[") for step in steps)]
    return {"path": "/" + "/".join(qualified), "path_nsmap": {MODULE: FEDERATION}}


def _timestamp() -> str:
    return now().isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the hook towards the domains -------------------------------------------------------------


@dataclass(frozen=True)
class SegmentReply:
    status: str  # a qi-federation segment-status: pending, active, degraded or failed
    intent: str | None = None  # what the domain's orchestrator created for the segment
    reason: str = ""


class SegmentHandler(Protocol):
    """How the platform asks one domain for its segments (phase 2: intents on the domain's
    orchestrator, through its federation agent). request_segment must be idempotent."""

    async def request_segment(self, service_id: str, segment: Segment) -> SegmentReply: ...

    async def release_segment(self, service_id: str, segment: Segment) -> None: ...


@dataclass(frozen=True)
class AgentEndpoint:
    """Where a member's federation agent listens (Fm), as the member registered it."""

    member_id: str
    address: str | None
    port: int


SegmentHandlers = Callable[[AgentEndpoint], SegmentHandler | None]


# --- the platform's own state -----------------------------------------------------------------


@dataclass
class Membership:
    status: str
    admitted_at: str | None = None


@dataclass
class SegmentState:
    segment: Segment
    reply: SegmentReply


@dataclass
class ServiceState:
    request: ServiceRequest
    status: str = "requested"
    reason: str = ""
    route: Route | None = None
    segments: dict[int, SegmentState] = field(default_factory=dict)
    avoid: set[str] = field(default_factory=set)  # transit domains that failed their segment of it
    failures: int = 0  # times it failed since it was last active (its retries back off)
    left_because: str = ""  # why it left its last route, until it is active on another


def service_status(replies: list[tuple[str, SegmentReply]]) -> tuple[str, str]:
    """A service's status from its segments' replies (each with its domain), with the reason
    when not active; the platform's and the direct peering's (orchestrator/federation_peering.py)."""
    for status, verb in (("failed", "could not set up or keep"), ("pending", "is still setting up"),
                         ("degraded", "delivers less than the rate on")):
        bad = [(domain, reply) for domain, reply in replies if reply.status == status]
        if bad:
            why = "; ".join(f"domain {domain} {verb} its segment" + (f": {reply.reason}" if reply.reason else "")
                            for domain, reply in bad)
            return {"pending": "establishing"}.get(status, status), why
    return "active", ""


class _PlatformAccess:
    """NACM, then the platform's questions that NACM cannot express (see the module docstring)."""

    def __init__(self, platform: FederationPlatform, nacm: AccessPolicy):
        self.platform = platform
        self.nacm = nacm

    def prune(self, session: Session, tree: etree._Element) -> etree._Element:
        return self.platform.hide_others(session.username, self.nacm.prune(session, tree))

    def check_write(self, session: Session, before: etree._Element, after: etree._Element) -> None:
        self.nacm.check_write(session, before, after)
        self.platform.check_service_owners(session.username, before, after)

    def may_notify(self, session: Session, event: Event) -> bool:
        return self.nacm.may_notify(session, event) and self.platform.may_receive(session.username, event)


class FederationPlatform:
    """The federation platform. `users` are the platform's own accounts: the administrator
    (named by `admin`), the enrolment account ENROL_USER if applications are open, and the
    service-layer (Fa) accounts; members' accounts are added as they apply. `store_dir`
    keeps the datastores, memberships and charging records across restarts."""

    def __init__(self, users: dict[str, User], admin: str, store_dir: pathlib.Path | str | None = None,
                 port: int = 0, *, host: str = "127.0.0.1", segment_handlers: SegmentHandlers | None = None,
                 host_key=None, name: str = "federation"):
        if admin not in users:
            raise ValueError(f"the administrator {admin!r} is not one of the platform's users")
        self.admin = admin
        self.accounts = dict(users)
        self.users = dict(users)  # the engine's live view: accounts plus members' keys
        self.segment_handlers = segment_handlers or (lambda endpoint: None)
        store = pathlib.Path(store_dir) if store_dir is not None else None
        self._state_file = store / "federation.json" if store else None
        self.memberships: dict[str, Membership] = {}
        self.sae_moves: dict[str, str] = {}  # SAE -> the member move-sae said serves it now
        self.charging = Charging()
        self._load()
        self.server = NetconfServer(Schema(["qi-types", MODULE]), self.users, host=host, port=port,
                                    datastore_dir=store / "datastores" if store else None,
                                    nacm=access_rules([admin], {}, []), name=name, host_key=host_key)
        self.server.set_access_policy(_PlatformAccess(self, self.server.access_policy))
        self.server.on_change(self._check_change)
        self.server.add_state_provider(self._state, f"/{MODULE}:federation")
        for rpc, handler in (("apply-membership", self._apply), ("admit-member", self._admit),
                             ("suspend-member", self._suspend), ("withdraw", self._withdraw),
                             ("report-delivery", self._report_delivery), ("settle", self._settle_rpc),
                             ("apply-service-user", self._apply_user), ("admit-service-user", self._admit_user),
                             ("move-sae", self._move_sae), ("take-offer", self._take_offer)):
            self.server.add_rpc(f"/{MODULE}:{rpc}", handler)
        self.services: dict[str, ServiceState] = {}
        self.config = FederationConfig()
        self._acting: dict[str, str] = {}  # Fa account -> member it acts for
        self._view = DomainView(self.config, {})
        self._ledger = Ledger()
        self._handlers: dict[AgentEndpoint, SegmentHandler | None] = {}
        # No retry of a failed pass: the next change tries again.
        self._loop = ReconcileLoop("federation", self._pass, backoff_initial=None, logger=log)
        self._wake()

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        self._sync_members(FederationConfig.read(self.server.running()))
        await self.server.start()
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self.server.stop()

    async def __aenter__(self) -> FederationPlatform:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def settled(self) -> None:
        """Wait until the reconcile loop has caught up with every change made so far."""
        await self._loop.idle()

    async def segment_changed(self, service_id: str, domain: str, reply: SegmentReply) -> None:
        """A domain reports its segment's new status (phase 2: from its orchestrator's intent).
        A failed transit domain is avoided by the next pass, which re-routes the service."""
        state = self.services.get(service_id)
        segment = next((s for s in state.segments.values() if s.segment.domain == domain), None) if state else None
        if state is None or segment is None:
            raise ValueError(f"domain {domain} has no segment of service {service_id}")
        segment.reply = reply
        if reply.status == "failed" and domain not in (state.request.source_domain,
                                                       state.request.destination_domain):
            state.avoid.add(domain)
        elif reply.status != "failed" and state.route is not None:
            self._open_record(state, segment.segment, self._view)  # a segment that had failed came up
            self._save()
        self._wake()  # a failed segment is asked for again, or routed around
        await self._settle(state)

    # --- the reconcile loop -------------------------------------------------------------

    def _wake(self) -> None:
        self._loop.wake()

    async def _pass(self) -> None:
        config = FederationConfig.read(self.server.running())
        self._sync_members(config)
        await self._write_access_rules()
        ratings = self.charging.ratings(config.members, config.rating, time.time())
        view = DomainView(config, {m: s.status for m, s in self.memberships.items()},
                          {m: r.score for m, r in ratings.items()},
                          frozenset(m for m, r in ratings.items() if r.below_threshold))
        ledger = Ledger()
        for service_id in [s for s in self.services if s not in config.services]:
            state = self.services[service_id]
            segments, state.route = [s.segment for s in state.segments.values()], None
            await self._release(state, segments)
            payer = state.request.requesting_member
            await self._set_status(state, "released", f"member {payer} withdrew" if self.status_of(payer) ==
                                   "withdrawn" else "the service was deleted")
            del self.services[service_id]
        # Services that hold a route keep their capacity first; then the others, by name.
        order = sorted(config.services.values(), key=lambda r: (
            self.services.get(r.service_id) is None or self.services[r.service_id].route is None, r.service_id))
        for request in order:
            await self._place(request, view, ledger)
        self._view, self._ledger = view, ledger
        self._save()
        # A failed service (a segment that timed out, a domain that answered late) is tried
        # again without waiting for a change: soon after its first failure, then less often.
        failed = [s for s in self.services.values() if s.status == "failed"]
        if failed:
            self._loop.wake_after(min(RETRY_FAILED_MAX_S, RETRY_FAILED_S * 2 ** min(s.failures for s in failed)))
            for state in failed:
                state.failures += 1
        # A segment's changes come as reports from its domain, which may cross the platform's own
        # request for it and be overtaken by its older answer: a pending segment is asked again.
        if any(s.reply.status == "pending" for state in self.services.values() if state.route is not None
               for s in state.segments.values()):
            self._loop.wake_after(RECHECK_PENDING_S)

    async def _place(self, request: ServiceRequest, view: DomainView, ledger: Ledger) -> None:
        state = self.services.setdefault(request.service_id, ServiceState(request))
        request = _located(request, state, view, self.sae_moves)
        had_route = state.route is not None or state.status == "failed"
        problem = None
        if state.route is not None:
            avoided = [d for d in state.route.domains if d in state.avoid]
            if state.request != request:
                problem = _moved(state.request, request) or "the service's request changed"
            elif avoided:
                problem = "; ".join(f"domain {d} failed its segment" for d in avoided)
            else:
                problem = route_problem(state.route, request, view, ledger)
            if problem is None and (flagged := flagged_transit(state.route, view)):
                better = plan_route(request, view, ledger, frozenset(state.avoid))
                if isinstance(better, Route) and not flagged_transit(better, view):
                    problem = "; ".join(f"member {m} is rated below the threshold (score {view.ratings[m]} < "
                                        f"{view.config.rating.threshold})" for m in flagged)
            if problem is None:
                ledger.take(state.route, request.rate, view)
                if any(s.reply.status in UNSETTLED for s in state.segments.values()):
                    await self._establish(state, view)  # ask again for what failed or is still pending
                    await self._settle(state)
                return
        if problem and not state.left_because:  # the first cause, not a failure on the way since
            state.left_because = problem
        state.request = request
        planned = plan_route(request, view, ledger, frozenset(state.avoid))
        if isinstance(planned, str):
            segments, state.route, state.segments = [s.segment for s in state.segments.values()], None, {}
            await self._release(state, segments)
            state.avoid.clear()  # with nowhere else to go, the next change tries every domain again
            reason = planned if problem in (None, planned) else f"{problem}; {planned}"
            await self._set_status(state, "failed" if had_route else "rejected", reason)
            return
        ledger.take(planned, request.rate, view)
        state.route = planned
        await self._establish(state, view)
        await self._settle(state, problem)

    async def _settle(self, state: ServiceState, problem: str | None = None) -> None:
        """Status and reason from the segments, once a route is established."""
        status, why = service_status([(s.segment.domain, s.reply) for s in state.segments.values()])
        problem = problem or state.left_because
        if status == "active" and state.route is not None:
            via = ", ".join(state.route.domains)
            why = f"re-routed through {via}: {problem}" if problem else f"routed through {via}"
            state.left_because = ""
        await self._set_status(state, status, why)

    async def _establish(self, state: ServiceState, view: DomainView) -> None:
        """Ask each domain of the route for the segments it does not hold yet, or whose last
        answer was failed or pending (new ones first, then release the old ones: make before
        break), and open the charging records."""
        assert state.route is not None
        wanted = state.route.segments(state.request, view.config.sae_kms)
        kept = {s.index: state.segments[s.index] for s in wanted if s.index in state.segments
                and state.segments[s.index].segment == s and state.segments[s.index].reply.status not in UNSETTLED}
        new = [s for s in wanted if s.index not in kept]
        old = [s.segment for i, s in state.segments.items() if i not in kept and s.segment not in new]
        state.status = "establishing"
        for segment in wanted:  # every hop, so that its two ends may report as soon as they count
            self._hop_of(state, segment)
        replies = await asyncio.gather(*(self._request(state.request.service_id, s) for s in new))
        state.segments = {**kept, **{s.index: SegmentState(s, r) for s, r in zip(new, replies)}}
        await self._release(state, old)
        for segment, reply in zip(new, replies):
            if reply.status != "failed":
                self._open_record(state, segment, view)
            elif 0 < segment.index < len(wanted) - 1:
                state.avoid.add(segment.domain)  # a transit domain: the next pass routes around it
                self._wake()
        self._close_records(state)

    async def _request(self, service_id: str, segment: Segment) -> SegmentReply:
        handler = self._handler_for(segment.domain)
        if handler is None:
            return SegmentReply("failed", reason=f"the platform has no way to reach the agent of {segment.domain}")
        try:
            async with asyncio.timeout(SEGMENT_TIMEOUT):
                return await handler.request_segment(service_id, segment)
        except Exception as err:  # a domain's failure must not stop the others
            why = f"no answer within {SEGMENT_TIMEOUT:g} s" if isinstance(err, TimeoutError) else \
                f"{type(err).__name__}: {err}"
            log.warning("federation: %s did not set up segment %d of %s: %s", segment.domain, segment.index,
                        service_id, why)
            return SegmentReply("failed", reason=why)

    async def _release(self, state: ServiceState, segments: list[Segment]) -> None:
        """Release segments the service no longer uses; close the records of those it left."""
        if state.route is None:
            self.charging.close_records(state.request.service_id, set(), time.time())
        await asyncio.gather(*(self._release_one(state.request.service_id, s) for s in segments))

    async def _release_one(self, service_id: str, segment: Segment) -> None:
        handler = self._handler_for(segment.domain)
        if handler is None:
            return
        try:
            async with asyncio.timeout(SEGMENT_TIMEOUT):
                await handler.release_segment(service_id, segment)
        except Exception as err:
            log.warning("federation: %s did not release segment %d of %s: %s", segment.domain, segment.index,
                        service_id, err)

    def _handler_for(self, member_id: str) -> SegmentHandler | None:
        entry = self.config.members.get(member_id)
        endpoint = AgentEndpoint(member_id, entry.agent_address if entry else None, entry.agent_port if entry else 830)
        if endpoint not in self._handlers:
            self._handlers[endpoint] = self.segment_handlers(endpoint)
        return self._handlers[endpoint]

    async def _set_status(self, state: ServiceState, status: str, reason: str) -> None:
        held = {s.segment.domain: s.reply.status for s in state.segments.values()} if status != "released" else {}
        self.charging.hold(state.request.service_id, held, time.time())
        previous = state.status
        reason = clip(reason)
        if status == "active":
            state.failures = 0
        if (previous, state.reason) == (status, reason):
            return
        state.status, state.reason = status, reason
        await self.server.notify(service_status_change(state.request.service_id, status, previous, reason,
                                                       _timestamp()))

    # --- charging -----------------------------------------------------------------------

    def _hop_of(self, state: ServiceState, segment: Segment) -> Hop | None:
        """The hop a segment's record is billed on: its egress link, or its ingress in the last
        domain (None for a route within one domain)."""
        assert state.route is not None
        domains, links = state.route.domains, state.route.links
        if not links:
            return None
        i = min(segment.index, len(links) - 1)
        sender, receiver, link = domains[i], domains[i + 1], links[i]
        return self.charging.hop(state.request.service_id, sender, link.at(sender).link_id, receiver,
                                 link.at(receiver).link_id)

    def _open_record(self, state: ServiceState, segment: Segment, view: DomainView) -> None:
        """The segment's record under the agreement towards the payer (see qi-federation)."""
        agreement = None
        payer = state.request.requesting_member
        route = state.route.domains if state.route else ()
        if segment.domain != payer:
            i = segment.index
            if payer in route:  # the neighbour towards the payer
                neighbour = route[i - 1] if i > route.index(payer) else route[i + 1]
            else:  # towards the source; the source domain deals with the payer itself
                neighbour = route[i - 1] if i > 0 else payer
            agreement = view.agreement(segment.domain, neighbour)
        self.charging.open_record(segment.domain, state.request.service_id, payer, segment.index,
                                  self._hop_of(state, segment), agreement.agreement_id if agreement else None,
                                  agreement.price_per_kbit if agreement else Decimal(0), time.time())

    def _close_records(self, state: ServiceState) -> None:
        """Close the records of the segments the service no longer holds."""
        held = {(s.segment.domain, s.segment.index) for s in state.segments.values()}
        hops = {(s.segment.domain, s.segment.index): self._hop_of(state, s.segment) for s in state.segments.values()}
        keep = {r.record_id for r in self.charging.records.values()
                if r.service_id == state.request.service_id and (r.member_id, r.segment) in held
                and r.hop == (h.key if (h := hops[(r.member_id, r.segment)]) else None)}
        self.charging.close_records(state.request.service_id, keep, time.time())
        self._save()

    async def _report_delivery(self, session: Session, op: etree._Element, _context) -> None:
        member = session.username
        report = read_delivery_report(op)
        try:
            ends = self.charging.check_report(member, report)
        except ReportError as err:
            raise RPCError("invalid-value", str(err), info={"bad-element": err.element}) from None
        for dispute in self.charging.take_report(member, report, ends, time.time()):
            log.warning("federation: dispute %d on service %s, link %s: %s counted %d keys, %s %d",
                        dispute.dispute_id, dispute.service_id, dispute.hop, dispute.sender, dispute.sent[0],
                        dispute.receiver, dispute.received[0])
        ratings = self.charging.ratings(self.config.members, self.config.rating, time.time())
        if {m for m, r in ratings.items() if r.below_threshold} != self._view.flagged:
            self._wake()  # routing avoids the members flagged now, or may use them again
        self._save()
        return None

    async def _settle_rpc(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        member, start, end = read_settle_request(op)
        user = session.username
        if not self.is_admin(user) and self.acting_member(user) != member:
            raise RPCError("access-denied", f"user '{user}' may settle only the member it acts for, not {member}")
        if member not in self.memberships:
            raise RPCError("invalid-value", f"no member {member}", info={"bad-element": "member-id"})
        return settlement_output(self.charging.settle_period(member, start, end))

    # --- membership ---------------------------------------------------------------------

    async def _apply(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        member_id = FEDERATION.text(op, "member-id", "")
        key = FEDERATION.text(op, "ssh-public-key", "")
        if member_id in self.accounts:
            raise RPCError("invalid-value", f"member-id '{member_id}' is the name of an account of the platform",
                           info={"bad-element": "member-id"})
        current = self.memberships.get(member_id)
        if current is not None and current.status in LIVE:
            raise RPCError("data-exists", f"member {member_id} has applied already (status {current.status})",
                           info={"bad-element": "member-id"})
        holder = next((m.member_id for m in self.config.members.values() if _same_key(m.ssh_public_key, key)
                       and m.member_id != member_id and self.status_of(m.member_id) in LIVE), None)
        if holder is not None:
            raise RPCError("invalid-value", f"this SSH key already authenticates member {holder}",
                           info={"bad-element": "ssh-public-key"})

        def add_entry(tree: etree._Element) -> None:
            members = FEDERATION.child(FEDERATION.child(tree, "federation"), "members")
            for old in members.iterfind(FEDERATION("member")):
                if FEDERATION.text(old, "member-id") == member_id:
                    members.remove(old)
            add_member(members, FEDERATION.text(op, "member-id"), FEDERATION.text(op, "name"),
                       FEDERATION.text(op, "ssh-public-key"), FEDERATION.text(op, "agent-address"),
                       FEDERATION.text(op, "agent-port", "830"))

        await self._change_membership(member_id, Membership("applied"), add_entry)
        return [application_status("applied")]

    async def _admit(self, session: Session, op: etree._Element, _context) -> None:
        member_id = self._known_member(op)
        status = self.memberships[member_id].status
        if status not in ("applied", "suspended"):
            raise RPCError("invalid-value", f"member {member_id} is {status}: only an applied or suspended "
                           "member can be admitted", info={"bad-element": "member-id"})
        admitted_at = _timestamp()
        await self._change_membership(member_id, Membership("admitted", admitted_at))
        await self.server.notify(member_joined(member_id, self.config.members[member_id].name, admitted_at))

    # --- service-layer (Fa) users ------------------------------------------------------------

    async def _apply_user(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        """A user applies to act for a member (see qi-federation apply-service-user)."""
        application = UserApplication(FEDERATION.text(op, "user-name", ""), FEDERATION.text(op, "member-id", ""),
                                      FEDERATION.text(op, "ssh-public-key", ""), FEDERATION.text(op, "description"))
        name, member_id = application.user_name, application.member_id
        if name in self.accounts or name in self.memberships:
            raise RPCError("invalid-value", f"user-name '{name}' is the name of an account of the platform or of a "
                           "member", info={"bad-element": "user-name"})
        if name in self.config.applications:
            raise RPCError("data-exists", f"user {name} has applied already", info={"bad-element": "user-name"})
        if self.status_of(member_id) != "admitted":
            why = f"is {self.status_of(member_id)}" if member_id in self.memberships else "is not a member"
            raise RPCError("invalid-value", f"member {member_id} {why}: a user can apply only to an admitted member",
                           info={"bad-element": "member-id"})
        holder = next((u for u, a in self.config.applications.items()
                       if _same_key(a.ssh_public_key, application.ssh_public_key)), None) or next(
            (m.member_id for m in self.config.members.values()
             if _same_key(m.ssh_public_key, application.ssh_public_key) and self.status_of(m.member_id) in LIVE), None)
        if holder is not None:
            raise RPCError("invalid-value", f"this SSH key already authenticates {holder}",
                           info={"bad-element": "ssh-public-key"})
        await self._update(lambda tree: add_user_application(tree, application))
        return [application_status("applied")]

    async def _admit_user(self, session: Session, op: etree._Element, _context) -> None:
        """The member a user applied for (or the administrator) admits it: lists it in its service-user."""
        name = FEDERATION.text(op, "user-name", "")
        application = self.config.applications.get(name)
        if application is None:
            raise RPCError("invalid-value", f"no application of user {name}", info={"bad-element": "user-name"})
        member_id = application.member_id
        if session.username != member_id and not self.is_admin(session.username):
            raise RPCError("access-denied", f"user {name} applied to act for member {member_id}: only that member "
                           "or the administrator may admit it")
        if self.status_of(member_id) != "admitted":
            raise RPCError("invalid-value", f"member {member_id} is {self.status_of(member_id)}: it cannot take "
                           "service users", info={"bad-element": "user-name"})
        if name in self.config.members[member_id].service_users:
            return

        def add(tree: etree._Element) -> None:
            for entry in FEDERATION.all(FEDERATION.child(tree, "federation"), "members/member"):
                if FEDERATION.text(entry, "member-id") == member_id:
                    FEDERATION.sub(entry, "service-user", name)
        await self._update(add)

    async def _move_sae(self, session: Session, op: etree._Element, _context) -> None:
        """An SAE moved to another member's key manager: its services follow it (see qi-federation)."""
        sae, member_id = FEDERATION.text(op, "sae-id", ""), FEDERATION.text(op, "member-id", "")
        if session.username != member_id and not self.is_admin(session.username):
            raise RPCError("access-denied", f"only member {member_id}, where the SAE is now, or the administrator may "
                           f"move SAE {sae} there")
        if self.status_of(member_id) != "admitted":
            raise RPCError("invalid-value", f"member {member_id} is {self.status_of(member_id) or 'not a member'}: an "
                           "SAE can move only to an admitted member", info={"bad-element": "member-id"})
        if (member_id, sae) not in FederationConfig.read(self.server.running()).sae_kms:
            raise RPCError("invalid-value", f"member {member_id} does not advertise SAE {sae}: attach the SAE to one "
                           "of its key managers first (qi-key-manager saes), then move it",
                           info={"bad-element": "sae-id"})
        self.sae_moves[sae] = member_id
        self._save()
        self._wake()

    async def _take_offer(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        """The broker (Y.QKDNf 6.2): a member takes up another's offer, and the agreement between
        the two is written with the offer's terms (see qi-federation take-offer)."""
        member_id, offer_id, taker = FEDERATION.text(op, "member-id", ""), FEDERATION.text(op, "offer-id", ""), \
            session.username
        if taker not in self.memberships:
            raise RPCError("access-denied", f"user '{taker}' is not a member: only a member takes up an offer")
        if self.status_of(taker) != "admitted":
            raise RPCError("access-denied", f"member {taker} is {self.status_of(taker)}: only an admitted member "
                                            "takes up an offer")
        config = FederationConfig.read(self.server.running())
        offer = config.agreement_offers.get((member_id, offer_id))
        if offer is None:
            raise RPCError("invalid-value", f"member {member_id} has no offer {offer_id}",
                           info={"bad-element": "offer-id"})
        if member_id == taker:
            raise RPCError("invalid-value", f"offer {offer_id} is member {taker}'s own",
                           info={"bad-element": "member-id"})
        if self.status_of(member_id) != "admitted":
            raise RPCError("invalid-value", f"member {member_id} is {self.status_of(member_id)}: its offers cannot "
                                            "be taken up", info={"bad-element": "member-id"})
        if offer.open_to and taker not in offer.open_to:
            raise RPCError("access-denied", f"offer {offer_id} of member {member_id} is open to "
                                            f"{', '.join(offer.open_to)} only, not to {taker}")
        existing = config.agreements.get(frozenset((member_id, taker)))
        if existing is not None:
            raise RPCError("data-exists", f"members {member_id} and {taker} are party to agreement "
                                          f"{existing.agreement_id} already", info={"bad-element": "member-id"})
        agreement_id = f"{member_id}-{taker}-{offer_id}"
        if len(agreement_id) > 64:
            agreement_id = "offer-" + hashlib.sha256(agreement_id.encode()).hexdigest()[:32]
        if any(a.agreement_id == agreement_id for a in config.agreements.values()):
            raise RPCError("data-exists", f"an agreement {agreement_id} exists already between other members",
                           info={"bad-element": "offer-id"})
        await self._update(lambda tree: add_agreement(tree, agreement_id, offer, taker))
        log.info("federation: %s took up offer %s of %s: agreement %s", taker, offer_id, member_id, agreement_id)
        return [FEDERATION.element("agreement-id", agreement_id)]

    async def _suspend(self, session: Session, op: etree._Element, _context) -> None:
        member_id = self._known_member(op)
        membership = self.memberships[member_id]
        if membership.status != "admitted":
            raise RPCError("invalid-value", f"member {member_id} is {membership.status}: only an admitted member "
                           "can be suspended", info={"bad-element": "member-id"})
        await self._change_membership(member_id, Membership("suspended", membership.admitted_at))

    async def _withdraw(self, session: Session, op: etree._Element, _context) -> None:
        member_id = self._known_member(op)
        if session.username != member_id and not self.is_admin(session.username):
            raise RPCError("access-denied", f"only member {member_id} itself or the administrator may withdraw it")
        status = self.memberships[member_id].status
        if status not in LIVE:
            raise RPCError("invalid-value", f"member {member_id} is {status} already",
                           info={"bad-element": "member-id"})

        def remove_what_it_offered(tree: etree._Element) -> None:
            fed = FEDERATION.child(tree, "federation")
            for path, owner in (("advertisements/advertisement", "member-id"),
                                ("services/service", "requesting-member")):
                for entry in FEDERATION.all(fed, path):
                    if FEDERATION.text(entry, owner) == member_id:
                        entry.getparent().remove(entry)

        await self._change_membership(member_id, Membership("withdrawn"), remove_what_it_offered)
        await self.server.notify(member_left(member_id, clip(FEDERATION.text(op, "reason") or "withdrawn"),
                                             _timestamp()))
        # After this reply is sent: the member's key no longer authenticates, its sessions end.
        asyncio.get_running_loop().call_soon(self._end_sessions, member_id)

    def _known_member(self, op: etree._Element) -> str:
        member_id = FEDERATION.text(op, "member-id", "")
        if member_id not in self.memberships:
            raise RPCError("invalid-value", f"no member {member_id}", info={"bad-element": "member-id"})
        return member_id

    def _end_sessions(self, member_id: str) -> None:
        for session in list(self.server.sessions.values()):
            if session.username == member_id:
                session.terminate()

    async def _change_membership(self, member_id: str, membership: Membership,
                                 edit: Callable[[etree._Element], None] | None = None) -> None:
        previous = self.memberships.get(member_id)
        self.memberships[member_id] = membership
        try:
            await self._update(edit)
        except RPCError:
            if previous is None:
                del self.memberships[member_id]
            else:
                self.memberships[member_id] = previous
            raise

    async def _update(self, edit: Callable[[etree._Element], None] | None) -> None:
        """Edit the running configuration as the platform (its access rules rewritten to match),
        then follow it: memberships, accounts, who acts for whom."""
        def change(tree: etree._Element) -> etree._Element:
            if edit is not None:
                edit(tree)
            self._replace_access_rules(tree, FederationConfig.read(tree))
            return tree
        await self.server.update_running(change)
        self._sync_members(FederationConfig.read(self.server.running()))
        self._save()
        self._wake()

    def _sync_members(self, config: FederationConfig) -> None:
        """Memberships, member accounts and Fa accounts after a change of the configuration."""
        self.config = config
        for member_id in list(self.memberships):
            if member_id not in config.members:
                del self.memberships[member_id]
        for member_id in config.members:
            self.memberships.setdefault(member_id, Membership("applied"))
        for user in [u for u in self.users if u not in self.accounts]:
            if (user not in config.members or self.memberships[user].status not in LIVE) and \
                    user not in config.applications:
                del self.users[user]
        for member_id, entry in config.members.items():
            if self.memberships[member_id].status in LIVE:
                self.users[member_id] = User(authorized_keys=[entry.ssh_public_key])
        for user, application in config.applications.items():
            self.users[user] = User(authorized_keys=[application.ssh_public_key])
        self._acting = {user: m for m, entry in sorted(config.members.items())
                        if self.memberships[m].status == "admitted" for user in entry.service_users}

    def _replace_access_rules(self, tree: etree._Element, config: FederationConfig) -> None:
        admitted = [m for m in config.members if self.status_of(m) == "admitted"]
        admins = [self.admin] + [m for m in admitted if config.members[m].role == "admin"]
        service_users = sorted({u for m in admitted for u in config.members[m].service_users})
        waiting = sorted(set(config.applications) - set(service_users))
        rules = access_rules(admins, {m: self.status_of(m) or "applied" for m in config.members}, service_users,
                             waiting)
        old = tree.find(NACM("nacm"))
        if old is not None:
            tree.replace(old, rules)
        else:
            tree.append(rules)

    async def _write_access_rules(self) -> None:
        def change(tree: etree._Element) -> etree._Element:
            self._replace_access_rules(tree, FederationConfig.read(tree))
            return tree
        await self.server.update_running(change)

    async def _check_change(self, before: etree._Element, after: etree._Element) -> None:
        """What the model cannot say about an edit by a client."""
        config = FederationConfig.read(after)
        acting: dict[str, str] = {}
        for member_id, entry in sorted(config.members.items()):
            where = ("federation", "members", f"member[member-id='{member_id}']")
            if member_id in self.accounts:
                raise RPCError("invalid-value", f"member-id '{member_id}' is the name of an account of the platform",
                               **_error_path(*where))
            for user in entry.service_users:
                application = config.applications.get(user)
                if application is not None and application.member_id != member_id:
                    raise RPCError("invalid-value", f"service-user '{user}' applied to act for member "
                                   f"{application.member_id}, not {member_id}", **_error_path(*where, "service-user"))
                if application is None and (user not in self.accounts or user in (self.admin, ENROL_USER)):
                    raise RPCError("invalid-value", f"service-user '{user}' is not a service-layer account of "
                                   "the platform", **_error_path(*where, "service-user"))
                if user in acting:
                    raise RPCError("invalid-value", f"service-user '{user}' acts for member {acting[user]} already",
                                   **_error_path(*where, "service-user"))
                acting[user] = member_id
        for user in config.applications:
            if user in self.accounts or user in config.members:
                raise RPCError("invalid-value", f"user-name '{user}' is the name of an account of the platform or "
                               "of a member", **_error_path("federation", "service-users",
                                                            f"service-user[user-name='{user}']"))
        self._wake()

    # --- what each user sees and may write ------------------------------------------------

    def status_of(self, member_id: str) -> str | None:
        membership = self.memberships.get(member_id)
        return membership.status if membership else None

    def is_admin(self, user: str) -> bool:
        entry = self.config.members.get(user)
        return user == self.admin or (entry is not None and entry.role == "admin"
                                      and self.status_of(user) == "admitted")

    def acting_member(self, user: str) -> str | None:
        """The admitted member a user acts for: itself (its agent's account) or, for a Fa account,
        the member that lists it."""
        if user in self.memberships:
            return user if self.status_of(user) == "admitted" else None
        return self._acting.get(user)

    def may_see_service(self, user: str, service_id: str, requesting_member: str | None = None) -> bool:
        if self.is_admin(user):
            return True
        member = self.acting_member(user)
        state = self.services.get(service_id)
        if requesting_member is None and state is not None:
            requesting_member = state.request.requesting_member
        if member is None:
            return False
        if requesting_member == member:
            return True
        return (user == member and state is not None and state.route is not None
                and member in state.route.domains)

    def hide_others(self, user: str, tree: etree._Element) -> etree._Element:
        """Remove, from a tree NACM already pruned, the services, charging records, disputes and
        ratings that are not the user's member's (a dispute is its two ends' and the payers')."""
        if tree.find(FEDERATION("federation")) is None or self.is_admin(user):
            return tree
        tree = copy.deepcopy(tree)  # NACM may hand back the datastore's own tree
        fed = tree.find(FEDERATION("federation"))
        member = self.acting_member(user)
        for service in FEDERATION.all(fed, "services/service"):
            service_id = FEDERATION.text(service, "service-id", "")
            if not self.may_see_service(user, service_id, FEDERATION.text(service, "requesting-member")):
                service.getparent().remove(service)
        records = self.charging.records
        for element in FEDERATION.all(fed, "charging/record"):
            record = records.get(int(FEDERATION.text(element, "record-id", "0")))
            if record is None or member not in (record.member_id, record.payer):
                element.getparent().remove(element)
        for element in FEDERATION.all(fed, "charging/dispute"):
            dispute = self.charging.disputes.get(int(FEDERATION.text(element, "dispute-id", "0")))
            if dispute is None or not (member in (dispute.sender, dispute.receiver) or any(
                    member == records[r].payer for r in dispute.records if r in records)):
                element.getparent().remove(element)
        for element in FEDERATION.all(fed, "ratings/rating"):
            if FEDERATION.text(element, "member-id") != member:
                element.getparent().remove(element)
        for element in FEDERATION.all(fed, "offers/member-offers/offer"):
            open_to = [(e.text or "").strip() for e in FEDERATION.all(element, "open-to")]
            if FEDERATION.text(element.getparent(), "member-id") != member and open_to and member not in open_to:
                element.getparent().remove(element)  # an offer made to others only
        applications = self.config.applications
        for element in FEDERATION.all(fed, "service-users/service-user"):
            name = FEDERATION.text(element, "user-name", "")
            applied_for = applications[name].member_id if name in applications else None
            if name != user and not (user == member and applied_for == member):
                element.getparent().remove(element)  # a member sees those who applied to it; a user, itself
        return tree

    def check_service_owners(self, user: str, before: etree._Element, after: etree._Element) -> None:
        """A member, or a Fa account acting for it, may create, change and delete only the
        services its member pays for."""
        if self.is_admin(user):
            return
        member = self.acting_member(user)
        old, new = FederationConfig.read(before).services, FederationConfig.read(after).services
        for service_id in sorted(set(old) | set(new)):
            if old.get(service_id) == new.get(service_id):
                continue
            for request in (old.get(service_id), new.get(service_id)):
                if request is not None and request.requesting_member != member:
                    raise RPCError("access-denied", f"user '{user}' acts for {member or 'no member'} and may not "
                                   f"write service {service_id}, which {request.requesting_member} pays for",
                                   **_error_path("federation", "services", f"service[service-id='{service_id}']"))

    def may_receive(self, user: str, event: Event) -> bool:
        if event.module == MODULE and event.name == "service-status-change":
            return self.may_see_service(user, FEDERATION.text(event.content, "service-id", ""))
        return True

    # --- operational state ----------------------------------------------------------------

    async def _state(self) -> etree._Element:
        config = FederationConfig.read(self.server.running())  # never state for deleted entries
        members = [MemberStatus(member_id, self.memberships[member_id].status, self.memberships[member_id].admitted_at)
                   for member_id in config.members if member_id in self.memberships]
        usable = {(m, crossing): link for link in self._view.links.values() for m, crossing in link.ends}

        def left(member_id: str, crossing) -> int:
            used = usable.get((member_id, crossing))
            return max(0, self._ledger.link_left(used)) if used else 0
        available = {member_id: [(crossing.link_id, left(member_id, crossing)) for crossing in offers]
                     for member_id, offers in config.offers.items()}
        services = []
        for service_id, state in self.services.items():
            if service_id not in config.services:
                continue
            segments = tuple(SegmentStatus(index, s.segment.domain, s.segment.ingress.local_node if s.segment.ingress
                                           else None, s.segment.egress.local_node if s.segment.egress else None,
                                           s.reply.intent, s.reply.status)
                             for index, s in sorted(state.segments.items()))
            services.append(ServiceStatus(service_id, state.status, state.reason,
                                          state.route.domains if state.route else (), segments,
                                          state.request.source_domain, state.request.destination_domain))
        charging = self.charging
        charges = [charging.charge(r) for r in sorted(charging.records.values(), key=lambda r: r.record_id)]
        disputes = [charging.dispute_view(d) for d in sorted(charging.disputes.values(), key=lambda d: d.dispute_id)]
        ratings = charging.ratings([m for m in config.members if m in self.memberships], config.rating, time.time())
        users = [(user, "admitted" if self._acting.get(user) == application.member_id else "applied")
                 for user, application in sorted(config.applications.items())]
        data = etree.Element("data")
        data.append(federation_state(members, available, services, charges, disputes, list(ratings.values()), users))
        return data

    # --- persistence ----------------------------------------------------------------------

    def _save(self) -> None:
        if self._state_file is None:
            return
        self.charging.prune(self.config.rating.window, time.time())
        state = {"memberships": {m: asdict(s) for m, s in self.memberships.items()}, "sae-moves": self.sae_moves,
                 **self.charging.to_json()}
        write_atomically(self._state_file, json.dumps(state, indent=1))

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        state = json.loads(self._state_file.read_text())
        self.memberships = {m: Membership(**s) for m, s in state["memberships"].items()}
        self.sae_moves = dict(state.get("sae-moves", {}))
        self.charging = Charging.from_json(state)


def _same_key(a: str, b: str) -> bool:
    """Two authorized_keys lines name the same key (type and base64 data; comments aside)."""
    return a.split()[:2] == b.split()[:2]


def _located(request: ServiceRequest, state: ServiceState, view: DomainView,
             moves: dict[str, str]) -> ServiceRequest:
    """The request with each end in the member that serves its SAE now: the member move-sae
    named while it advertises the SAE; else the one the request names while it does (or when
    nobody does); else the route's end domain while it does; else another member that does
    (an SAE that moved away: the service follows it)."""
    def where(sae: str, named: str, current: str | None) -> str:
        serving = sorted(m for (m, s) in view.config.sae_kms if s == sae and m in view.admitted)
        if moves.get(sae) in serving:
            return moves[sae]
        if not serving or named in serving:
            return named
        return current if current in serving else serving[0]
    route = state.route.domains if state.route else ()
    return replace(request, source_domain=where(request.source_sae, request.source_domain, route[0] if route else None),
                   destination_domain=where(request.destination_sae, request.destination_domain,
                                            route[-1] if route else None))


def _moved(before: ServiceRequest, after: ServiceRequest) -> str | None:
    """Why a service moves when only where its SAEs are changed, or None."""
    if replace(before, source_domain=after.source_domain, destination_domain=after.destination_domain) != after:
        return None
    moves = [f"SAE {sae} moved from {old} to {new}" for sae, old, new in (
        (after.source_sae, before.source_domain, after.source_domain),
        (after.destination_sae, before.destination_domain, after.destination_domain)) if old != new]
    return "; ".join(moves) or None
