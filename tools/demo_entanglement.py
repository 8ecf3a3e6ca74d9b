"""`qstrata demo --entanglement`: entanglement distribution on the embedded network of
devices/topologies/entanglement.yaml (end nodes at Alice and Bob, a chain of two repeaters, a
second way through a third repeater), in one command.

It starts every level on 127.0.0.1 (devices, the QKD strata, the fabric and entanglement
service controllers, the orchestrator), then acts as an operator and two applications would,
over NETCONF only: it commits an entanglement intent for pairs at F >= 0.8 and watches it go
active; takes pairs at Alice's end node and the other halves at Bob's, with the same ids; a
measured-directly batch whose Z and X correlations are those its fidelity predicts; cuts a
fibre span under the path and watches the intent re-route; and asks for F >= 0.99, which is
refused with its reason. It ends with a summary; the exit code is 0 only if every step
succeeded.
"""
from __future__ import annotations

import asyncio
import math

from models.intent import INTENTS_FILTER, read_intents
from models.ns import ENTANGLEMENT_INTENT, FIBRE_PLANT, INTENT
from tools.demo_steps import StepFailed, Steps

TOPOLOGY = "entanglement.yaml"
NAME, SOURCE, DESTINATION = "alice-bob", "app-alice", "app-bob"
ALICE, BOB = "qn-alice", "qn-bob"
MIN_FIDELITY, TOO_HIGH = 0.8, 0.99
MEASURED = 200
POLL_S = 0.2


def intent_edit(name: str, min_fidelity: float) -> str:
    return (f'<intents xmlns="{INTENT}"><intent><name>{name}</name><endpoints><source-sae>{SOURCE}</source-sae>'
            f"<destination-sae>{DESTINATION}</destination-sae></endpoints><min-rate>1</min-rate>"
            f'<entanglement-service xmlns="{ENTANGLEMENT_INTENT}"><min-fidelity>{min_fidelity}</min-fidelity>'
            "</entanglement-service></intent></intents>")


class EntanglementDemo(Steps):
    async def run(self) -> int:
        from devices.topology import embedded_topology
        from tools.stack import Stack

        stack = Stack(embedded_topology(TOPOLOGY), insecure_sae_header=True)
        self.sessions: dict = {}
        try:
            if await self.step("Start the embedded entanglement network: 5 quantum nodes (2 end nodes, 3 repeaters), "
                               "fabric and entanglement service controllers, orchestrator", lambda: self._start(stack)):
                await self._story(stack)
        finally:
            print("shutting down ...", flush=True)
            for session in self.sessions.values():
                session.close()
            await stack.stop()
        return self.summary()

    async def _start(self, stack) -> str:
        from netconf_core import NetconfClient, trusted_host_keys
        from tools.entanglement_client import EntanglementClient

        await stack.start(self.timeout)
        rows = {r.name: r for r in stack.table()}
        for name in ("orchestrator", "fibre-plant"):
            row = rows[name]
            self.sessions[name] = await NetconfClient.connect(row.host, row.port, *row.read_write,
                                                              known_hosts=trusted_host_keys(row.host_key))
        for node in (ALICE, BOB):
            row = rows[node]
            self.sessions[node] = await EntanglementClient.connect(row.host, row.port, *row.read_write, row.host_key)
        return f"{len(rows)} NETCONF servers on 127.0.0.1; orchestrator at port {rows['orchestrator'].port}"

    async def _intent(self, name: str) -> dict:
        intents = read_intents(await self.sessions["orchestrator"].get(("subtree", INTENTS_FILTER)))
        if name not in intents:
            raise StepFailed(f"the orchestrator has no intent {name}")
        return intents[name]

    async def _until(self, name: str, done) -> dict:
        try:
            async with asyncio.timeout(self.timeout):
                while not done(intent := await self._intent(name)):
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            intent = await self._intent(name)
            raise StepFailed(f"intent {name} is {intent.get('state')} after {self.timeout:g} s: "
                             f"{intent.get('reason')}") from None
        return intent

    async def _push(self, name: str, min_fidelity: float) -> None:
        orchestrator = self.sessions["orchestrator"]
        await orchestrator.edit_config(intent_edit(name, min_fidelity), target="candidate")
        await orchestrator.commit()

    async def _pairs(self, number: int, **request) -> str:
        alice, bob = self.sessions[ALICE], self.sessions[BOB]
        created = await alice.create(BOB, number, MIN_FIDELITY, **request)
        received = await bob.receive(ALICE)
        if [p.pair_id for p in created] != [p.pair_id for p in received] or len(created) != number:
            raise StepFailed(f"{len(created)} pairs at {ALICE}, {len(received)} at {BOB}, ids differ")
        return created, received

    async def _story(self, stack) -> None:
        state: dict = {}

        async def active() -> str:
            await self._push(NAME, MIN_FIDELITY)
            intent = await self._until(NAME, lambda i: i.get("state") in ("active", "failed"))
            if intent["state"] != "active":
                raise StepFailed(f"intent {NAME} failed: {intent['reason']}")
            state["path"] = intent["paths"][0]["nodes"]
            return f"active: {intent['reason']}"

        async def keep() -> str:
            created, _ = await self._pairs(10)
            first = created[0]
            return (f"10 pairs at {ALICE} and the other halves at {BOB}, same ids (first {first.pair_id}, "
                    f"goodness {first.goodness:.3f}, {first.bell_state}, time of goodness {first.time_of_goodness:.3f} s); "
                    f"goodness {min(p.goodness for p in created):.3f}..{max(p.goodness for p in created):.3f}")

        async def measured() -> str:
            created, received = [], []
            while len(created) < MEASURED:
                a, b = await self._pairs(50, measure=True, bases=("Z", "X"))
                created += a
                received += b
            same = [(a, b) for a, b in zip(created, received) if a.basis == b.basis]
            agree = sum(a.outcome == b.outcome for a, b in same) / len(same)
            w = sum((4 * a.goodness - 1) / 3 for a, _ in same) / len(same)
            predicted, sigma = (1 + w) / 2, math.sqrt(0.25 / len(same))
            if abs(agree - predicted) > 4 * sigma:
                raise StepFailed(f"outcomes agree in {agree:.3f} of same-basis pairs, {predicted:.3f} predicted")
            return (f"{len(created)} pairs measured in Z or X at each end: {len(same)} in the same basis agree in "
                    f"{agree:.3f} of cases, (1 + w)/2 = {predicted:.3f} predicted by their fidelity (sigma {sigma:.3f})")

        async def cut() -> str:
            path = state["path"]
            spans = {(s.a.node, s.b.node): s.id for s in stack.topology.spans}
            sites = {n.id: n.site for n in stack.topology.quantum_nodes}
            hop = (sites[path[1]], sites[path[2]])
            span = spans.get(hop) or spans.get(hop[::-1])
            await self.sessions["fibre-plant"].dispatch(
                f'<cut-span xmlns="{FIBRE_PLANT}"><span-id>{span}</span-id></cut-span>')
            intent = await self._until(NAME, lambda i: i.get("state") == "active" and i["paths"]
                                       and i["paths"][0]["nodes"] != path)
            moves = " -> ".join(t.get("to", "") for t in intent["history"][-2:])
            return f"span {span} cut; the intent went {moves}: {intent['reason']}"

        async def again() -> str:
            created, _ = await self._pairs(5)
            return f"5 more pairs at both ends over the new path, goodness >= {min(p.goodness for p in created):.3f}"

        async def refused() -> str:
            await self._push("too-good", TOO_HIGH)
            intent = await self._until("too-good", lambda i: i.get("state") == "failed")
            return f"intent too-good (F >= {TOO_HIGH}) failed: {intent['reason']}"

        for title, action in ((f"Entanglement intent {NAME}: pairs at F >= {MIN_FIDELITY} between {SOURCE} and "
                               f"{DESTINATION}", active),
                              ("Create-and-keep pairs at both end nodes", keep),
                              ("A measured-directly batch and its correlations", measured),
                              ("Cut a fibre span under the path", cut),
                              ("Pairs again after the re-route", again),
                              (f"An infeasible fidelity (F >= {TOO_HIGH})", refused)):
            if not await self.step(title, action):
                break
