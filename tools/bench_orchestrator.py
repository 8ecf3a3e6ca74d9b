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

With --intents N, on the generated network only: commit -> active of one intent on the empty
network (new links, then links exist), N more intents between distinct pairs of SAEs on
different sites committed at once and the time until all are active, the orchestrator's
memory before and after them, and commit -> active of one more intent with them in place
(target: under 2x the empty-network figure with links existing). Memory is the RSS of the
orchestrator's process with --processes; in one process it is the RSS of the whole stack's
process (every level grows with the intents). With --against, the measuring code is this
checkout's and the levels measured are the revision's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import statistics
import tempfile
import time
from typing import TYPE_CHECKING

from models.ns import INTENT

if TYPE_CHECKING:
    from devices.topology import Topology

TARGET_ACTIVE_S = 1.0
TARGET_REPAIR_S = 2.0
TARGET_LOADED_RATIO = 2.0  # commit -> active with N intents in place / on the empty network
MAX_HOPS = 10
RATE = 1000


def endpoints(topology: Topology) -> tuple[str, str, int]:
    """Two SAEs whose key managers' sites are as far apart as possible, up to MAX_HOPS spans."""
    import networkx as nx

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


# --- many intents ---------------------------------------------------------------------------

def cross_site_pairs(nodes: int, saes_per_site: int) -> int:
    return saes_per_site ** 2 * nodes * (nodes - 1) // 2


def generated_for_intents(nodes: int, seed: int, intents: int) -> tuple[dict, str]:
    """The generated network with enough SAEs per site for `intents` distinct pairs of SAEs on
    different sites, besides the probe's pair; and a note when it needed more than one per site."""
    from devices.topology import generate_topology

    data = generate_topology(nodes, seed)
    per_site = 1
    while cross_site_pairs(nodes, per_site) < intents + 1:
        per_site += 1
    if per_site == 1:
        return data, ""
    data["saes"] += [{"id": f"{sae['id']}-{k}", "km": sae["km"]} for sae in list(data["saes"])
                     for k in range(2, per_site + 1)]
    return data, (f"the generated network of {nodes} nodes offers {cross_site_pairs(nodes, 1)} pairs of SAEs on "
                  f"different sites, fewer than the {intents} intents and the probe need: {per_site} SAEs per site")


def intent_pairs(topology: Topology, count: int, seed: int, probe: tuple[str, str]) -> list[tuple[str, str]]:
    """`count` distinct pairs of SAEs on different sites, none the probe's, drawn with `seed`."""
    site = {sae.id: next(km.site for km in topology.key_managers if km.id == sae.km) for sae in topology.saes}
    saes = sorted(site)
    pairs = [(a, b) for i, a in enumerate(saes) for b in saes[i + 1:]
             if site[a] != site[b] and {a, b} != set(probe)]
    if len(pairs) < count:
        raise ValueError(f"{topology.name} offers {len(pairs)} pairs of SAEs on different sites besides the "
                         f"probe's; {count} intents asked")
    return random.Random(seed).sample(pairs, count)


async def commit_to_active(op, name: str, source: str, destination: str, timeout: float) -> float:
    """Seconds from the commit of one intent to its intent-state-change to active (as it arrives)."""
    def reached(event) -> bool:
        return event.tag == INTENT("intent-state-change") and INTENT.text(event, "name", "") == name \
            and INTENT.text(event, "to", "") in ("active", "failed")

    started = time.perf_counter()
    await op.push_intent(name, source, destination, RATE)
    event = await op.wait_event("orchestrator", reached, timeout)
    if INTENT.text(event, "to", "") != "active":
        raise RuntimeError(f"intent {name} failed: {INTENT.text(event, 'reason', '')}")
    return time.perf_counter() - started


async def remove(op, name: str, timeout: float) -> None:
    """Delete an intent and wait until it is removed."""
    from netconf_core.ns import BASE

    def removed(event) -> bool:
        return event.tag == INTENT("intent-state-change") and INTENT.text(event, "name", "") == name \
            and INTENT.text(event, "to", "") == "removed"

    nc = op.sessions["orchestrator"]
    await nc.edit_config(f'<intents xmlns="{INTENT}" xmlns:nc="{BASE}"><intent nc:operation="delete"><name>{name}'
                         f'</name></intent></intents>', target="candidate")
    await nc.commit()
    await op.wait_event("orchestrator", removed, timeout)


async def commit_all(op, pairs: list[tuple[str, str]], timeout: float) -> float:
    """Seconds from one commit of an intent per pair to the last of them active."""
    from lxml import etree

    from models.intent import intents_from_data

    names = [f"many-{i}" for i in range(len(pairs))]
    entries = [{"name": n, "endpoints": {"source-sae": a, "destination-sae": b}, "min-rate": RATE}
               for n, (a, b) in zip(names, pairs)]
    config = INTENT.element("intents")
    config.extend(intents_from_data(entries, "bench"))
    state = dict.fromkeys(names, "")
    waiting = set(names)

    def all_active(event) -> bool:
        name = INTENT.text(event, "name", "")
        if event.tag == INTENT("intent-state-change") and name in state:
            state[name] = INTENT.text(event, "to", "")
            (waiting.discard if state[name] == "active" else waiting.add)(name)
        return not waiting

    nc = op.sessions["orchestrator"]
    started = time.perf_counter()
    await nc.edit_config(etree.tostring(config).decode(), target="candidate")
    await nc.commit()
    try:
        await op.wait_event("orchestrator", all_active, timeout)
    except TimeoutError:
        failed = sorted(n for n in waiting if state[n] == "failed")
        raise RuntimeError(f"{len(names) - len(waiting)} of {len(names)} intents active after {timeout:g} s "
                           f"({len(failed)} failed{', e.g. ' + failed[0] if failed else ''})") from None
    return time.perf_counter() - started


async def measure_intents(data: dict, count: int, seed: int = 0, processes: bool = False,
                          timeout: float = 900.0) -> dict:
    """One run of the many-intents figures on the network `data` (generate_topology's form),
    within `timeout` seconds for the whole run."""
    from devices.topology import load_topology, parse_topology
    from tools.bench_devices import rss_bytes
    from tools.cmd_demo import Operator
    from tools.cmd_up import ProcessStack
    from tools.stack import Stack

    topology = parse_topology(data, data["name"])
    source, destination, _ = endpoints(topology)
    pairs = intent_pairs(topology, count, seed, (source, destination))
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as scratch:
        if processes:
            path = pathlib.Path(scratch) / "network.json"
            path.write_text(json.dumps(data))
            stack = ProcessStack(load_topology(path), path)
        else:
            stack = Stack(topology)
        deadline = time.perf_counter() + timeout
        left = lambda: max(1.0, deadline - time.perf_counter())
        memory = (lambda: rss_bytes(stack.supervisor.pid("orchestrator"))) if processes else rss_bytes
        step = "starting the stack"
        try:
            async with asyncio.timeout(timeout):
                await stack.start()
                try:
                    async with Operator(stack, timeout=60) as op:
                        step = "the probe on the empty network"
                        empty = await commit_to_active(op, "probe-empty", source, destination, left())
                        empty_links = await commit_to_active(op, "probe-empty-back", destination, source, left())
                        await remove(op, "probe-empty-back", left())  # its SAE pair is the loaded probe's
                        before = memory()
                        step = f"{count} intents"
                        all_active = await commit_all(op, pairs, left())
                        after = memory()
                        step = f"the probe with {count} intents in place"
                        loaded = await commit_to_active(op, "probe-loaded", destination, source, left())
                finally:
                    await stack.stop()
        except TimeoutError:
            raise RuntimeError(f"the run took more than --timeout {timeout:g} s, at {step}") from None
    return {"network": topology.name, "nodes": len(topology.qkd_nodes), "intents": count, "empty": empty,
            "empty_links": empty_links, "all_active": all_active, "rss_before": before, "rss_after": after,
            "loaded": loaded}


INTENT_ROWS = (("empty", "commit->active, empty network (s)"),
               ("empty_links", "  the same, links exist (s)"),
               ("all_active", "N intents: commit->all active (s)"),
               ("rss_before", "memory before them (MiB)"),
               ("rss_after", "memory with them active (MiB)"),
               ("loaded", "commit->active, N in place (s)"))


def intent_figure(result: dict, key: str) -> float:
    return result[key] / 2 ** 20 if key.startswith("rss") else result[key]


def intents_report(results: list[dict], processes: bool) -> str:
    """The rows of `measure_intents` results (median of runs), with the target."""
    first = results[0]
    median = {key: statistics.median(intent_figure(r, key) for r in results) for key, _ in INTENT_ROWS}
    memory = "RSS of the orchestrator's process" if processes else "RSS of the one process of the whole stack"
    lines = [f"orchestrator with {first['intents']} intents on {first['network']} ({first['nodes']} QKD nodes), "
             f"median of {len(results)} run(s); memory: {memory}"]
    lines += [f"{label.replace('N ', str(first['intents']) + ' '):44}{median[key]:12.3f}" for key, label in INTENT_ROWS]
    ratio = median["loaded"] / median["empty_links"]
    lines.append(f"{'N in place / empty (links exist)'.replace('N ', str(first['intents']) + ' '):44}{ratio:12.2f}"
                 f"   target < {TARGET_LOADED_RATIO:g}x: {'met' if ratio < TARGET_LOADED_RATIO else 'NOT met'}")
    return "\n".join(lines)


def main_intents(nodes: int, runs: int, seed: int, intents: int, processes: bool, timeout: float) -> int:
    data, note = generated_for_intents(nodes, seed, intents)
    if note:
        print(note)
    shapes_measured = (False, True) if processes else (False,)
    for apart in shapes_measured:
        results = [asyncio.run(measure_intents(data, intents, seed, apart, timeout)) for _ in range(runs)]
        print(intents_report(results, apart), flush=True)
    return 0


def compare_intents(revision: str, nodes: int, runs: int, seed: int, intents: int, timeout: float) -> int:
    """The many-intents figures of `revision` and of this checkout side by side, measured by
    this checkout's code (loaded by path in both trees) on the levels of each tree."""
    from tools.bench_compare import CURRENT, alternate, revision_label, revision_tree

    data, note = generated_for_intents(nodes, seed, intents)
    if note:
        print(note)
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as scratch, revision_tree(revision) as before:
        network = pathlib.Path(scratch) / "network.json"
        network.write_text(json.dumps(data))
        snippet = ("import asyncio, importlib.util, json, pathlib\n"
                   f"spec = importlib.util.spec_from_file_location('bench_intents', {str(pathlib.Path(__file__))!r})\n"
                   "bench = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(bench)\n"
                   f"data = json.loads(pathlib.Path({str(network)!r}).read_text())\n"
                   f"result = asyncio.run(bench.measure_intents(data, {intents}, {seed}, timeout={timeout}))")
        results = alternate({"before": before, "after": CURRENT}, snippet, runs)
    print(f"orchestrator with {intents} intents on {data['name']}: before = {revision_label(revision)}, after = "
          f"this checkout; median of {runs} (each in a fresh process, taking turns); memory: RSS of the one "
          f"process of the whole stack")
    print(f"{'':44}{'before':>10}{'after':>10}{'after/before':>14}")
    for key, label in INTENT_ROWS:
        b = statistics.median(intent_figure(r, key) for r in results["before"])
        a = statistics.median(intent_figure(r, key) for r in results["after"])
        print(f"{label.replace('N ', str(intents) + ' '):44}{b:10.3f}{a:10.3f}{a / b if b else float('nan'):14.2f}")
    return 0


def main(nodes: int = 100, runs: int = 3, seed: int = 0, against: str | None = None, processes: bool = False,
         intents: int = 0, timeout: float = 900.0) -> int:
    """`intents` > 0: the many-intents figures instead (generated network only), each run within `timeout` s."""
    if intents and against:
        return compare_intents(against, nodes, runs, seed, intents, timeout)
    if intents:
        return main_intents(nodes, runs, seed, intents, processes, timeout)
    if against:
        return compare(against, nodes, runs, seed)
    if processes:
        return shapes(nodes, runs, seed)
    from devices.topology import default_topology, generate_topology, parse_topology

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
    from devices.topology import default_topology, generate_topology, load_topology

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


def add_arguments(parser) -> None:
    """The options of `qstrata bench orchestrator` (and of this module run alone)."""
    parser.add_argument("--nodes", type=int, default=100, help="nodes of the generated network (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs per network (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated network (default 0)")
    parser.add_argument("--against", metavar="REVISION",
                        help="also measure this git revision (in a temporary worktree), side by side")
    parser.add_argument("--processes", action="store_true",
                        help="one process and one process per level (as `qstrata up` runs), side by side")
    parser.add_argument("--intents", type=int, default=0, metavar="N",
                        help="N intents on the generated network: time until all are active, the orchestrator's "
                             "memory, commit->active with N in place beside the empty network (default 0: the "
                             "commit and cut figures)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one run of --intents may take (default 900)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.intents < 0 or args.timeout <= 0 or args.runs < 1:
        raise SystemExit("bench orchestrator: --intents must be 0 or more, --runs 1 or more, --timeout positive")
    return main(args.nodes, args.runs, args.seed, args.against, args.processes, args.intents, args.timeout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
