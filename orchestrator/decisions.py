"""What one pass of the orchestrator (orchestrator/intents.py) concludes for each intent: the
strata as observed, the demand an intent makes of them, its plan (a local one for two SAEs
of one key manager; as many disjoint paths as the network offers for a protected one), the
requests the plan makes of each stratum, and what the intent's state reports of it: its
description, path, available rate and conditions."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import networkx as nx

from models.connectivity import FibreNetwork
from models.forwarding import ForwardingView
from models.intent import IntentSpec
from models.service import Hop, SegmentEnds, ServiceView, Session
from orchestrator import lifecycle
from orchestrator.planner import Demand, Infeasible, Plan, Planner
from orchestrator.store import IntentRecord, timestamp


class NotReady(Exception):
    """A stratum answers but has not read its own devices yet: nothing is decided on its word."""


def demand_of(spec: IntentSpec, saes: dict[str, str]) -> Demand:
    """What an intent asks of the network; a segment's end beyond an inter-domain link is
    that link's far node, and its SAE is another domain's."""
    ends = spec.segment or SegmentEnds("", "", None, None)
    source = ends.source_km if ends.ingress_link else _local_km(spec.source_sae, saes)
    destination = ends.destination_km if ends.egress_link else _local_km(spec.destination_sae, saes)
    return Demand(spec.name, source, destination, spec.min_rate, spec.priority, spec.disjoint_paths,
                  spec.max_hops, frozenset(spec.avoid_nodes), frozenset(spec.avoid_links), spec.qber_ceiling,
                  ends.ingress_link, ends.egress_link)


@dataclass
class LocalPlan(Plan):
    """Both SAEs on one key manager: a path of its node alone, no QKD link; the key manager
    delivers the keys to both itself."""

    node: str = ""

    @property
    def source_node(self) -> str:
        return self.node


def local_plan(demand: Demand, fwd: ForwardingView) -> LocalPlan | None:
    """The plan of a demand between two SAEs of one key manager; None for any other."""
    if demand.source_km != demand.destination_km or demand.ingress_link or demand.egress_link:
        return None
    node = fwd.node_of_km(demand.source_km)
    if node is None:
        raise Infeasible(f"key manager {demand.source_km} has no QKD node in the forwarding topology")
    if node in demand.avoid_nodes:
        raise Infeasible(f"QKD node {node} serves both endpoints and cannot be avoided")
    return LocalPlan(demand, [[]], node)


def _local_km(sae: str, saes: dict[str, str]) -> str:
    if sae not in saes:
        raise Infeasible(f"SAE {sae} is not attached to any key manager of the service stratum")
    return saes[sae]


@dataclass
class Observation:
    fwd: ForwardingView
    fibre: FibreNetwork
    svc: ServiceView


@dataclass
class Decision:
    """What one pass concluded for one live intent."""

    record: IntentRecord
    spec: IntentSpec
    session: Session | None
    plan: Plan | None = None
    why: str = ""          # why there is no plan
    problem: str = ""      # why the current realisation no longer serves
    forced: str = ""       # why the operator asked for a re-plan
    shortfall: str = ""    # why the plan has fewer disjoint paths than asked ('' when it has them all)
    lost: list[dict] = field(default_factory=list)  # paths of the intent no longer planned, and why


@dataclass
class Outcome:
    """Result of asking the strata for what a plan needs."""

    done: bool
    waiting: str = ""
    steer: tuple[str, ...] = field(default_factory=tuple)


def plan_requests(decision: Decision, world: Observation) -> list[tuple[str, str, str, str, str]]:
    """The requests a plan makes of each stratum, top-down."""
    plan, spec = decision.plan, decision.spec
    assert plan is not None
    requests = []
    for candidate in plan.new_links:
        attach = lambda end: world.fwd.nodes[end[0]].interfaces.get(end[1])
        ends = [attach(candidate.a), attach(candidate.b)]
        requests.append(("quantum-forwarding", "create", "qkd-link", candidate.link_id,
                         f"PHYS link {candidate.a[0]} interface {candidate.a[1]} - {candidate.b[0]} interface "
                         f"{candidate.b[1]}, qkdl-id {candidate.qkdl_id}, expected eskr about "
                         f"{int(candidate.eskr)} bit/s"
                         + (f", bypassing the trusted node at {', '.join(candidate.bypasses)}"
                            if candidate.bypasses else "")))
        requests.append(("connectivity", "create", "optical-path", candidate.link_id,
                         f"from {':'.join(ends[0] or ('?',))} to {':'.join(ends[1] or ('?',))} over spans "
                         f"{', '.join(candidate.spans)} ({candidate.loss_db:g} dB), asked by the forwarding "
                         f"controller"))
    for path in plan.paths:
        for edge in path:
            if edge.existing is not None:
                requests.append(("quantum-forwarding", "keep", "qkd-link", edge.link_id,
                                 f"eskr {int(edge.existing.eskr or 0)} bit/s"))
    operation = "create" if decision.session is None else "modify"
    requests.append(("service", operation, "session", spec.name,
                     f"{spec.source_sae} -> {spec.destination_sae} at {spec.min_rate} bit/s over "
                     f"{' - '.join(plan.nodes(0))}"))
    return requests


def protected_plan(planner: Planner, demand: Demand, keep: list[str] | None) -> tuple[Plan, str]:
    """As many of the demand's node-disjoint paths as the network offers now, and why fewer
    than asked ('' when it has them all): a protected intent keeps its keys on the paths that
    survive, and only a demand without any path is infeasible."""
    try:
        return planner.plan(demand, keep=keep), ""
    except Infeasible as short:
        if demand.paths == 1:
            raise
        shortfall = str(short)
    within = disjoint_only(planner, demand)
    if within is not None:  # the greedy choice of the first path hid the disjoint ones
        try:
            return planner.plan(within, keep=keep), ""
        except Infeasible:
            pass
    for paths in range(demand.paths - 1, 0, -1):
        try:
            return planner.plan(dataclasses.replace(demand, paths=paths), keep=keep), shortfall
        except Infeasible:
            if paths == 1:
                raise
    raise AssertionError("unreachable")


def disjoint_only(planner: Planner, demand: Demand) -> Demand | None:
    """The demand confined to a set of node-disjoint paths of the usable graph found by max-flow,
    when there are as many as asked: planning the cheapest path first, then the next one
    disjoint from it, can miss them (the first path takes a node every second path needs)."""
    source, destination = planner.endpoints(demand)
    graph, _ = planner.network.graph(demand)
    try:
        found = list(nx.node_disjoint_paths(graph, source, destination, cutoff=demand.paths))
    except (nx.NetworkXNoPath, nx.NodeNotFound, nx.NetworkXError):
        return None
    if len(found) < demand.paths:
        return None
    hops = {frozenset(pair) for path in found for pair in zip(path, path[1:])}
    kept_nodes = {n for path in found for n in path}
    others = {data["edge"].link_id for u, v, data in graph.edges(data=True) if frozenset((u, v)) not in hops}
    return dataclasses.replace(demand, avoid_nodes=demand.avoid_nodes | (set(graph.nodes) - kept_nodes),
                               avoid_links=demand.avoid_links | others)


def lost_paths(status: dict, plan: Plan, planner: Planner, demand: Demand) -> list[dict]:
    """The intent's paths that the plan no longer has because they broke, each with why: those
    of its last recorded status, and those lost before and not planned again (with the reason
    they were lost, not what became of their links since)."""
    planned = {tuple(plan.link_ids(i)) for i in range(len(plan.paths))}
    lost = {tuple(p["links"]): p for p in status.get("lost", [])}
    for path in status.get("paths", []):
        links = tuple(h["link-id"] for h in path["hops"] if h.get("link-id"))
        if links and links not in lost and links not in planned:
            why = planner.path_problem(demand, list(links))
            if why:
                lost[links] = {"nodes": [h["node-id"] for h in path["hops"]], "links": list(links), "why": why}
    return [p for links, p in lost.items() if links not in planned]


def protection_lost(decision: Decision) -> str:
    """Which of a protected intent's paths are lost and why, or why it has too few paths."""
    if decision.lost:
        return "; ".join(f"lost path {' - '.join(p['nodes'])}: {p['why']}" for p in decision.lost)
    return decision.shortfall


def describe(plan: Plan | None) -> str:
    if plan is None:
        return ""
    new = plan.new_links
    text = f"path {' - '.join(plan.nodes(0))}"
    if len(plan.paths) > 1:
        text += f" and {len(plan.paths) - 1} standby path(s)"
    if new:
        text += f"; new QKD links {', '.join(c.link_id for c in new)}"
    return text


def describe_path(session: Session | None, plan: Plan) -> str:
    if session is not None and session.path:
        return " - ".join(h.node_id for h in session.path)
    return " - ".join(plan.nodes(0))


def hop_entry(hop: Hop) -> dict:
    return {"km-id": hop.km_id, "node-id": hop.node_id, "link-id": hop.link_id}


def plan_hops(plan: Plan, index: int, fwd: ForwardingView) -> list[dict]:
    nodes = plan.nodes(index)
    links = plan.link_ids(index) + [None]
    return [{"km-id": fwd.km_of(n), "node-id": n, "link-id": l} for n, l in zip(nodes, links)]


def available_rate(session: Session, fwd: ForwardingView) -> int | None:
    """The key rate the session's path can carry now: the smallest eskr along it."""
    rates = [fwd.links[l].eskr for l in session.links if l in fwd.links and fwd.links[l].eskr is not None]
    return int(min(rates)) if rates else None


CONDITION_REASONS = {
    # type: (reason when true, reason when false)
    "path-found": ("PathFound", "NoPath"),
    "installed": ("Installed", "NotInstalled"),
    "rate-met": ("RateMet", "RateBelowMinimum"),
    "disjointness-met": ("DisjointPathsFound", "TooFewDisjointPaths"),
    "ready": ("Ready", "NotReady"),
}


def conditions(previous: dict, state: str, spec: IntentSpec, plan: Plan | None, decision: Decision,
               rate: int | None) -> dict:
    """The intent's conditions, keeping each one's last-transition-time while it holds."""
    found = plan is not None
    values = {
        "path-found": (found, describe(plan) if found else decision.why),
        "installed": (state in lifecycle.REALISED, f"state {state}"),
        "rate-met": (rate is not None and rate >= spec.min_rate,
                     f"{rate} bit/s available, {spec.min_rate} bit/s asked" if rate is not None
                     else "no key flows"),
        "disjointness-met": (found and len(plan.paths) >= spec.disjoint_paths,
                             f"{len(plan.paths) if plan else 0} of {spec.disjoint_paths} disjoint path(s)"
                             + (f"; {protection_lost(decision)}" if found and decision.shortfall else "")),
        "ready": (state == "active", "keys flow as asked" if state == "active" else f"state {state}"),
    }
    out = {}
    for kind, (holds, message) in values.items():
        status = "true" if holds else "false"
        before = previous.get(kind, {})
        since = before.get("last-transition-time") if before.get("status") == status else timestamp()
        out[kind] = {"status": status, "reason": CONDITION_REASONS[kind][0 if holds else 1],
                     "message": message, "last-transition-time": since}
    return out
