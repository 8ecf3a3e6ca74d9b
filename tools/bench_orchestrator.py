"""Benchmark of the orchestrator over the full stack (devices, three controllers,
orchestrator, all NETCONF on 127.0.0.1):

- commit -> active: from the commit of a key-service intent to its intent-state-change
  to active, over the longest shortest path the network offers (up to 10 hops), when every
  QKD link of the path must be created (new links), and when they exist (a second intent
  between the same SAEs the other way round, after the first one);
- cut -> active: from the cut of a fibre span under that path to the intent active again
  on another path.

Both are measured as a NETCONF client sees them (the notifications' arrival), on the
embedded Madrid network and on a generated ring-with-chords network of 100 nodes.
Targets: under 1 s and under 2 s.

    .venv/bin/python -m tools.bench_orchestrator [--nodes 100] [--runs 3] [--against REVISION]

With --against, a git revision is measured too (in a temporary worktree) and both are printed
side by side. With --processes, both shapes of this checkout are measured side by side: the
stack in one process (tools/stack.py) and every level its own OS process (`qstrata up`'s,
tools/cmd_up.ProcessStack).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import tempfile
import time

import networkx as nx

from devices.topology import Topology, default_topology, generate_topology, load_topology, parse_topology

TARGET_ACTIVE_S = 1.0
TARGET_REPAIR_S = 2.0
MAX_HOPS = 10
RATE = 1000


def endpoints(topology: Topology) -> tuple[str, str, int]:
    """Two SAEs whose key managers' sites are as far apart as possible, up to MAX_HOPS spans."""
    graph = nx.Graph()
    graph.add_edges_from((s.a.node, s.b.node) for s in topology.spans)
    site_of_sae = {sae.id: next(km.site for km in topology.key_managers if km.id == sae.km) for sae in topology.saes}
    best = None
    for a in sorted(site_of_sae):
        lengths = nx.single_source_shortest_path_length(graph, site_of_sae[a], cutoff=MAX_HOPS)
        for b in sorted(site_of_sae):
            hops = lengths.get(site_of_sae[b], 0)
            if best is None or hops > best[2]:
                best = (a, b, hops)
        if best and best[2] == MAX_HOPS:
            break
    assert best is not None
    return best


async def measure(topology: Topology, runs: int, processes: bool = False,
                  topology_file: pathlib.Path | None = None) -> dict:
    """`processes`: every level its own process, the devices' from `topology_file` (None: the
    embedded network), instead of one process."""
    from tools.cmd_demo import Operator, path_of
    from tools.cmd_up import ProcessStack
    from tools.stack import Stack

    source, destination, _ = endpoints(topology)
    to_active, to_repair, reuse, hops = [], [], [], 0
    for run in range(runs):
        stack = ProcessStack(topology, topology_file) if processes else Stack(topology)
        await stack.start()
        try:
            async with Operator(stack, timeout=60) as op:
                name = f"bench-{run}"
                started = time.perf_counter()
                await op.push_intent(name, source, destination, RATE)
                intent = await op.wait_state(name, {"active", "failed"})
                to_active.append(time.perf_counter() - started)
                if intent["reached"]["state"] != "active":
                    raise RuntimeError(f"intent failed: {intent['reached']['reason']}")
                nodes, links = path_of(intent)
                hops = len(links)
                spans = await op.spans_of(links)
                started = time.perf_counter()
                await op.span_action(spans[len(spans) // 2], "cut")
                intent = await op.wait_state(name, {"active", "failed"})
                to_repair.append(time.perf_counter() - started)
                if intent["reached"]["state"] != "active":
                    raise RuntimeError(f"intent failed after the cut: {intent['reached']['reason']}")
                started = time.perf_counter()
                await op.push_intent(f"{name}-back", destination, source, RATE)
                intent = await op.wait_state(f"{name}-back", {"active", "failed"})
                reuse.append(time.perf_counter() - started)
                if intent["reached"]["state"] != "active":
                    raise RuntimeError(f"the second intent failed: {intent['reached']['reason']}")
        finally:
            await stack.stop()
    return {"network": topology.name, "nodes": len(topology.qkd_nodes), "hops": hops,
            "active": statistics.median(to_active), "repair": statistics.median(to_repair),
            "reuse": statistics.median(reuse), "active_max": max(to_active), "repair_max": max(to_repair),
            "reuse_max": max(reuse)}


def report(rows: list[dict], runs: int) -> str:
    lines = [f"orchestrator benchmark (median of {runs} run(s), max in brackets)",
             f"{'network':<24}{'QKD nodes':>10}{'hops':>6}{'commit->active':>20}{'(links exist)':>20}"
             f"{'cut->active':>20}"]
    for r in rows:
        lines.append(f"{r['network']:<24}{r['nodes']:>10}{r['hops']:>6}"
                     f"{r['active']:>11.3f} s ({r['active_max']:.3f})"
                     f"{r['reuse']:>11.3f} s ({r['reuse_max']:.3f})"
                     f"{r['repair']:>11.3f} s ({r['repair_max']:.3f})")
    ok = all(r["active"] < TARGET_ACTIVE_S and r["repair"] < TARGET_REPAIR_S for r in rows)
    lines.append(f"targets: commit->active < {TARGET_ACTIVE_S:g} s, cut->active < {TARGET_REPAIR_S:g} s: "
                 f"{'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def main(nodes: int = 100, runs: int = 3, seed: int = 0, against: str | None = None, processes: bool = False) -> int:
    if against:
        return compare(against, nodes, runs, seed)
    if processes:
        return shapes(nodes, runs, seed)
    generated = parse_topology(generate_topology(nodes, seed), f"generated {nodes} nodes")
    rows = [asyncio.run(measure(t, runs)) for t in (default_topology(), generated)]
    print(report(rows, runs))
    return 0


def compare(revision: str, nodes: int, runs: int, seed: int) -> int:
    """The figures of `revision` and of this checkout side by side: `runs` measurements of
    each network per implementation, each in a fresh process, the two taking turns."""
    from tools.bench_compare import CURRENT, alternate, revision_label, revision_tree

    networks = {"Madrid": "default_topology()",
                f"generated {nodes}": f"parse_topology(generate_topology({nodes}, {seed}), 'generated {nodes} nodes')"}
    with revision_tree(revision) as before:
        print(f"orchestrator: before = {revision_label(revision)}, after = this checkout; median of {runs} "
              "(each in a fresh process, taking turns)")
        print(f"{'':36}{'before':>10}{'after':>10}{'after/before':>14}")
        for name, topology in networks.items():
            snippet = ("import asyncio\nfrom devices.topology import default_topology, generate_topology, "
                       "parse_topology\nfrom tools.bench_orchestrator import measure\n"
                       f"result = asyncio.run(measure({topology}, 1))")
            results = alternate({"before": before, "after": CURRENT}, snippet, runs)
            for key, label in (("active", "commit->active (s)"), ("reuse", "commit->active, links exist (s)"),
                               ("repair", "cut->active (s)")):
                b = statistics.median(r[key] for r in results["before"])
                a = statistics.median(r[key] for r in results["after"])
                print(f"{name + ' ' + label:36}{b:10.3f}{a:10.3f}{a / b if b else float('nan'):14.2f}")
    return 0


def shapes(nodes: int, runs: int, seed: int) -> int:
    """One process and one process per level, side by side, on Madrid and the generated network."""
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as scratch:
        generated = pathlib.Path(scratch) / f"generated-{nodes}.json"
        generated.write_text(json.dumps(generate_topology(nodes, seed)))
        networks = [("Madrid", default_topology(), None), (f"generated {nodes}", load_topology(generated), generated)]
        print(f"orchestrator: one process vs one process per level; median of {runs} run(s)")
        print(f"{'':48}{'one':>10}{'per level':>11}{'per level/one':>15}")
        for name, topology, path in networks:
            one = asyncio.run(measure(topology, runs))
            apart = asyncio.run(measure(topology, runs, processes=True, topology_file=path))
            for key, label in (("active", "commit->active (s)"), ("reuse", "commit->active, links exist (s)"),
                               ("repair", "cut->active (s)")):
                ratio = apart[key] / one[key] if one[key] else float("nan")
                print(f"{name + ' ' + label:48}{one[key]:10.3f}{apart[key]:11.3f}{ratio:15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100, help="nodes of the generated network (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs per network (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated network (default 0)")
    parser.add_argument("--against", metavar="REVISION", help="also measure this git revision, side by side")
    parser.add_argument("--processes", action="store_true",
                        help="one process and one process per level, side by side")
    args = parser.parse_args()
    raise SystemExit(main(args.nodes, args.runs, args.seed, args.against, args.processes))
