"""The entanglement service controller: entanglement-delivery sessions (qi-entanglement-service,
northbound) over the quantum nodes (qi-quantum-node, southbound), planned over the fabric that
the fabric controller serves (qi-fabric, read as any NETCONF client would).

How a session becomes pairs:

1. its end nodes are its source-node and destination-node, or the end nodes whose
   `application` lists its endpoints (the nodes' own directory);
2. `entanglement_physics.planner.plan` chooses, over the fabric's links that are up (rate,
   fresh fidelity) and nodes (decoherence rate, swap factor and success, whether they swap and
   purify), the path, swap order and purification rounds of highest rate whose delivered
   fidelity, decoherence included, reaches min-fidelity, within max-age, max-hops and
   avoid-nodes; when none does, the session is failed with the planner's reason verbatim
   ("best achievable fidelity 0.71 < 0.80 requested");
3. every node of the path gets the same session entry (the hops, their purification rounds
   and the repeaters' swap steps, max-age) in one transaction (netconf_core.link), which also
   removes the session from the nodes it leaves; the end nodes then make and deliver pairs,
   which applications take there (create-pairs, receive-pairs).

A placed session keeps its path while every link of it is up and the path still meets
min-fidelity (re-evaluated on the fabric as it is now); otherwise it is planned again. So a
fibre cut (the fabric's entanglement-link-change) re-routes it, and nothing moves for a
better path alone: nothing flaps. The controller is level-triggered: each pass reads the
fabric and the nodes' sessions afresh and writes only the difference; it runs inside every
northbound commit (a node refusing the transaction refuses the commit), when woken by the
fabric controller's notifications or a node (re)connecting, and every `period` seconds.

Status: installing once configured, until the source end node reports the session active;
active while pairs are made (degraded when their delivered fidelity falls below
min-fidelity); completed once number-of-pairs were delivered; failed with the reason when
no plan meets the request or a node refused it. Delivered and discarded pairs, delivered
fidelity and rate are the source end node's counts, read when asked.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field

import networkx as nx
from lxml import etree

from controller.base import Controller
from entanglement_physics import Infeasible, Plan, plan as plan_path
from models import entanglement as model, quantum_node as qn_model
from models.entanglement import PlanHop, SessionRequest, SessionStatus
from models.fabric import FILTER as FABRIC_FILTER, FabricView
from models.ns import FABRIC, QUANTUM_NODE
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint, TransactionError
from netconf_core.server import User

log = logging.getLogger(__name__)

MAX_ROUNDS = 3
ACTIVE = "active"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Placement:
    status: str
    reason: str
    plan: Plan | None = None
    since: datetime.datetime = field(default_factory=now)
    best_fidelity: float | None = None  # of an infeasible request


def fabric_graph(view: FabricView) -> nx.Graph:
    """The planner's graph: the fabric's nodes that are up (with their storage qubits in
    service, which bound the purification rounds a plan may use there) and its links that are up."""
    graph = nx.Graph()
    for node in view.nodes.values():
        if node.status == "down":
            continue
        graph.add_node(node.id, decoherence_rate=node.decoherence_rate or 0.0, swap_fidelity=node.swap_fidelity or 1.0,
                       swap_success=node.swap_success if node.swap_success is not None else 1.0,
                       can_swap=bool(node.can_swap), can_purify=bool(node.can_purify),
                       **({"storage_qubits": node.storage_qubits} if node.storage_qubits is not None else {}))
    for link in view.links.values():
        a, b = link.a[0], link.b[0]
        if link.up and a in graph and b in graph and link.generation_rate and link.fidelity:
            graph.add_edge(a, b, rate=link.generation_rate, fidelity=link.fidelity, link_id=link.id)
    return graph


def node_plan(name: str, plan: Plan, max_age_s: float | None) -> qn_model.SessionPlan:
    """The session entry every node of the plan's path gets."""
    steps = {node: i + 1 for i, node in enumerate(plan.swap_order)}
    last = len(plan.path) - 1
    hops = tuple(qn_model.Hop(i, node, plan.link_ids[i] if i < last else None,
                              plan.purification_rounds[i] if i < last else 0, steps.get(node))
                 for i, node in enumerate(plan.path))
    return qn_model.SessionPlan(name, hops, max_age_s)


def plan_hops(plan: Plan) -> tuple[PlanHop, ...]:
    steps = {node: i + 1 for i, node in enumerate(plan.swap_order)}
    last = len(plan.path) - 1
    return tuple(PlanHop(i, node, plan.link_ids[i] if i < last else None,
                         plan.purification_rounds[i] if i < last else None, steps.get(node))
                 for i, node in enumerate(plan.path))


class EntanglementController(Controller):
    kind = "entanglement-controller"
    modules = ("qi-entanglement-service", "qi-quantum-node", "qi-types")
    device_modules = ("qi-quantum-node",)
    state_paths = ("/qi-entanglement-service:sessions",)

    def __init__(self, name: str, devices: list[Endpoint], fabric: Endpoint, users: dict[str, User], *,
                 period: float = 2.0, **kwargs):
        super().__init__(name, devices, users, **kwargs)
        self.fabric = self.link(fabric, ("qi-fabric",), self._fabric_connected, self._fabric_notification)
        self.placements: dict[str, Placement] = {}
        self.held: dict[str, dict[str, qn_model.SessionPlan]] = {}  # node -> its sessions, as last read
        self.apps: dict[str, str] = {}                                # application endpoint -> its end node
        self.synced = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop = self.loop(name, self._pass, period=period, backoff_initial=1.0, backoff_cap=8.0, logger=log)

    async def start(self) -> None:
        await super().start()
        self.fabric.start()
        self._loop.start()
        if not self.links:
            self.synced.set()

    async def stop(self) -> None:
        await self._loop.stop()
        await self.fabric.stop()
        await super().stop()

    async def wait_synced(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(self.synced.wait(), self.fabric.connected.wait())

    def wake(self) -> None:
        self._loop.wake()

    async def _pass(self) -> None:
        async with self._lock:
            await self._reconcile(model.session_requests(self.server.running()), refuse=False)

    # --- southbound ---------------------------------------------------------------------------

    async def device_connected(self, link: DeviceLink) -> None:
        await self._read_node(link)
        if all(name in self.held for name in self.links):
            self.synced.set()
        self.wake()

    async def _fabric_connected(self, link: DeviceLink) -> None:
        self.wake()

    async def _fabric_notification(self, link: DeviceLink, notification: etree._Element) -> None:
        if any(isinstance(c.tag, str) and etree.QName(c).namespace == FABRIC for c in notification):
            self.wake()

    async def resync(self) -> None:
        for link in self.links.values():
            if link.status == "connected":
                await self._read_node(link)
        self.wake()

    async def _read_node(self, link: DeviceLink) -> None:
        client = await link.session()
        data = await client.get_config(filter=("subtree", qn_model.FILTER), with_defaults="report-all")
        config = qn_model.read_node(QUANTUM_NODE.find(data, "quantum-node"))
        self.held[link.name] = dict(config.sessions) if config else {}
        for app in config.applications if config else ():
            self.apps[app] = link.name

    # --- reconciling --------------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        async with self._lock:
            await self._reconcile(model.session_requests(after), refuse=True)

    async def _reconcile(self, requests: dict[str, SessionRequest], refuse: bool) -> None:
        view = await self._read_fabric()
        graph = fabric_graph(view) if view is not None else nx.Graph()
        for name in set(self.placements) - set(requests):
            del self.placements[name]
        wanted: dict[str, dict[str, qn_model.SessionPlan]] = {node: {} for node in self.links}
        for name in sorted(requests):
            request = requests[name]
            placement = self.placements.get(name)
            if view is None:
                if placement is None:
                    await self._set(name, Placement("planning", "the fabric controller is unreachable"))
                elif placement.plan is not None:
                    for node in placement.plan.path:
                        wanted.setdefault(node, {})[name] = node_plan(name, placement.plan, request.max_age_s)
                continue
            try:
                chosen = self._plan(request, graph, placement)
            except (Infeasible, ValueError) as problem:
                await self._set(name, Placement("failed", str(problem),
                                                best_fidelity=getattr(problem, "best_fidelity", None)))
                continue
            if placement is None or placement.plan is None or placement.plan.path != chosen.path \
                    or placement.plan.swap_order != chosen.swap_order \
                    or placement.plan.purification_rounds != chosen.purification_rounds:
                await self._set(name, Placement("installing", _describe(chosen), chosen))
            else:
                placement.plan = chosen
            for node in chosen.path:
                wanted.setdefault(node, {})[name] = node_plan(name, chosen, request.max_age_s)
        await self._install(wanted, refuse)
        await self._observe(requests)

    def _ends(self, request: SessionRequest) -> tuple[str, str]:
        ends = []
        for node, endpoint in ((request.source_node, request.source_endpoint),
                               (request.destination_node, request.destination_endpoint)):
            node = node or self.apps.get(endpoint)
            if node is None:
                raise ValueError(f"no end node serves application endpoint {endpoint}: give "
                                 f"{'source' if not ends else 'destination'}-node")
            ends.append(node)
        if ends[0] == ends[1]:
            raise ValueError(f"both endpoints are at end node {ends[0]}")
        return ends[0], ends[1]

    def _plan(self, request: SessionRequest, graph: nx.Graph, placement: Placement | None) -> Plan:
        """The plan in use while its path is intact and still meets the request, else a new one."""
        source, destination = self._ends(request)
        kwargs = dict(max_age_s=request.max_age_s, max_rounds=MAX_ROUNDS, max_hops=request.max_hops,
                      avoid_nodes=[n for n in request.avoid_nodes if n not in (source, destination)])
        current = placement.plan if placement is not None else None
        if current is not None and current.path[0] == source and current.path[-1] == destination \
                and not set(current.path) & set(request.avoid_nodes) \
                and all(graph.has_edge(a, b) and graph.edges[a, b]["link_id"] == link
                        for a, b, link in zip(current.path, current.path[1:], current.link_ids)):
            try:
                return plan_path(nx.Graph(graph.subgraph(current.path)), source, destination, request.min_fidelity,
                                 **kwargs)
            except Infeasible:
                pass
        return plan_path(graph, source, destination, request.min_fidelity, **kwargs)

    async def _install(self, wanted: dict[str, dict[str, qn_model.SessionPlan]], refuse: bool) -> None:
        edits: dict[str, etree._Element] = {}
        for node, plans in wanted.items():
            if node not in self.links or self.links[node].status != "connected":
                continue
            held = self.held.get(node, {})
            entries = [qn_model.session_element(p) for name, p in sorted(plans.items()) if held.get(name) != p]
            entries += [qn_model.session_removal(name) for name in sorted(set(held) - set(plans))]
            if entries:
                edits[node] = qn_model.sessions_edit(entries)
        if not edits:
            return
        try:
            await self.transaction(edits)
        except (TransactionError, RPCError) as err:
            error = err.as_rpc_error() if isinstance(err, TransactionError) else err
            for name in {n for plans in wanted.values() for n in plans}:
                await self._set(name, Placement("failed", f"installing failed: {error.message}"))
            if refuse:
                raise error from None
            log.warning("%s: installing sessions failed: %s", self.name, error.message)
        for node in edits:
            await self._read_node(self.links[node])

    async def _observe(self, requests: dict[str, SessionRequest]) -> None:
        """installing -> active once the source end node makes pairs; degraded, completed."""
        for name, placement in list(self.placements.items()):
            if placement.plan is None or placement.status == "failed":
                continue
            state = await self._end_state(placement.plan.path[0], name)
            request = requests[name]
            if state is None or state.status != ACTIVE:
                if placement.status in (ACTIVE, "degraded"):
                    await self._set(name, Placement("degraded", state.reason if state and state.reason
                                                    else "the session makes no pairs", placement.plan))
                continue
            if request.number_of_pairs and state.pairs_delivered >= request.number_of_pairs:
                status, reason = "completed", f"{state.pairs_delivered} pairs delivered"
            elif state.delivered_fidelity is not None and state.delivered_fidelity + 1e-9 < request.min_fidelity \
                    and state.pairs_delivered >= 20:
                status, reason = "degraded", (f"delivered fidelity {state.delivered_fidelity:.3f} < "
                                              f"{request.min_fidelity:.3f} requested")
            else:
                status, reason = ACTIVE, f"pairs flow over {_describe(placement.plan)}"
            if status != placement.status:
                await self._set(name, Placement(status, reason, placement.plan))

    async def _end_state(self, node: str, name: str) -> qn_model.SessionState | None:
        link = self.links.get(node)
        if link is None or link.status != "connected":
            return None
        client = await link.session()
        data = await client.get(filter=("subtree", qn_model.FILTER))
        return qn_model.read_state(QUANTUM_NODE.find(data, "quantum-node")).sessions.get(name)

    async def _read_fabric(self) -> FabricView | None:
        if self.fabric.status != "connected":
            return None
        try:
            client = await self.fabric.session()
            return FabricView.parse(await client.get(filter=("subtree", FABRIC_FILTER)))
        except Exception as exc:  # an unreachable fabric controller: plans stay as they are
            log.warning("%s: cannot read the fabric: %s", self.name, exc)
            return None

    async def _set(self, name: str, placement: Placement) -> None:
        previous = self.placements.get(name)
        self.placements[name] = placement
        if previous is not None and previous.status == placement.status:
            placement.since = previous.since
        if previous is not None and previous.status == placement.status and previous.reason == placement.reason:
            return
        if previous is None or previous.status != placement.status:
            log.info("%s: session %s %s -> %s: %s", self.name, name, previous.status if previous else "-",
                     placement.status, placement.reason)
            await self.server.notify(model.session_status_change(
                name, placement.status, previous.status if previous else None, placement.reason,
                placement.since.isoformat()))

    # --- northbound state ---------------------------------------------------------------------

    async def state(self) -> etree._Element | None:
        statuses = []
        for name, placement in sorted(self.placements.items()):
            plan = placement.plan
            counts = await self._end_state(plan.path[0], name) if plan is not None else None
            statuses.append(SessionStatus(
                name, placement.status, placement.reason, placement.since.isoformat(),
                plan_hops(plan) if plan else (), plan.rate if plan else None, plan.fidelity if plan else None,
                counts.pairs_delivered if counts else None, counts.pairs_discarded if counts else None,
                counts.delivered_fidelity if counts else None, counts.delivered_rate if counts else None,
                placement.best_fidelity))
        data = empty_tree()
        if statuses:
            data.append(model.sessions_state(statuses))
        return data


def _describe(plan: Plan) -> str:
    rounds = sorted(set(plan.purification_rounds))
    purify = "no purification" if rounds == [0] else f"{'/'.join(map(str, rounds))} purification round(s)"
    swaps = f", swaps at {', '.join(map(str, plan.swap_order))}" if plan.swap_order else ""
    return (f"{' - '.join(map(str, plan.path))}{swaps}, {purify}: {plan.rate:.1f} pairs/s at fidelity "
            f"{plan.fidelity:.3f} expected")
