"""The emulated quantum node (an end node or a repeater): serves qi-quantum-node.

Inventory (the initial configuration, from the topology's `quantum_nodes` and
`entanglement_links`): node-id, role, site, storage qubits and their T2, gate fidelity,
photonics, the interfaces with their fibre attachment, and the elementary links. Interfaces
are hardware: an edit that adds one, or moves one to another attachment, is refused
(invalid-value), as is a node-id that is not this node's.

The physics is the network's `QuantumFabric` (devices/quantum_fabric.py), which the network's
twin service keeps: elementary links from the plant's optical paths, time-stamped pairs in
the nodes' memories, purification, swaps in the configured order, cut-off, delivery. The node
reaches it only through its `TwinClient`, as a QKD node reaches its links, so that the nodes
of one network may run in several device processes: it registers its configuration and
faults (`PUT /quantum-nodes/{node-id}`), reads its own links and sessions, and claims and
receives its pairs (docs/twin-service.md). Emulated time is the twin's clock.

Sessions are configured by the entanglement service controller on every node of their path
(the same entry on each); this node refuses an entry in which it is not on the path exactly
once, whose links next to it are not its links to its path neighbours, whose swap steps are
not 1..n-2 on the inner nodes (none at the ends), that asks it to swap or purify when it
cannot, or that makes it an end of a path when it is a repeater.

Faults: inject-coherence-loss multiplies the decoherence rate (every stored pair decays
faster from then on), inject-memory-failure takes storage qubits out of service (the pairs
they held are lost); each, and its clearing, sends a `memory-alarm` notification. Fibre cuts
are plant changes (the fibre plant device's or the connectivity controller's cut action).

Delivery to applications: create-pairs and receive-pairs (docs/entanglement.md, "Delivery").
"""
from __future__ import annotations

import asyncio
import logging
import uuid

from lxml import etree

from devices.base import Device, NetworkContext
from devices.quantum_fabric import QuantumRegistration, read_pairs_json, read_report
from devices.topology import EntanglementLinkSpec, QuantumNodeSpec
from devices.twin_service import TwinError
from models import quantum_node as model
from models.ns import QUANTUM_NODE as QN
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.ns import decimal
from netconf_core.session import Session


log = logging.getLogger(__name__)

MODULE = "qi-quantum-node"
ROOT_PATH = f"/{MODULE}:quantum-node"
# A create-pairs request looks for pairs again when the twin service says pairs came for this
# node (a `quantum` event naming it in `pairs`), and at the latest after this many real seconds.
PAIRS_RECHECK_S = 1.0


def _refused(message: str, path: str = ROOT_PATH, tag: str = "invalid-value") -> RPCError:
    return RPCError(tag, message, path=path, path_nsmap={MODULE: QN})


def _session_path(name: str) -> str:
    return f"{ROOT_PATH}/sessions/session[name='{name}']"


class QuantumNodeDevice(Device):
    kind = "quantum-node"
    modules = (MODULE,)
    watches_plant = True
    state_paths = (ROOT_PATH,)

    def __init__(self, spec: QuantumNodeSpec, links: tuple[EntanglementLinkSpec, ...] | list, network: NetworkContext,
                 port: int = 0):
        super().__init__(spec.id, network, port)
        self.spec = spec
        self.node_id = spec.id
        self.link_specs = tuple(l for l in links if spec.id in (l.a[0], l.b[0]))
        self.config: model.NodeConfig | None = None
        self._config_element: etree._Element | None = None  # as registered with the twin service
        self.coherence_factor = 1.0
        self.failed_qubits = 0
        self.reported: dict[str, str] = {}   # link -> status last notified
        self.alarmed: set[str] = set()       # links whose fidelity is below their threshold
        self._arrival: asyncio.Future | None = None  # done when the service says pairs came here
        for name, handler in (("inject-coherence-loss", self._inject_coherence_loss),
                              ("clear-coherence-loss", self._clear_coherence_loss),
                              ("inject-memory-failure", self._inject_memory_failure),
                              ("clear-memory-failure", self._clear_memory_failure),
                              ("create-pairs", self._create_pairs), ("receive-pairs", self._receive_pairs)):
            self.server.add_rpc(f"/{MODULE}:{name}", handler)

    # -- inventory and configuration --------------------------------------------------------

    def initial_config(self) -> list[etree._Element]:
        spec = self.spec
        node = QN.element("quantum-node")
        QN.sub(node, "node-id", spec.id)
        QN.sub(node, "role", spec.role)
        QN.sub(node, "site", spec.site)
        storage = QN.sub(node, "storage-qubits")
        QN.sub(storage, "count", spec.storage_qubits)
        if spec.storage_t2_s is not None:
            QN.sub(storage, "t2", decimal(spec.storage_t2_s, 9))
        QN.sub(QN.sub(node, "operations"), "gate-fidelity", decimal(spec.gate_fidelity, 6))
        if spec.role == "end-node":
            QN.sub(QN.sub(node, "capabilities"), "swap", "false")
        photonics = QN.sub(node, "photonics")
        QN.sub(photonics, "emission-probability", decimal(spec.emission_probability, 6))
        QN.sub(photonics, "bright-state-population", decimal(spec.bright_state_population, 6))
        for app in spec.applications:
            QN.sub(node, "application", app)
        interfaces = QN.sub(node, "interfaces")
        for interface in spec.interfaces:
            entry = QN.sub(interfaces, "interface")
            QN.sub(entry, "name", interface.name)
            attach = self._attachment(interface.attach)
            entry.append(QN.element("fibre-attachment", leaves={
                "site": attach.site, "switch": attach.switch, "port": attach.port}))
        links = QN.sub(node, "elementary-links")
        for link in self.link_specs:
            (here, mine), (peer, theirs) = (link.a, link.b) if link.a[0] == spec.id else (link.b, link.a)
            entry = QN.sub(links, "link")
            QN.sub(entry, "link-id", link.id)
            QN.sub(entry, "interface", mine)
            QN.sub(entry, "peer-node", peer)
            QN.sub(entry, "peer-interface", theirs)
            QN.sub(entry, "type", link.link_type)
        return [node]

    def _attachment(self, end) -> model.Attachment:
        """An interface's attachment as the model writes it: a switch port, or a site position."""
        on_switch = end.node in self.twin.plant.get("switches", {})
        return model.Attachment(self.spec.site, end.node if on_switch else None, end.port)

    async def stop(self) -> None:
        if self._joined and self.twin.address is not None:
            try:
                await self.twin.request("DELETE", f"/quantum-nodes/{self.id}", self.id)
            except TwinError as error:
                log.warning("%s: could not unregister from the twin service: %s", self.id, error)
        await super().stop()

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        tree = self.server.with_defaults(after, "report-all", config_only=True)
        element = tree.find(QN("quantum-node"))
        config = model.read_node(element)
        if config is not None:
            self._check(config)
        await self._register(element, self.failed_qubits, self.coherence_factor)
        self.config, self._config_element = config, element

    async def _register(self, element: etree._Element | None, failed_qubits: int, coherence_factor: float) -> dict:
        """Tell the twin service this node's configuration and faults (its fabric applies them
        from now on); a refusal or an unreachable service refuses the change, so that nothing is
        half-applied. The node's state as the service then sees it."""
        await self._twin("PUT", "", QuantumRegistration.body(element, failed_qubits, coherence_factor))
        return await self._twin("GET")

    async def _twin(self, method: str, resource: str = "", body: dict | None = None) -> dict:
        """A request about this node to the twin service; its failure as an RPCError."""
        try:
            return await self.twin.request(method, f"/quantum-nodes/{self.id}{resource}", self.id, body)
        except TwinError as error:
            raise RPCError("operation-failed", f"{self.id}: the network's twin service refused or is unreachable: "
                                               f"{error}", path=ROOT_PATH, path_nsmap={MODULE: QN}) from None

    def _check(self, config: model.NodeConfig) -> None:
        if config.node_id is not None and config.node_id != self.id:
            raise _refused(f"node-id {config.node_id} is not this node's: this is {self.id}", f"{ROOT_PATH}/node-id")
        hardware = {i.name: self._attachment(i.attach) for i in self.spec.interfaces}
        for name, attach in config.interfaces.items():
            where = f"{ROOT_PATH}/interfaces/interface[name='{name}']"
            if name not in hardware:
                raise _refused(f"{self.id} has no interface {name} (its interfaces: {', '.join(sorted(hardware))})",
                               where)
            if attach not in (hardware[name], model.Attachment(None, None, None)):
                have = hardware[name]
                raise _refused(f"interface {name} of {self.id} is attached at {have.switch or have.site}:{have.port}, "
                               f"not at {attach.switch or attach.site}:{attach.port}", f"{where}/fibre-attachment")
        for plan in config.sessions.values():
            self._check_session(config, plan)

    def _check_session(self, config: model.NodeConfig, plan: model.SessionPlan) -> None:
        where = _session_path(plan.name)
        path = plan.path
        if [h.index for h in plan.hops] != list(range(len(plan.hops))):
            raise _refused(f"session {plan.name}: hop indices must be 0..{len(plan.hops) - 1}", where)
        if len(set(path)) != len(path):
            raise _refused(f"session {plan.name}: the path {' - '.join(path)} crosses a node twice", where)
        if self.id not in path:
            raise _refused(f"session {plan.name}: {self.id} is not on its path {' - '.join(path)}", where)
        k = path.index(self.id)
        last = len(path) - 1
        for index, neighbour in ((k - 1, path[k - 1] if k > 0 else None), (k, path[k + 1] if k < last else None)):
            if neighbour is None:
                continue
            link_id = plan.hops[index].link_id
            link = config.links.get(link_id or "")
            if link is None or link.peer_node != neighbour:
                raise _refused(f"session {plan.name}: {self.id} has no elementary link {link_id or '(none)'} to "
                               f"{neighbour}", f"{where}/hop[index='{index}']/link-id")
            if plan.hops[index].purification_rounds and not config.can_purify:
                raise _refused(f"session {plan.name}: {self.id} cannot purify (capabilities/purify is false)",
                               f"{where}/hop[index='{index}']/purification-rounds")
        steps = [h.swap_step for h in plan.hops[1:-1]]
        if sorted(s or 0 for s in steps) != list(range(1, last)) or plan.hops[0].swap_step or plan.hops[-1].swap_step:
            raise _refused(f"session {plan.name}: the swap steps of the inner nodes must be 1..{last - 1}, each once, "
                           "and the end nodes have none", where)
        if 0 < k < last and not config.can_swap:
            raise _refused(f"session {plan.name}: {self.id} cannot swap (capabilities/swap is false)", where)
        if k in (0, last) and config.role == "repeater":
            raise _refused(f"session {plan.name}: {self.id} is a repeater, not an end node of a path", where)

    # -- reports ------------------------------------------------------------------------------

    def twin_event(self, event: dict) -> None:
        """The service says this node's links moved (or the event stream was lost, when the
        service may have restarted: register again)."""
        if event["type"] == "quantum" and self.id in event.get("pairs", ()):
            self._pairs_came()
        if event["type"] == "quantum" and self.id in event["wake"]:
            self.spawn(self._refresh())
        elif event["type"] == "resync":
            self.spawn(self._refresh(register=True))

    async def _refresh(self, register: bool = False) -> None:
        try:
            if register:
                await self._register(self._config_element, self.failed_qubits, self.coherence_factor)
            await self._read()
        except RPCError as error:
            log.warning("%s", error.message)

    async def _read(self) -> model.NodeState | None:
        """The node's state from the twin service, after notifying what changed in it."""
        if self.config is None:
            return None
        state = read_report(await self._twin("GET"))
        self._report(state)
        return state

    def _report(self, state: model.NodeState) -> None:
        """Notify link status changes and fidelity alarms since the last report."""
        events = []
        for link_id, link in self.config.links.items():
            current = state.links.get(link_id)
            if current is None:
                continue
            previous = self.reported.get(link_id)
            if previous != current.status:
                self.reported[link_id] = current.status
                events.append(model.link_status_change(link_id, current.status, previous,
                                                       current.reason or ("making pairs" if current.status == "up"
                                                                          else "no pairs")))
            low = current.status == "up" and current.fidelity is not None and current.fidelity < link.fidelity_threshold
            if low != (link_id in self.alarmed):
                (self.alarmed.add if low else self.alarmed.discard)(link_id)
                events.append(model.fidelity_alarm(link_id, current.fidelity or 0.0, link.fidelity_threshold, low))
        for link_id in set(self.reported) - set(self.config.links):
            del self.reported[link_id]
        if events:
            self.spawn(self._send(events))

    async def _send(self, events: list[etree._Element]) -> None:
        for event in events:
            await self.notify(event)

    async def state(self) -> etree._Element | None:
        state = await self._read()   # what a <get> shows has been notified
        if state is None:
            return None
        data = empty_tree()
        data.append(model.node_state(state))
        return data

    # -- faults ----------------------------------------------------------------------------------

    async def _fault(self, fault: str, failed_qubits: int, coherence_factor: float, reason: str) -> None:
        """Apply a fault (through the twin service, whose fabric decays pairs at the old rate
        until now) and send its memory-alarm."""
        before = read_report(await self._twin("GET"))
        after = read_report(await self._register(self._config_element, failed_qubits, coherence_factor))
        raised = (failed_qubits > self.failed_qubits) if fault == "memory-failure" else coherence_factor > 1
        self.failed_qubits, self.coherence_factor = failed_qubits, coherence_factor
        lost = max(0, sum(s.pairs_discarded for s in after.sessions.values())
                   - sum(s.pairs_discarded for s in before.sessions.values()))
        count = self.config.storage_qubits if self.config else 0
        await self.notify(model.memory_alarm(fault, raised, after.decoherence_rate, max(0, count - failed_qubits),
                                             lost, reason))
        self._report(after)

    async def _inject_coherence_loss(self, session: Session, rpc: etree._Element, context) -> None:
        factor = float(QN.text(rpc, "factor"))
        await self._fault("coherence-loss", self.failed_qubits, factor,
                          f"coherence loss injected: decoherence rate x {factor:g}")

    async def _clear_coherence_loss(self, session: Session, rpc: etree._Element, context) -> None:
        await self._fault("coherence-loss", self.failed_qubits, 1.0, "coherence loss cleared")

    async def _inject_memory_failure(self, session: Session, rpc: etree._Element, context) -> None:
        count = self.config.storage_qubits if self.config else 0
        qubits = int(QN.text(rpc, "qubits"))
        await self._fault("memory-failure", min(count, self.failed_qubits + qubits), self.coherence_factor,
                          f"{qubits} storage qubit(s) failed")

    async def _clear_memory_failure(self, session: Session, rpc: etree._Element, context) -> None:
        await self._fault("memory-failure", 0, self.coherence_factor, "failed storage qubits back in service")

    # -- delivery ---------------------------------------------------------------------------------

    def _plan_with(self, remote: str, rpc_name: str) -> model.SessionPlan:
        if self.config is None or self.config.role != "end-node":
            raise _refused(f"unsupported: {self.id} is not an end node", f"/{MODULE}:{rpc_name}", "operation-not-supported")
        if remote == self.id:
            raise _refused(f"remote-node {remote} is this node", f"/{MODULE}:{rpc_name}/remote-node")
        plan = next((p for p in self.config.sessions.values() if {p.path[0], p.path[-1]} == {self.id, remote}), None)
        if plan is None:
            raise _refused(f"unsupported: no entanglement session between {self.id} and {remote} is configured here",
                           f"/{MODULE}:{rpc_name}/remote-node", "operation-failed")
        return plan

    async def _create_pairs(self, session: Session, rpc: etree._Element, context) -> list[etree._Element]:
        remote = QN.text(rpc, "remote-node")
        number = int(QN.text(rpc, "number", "1"))
        min_fidelity = float(QN.text(rpc, "min-fidelity", "0.5"))
        measure = QN.text(rpc, "type", "create-and-keep") == "measure-directly"
        bases = [b.text for b in QN.all(rpc, "basis")]
        max_time = float(QN.text(rpc, "max-time", "10"))
        plan = self._plan_with(remote, "create-pairs")
        if measure and not self.config.can_measure:
            raise _refused(f"unsupported: {self.id} cannot measure directly", "/qi-quantum-node:create-pairs/type",
                           "operation-not-supported")
        pairs: list[model.DeliveredPair] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_time
        while True:
            came = self._next_arrival()   # taken before the claim: pairs arriving meanwhile are not missed
            reply = await self._twin("POST", "/pairs/claim", {
                "remote": remote, "number": number - len(pairs), "min_fidelity": min_fidelity, "measure": measure,
                "bases": bases})
            pairs += read_pairs_json(reply)
            left = deadline - loop.time()
            if len(pairs) >= number or left <= 0:
                break
            await asyncio.wait([came], timeout=min(left, PAIRS_RECHECK_S))
        if not pairs:
            why = f"session {plan.name} is {reply['status']}: {reply['reason']}" if reply["reason"] else \
                f"no pair of goodness >= {min_fidelity} came"
            raise _refused(f"no time left: no pair with {remote} within {max_time:g} s ({why})",
                           "/qi-quantum-node:create-pairs", "resource-denied")
        output = [QN.element("create-id", str(uuid.uuid4()))]
        output += [model.pair_element(p) for p in pairs]
        return output

    def _next_arrival(self) -> asyncio.Future:
        """Done when the twin service next says pairs came for this node."""
        if self._arrival is None:
            self._arrival = asyncio.get_running_loop().create_future()
        return self._arrival

    def _pairs_came(self) -> None:
        """Wake every create-pairs request waiting here."""
        if self._arrival is not None:
            self._arrival.set_result(None)
            self._arrival = None

    async def _receive_pairs(self, session: Session, rpc: etree._Element, context) -> list[etree._Element]:
        remote = QN.text(rpc, "remote-node")
        self._plan_with(remote, "receive-pairs")
        reply = await self._twin("POST", "/pairs/receive", {"remote": remote, "number": int(QN.text(rpc, "number", "1000"))})
        return [model.pair_element(p) for p in read_pairs_json(reply)]
