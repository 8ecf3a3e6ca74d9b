"""QKD node devices of the Madrid network over real NETCONF sessions, with the optical switches
and the fibre plant they stand on: PHYS links configured by hand become ACTIVE at the skr the
physics predicts for their path, go down when a span of the path is cut, raise an alarm when
an eavesdropper pushes the QBER over the threshold; VIRT links ride on PHYS links; node faults.

Nodes refresh at once on every plant or configuration change, so the tests never wait for a
period: the period is set long to show it.
"""
from __future__ import annotations

import asyncio
import random
import uuid
from contextlib import AsyncExitStack

import pytest
from lxml import etree

from device_checks import next_notification, validated_get, yanglint
from devices.base import NetworkContext
from devices.keystore import KeyNetwork
from devices.optical_switch import NS as SWITCH_NS
from devices.optical_switch import OpticalSwitchDevice
from devices.plant import NS as PLANT_NS
from devices.plant import FibrePlantDevice
from devices.qkd_node import QkdNodeDevice, node_uuid
from models.ns import ETSI_NODE as NS, NODE_EXT as EXT_NS
from devices.topology import build_twin, default_topology
from devices.twin import Clock
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from qkd_physics import AUTHENTICATION_SHARE, link_performance

BYPASS = str(uuid.UUID(int=0xB1))  # qkd-quintin if1 -- sw-concepcion 1-4 -- qkd-distrito if2
QA, AN = str(uuid.UUID(int=0xA1)), str(uuid.UUID(int=0xA2))  # quintin-almagro, almagro -- sw-norte 2-5 -- norte
VIRT = str(uuid.UUID(int=0xC1))  # quintin > almagro > norte
NODE = f'<qkd_node xmlns="{NS}"/>'
BYPASS_LOSS_DB = (4.1 + 15.3) * 0.2 + 1.0


def q(tag: str, ns: str = NS) -> str:
    return f"{{{ns}}}{tag}"


class Network:
    """Devices of the Madrid network on one event loop; an admin session to each."""

    def __init__(self, stack: AsyncExitStack, tmp_path) -> None:
        self.topology = default_topology()
        twin = build_twin(self.topology, Clock(speed=10.0), random.Random(3))
        self.context = NetworkContext(twin, KeyNetwork(twin.clock))
        self.stack = stack
        self.tmp_path = tmp_path
        self.devices: dict = {}
        self.sessions: dict[str, NetconfClient] = {}

    async def start(self, *names: str) -> None:
        for name in names:
            if name == "fibre-plant":
                device = FibrePlantDevice(self.topology, self.context)
            elif name.startswith("sw-"):
                device = OpticalSwitchDevice(next(s for s in self.topology.switches if s.id == name), self.context)
            else:
                device = QkdNodeDevice(next(n for n in self.topology.qkd_nodes if n.id == name), self.context)
                device.period = 60.0
            await device.start()
            self.stack.push_async_callback(device.stop)
            self.devices[name] = device
            self.sessions[name] = await self.stack.enter_async_context(
                await NetconfClient.connect("127.0.0.1", device.port, "admin", "admin"))

    async def node(self, name: str) -> etree._Element:
        return await validated_get(self.sessions[name], NODE, self.tmp_path)

    async def link(self, name: str, link_id: str) -> dict[str, str | None]:
        """The state of a link at a node: status, skr, eskr, expected_consumption and QBER."""
        link = next(e for e in (await self.node(name)).iter(q("qkd_link")) if e.findtext(q("qkdl_id")) == link_id)
        perf = link.find(q("qkdl_performance"))
        return {"status": link.findtext(q("qkdl_status")).split(":")[1],
                **{tag: perf.findtext(q(tag)) for tag in ("skr", "eskr", "expected_consumption")},
                "qber": perf.findtext(f"{q('phys_perf')}/{q('value')}")}

    async def notification(self, name: str, kind: str, ns: str = NS) -> etree._Element:
        return await next_notification(self.sessions[name], q(kind, ns), self.tmp_path)


def run(tmp_path, test, *names: str) -> None:
    async def main():
        async with AsyncExitStack() as stack:
            network = Network(stack, tmp_path)
            await network.start(*names)
            await test(network)
    asyncio.run(asyncio.wait_for(main(), 40))


def link_type(name: str) -> str:
    # The prefix is declared on the leaf itself: the engine's edit-config merge of an existing
    # leaf copies the leaf alone, dropping declarations made on its ancestors.
    return f'<qkdl_type xmlns:t="urn:etsi:qkd:yang:etsi-qkd-node-types">t:{name}</qkdl_type>'


def phys_link(link_id: str, local_if: int, remote: str, remote_if: int, local: str | None = None) -> str:
    local_node = f"<qkdn_id>{node_uuid(local)}</qkdn_id>" if local else ""
    return (f'<qkd_node xmlns="{NS}"><qkd_links><qkd_link>'
            f"<qkdl_id>{link_id}</qkdl_id>{link_type('PHYS')}"
            f"<qkdl_local>{local_node}<qkdi_id>{local_if}</qkdi_id></qkdl_local>"
            f"<qkdl_remote><qkdn_id>{node_uuid(remote)}</qkdn_id><qkdi_id>{remote_if}</qkdi_id></qkdl_remote>"
            f"</qkd_link></qkd_links></qkd_node>")


def virt_link(link_id: str, bandwidth: int, prev: str | None = None, next_: str | None = None) -> str:
    hops = "".join(f"<{tag}>{node_uuid(node)}</{tag}>" for tag, node in (("virt_prev_hop", prev),
                                                                         ("virt_next_hop", next_)) if node)
    return (f'<qkd_node xmlns="{NS}"><qkd_links><qkd_link>'
            f"<qkdl_id>{link_id}</qkdl_id>{link_type('VIRT')}{hops}"
            f"<virt_bandwidth>{bandwidth}</virt_bandwidth></qkd_link></qkd_links></qkd_node>")


def cross_connect(name: str, in_port: int, out_port: int) -> str:
    return (f'<optical-switch xmlns="{SWITCH_NS}"><cross-connects><cross-connect><name>{name}</name>'
            f"<in-port>{in_port}</in-port><out-port>{out_port}</out-port></cross-connect></cross-connects>"
            f"</optical-switch>")


def plant_rpc(name: str, span: str, extra: str = "") -> str:
    return f'<{name} xmlns="{PLANT_NS}"><span-id>{span}</span-id>{extra}</{name}>'


def performance(notification: etree._Element) -> dict[str, str | None]:
    link = notification.find(q("qkd_link"))
    perf = link.find(q("performance"))
    return {"qkdl_id": link.findtext(q("qkdl_id")), "skr": perf.findtext(q("skr")),
            "qber": perf.findtext(f"{q('phys_perf')}/{q('value')}")}


async def configure_bypass(network: Network) -> None:
    await network.sessions["sw-concepcion"].edit_config(cross_connect("bypass", 1, 4))
    await network.sessions["qkd-quintin"].edit_config(phys_link(BYPASS, 1, "qkd-distrito", 2))
    await network.sessions["qkd-distrito"].edit_config(phys_link(BYPASS, 2, "qkd-quintin", 1))


def test_boots_with_its_inventory(tmp_path):
    async def test(network: Network):
        node = await network.node("qkd-concepcion")
        assert node.findtext(q("qkdn_id")) == node_uuid("qkd-concepcion")
        assert node.findtext(q("qkdn_status")) == "etsi-qkdn-types:OPERATING"
        assert node.findtext(q("qkdn_location_id")) == "concepcion"
        interfaces = {i.findtext(q("qkdi_id")): i for i in node.iter(q("qkd_interface"))}
        assert list(interfaces) == ["1", "2", "3"]
        first = interfaces["1"]
        assert [first.findtext(f"{q('qkdi_att_point')}/{q(t)}") for t in ("device", "port")] == ["sw-concepcion", "5"]
        assert [first.findtext(f"{q('fibre-attachment', EXT_NS)}/{q(t, EXT_NS)}") for t in ("site", "switch", "port")] \
            == ["concepcion", "sw-concepcion", "5"]
        assert first.findtext(q("qkdi_status")) == "etsi-qkdn-types:ENABLED"
        assert node.find(q("qkd_links")) is None
        quintin = await network.node("qkd-quintin")
        at = next(quintin.iter(q("qkd_interface"))).find(q("fibre-attachment", EXT_NS))
        assert [at.findtext(q(t, EXT_NS)) for t in ("site", "switch")] == ["quintin", None]
        yanglint("config", list(await network.sessions["qkd-quintin"].get_config(filter=("subtree", NODE))),
                 tmp_path)
    run(tmp_path, test, "qkd-concepcion", "qkd-quintin")


def test_a_phys_link_over_an_optical_bypass_follows_the_physics_and_the_fibre(tmp_path):
    async def test(network: Network):
        quintin = network.sessions["qkd-quintin"]
        await quintin.create_subscription()
        await network.sessions["sw-concepcion"].edit_config(cross_connect("bypass", 1, 4))
        await quintin.edit_config(phys_link(BYPASS, 1, "qkd-distrito", 2))
        assert (await network.link("qkd-quintin", BYPASS))["status"] == "PENDING"  # the far end is not configured

        await network.sessions["qkd-distrito"].edit_config(phys_link(BYPASS, 2, "qkd-quintin", 1))
        update = performance(await network.notification("qkd-quintin", "sdqkdn_link_perf_update"))
        skr, qber = link_performance(BYPASS_LOSS_DB)
        assert update["qkdl_id"] == BYPASS and skr * 0.95 <= int(update["skr"]) <= skr * 1.05
        at_quintin, at_distrito = await network.link("qkd-quintin", BYPASS), await network.link("qkd-distrito", BYPASS)
        assert at_quintin == at_distrito  # both ends report one reading
        assert at_quintin["status"] == "ACTIVE" and skr * 0.95 <= int(at_quintin["skr"]) <= skr * 1.05
        assert float(at_quintin["qber"]) == pytest.approx(qber * 100, abs=0.001)
        assert int(at_quintin["eskr"]) == pytest.approx(int(at_quintin["skr"]) * (1 - AUTHENTICATION_SHARE), abs=1)
        stream = network.context.service.streams[BYPASS]  # the twin service's: it sets the link's key rate
        announced = lambda: stream.history()[-1][2]  # noqa: E731 (dated a little ahead: docs/twin-service.md)
        assert announced() == pytest.approx(int(at_quintin["eskr"]), abs=1)
        for _ in range(100):  # let the link distil some key before the cut (bounded: 10 s)
            if stream.produced_bits() > 0:
                break
            await asyncio.sleep(0.1)

        await network.sessions["fibre-plant"].dispatch(plant_rpc("cut-span", "concepcion-distrito"))
        down = await network.notification("qkd-quintin", "sdqkdn_link_down")
        assert [down.findtext(f"{q('qkd_link')}/{q(t)}") for t in ("qkdl_id", "reason")] == \
            [BYPASS, "span concepcion-distrito cut"]
        update = performance(await network.notification("qkd-quintin", "sdqkdn_link_perf_update"))
        assert update["skr"] == "0"
        assert await network.link("qkd-quintin", BYPASS) == {"status": "PASSIVE", "skr": "0", "eskr": "0",
                                                            "expected_consumption": "0", "qber": None}
        assert announced() == 0.0
        produced = stream.produced_bits()
        assert produced > 0

        await network.sessions["fibre-plant"].dispatch(plant_rpc("repair-span", "concepcion-distrito"))
        update = performance(await network.notification("qkd-quintin", "sdqkdn_link_perf_update"))
        assert skr * 0.95 <= int(update["skr"]) <= skr * 1.05
        assert (await network.link("qkd-distrito", BYPASS))["status"] == "ACTIVE"
        node = await network.node("qkd-quintin")
        generated = int(node.findtext(f".//{q('key-pool', EXT_NS)}/{q('generated', EXT_NS)}"))
        assert generated >= produced
    run(tmp_path, test, "fibre-plant", "sw-concepcion", "qkd-quintin", "qkd-distrito")


def test_an_eavesdropper_raises_the_qber_and_the_alarm(tmp_path):
    async def test(network: Network):
        await configure_bypass(network)
        clean = await network.link("qkd-distrito", BYPASS)
        distrito = network.sessions["qkd-distrito"]
        await distrito.create_subscription()
        await network.sessions["fibre-plant"].dispatch(
            plant_rpc("attach-eavesdropper", "quintin-concepcion", "<fraction>0.2</fraction>"))
        tapped_qber = link_performance(BYPASS_LOSS_DB, eavesdrop_fraction=0.2)[1] * 100
        down = await network.notification("qkd-distrito", "sdqkdn_link_down")  # sent first, then the alarm
        assert down.findtext(f"{q('qkd_link')}/{q('reason')}") == f"QBER {tapped_qber:.2f} % above the 5.00 % threshold"
        alarm = await network.notification("qkd-distrito", "alarm")
        assert [alarm.findtext(f"{q('link')}/{q(t)}") for t in ("qkdl_id", "qkdl_status", "severity", "message")] == \
            [BYPASS, "etsi-qkdn-types:PASSIVE", "etsi-qkdn-types:MAJOR",
             f"QBER {tapped_qber:.2f} % above the 5.00 % threshold"]
        tapped = await network.link("qkd-distrito", BYPASS)
        assert float(tapped["qber"]) == pytest.approx(tapped_qber, abs=0.001)
        assert float(tapped["qber"]) - float(clean["qber"]) == pytest.approx(5.0, abs=0.3)
        assert (tapped["status"], tapped["skr"]) == ("PASSIVE", "0")  # no key is distilled over the threshold

        await network.sessions["fibre-plant"].dispatch(plant_rpc("remove-eavesdropper", "quintin-concepcion"))
        event = await network.notification("qkd-distrito", "event")
        assert event.findtext(f"{q('link')}/{q('message')}") == "QBER back under the 5.00 % threshold"
        assert (await network.link("qkd-distrito", BYPASS))["status"] == "ACTIVE"
    run(tmp_path, test, "fibre-plant", "sw-concepcion", "qkd-quintin", "qkd-distrito")


def test_a_virt_link_takes_its_bandwidth_from_the_phys_links_below(tmp_path):
    async def test(network: Network):
        s = network.sessions
        await s["sw-norte"].edit_config(cross_connect("almagro-to-node", 2, 5))
        await s["qkd-quintin"].edit_config(phys_link(QA, 2, "qkd-almagro", 2))
        await s["qkd-almagro"].edit_config(phys_link(QA, 2, "qkd-quintin", 2))
        await s["qkd-almagro"].edit_config(phys_link(AN, 3, "qkd-norte", 1))
        await s["qkd-norte"].edit_config(phys_link(AN, 1, "qkd-almagro", 3))
        await s["qkd-quintin"].edit_config(virt_link(VIRT, 20_000, next_="qkd-almagro"))
        await s["qkd-almagro"].edit_config(virt_link(VIRT, 20_000, prev="qkd-quintin", next_="qkd-norte"))
        assert (await network.link("qkd-quintin", VIRT))["status"] == "PENDING"  # norte does not carry it yet
        await s["qkd-norte"].edit_config(virt_link(VIRT, 20_000, prev="qkd-almagro"))

        for name in ("qkd-quintin", "qkd-almagro", "qkd-norte"):
            virt = await network.link(name, VIRT)
            assert (virt["status"], virt["skr"], virt["eskr"], virt["qber"]) == ("ACTIVE", "20000", "20000", None)
        assert (await network.link("qkd-quintin", QA))["expected_consumption"] == "20000"
        assert (await network.link("qkd-norte", AN))["expected_consumption"] == "20000"

        await s["qkd-quintin"].create_subscription()
        await s["qkd-quintin"].edit_config(virt_link(VIRT, 4_000_000_000, next_="qkd-almagro"))
        overloaded = await network.notification("qkd-quintin", "sdqkdn_link_overloaded")
        assert overloaded.findtext(f"{q('qkd_link')}/{q('qkdl_id')}") == QA
        hop = await network.link("qkd-quintin", QA)
        assert hop["expected_consumption"] == "4000000000"
        virt = await network.link("qkd-quintin", VIRT)
        hop_eskrs = [int((await network.link(n, link))["eskr"]) for n, link in (("qkd-quintin", QA), ("qkd-norte", AN))]
        assert virt["skr"] == str(min(hop_eskrs))

        await s["fibre-plant"].dispatch(plant_rpc("cut-span", "almagro-norte"))
        down = await network.notification("qkd-quintin", "sdqkdn_link_down")
        assert [down.findtext(f"{q('qkd_link')}/{q(t)}") for t in ("qkdl_id", "reason")] == \
            [VIRT, f"hop {AN}: span almagro-norte cut"]
        assert (await network.link("qkd-quintin", VIRT))["status"] == "PASSIVE"
    run(tmp_path, test, "fibre-plant", "sw-norte", "qkd-quintin", "qkd-almagro", "qkd-norte")


def test_restart_and_failure_take_the_node_down_then_back(tmp_path):
    async def test(network: Network):
        await configure_bypass(network)
        distrito, quintin = network.sessions["qkd-distrito"], network.sessions["qkd-quintin"]
        await distrito.create_subscription()
        await quintin.create_subscription()
        action = "{}"  # the node's fault injection: RPCs of qi-qkd-node-ext

        # 10 emulated seconds (1 s at speed 10): long enough for the reads below to see the
        # outage on a busy host.
        await quintin.dispatch(action.format(f'<restart xmlns="{EXT_NS}"><outage>10</outage></restart>'))
        down = await network.notification("qkd-distrito", "sdqkdn_link_down")
        assert down.findtext(f"{q('qkd_link')}/{q('reason')}") == "remote qkd-quintin is restarting"
        node = await network.node("qkd-quintin")
        assert node.findtext(q("qkdn_status")) == "etsi-qkdn-types:DOWN"
        assert (await network.link("qkd-quintin", BYPASS))["status"] == "OFF"
        update = performance(await network.notification("qkd-distrito", "sdqkdn_link_perf_update"))
        assert update["skr"] == "0"
        update = performance(await network.notification("qkd-distrito", "sdqkdn_link_perf_update"))
        assert int(update["skr"]) > 0  # back after the outage
        assert (await network.node("qkd-quintin")).findtext(q("qkdn_status")) == "etsi-qkdn-types:OPERATING"

        await quintin.dispatch(action.format(f'<inject-failure xmlns="{EXT_NS}"><reason>laser aged</reason>'
                                             f"</inject-failure>"))
        alarm = await network.notification("qkd-quintin", "alarm")
        assert [alarm.findtext(f"{q('interface')}/{q(t)}") for t in ("qkdi_id", "qkdi_status", "message", "severity")] \
            == ["1", "etsi-qkdn-types:FAILED", "laser aged", "etsi-qkdn-types:MAJOR"]
        node = await network.node("qkd-quintin")
        assert next(node.iter(q("qkdi_status"))).text == "etsi-qkdn-types:FAILED"
        with pytest.raises(RPCError, match="qkd-quintin has failed .* clear-failure first"):
            await quintin.dispatch(action.format(f'<restart xmlns="{EXT_NS}"/>'))
        await quintin.dispatch(action.format(f'<clear-failure xmlns="{EXT_NS}"/>'))
        event = await network.notification("qkd-quintin", "event")
        assert event.findtext(f"{q('interface')}/{q('qkdi_status')}") == "etsi-qkdn-types:ENABLED"
        assert (await network.link("qkd-distrito", BYPASS))["status"] == "ACTIVE"
    run(tmp_path, test, "sw-concepcion", "qkd-quintin", "qkd-distrito")


E = "etsi-qkd-sdn-node"
LINK_PATH = f"/{E}:qkd_node/{E}:qkd_links/{E}:qkd_link[{E}:qkdl_id='{BYPASS}']"
REFUSED = {
    "another node's identity": (
        f'<qkd_node xmlns="{NS}"><qkdn_id>{node_uuid("qkd-norte")}</qkdn_id></qkd_node>',
        f"/{E}:qkd_node/{E}:qkdn_id",
        f"qkdn_id {node_uuid('qkd-norte')} is not this node's: qkd-quintin is {node_uuid('qkd-quintin')}"),
    "an interface the node lacks": (
        f'<qkd_node xmlns="{NS}"><qkd_interfaces><qkd_interface><qkdi_id>9</qkdi_id></qkd_interface>'
        f"</qkd_interfaces></qkd_node>",
        f"/{E}:qkd_node/{E}:qkd_interfaces/{E}:qkd_interface[{E}:qkdi_id='9']",
        "qkd-quintin has no interface 9 (its interfaces: 1, 2)"),
    "an interface moved to another port": (
        f'<qkd_node xmlns="{NS}"><qkd_interfaces><qkd_interface><qkdi_id>1</qkdi_id><qkdi_att_point>'
        f"<device>quintin</device><port>7</port></qkdi_att_point></qkd_interface></qkd_interfaces></qkd_node>",
        f"/{E}:qkd_node/{E}:qkd_interfaces/{E}:qkd_interface[{E}:qkdi_id='1']/{E}:qkdi_att_point",
        "interface 1 of qkd-quintin is attached at quintin:1, not at quintin:7"),
    "a link from an interface not configured here": (
        phys_link(BYPASS, 3, "qkd-distrito", 2),
        f"{LINK_PATH}/{E}:qkdl_local/{E}:qkdi_id", f"link {BYPASS}: qkd-quintin has no configured interface 3"),
    "a link whose local end is another node": (
        phys_link(BYPASS, 1, "qkd-distrito", 2, local="qkd-norte"),
        f"{LINK_PATH}/{E}:qkdl_local/{E}:qkdn_id",
        f"link {BYPASS}: qkdl_local names node {node_uuid('qkd-norte')}, but this is qkd-quintin "
        f"({node_uuid('qkd-quintin')})"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_configuration_the_node_cannot_have_is_refused_and_changes_nothing(tmp_path, case):
    edit, path, message = REFUSED[case]

    async def test(network: Network):
        quintin = network.sessions["qkd-quintin"]
        before = etree.tostring(await quintin.get_config())
        with pytest.raises(RPCError) as refused:
            await quintin.edit_config(edit)
        assert (refused.value.tag, refused.value.path, refused.value.message) == ("invalid-value", path, message)
        assert etree.tostring(await quintin.get_config()) == before
    run(tmp_path, test, "qkd-quintin")
