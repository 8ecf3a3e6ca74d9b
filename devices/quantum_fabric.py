"""The emulated physical layer of a network's quantum nodes: elementary pairs over the fibre
plant, memories, swaps, purification, cut-off and the pairs delivered to the end nodes.

One `QuantumFabric` per network, kept by the network's twin service (devices/twin_service.py)
over its `Twin`, joins the quantum nodes of every device process, as the two ends of a link
must see the same pair: the nodes register with the service (`QuantumRegistration`) and reach
the fabric only through it. It follows the entanglement reference (docs/entanglement.md names
it) event by event, in the network's emulated time (the twin's clock), with the formulas of
`entanglement_physics`:

- an elementary link makes pairs when both ends are up and agree (each end's peer-node is the
  other, both enabled) and the light of one end's interface reaches the other's over the
  plant with no span cut; its success probability, attempt cycle, rate and fresh fidelity are
  `entanglement_physics.link.elementary_link` of the path's length with the photonics of the
  end with the lower node-id, the path's loss (spans and cross-connects) as its attenuation.
  Successes are a Poisson process of that rate (the geometric number of attempts); a link
  shared by several sessions splits its rate between them;
- each pair is time-stamped: it keeps its Werner parameter w and the time t it holds at, and
  decay w(t') = w exp(-(t' - t) (k_A + k_B)) is applied when it is used (purified, swapped,
  delivered or handed to an application), k being each holding node's decoherence rate now
  (1/T2 of its storage qubits, times the factor of an injected loss of coherence);
- memory: each half occupies a storage qubit of its node. A new pair needs a free qubit at
  both ends; a repeater keeps at most half its qubits for each side of a session. When a
  side is full, the oldest pair there (or a delivered pair no application took yet) makes
  room and is discarded;
- purification: a link with r rounds purifies two of its pairs of the same level < r (BBPSSW,
  `werner.purified`, succeeding with `werner.purification_success`); only level-r pairs swap;
- swapping: the repeater with swap step s joins the pairs it shares with the nearest nodes on
  each side that swap later than s (or the end nodes): w = w1 w2 g (g its gate and
  measurement fidelity), succeeding with its swap-success-probability, else both are lost;
- cut-off: a pair whose oldest constituent is older than the session's max-age is discarded;
- a pair spanning the whole path is delivered: it waits at both end nodes (occupying a
  qubit at each) until an application takes it (`claim`), then its other half's record waits
  for the remote application (`receive`); each is served once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from lxml import etree

from devices.twin import Endpoint, Twin
from entanglement_physics import NodeProfile, Scheme, elementary_link, werner
from models.ns import QUANTUM_NODE as QN
from models.quantum_node import (DeliveredPair, LinkState, NodeConfig, NodeState, SessionPlan, SessionState,
                                 read_node)

log = logging.getLogger(__name__)

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True, huge_tree=False)
TICK_S = 0.05                 # real seconds between two advances of the emulation
MAX_EVENTS_PER_TICK = 20000   # link successes processed per session and tick, at most
RATE_WINDOW_S = 10.0          # delivered-rate is measured over this much emulated time
FIDELITY_WINDOW = 50          # delivered-fidelity: mean over the last this many pairs
BELL_STATE = "phi-plus"       # the end nodes apply the swaps' Pauli corrections


@dataclass(frozen=True)
class QuantumRegistration:
    """A running quantum node as the twin service knows it: its device id (the node-id), its
    configuration (its <quantum-node> element, defaults reported, read by the model's one
    reader) and its faults: storage qubits out of service, the factor of a loss of coherence."""

    node_id: str
    config: NodeConfig | None
    failed_qubits: int = 0
    coherence_factor: float = 1.0

    @property
    def up(self) -> bool:
        return self.config is not None

    @property
    def decoherence_rate(self) -> float:
        t2 = self.config.storage_t2_s if self.config else None
        return (1 / t2 if t2 else 0.0) * self.coherence_factor

    @staticmethod
    def body(config: etree._Element | None, failed_qubits: int, coherence_factor: float) -> dict:
        """The JSON a node registers with (PUT /quantum-nodes/{node-id})."""
        return {"config": etree.tostring(config, encoding="unicode") if config is not None else None,
                "failed_qubits": failed_qubits, "coherence_factor": coherence_factor}

    @classmethod
    def from_json(cls, node_id: str, data: dict) -> QuantumRegistration:
        try:
            text, failed, factor = data["config"], data["failed_qubits"], data["coherence_factor"]
            if isinstance(failed, bool) or not isinstance(failed, int) or failed < 0:
                raise ValueError(f"failed_qubits must be an integer >= 0, got {failed!r}")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
                raise ValueError(f"coherence_factor must be a number >= 1, got {factor!r}")
            config = None
            if text is not None:
                root = etree.fromstring(text.encode(), _PARSER)
                if root.tag != QN("quantum-node"):
                    raise ValueError(f"config must be a <quantum-node> element of {QN}")
                config = read_node(root)
                if config.node_id not in (None, node_id):
                    raise ValueError(f"config names node {config.node_id}, not {node_id}")
            return cls(node_id, config, failed, float(factor))
        except (KeyError, TypeError, AttributeError, etree.XMLSyntaxError) as exc:
            raise ValueError(f"not a quantum node registration: {exc!r}") from None


@dataclass
class Pair:
    left: int   # path index of each end
    right: int
    w: float
    t: float    # emulated time at which w holds
    born: float  # creation time of its oldest constituent
    level: int = 0  # purification rounds it went through (elementary pairs)


@dataclass
class Delivered:
    pair_id: str
    sequence: int
    pair: Pair
    delivered_at: float


@dataclass
class SessionRun:
    plan: SessionPlan
    t: float
    started: float = 0.0
    pairs: list[Pair] = field(default_factory=list)
    next_success: dict[int, float] = field(default_factory=dict)  # link index -> time of its next success
    waiting: list[Delivered] = field(default_factory=list)  # delivered, no application took it yet
    sequence: int = 0
    delivered_times: deque = field(default_factory=deque)
    delivered_fidelities: deque = field(default_factory=lambda: deque(maxlen=FIDELITY_WINDOW))
    discarded: dict[str, int] = field(default_factory=dict)  # by node
    served: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    status: str = "waiting"
    reason: str = ""


@dataclass(frozen=True)
class LinkReading:
    """An elementary link as the fabric sees it now."""

    up: bool
    reason: str = ""
    loss_db: float | None = None
    length_km: float | None = None
    success_probability: float | None = None
    attempt_cycle_s: float | None = None
    rate: float = 0.0
    fidelity: float | None = None


def attachment_endpoint(site: str | None, switch: str | None, port: int | None) -> Endpoint | None:
    if switch:
        return Endpoint(switch, port)
    return Endpoint(site, port) if site else None


def profile_of(config: NodeConfig, alpha_db_per_km: float) -> NodeProfile:
    ph = config.photonics
    return NodeProfile(emission_probability=ph.emission_probability, detector_efficiency=ph.detector_efficiency,
                       alpha_db_per_km=alpha_db_per_km, bright_state_population=ph.bright_state_population,
                       hom_visibility=ph.hom_visibility, preparation_time_s=ph.preparation_time_s, modes=ph.modes,
                       storage_t2_s=config.storage_t2_s, gate_fidelity=config.swap_fidelity,
                       swap_success_probability=config.swap_success)


class QuantumFabric:
    """`on_advance(changed, paired)`: called after each tick with the node-ids whose links'
    status or fidelity changed since the last, and the end nodes of the sessions that delivered
    pairs since the last (the twin service wakes those nodes)."""

    def __init__(self, twin: Twin, rng: random.Random | None = None,
                 on_advance: Callable[[set[str], set[str]], None] | None = None) -> None:
        self.twin = twin
        self.rng = rng or random.Random()
        self.on_advance = on_advance
        self.nodes: dict[str, QuantumRegistration] = {}
        self.runs: dict[str, SessionRun] = {}
        self.received: dict[tuple[str, str], deque[DeliveredPair]] = {}  # (node, creator) -> halves to serve
        self.generated: dict[str, int] = {}  # link -> pairs made
        self._readings: dict[str, LinkReading] | None = None
        self._seen: dict[str, tuple] = {}  # node -> its links' status and fidelity last reported
        self._delivered_seen: dict[str, int] = {}  # session -> pairs delivered at the last `paired`
        self._ticker: asyncio.Task | None = None

    # -- membership ------------------------------------------------------------------------

    def register(self, node: QuantumRegistration) -> None:
        """A node's registration, new or changed: pairs decay at the old rates until now, then
        the new configuration and faults hold (pairs beyond the qubits in service are lost)."""
        self.advance(self.twin.clock.now())
        self.nodes[node.node_id] = node
        self.changed()
        self.enforce_capacity(node.node_id)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="quantum fabric")

    def unregister(self, node_id: str) -> None:
        self.advance(self.twin.clock.now())
        self.nodes.pop(node_id, None)
        self._seen.pop(node_id, None)
        self.changed()
        if not self.nodes:
            self.stop()

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def changed(self) -> None:
        """A node's configuration or state, or the plant, changed: read the links again."""
        self._readings = None

    async def _tick(self) -> None:
        while True:
            try:
                self.advance(self.twin.clock.now())
                if self.on_advance is not None:
                    self.on_advance(self.moved(), self.paired())
            except Exception:
                log.exception("quantum fabric: advance failed")
            await asyncio.sleep(TICK_S)

    def moved(self) -> set[str]:
        """The nodes whose links' status or fidelity changed since the last call."""
        moved = set()
        for node_id, node in self.nodes.items():
            seen = tuple((link_id, state.status, state.fidelity) for link_id in (node.config.links if node.config else {})
                         for state in (self.link_state(node_id, link_id),))
            if self._seen.get(node_id) != seen:
                self._seen[node_id] = seen
                moved.add(node_id)
        return moved

    def paired(self) -> set[str]:
        """The end nodes of the sessions that delivered pairs since the last call."""
        ends = set()
        for name, run in self.runs.items():
            if self._delivered_seen.get(name) != run.delivered:
                self._delivered_seen[name] = run.delivered
                ends.update((run.plan.path[0], run.plan.path[-1]))
        for name in set(self._delivered_seen) - set(self.runs):
            del self._delivered_seen[name]
        return ends

    # -- elementary links ------------------------------------------------------------------

    def readings(self) -> dict[str, LinkReading]:
        if self._readings is None:
            self._readings = {}
            for node in self.nodes.values():
                for link_id in (node.config.links if node.config else {}):
                    if link_id not in self._readings:
                        self._readings[link_id] = self._read(node, link_id)
        return self._readings

    def link_reading(self, node_id: str, link_id: str) -> LinkReading:
        reading = self.readings().get(link_id)
        if reading is None or node_id not in self.nodes:
            return LinkReading(False, f"{node_id} is not running")
        return reading

    def _read(self, node: QuantumRegistration, link_id: str) -> LinkReading:
        link = node.config.links[link_id]
        if not node.up:
            return LinkReading(False, f"{node.node_id} is down")
        if not link.enabled:
            return LinkReading(False, f"the link is disabled at {node.node_id}")
        peer = self.nodes.get(link.peer_node)
        if peer is None or peer.config is None:
            return LinkReading(False, f"peer {link.peer_node} is not running")
        other = peer.config.links.get(link_id)
        if other is None or other.peer_node != node.node_id:
            return LinkReading(False, f"peer {link.peer_node} has no link {link_id} to {node.node_id}")
        if not other.enabled:
            return LinkReading(False, f"the link is disabled at {peer.node_id}")
        if not peer.up:
            return LinkReading(False, f"peer {peer.node_id} is down")
        ends = []
        for holder, entry in ((node, link), (peer, other)):
            attach = holder.config.interfaces.get(entry.interface)
            ends.append(attachment_endpoint(attach.site, attach.switch, attach.port) if attach else None)
        if None in ends:
            return LinkReading(False, "an interface of the link has no fibre attachment")
        try:
            path = self.twin.path_between(*ends)
        except ValueError as exc:
            return LinkReading(False, f"fibre attachment outside the plant: {exc}")
        if path is None:
            return LinkReading(False, f"no optical path between {ends[0]} and {ends[1]}")
        loss = self.twin.path_loss_db(path)
        length = link.length_km if link.length_km is not None else sum(
            self.twin.spans[s].length_km for s in path.spans)
        if not self.twin.path_up(path):
            cut = [s for s in path.spans if self.twin.spans[s].cut]
            return LinkReading(False, f"span {', '.join(cut)} cut", loss, length)
        first = min((node, peer), key=lambda n: n.node_id)
        alpha = loss / length if length > 0 else 0.0
        try:
            scheme = Scheme(link.link_type)
        except ValueError:
            return LinkReading(False, f"link type {link.link_type} is not emulated")
        performance = elementary_link(length, scheme, profile_of(first.config, alpha))
        return LinkReading(True, "", loss, length, performance.success_probability, performance.attempt_cycle_s,
                           performance.rate if performance.success_probability > 0 else 0.0, performance.fidelity)

    # -- sessions --------------------------------------------------------------------------

    def session_problem(self, plan: SessionPlan) -> str:
        """'' when every node of the path holds the same plan and every link makes pairs."""
        for node_id in plan.path:
            node = self.nodes.get(node_id)
            if node is None or node.config is None:
                return f"node {node_id} of the path is not running"
            if node.config.sessions.get(plan.name) != plan:
                return f"node {node_id} does not hold the same plan"
            if not node.up:
                return f"node {node_id} is down"
        for link_id in plan.link_ids:
            reading = self.readings().get(link_id)
            if reading is None or not reading.up:
                return f"link {link_id} is down" + (f": {reading.reason}" if reading else "")
        return ""

    def plans(self) -> dict[str, SessionPlan]:
        """The sessions configured on some running node, by name (the source end's plan wins)."""
        found: dict[str, SessionPlan] = {}
        for node in self.nodes.values():
            for name, plan in (node.config.sessions if node.config else {}).items():
                if name not in found or plan.path[0] == node.node_id:
                    found[name] = plan
        return found

    def advance(self, now: float) -> None:
        plans = self.plans()
        for name in set(self.runs) - set(plans):
            self._end(self.runs.pop(name))
        shares: dict[str, int] = {}
        for plan in plans.values():
            for link_id in plan.link_ids:
                shares[link_id] = shares.get(link_id, 0) + 1
        for name, plan in plans.items():
            run = self.runs.get(name)
            if run is None or run.plan != plan:
                if run is not None:
                    self._end(run)
                run = self.runs[name] = SessionRun(plan, now, now)
            problem = self.session_problem(plan)
            run.status, run.reason = ("waiting", problem) if problem else ("active", "")
            self._simulate(run, now, shares, active=not problem)

    def _end(self, run: SessionRun) -> None:
        run.pairs.clear()
        run.waiting.clear()

    def _rate(self, run: SessionRun, index: int, shares: dict[str, int]) -> float:
        link_id = run.plan.link_ids[index]
        reading = self.readings().get(link_id)
        if reading is None or not reading.up or reading.rate <= 0:
            return 0.0
        return reading.rate / shares.get(link_id, 1)

    def _simulate(self, run: SessionRun, now: float, shares: dict[str, int], active: bool) -> None:
        if active:
            rates = {i: self._rate(run, i, shares) for i in range(len(run.plan.link_ids))}
            for i, rate in rates.items():
                if rate > 0 and i not in run.next_success:
                    run.next_success[i] = run.t + self.rng.expovariate(rate)
                elif rate <= 0:
                    run.next_success.pop(i, None)
            for _ in range(MAX_EVENTS_PER_TICK):
                if not run.next_success:
                    break
                i, t = min(run.next_success.items(), key=lambda item: item[1])
                if t > now:
                    break
                run.next_success[i] = t + self.rng.expovariate(rates[i])
                self._success(run, i, t)
            else:
                log.warning("quantum fabric: session %s fell behind the clock", run.plan.name)
                run.next_success = {i: now + self.rng.expovariate(r) for i, r in rates.items() if r > 0}
        else:
            run.next_success.clear()
        run.t = now
        self._cut_off(run, now)
        cutoff = now - RATE_WINDOW_S
        while run.delivered_times and run.delivered_times[0] < cutoff:
            run.delivered_times.popleft()

    # -- the physics of one success ------------------------------------------------------

    def decay_rate(self, run: SessionRun, pair: Pair) -> float:
        path = run.plan.path
        return sum(self.nodes[path[k]].decoherence_rate if path[k] in self.nodes else 0.0
                   for k in (pair.left, pair.right))

    def at(self, run: SessionRun, pair: Pair, t: float) -> float:
        """The pair's Werner parameter at time t (applied: the pair now holds at t)."""
        if t > pair.t:
            pair.w *= math.exp(-(t - pair.t) * self.decay_rate(run, pair))
            pair.t = t
        return pair.w

    def in_use(self, node_id: str) -> int:
        used = 0
        for run in self.runs.values():
            path = run.plan.path
            used += sum((path[p.left] == node_id) + (path[p.right] == node_id) for p in run.pairs)
            if node_id in (path[0], path[-1]):
                used += len(run.waiting)
        return used

    def capacity(self, node_id: str) -> int:
        node = self.nodes[node_id]
        return max(0, node.config.storage_qubits - node.failed_qubits) if node.config else 0

    def _discard(self, run: SessionRun, pair: Pair) -> None:
        run.pairs.remove(pair)
        for k in (pair.left, pair.right):
            node_id = run.plan.path[k]
            run.discarded[node_id] = run.discarded.get(node_id, 0) + 1

    def _discard_waiting(self, run: SessionRun, item: Delivered) -> None:
        run.waiting.remove(item)
        for node_id in (run.plan.path[0], run.plan.path[-1]):
            run.discarded[node_id] = run.discarded.get(node_id, 0) + 1

    def enforce_capacity(self, node_id: str) -> None:
        """Pairs a node holds beyond its qubits in service are lost (a memory failure): those
        waiting for an application first, then the oldest."""
        if node_id not in self.nodes:
            return
        for run in self.runs.values():
            path = run.plan.path
            while self.in_use(node_id) > self.capacity(node_id):
                mine = [p for p in run.pairs if node_id in (path[p.left], path[p.right])]
                if run.waiting and node_id in (path[0], path[-1]):
                    self._discard_waiting(run, run.waiting[0])
                elif mine:
                    self._discard(run, min(mine, key=lambda p: p.born))
                else:
                    break

    def _room(self, run: SessionRun, k: int, side: str) -> bool:
        """Make room for one more half at path node k on `side` (of a new pair towards the
        left or the right); False when there is none."""
        node_id, path = run.plan.path[k], run.plan.path
        inner = 0 < k < len(path) - 1
        limit = max(1, self.capacity(node_id) // 2) if inner else self.capacity(node_id)
        if limit == 0:
            return False
        mine = [p for p in run.pairs if (p.left == k and side == "right") or (p.right == k and side == "left")]
        if self.in_use(node_id) < self.capacity(node_id) and len(mine) < limit:
            return True
        if run.waiting and not inner:
            self._discard_waiting(run, run.waiting[0])
            return self._room(run, k, side)
        if mine:
            self._discard(run, min(mine, key=lambda p: p.born))
            return self.in_use(node_id) < self.capacity(node_id)
        return False

    def _success(self, run: SessionRun, i: int, t: float) -> None:
        link_id = run.plan.link_ids[i]
        reading = self.readings()[link_id]
        if not (self._room(run, i, "right") and self._room(run, i + 1, "left")):
            return  # no qubit to keep it in: the attempt is lost
        self.generated[link_id] = self.generated.get(link_id, 0) + 1
        run.pairs.append(Pair(i, i + 1, werner.werner_parameter(reading.fidelity), t, t))
        self._settle(run, t)

    def _settle(self, run: SessionRun, t: float) -> None:
        self._cut_off(run, t)
        while self._purify_once(run, t) or self._swap_once(run, t):
            self._cut_off(run, t)
        for pair in [p for p in run.pairs if p.left == 0 and p.right == len(run.plan.path) - 1]:
            self._deliver(run, pair, t)

    def _cut_off(self, run: SessionRun, t: float) -> None:
        max_age = run.plan.max_age_s
        if max_age is None:
            return
        for pair in [p for p in run.pairs if werner.expired(t - p.born, max_age)]:
            self._discard(run, pair)
        for item in [d for d in run.waiting if werner.expired(t - d.pair.born, max_age)]:
            self._discard_waiting(run, item)

    def _purify_once(self, run: SessionRun, t: float) -> bool:
        for i, hop in enumerate(run.plan.hops[:-1]):
            rounds = hop.purification_rounds
            for level in range(rounds):
                same = [p for p in run.pairs if p.left == i and p.right == i + 1 and p.level == level]
                if len(same) < 2:
                    continue
                a, b = same[0], same[1]
                fa, fb = werner.fidelity_of(self.at(run, a, t)), werner.fidelity_of(self.at(run, b, t))
                run.pairs.remove(a)
                run.pairs.remove(b)
                if self.rng.random() < werner.purification_success(fa, fb):
                    run.pairs.append(Pair(i, i + 1, werner.werner_parameter(werner.purified(fa, fb)), t,
                                          min(a.born, b.born), level + 1))
                else:
                    for pair in (a, b):
                        run.pairs.append(pair)
                        self._discard(run, pair)
                return True
        return False

    def _ready(self, run: SessionRun, pair: Pair) -> bool:
        """Whether a pair may be swapped: a link's pair only after its purification rounds."""
        if pair.right - pair.left > 1:
            return True
        return pair.level >= run.plan.hops[pair.left].purification_rounds

    def _swap_once(self, run: SessionRun, t: float) -> bool:
        hops, last = run.plan.hops, len(run.plan.hops) - 1
        steps = {k: hops[k].swap_step or 0 for k in range(1, last)}
        for k in sorted(steps, key=steps.get):
            left = next((j for j in range(k - 1, 0, -1) if steps[j] > steps[k]), 0)
            right = next((j for j in range(k + 1, last) if steps[j] > steps[k]), last)
            a = next((p for p in run.pairs if p.left == left and p.right == k and self._ready(run, p)), None)
            b = next((p for p in run.pairs if p.left == k and p.right == right and self._ready(run, p)), None)
            if a is None or b is None:
                continue
            node = self.nodes.get(run.plan.path[k])
            wa, wb = self.at(run, a, t), self.at(run, b, t)
            run.pairs.remove(a)
            run.pairs.remove(b)
            config = node.config if node is not None else None
            if config is not None and self.rng.random() < config.swap_success:
                run.pairs.append(Pair(left, right, wa * wb * config.swap_fidelity, t, min(a.born, b.born)))
            else:
                for pair in (a, b):
                    run.pairs.append(pair)
                    self._discard(run, pair)
            return True
        return False

    def _deliver(self, run: SessionRun, pair: Pair, t: float) -> None:
        run.pairs.remove(pair)
        run.sequence += 1
        run.delivered += 1
        run.delivered_times.append(t)
        run.delivered_fidelities.append(werner.fidelity_of(self.at(run, pair, t)))
        run.waiting.append(Delivered(str(uuid.uuid4()), run.sequence, pair, t))

    # -- what the end nodes serve ------------------------------------------------------------

    def session_between(self, node_id: str, remote: str) -> SessionRun | None:
        for run in self.runs.values():
            if {run.plan.path[0], run.plan.path[-1]} == {node_id, remote}:
                return run
        return None

    def claim(self, run: SessionRun, node_id: str, number: int, min_fidelity: float, measure: bool,
              bases: tuple[str, ...], now: float) -> list[DeliveredPair]:
        """Up to `number` waiting pairs of goodness >= min_fidelity now, for an application at
        `node_id`; their other halves are queued for the remote end's `receive`."""
        source, destination = run.plan.path[0], run.plan.path[-1]
        remote = destination if node_id == source else source
        taken: list[DeliveredPair] = []
        for item in list(run.waiting):
            if len(taken) >= number:
                break
            fidelity = werner.fidelity_of(self.at(run, item.pair, now))
            if fidelity + 1e-12 < min_fidelity:
                continue
            run.waiting.remove(item)
            halves = {node_id: (None, None), remote: (None, None)}
            if measure:
                basis_a, basis_b, out_a, out_b = werner.sample_measure_directly(
                    max(0.25, fidelity), 1, self.rng, bases or ("Z",))[0]
                halves = {source: (basis_a, out_a), destination: (basis_b, out_b)}
            for holder, other in ((node_id, remote), (remote, node_id)):
                basis, outcome = halves[holder]
                half = DeliveredPair(item.pair_id, run.plan.name, item.sequence, other, fidelity, BELL_STATE, now,
                                     basis, outcome)
                if holder == node_id:
                    taken.append(half)
                else:
                    self.received.setdefault((holder, node_id), deque()).append(half)
            run.served[node_id] = run.served.get(node_id, 0) + 1
        return taken

    def receive(self, node_id: str, creator: str, number: int) -> list[DeliveredPair]:
        queue = self.received.get((node_id, creator), deque())
        out = [queue.popleft() for _ in range(min(number, len(queue)))]
        run = self.session_between(node_id, creator)
        if run is not None and out:
            run.served[node_id] = run.served.get(node_id, 0) + len(out)
        return out

    # -- what the nodes report ------------------------------------------------------------------

    def link_state(self, node_id: str, link_id: str) -> LinkState:
        reading = self.link_reading(node_id, link_id)
        stored = 0
        for run in self.runs.values():
            if link_id in run.plan.link_ids:
                i = run.plan.link_ids.index(link_id)
                stored += sum(1 for p in run.pairs if p.left == i and p.right == i + 1)
        return LinkState("up" if reading.up else "down", reading.reason or None, reading.loss_db,
                         reading.success_probability if reading.up else None,
                         reading.attempt_cycle_s if reading.up else None, reading.rate if reading.up else 0.0,
                         reading.fidelity if reading.up else None, self.generated.get(link_id, 0), stored)

    def session_state(self, node_id: str, name: str) -> SessionState:
        run = self.runs.get(name)
        if run is None:
            return SessionState("waiting", "no node of the path is running the session yet")
        path = run.plan.path
        end = node_id in (path[0], path[-1])
        fidelities = run.delivered_fidelities
        window = min(RATE_WINDOW_S, run.t - run.started)
        rate = len(run.delivered_times) / window if window > 0 else 0.0
        return SessionState(run.status, run.reason or None, run.delivered if end else 0, run.served.get(node_id, 0),
                            run.discarded.get(node_id, 0), len(run.waiting) if end else 0,
                            sum(fidelities) / len(fidelities) if end and fidelities else None,
                            rate if end else None)


    def report(self, node_id: str) -> dict:
        """The node's state as the twin service serves it (GET /quantum-nodes/{node-id}):
        its own links and sessions only."""
        node = self.nodes[node_id]
        links = node.config.links if node.config else {}
        sessions = node.config.sessions if node.config else {}
        return {"in_use": self.in_use(node_id), "failed_qubits": node.failed_qubits,
                "decoherence_rate": node.decoherence_rate,
                "links": {link_id: dataclasses.asdict(self.link_state(node_id, link_id)) for link_id in links},
                "sessions": {name: dataclasses.asdict(self.session_state(node_id, name)) for name in sessions}}


def read_report(data: dict) -> NodeState:
    """A node's state from the twin service's report."""
    return NodeState(int(data["in_use"]), int(data["failed_qubits"]), float(data["decoherence_rate"]),
                     {link_id: LinkState(**link) for link_id, link in data["links"].items()},
                     {name: SessionState(**session) for name, session in data["sessions"].items()})


def pair_json(pair: DeliveredPair) -> dict:
    return dataclasses.asdict(pair)


def read_pairs_json(data: dict) -> list[DeliveredPair]:
    return [DeliveredPair(**pair) for pair in data["pairs"]]
