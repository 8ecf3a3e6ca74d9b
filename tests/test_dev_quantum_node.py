"""Quantum nodes over real NETCONF sessions, on a network of two end nodes joined by one 10 km
elementary link (and a repeater on a second span for the refusals): the link's success
probability, attempt cycle, rate and fidelity against the entanglement reference's formulas,
the pairs made over an interval, the decay of a stored pair over a wait, memory capacity,
cut-off, the fibre cut and the faults; every <get> and notification checked by yanglint.

The expected figures are computed here from the reference's formulas, not by the library the
devices use."""
from __future__ import annotations

import asyncio
import math
from contextlib import AsyncExitStack

import pytest
from lxml import etree

from device_checks import next_notification, validated_get
from devices.host import DeviceHost
from devices.plant import NS as PLANT_NS
from devices.topology import parse_topology
from models import quantum_node as qm
from models.ns import QUANTUM_NODE as QN
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError

ALPHA, LENGTH_KM, P_EMIT, BRIGHT = 0.2, 10.0, 0.111, 0.1
TOPOLOGY = {
    "name": "two-nodes",
    "sites": [{"id": "a"}, {"id": "b"}, {"id": "m"}],
    "spans": [{"id": "a-b", "a": "a:1", "b": "b:1", "length_km": LENGTH_KM},
              {"id": "a-m", "a": "a:2", "b": "m:1", "length_km": 5}],
    "quantum_nodes": [
        {"id": "qa", "site": "a", "role": "end-node", "applications": ["app-a"], "storage_qubits": 1,
         "bright_state_population": BRIGHT, "interfaces": [{"name": "east", "attach": "a:1"},
                                                           {"name": "north", "attach": "a:2"}]},
        {"id": "qb", "site": "b", "role": "end-node", "storage_qubits": 1, "bright_state_population": BRIGHT,
         "interfaces": [{"name": "west", "attach": "b:1"}]},
        {"id": "qm", "site": "m", "role": "repeater", "interfaces": [{"name": "south", "attach": "m:1"}]},
    ],
    "entanglement_links": [{"id": "l-ab", "a": "qa:east", "b": "qb:west"},
                           {"id": "l-am", "a": "qa:north", "b": "qm:south"}],
}


def reference_link() -> tuple[float, float, float, float]:
    """Reference, 'Elementary link': eta_arm = p_emit * 10^(-alpha*(L/2)/10) * eta_det,
    single-click p = 2*a*eta_arm, T_cycle = L/c (c = 2e8 m/s), rate = p/T_cycle, F = 1 - a."""
    eta_arm = P_EMIT * 10 ** (-ALPHA * (LENGTH_KM / 2) / 10) * 1.0
    p = 2 * BRIGHT * eta_arm
    cycle = LENGTH_KM * 1e3 / 2.0e8
    return p, cycle, p / cycle, 1 - BRIGHT


def session_xml(name: str = "s", max_age: float | None = None) -> str:
    age = f"<max-age>{max_age}</max-age>" if max_age is not None else ""
    return (f'<quantum-node xmlns="{QN}"><sessions><session><name>{name}</name>'
            "<hop><index>0</index><node-id>qa</node-id><link-id>l-ab</link-id></hop>"
            f"<hop><index>1</index><node-id>qb</node-id></hop>{age}</session></sessions></quantum-node>")


class Net:
    def __init__(self, host: DeviceHost, sessions: dict[str, NetconfClient], tmp_path) -> None:
        self.host, self.sessions, self.tmp_path = host, sessions, tmp_path

    async def node(self, name: str):
        return await validated_get(self.sessions[name], qm.FILTER, self.tmp_path)

    async def link(self, name: str, link_id: str) -> qm.LinkState:
        return qm.read_state(await self.node(name)).links[link_id]

    async def session(self, name: str, session: str = "s") -> qm.SessionState:
        return qm.read_state(await self.node(name)).sessions[session]

    async def until(self, condition, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)

    async def configure_session(self, max_age: float | None = None) -> None:
        for name in ("qa", "qb"):
            await self.sessions[name].edit_config(session_xml(max_age=max_age))


def run(tmp_path, test) -> None:
    async def main():
        async with AsyncExitStack() as stack:
            host = DeviceHost(parse_topology(TOPOLOGY, "test"), seed=7)
            await host.start()
            stack.push_async_callback(host.stop)
            sessions = {}
            for name in ("qa", "qb", "qm", "fibre-plant"):
                sessions[name] = await stack.enter_async_context(
                    await NetconfClient.connect("127.0.0.1", host.device(name).port, "admin", "admin"))
            await test(Net(host, sessions, tmp_path))
    asyncio.run(asyncio.wait_for(main(), 60))


def test_link_figures_follow_the_reference_formulas(tmp_path):
    async def test(net: Net):
        p, cycle, rate, fidelity = reference_link()
        for name in ("qa", "qb"):
            link = await net.link(name, "l-ab")
            assert link.status == "up"
            assert link.channel_loss == pytest.approx(ALPHA * LENGTH_KM)
            assert link.success_probability == pytest.approx(p, abs=1e-6)
            assert link.attempt_cycle_s == pytest.approx(cycle)
            assert link.generation_rate == pytest.approx(rate, rel=1e-5)
            assert link.fidelity == pytest.approx(fidelity)
        assert (await net.node("qa")).findtext(QN("decoherence-rate")) == "1.0"  # 1/T2, T2 = 1 s
    run(tmp_path, test)


def test_pairs_made_over_an_interval_match_the_rate(tmp_path):
    async def test(net: Net):
        await net.configure_session()
        start = (await net.link("qa", "l-ab")).pairs_generated
        begin = net.host.clock.now()
        await asyncio.sleep(2.0)
        made = (await net.link("qa", "l-ab")).pairs_generated - start
        expected = reference_link()[2] * (net.host.clock.now() - begin)
        assert abs(made - expected) < 5 * math.sqrt(expected) + 20, (made, expected)  # Poisson, 5 sigma
        state = await net.session("qa")
        assert state.status == "active" and state.pairs_delivered > 0
        assert state.delivered_fidelity == pytest.approx(1 - BRIGHT)  # delivered as soon as made: no decay
        assert (await net.node("qa")).find(f"{QN('storage-qubits')}/{QN('in-use')}").text == "1"  # capacity 1
    run(tmp_path, test)


def test_a_stored_pair_decays_while_it_waits(tmp_path):
    """Depolarising memory, both halves stored: w(t) = w0 exp(-t (1/T_A + 1/T_B)). The link is
    stopped so that the one pair held (capacity 1) waits; its goodness at hand-over follows."""
    async def test(net: Net):
        await net.configure_session()
        await net.until(lambda: _waiting(net))
        disable = f'<quantum-node xmlns="{QN}"><elementary-links><link><link-id>l-ab</link-id>' \
                  "<enabled>false</enabled></link></elementary-links></quantum-node>"
        await net.sessions["qb"].edit_config(disable)
        stopped = net.host.clock.now()   # the pair held was made before this
        await asyncio.sleep(0.5)
        reply = await net.sessions["qa"].dispatch(qm.create_request("qb", 1, min_fidelity=0.0, max_time_s=1))
        (pair,) = qm.read_pairs(reply)
        waited_at_least = pair.time_of_goodness - stopped
        w0 = (4 * (1 - BRIGHT) - 1) / 3
        highest = (1 + 3 * w0 * math.exp(-waited_at_least * 2.0)) / 4
        lowest = (1 + 3 * w0 * math.exp(-(waited_at_least + 0.1) * 2.0)) / 4  # made at most 0.1 s before
        assert lowest <= pair.goodness <= highest + 1e-6, (lowest, pair.goodness, highest)
        assert pair.bell_state == "phi-plus" and pair.remote_node == "qb"
        (other,) = qm.read_pairs(await net.sessions["qb"].dispatch(qm.receive_request("qa")))
        assert (other.pair_id, other.goodness, other.remote_node) == (pair.pair_id, pair.goodness, "qa")
        assert qm.read_pairs(await net.sessions["qb"].dispatch(qm.receive_request("qa"))) == []  # served once
    run(tmp_path, test)


async def _waiting(net: Net) -> bool:
    return (await net.session("qa")).pairs_waiting >= 1


def test_cut_off_discards_pairs_older_than_max_age(tmp_path):
    async def test(net: Net):
        await net.configure_session(max_age=0.05)
        await net.until(lambda: _waiting(net))
        await net.sessions["qb"].edit_config(
            f'<quantum-node xmlns="{QN}"><elementary-links><link><link-id>l-ab</link-id>'
            "<enabled>false</enabled></link></elementary-links></quantum-node>")
        await asyncio.sleep(0.3)
        state = await net.session("qa")
        assert state.pairs_waiting == 0 and state.pairs_discarded >= 1
        with pytest.raises(RPCError) as refused:
            await net.sessions["qa"].dispatch(qm.create_request("qb", 1, max_time_s=0.2))
        assert refused.value.tag == "resource-denied" and "no time left" in refused.value.message
        assert "link l-ab is down" in refused.value.message
    run(tmp_path, test)


def test_fibre_cut_takes_the_link_down_and_repair_brings_it_back(tmp_path):
    async def test(net: Net):
        await net.until(lambda: _up(net))
        await net.sessions["qa"].create_subscription()
        await net.sessions["fibre-plant"].dispatch(f'<cut-span xmlns="{PLANT_NS}"><span-id>a-b</span-id></cut-span>')
        event = await next_notification(net.sessions["qa"], QN("link-status-change"), net.tmp_path)
        while event.findtext(QN("status")) != "down":
            event = await next_notification(net.sessions["qa"], QN("link-status-change"), net.tmp_path)
        assert event.findtext(QN("link-id")) in ("l-ab",) and "span a-b cut" in event.findtext(QN("reason"))
        link = await net.link("qa", "l-ab")
        assert link.status == "down" and link.generation_rate == 0 and link.reason == "span a-b cut"
        await net.sessions["fibre-plant"].dispatch(
            f'<repair-span xmlns="{PLANT_NS}"><span-id>a-b</span-id></repair-span>')
        await net.until(lambda: _up(net))
    run(tmp_path, test)


async def _up(net: Net) -> bool:
    return (await net.link("qa", "l-ab")).status == "up"


def test_faults_coherence_loss_and_memory_failure(tmp_path):
    """Each fault and its clearing changes the node's state and sends a memory-alarm (checked
    by yanglint) saying what it did."""
    async def test(net: Net):
        qa = net.sessions["qa"]
        await qa.create_subscription()
        alarm = QN("memory-alarm")
        await qa.dispatch(f'<inject-coherence-loss xmlns="{QN}"><factor>50</factor></inject-coherence-loss>')
        event = await next_notification(qa, alarm, net.tmp_path)
        assert [event.findtext(QN(t)) for t in ("fault", "raised", "decoherence-rate", "storage-qubits-in-service")] \
            == ["coherence-loss", "true", "50.0", "1"]
        assert (await net.node("qa")).findtext(QN("decoherence-rate")) == "50.0"
        await qa.dispatch(f'<clear-coherence-loss xmlns="{QN}"/>')
        event = await next_notification(qa, alarm, net.tmp_path)
        assert (event.findtext(QN("raised")), event.findtext(QN("decoherence-rate"))) == ("false", "1.0")
        assert (await net.node("qa")).findtext(QN("decoherence-rate")) == "1.0"
        await net.configure_session()
        await net.until(lambda: _waiting(net))
        await qa.dispatch(f'<inject-memory-failure xmlns="{QN}"><qubits>1</qubits></inject-memory-failure>')
        event = await next_notification(qa, alarm, net.tmp_path)
        assert [event.findtext(QN(t)) for t in ("fault", "raised", "storage-qubits-in-service")] \
            == ["memory-failure", "true", "0"]
        assert int(event.findtext(QN("pairs-lost"))) >= 1   # the pair waiting at qa had no qubit left
        await asyncio.sleep(0.2)
        node = await net.node("qa")
        assert node.findtext(QN("failed-storage-qubits")) == "1"
        assert node.find(f"{QN('storage-qubits')}/{QN('in-use')}").text == "0"
        assert (await net.session("qa")).pairs_waiting == 0   # no qubit left to hold a pair
        await qa.dispatch(f'<clear-memory-failure xmlns="{QN}"/>')
        event = await next_notification(qa, alarm, net.tmp_path)
        assert (event.findtext(QN("raised")), event.findtext(QN("storage-qubits-in-service"))) == ("false", "1")
        await net.until(lambda: _waiting(net))
    run(tmp_path, test)


@pytest.mark.parametrize("edit, message", [
    ("<node-id>qb</node-id>", "node-id qb is not this node's"),
    ("<interfaces><interface><name>west</name></interface></interfaces>", "qa has no interface west"),
    ("<sessions><session><name>x</name><hop><index>0</index><node-id>qa</node-id><link-id>l-am</link-id></hop>"
     "<hop><index>1</index><node-id>qb</node-id></hop></session></sessions>",
     "qa has no elementary link l-am to qb"),
    ("<sessions><session><name>x</name><hop><index>0</index><node-id>qb</node-id><link-id>l-ab</link-id></hop>"
     "<hop><index>1</index><node-id>qm</node-id></hop></session></sessions>", "qa is not on its path"),
    ("<sessions><session><name>x</name><hop><index>0</index><node-id>qb</node-id><link-id>l-ab</link-id></hop>"
     "<hop><index>1</index><node-id>qa</node-id><link-id>l-am</link-id></hop>"
     "<hop><index>2</index><node-id>qm</node-id></hop></session></sessions>",
     "the swap steps of the inner nodes must be 1..1"),
])
def test_bad_configuration_is_refused_and_changes_nothing(tmp_path, edit, message):
    async def test(net: Net):
        before = await net.sessions["qa"].get_config()
        with pytest.raises(RPCError) as refused:
            await net.sessions["qa"].edit_config(f'<quantum-node xmlns="{QN}">{edit}</quantum-node>')
        assert refused.value.tag == "invalid-value" and message in refused.value.message, refused.value.message
        assert etree.tostring(await net.sessions["qa"].get_config()) == etree.tostring(before)
    run(tmp_path, test)


def test_delivery_refuses_what_it_cannot_serve(tmp_path):
    async def test(net: Net):
        with pytest.raises(RPCError) as refused:
            await net.sessions["qa"].dispatch(qm.create_request("qb", 1))
        assert "no entanglement session between qa and qb" in refused.value.message
        with pytest.raises(RPCError) as refused:
            await net.sessions["qm"].dispatch(qm.create_request("qa", 1))
        assert refused.value.tag == "operation-not-supported" and "qm is not an end node" in refused.value.message
    run(tmp_path, test)
