"""Entanglement intents end to end: the whole stack of the embedded entanglement network
(devices, the three QKD strata, the fabric and entanglement service controllers, the
orchestrator), spoken to over NETCONF as an operator would. An intent for pairs at F >= 0.8
goes active with its conditions, pairs reach both end nodes, a fibre cut under its path
re-routes it (repairing, then active again), an infeasible fidelity fails with the planner's
reason, a deleted intent's session is removed, and a repeater left with too few storage qubits
fails the intent naming it until the memory is back. The orchestrator's get is checked by
yanglint."""
from __future__ import annotations

import asyncio

from lxml import etree

from device_checks import validated_get
from devices.base import DEMO_PASSWORDS
from devices.plant import NS as PLANT_NS
from devices.topology import embedded_topology
from models import entanglement as em, quantum_node as qm
from models.intent import INTENTS_FILTER, read_intents
from models.ns import ENTANGLEMENT_INTENT as EI, INTENT, QUANTUM_NODE as QN
from netconf_core import NetconfClient, trusted_host_keys
from netconf_core.ns import BASE
from tools.stack import Stack


def intent_xml(name: str, min_fidelity: float, extra: str = "") -> str:
    return (f'<intents xmlns="{INTENT}"><intent><name>{name}</name><endpoints><source-sae>app-alice</source-sae>'
            "<destination-sae>app-bob</destination-sae></endpoints><min-rate>1</min-rate>"
            f'<entanglement-service xmlns="{EI}"><min-fidelity>{min_fidelity}</min-fidelity>{extra}'
            "</entanglement-service></intent></intents>")


async def connect(stack: Stack, name: str) -> NetconfClient:
    row = next(r for r in stack.table() if r.name == name)
    return await NetconfClient.connect(row.host, row.port, "admin", "admin", known_hosts=trusted_host_keys(row.host_key))


async def intent_of(orchestrator: NetconfClient, name: str, tmp_path) -> tuple[dict, etree._Element]:
    data = await validated_get(orchestrator, INTENTS_FILTER, tmp_path)
    element = next(i for i in INTENT.all(data, "intent") if INTENT.text(i, "name") == name)
    return read_intents(data.getparent())[name], element


async def until_state(orchestrator, name: str, states: set[str], tmp_path, timeout: float = 30.0):
    async with asyncio.timeout(timeout):
        while True:
            intent, element = await intent_of(orchestrator, name, tmp_path)
            if intent.get("state") in states:
                return intent, element
            await asyncio.sleep(0.2)


def test_entanglement_intent_lifecycle(tmp_path):
    async def main():
        stack = Stack(embedded_topology("entanglement.yaml"), passwords=DEMO_PASSWORDS, insecure_sae_header=True)
        await stack.start()
        sessions = []
        try:
            orchestrator = await connect(stack, "orchestrator")
            sessions.append(orchestrator)
            await orchestrator.edit_config(intent_xml("bell", 0.8), target="candidate")
            await orchestrator.commit()
            intent, element = await until_state(orchestrator, "bell", {"active", "failed"}, tmp_path)
            assert intent["state"] == "active", intent["reason"]
            assert intent["paths"][0]["nodes"] == ["qn-alice", "qn-r1", "qn-r2", "qn-bob"]
            conditions = {c["type"].rpartition(":")[2]: c["status"] for c in intent["conditions"]}
            assert conditions == {"path-found": "true", "installed": "true", "fidelity-met": "true",
                                  "rate-met": "true", "ready": "true"}
            assert float(EI.text(element, "entanglement-service/plan/expected-fidelity")) >= 0.8
            assert EI.text(element, "entanglement-service/session") == "bell"

            alice, bob = await connect(stack, "qn-alice"), await connect(stack, "qn-bob")
            sessions += [alice, bob]
            created = qm.read_pairs(await alice.dispatch(qm.create_request("qn-bob", 3, min_fidelity=0.8)))
            received = qm.read_pairs(await bob.dispatch(qm.receive_request("qn-alice")))
            assert len(created) == 3 and [p.pair_id for p in created] == [p.pair_id for p in received]

            plant = await connect(stack, "fibre-plant")
            sessions.append(plant)
            await plant.dispatch(f'<cut-span xmlns="{PLANT_NS}"><span-id>alice-r1</span-id></cut-span>')
            async with asyncio.timeout(30):
                while True:
                    intent, _ = await until_state(orchestrator, "bell", {"active"}, tmp_path)
                    if intent["paths"][0]["nodes"] == ["qn-alice", "qn-r3", "qn-bob"]:
                        break
                    await asyncio.sleep(0.2)
            moves = [(t.get("from"), t.get("to")) for t in intent["history"]]
            assert ("active", "repairing") in moves and moves[-1] == ("repairing", "active")

            await orchestrator.edit_config(intent_xml("perfect", 0.99), target="candidate")
            await orchestrator.commit()
            intent, element = await until_state(orchestrator, "perfect", {"failed"}, tmp_path)
            assert intent["reason"].startswith("best achievable fidelity ") and "< 0.99 requested" in intent["reason"]
            best = float(EI.text(element, "entanglement-service/best-achievable-fidelity"))
            assert f"{best:.2f}" in intent["reason"]
            conditions = {c["type"].rpartition(":")[2]: c["status"] for c in intent["conditions"]}
            assert conditions["fidelity-met"] == "false" and conditions["path-found"] == "false"

            await orchestrator.edit_config(f'<intents xmlns="{INTENT}" xmlns:nc="{BASE}"><intent nc:operation='
                                           f'"delete"><name>perfect</name></intent></intents>', target="candidate")
            await orchestrator.commit()
            service = await connect(stack, "entanglement")
            sessions.append(service)
            async with asyncio.timeout(15):
                while "perfect" in em.EntanglementView.parse(await service.get(("subtree", em.FILTER))).requests:
                    await asyncio.sleep(0.2)

            # Memory bounds the plan: r3, the only way since the cut, left with one storage qubit in
            # service cannot hold a pair on each side; the intent fails naming it, and recovers.
            r3 = await connect(stack, "qn-r3")
            sessions.append(r3)
            await r3.dispatch(f'<inject-memory-failure xmlns="{QN}"><qubits>3</qubits></inject-memory-failure>')
            intent, _ = await until_state(orchestrator, "bell", {"failed"}, tmp_path)
            assert intent["reason"] == "repeater qn-r3 has 1 storage qubit, the plan needs 2 (no purification)"
            await r3.dispatch(f'<clear-memory-failure xmlns="{QN}"/>')
            intent, _ = await until_state(orchestrator, "bell", {"active"}, tmp_path)
            assert intent["paths"][0]["nodes"] == ["qn-alice", "qn-r3", "qn-bob"]
        finally:
            for nc in sessions:
                nc.close()
            await stack.stop()
    asyncio.run(asyncio.wait_for(main(), 150))
