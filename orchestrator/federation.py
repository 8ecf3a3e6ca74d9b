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
both neighbours). Fewest domains first, then the cheapest, then by name.

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
import itertools
import json
import logging
import os
import pathlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Callable, Protocol

import networkx as nx
from lxml import etree

from netconf_core import AccessPolicy, ReconcileLoop
from netconf_core.errors import RPCError
from netconf_core.notifications import Event, now
from netconf_core.schema import Schema
from netconf_core.server import NACM_NS, NetconfServer, User
from netconf_core.session import Session

log = logging.getLogger(__name__)

FED_NS = "urn:qstrata:yang:qi-federation"
MODULE = "qi-federation"
ENROL_USER = "enrol"
SEGMENT_TIMEOUT = 10.0  # seconds a domain may take to answer for one segment
REASON_MAX = 1024
MICRO = Decimal("0.000001")
LIVE = ("applied", "admitted", "suspended")  # statuses whose key authenticates


def _f(tag: str) -> str:
    return f"{{{FED_NS}}}{tag}"


def _text(parent: etree._Element | None, tag: str, default: str | None = None) -> str | None:
    value = parent.findtext(_f(tag)) if parent is not None else None
    return value.strip() if value is not None else default


def _leaf(parent: etree._Element, tag: str, value: object) -> etree._Element:
    element = etree.SubElement(parent, _f(tag))
    element.text = str(value)
    return element


def _child(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.find(_f(tag))
    return found if found is not None else etree.SubElement(parent, _f(tag))


def _clip(reason: str) -> str:
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 3] + "..."


def _error_path(*steps: str) -> dict[str, Any]:
    """error-path arguments of an RPCError for a qi-federation node, a prefix on every step
    and key; a step is 'name' or "name[key='value']"."""
    qualified = [f"{MODULE}:{name}" + (f"[{MODULE}:{key}" if key else "")
                 for name, _, key in (step.partition("[") for step in steps)]
    return {"path": "/" + "/".join(qualified), "path_nsmap": {MODULE: FED_NS}}


def _timestamp() -> str:
    return now().isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the configuration, as read from running ----------------------------------------------


@dataclass(frozen=True)
class MemberEntry:
    member_id: str
    name: str
    role: str
    ssh_public_key: str
    agent_address: str | None
    agent_port: int
    service_users: tuple[str, ...]


@dataclass(frozen=True)
class Agreement:
    agreement_id: str
    members: frozenset[str]
    transit_allowed: bool
    price_per_kbit: Decimal
    max_rate: int | None


@dataclass(frozen=True)
class Crossing:
    """An inter-domain link as one of its two domains advertises it."""

    link_id: str
    local_node: str
    peer_member: str
    peer_node: str


@dataclass(frozen=True)
class ServiceRequest:
    service_id: str
    requesting_member: str
    source_sae: str
    source_domain: str
    destination_sae: str
    destination_domain: str
    rate: int


@dataclass
class FederationConfig:
    members: dict[str, MemberEntry] = field(default_factory=dict)
    agreements: dict[frozenset[str], Agreement] = field(default_factory=dict)
    offers: dict[str, dict[Crossing, int]] = field(default_factory=dict)  # member -> crossing -> capacity
    services: dict[str, ServiceRequest] = field(default_factory=dict)
    sae_kms: dict[tuple[str, str], str] = field(default_factory=dict)  # (member, advertised SAE) -> its key manager

    @classmethod
    def read(cls, tree: etree._Element) -> FederationConfig:
        config = cls()
        fed = tree.find(_f("federation"))
        if fed is None:
            return config
        for m in fed.iterfind(f"{_f('members')}/{_f('member')}"):
            agent = m.find(_f("agent"))
            entry = MemberEntry(_text(m, "member-id", ""), _text(m, "name", ""), _text(m, "role", "member"),
                                _text(m, "ssh-public-key", ""), _text(agent, "address"),
                                int(_text(agent, "port", "830")),
                                tuple((e.text or "").strip() for e in m.iterfind(_f("service-user"))))
            config.members[entry.member_id] = entry
        for a in fed.iterfind(f"{_f('agreements')}/{_f('agreement')}"):
            max_rate = _text(a, "max-rate")
            agreement = Agreement(_text(a, "agreement-id", ""),
                                  frozenset((_text(a, "member-a", ""), _text(a, "member-b", ""))),
                                  _text(a, "transit-allowed", "false") == "true",
                                  Decimal(_text(a, "price-per-kbit", "0")), int(max_rate) if max_rate else None)
            config.agreements[agreement.members] = agreement
        for ad in fed.iterfind(f"{_f('advertisements')}/{_f('advertisement')}"):
            member_id = _text(ad, "member-id", "")
            offers = config.offers.setdefault(member_id, {})
            for sae in ad.iterfind(_f("sae")):
                config.sae_kms[(member_id, _text(sae, "sae-id", ""))] = _text(sae, "km-id", "")
            for link in ad.iterfind(_f("inter-domain-link")):
                crossing = Crossing(_text(link, "link-id", ""), _text(link, "local-border-node", ""),
                                    _text(link, "peer-member", ""), _text(link, "peer-border-node", ""))
                offers[crossing] = int(_text(link, "capacity", "0"))
        for s in fed.iterfind(f"{_f('services')}/{_f('service')}"):
            src, dst = s.find(_f("source")), s.find(_f("destination"))
            request = ServiceRequest(_text(s, "service-id", ""), _text(s, "requesting-member", ""),
                                     _text(src, "sae-id", ""), _text(src, "domain", ""),
                                     _text(dst, "sae-id", ""), _text(dst, "domain", ""), int(_text(s, "rate", "0")))
            config.services[request.service_id] = request
        return config


# --- the domain-level view: links, routes, capacity -----------------------------------------


@dataclass(frozen=True)
class Link:
    """An inter-domain link both its ends advertise; usable up to the smaller offer."""

    ends: tuple[tuple[str, Crossing], tuple[str, Crossing]]  # ordered by member-id
    capacity: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        (a, at_a), (b, at_b) = self.ends
        return (a, at_a.local_node, b, at_b.local_node)

    def at(self, member: str) -> Crossing:
        return next(crossing for m, crossing in self.ends if m == member)

    @property
    def name(self) -> str:
        (a, at_a), (b, _) = self.ends
        return f"{at_a.link_id} ({a}-{b})"


@dataclass(frozen=True)
class Segment:
    """One domain's part of a cross-domain service: keys enter the domain at `ingress` (from
    the upstream domain; in the first domain, from the source SAE) and leave it at `egress`
    (towards the downstream domain; in the last domain, to the destination SAE)."""

    index: int
    domain: str
    rate: int
    source_sae: str | None = None       # the service's SAEs
    destination_sae: str | None = None
    ingress: Crossing | None = None
    egress: Crossing | None = None
    source_km: str | None = None        # their key managers, when their members advertise them
    destination_km: str | None = None


@dataclass(frozen=True)
class Route:
    domains: tuple[str, ...]
    links: tuple[Link, ...]  # links[i] joins domains[i] and domains[i + 1]

    def segments(self, request: ServiceRequest, sae_kms: dict[tuple[str, str], str]) -> tuple[Segment, ...]:
        last = len(self.domains) - 1
        return tuple(Segment(i, domain, request.rate, request.source_sae, request.destination_sae,
                             self.links[i - 1].at(domain) if i > 0 else None,
                             self.links[i].at(domain) if i < last else None,
                             sae_kms.get((request.source_domain, request.source_sae)),
                             sae_kms.get((request.destination_domain, request.destination_sae)))
                     for i, domain in enumerate(self.domains))


class DomainView:
    """Admitted members, their agreements and the links both ends advertise, for one pass."""

    def __init__(self, config: FederationConfig, statuses: dict[str, str]):
        self.config = config
        self.statuses = statuses
        self.admitted = sorted(m for m in config.members if statuses.get(m) == "admitted")
        self.links: dict[tuple[str, str, str, str], Link] = {}
        for member in self.admitted:
            for crossing, capacity in config.offers.get(member, {}).items():
                peer = crossing.peer_member
                if peer <= member or statuses.get(peer) != "admitted":
                    continue
                mirror = Crossing("", crossing.peer_node, member, crossing.local_node)
                match = next(((c, cap) for c, cap in config.offers.get(peer, {}).items()
                              if (c.local_node, c.peer_member, c.peer_node) ==
                              (mirror.local_node, mirror.peer_member, mirror.peer_node)), None)
                if match is not None:
                    link = Link(((member, crossing), (peer, match[0])), min(capacity, match[1]))
                    self.links[link.key] = link

    def describe(self, member: str) -> str:
        """Why a member takes no part in routing."""
        status = self.statuses.get(member) if member in self.config.members else None
        why = {"withdrawn": "withdrew", "suspended": "is suspended", "applied": "is not admitted yet"}
        return f"member {member} {why.get(status or '', 'is not a member')}"

    def agreement(self, a: str, b: str) -> Agreement | None:
        return self.config.agreements.get(frozenset((a, b)))

    def links_between(self, a: str, b: str) -> list[Link]:
        first, second = sorted((a, b))
        return sorted((l for l in self.links.values() if (l.ends[0][0], l.ends[1][0]) == (first, second)),
                      key=lambda l: l.key)

    def why_unusable(self, link: Link) -> str:
        for member, crossing in link.ends:
            if crossing not in self.config.offers.get(member, {}):
                return f"{member} withdrew inter-domain link {crossing.link_id} from its advertisement"
        return f"inter-domain link {link.name} is no longer advertised by both its ends"


class Ledger:
    """Rate taken on each link and under each agreement by the services placed so far."""

    def __init__(self) -> None:
        self.on_links: Counter[tuple[str, str, str, str]] = Counter()
        self.on_agreements: Counter[str] = Counter()

    def link_left(self, link: Link) -> int:
        return link.capacity - self.on_links[link.key]

    def agreement_left(self, agreement: Agreement) -> int | None:
        return None if agreement.max_rate is None else agreement.max_rate - self.on_agreements[agreement.agreement_id]

    def take(self, route: Route, rate: int, view: DomainView) -> None:
        for (a, b), link in zip(itertools.pairwise(route.domains), route.links):
            self.on_links[link.key] += rate
            agreement = view.agreement(a, b)
            if agreement is not None:
                self.on_agreements[agreement.agreement_id] += rate


def _member_problem(request: ServiceRequest, domains: tuple[str, ...], view: DomainView) -> str | None:
    for member in dict.fromkeys((request.requesting_member, *domains)):
        if view.statuses.get(member) != "admitted":
            return view.describe(member)
    return None


def route_problem(route: Route, request: ServiceRequest, view: DomainView, ledger: Ledger) -> str | None:
    """Why a service can no longer stay on its route, or None."""
    problem = _member_problem(request, route.domains, view)
    if problem:
        return problem
    transit = len(route.domains) > 2
    for (a, b), link in zip(itertools.pairwise(route.domains), route.links):
        agreement = view.agreement(a, b)
        if agreement is None:
            return f"members {a} and {b} have no agreement any more"
        if transit and not agreement.transit_allowed:
            return f"agreement {agreement.agreement_id} between {a} and {b} no longer allows transit"
        left = ledger.agreement_left(agreement)
        if left is not None and left < request.rate:
            return (f"agreement {agreement.agreement_id} between {a} and {b} has {left} bit/s left, "
                    f"the service needs {request.rate}")
        current = view.links.get(link.key)
        if current is None:
            return view.why_unusable(link)
        if ledger.link_left(current) < request.rate:
            return (f"inter-domain link {current.name} has {ledger.link_left(current)} bit/s left of its "
                    f"{current.capacity} bit/s, the service needs {request.rate}")
    return None


def plan_route(request: ServiceRequest, view: DomainView, ledger: Ledger,
               avoid: frozenset[str] = frozenset()) -> Route | str:
    """The best route for the request given what is taken, or why there is none."""
    source, destination = request.source_domain, request.destination_domain
    problem = _member_problem(request, (source, destination), view)
    if problem:
        return problem
    if source == destination:
        return Route((source,), ())
    graph = nx.Graph()
    graph.add_nodes_from(m for m in view.admitted if m not in avoid or m in (source, destination))
    for a, b in itertools.combinations(sorted(graph.nodes), 2):
        agreement = view.agreement(a, b)
        left = ledger.agreement_left(agreement) if agreement else None
        if agreement is None or (left is not None and left < request.rate):
            continue
        usable = [l for l in view.links_between(a, b) if ledger.link_left(l) >= request.rate]
        if usable:
            link = max(usable, key=lambda l: ledger.link_left(l))
            graph.add_edge(a, b, link=link, transit=agreement.transit_allowed, price=agreement.price_per_kbit)
    if graph.has_edge(source, destination):
        return Route((source, destination), (graph.edges[source, destination]["link"],))
    transit = graph.edge_subgraph([(a, b) for a, b, t in graph.edges(data="transit") if t])
    try:
        paths = list(nx.all_shortest_paths(transit, source, destination))
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        avoided = f" (avoiding {', '.join(sorted(avoid))})" if avoid else ""
        return (f"no route from {source} to {destination} with {request.rate} bit/s left on inter-domain links "
                f"under agreements that allow it{avoided}: a transit domain needs transit-allowed agreements "
                "with both its neighbours")
    best = min(paths, key=lambda p: (sum(graph.edges[a, b]["price"] for a, b in itertools.pairwise(p)), p))
    return Route(tuple(best), tuple(graph.edges[a, b]["link"] for a, b in itertools.pairwise(best)))


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


@dataclass
class ChargingRecord:
    record_id: int
    member_id: str
    service_id: str
    payer: str
    agreement: str | None
    price_per_kbit: str
    start_time: str
    end_time: str | None = None
    keys: int = 0
    bits: int = 0

    @property
    def amount(self) -> Decimal:
        return (Decimal(self.bits) / 1000 * Decimal(self.price_per_kbit)).quantize(MICRO, ROUND_HALF_EVEN)


def _service_status(segments: list[SegmentState]) -> tuple[str, str]:
    """The service's status from its segments', with the reason when not active."""
    for status, verb in (("failed", "could not set up or keep"), ("pending", "is still setting up"),
                         ("degraded", "delivers less than the rate on")):
        bad = [s for s in segments if s.reply.status == status]
        if bad:
            why = "; ".join(f"domain {s.segment.domain} {verb} its segment"
                            + (f": {s.reply.reason}" if s.reply.reason else "") for s in bad)
            return {"pending": "establishing"}.get(status, status), why
    return "active", ""


def access_rules(admins: list[str], memberships: dict[str, str], service_users: list[str]) -> etree._Element:
    """The platform's NACM configuration: memberships maps member-id -> status."""
    n = lambda tag: f"{{{NACM_NS}}}{tag}"
    nacm = etree.Element(n("nacm"), nsmap={None: NACM_NS})
    for leaf, value in (("enable-nacm", "true"), ("read-default", "deny"), ("write-default", "deny"),
                        ("exec-default", "deny")):
        etree.SubElement(nacm, n(leaf)).text = value
    live = {m: s for m, s in sorted(memberships.items()) if s in LIVE}
    groups = {"admin": admins, "member": [m for m, s in live.items() if s == "admitted"],
              "applicant": [m for m, s in live.items() if s != "admitted"], "service-user": service_users,
              "enrol": [ENROL_USER], **{f"self-{m}": [m] for m in live}}
    groups_element = etree.SubElement(nacm, n("groups"))
    for name, users in groups.items():
        group = etree.SubElement(groups_element, n("group"))
        etree.SubElement(group, n("name")).text = name
        for user in users:
            etree.SubElement(group, n("user-name")).text = user
    fed = "/qi-fed:federation"

    def rule_list(name: str, group_names: list[str], rules: list[tuple]) -> None:
        element = etree.SubElement(nacm, n("rule-list"))
        etree.SubElement(element, n("name")).text = name
        for group in group_names:
            etree.SubElement(element, n("group")).text = group
        for i, (action, ops, module, kind, value) in enumerate(rules):
            rule = etree.SubElement(element, n("rule"))
            etree.SubElement(rule, n("name")).text = f"{name}-{i}"
            etree.SubElement(rule, n("module-name")).text = module
            if kind == "path":
                etree.SubElement(rule, n("path"), nsmap={"qi-fed": FED_NS}).text = value
            elif kind == "rpc":
                etree.SubElement(rule, n("rpc-name")).text = value
            etree.SubElement(rule, n("access-operations")).text = ops
            etree.SubElement(rule, n("action")).text = action

    rule_list("admin", ["admin"], [("permit", "*", "*", None, None)])
    for member, status in live.items():
        own = [("permit", "read", MODULE, "path", f"{fed}/qi-fed:members/qi-fed:member[qi-fed:member-id='{member}']")]
        if status == "admitted":
            own += [("permit", "create update delete", MODULE, "path",
                     f"{fed}/qi-fed:advertisements/qi-fed:advertisement[qi-fed:member-id='{member}']"),
                    ("permit", "create update delete", MODULE, "path",
                     f"{fed}/qi-fed:members/qi-fed:member[qi-fed:member-id='{member}']/qi-fed:service-user")]
        rule_list(f"self-{member}", [f"self-{member}"], own)
    base_operations = [("permit", "exec", "ietf-netconf", "rpc", op)
                       for op in ("get", "get-config", "edit-config", "validate", "commit", "close-session")]
    rule_list("member-operations", ["member"], [("permit", "exec", MODULE, "rpc", "withdraw"),
                                                ("permit", "exec", MODULE, "rpc", "report-delivery"),
                                                ("permit", "exec", "notifications", "rpc", "create-subscription")])
    rule_list("participants", ["member", "service-user"], [
        ("deny", "exec", MODULE, "rpc", "*"),
        ("deny", "read", "ietf-netconf-acm", None, None),
        ("deny", "read", MODULE, "path", f"{fed}/qi-fed:members/qi-fed:member/qi-fed:agent"),
        ("deny", "read", MODULE, "path", f"{fed}/qi-fed:members/qi-fed:member/qi-fed:service-user"),
        ("permit", "create update delete", MODULE, "path", f"{fed}/qi-fed:services"),
        *base_operations,
        ("permit", "read", "*", None, None),
    ])
    rule_list("applicants", ["applicant"], [
        ("permit", "exec", MODULE, "rpc", "withdraw"),
        *[("permit", "exec", "ietf-netconf", "rpc", op) for op in ("get", "get-config", "close-session")],
        *[("deny", "read", MODULE, "path", f"{fed}/qi-fed:{part}")
          for part in ("members/qi-fed:member", "agreements", "advertisements", "services", "charging")],
        ("permit", "read", MODULE, "path", fed),
    ])
    rule_list("enrol", ["enrol"], [("permit", "exec", MODULE, "rpc", "apply-membership")])
    return nacm


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
                 port: int = 0, *, host: str = "127.0.0.1", segment_handlers: SegmentHandlers | None = None):
        if admin not in users:
            raise ValueError(f"the administrator {admin!r} is not one of the platform's users")
        self.admin = admin
        self.accounts = dict(users)
        self.users = dict(users)  # the engine's live view: accounts plus members' keys
        self.segment_handlers = segment_handlers or (lambda endpoint: None)
        store = pathlib.Path(store_dir) if store_dir is not None else None
        self._state_file = store / "federation.json" if store else None
        self.memberships: dict[str, Membership] = {}
        self.records: dict[tuple[str, str], ChargingRecord] = {}
        self._load()
        self.server = NetconfServer(Schema(["qi-types", MODULE]), self.users, host=host, port=port,
                                    datastore_dir=store / "datastores" if store else None,
                                    nacm=access_rules([admin], {}, []), name="federation")
        self.server.set_access_policy(_PlatformAccess(self, self.server.access_policy))
        self.server.on_change(self._check_change)
        self.server.add_state_provider(self._state, f"/{MODULE}:federation")
        for rpc, handler in (("apply-membership", self._apply), ("admit-member", self._admit),
                             ("suspend-member", self._suspend), ("withdraw", self._withdraw),
                             ("report-delivery", self._report_delivery)):
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
        self._wake()  # a failed segment is asked for again, or routed around
        await self._settle(state)

    # --- the reconcile loop -------------------------------------------------------------

    def _wake(self) -> None:
        self._loop.wake()

    async def _pass(self) -> None:
        config = FederationConfig.read(self.server.running())
        self._sync_members(config)
        await self._write_access_rules()
        view = DomainView(config, {m: s.status for m, s in self.memberships.items()})
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

    async def _place(self, request: ServiceRequest, view: DomainView, ledger: Ledger) -> None:
        state = self.services.setdefault(request.service_id, ServiceState(request))
        had_route = state.route is not None or state.status == "failed"
        problem = None
        if state.route is not None:
            avoided = [d for d in state.route.domains if d in state.avoid]
            if state.request != request:
                problem = "the service's request changed"
            elif avoided:
                problem = "; ".join(f"domain {d} failed its segment" for d in avoided)
            else:
                problem = route_problem(state.route, request, view, ledger)
            if problem is None:
                ledger.take(state.route, request.rate, view)
                if any(s.reply.status == "failed" for s in state.segments.values()):
                    await self._establish(state, view)  # ask again for what failed
                    await self._settle(state)
                return
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
        status, why = _service_status(list(state.segments.values()))
        if status == "active" and state.route is not None:
            via = ", ".join(state.route.domains)
            why = f"re-routed through {via}: {problem}" if problem else f"routed through {via}"
        await self._set_status(state, status, why)

    async def _establish(self, state: ServiceState, view: DomainView) -> None:
        """Ask each domain of the route for the segments it does not hold yet (new ones first,
        then release the old ones: make before break), and open the charging records."""
        assert state.route is not None
        wanted = state.route.segments(state.request, view.config.sae_kms)
        kept = {s.index: state.segments[s.index] for s in wanted if s.index in state.segments
                and state.segments[s.index].segment == s and state.segments[s.index].reply.status != "failed"}
        new = [s for s in wanted if s.index not in kept]
        old = [s.segment for i, s in state.segments.items() if i not in kept and s.segment not in new]
        state.status = "establishing"
        replies = await asyncio.gather(*(self._request(state.request.service_id, s) for s in new))
        state.segments = {**kept, **{s.index: SegmentState(s, r) for s, r in zip(new, replies)}}
        await self._release(state, old)
        for segment, reply in zip(new, replies):
            if reply.status != "failed":
                self._open_record(state, segment, view)
            elif 0 < segment.index < len(wanted) - 1:
                state.avoid.add(segment.domain)  # a transit domain: the next pass routes around it
                self._wake()

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
        """Release segments the service no longer uses; close the records of domains it left."""
        on_route = set(state.route.domains) if state.route else set()
        for segment in segments:
            record = self.records.get((segment.domain, state.request.service_id))
            if record is not None and segment.domain not in on_route:
                record.end_time = _timestamp()
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
        previous = state.status
        reason = _clip(reason)
        if (previous, state.reason) == (status, reason):
            return
        state.status, state.reason = status, reason
        event = etree.Element(_f("service-status-change"), nsmap={None: FED_NS})
        for tag, value in (("service-id", state.request.service_id), ("status", status),
                           ("previous-status", previous), ("reason", reason), ("time", _timestamp())):
            _leaf(event, tag, value)
        await self.server.notify(event)

    # --- charging -----------------------------------------------------------------------

    def _open_record(self, state: ServiceState, segment: Segment, view: DomainView) -> None:
        key = (segment.domain, state.request.service_id)
        if key in self.records:
            return
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
        record_id = max((r.record_id for r in self.records.values()), default=0) + 1
        self.records[key] = ChargingRecord(record_id, segment.domain, state.request.service_id, payer,
                                           agreement.agreement_id if agreement else None,
                                           str(agreement.price_per_kbit if agreement else Decimal(0)), _timestamp())

    async def _report_delivery(self, session: Session, op: etree._Element, _context) -> None:
        service_id = _text(op, "service-id", "")
        record = self.records.get((session.username, service_id))
        if record is None:
            raise RPCError("invalid-value", f"member {session.username} has no segment of service {service_id}",
                           info={"bad-element": "service-id"})
        record.keys += int(_text(op, "keys", "0"))
        record.bits += int(_text(op, "bits", "0"))
        record.end_time = _timestamp()
        self._save()
        return None

    # --- membership ---------------------------------------------------------------------

    async def _apply(self, session: Session, op: etree._Element, _context) -> list[etree._Element]:
        member_id = _text(op, "member-id", "")
        key = _text(op, "ssh-public-key", "")
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
            members = _child(_child(tree, "federation"), "members")
            for old in members.iterfind(_f("member")):
                if _text(old, "member-id") == member_id:
                    members.remove(old)
            entry = etree.SubElement(members, _f("member"))
            for tag in ("member-id", "name", "ssh-public-key"):
                _leaf(entry, tag, _text(op, tag))
            agent = etree.SubElement(entry, _f("agent"))
            _leaf(agent, "address", _text(op, "agent-address"))
            _leaf(agent, "port", _text(op, "agent-port", "830"))

        await self._change_membership(member_id, Membership("applied"), add_entry)
        status = etree.Element(_f("status"), nsmap={None: FED_NS})
        status.text = "applied"
        return [status]

    async def _admit(self, session: Session, op: etree._Element, _context) -> None:
        member_id = self._known_member(op)
        status = self.memberships[member_id].status
        if status not in ("applied", "suspended"):
            raise RPCError("invalid-value", f"member {member_id} is {status}: only an applied or suspended "
                           "member can be admitted", info={"bad-element": "member-id"})
        admitted_at = _timestamp()
        await self._change_membership(member_id, Membership("admitted", admitted_at))
        event = etree.Element(_f("member-joined"), nsmap={None: FED_NS})
        for tag, value in (("member-id", member_id), ("name", self.config.members[member_id].name),
                           ("time", admitted_at)):
            _leaf(event, tag, value)
        await self.server.notify(event)

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
            fed = _child(tree, "federation")
            for path, owner in ((f"{_f('advertisements')}/{_f('advertisement')}", "member-id"),
                                (f"{_f('services')}/{_f('service')}", "requesting-member")):
                for entry in fed.iterfind(path):
                    if _text(entry, owner) == member_id:
                        entry.getparent().remove(entry)

        await self._change_membership(member_id, Membership("withdrawn"), remove_what_it_offered)
        event = etree.Element(_f("member-left"), nsmap={None: FED_NS})
        for tag, value in (("member-id", member_id), ("reason", _clip(_text(op, "reason") or "withdrawn")),
                           ("time", _timestamp())):
            _leaf(event, tag, value)
        await self.server.notify(event)
        # After this reply is sent: the member's key no longer authenticates, its sessions end.
        asyncio.get_running_loop().call_soon(self._end_sessions, member_id)

    def _known_member(self, op: etree._Element) -> str:
        member_id = _text(op, "member-id", "")
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

        def change(tree: etree._Element) -> etree._Element:
            if edit is not None:
                edit(tree)
            self._replace_access_rules(tree, FederationConfig.read(tree))
            return tree
        try:
            await self.server.update_running(change)
        except RPCError:
            if previous is None:
                del self.memberships[member_id]
            else:
                self.memberships[member_id] = previous
            raise
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
            if user not in config.members or self.memberships[user].status not in LIVE:
                del self.users[user]
        for member_id, entry in config.members.items():
            if self.memberships[member_id].status in LIVE:
                self.users[member_id] = User(authorized_keys=[entry.ssh_public_key])
        self._acting = {user: m for m, entry in sorted(config.members.items())
                        if self.memberships[m].status == "admitted" for user in entry.service_users}

    def _replace_access_rules(self, tree: etree._Element, config: FederationConfig) -> None:
        admitted = [m for m in config.members if self.status_of(m) == "admitted"]
        admins = [self.admin] + [m for m in admitted if config.members[m].role == "admin"]
        service_users = sorted({u for m in admitted for u in config.members[m].service_users})
        rules = access_rules(admins, {m: self.status_of(m) or "applied" for m in config.members}, service_users)
        old = tree.find(f"{{{NACM_NS}}}nacm")
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
                if user not in self.accounts or user in (self.admin, ENROL_USER):
                    raise RPCError("invalid-value", f"service-user '{user}' is not a service-layer account of "
                                   "the platform", **_error_path(*where, "service-user"))
                if user in acting:
                    raise RPCError("invalid-value", f"service-user '{user}' acts for member {acting[user]} already",
                                   **_error_path(*where, "service-user"))
                acting[user] = member_id
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
        """Remove, from a tree NACM already pruned, the services and charging records that are
        not the user's member's."""
        if tree.find(_f("federation")) is None or self.is_admin(user):
            return tree
        tree = copy.deepcopy(tree)  # NACM may hand back the datastore's own tree
        fed = tree.find(_f("federation"))
        member = self.acting_member(user)
        for service in fed.findall(f"{_f('services')}/{_f('service')}"):
            if not self.may_see_service(user, _text(service, "service-id", ""), _text(service, "requesting-member")):
                service.getparent().remove(service)
        by_id = {str(r.record_id): r for r in self.records.values()}
        for element in fed.findall(f"{_f('charging')}/{_f('record')}"):
            record = by_id.get(_text(element, "record-id", ""))
            if record is None or member not in (record.member_id, record.payer):
                element.getparent().remove(element)
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
            return self.may_see_service(user, _text(event.content, "service-id", ""))
        return True

    # --- operational state ----------------------------------------------------------------

    async def _state(self) -> etree._Element:
        config = FederationConfig.read(self.server.running())  # never state for deleted entries
        data = etree.Element("data")
        fed = etree.SubElement(data, _f("federation"), nsmap={None: FED_NS})
        members = etree.SubElement(fed, _f("members"))
        for member_id in config.members:
            membership = self.memberships.get(member_id)
            if membership is None:
                continue
            entry = etree.SubElement(members, _f("member"))
            _leaf(entry, "member-id", member_id)
            _leaf(entry, "status", membership.status)
            if membership.admitted_at:
                _leaf(entry, "admitted-at", membership.admitted_at)
        ads = etree.SubElement(fed, _f("advertisements"))
        usable = {(m, crossing): link for link in self._view.links.values() for m, crossing in link.ends}
        for member_id, offers in config.offers.items():
            ad = etree.SubElement(ads, _f("advertisement"))
            _leaf(ad, "member-id", member_id)
            for crossing in offers:
                link = etree.SubElement(ad, _f("inter-domain-link"))
                _leaf(link, "link-id", crossing.link_id)
                used = usable.get((member_id, crossing))
                _leaf(link, "available", max(0, self._ledger.link_left(used)) if used else 0)
        services = etree.SubElement(fed, _f("services"))
        for service_id, state in self.services.items():
            if service_id not in config.services:
                continue
            service = etree.SubElement(services, _f("service"))
            _leaf(service, "service-id", service_id)
            _leaf(service, "status", state.status)
            if state.reason:
                _leaf(service, "reason", state.reason)
            for domain in state.route.domains if state.route else ():
                _leaf(service, "domain-route", domain)
            segments = etree.SubElement(service, _f("segments"))
            for index, segment_state in sorted(state.segments.items()):
                segment = segment_state.segment
                element = etree.SubElement(segments, _f("segment"))
                _leaf(element, "index", index)
                _leaf(element, "domain", segment.domain)
                if segment.ingress:
                    _leaf(element, "ingress", segment.ingress.local_node)
                if segment.egress:
                    _leaf(element, "egress", segment.egress.local_node)
                if segment_state.reply.intent:
                    _leaf(element, "intent", segment_state.reply.intent)
                _leaf(element, "status", segment_state.reply.status)
        charging = etree.SubElement(fed, _f("charging"))
        for record in sorted(self.records.values(), key=lambda r: r.record_id):
            element = etree.SubElement(charging, _f("record"))
            for tag, value in (("record-id", record.record_id), ("member-id", record.member_id),
                               ("service-id", record.service_id), ("keys", record.keys), ("bits", record.bits),
                               ("start-time", record.start_time), ("end-time", record.end_time),
                               ("agreement", record.agreement), ("price-per-kbit", record.price_per_kbit),
                               ("amount", record.amount)):
                if value is not None:
                    _leaf(element, tag, value)
        return data

    # --- persistence ----------------------------------------------------------------------

    def _save(self) -> None:
        if self._state_file is None:
            return
        state = {"memberships": {m: asdict(s) for m, s in self.memberships.items()},
                 "records": [asdict(r) for r in self.records.values()]}
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_file)

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        state = json.loads(self._state_file.read_text())
        self.memberships = {m: Membership(**s) for m, s in state["memberships"].items()}
        for raw in state["records"]:
            record = ChargingRecord(**raw)
            self.records[(record.member_id, record.service_id)] = record


def _same_key(a: str, b: str) -> bool:
    """Two authorized_keys lines name the same key (type and base64 data; comments aside)."""
    return a.split()[:2] == b.split()[:2]
