"""Key paths: where the service controller (controller/service.py) places a session over the
QKD topology. A path runs over ACTIVE PHYS links without a QBER alarm, within the session's
constraints, each with eskr headroom for the session's rate after the rates of the other
sessions on it; routes are per destination key manager, so a path that would change another
session's route is skipped. When no path fits, `NoPath` names what is missing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import networkx as nx

from models.forwarding import ForwardingView, QkdLink
from models.service import SessionConfig

MAX_CANDIDATE_PATHS = 32          # simple paths tried per session when routes conflict
MAX_LISTED = 6                    # culprits named in one reason


def _listed(items: list[str]) -> str:
    unique = list(dict.fromkeys(items))
    more = len(unique) - MAX_LISTED
    return ", ".join(unique[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Path:
    """A route through the QKD network; two paths are equal when they take the same links
    towards the same key managers. `ends` are the key managers the keys travel between: the
    path's ends, or for a segment the key managers of the service's SAEs."""

    nodes: tuple[str, ...]
    kms: tuple[str, ...]
    link_ids: tuple[str, ...]
    qkdl_ids: tuple[str, ...]
    ends: tuple[str, str]
    headroom: int = field(default=0, compare=False)   # smallest spare eskr, before this session's rate

    def routes(self) -> list[tuple[str, str, str, str]]:
        """(key manager, destination key manager, next hop, via qkdl-id), both ways."""
        source, destination = self.ends
        out = []
        for i, qkdl_id in enumerate(self.qkdl_ids):
            out.append((self.kms[i], destination, self.kms[i + 1], qkdl_id))
            out.append((self.kms[i + 1], source, self.kms[i], qkdl_id))
        return out

    def __str__(self) -> str:
        return " - ".join(self.nodes)


class NoPath(Exception):
    """No path meets the request; the message names what is missing."""


Claims = dict[tuple[str, str], tuple[str, str, str]]  # (km, destination) -> (next hop, via, session)


class Planner:
    """Paths over one observed topology, around what the placed sessions already hold."""

    def __init__(self, view: ForwardingView, reachable_kms: set[str], alarms: dict[str, str]):
        self.view = view
        self.reachable_kms = reachable_kms
        self.alarms = alarms
        self.reserved: dict[str, int] = {}   # link id -> rate of the placed sessions
        self.claims: Claims = {}

    def hold(self, name: str, path: Path, rate: int) -> None:
        """A placed session: its rate on every link of its path, and its routes."""
        for link_id in path.link_ids:
            self.reserved[link_id] = self.reserved.get(link_id, 0) + rate
        for km, destination, next_hop, via in path.routes():
            self.claims[(km, destination)] = (next_hop, via, name)

    def headroom(self, link: QkdLink) -> int:
        return link.eskr - self.reserved.get(link.id, 0)

    def plan(self, request: SessionConfig, source_km: str, destination_km: str, count: int = 1) -> list[Path]:
        """Up to `count` node-disjoint paths, best first; NoPath says why there are fewer."""
        ends = []
        for km in (source_km, destination_km):
            node = self.view.node_of_km(km)
            if node is None:
                raise NoPath(f"key manager {km} has no QKD node in the forwarding topology")
            ends.append(node)
        source, destination = ends
        if source == destination:  # both SAEs on one key manager: it delivers the keys itself
            return [Path((source,), (source_km,), (), (), (source_km, destination_km), headroom=request.rate)]
        paths: list[Path] = []
        taken_nodes: set[str] = set()                  # inner nodes of the paths found so far
        taken_edges: set[frozenset[str]] = set()       # direct source-destination link, if used
        while len(paths) < count:
            try:
                graph = self._usable_graph(request, source, destination, taken_nodes, taken_edges)
                path = self._first_fitting(graph, source, destination, request)
            except NoPath as err:
                if not paths:
                    raise
                raise NoPath(f"only {len(paths)} node-disjoint path(s) between {source} and {destination}, "
                             f"{count} asked: {err}") from None
            paths.append(path)
            taken_nodes.update(path.nodes[1:-1])
            if len(path.nodes) == 2:
                taken_edges.add(frozenset(path.nodes))
        return paths

    def _graph(self, keep: Callable[[QkdLink], bool], taken_nodes: set[str],
               taken_edges: set[frozenset[str]]) -> nx.Graph:
        """Nodes joined by their kept links; of parallel links, the one with most headroom.
        Nodes and node pairs already taken by another path are left out."""
        graph = nx.Graph()
        graph.add_nodes_from(n for n in self.view.nodes if n not in taken_nodes)
        for link in self.view.links.values():
            a, b = link.nodes()
            if (a == b or not graph.has_node(a) or not graph.has_node(b) or frozenset(link.nodes()) in taken_edges
                    or not keep(link)):
                continue
            current = graph.get_edge_data(a, b)
            if current is None or self.headroom(link) > current["headroom"]:
                graph.add_edge(a, b, link=link, headroom=self.headroom(link))
        return graph

    def _usable_graph(self, request: SessionConfig, source: str, destination: str, taken_nodes: set[str],
                      taken_edges: set[frozenset[str]]) -> nx.Graph:
        """The links the request may use; NoPath names the first filter that cuts the two ends apart."""
        view, ceiling = self.view, request.qber_ceiling
        kms = lambda link: [view.km_of(n) or f"{n} (no key manager)" for n in link.nodes() if not view.is_external(n)]
        filters: list[tuple[str, Callable[[QkdLink], bool], Callable[[QkdLink], list[str]]]] = [
            ("a node whose key manager is unreachable",
             lambda l: all(km in self.reachable_kms for km in kms(l)),
             lambda l: [km for km in kms(l) if km not in self.reachable_kms]),
            ("a QKD link that is not ACTIVE",
             lambda l: l.status == "ACTIVE" or l.buildable, lambda l: [f"{l.id} ({l.status})"]),
            ("a QKD link with a raised QBER alarm",
             lambda l: l.id not in self.alarms, lambda l: [f"{l.id} ({self.alarms[l.id]})"]),
            ("a node or link the request avoids",
             lambda l: l.id not in request.avoid_links and not set(l.nodes()) & request.avoid_nodes,
             lambda l: [l.id] if l.id in request.avoid_links else sorted(set(l.nodes()) & request.avoid_nodes)),
            (f"a QKD link above the QBER ceiling of {ceiling}%",
             lambda l: ceiling is None or (l.qber is not None and l.qber <= ceiling),
             lambda l: [f"{l.id} (QBER {'unknown' if l.qber is None else f'{l.qber}%'})"]),
        ]
        # Inter-domain links only for the segments that name them.
        may_use = lambda l: l.id in request.border_links or not any(view.is_external(n) for n in l.nodes())
        kept: list[Callable[[QkdLink], bool]] = [may_use]
        graph_of = lambda keep: self._graph(keep, taken_nodes, taken_edges)
        graph = graph_of(may_use)
        if not nx.has_path(graph, source, destination):
            raise NoPath(f"no chain of PHYS QKD links joins {source} and {destination} in the forwarding topology")
        for what, keep, culprits in filters:
            reachable = nx.node_connected_component(graph, source)
            kept.append(keep)
            graph = graph_of(lambda l: all(k(l) for k in kept))
            if not nx.has_path(graph, source, destination):
                named = [c for l in self.view.links.values()
                         if set(l.nodes()) <= reachable and all(k(l) for k in kept[:-1]) and not keep(l)
                         for c in culprits(l)]
                raise NoPath(f"every chain of QKD links between {source} and {destination} crosses {what}: "
                             f"{_listed(named)}")
        wide = graph_of(lambda l: all(k(l) for k in kept) and self.headroom(l) >= request.rate)
        if not nx.has_path(wide, source, destination):
            raise NoPath(self._short_of_rate(graph, source, destination, request.rate))
        return wide

    def _short_of_rate(self, graph: nx.Graph, source: str, destination: str, rate: int) -> str:
        """Name the bottleneck of the widest path (the path in a maximum spanning tree)."""
        tree = nx.maximum_spanning_tree(graph, weight="headroom")
        nodes = nx.shortest_path(tree, source, destination)
        bottleneck = min((tree.edges[a, b]["link"] for a, b in zip(nodes, nodes[1:])), key=self.headroom)
        taken = self.reserved.get(bottleneck.id, 0)
        return (f"not enough effective key rate between {source} and {destination}: {rate} b/s requested, "
                f"the widest path {' - '.join(nodes)} can spare {max(0, self.headroom(bottleneck))} b/s on link "
                f"{bottleneck.id} (eskr {bottleneck.eskr} b/s, {taken} b/s taken by other sessions)")

    def _first_fitting(self, graph: nx.Graph, source: str, destination: str, request: SessionConfig) -> Path:
        """The fewest-hop path within max-hops that changes no route another session uses."""
        conflict = ""
        for i, nodes in enumerate(nx.shortest_simple_paths(graph, source, destination)):
            hops = len(nodes) - 1
            if request.max_hops is not None and hops > request.max_hops:
                if i == 0:
                    raise NoPath(f"the shortest path between {source} and {destination} with enough key rate has "
                                 f"{hops} hops, more than max-hops {request.max_hops}")
                break
            if i == MAX_CANDIDATE_PATHS:
                break
            links = [graph.edges[a, b]["link"] for a, b in zip(nodes, nodes[1:])]
            kms = tuple(self.view.km_of(n) or "" for n in nodes)
            ends = (request.segment.source_km, request.segment.destination_km) if request.segment else (kms[0], kms[-1])
            path = Path(tuple(nodes), kms, tuple(l.id for l in links), tuple(l.qkdl_id for l in links), ends,
                        min(self.headroom(l) for l in links))
            conflict = self._conflict(path)
            if not conflict:
                return path
        raise NoPath(f"every path between {source} and {destination} within the constraints would change a "
                     f"route that another session uses: {conflict}")

    def _conflict(self, path: Path) -> str:
        for km, destination, next_hop, via in path.routes():
            claim = self.claims.get((km, destination))
            if claim is not None and claim[:2] != (next_hop, via):
                return (f"key manager {km} relays keys for {destination} via {claim[0]} (link {claim[1]}) "
                        f"for session {claim[2]}")
        return ""
