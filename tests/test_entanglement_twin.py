"""The quantum nodes of one network spread over device hosts that share only the network's
twin service, which keeps the physics of their links and pairs: the end nodes and the
repeaters run in three hosts (each with its own twin client, over HTTP), a session planned by
the controllers delivers pairs at both ends with the same ids; the service serves each node
its own state and pair halves only, each half once, and refuses bad requests precisely."""
from __future__ import annotations

from entanglement_net import SPLIT, EntanglementNet, run
from devices.twin_service import TwinClient, TwinError
from models import entanglement as em, quantum_node as qm

CHAIN = ("qn-alice", "qn-r1", "qn-r2", "qn-bob")


async def active(net: EntanglementNet, name: str = "pairs") -> em.SessionStatus:
    nc = await net.session("entanglement")
    await nc.edit_config(em.SessionRequest(name, "app-alice", "app-bob", 0.8, pair_rate=5).config())

    async def reached():
        data = await nc.get(filter=("subtree", em.FILTER))
        session = em.EntanglementView.parse(data).sessions.get(name)
        return session if session is not None and session.status == "active" else None
    return await net.until(reached, 20)


async def as_device(net: EntanglementNet, device: str) -> TwinClient:
    """A twin client speaking as `device` (with the network's token, as any of its processes)."""
    client = TwinClient(net.hosts[0].network.twin_service, device=device)
    await client.start()
    net.stack.push_async_callback(client.stop)
    return client


async def refused(call) -> TwinError:
    try:
        await call
    except TwinError as error:
        return error
    raise AssertionError("the twin service accepted it")


def test_pairs_are_delivered_across_device_hosts_with_matching_ids(tmp_path):
    async def test(net: EntanglementNet):
        assert [set(h.devices) for h in net.hosts] == list(SPLIT)   # three hosts, nothing shared but the service
        session = await active(net)
        assert session.path == CHAIN
        alice, bob = await net.session("qn-alice"), await net.session("qn-bob")
        created = qm.read_pairs(await alice.dispatch(qm.create_request("qn-bob", 10, min_fidelity=0.8)))
        received = qm.read_pairs(await bob.dispatch(qm.receive_request("qn-alice")))
        assert len(created) == 10 and [p.pair_id for p in created] == [p.pair_id for p in received]
        assert [p.goodness for p in created] == [p.goodness for p in received]
        assert all(p.goodness >= 0.8 and p.remote_node == "qn-bob" for p in created)
        assert all(p.remote_node == "qn-alice" for p in received)
        assert qm.read_pairs(await bob.dispatch(qm.receive_request("qn-alice"))) == []   # each half once
        r1 = qm.read_state((await (await net.session("qn-r1")).get(filter=("subtree", qm.FILTER)))[0])
        assert r1.links["el-alice-r1"].status == "up" and r1.links["el-alice-r1"].pairs_generated > 0
        assert r1.sessions["pairs"].pairs_delivered == 0   # a repeater holds no delivered pair
    run(tmp_path, test, split=True)


def test_the_twin_service_serves_a_quantum_node_only_its_own(tmp_path):
    async def test(net: EntanglementNet):
        await active(net)
        r1, mallory = await as_device(net, "qn-r1"), await as_device(net, "qn-bob")
        error = await refused(r1.request("GET", "/quantum-nodes/qn-alice"))
        assert error.status == 403 and "qn-r1" in str(error)
        for resource in ("pairs/claim", "pairs/receive"):
            error = await refused(r1.request("POST", f"/quantum-nodes/qn-bob/{resource}",
                                             body={"remote": "qn-alice", "number": 1, "min_fidelity": 0.5}))
            assert error.status == 403
        error = await refused(r1.request("PUT", "/quantum-nodes/qn-alice",
                                         body={"config": None, "failed_qubits": 0, "coherence_factor": 1}))
        assert error.status == 403
        # A repeater is no end of the session: nothing to claim from it.
        reply = await r1.request("POST", "/quantum-nodes/qn-r1/pairs/claim",
                                 body={"remote": "qn-bob", "number": 1, "min_fidelity": 0.5})
        assert reply["pairs"] == [] and "no session between qn-r1 and qn-bob" in reply["reason"]
        # The halves a claim at Alice queues for Bob go to Bob's node only, once.
        alice = await net.session("qn-alice")
        created = qm.read_pairs(await alice.dispatch(qm.create_request("qn-bob", 3, min_fidelity=0.8)))
        taken = await mallory.request("POST", "/quantum-nodes/qn-bob/pairs/receive",
                                      body={"remote": "qn-alice", "number": 10})
        assert [p["pair_id"] for p in taken["pairs"]] == [p.pair_id for p in created]
        bob = await net.session("qn-bob")
        assert qm.read_pairs(await bob.dispatch(qm.receive_request("qn-alice"))) == []
    run(tmp_path, test, split=True)


def test_bad_quantum_requests_get_a_precise_error(tmp_path):
    async def test(net: EntanglementNet):
        r1 = await as_device(net, "qn-r1")
        base = "/quantum-nodes/qn-r1"
        for body, words in (({"remote": "qn-bob", "number": 0, "min_fidelity": 0.5}, "number (an integer >= 1)"),
                            ({"remote": "qn-bob", "number": 1, "min_fidelity": 2}, "min_fidelity must be"),
                            ({"remote": "qn-bob", "number": 1, "min_fidelity": 0.5, "bases": "Z"},
                             "bases a list")):
            error = await refused(r1.request("POST", f"{base}/pairs/claim", body=body))
            assert error.status == 400 and words in str(error), str(error)
        for body, words in (({"config": "<quantum-node", "failed_qubits": 0, "coherence_factor": 1},
                             "not a quantum node registration"),
                            ({"config": "<other/>", "failed_qubits": 0, "coherence_factor": 1}, "<quantum-node>"),
                            ({"config": None, "failed_qubits": -1, "coherence_factor": 1}, "failed_qubits"),
                            ({"config": None, "failed_qubits": 0, "coherence_factor": 0.5}, "coherence_factor")):
            error = await refused(r1.request("PUT", base, body=body))
            assert error.status == 400 and words in str(error), str(error)
        state = await r1.request("GET", base)   # the refused registrations changed nothing
        assert set(state["links"]) == {"el-alice-r1", "el-r1-r2"} and state["failed_qubits"] == 0
        error = await refused(r1.request("GET", "/quantum-nodes/nobody", device="nobody"))
        assert error.status == 404
    run(tmp_path, test, service=False, split=True)
