"""Fidelity-aware planning of end-to-end entanglement over a graph of elementary links.

The graph (networkx) has one edge per elementary link that makes pairs, with attributes
`rate` (pairs/s) and `fidelity`, and optionally `link_id`; nodes may carry `decoherence_rate`
(1/s per stored half), `swap_fidelity`, `swap_success`, `can_swap` and `can_purify` (defaults:
an ideal node that can do both). `plan` returns the path, swap order and purification rounds
that meet a minimum fidelity at the highest rate (chain model of `chain`), or raises
`Infeasible` saying why ("best achievable fidelity 0.71 < 0.80 requested").

Candidate paths are the first few simple paths by fidelity cost (-ln w per link: w multiplies
along a chain), by time cost (1/rate per link) and by number of links. On each, every swap order is tried for up
to MAX_ENUMERATED_SWAPS inner nodes, otherwise the nested order, left to right and right to
left; purification is the same number of rounds on every link (0..max_rounds), on links whose
two ends can purify.

Memory is a constraint: a node with `storage_qubits` (absent: unlimited) must hold what the
plan needs at once (`memory_needed`). A plan that does not fit is not chosen, so the request
is routed around the node or met with fewer rounds; when only such plans meet the fidelity,
`Infeasible` names the node ("repeater qn-r2 has 2 storage qubits, the plan needs 4 ...").
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from entanglement_physics import werner
from entanglement_physics.chain import ChainLink, ChainNode, balanced_order, evaluate_chain

MAX_ENUMERATED_SWAPS = 5
CANDIDATE_PATHS = 6  # per cost (fidelity, time, links)


class Infeasible(Exception):
    """No plan meets the request; the message says why, and `best_fidelity` is the highest
    fidelity any plan reached (None when there is no path at all)."""

    def __init__(self, message: str, best_fidelity: float | None = None) -> None:
        super().__init__(message)
        self.best_fidelity = best_fidelity


@dataclass(frozen=True)
class Plan:
    path: tuple[Hashable, ...]  # nodes, source first
    link_ids: tuple[Hashable, ...]  # one per link along the path
    swap_order: tuple[Hashable, ...]  # inner nodes, in the order they swap
    purification_rounds: tuple[int, ...]  # one per link
    rate: float  # end-to-end pairs per second
    fidelity: float  # mean fidelity of a delivered pair


@dataclass(frozen=True)
class MemoryShortfall:
    """A node of a path with fewer storage qubits than a plan needs there."""

    node: Hashable
    role: str  # "repeater" (an inner node of the path) or "end node"
    has: int
    needs: int

    def describe(self, rounds: Sequence[int]) -> str:
        most = max(rounds, default=0)
        purification = "no purification" if not most else \
            f"{most} purification round{'s' if most > 1 else ''} per link, {most + 1} pairs held at once per side"
        return (f"{self.role} {self.node} has {self.has} storage qubit{'s' if self.has != 1 else ''}, "
                f"the plan needs {self.needs} ({purification})")


def memory_needed(rounds: Sequence[int]) -> list[int]:
    """The storage qubits each node of a path needs with `rounds` purification rounds on its
    links: to make a pair of r rounds a link end holds one pair of each lower round and the new
    one, r + 1; a repeater keeps half its qubits for each side (as the emulated nodes do), so it
    needs twice what its hungrier side needs."""
    sides = [r + 1 for r in rounds]
    return [sides[0]] + [2 * max(a, b) for a, b in zip(sides, sides[1:])] + [sides[-1]]


def memory_shortfall(graph: nx.Graph, path: Sequence[Hashable], rounds: Sequence[int]) -> MemoryShortfall | None:
    """The node of `path` furthest short of the storage qubits `rounds` need; None when all fit."""
    worst = None
    for k, (node, needs) in enumerate(zip(path, memory_needed(rounds))):
        has = graph.nodes[node].get("storage_qubits")
        if has is not None and has < needs and (worst is None or needs - has > worst.needs - worst.has):
            worst = MemoryShortfall(node, "repeater" if 0 < k < len(path) - 1 else "end node", has, needs)
    return worst


def plan(graph: nx.Graph, source: Hashable, destination: Hashable, min_fidelity: float, *,
         max_age_s: float | None = None, max_rounds: int = 3, max_hops: int | None = None,
         avoid_nodes: Iterable[Hashable] = (), candidate_paths: int = CANDIDATE_PATHS) -> Plan:
    """The plan of highest rate whose fidelity reaches `min_fidelity` (ties: higher fidelity,
    then fewer links, then the path's node names)."""
    if source == destination:
        raise ValueError("a plan joins two different nodes")
    usable = _usable_graph(graph, source, destination, set(avoid_nodes))
    best: tuple | None = None
    best_fidelity = None  # of the plans that fit the nodes' memory
    blocked: tuple | None = None  # the best plan meeting the fidelity but not the memory, and its shortfall
    least: tuple | None = None    # the plan short of the fewest qubits, and its shortfall
    paths = _candidate_paths(usable, source, destination, candidate_paths, max_hops)
    for path in paths:
        for candidate, shortfall in _plans_on(usable, path, max_rounds, max_age_s):
            if candidate.rate <= 0:  # every pair is discarded before it is used
                continue
            rank = (-candidate.rate, -candidate.fidelity, len(candidate.path), [str(n) for n in candidate.path])
            meets = candidate.fidelity + 1e-12 >= min_fidelity
            if shortfall is not None:
                if meets and (blocked is None or rank < blocked[0]):
                    blocked = (rank, candidate, shortfall)
                if least is None or shortfall.needs < least[2].needs:
                    least = (rank, candidate, shortfall)
                continue
            if best_fidelity is None or candidate.fidelity > best_fidelity:
                best_fidelity = candidate.fidelity
            if meets and (best is None or rank < best[0]):
                best = (rank, candidate)
    if best is not None:
        return best[1]
    if not paths:
        limit = f" within {max_hops} links" if max_hops is not None else ""
        raise Infeasible(f"no path of elementary links from {source} to {destination}{limit}")
    if blocked is not None or (best_fidelity is None and least is not None):
        _, candidate, shortfall = blocked or least
        within = ""
        if best_fidelity is not None:
            shown, asked = _distinct(best_fidelity, min_fidelity)
            within = f"; within the nodes' storage qubits the best achievable fidelity is {shown} < {asked} requested"
        raise Infeasible(shortfall.describe(candidate.purification_rounds) + within, best_fidelity)
    if best_fidelity is None:
        raise Infeasible(f"no plan from {source} to {destination} keeps a pair within the maximum age {max_age_s} s")
    shown, asked = _distinct(best_fidelity, min_fidelity)
    raise Infeasible(f"best achievable fidelity {shown} < {asked} requested", best_fidelity)


def _distinct(best: float, asked: float) -> tuple[str, str]:
    """Both fidelities to two decimals, or more when two would print them alike."""
    digits = 2
    while f"{best:.{digits}f}" == f"{asked:.{digits}f}" and digits < 6:
        digits += 1
    return f"{best:.{digits}f}", f"{asked:.{digits}f}"


def _usable_graph(graph: nx.Graph, source: Hashable, destination: Hashable, avoid: set) -> nx.Graph:
    """Links that make entangled pairs (rate > 0, F > 1/4), through nodes that can swap."""
    for end in (source, destination):
        if end not in graph:
            raise Infeasible(f"{end} is not a node of the fabric")
        if end in avoid:
            raise ValueError(f"{end} is an end of the plan and cannot be avoided")
    relays = [n for n, data in graph.nodes(data=True)
              if n in (source, destination) or (n not in avoid and data.get("can_swap", True))]
    usable = nx.Graph(graph.subgraph(relays))
    usable.remove_edges_from([(a, b) for a, b, data in usable.edges(data=True)
                              if not (data["rate"] > 0 and data["fidelity"] > 0.25)])
    return usable


def _candidate_paths(graph: nx.Graph, source: Hashable, destination: Hashable, count: int,
                     max_hops: int | None) -> list[tuple]:
    def fidelity_cost(a, b, data):
        return -math.log(werner.werner_parameter(data["fidelity"]))

    def time_cost(a, b, data):
        return 1 / data["rate"]

    found: dict[tuple, None] = {}
    for cost in (fidelity_cost, time_cost, None):
        try:
            paths = nx.shortest_simple_paths(graph, source, destination, weight=cost)
            for path in itertools.islice(paths, count):
                if max_hops is None or len(path) - 1 <= max_hops:
                    found[tuple(path)] = None
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            return []
    return list(found)


def _plans_on(graph: nx.Graph, path: Sequence[Hashable], max_rounds: int,
              max_age_s: float | None) -> Iterable[tuple[Plan, MemoryShortfall | None]]:
    nodes = [ChainNode(graph.nodes[n].get("decoherence_rate", 0.0), graph.nodes[n].get("swap_fidelity", 1.0),
                       graph.nodes[n].get("swap_success", 1.0)) for n in path]
    edges = [graph.edges[a, b] for a, b in zip(path, path[1:])]
    links = [ChainLink(e["rate"], e["fidelity"]) for e in edges]
    purifiable = [graph.nodes[a].get("can_purify", True) and graph.nodes[b].get("can_purify", True)
                  for a, b in zip(path, path[1:])]
    inner = len(links) - 1
    if inner <= MAX_ENUMERATED_SWAPS:
        orders = list(itertools.permutations(range(1, inner + 1)))
    else:
        orders = list(dict.fromkeys([tuple(balanced_order(len(links))), tuple(range(1, inner + 1)),
                                     tuple(range(inner, 0, -1))]))
    link_ids = tuple(e.get("link_id", (a, b)) for e, a, b in zip(edges, path, path[1:]))
    for rounds in range(max_rounds + 1):
        per_link = tuple(rounds if ok else 0 for ok in purifiable)
        if rounds and not any(purifiable):
            break
        shortfall = memory_shortfall(graph, path, per_link)
        for order in orders:
            result = evaluate_chain(nodes, links, order, per_link, max_age_s)
            yield (Plan(tuple(path), link_ids, tuple(path[k] for k in order), per_link, result.rate, result.fidelity),
                   shortfall)
