"""Benchmark of the fidelity-aware entanglement planner (entanglement_physics.planner): the time
to plan a path, swap order and purification rounds meeting a minimum fidelity, on generated
networks of 100 and 1,000 nodes.

Each network is `qstrata topology generate`'s ring with chords (devices.topology): every fibre
span becomes a single-click elementary link whose rate and fidelity come from the link model
(entanglement_physics.link) at the span's length, with a seeded random bright-state population
(F = 1 - a, 0.90 to 0.98) and trapped-ion-like photonics; every node gets a seeded random memory
coherence time (5 to 100 s). Queries join random pairs of nodes 3 to 8 links apart. Figures
only, no target.

    .venv/bin/qstrata bench fabric [--sizes 100 1000] [--queries 20] [--min-fidelity 0.85] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx as nx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000],
                        help="nodes of each generated network, one row each (default 100 1000)")
    parser.add_argument("--queries", type=int, default=20, help="plans per network (default 20)")
    parser.add_argument("--min-fidelity", type=float, default=0.85, help="fidelity asked (default 0.85)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and queries (default 0)")
    parser.set_defaults(func=run)


def fabric(nodes: int, seed: int) -> nx.Graph:
    """The elementary-link graph of a generated network, with seeded random link parameters."""
    import networkx as nx  # imported when the benchmark runs, not when the CLI starts

    from devices.topology import generate_topology
    from entanglement_physics import NodeProfile, Scheme, elementary_link

    rng = random.Random(seed)
    topology = generate_topology(nodes, seed)
    graph = nx.Graph()
    for site in topology["sites"]:
        graph.add_node(site["id"], decoherence_rate=1 / rng.uniform(5.0, 100.0))
    for span in topology["spans"]:
        profile = NodeProfile(emission_probability=0.111, alpha_db_per_km=0.25,
                              bright_state_population=rng.uniform(0.02, 0.10))
        link = elementary_link(span["length_km"], Scheme.SINGLE_CLICK, profile)
        graph.add_edge(span["a"].split(":")[0], span["b"].split(":")[0], link_id=span["id"], rate=link.rate,
                       fidelity=link.fidelity)
    return graph


def queries(graph: nx.Graph, count: int, seed: int) -> list[tuple[str, str]]:
    """Random pairs of nodes 3 to 8 links apart (fewer when the network is too small)."""
    import networkx as nx

    rng = random.Random(seed)
    nodes = sorted(graph)
    pairs = []
    while len(pairs) < count:
        source = rng.choice(nodes)
        distances = nx.single_source_shortest_path_length(graph, source, cutoff=8)
        far = sorted(n for n, hops in distances.items() if hops >= min(3, max(distances.values())))
        pairs.append((source, rng.choice(far)))
    return pairs


def measure(nodes: int, count: int, min_fidelity: float, seed: int) -> dict:
    from entanglement_physics import Infeasible, plan

    graph = fabric(nodes, seed)
    times, feasible = [], 0
    for source, destination in queries(graph, count, seed + 1):
        started = time.perf_counter()
        try:
            plan(graph, source, destination, min_fidelity)
            feasible += 1
        except Infeasible:
            pass
        times.append(time.perf_counter() - started)
    times.sort()
    return {"nodes": nodes, "links": graph.number_of_edges(), "queries": count, "feasible": feasible,
            "p50": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "max": times[-1]}


def run(args: argparse.Namespace) -> int:
    if args.queries < 1 or min(args.sizes) < 4:
        print("qstrata bench fabric: --queries must be >= 1 and --sizes >= 4")
        return 2
    print(f"fidelity-aware entanglement planning, F >= {args.min_fidelity}, seed {args.seed}")
    print(f"{'nodes':>6} {'links':>6} {'queries':>8} {'feasible':>9} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9}")
    for size in args.sizes:
        row = measure(size, args.queries, args.min_fidelity, args.seed)
        print(f"{row['nodes']:>6} {row['links']:>6} {row['queries']:>8} {row['feasible']:>9} "
              f"{row['p50'] * 1e3:>9.1f} {row['p90'] * 1e3:>9.1f} {row['max'] * 1e3:>9.1f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
