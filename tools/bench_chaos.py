"""`qstrata bench chaos`: a chaos soak of the closed loop on a generated network.

It starts the whole stack on a generated ring-with-chords network (`qstrata topology
generate`), commits several intents (single-path and protected by two disjoint paths, of
different priorities), then injects random faults one after another for the given time: span
cuts and repairs, eavesdroppers and their removal, drained key pools, and crashes of QKD nodes
and key managers (each back from disk after a short outage). After each fault it checks:

- every intent that still has a feasible path is active (a protected intent left with one
  feasible disjoint path: degraded, with keys flowing) within the recovery bound;
- the transitions of each intent per fault are bounded;
- keys fetched at both ends match, and no key is served twice (dec_keys of a delivered
  key ID must fail);
- no alarm outlives its cause: the alarm lists of the connectivity and forwarding
  controllers hold no raised alarm without a fault in force that explains it.

Like `qstrata fault` and `qstrata intent`, the driver reaches the stack over the network only:
NETCONF to the fibre plant and devices for faults, NETCONF to the orchestrator and controllers
for intents, their state and the alarm lists, ETSI GS QKD 014 over HTTP for keys. It prints
the figures and every violation; the exit code is 0 only without violations.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass, field

import networkx as nx

from devices.topology import Topology, generate_topology, parse_topology
from netconf_core.client import NetconfClient
from netconf_core.ssh import trusted_host_keys
from netconf_core.errors import RPCError
from models.alarms import read_alarms
from models.forwarding import ForwardingView
from models.ns import ALARMS as ALARMS_NS, INTENT, NW
from tools.cmd_demo import Operator
from tools.cmd_fault import FaultError, _drain_pool, _plant_rpc, _restart
from tools.cmd_intent import intent_states
from tools.demo_steps import StepFailed

RATE = 500                  # bit/s per intent: feasible on any generated span
RECOVERY_BOUND_S = 30.0     # an intent with a feasible path is active again within this
TRANSITIONS_BOUND = 12      # transitions of one intent caused by one fault
OUTAGE_S = 6                # seconds a crashed device stays down
RESTART_MARGIN_S = 5.0      # ... and may take to start again
KEY_TIMEOUT_S = 10.0
POLL_S = 0.5
SETTLE_S = 1.5              # recovered: right, and no transition for this long
MAX_FAULTS_IN_FORCE = 2
FAULT_KINDS = ("cut", "repair", "eavesdrop", "clear", "drain", "crash")
ALARMS = ("subtree", f'<alarms xmlns="{ALARMS_NS}"/>')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=100, help="sites of the generated network (default 100)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of faults (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network and of the faults (default 0)")
    parser.add_argument("--intents", type=int, default=4, help="intents, every other one protected (default 4)")
    parser.add_argument("--verbose", action="store_true", help="print each fault and its recovery as it happens")


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(soak(args.nodes, args.minutes * 60, args.seed, args.intents, verbose=args.verbose))
    print(report.text())
    return 0 if not report.violations else 1


@dataclass(frozen=True)
class ChaosIntent:
    name: str
    source: str          # SAE
    destination: str
    sites: tuple[str, str]
    paths: int
    priority: int


@dataclass
class Report:
    network: str
    nodes: int
    intents: list[ChaosIntent]
    seed: int
    seconds: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    recovery: list[float] = field(default_factory=list)
    transitions: list[int] = field(default_factory=list)  # per intent per fault
    keys: int = 0
    violations: list[str] = field(default_factory=list)

    def text(self) -> str:
        protected = sum(1 for i in self.intents if i.paths > 1)
        lines = [f"chaos soak: {self.network}, {self.nodes} nodes, {len(self.intents)} intents ({protected} "
                 f"protected), seed {self.seed}, {self.seconds / 60:.1f} min of faults",
                 f"faults injected: {sum(self.faults.values())} ("
                 + ", ".join(f"{kind} {self.faults.get(kind, 0)}" for kind in FAULT_KINDS) + ")"]
        if self.recovery:
            lines.append(f"recovery time: p50 {percentile(self.recovery, 50):.2f} s, p99 "
                         f"{percentile(self.recovery, 99):.2f} s, max {max(self.recovery):.2f} s "
                         f"(bound {RECOVERY_BOUND_S:g} s)")
        if self.transitions:
            lines.append(f"transitions per intent per fault: mean {statistics.mean(self.transitions):.2f}, "
                         f"max {max(self.transitions)} (bound {TRANSITIONS_BOUND})")
        lines.append(f"keys checked: {self.keys} (matched at both ends, dec_keys again refused)")
        lines.append(f"violations: {len(self.violations)}")
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def site_graph(topology: Topology) -> nx.MultiGraph:
    graph = nx.MultiGraph()
    graph.add_nodes_from(s.id for s in topology.sites)
    for span in topology.spans:
        graph.add_edge(span.a.node, span.b.node, key=span.id)
    return graph


def choose_intents(topology: Topology, count: int, rng: random.Random) -> list[ChaosIntent]:
    """Pairs of SAEs a few hops apart; every other intent protected by two node-disjoint paths,
    chosen where the two are short. Distinct SAE pairs, priorities 100 to 200."""
    graph = nx.Graph(site_graph(topology))
    sae_at = {km.site: sae.id for sae in topology.saes for km in topology.key_managers if km.id == sae.km}
    sites = sorted(sae_at)
    singles, protected = [], []
    for a in sites:
        for b, hops in nx.single_source_shortest_path_length(graph, a, cutoff=3).items():
            if a < b and hops >= 2:
                singles.append((a, b))
            if a < b and hops >= 1:
                disjoint = list(nx.node_disjoint_paths(graph, a, b, cutoff=2))
                if len(disjoint) == 2 and max(len(p) for p in disjoint) <= 8:
                    protected.append((a, b))
    rng.shuffle(singles)
    rng.shuffle(protected)
    chosen, used = [], set()
    for index in range(count):
        pool = protected if index % 2 else singles
        pair = next((p for p in pool if not set(p) & used), None) or next(p for p in pool if p not in chosen)
        used.update(pair)
        chosen.append(pair)
    return [ChaosIntent(f"chaos-{i}", sae_at[a], sae_at[b], (a, b), 2 if i % 2 else 1, 100 + 50 * (i % 3))
            for i, (a, b) in enumerate(chosen)]


class Chaos:
    """The driver: an Operator's NETCONF and ETSI 014 sessions, the faults in force, the checks."""

    def __init__(self, stack, operator, intents: list[ChaosIntent], rng: random.Random, report: Report,
                 verbose: bool = False):
        self.verbose = verbose
        self.stack, self.op, self.intents, self.rng, self.report = stack, operator, intents, rng, report
        self.topology: Topology = stack.topology
        self.rows = {row.name: row for row in stack.table()}
        self.plant = next(row for row in stack.table() if row.level == "fibre-plant")
        self.graph = site_graph(self.topology)
        self.site_of = {d.id: d.site for d in (*self.topology.qkd_nodes, *self.topology.key_managers)}
        self.cut: set[str] = set()
        self.tapped: set[str] = set()
        self.down: dict[str, float] = {}   # device -> loop time it is back
        self.kinds: list[str] = []
        self.counts = {i.name: 0 for i in self.intents}  # transitions since the last fault
        self.last_change = 0.0

    # -- faults, over NETCONF like `qstrata fault` --

    async def device(self, name: str, act, **args) -> str:
        row = self.rows[name]
        async with await NetconfClient.connect(row.host, row.port, *row.read_write,
                                               known_hosts=trusted_host_keys(row.host_key)) as nc:
            return await act(nc, argparse.Namespace(**args))

    async def plant_rpc(self, rpc: str, span: str, **args) -> None:
        await self.device(self.plant.name, _plant_rpc(rpc, ""), span=span, **args)

    async def used_links(self) -> dict[str, list[str]]:
        """Links of the paths each intent uses now, from the orchestrator."""
        states = await intent_states(self.op.sessions["orchestrator"])
        return {i.name: [l for p in states.get(i.name, {}).get("paths", []) for l in p["links"]]
                for i in self.intents}

    async def inject(self) -> str:
        """One random fault, mostly on what the intents use; returns what it did."""
        if not self.kinds:
            self.kinds = list(FAULT_KINDS)
            self.rng.shuffle(self.kinds)
        kind = self.kinds.pop()
        now = asyncio.get_running_loop().time()
        self.down = {d: t for d, t in self.down.items() if t + RESTART_MARGIN_S > now}
        in_force = len(self.cut) + len(self.tapped) + len(self.down)
        possible = {"drain"} | ({"repair"} if self.cut else set()) | ({"clear"} if self.tapped else set()) | \
            ({"cut", "eavesdrop", "crash"} if in_force < MAX_FAULTS_IN_FORCE else set())
        if kind not in possible:
            kind = self.rng.choice(sorted(possible))
        links = [l for ls in (await self.used_links()).values() for l in ls]
        spans = await self.op.spans_of(links) if links else []
        healthy = [s for s in spans if s not in self.cut | self.tapped] or \
                  [s.id for s in self.topology.spans if s.id not in self.cut | self.tapped]
        if kind == "cut":
            span = self.rng.choice(healthy)
            await self.plant_rpc("cut-span", span)
            self.cut.add(span)
            what = f"cut span {span}"
        elif kind == "repair":
            span = self.rng.choice(sorted(self.cut))
            await self.plant_rpc("repair-span", span)
            self.cut.discard(span)
            what = f"repaired span {span}"
        elif kind == "eavesdrop":
            span = self.rng.choice(healthy)
            await self.plant_rpc("attach-eavesdropper", span, fraction=0.5)
            self.tapped.add(span)
            what = f"eavesdropper on span {span}"
        elif kind == "clear":
            span = self.rng.choice(sorted(self.tapped))
            await self.plant_rpc("remove-eavesdropper", span)
            self.tapped.discard(span)
            what = f"eavesdropper removed from span {span}"
        elif kind == "drain":
            what = await self.drain(links)
        else:
            what = await self.crash(links)
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        return what

    async def drain(self, links: list[str]) -> str:
        fwd = ForwardingView.parse(await self.op.sessions["forwarding"].get(filter=("subtree",
                                                                                   f'<networks xmlns="{NW}"/>')))
        known = [fwd.links[l] for l in links if l in fwd.links] or list(fwd.links.values())
        if not known:
            return "nothing to drain"
        link = self.rng.choice(known)
        km = fwd.km_of(link.a[0])
        if km is None or km in self.down:
            return "nothing to drain"
        await self.device(km, _drain_pool, km=km, link=link.qkdl_id)
        return f"drained the pool of link {link.id} at {km}"

    async def crash(self, links: list[str]) -> str:
        """A QKD node or key manager at a site inside an intent's path, down for OUTAGE_S."""
        ends = {s for i in self.intents for s in i.sites}
        sites = sorted({self.site_of[n] for l in links for n in _link_nodes(l) if n in self.site_of} - ends) or \
            sorted({s.id for s in self.topology.sites} - ends)
        site = self.rng.choice(sites)
        device = self.rng.choice([d for d, s in sorted(self.site_of.items()) if s == site])
        if device in self.down:
            return f"{device} already down"
        await self.device(device, _restart, device=device, outage=OUTAGE_S)
        self.down[device] = asyncio.get_running_loop().time() + OUTAGE_S
        return f"crashed {device} for {OUTAGE_S} s"

    # -- what the faults in force allow --

    def feasible_paths(self, intent: ChaosIntent) -> int:
        """Node-disjoint paths (0, 1 or 2) the fibre allows the intent with the faults in force."""
        now = asyncio.get_running_loop().time()
        down_sites = {self.site_of[d] for d, t in self.down.items() if t > now}
        if set(intent.sites) & down_sites:
            return 0
        graph = nx.Graph()
        graph.add_nodes_from(self.graph.nodes)
        graph.add_edges_from((a, b) for a, b, span in self.graph.edges(keys=True)
                             if span not in self.cut | self.tapped)
        graph.remove_nodes_from(down_sites)
        try:
            return min(2, len(list(nx.node_disjoint_paths(graph, *intent.sites, cutoff=2))))
        except nx.NetworkXNoPath:
            return 0

    def unmet(self, states: dict[str, dict]) -> list[str]:
        """The intents not where the faults in force allow them to be, each with its state."""
        out = []
        for intent in self.intents:
            feasible = self.feasible_paths(intent)
            state = states.get(intent.name, {})
            allowed = {"active", "degraded"} if intent.paths > feasible else {"active"}
            if feasible and state.get("state") not in allowed:
                out.append(f"{intent.name} ({feasible} feasible path(s)) is {state.get('state')}: "
                           f"{state.get('reason', '')}")
        return out

    # -- the checks after a fault --

    def take_events(self) -> None:
        """Move the orchestrator's intent-state-changes seen so far into the per-fault counts."""
        queue = self.op.events["orchestrator"]
        while not queue.empty():
            event = queue.get_nowait()
            name = INTENT.text(event, "name")
            if event.tag == INTENT("intent-state-change") and name in self.counts:
                self.counts[name] += 1
                self.last_change = time.monotonic()

    async def converge(self, what: str, started: float) -> None:
        """Wait until every intent is where the faults in force allow, and has stayed there
        for SETTLE_S without a transition; the recovery time is when it got there."""
        ok_since = None
        while True:
            unmet = self.unmet(await intent_states(self.op.sessions["orchestrator"]))
            self.take_events()
            now = time.monotonic()
            ok_since = None if unmet else ok_since or now
            if ok_since is not None and now - max(ok_since, self.last_change) >= SETTLE_S:
                self.report.recovery.append(max(ok_since, self.last_change, started) - started)
                return
            if now - started > RECOVERY_BOUND_S:
                self.report.violations.append(f"after '{what}': not recovered in {RECOVERY_BOUND_S:g} s: "
                                              + "; ".join(unmet))
                return
            await asyncio.sleep(POLL_S)

    async def check_keys(self, what: str) -> None:
        states = await intent_states(self.op.sessions["orchestrator"])
        for intent in self.intents:
            if states.get(intent.name, {}).get("state") not in ("active", "degraded") or \
                    not self.feasible_paths(intent):
                continue
            deadline = time.monotonic() + KEY_TIMEOUT_S
            while True:
                try:
                    ids, same = await self.op.fetch_keys(intent.source, intent.destination, number=2)
                    break
                except (StepFailed, TimeoutError, OSError) as error:
                    if time.monotonic() < deadline:
                        await asyncio.sleep(POLL_S)
                        continue
                    self.report.violations.append(f"after '{what}': no keys for {intent.name} while "
                                                  f"{states[intent.name]['state']}: {error}")
                    ids = []
                    break
            if not ids:
                continue
            self.report.keys += len(ids)
            if not same:
                self.report.violations.append(f"after '{what}': keys of {intent.name} differ at the two ends")
            async with self.op.http.post(f"{self.op.key_api(intent.destination)}/api/v1/keys/{intent.source}"
                                         f"/dec_keys", **self.op.as_sae(intent.destination),
                                         json={"key_IDs": [{"key_ID": i} for i in ids]}) as reply:
                if reply.status == 200:
                    self.report.violations.append(f"after '{what}': keys {', '.join(ids)} of {intent.name} "
                                                  f"were served twice")

    async def stale_alarms(self) -> list[str]:
        """Raised alarms of the connectivity and forwarding controllers without a cause in force."""
        down_sites = {self.site_of[d] for d in self.down}  # down, or back since the last fault
        stale = []
        for level in ("connectivity", "forwarding"):
            for alarm in read_alarms(await self.op.sessions[level].get(filter=ALARMS)):
                if alarm.cleared or alarm.link_id is None:
                    continue
                if alarm.type_id == "span-cut":
                    explained = alarm.link_id in self.cut
                elif alarm.type_id == "span-tapped":
                    explained = alarm.link_id in self.tapped
                else:
                    spans = set(await self.op.spans_of([alarm.link_id]))
                    faulty = self.tapped if alarm.type_id == "qber-above-threshold" else self.cut | self.tapped
                    sites = {self.site_of.get(n) for n in _link_nodes(alarm.link_id)}
                    explained = bool(spans & faulty) or bool(sites & down_sites)
                if not explained:
                    stale.append(f"{level}: {alarm.type_id} on {alarm.link_id} ({alarm.text})")
        return stale

    async def check_alarms(self, what: str) -> None:
        deadline = time.monotonic() + RECOVERY_BOUND_S
        while stale := await self.stale_alarms():
            if time.monotonic() > deadline:
                self.report.violations.append(f"after '{what}': alarms outlive their cause: " + "; ".join(stale))
                return
            await asyncio.sleep(POLL_S)

    def count_transitions(self, what: str) -> None:
        self.take_events()
        for name, count in self.counts.items():
            self.report.transitions.append(count)
            if count > TRANSITIONS_BOUND:
                self.report.violations.append(f"after '{what}': {name} made {count} transitions")
        self.counts = {i.name: 0 for i in self.intents}

    async def soak(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.take_events()  # the intents' creation is not a fault
        self.counts = {i.name: 0 for i in self.intents}
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                what = await self.inject()
            except (OSError, asyncio.TimeoutError, RPCError, FaultError) as error:  # a device still restarting
                if self.verbose:
                    print(f"fault not injected: {error}", flush=True)
                await asyncio.sleep(POLL_S)
                continue
            recovered = len(self.report.recovery)
            await self.converge(what, started)
            if self.verbose:
                outcome = (f"recovered in {self.report.recovery[-1]:.2f} s" if len(self.report.recovery) > recovered
                           else "NOT recovered")
                print(f"{time.monotonic() - deadline + seconds:7.1f} s  {what}: {outcome}", flush=True)
            await self.check_keys(what)
            await self.check_alarms(what)
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            self.count_transitions(what)
        self.report.seconds = seconds


def _link_nodes(link_id: str) -> list[str]:
    """The QKD nodes a link id names (node.tp-node.tp, as the orchestrator names its links)."""
    first, _, second = link_id.partition("-qkd-")
    return [first.rsplit(".", 1)[0], "qkd-" + second.rsplit(".", 1)[0]] if second else []


async def soak(nodes: int, seconds: float, seed: int, count: int = 4, state_dir=None,
               verbose: bool = False) -> Report:
    """Start a stack on a generated network, commit the intents, run the faults; the report."""
    from tools.stack import Stack  # the levels: loaded only when a soak runs

    topology = parse_topology(generate_topology(nodes, seed), f"generated {nodes} nodes")
    rng = random.Random(seed)
    intents = choose_intents(topology, count, rng)
    report = Report(topology.name, nodes, intents, seed)
    stack = Stack(topology, state_dir=state_dir)
    await stack.start()
    try:
        async with Operator(stack, timeout=KEY_TIMEOUT_S) as op:
            for intent in intents:
                await op.push_intent(intent.name, intent.source, intent.destination, RATE,
                                     **{"disjoint-paths": intent.paths, "priority": intent.priority})
            chaos = Chaos(stack, op, intents, rng, report, verbose)
            await chaos.converge("the intents' creation", time.monotonic())
            await chaos.soak(seconds)
    finally:
        await stack.stop()
    return report
