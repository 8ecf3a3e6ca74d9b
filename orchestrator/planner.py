"""Decomposition of a key-service intent over the observed strata.

Pure functions over the views of the strata (models.forwarding, models.connectivity), so that
they are tested without a network:

- `candidate_links`: QKD links the forwarding stratum could add. Two QKD interfaces are
  candidates when light from one's fibre attachment reaches the other's through spans and
  optical switches (`qkd_physics.reach`). A route that crosses a switch at the site of
  another QKD node, past that node, is an optical bypass of its trusted node: a candidate
  too, offered only between interfaces that no route through trusted nodes joins, and
  costed so that a path takes it only when the paths through trusted nodes do not meet the
  demand. Each candidate carries the key rate it is expected to deliver: the eskr of the
  shared link model (`qkd_physics`, which the QKD nodes run) at the route's loss, for the
  reference device profile and the default QBER threshold. A span carries one optical path.
- `Planner.plan`: paths for one demand over the usable existing links and the candidates,
  within its constraints and the key rate left by the demands planned before it
  (the orchestrator plans in priority order); which links must be created; or a precise
  reason why no path exists, naming the missing resource. A segment of a cross-domain
  service starts (ends) at the far node of the inter-domain link where keys enter (leave)
  the domain; inter-domain links serve only the segments that name them.
"""
from __future__ import annotations

import functools
import itertools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx

from models.forwarding import ForwardingView, PortRef, QkdLink
from models.connectivity import FibreNetwork
from qkd_physics import expected_eskr
from qkd_physics.reach import optical_routes

LINK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qstrata:orchestrator:qkd-link")
CANDIDATE_COST = 1.5      # a link that must be created costs more than one that exists
BYPASS_COST = 2.0         # ... and more per trusted node it bypasses than the two new links through that node
MAX_SIMPLE_PATHS = 200    # paths examined when the shortest one breaks max-hops


@dataclass(frozen=True)
class Candidate:
    """A PHYS QKD link the forwarding stratum could create between two interfaces."""

    a: PortRef  # (QKD node, tp) at the lower end, by name
    b: PortRef
    spans: tuple[str, ...]
    loss_db: float
    bypasses: tuple[str, ...] = ()  # sites whose trusted node the light passes by, through their switch
    eskr: float = 0.0               # expected effective key rate, bit/s (qkd_physics.expected_eskr)

    @functools.cached_property  # looked up for every candidate of every demand's graph
    def link_id(self) -> str:
        return f"{self.a[0]}.{self.a[1]}-{self.b[0]}.{self.b[1]}"

    @property
    def qkdl_id(self) -> str:
        return str(uuid.uuid5(LINK_NAMESPACE, self.link_id))

    def nodes(self) -> tuple[str, str]:
        return self.a[0], self.b[0]

    @property
    def cost(self) -> float:
        return CANDIDATE_COST + self.loss_db / 100 + BYPASS_COST * len(self.bypasses)

    def describe(self) -> str:
        """'a new link X-Y (bypassing S) over N dB'"""
        bypass = f" bypassing {', '.join(self.bypasses)}" if self.bypasses else ""
        return f"a new link {self.a[0]}-{self.b[0]}{bypass} over {self.loss_db:g} dB"


def candidate_links(fwd: ForwardingView, fibre: FibreNetwork) -> list[Candidate]:
    """Every pair of free QKD interfaces joined by the fibre plant, lowest loss route each;
    bypasses of trusted nodes only for pairs that no other route joins (qkd_physics.reach)."""
    owner: dict[PortRef, PortRef] = {}  # fibre port -> (QKD node, tp) plugged there
    for node in fwd.nodes.values():
        for tp, attach in node.interfaces.items():
            if attach is not None:
                owner[attach] = (node.id, tp)
    used = fwd.used_interfaces()
    sites = {attach: _site_of(fwd, fibre, end[0]) for attach, end in owner.items()}
    best: dict[tuple[PortRef, PortRef], Candidate] = {}
    for route in optical_routes(fibre.nodes.values(), fibre.spans.values(), sites,
                                starts=[a for a, end in owner.items() if end not in used]):
        near, far = owner[route.start], owner[route.end]
        if far in used or far[0] == near[0]:
            continue
        a, b = sorted((near, far))
        found = Candidate(a, b, route.spans, round(route.loss_db, 3), route.bypasses)
        held = best.get((a, b))
        if held is None or (len(found.bypasses), found.loss_db) < (len(held.bypasses), held.loss_db):
            best[(a, b)] = found
    return sorted((_with_rate(c) for c in best.values()), key=lambda c: (c.a, c.b))


def _with_rate(candidate: Candidate) -> Candidate:
    return Candidate(candidate.a, candidate.b, candidate.spans, candidate.loss_db, candidate.bypasses,
                     expected_eskr(candidate.loss_db))


def _site_of(fwd: ForwardingView, fibre: FibreNetwork, node_id: str) -> str:
    node = fwd.nodes[node_id]
    if node.site:
        return node.site
    attach = next((a for a in node.interfaces.values() if a is not None), None)
    fibre_node = fibre.nodes.get(attach[0]) if attach else None
    return fibre_node.site if fibre_node else ""


# --- planning -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Demand:
    """What one intent asks of the network."""

    name: str
    source_km: str
    destination_km: str
    rate: int
    priority: int = 100
    paths: int = 1
    max_hops: int | None = None
    avoid_nodes: frozenset[str] = frozenset()
    avoid_links: frozenset[str] = frozenset()
    qber_ceiling: float | None = None
    ingress_link: str | None = None  # a segment: the inter-domain link keys enter by (source_km is then remote)
    egress_link: str | None = None   # ... and leave by (destination_km is then remote)


@dataclass(frozen=True)
class Edge:
    """One usable hop between two QKD nodes: an existing link or a candidate."""

    link_id: str
    u: str
    v: str
    existing: QkdLink | None = None
    candidate: Candidate | None = None


@dataclass
class Plan:
    demand: Demand
    paths: list[list[Edge]]  # primary first; each path from the source's node

    @property
    def new_links(self) -> list[Candidate]:
        seen: dict[str, Candidate] = {}
        for path in self.paths:
            for edge in path:
                if edge.candidate is not None:
                    seen.setdefault(edge.link_id, edge.candidate)
        return list(seen.values())

    def nodes(self, index: int = 0) -> list[str]:
        path = self.paths[index]
        return [self.source_node] + [e.v for e in path] if path else [self.source_node]

    @property
    def source_node(self) -> str:
        return self.paths[0][0].u if self.paths and self.paths[0] else ""

    def link_ids(self, index: int = 0) -> list[str]:
        return [e.link_id for e in self.paths[index]]


class Infeasible(Exception):
    """No path meets the demand; the message names what is missing."""


@dataclass
class Network:
    """One observation of the strata, and what the demands planned so far hold of it."""

    fwd: ForwardingView
    fibre: FibreNetwork
    alarms: dict[str, str] = field(default_factory=dict)  # link-id -> why its QBER alarm is up
    candidates: list[Candidate] = field(default_factory=list)
    reserved: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # link -> (demand, rate)
    taken_interfaces: set[PortRef] = field(default_factory=set)
    taken_spans: dict[str, str] = field(default_factory=dict)  # span -> the optical path or new link holding it
    refused: dict[str, str] = field(default_factory=dict)  # candidate link -> why it cannot be made
    coming_up: set[str] = field(default_factory=set)        # links just created: not up yet, not broken
    capacity_seen: dict[str, float] = field(default_factory=dict)  # link -> eskr when it last existed
    # the sums of `reserved`, kept as demands reserve, so that a link's headroom costs the same
    # for the thousandth demand as for the first: link -> rate, and (link, demand) -> rate
    _held: dict[str, int] = field(default_factory=lambda: defaultdict(int), repr=False)
    _held_by: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int), repr=False)

    @classmethod
    def observe(cls, fwd: ForwardingView, fibre: FibreNetwork, alarms: dict[str, str] | None = None) -> Network:
        """The network as observed; a span carries one optical path (the connectivity stratum
        routes none over a span another holds), so those of existing paths are taken."""
        taken = {span: name for name, route in sorted(fibre.optical_paths.items()) for span in route}
        return cls(fwd, fibre, dict(alarms or {}), candidate_links(fwd, fibre), taken_spans=taken)

    def held(self, link_id: str, by_other_than: str = "") -> int:
        return self._held.get(link_id, 0) - self._held_by.get((link_id, by_other_than), 0)

    def reserve(self, plan: Plan) -> None:
        name, rate = plan.demand.name, plan.demand.rate
        for edge in plan.paths[0] if plan.paths else []:
            self.reserved.setdefault(edge.link_id, []).append((name, rate))
            self._held[edge.link_id] += rate
            self._held_by[(edge.link_id, name)] += rate
        for candidate in plan.new_links:
            self.taken_interfaces.update((candidate.a, candidate.b))
            self.taken_spans.update({span: candidate.link_id for span in candidate.spans})

    # -- why a link cannot carry a demand (None: it can) --------------------------------

    def link_problem(self, link: QkdLink, demand: Demand) -> str | None:
        if link.link_type != "PHYS":
            return f"link {link.id} is not a PHYS link"
        if link.id in demand.avoid_links:
            return f"link {link.id} is avoided by the intent"
        if link.status not in (None, "ACTIVE", "PENDING") and link.id not in self.coming_up:
            return f"link {link.id} is {link.status.lower()}"
        if link.id in self.alarms:
            return f"link {link.id} has a QBER alarm ({self.alarms[link.id]})"
        if demand.qber_ceiling is not None and link.qber is not None and link.qber > demand.qber_ceiling:
            return f"link {link.id} QBER {link.qber:g} % is above the ceiling {demand.qber_ceiling:g} %"
        for span in self.fibre.optical_paths.get(link.optical_path or link.id, ()):
            if span in self.fibre.spans and not self.fibre.spans[span].usable:
                return f"link {link.id} rides on span {span}, which is {self._span_problem(span)}"
        if link.eskr is not None and link.status == "ACTIVE":
            held = self.held(link.id, demand.name)
            if link.eskr - held < demand.rate:
                holders = sorted({n for n, _ in self.reserved.get(link.id, []) if n != demand.name})
                taken = (f", {held} bit/s held by intents of higher or equal priority ({', '.join(holders)})"
                         if holders else "")
                return (f"link {link.id} has {int(link.eskr)} bit/s of key{taken}; "
                        f"{demand.rate} bit/s needed")
        return None

    def candidate_problem(self, candidate: Candidate, demand: Demand) -> str | None:
        if candidate.link_id in demand.avoid_links:
            return f"link {candidate.link_id} is avoided by the intent"
        if candidate.link_id in self.refused:
            return f"link {candidate.link_id} cannot be made: {self.refused[candidate.link_id]}"
        if candidate.link_id not in self.reserved and {candidate.a, candidate.b} & self.taken_interfaces:
            return f"the interfaces of {candidate.link_id} are taken"  # (a new link planned before is shared)
        for span in candidate.spans:
            if self.taken_spans.get(span, candidate.link_id) != candidate.link_id:
                return f"{candidate.describe()} needs span {span}, which carries {self.taken_spans[span]}"
        for span in candidate.spans:
            if span not in self.fibre.spans or not self.fibre.spans[span].usable:
                return f"{candidate.describe()} needs span {span}, which is {self._span_problem(span)}"
        rate = self.expected_rate(candidate)
        held = self.held(candidate.link_id, demand.name)
        if rate - held < demand.rate:
            taken = f", {held} bit/s of it held by intents of higher or equal priority" if held else ""
            return (f"{candidate.describe()} would carry about {int(rate)} bit/s of key{taken}; "
                    f"{demand.rate} bit/s needed")
        return None

    def expected_rate(self, candidate: Candidate) -> float:
        """What a new link would carry: its eskr when it existed last, otherwise the model's estimate."""
        return self.capacity_seen.get(candidate.link_id, candidate.eskr)

    def _span_problem(self, span_id: str) -> str:
        span = self.fibre.spans[span_id]
        return "cut" if not span.up else "tapped by an eavesdropper"

    # -- the graph ---------------------------------------------------------------------

    def graph(self, demand: Demand, relaxed: bool = False) -> tuple[nx.Graph, dict[tuple[str, str], list[str]]]:
        """The QKD graph of usable hops (the best option per node pair), and for each pair
        the problems of the options left out. `relaxed` keeps every option (for diagnosis)."""
        graph = nx.Graph()
        problems: dict[tuple[str, str], list[str]] = {}
        options: list[tuple[float, Edge, str | None]] = []
        for link in self.fwd.links.values():
            if link.link_type != "PHYS" or (link.external and link.id not in (demand.ingress_link, demand.egress_link)):
                continue
            options.append((1.0, Edge(link.id, *link.nodes(), existing=link), self.link_problem(link, demand)))
        for candidate in self.candidates:
            options.append((candidate.cost, Edge(candidate.link_id, *candidate.nodes(), candidate=candidate),
                            self.candidate_problem(candidate, demand)))
        for cost, edge, problem in sorted(options, key=lambda o: o[0]):
            if edge.u in demand.avoid_nodes or edge.v in demand.avoid_nodes:
                continue
            pair = tuple(sorted((edge.u, edge.v)))
            if problem is not None:
                problems.setdefault(pair, []).append(problem)
                if not relaxed:
                    continue
            if not graph.has_edge(edge.u, edge.v) or graph[edge.u][edge.v]["cost"] > cost:
                graph.add_edge(edge.u, edge.v, cost=cost, edge=edge)
        return graph, problems


def oriented(edge: Edge, start: str) -> Edge:
    return edge if edge.u == start else Edge(edge.link_id, edge.v, edge.u, edge.existing, edge.candidate)


class Planner:
    def __init__(self, network: Network):
        self.network = network

    def endpoints(self, demand: Demand) -> tuple[str, str]:
        fwd = self.network.fwd
        nodes = []
        for km, border_link in ((demand.source_km, demand.ingress_link), (demand.destination_km, demand.egress_link)):
            if border_link is not None:
                link = fwd.links.get(border_link)
                if link is None or not link.external:
                    raise Infeasible(f"{border_link} is not an inter-domain link of the forwarding topology")
                nodes.append(link.b[0])
                continue
            node = fwd.node_of_km(km)
            if node is None:
                raise Infeasible(f"key manager {km} has no QKD node in the forwarding topology")
            nodes.append(node)
        if nodes[0] == nodes[1]:
            raise Infeasible(f"both SAEs are served by key manager {demand.source_km}: no QKD path is needed")
        for node in nodes:
            if node in demand.avoid_nodes:
                raise Infeasible(f"QKD node {node} serves an endpoint and cannot be avoided")
        return nodes[0], nodes[1]

    def check(self, demand: Demand, link_ids: list[str]) -> list[Edge] | None:
        """The path through `link_ids` (existing links) if it still serves the demand."""
        source, destination = self.endpoints(demand)
        if not link_ids or (demand.max_hops is not None and len(link_ids) > demand.max_hops):
            return None
        path, at = [], source
        for link_id in link_ids:
            link = self.network.fwd.links.get(link_id)
            if link is None or at not in link.nodes() or self.network.link_problem(link, demand) is not None:
                return None
            edge = oriented(Edge(link.id, *link.nodes(), existing=link), at)
            if edge.v in demand.avoid_nodes:
                return None
            path.append(edge)
            at = edge.v
        return path if at == destination else None

    def path_problem(self, demand: Demand, link_ids: list[str]) -> str | None:
        """Why the path through `link_ids` no longer serves the demand (None: it does)."""
        if self.check(demand, link_ids) is not None:
            return None
        if demand.max_hops is not None and len(link_ids) > demand.max_hops:
            return f"the path has {len(link_ids)} hops, more than max-hops {demand.max_hops}"
        for link_id in link_ids:
            link = self.network.fwd.links.get(link_id)
            if link is None:
                return f"link {link_id} no longer exists"
            problem = self.network.link_problem(link, demand)
            if problem is not None:
                return problem
            if set(link.nodes()) & demand.avoid_nodes:
                return f"link {link_id} touches a node the intent avoids"
        source, destination = self.endpoints(demand)
        return f"the path no longer joins {source} and {destination}"

    def plan(self, demand: Demand, keep: list[str] | None = None) -> Plan:
        """Paths for `demand`: the kept path when it still serves, otherwise the cheapest;
        then as many node-disjoint standby paths as asked. Raises Infeasible."""
        source, destination = self.endpoints(demand)
        kept = self.check(demand, keep) if keep else None
        if kept is not None and demand.paths == 1:  # the common case of a pass: no graph to build
            return Plan(demand, [kept])
        graph, problems = self.network.graph(demand)
        primary = kept or self._shortest(graph, source, destination, demand, problems)
        paths = [primary]
        spare = graph.copy() if demand.paths > 1 else graph
        for _ in range(demand.paths - 1):
            spare.remove_nodes_from({e.v for e in paths[-1][:-1]})
            spare.remove_edges_from([(e.u, e.v) for e in paths[-1]])
            self._free_resources(spare, demand, {r for path in paths for e in path if e.candidate
                                                 for r in _resources(e.candidate)})
            try:
                nodes = nx.shortest_path(spare, source, destination, weight="cost")
            except (nx.NetworkXNoPath, nx.NodeNotFound):
                raise Infeasible(f"only {len(paths)} node-disjoint path(s) between {source} and {destination} "
                                 f"meet the constraints; {demand.paths} asked") from None
            paths.append(self._edges(spare, nodes))
        plan = Plan(demand, paths)
        self._assign_interfaces(plan)
        return plan

    def _shortest(self, graph: nx.Graph, source: str, destination: str, demand: Demand,
                  problems: dict[tuple[str, str], list[str]]) -> list[Edge]:
        try:
            nodes = nx.shortest_path(graph, source, destination, weight="cost")
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            raise Infeasible(self._why_no_path(source, destination, demand, problems)) from None
        if demand.max_hops is not None and len(nodes) - 1 > demand.max_hops:
            fewest = nx.shortest_path_length(graph, source, destination)
            if fewest > demand.max_hops:
                raise Infeasible(f"no path between {source} and {destination} within max-hops {demand.max_hops}: "
                                 f"the shortest usable one has {fewest} hops")
            for candidate in itertools.islice(nx.shortest_simple_paths(graph, source, destination, weight="cost"),
                                              MAX_SIMPLE_PATHS):
                if len(candidate) - 1 <= demand.max_hops:
                    nodes = candidate
                    break
        return self._edges(graph, nodes)

    @staticmethod
    def _edges(graph: nx.Graph, nodes: list[str]) -> list[Edge]:
        return [oriented(graph[u][v]["edge"], u) for u, v in zip(nodes, nodes[1:])]

    def _why_no_path(self, source: str, destination: str, demand: Demand,
                     problems: dict[tuple[str, str], list[str]]) -> str:
        """Name what is missing: the problems on the best path that ignores them."""
        relaxed, _ = self.network.graph(demand, relaxed=True)
        try:
            nodes = nx.shortest_path(relaxed, source, destination, weight="cost")
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            nodes = self.network.fwd.nodes
            unattached = [n for n in (source, destination) if n in nodes and not any(nodes[n].interfaces.values())]
            if unattached:
                return (f"no path between {source} and {destination}: the forwarding topology names no fibre "
                        f"attachment (supporting-termination-point) for the interfaces of {', '.join(unattached)}, "
                        f"so no new QKD link can be planned there")
            avoided = " (with the nodes and links the intent avoids)" if demand.avoid_nodes or demand.avoid_links else ""
            return f"no QKD link or fibre route joins {source} and {destination}{avoided}"
        found = []
        for u, v in zip(nodes, nodes[1:]):
            for problem in problems.get(tuple(sorted((u, v))), []):
                if problem not in found:
                    found.append(problem)
        return f"no path between {source} and {destination}: " + "; ".join(found)

    def _free_resources(self, graph: nx.Graph, demand: Demand, taken: set[tuple]) -> None:
        """Give each new link of `graph` that needs an interface or span a path already takes
        another candidate between the same nodes, or take it out (a standby path needs its own)."""
        for u, v, data in list(graph.edges(data=True)):
            candidate = data["edge"].candidate
            if candidate is None or not _resources(candidate) & taken:
                continue
            spare = self._spare({u, v}, demand, taken)
            if spare is None:
                graph.remove_edge(u, v)
            else:
                graph.add_edge(u, v, cost=spare.cost, edge=Edge(spare.link_id, *spare.nodes(), candidate=spare))

    def _spare(self, pair: set[str], demand: Demand, taken: set[tuple]) -> Candidate | None:
        """The cheapest usable candidate between `pair` that needs nothing of `taken`."""
        return min((c for c in self.network.candidates
                    if set(c.nodes()) == pair and not _resources(c) & taken
                    and self.network.candidate_problem(c, demand) is None), key=lambda c: c.cost, default=None)

    def _assign_interfaces(self, plan: Plan) -> None:
        """Two new links of a plan may be the best options through the same interface or span:
        give each its own, from the other candidates between the same nodes, or fail."""
        taken: set[tuple] = set()
        for path in plan.paths:
            for i, edge in enumerate(path):
                if edge.candidate is None:
                    continue
                if _resources(edge.candidate) & taken:
                    pair = set(edge.candidate.nodes())
                    spare = self._spare(pair, plan.demand, taken)
                    if spare is None:
                        raise Infeasible(f"QKD nodes {' and '.join(sorted(pair))} have no free interfaces or "
                                         f"fibre for another link")
                    path[i] = oriented(Edge(spare.link_id, *spare.nodes(), candidate=spare), edge.u)
                taken |= _resources(path[i].candidate)


def _resources(candidate: Candidate) -> set[tuple]:
    """What a new link holds alone: its two interfaces and the spans of its optical path."""
    return {("tp", candidate.a), ("tp", candidate.b)} | {("span", span) for span in candidate.spans}
