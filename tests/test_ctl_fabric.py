"""The fabric controller over the embedded entanglement network: the RFC 8345 entanglement
fabric it discovers from the quantum nodes (read with ncclient and over our client, checked by
yanglint), a client edit of it refused, and entanglement-link-change when a fibre cut takes an
elementary link down and its repair brings it back; and, in a whole stack, the optical path it
asks of the connectivity controller for a link whose light crosses a switch."""
from __future__ import annotations

import asyncio

import pytest
from lxml import etree
from ncclient import manager

from device_checks import next_notification, yanglint
from devices.plant import NS as PLANT_NS
from entanglement_net import EntanglementNet, run
from models import fabric as fm, quantum_node as qm
from models.ns import FABRIC, NW, QUANTUM_NODE as QN
from netconf_core.errors import RPCError

LINKS = {"el-alice-r1", "el-r1-r2", "el-r2-bob", "el-alice-r3", "el-r3-bob"}


def test_fabric_is_discovered_from_the_nodes_and_valid(tmp_path):
    async def test(net: EntanglementNet):
        def with_ncclient() -> bytes:
            with manager.connect(host="127.0.0.1", port=net.fabric.port, username="admin", password="admin",
                                 hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30) as m:
                return m.get(filter=("subtree", fm.FILTER)).data_xml.encode()
        data = etree.fromstring(await asyncio.to_thread(with_ncclient))
        yanglint("data", list(data), net.tmp_path)
        view = fm.FabricView.parse(data)
        assert set(view.nodes) == {n.id for n in net.topology.quantum_nodes}
        assert view.nodes["qn-r1"].role == "repeater" and view.nodes["qn-alice"].role == "end-node"
        assert view.nodes["qn-alice"].can_swap is False and view.nodes["qn-r1"].can_swap is True
        assert view.nodes["qn-r1"].swap_fidelity == pytest.approx(0.99)
        assert view.nodes["qn-r1"].decoherence_rate == pytest.approx(1.0)
        assert set(view.links) == LINKS
        node = await net.session("qn-r1")
        reported = qm.read_state((await node.get(("subtree", qm.FILTER)))[0]).links
        for link_id in ("el-alice-r1", "el-r1-r2"):
            link = view.links[link_id]
            assert link.up and link.generation_rate == pytest.approx(reported[link_id].generation_rate)
            assert link.fidelity == pytest.approx(0.95)
        chain = view.links["el-r1-r2"]
        assert (chain.a[0], chain.b[0]) == ("qn-r1", "qn-r2")  # source: the lower node-id
        assert view.links["el-alice-r3"].generation_rate < view.links["el-alice-r1"].generation_rate  # 25 vs 10 km
    run(tmp_path, test, service=False)


def test_a_client_cannot_edit_the_fabric(tmp_path):
    async def test(net: EntanglementNet):
        nc = await net.session("fabric")
        before = etree.tostring(await nc.get_config())
        with pytest.raises(RPCError) as refused:
            await nc.edit_config(f'<networks xmlns="{NW}"><network><network-id>fabric</network-id><node>'
                                 f'<node-id>intruder</node-id><quantum-node xmlns="{FABRIC}" xmlns:qn="{QN}">'
                                 "<role>qn:repeater</role></quantum-node></node></network></networks>")
        assert refused.value.tag == "invalid-value" and "discovered from the quantum nodes" in refused.value.message
        assert etree.tostring(await nc.get_config()) == before
    run(tmp_path, test, service=False)


def test_fibre_cut_sends_entanglement_link_change(tmp_path):
    async def test(net: EntanglementNet):
        nc = await net.session("fabric")
        await nc.create_subscription()
        plant = await net.session("fibre-plant")
        await plant.dispatch(f'<cut-span xmlns="{PLANT_NS}"><span-id>r1-r2</span-id></cut-span>')
        event = await next_notification(nc, FABRIC("entanglement-link-change"), net.tmp_path)
        while event.findtext(FABRIC("link-id")) != "el-r1-r2":
            event = await next_notification(nc, FABRIC("entanglement-link-change"), net.tmp_path)
        assert event.findtext(FABRIC("status")) == "down" and "span r1-r2 cut" in event.findtext(FABRIC("reason"))
        view = fm.FabricView.parse(await nc.get(("subtree", fm.FILTER)))
        assert view.links["el-r1-r2"].status == "down" and view.links["el-r1-r2"].generation_rate == 0
        await plant.dispatch(f'<repair-span xmlns="{PLANT_NS}"><span-id>r1-r2</span-id></repair-span>')
        event = await next_notification(nc, FABRIC("entanglement-link-change"), net.tmp_path)
        assert (event.findtext(FABRIC("link-id")), event.findtext(FABRIC("status"))) == ("el-r1-r2", "up")
    run(tmp_path, test, service=False)


SWITCHED = {
    "name": "switched",
    "sites": [{"id": "a"}, {"id": "m"}, {"id": "b"}],
    "switches": [{"id": "sw-m", "site": "m", "ports": [1, 2], "insertion_loss_db": 1.0}],
    "spans": [{"id": "a-m", "a": "a:1", "b": "sw-m:1", "length_km": 5},
              {"id": "m-b", "a": "sw-m:2", "b": "b:1", "length_km": 5}],
    "quantum_nodes": [
        {"id": "qa", "site": "a", "role": "end-node", "interfaces": [{"name": "east", "attach": "a:1"}]},
        {"id": "qb", "site": "b", "role": "end-node", "interfaces": [{"name": "west", "attach": "b:1"}]}],
    "entanglement_links": [{"id": "l-ab", "a": "qa:east", "b": "qb:west"}],
}


def test_a_link_across_a_switch_gets_its_optical_path_from_the_connectivity_controller(tmp_path):
    """The light of l-ab crosses switch sw-m: the fabric controller asks the connectivity
    controller for optical path l-ab, which makes the cross-connect; the link comes up with
    the loss of both spans and the cross-connect."""
    from devices.base import DEMO_PASSWORDS
    from devices.topology import parse_topology
    from models.connectivity import optical_paths_filter, read_path_names
    from netconf_core import NetconfClient, trusted_host_keys
    from tools.stack import Stack

    async def main():
        stack = Stack(parse_topology(SWITCHED, "switched"), passwords=DEMO_PASSWORDS, insecure_sae_header=True)
        await stack.start()
        clients = []
        try:
            rows = {r.name: r for r in stack.table()}
            for name in ("fabric", "connectivity", "qa"):
                clients.append(await NetconfClient.connect(rows[name].host, rows[name].port, "admin", "admin",
                                                           known_hosts=trusted_host_keys(rows[name].host_key)))
            fabric, connectivity, qa = clients
            async with asyncio.timeout(20):
                while not ((link := fm.FabricView.parse(await fabric.get(("subtree", fm.FILTER))).links.get("l-ab"))
                           and link.up):
                    await asyncio.sleep(0.2)
            assert "l-ab" in read_path_names(await connectivity.get_config(
                filter=("subtree", optical_paths_filter("fibre"))))
            link = qm.read_state((await qa.get(("subtree", qm.FILTER)))[0]).links["l-ab"]
            assert link.status == "up" and link.channel_loss == pytest.approx(5 * 0.2 * 2 + 1.0)
        finally:
            for client in clients:
                client.close()
            await stack.stop()
    asyncio.run(asyncio.wait_for(main(), 90))
