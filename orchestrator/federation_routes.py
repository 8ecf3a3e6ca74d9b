"""Routing over a federation (the platform's algorithm, orchestrator/federation.py): the
domain-level view of one pass (admitted members, agreements, the inter-domain links both
ends advertise, the members' ratings), the rate taken on each, and the route of a
cross-domain service; a middle domain needs transit-allowed agreements with both neighbours.

The rule: transit members flagged by their rating (below the threshold) are left out when a
route without them exists; then fewest domains; then the smallest rating penalty, the sum
over transit members of the tenths of a perfect score each lacks (round(10 * (1 - score)):
0 for 0.95 and above, 4 for 0.6); then the cheapest; then by name."""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

import networkx as nx

from models.federation import Agreement, Crossing, FederationConfig, ServiceRequest


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

    def __init__(self, config: FederationConfig, statuses: dict[str, str], ratings: dict[str, Decimal] | None = None,
                 flagged: frozenset[str] = frozenset()):
        self.config = config
        self.statuses = statuses
        self.ratings = ratings or {}  # member -> score, 0 to 1 (absent: 1)
        self.flagged = flagged
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

    def penalty(self, member: str) -> int:
        """The rating penalty of a transit member (see the module's docstring)."""
        return int((10 * (1 - self.ratings.get(member, Decimal(1)))).to_integral_value(ROUND_HALF_EVEN))

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


def flagged_transit(route: Route, view: DomainView) -> list[str]:
    """The route's transit members that their rating flags."""
    return [m for m in route.domains[1:-1] if m in view.flagged]


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
    trusted = transit.subgraph([m for m in transit.nodes if m not in view.flagged or m in (source, destination)])
    paths = []
    for candidates in (trusted, transit):  # flagged members only when there is no other way
        try:
            paths = list(nx.all_shortest_paths(candidates, source, destination))
            break
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            continue
    if not paths:
        avoided = f" (avoiding {', '.join(sorted(avoid))})" if avoid else ""
        return (f"no route from {source} to {destination} with {request.rate} bit/s left on inter-domain links "
                f"under agreements that allow it{avoided}: a transit domain needs transit-allowed agreements "
                "with both its neighbours")
    best = min(paths, key=lambda p: (sum(view.penalty(m) for m in p[1:-1]),
                                     sum(graph.edges[a, b]["price"] for a, b in itertools.pairwise(p)), p))
    return Route(tuple(best), tuple(graph.edges[a, b]["link"] for a, b in itertools.pairwise(best)))
