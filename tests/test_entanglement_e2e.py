"""End to end over real NETCONF on the embedded entanglement network (two end nodes, a chain
of two repeaters over 10 km spans and a second way through a third repeater over 25 km
spans): a session asked of the entanglement service controller is planned over the fabric,
installed on the nodes of its path, delivers pairs that both end nodes name with the same id;
a fibre cut under its path re-plans it over the other way; an infeasible fidelity is refused
with the planner's reason; a repeater whose memory failed is routed around; measure-directly
outcomes correlate as the pairs' fidelity says.
Every <get> of the service controller is checked by yanglint."""
from __future__ import annotations

import math

import pytest

from controller.entanglement import fabric_graph
from device_checks import validated_get
from devices.plant import NS as PLANT_NS
from entanglement_net import EntanglementNet, run
from entanglement_physics import Infeasible, plan
from models import entanglement as em, fabric as fm, quantum_node as qm
from models.ns import QUANTUM_NODE as QN
from netconf_core.errors import RPCError

CHAIN = ("qn-alice", "qn-r1", "qn-r2", "qn-bob")
DETOUR = ("qn-alice", "qn-r3", "qn-bob")


async def sessions(net: EntanglementNet, nc) -> em.EntanglementView:
    data = await validated_get(nc, em.FILTER, net.tmp_path)
    return em.EntanglementView.parse(data.getparent())


async def wait_status(net: EntanglementNet, nc, name: str, status: str, timeout: float = 15.0) -> em.SessionStatus:
    async def reached():
        session = (await sessions(net, nc)).sessions.get(name)
        return session if session is not None and session.status == status else None
    return await net.until(reached, timeout)


async def take_pairs(net: EntanglementNet, number: int, **request) -> tuple[list, list]:
    alice, bob = await net.session("qn-alice"), await net.session("qn-bob")
    created = qm.read_pairs(await alice.dispatch(qm.create_request("qn-bob", number, **request)))
    received = qm.read_pairs(await bob.dispatch(qm.receive_request("qn-alice")))
    return created, received


def test_session_delivers_pairs_at_both_ends_and_reroutes_after_a_cut(tmp_path):
    async def test(net: EntanglementNet):
        nc = await net.session("entanglement")
        await nc.edit_config(em.SessionRequest("pairs", "app-alice", "app-bob", 0.8, pair_rate=5).config())
        session = await wait_status(net, nc, "pairs", "active")
        assert session.path == CHAIN and session.expected_fidelity >= 0.8
        assert {h.swap_step for h in session.hops[1:-1]} == {1, 2}
        for node in CHAIN:   # the same entry on every node of the path
            config = qm.read_node((await (await net.session(node)).get_config(filter=("subtree", qm.FILTER)))[0])
            assert config.sessions["pairs"].path == CHAIN
        created, received = await take_pairs(net, 10, min_fidelity=0.8)
        assert len(created) == 10 and [p.pair_id for p in created] == [p.pair_id for p in received]
        assert all(p.goodness >= 0.8 and p.bell_state == "phi-plus" for p in created)
        assert [p.goodness for p in created] == [p.goodness for p in received]
        assert [p.sequence for p in created] == sorted(p.sequence for p in created)
        again, _ = await take_pairs(net, 5, min_fidelity=0.8)
        assert not {p.pair_id for p in again} & {p.pair_id for p in created}  # each pair served once

        plant = await net.session("fibre-plant")
        await plant.dispatch(f'<cut-span xmlns="{PLANT_NS}"><span-id>r1-r2</span-id></cut-span>')
        async def rerouted():
            s = (await sessions(net, nc)).sessions["pairs"]
            return s if s.status == "active" and s.path == DETOUR else None
        session = await net.until(rerouted, 20)
        assert session.links == ("el-alice-r3", "el-r3-bob")
        r1 = qm.read_node((await (await net.session("qn-r1")).get_config(filter=("subtree", qm.FILTER)))[0])
        assert "pairs" not in r1.sessions   # left by the session
        created, received = await take_pairs(net, 5, min_fidelity=0.8)
        assert len(created) == 5 and [p.pair_id for p in created] == [p.pair_id for p in received]
        assert session.delivered_pairs is not None
    run(tmp_path, test)


def test_a_session_routes_around_a_repeater_whose_memory_failed(tmp_path):
    """qn-r1 left with one storage qubit in service cannot hold a pair on each side: the fabric
    reports the qubits in service, and the session moves to the detour without a cut."""
    async def test(net: EntanglementNet):
        nc = await net.session("entanglement")
        await nc.edit_config(em.SessionRequest("pairs", "app-alice", "app-bob", 0.8, pair_rate=5).config())
        assert (await wait_status(net, nc, "pairs", "active")).path == CHAIN
        r1 = await net.session("qn-r1")
        await r1.dispatch(f'<inject-memory-failure xmlns="{QN}"><qubits>3</qubits></inject-memory-failure>')
        async def rerouted():
            s = (await sessions(net, nc)).sessions["pairs"]
            return s if s.status == "active" and s.path == DETOUR else None
        await net.until(rerouted, 20)
        fabric = fm.FabricView.parse(await (await net.session("fabric")).get(("subtree", fm.FILTER)))
        assert fabric.nodes["qn-r1"].storage_qubits == 1
        created, received = await take_pairs(net, 3, min_fidelity=0.8)
        assert len(created) == 3 and [p.pair_id for p in created] == [p.pair_id for p in received]
    run(tmp_path, test)


def test_infeasible_fidelity_is_refused_with_the_reason(tmp_path):
    async def test(net: EntanglementNet):
        nc = await net.session("entanglement")
        await nc.edit_config(em.SessionRequest("too-good", "app-alice", "app-bob", 0.99, pair_rate=1).config())
        session = await wait_status(net, nc, "too-good", "failed")
        fabric = fm.FabricView.parse(await (await net.session("fabric")).get(("subtree", fm.FILTER)))
        with pytest.raises(Infeasible) as expected:
            plan(fabric_graph(fabric), "qn-alice", "qn-bob", 0.99, max_rounds=3)
        assert session.reason == str(expected.value)
        assert session.best_fidelity == pytest.approx(expected.value.best_fidelity, abs=1e-6)
        assert session.reason.startswith("best achievable fidelity ") and session.reason.endswith(" < 0.99 requested")
        assert not session.hops
        with pytest.raises(RPCError) as refused:   # nothing is installed for it
            await (await net.session("qn-alice")).dispatch(qm.create_request("qn-bob", 1, max_time_s=0.2))
        assert "no entanglement session between qn-alice and qn-bob" in refused.value.message
    run(tmp_path, test)


def test_measure_directly_correlations_match_the_fidelity(tmp_path):
    """A Werner pair of parameter w = (4F - 1)/3: measured in the same basis at both ends, the
    outcomes agree (Z, X) or disagree (Y) with probability (1 + w)/2."""
    async def test(net: EntanglementNet):
        nc = await net.session("entanglement")
        await nc.edit_config(em.SessionRequest("bell", "app-alice", "app-bob", 0.8, pair_rate=5,
                                               delivery_type="measure-directly", bases=("Z", "X")).config())
        await wait_status(net, nc, "bell", "active")
        created, received = [], []
        while len(created) < 300:
            a, b = await take_pairs(net, 100, min_fidelity=0.8, kind="measure-directly", bases=("Z", "X"))
            created += a
            received += b
        assert [p.pair_id for p in created] == [p.pair_id for p in received]
        same = [(a, b) for a, b in zip(created, received) if a.basis == b.basis]
        assert 100 < len(same) < 200   # bases chosen at random at each end
        agree = sum(a.outcome == b.outcome for a, b in same) / len(same)
        w = sum((4 * a.goodness - 1) / 3 for a, _ in same) / len(same)
        sigma = math.sqrt(0.25 / len(same))
        assert abs(agree - (1 + w) / 2) < 4 * sigma, (agree, (1 + w) / 2, sigma)
        other = [(a, b) for a, b in zip(created, received) if a.basis != b.basis]
        assert abs(sum(a.outcome == b.outcome for a, b in other) / len(other) - 0.5) < 4 * math.sqrt(0.25 / len(other))
    run(tmp_path, test)


def test_a_repeaters_loss_of_coherence_reroutes_the_session(tmp_path):
    """A fault raising a repeater's decoherence rate 200-fold: the path through it no longer
    meets F >= 0.8, so the session moves to the other way (read at the fabric's resync)."""
    async def test(net: EntanglementNet):
        nc = await net.session("entanglement")
        await nc.edit_config(em.SessionRequest("pairs", "app-alice", "app-bob", 0.8, pair_rate=5).config())
        session = await wait_status(net, nc, "pairs", "active")
        assert session.path == CHAIN
        r2 = await net.session("qn-r2")
        await r2.dispatch(f'<inject-coherence-loss xmlns="{QN}"><factor>200</factor></inject-coherence-loss>')
        async def rerouted():
            s = (await sessions(net, nc)).sessions["pairs"]
            return s if s.status == "active" and s.path == DETOUR else None
        session = await net.until(rerouted, 20)
        assert session.expected_fidelity >= 0.8
    run(tmp_path, test)
