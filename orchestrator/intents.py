"""The orchestrator: a NETCONF server of qi-intent, and a NETCONF client of the three
stratum controllers that keeps the network true to the intents.

Operators edit intents (candidate and commit, or running); `dry-run` reports what a commit
of the candidate would ask of each stratum; the `replan` action moves an intent to fresh
paths. A commit only records the intents in the store and wakes the reconcile loop, which
is level-triggered and idempotent: each pass reads the strata as they are, plans every
intent in priority order (higher priority first, so that it holds key rate before lower
ones), and asks for what is missing, top-down: QKD links the forwarding stratum lacks
(which asks the connectivity stratum for their optical paths), then the service session.
It is woken by the controllers' notifications, by commits, and by a period.

What each pass knows comes from reading the strata, never from remembering events: the QBER
alarms are the forwarding controller's alarm list (RFC 8632), and a session is compared
with what the service stratum holds, and written whole (replacing the entry) when they
differ. An intent that fails is tried again after a pause that doubles with each failure in
a row (capped); its history counts a repeated transition instead of growing with each round.

An intent with `disjoint-paths N` is protected: its keys flow on one path while the others
stand by, built. When a path breaks, the keys stay on (or move to) a surviving one and the
intent is degraded, its disjointness condition naming the lost path and why; each pass plans
the lost path again, and the intent is active again once it has N paths. It fails only when no
path is left.

An intent with a `segment` is this domain's part of a cross-domain service (a federation
platform asks for it): its path runs between the inter-domain links where keys enter and
leave the domain and the local SAE, and its session is a segment session of the service
stratum, which routes keys towards the key managers of the service's two SAEs.

An intent with `allow-federation` whose SAE this domain does not serve roams: it is escalated
to the federation platform as a cross-domain service and follows that service
(orchestrator/federation_roaming.py).
"""
from __future__ import annotations

import asyncio
import copy
import logging
import pathlib
from typing import ClassVar

import asyncssh
from lxml import etree

from models.alarms import raised_link_alarms, read_alarms
from models.connectivity import read_fibre_network
from models.forwarding import ForwardingView, links_config, links_delete
from models.intent import IntentSpec, clip, dry_run_entry, intent_elements, intent_state, intent_state_change
from models.ns import ALARMS, INTENT, NW
from models.service import SERVICE_FILTER, ServiceView, Session, SessionConfig, session_filter, sessions_config
from netconf_core import ReconcileLoop
from netconf_core.client import SessionClosedError
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.link import DeviceLink, Endpoint
from netconf_core.schema_cache import schema_for
from netconf_core.server import NetconfServer, SubtreeWriters, User, standard_nacm
from orchestrator import lifecycle
from orchestrator.decisions import (Decision, NotReady, Observation, Outcome, available_rate, conditions, demand_of,
                                    describe, describe_path, hop_entry, local_plan, lost_paths, plan_hops,
                                    plan_requests, protected_plan, protection_lost)
from orchestrator.delivery import DeliveryMeter
from orchestrator.entanglement import EntanglementIntents, augment_state, is_entanglement
from orchestrator.federation_roaming import Roaming, Verdict, back_home, roams, waiting_for_saes, walk
from orchestrator.planner import Infeasible, Network, Plan, Planner
from orchestrator.store import IntentRecord, IntentStore

log = logging.getLogger(__name__)

# Seconds before the next pass while something is in progress. What it waits for (a link up,
# a session placed) is notified by the strata, which wakes a pass at once: this is the safety
# net. Every pass reads the strata whole, so at 0.1 s a hundred intents being set up kept the
# service controller reading every key manager's counters ten times a second.
RETRY_SOON = 1.0
RETRY_ERROR = 1.0     # ... after a stratum failed to answer
DEBOUNCE = 0.01       # notifications come in bursts: one pass for a burst
LINK_UP_GRACE = 15.0  # seconds a new QKD link may take to come up before it counts as broken
RETRY_BACKOFF = 0.5   # seconds a failed intent waits before it is tried again, doubled per failure in a row ...
RETRY_BACKOFF_MAX = 8.0  # ... up to this
NETWORKS_FILTER = f'<networks xmlns="{NW}"/>'
FORWARDING_FILTER = NETWORKS_FILTER + f'<alarms xmlns="{ALARMS}"><alarm-list/></alarms>'


class Orchestrator:
    modules: ClassVar[tuple[str, ...]] = ("qi-intent",)

    def __init__(self, name: str, service: Endpoint, forwarding: Endpoint, connectivity: Endpoint,
                 users: dict[str, User], store_dir: str | pathlib.Path, *,
                 read_write: tuple[str, ...] = ("admin",), read_only: tuple[str, ...] = ("monitor",),
                 intent_writers: tuple[str, ...] = (), host: str = "127.0.0.1", port: int = 0,
                 period: float = 5.0, host_key: asyncssh.SSHKey | None = None, entanglement: Endpoint | None = None,
                 federation: Endpoint | None = None, federation_member: str | None = None):
        """`intent_writers` may read, and create, change and remove intents, nothing else: the
        accounts of those who ask for intents on the operator's behalf (a federation platform).
        `entanglement`: the entanglement service controller; with it the orchestrator serves
        qi-entanglement-intent too (orchestrator/entanglement.py). `federation`: the federation
        platform, reached as the domain's service-layer (Fa) account, for intents that roam;
        `federation_member`: the domain's member id there (by default, the member that
        advertises this domain's SAEs)."""
        self.name = name
        self.period = period
        self.store = IntentStore(store_dir)
        writers = SubtreeWriters(intent_writers, "/qi-intent:intents", {"qi-intent": INTENT}) \
            if intent_writers else None
        # Its datastores (and a pending confirmed commit) live by the store; intents come from the store.
        modules = self.modules + (("qi-entanglement-intent",) if entanglement is not None else ())
        self.server = NetconfServer(schema_for(modules), users, host=host, port=port, host_key=host_key,
                                    datastore_dir=self.store.directory / "datastores",
                                    nacm=standard_nacm(list(read_write), list(read_only), subtree_writers=writers),
                                    name=name)
        self.server.on_change(self._config_changed)
        self.server.add_state_provider(self._state, "/qi-intent:intents")
        self.server.add_rpc("/qi-intent:intents/intent/replan", self._replan)
        self.server.add_rpc("/qi-intent:dry-run", self._dry_run)
        self.strata = {
            "service": DeviceLink(service, ("qi-service",), self._connected, self._notified),
            "forwarding": DeviceLink(forwarding, ("qi-forwarding",), self._connected, self._notified),
            "connectivity": DeviceLink(connectivity, ("qi-connectivity",), self._connected, self._notified),
        }
        self.entanglement_intents = EntanglementIntents(self) if entanglement is not None else None
        self.roaming = Roaming(federation, federation_member, self.wake)
        if entanglement is not None:
            self.strata["entanglement"] = DeviceLink(entanglement, ("qi-entanglement-service",), self._connected,
                                                     self._notified)
        self.alarms: dict[str, str] = {}             # QKD link -> its raised QBER alarm, from the last observation
        self.forced: dict[str, tuple[str, bool]] = {}  # intent -> (why re-plan, may keep its path)
        self.refused: dict[str, str] = {}            # candidate link -> why the forwarding stratum refused it
        self.created_at: dict[str, float] = {}       # link this orchestrator created -> when (loop time)
        self.capacity_seen: dict[str, float] = {}    # link -> its eskr when last seen up
        self.failures: dict[str, tuple[int, float]] = {}  # intent -> (failures since last active, retry after)
        self.delivery = DeliveryMeter()              # the rate each intent's SAEs draw keys at
        self._parsed: dict[str, tuple[str, IntentSpec]] = {}  # intent -> (its configuration, parsed)
        self._read: dict[bytes, Session] = {}  # the sessions the last observation read, by their entry's text
        self.observed: dict[str, int] = {}  # intent -> the generation the last pass over it evaluated
        # While a pass gathers them: intent -> (its decision, the session to write); else None.
        self._sessions_to_write: dict[str, tuple[Decision, SessionConfig]] | None = None
        self.passes = 0
        # Woken by commits and the strata (a burst is one pass), and every `period`; a pass
        # with work in progress is followed by another RETRY_SOON later, a failed one RETRY_ERROR later.
        self._loop = ReconcileLoop(name, self._pass, period=period, debounce=DEBOUNCE, backoff_initial=RETRY_ERROR,
                                   backoff_cap=RETRY_ERROR, logger=log,
                                   expected=(RPCError, SessionClosedError, OSError, asyncio.TimeoutError, NotReady))

    @property
    def port(self) -> int:
        return self.server.port

    async def _restore_running(self) -> None:
        """The running configuration is the store's: intents survive a restart. It is put in
        place through the commit path, so the change handler sees any difference."""
        records = [r for r in self.store.intents() if not r.deleted]
        tree = copy.deepcopy(self.server.running())
        saved = tree.findall(INTENT("intents"))  # as running was saved: the store's are the truth
        if not records and not saved:
            return
        for container in saved:
            tree.remove(container)
        if records:
            container = etree.SubElement(tree, INTENT("intents"), nsmap={None: INTENT})
            for record in records:
                container.append(etree.fromstring(record.config))
        tree = self.server.schema.canonical(tree, config_only=True)
        if etree.tostring(tree) != etree.tostring(self.server.running()):
            await self.server.replace_running(tree)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        # After a restart (perhaps of the whole network) the links made before come up again:
        # they get the grace of new links, so that an intent keeps its path instead of moving.
        now = asyncio.get_running_loop().time()
        self.created_at.update({link_id: now for link_id in self.store.created_links()})
        await self._restore_running()
        await self.server.start()
        for link in self.strata.values():
            link.start()
        self.roaming.start()
        self._loop.start()
        self.wake()

    async def stop(self) -> None:
        await self._loop.stop()
        await asyncio.gather(*(link.stop() for link in self.strata.values()), self.roaming.stop())
        await self.server.stop()
        self.store.close()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(l.connected.wait() for l in self.strata.values()))

    def wake(self) -> None:
        self._loop.wake()

    async def _pass(self) -> float | None:
        return RETRY_SOON if await self.reconcile_once() else None

    # --- the strata ---------------------------------------------------------------------

    async def _connected(self, link: DeviceLink) -> None:
        self.wake()

    async def _notified(self, link: DeviceLink, notification: etree._Element) -> None:
        """Something changed below: a pass reads the strata (and the alarm list) afresh."""
        self.wake()

    async def observe(self) -> Observation:
        """The strata as they are, with the alarms raised now (the alarm list is state: an alarm
        whose link is gone is cleared there, not kept here from an old notification)."""
        fwd, fibre, svc = await asyncio.gather(*(
            self._get(stratum, filter_) for stratum, filter_ in
            (("forwarding", FORWARDING_FILTER), ("connectivity", NETWORKS_FILTER), ("service", SERVICE_FILTER))))
        self.alarms = raised_link_alarms(read_alarms(fwd))
        return Observation(ForwardingView.parse(fwd), read_fibre_network(fibre), ServiceView.parse(svc, self._read))

    async def _get(self, stratum: str, subtree: str) -> etree._Element | None:
        session = await self.strata[stratum].session()
        return await session.get(filter=("subtree", subtree))

    async def _edit(self, stratum: str, config: etree._Element) -> None:
        session = await self.strata[stratum].session()
        await session.edit_config(config, target="running")

    # --- the northbound server ----------------------------------------------------------

    async def _config_changed(self, before: etree._Element, after: etree._Element) -> None:
        old = {name: etree.tostring(e) for name, e in intent_elements(before).items()}
        new = {name: etree.tostring(e) for name, e in intent_elements(after).items()}
        for name, config in new.items():
            if old.get(name) == config:
                continue
            record = self.store.get(name)
            if self.store.put_config(name, config.decode(), "planned", "created by the operator"):
                await self._announce(name, self.store.history(name)[-1], 1)
            elif record is not None and not record.deleted:
                self.forced.setdefault(name, ("configuration changed", True))
                if "ended" in record.status:
                    self.store.set_status(name, {})
        for name in old.keys() - new.keys():
            self.store.mark_deleted(name)
        self.wake()

    async def _replan(self, session, action: etree._Element, context: etree._Element | None) -> list:
        name = INTENT.text(context, "name", "")
        record = self.store.get(name)
        if record is None or record.deleted:
            raise RPCError("data-missing", f"no intent {name!r}")
        reason = INTENT.text(action, "reason", "")
        self.forced[name] = (reason or "re-plan asked by the operator", False)
        self.wake()
        return [INTENT.element("state", record.state)]

    async def _state(self) -> etree._Element:
        tree = empty_tree()
        container = etree.SubElement(tree, INTENT("intents"), nsmap={None: INTENT})
        for record in self.store.intents(include_deleted=False):
            container.append(intent_state(record, self.store.history(record.name), self.observed.get(record.name)))
            if self.entanglement_intents is not None and is_entanglement(record):
                augment_state(container[-1], record.status)
        return tree

    async def _transition(self, record: IntentRecord, to_state: str, reason: str) -> None:
        lifecycle.check(record.state, to_state)
        transition = self.store.transition(record.name, to_state, clip(reason))
        record.state, record.reason, record.state_since = to_state, transition.reason, transition.time
        log.info("%s: intent %s %s -> %s: %s", self.name, record.name, transition.from_state, to_state, reason)
        await self._announce(record.name, transition, record.generation)

    async def _announce(self, name: str, transition, generation: int) -> None:
        await self.server.notify(intent_state_change(name, transition, generation))

    # --- the reconcile loop -------------------------------------------------------------

    def _specs(self) -> list[tuple[IntentRecord, IntentSpec]]:
        """Every stored intent with its parsed configuration; only a configuration that changed
        since the last pass is parsed again."""
        records = self.store.intents()
        parsed = {}
        for record in records:
            held = self._parsed.get(record.name)
            parsed[record.name] = held if held is not None and held[0] == record.config \
                else (record.config, IntentSpec.from_xml(etree.fromstring(record.config)))
        self._parsed = parsed
        return [(record, parsed[record.name][1]) for record in records]

    def allocate(self, live: list[tuple[IntentRecord, IntentSpec]], world: Observation,
                 network: Network) -> list[Decision]:
        """Plan every live intent, higher priority first (then older first)."""
        planner = Planner(network)
        decisions = []
        for record, spec in sorted(live, key=lambda rs: (-rs[1].priority, rs[0].created)):
            session = world.svc.sessions.get(spec.name)
            forced, may_keep = self.forced.get(spec.name, ("", True))
            decision = Decision(record, spec, session, forced=forced)
            try:
                demand = demand_of(spec, world.svc.saes)
                if session is not None and session.status in ("failed", "degraded"):
                    decision.problem = f"session {session.name} is {session.status}: {session.reason}".rstrip(": ")
                elif session is not None and session.links:
                    decision.problem = planner.path_problem(demand, list(session.links)) or ""
                keep = list(session.links) if session is not None and session.links and may_keep else None
                decision.plan = local_plan(demand, world.fwd)
                if decision.plan is None:
                    decision.plan, decision.shortfall = protected_plan(planner, demand, keep)
                    decision.lost = lost_paths(record.status, decision.plan, planner, demand) if decision.shortfall \
                        else []
                network.reserve(decision.plan)
            except Infeasible as why:
                decision.why = str(why) + (" (allow-federation: both SAEs are served by this domain, so no other "
                                           "member can help)" if spec.allow_federation and spec.segment is None
                                           else "")
            decisions.append(decision)
        return decisions

    def _network(self, world: Observation) -> Network:
        network = Network.observe(world.fwd, world.fibre, self.alarms)
        network.refused = dict(self.refused)
        for link in world.fwd.links.values():
            if link.up and link.eskr is not None:
                self.capacity_seen[link.id] = link.eskr
                self.created_at.pop(link.id, None)  # it came up: from now on its status counts
        network.capacity_seen = dict(self.capacity_seen)
        now = asyncio.get_running_loop().time()
        network.coming_up = {l for l, t in self.created_at.items() if now - t < LINK_UP_GRACE}
        return network

    async def reconcile_once(self) -> bool:
        """One level-triggered pass over every intent. True while something is in progress."""
        self.passes += 1
        world = await self.observe()
        network = self._network(world)
        specs = self._specs()
        evaluated = {record.name: record.generation for record, _ in specs if not record.deleted}
        busy = False
        if self.entanglement_intents is not None:  # intents for Bell pairs, not keys
            entangled = [record for record, _ in specs if is_entanglement(record)]
            specs = [(record, spec) for record, spec in specs if record not in entangled]
            busy |= await self.entanglement_intents.reconcile(entangled)
        live = []
        for record, spec in specs:
            if record.deleted or not spec.enabled:
                await self._tear_down(record, spec, world, "deleted by the operator" if record.deleted
                                      else "disabled by the operator")
            elif (session := world.svc.sessions.get(spec.name)) is not None and session.status == "expired":
                await self._tear_down(record, spec, world, f"its time to live of {spec.ttl} s has passed")
            elif "ended" not in record.status:  # an intent that lived its ttl stays removed until changed
                live.append((record, spec))
        if not world.svc.saes:
            # A service controller that has just started: failing intents for SAEs it has not
            # read yet would tear down their sessions and links, only to make them again (and
            # escalating intents that may roam would ask the platform for nothing). A roaming
            # intent that holds a service already follows it: its SAEs may all have moved away.
            if any(spec.needs_local_sae and not spec.allow_federation for _, spec in live):
                raise NotReady("the service stratum has not read its key managers' SAEs yet")
            unknown = [(record, spec) for record, spec in live if spec.needs_local_sae
                       and not (record.status.get("federation") or {}).get("service")]
            live = [pair for pair in live if pair not in unknown]
            for record, spec in unknown:  # a new one says why it waits; others keep where they are
                if record.state in ("planned", "compiling", "installing"):
                    await self._follow(record, waiting_for_saes(spec))
        roaming = [(record, spec) for record, spec in live if roams(spec, world.svc.saes)]
        live = [(record, spec) for record, spec in live if not roams(spec, world.svc.saes)]
        for record, _ in live:  # back home: the service goes before the intent is realised here
            if service := (record.status.get("federation") or {}).get("service"):
                await self._release_federation(record)
                if record.state in ("active", "degraded"):
                    await self._transition(record, "repairing", back_home(service))
        busy |= await self._roam(roaming, world)
        decisions = self.allocate(live, world, network)
        for decision in decisions:  # release first: what lower priorities lose, higher ones take
            if decision.plan is None:
                await self._fail(decision, world)
        # Sessions to write are gathered and written in one edit per priority (the service
        # controller then places them at once and configures each key manager once, instead
        # of once per intent); the intents that waited for it are advanced again with what it
        # placed.
        self._sessions_to_write, in_progress = {}, {}
        try:
            for decision in decisions:
                if decision.plan is not None:
                    in_progress[decision.spec.name] = await self._advance(decision, world)
        finally:
            gathered, self._sessions_to_write = self._sessions_to_write, None
        for decision in await self._write_sessions(gathered, world):
            in_progress[decision.spec.name] = await self._advance(decision, world)
        busy |= any(in_progress.values())
        for decision in decisions:  # re-plans asked during this pass wait for the next one
            if decision.forced and self.forced.get(decision.spec.name, ("",))[0] == decision.forced:
                del self.forced[decision.spec.name]
        await self._collect_links(world, decisions)
        self.observed = evaluated
        return busy

    async def _roam(self, roaming: list[tuple[IntentRecord, IntentSpec]], world: Observation) -> bool:
        """Follow each roaming intent's federation service; True while one is being set up."""
        verdicts = await self.roaming.serve([spec for _, spec in roaming], world.svc.saes)
        busy = False
        for record, spec in roaming:
            verdict = verdicts[spec.name]
            await self._follow(record, verdict)
            busy |= verdict.state == "installing"
        return busy

    async def _follow(self, record: IntentRecord, verdict: Verdict) -> None:
        """Walk the intent to the verdict's state (or just update why it is there)."""
        await self._walk_to_compiling(record)
        if record.state == verdict.state:
            if record.reason != verdict.reason:
                self.store.set_reason(record.name, clip(verdict.reason))
                record.reason = verdict.reason
        for state in walk(record.state, verdict.state):
            await self._transition(record, state, verdict.reason)
        status = verdict.status(record.status)
        if status != record.status:
            record.status = status
            self.store.set_status(record.name, status)

    async def _release_federation(self, record: IntentRecord) -> None:
        """Delete the platform service a roaming intent held (its SAEs are both here now, or it ended)."""
        service = (record.status.get("federation") or {}).get("service")
        if service:
            await self.roaming.release(service)
            record.status = {k: v for k, v in record.status.items() if k != "federation"}
            self.store.set_status(record.name, record.status)

    async def _tear_down(self, record: IntentRecord, spec: IntentSpec, world: Observation, why: str) -> None:
        """Remove what an ended intent holds; forget a deleted one once removed."""
        await self._release_federation(record)
        if record.state != "removed":
            if record.state != "removing":
                await self._transition(record, "removing", why)
            if spec.name in world.svc.sessions:
                await self._edit("service", SessionConfig.delete(spec.name))
            self.store.claim_links(spec.name, set())
            self.store.set_status(spec.name, {"ended": why})
            record.status = {"ended": why}
            await self._transition(record, "removed", f"{why}: session {spec.name} removed, and the links no "
                                                      f"other intent uses")
        if record.deleted:
            self.store.forget(spec.name)

    async def _fail(self, decision: Decision, world: Observation) -> None:
        """No plan: release what the intent holds and say why."""
        record, spec = decision.record, decision.spec
        if decision.session is not None:
            await self._edit("service", SessionConfig.delete(spec.name))
        self.store.claim_links(spec.name, set())
        await self._walk_to_failed(record, decision)
        self._record_status(decision, world, None)

    async def _walk_to_compiling(self, record: IntentRecord) -> None:
        """Take an intent that was being removed, was removed or is new on to compiling."""
        if record.state == "removing":
            await self._transition(record, "removed", "the intent was enabled again before its removal finished")
        if record.state == "removed":
            await self._transition(record, "planned", "enabled by the operator")
        if record.state == "planned":
            await self._transition(record, "compiling", "decomposing over the strata")

    async def _walk_to_failed(self, record: IntentRecord, decision: Decision) -> None:
        await self._walk_to_compiling(record)
        if record.state == "active":
            await self._transition(record, "degraded", decision.problem or decision.why)
        if record.state == "degraded":
            await self._transition(record, "repairing", "re-planning")
        if record.state == "failed":
            if record.reason != decision.why:
                self.store.set_reason(record.name, clip(decision.why))
                record.reason = decision.why
        else:
            await self._transition(record, "failed", decision.why)
            count = self.failures.get(record.name, (0, 0.0))[0] + 1
            delay = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2 ** (count - 1))
            self.failures[record.name] = (count, asyncio.get_running_loop().time() + delay)

    def _backing_off(self, decision: Decision) -> bool:
        """Whether a failed intent waits before it is tried again (repeated failure backs off:
        a path that keeps breaking as soon as it is set up is not rebuilt in a tight loop). A
        re-plan the operator asks for, or a changed configuration, does not wait."""
        if decision.record.state != "failed" or decision.forced:
            return False
        retry_at = self.failures.get(decision.spec.name, (0, 0.0))[1]
        loop = asyncio.get_running_loop()
        if loop.time() >= retry_at:
            return False
        self._loop.wake_after(retry_at - loop.time())
        return True

    async def _advance(self, decision: Decision, world: Observation) -> bool:
        """Move a plannable intent towards active. True while it is in progress."""
        record, plan = decision.record, decision.plan
        assert plan is not None
        if self._backing_off(decision):
            return False
        session = decision.session
        moving = session is not None and bool(session.links) and list(session.links) != plan.link_ids(0)
        await self._walk_to_compiling(record)
        if record.state in ("compiling", "failed"):
            if record.state == "failed":
                await self._transition(record, "compiling", "a path is available again")
            await self._transition(record, "installing", describe(plan))
        repair = bool(decision.forced or decision.problem or moving)  # the keys' path must change
        if record.state == "active" and repair:
            if decision.forced:
                await self._transition(record, "repairing", decision.forced)
            else:
                await self._transition(record, "degraded", decision.problem or "a better path is available")
        elif record.state == "active" and decision.shortfall:  # a standby path is lost: keys keep flowing
            await self._transition(record, "degraded", protection_lost(decision))
        if record.state == "degraded" and repair:
            await self._transition(record, "repairing", f"re-planning: {describe(plan)}")
        outcome = await self._realise(decision, world)
        keys_flow = f"keys flow over {describe_path(decision.session, plan)}"
        if outcome.done and decision.shortfall:  # protected by fewer paths than asked
            reason = f"{keys_flow}; {protection_lost(decision)}"
            if record.state in ("installing", "repairing"):
                await self._transition(record, "degraded", reason)
            elif record.state == "degraded" and record.reason != reason:
                self.store.set_reason(record.name, clip(reason))
                record.reason = reason
        elif outcome.done and record.state in ("installing", "repairing", "degraded"):
            await self._transition(record, "active", keys_flow)
        elif not outcome.done and record.reason != outcome.waiting and record.state != "active":
            self.store.set_reason(record.name, clip(outcome.waiting))
            record.reason = outcome.waiting
        if outcome.done and record.state in lifecycle.REALISED:
            self.failures.pop(record.name, None)  # the next failure backs off from the start again
        self._record_status(decision, world, plan, outcome)
        return not outcome.done

    async def _realise(self, decision: Decision, world: Observation) -> Outcome:
        """Ask the strata for what the plan lacks, top-down, reading back what each answer
        changed; report how far it got."""
        spec, plan = decision.spec, decision.plan
        assert plan is not None
        steer = self._steer(decision, world)
        missing = [c for c in plan.new_links if c.link_id not in world.fwd.links]
        if missing:
            for candidate in missing:
                self.store.record_link(candidate.link_id, {"a": list(candidate.a), "b": list(candidate.b),
                                                           "qkdl-id": candidate.qkdl_id}, spec.name)
            now = asyncio.get_running_loop().time()
            self.created_at.update({c.link_id: now for c in missing})
            try:
                await self._edit("forwarding", links_config(world.fwd.network_id, missing))
            except RPCError as err:
                for candidate in missing:
                    self.refused[candidate.link_id] = f"the forwarding stratum refused it: {err.message}"
                    self.store.forget_link(candidate.link_id)
                return Outcome(False, waiting=f"the forwarding stratum refused new links: {err.message}", steer=steer)
            world.fwd = ForwardingView.parse(await self._get("forwarding", FORWARDING_FILTER))
        self.store.claim_links(spec.name, {e.link_id for path in plan.paths for e in path})
        pending = [e.link_id for e in plan.paths[0] if not ((link := world.fwd.links.get(e.link_id)) and link.up)]
        if pending:
            return Outcome(False, waiting="waiting for QKD links " + ", ".join(pending) + " to come up", steer=steer)
        session = world.svc.sessions.get(spec.name)
        request = spec.session(steer)
        if (session is None or session.config != request) and self._sessions_to_write is not None:
            self._sessions_to_write[spec.name] = (decision, request)  # see reconcile_once
            return Outcome(False, waiting=f"waiting for session {spec.name}", steer=steer)
        if session is None or session.config != request:  # what the stratum holds, read back
            try:
                await self._edit("service", request.config(spec.name))
            except RPCError as err:
                return Outcome(False, waiting=f"the service stratum refused session {spec.name}: {err.message}",
                               steer=steer)
            session = ServiceView.parse(await self._get("service", session_filter(spec.name))).sessions.get(spec.name)
            # Read back alone: the service stratum places a new session without moving the others
            # (it skips paths that would change their routes), and the next pass reads them all.
            if session is None:
                world.svc.sessions.pop(spec.name, None)
            else:
                world.svc.sessions[spec.name] = session
        if session is None:
            return Outcome(False, waiting=f"waiting for session {spec.name}", steer=steer)
        if session.status != "active":
            return Outcome(False, waiting=f"waiting for session {spec.name}: {session.status or 'no status yet'}"
                           + (f", {session.reason}" if session.reason else ""), steer=steer)
        decision.session = session
        return Outcome(True, steer=steer)

    async def _write_sessions(self, gathered: dict[str, tuple[Decision, SessionConfig]],
                              world: Observation) -> list[Decision]:
        """Write the sessions `_realise` gathered (in priority order), one edit per priority, and
        read them back; the decisions that wait for them. When the service stratum refuses an
        edit, those sessions are not read back: advanced again, each of those intents writes its
        own session, and a refused one says why."""
        by_priority: dict[int, dict[str, SessionConfig]] = {}
        for name, (decision, request) in gathered.items():
            by_priority.setdefault(decision.spec.priority, {})[name] = request
        for requests in by_priority.values():
            try:
                await self._edit("service", sessions_config(requests))
            except RPCError:
                continue
            # Read back alone: the service stratum places new sessions without moving the others
            # (it skips paths that would change their routes), and the next pass reads them all.
            placed = ServiceView.parse(await self._get("service", session_filter(*requests))).sessions
            for name in requests:
                if name in placed:
                    world.svc.sessions[name] = placed[name]
                else:
                    world.svc.sessions.pop(name, None)
        return [decision for decision, _ in gathered.values()]

    def _steer(self, decision: Decision, world: Observation) -> tuple[str, ...]:
        """Links the service controller must avoid so that the session leaves its current
        path for the planned one: those of the current path the plan does not use, and
        those avoided before that are still unusable. Kept while the session stays put."""
        plan, session = decision.plan, decision.session
        assert plan is not None
        steer = set(decision.record.status.get("steer", []))
        primary = set(plan.link_ids(0))
        if session is None or list(session.links) == plan.link_ids(0):
            return tuple(sorted(steer - primary))
        unusable = lambda l: (link := world.fwd.links.get(l)) is None or link.status != "ACTIVE" or l in self.alarms
        return tuple(sorted({l for l in steer if unusable(l)} - primary | set(session.links) - primary))

    async def _collect_links(self, world: Observation, decisions: list[Decision]) -> None:
        """Remove the links this orchestrator created that no intent and no session uses."""
        planned = {e.link_id for d in decisions if d.plan for path in d.plan.paths for e in path}
        in_sessions = {l for s in world.svc.sessions.values() for l in s.links}
        unused = [link_id for link_id, users in self.store.link_claims().items()
                  if not users and link_id not in planned and link_id not in in_sessions]
        present = [l for l in unused if l in world.fwd.links]
        if present:
            await self._edit("forwarding", links_delete(world.fwd.network_id, present))
        for link_id in unused:
            self.store.forget_link(link_id)
            self.created_at.pop(link_id, None)

    def _record_status(self, decision: Decision, world: Observation, plan: Plan | None,
                       outcome: Outcome | None = None) -> None:
        record, spec = decision.record, decision.spec
        previous = record.status
        session = world.svc.sessions.get(spec.name) if plan is not None else None
        paths = []
        if session is not None and session.path:
            paths.append({"in-use": session.status == "active", "hops": [hop_entry(h) for h in session.path]})
        elif plan is not None:
            paths.append({"in-use": False, "hops": plan_hops(plan, 0, world.fwd)})
        if plan is not None:
            paths += [{"in-use": False, "hops": plan_hops(plan, i, world.fwd)} for i in range(1, len(plan.paths))]
        rate = available_rate(session, world.fwd) if session is not None and session.status == "active" else None
        if session is None:
            self.delivery.forget(spec.name)
        delivered = self.delivery.observe(spec.name, session.delivered_bits, asyncio.get_running_loop().time()) \
            if session is not None else None
        status = {
            "session": spec.name if session is not None else None,
            "steer": list(outcome.steer) if outcome else [],
            "paths": paths,
            "observed-rate": delivered,
            "available-rate": rate,
            "conditions": conditions(previous.get("conditions", {}), record.state, spec, plan, decision, rate),
        }
        if decision.lost:
            status["lost"] = decision.lost
        if status != previous:
            record.status = status
            self.store.set_status(spec.name, status)

    # --- dry run ------------------------------------------------------------------------

    async def _dry_run(self, session, rpc: etree._Element, context) -> list | None:
        """What a commit of the candidate would ask of each stratum; <ok/> when it changes nothing."""
        running = {n: e for n, e in intent_elements(self.server.running()).items()}
        candidate = {n: e for n, e in intent_elements(self.server.datastore("candidate")).items()}
        records = {r.name: r for r in self.store.intents()}
        changes: dict[str, str] = {}
        for name, element in candidate.items():
            spec = IntentSpec.from_xml(element)
            if name not in running:
                changes[name] = "create" if spec.enabled else "remove"
            elif etree.tostring(running[name]) != etree.tostring(element):
                changes[name] = "modify" if spec.enabled else "remove"
        for name in running.keys() - candidate.keys():
            changes[name] = "remove"
        if not changes:
            return None
        world = await self.observe()
        network = self._network(world)
        live = []
        for name, element in candidate.items():
            spec = IntentSpec.from_xml(element)
            if spec.enabled and (changes.get(name) != "remove"):
                record = records.get(name) or IntentRecord(name, "", 1 << 30, False, "planned", "", "")
                live.append((record, spec))
        decisions = {d.spec.name: d for d in self.allocate(live, world, network)}
        claims = self.store.link_claims()
        out = []
        for name in sorted(changes):
            requests: list[tuple[str, str, str, str, str]] = []
            if changes[name] == "remove":
                feasible, reason, hops = True, "the intent would be torn down", None
                if name in world.svc.sessions:
                    requests.append(("service", "delete", "session", name, "key-delivery session of the intent"))
                for link_id, users in sorted(claims.items()):
                    if users == {name} and link_id in world.fwd.links:
                        requests.append(("quantum-forwarding", "delete", "qkd-link", link_id,
                                         "no other intent uses it"))
            else:
                decision = decisions[name]
                feasible = decision.plan is not None
                reason = describe(decision.plan) if decision.plan else decision.why
                hops = plan_hops(decision.plan, 0, world.fwd) if decision.plan is not None else None
                if decision.plan is not None:
                    requests += plan_requests(decision, world)
            out.append(dry_run_entry(name, changes[name], feasible, reason, hops, requests))
        return out


# --- helpers shared by the pass and the dry run --------------------------------------------
