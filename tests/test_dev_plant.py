"""The fibre plant device over real NETCONF sessions: the Madrid plant as state, faults as
RPCs that change the twin and are notified, the emulated clock's speed as configuration."""
from __future__ import annotations

import asyncio
import random

import pytest

from device_checks import next_notification, validated_get, yanglint
from devices.base import NetworkContext
from devices.keystore import KeyNetwork
from devices.plant import NS, FibrePlantDevice
from devices.topology import build_twin, default_topology
from devices.twin import Clock
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.ns import MONITORING

PLANT = f'<fibre-plant xmlns="{NS}"/>'
CHANGE = f"{{{NS}}}span-status-change"


def q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def run(test, speed: float = 1.0) -> None:
    """Start the plant of the Madrid network, run `test(device, nc)` with an admin session."""
    async def main():
        topology = default_topology()
        twin = build_twin(topology, Clock(speed), random.Random(1))
        device = FibrePlantDevice(topology, NetworkContext(twin, KeyNetwork(twin.clock)))
        await device.start()
        try:
            async with await NetconfClient.connect("127.0.0.1", device.port, "admin", "admin") as nc:
                await test(device, nc)
        finally:
            await device.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def rpc(name: str, span: str, extra: str = "") -> str:
    return f'<{name} xmlns="{NS}"><span-id>{span}</span-id>{extra}</{name}>'


def span_state(plant, span_id: str) -> dict[str, str]:
    span = next(s for s in plant.iter(q("span")) if s.findtext(q("span-id")) == span_id)
    return {etree_name(leaf): leaf.text for leaf in span if leaf.text and leaf.text.strip()}


def etree_name(node) -> str:
    return node.tag.split("}")[1]


def change(notification) -> list[str]:
    return [notification.findtext(q(t)) for t in ("span-id", "change", "status", "eavesdropper-fraction")]


def test_the_plant_is_served_as_state(tmp_path):
    async def test(device: FibrePlantDevice, nc: NetconfClient):
        plant = await validated_get(nc, PLANT, tmp_path)
        assert plant.findtext(q("network")) == "madrid"
        assert [s.findtext(q("site-id")) for s in plant.iterfind(f"{q('sites')}/{q('site')}")] == \
            ["quintin", "concepcion", "almagro", "norte", "distrito", "montegancedo"]
        switch = next(plant.iter(q("switch")))
        assert [switch.findtext(q("switch-id")), switch.findtext(q("site")), switch.findtext(q("insertion-loss"))] == \
            ["sw-concepcion", "concepcion", "1.0"]
        assert [p.text for p in switch.iter(q("port"))] == [str(p) for p in range(1, 9)]
        assert len(list(plant.iter(q("span")))) == 8
        assert span_state(plant, "quintin-concepcion") == {
            "span-id": "quintin-concepcion", "length": "4.1", "attenuation": "0.2", "loss": "0.82",
            "status": "up", "eavesdropper-fraction": "0.0"}
        span = next(s for s in plant.iter(q("span")) if s.findtext(q("span-id")) == "quintin-concepcion")
        assert [span.findtext(f"{q('a-end')}/{q(t)}") for t in ("node", "port")] == ["quintin", "1"]
        assert [span.findtext(f"{q('b-end')}/{q(t)}") for t in ("node", "port")] == ["sw-concepcion", "1"]
    run(test)


def test_cut_and_repair_change_the_span_and_are_notified(tmp_path):
    async def test(device: FibrePlantDevice, nc: NetconfClient):
        await nc.create_subscription()
        await nc.dispatch(rpc("cut-span", "concepcion-distrito"))
        assert change(await next_notification(nc, CHANGE, tmp_path)) == \
            ["concepcion-distrito", "cut", "cut", "0.0"]
        assert device.network.twin.spans["concepcion-distrito"].cut
        assert span_state(await validated_get(nc, PLANT, tmp_path), "concepcion-distrito")["status"] == "cut"

        await nc.dispatch(rpc("repair-span", "concepcion-distrito"))
        assert change(await next_notification(nc, CHANGE, tmp_path)) == \
            ["concepcion-distrito", "repaired", "up", "0.0"]
        assert span_state(await validated_get(nc, PLANT, tmp_path), "concepcion-distrito")["status"] == "up"
    run(test)


def test_an_eavesdropper_is_attached_and_removed_and_notified(tmp_path):
    async def test(device: FibrePlantDevice, nc: NetconfClient):
        await nc.create_subscription()
        await nc.dispatch(rpc("attach-eavesdropper", "quintin-concepcion", "<fraction>0.2</fraction>"))
        assert change(await next_notification(nc, CHANGE, tmp_path)) == \
            ["quintin-concepcion", "eavesdropper-attached", "up", "0.2"]
        assert device.network.twin.spans["quintin-concepcion"].eavesdrop_fraction == pytest.approx(0.2)
        state = span_state(await validated_get(nc, PLANT, tmp_path), "quintin-concepcion")
        assert state["eavesdropper-fraction"] == "0.2"

        await nc.dispatch(rpc("remove-eavesdropper", "quintin-concepcion"))
        assert change(await next_notification(nc, CHANGE, tmp_path)) == \
            ["quintin-concepcion", "eavesdropper-removed", "up", "0.0"]
        assert device.network.twin.spans["quintin-concepcion"].eavesdrop_fraction == 0.0
    run(test)


def test_faults_on_unknown_spans_or_by_a_reader_are_refused(tmp_path):
    async def test(device: FibrePlantDevice, nc: NetconfClient):
        with pytest.raises(RPCError) as refused:
            await nc.dispatch(rpc("cut-span", "atocha-sol"))
        assert (refused.value.tag, refused.value.path, refused.value.message, refused.value.info) == (
            "invalid-value", "/qi-fibre-plant:cut-span/qi-fibre-plant:span-id", "network 'madrid' has no span 'atocha-sol'",
            {"bad-element": "span-id"})
        with pytest.raises(RPCError, match="out of the allowed range"):
            await nc.dispatch(rpc("attach-eavesdropper", "quintin-concepcion", "<fraction>1.5</fraction>"))
        async with await NetconfClient.connect("127.0.0.1", device.port, "monitor", "monitor") as reader:
            with pytest.raises(RPCError) as refused:
                await reader.dispatch(rpc("cut-span", "quintin-concepcion"))
            assert refused.value.tag == "access-denied"
        assert not any(s.cut or s.eavesdrop_fraction for s in device.network.twin.spans.values())
    run(test)


def test_the_clock_speed_is_configuration(tmp_path):
    async def test(device: FibrePlantDevice, nc: NetconfClient):
        config = await nc.get_config(filter=("subtree", PLANT))
        yanglint("config", list(config), tmp_path)
        assert config.findtext(f"{q('fibre-plant')}/{q('clock')}/{q('speed')}") == "50.0"
        clock = device.network.twin.clock
        await nc.edit_config(f'<fibre-plant xmlns="{NS}"><clock><speed>2000</speed></clock></fibre-plant>')
        assert clock.speed == 2000.0
        start = float((await validated_get(nc, PLANT, tmp_path)).findtext(f"{q('clock')}/{q('emulated-time')}"))
        await asyncio.sleep(0.05)
        later = float((await validated_get(nc, PLANT, tmp_path)).findtext(f"{q('clock')}/{q('emulated-time')}"))
        assert later - start >= 2000 * 0.05
    run(test, speed=50.0)


class CountingPlant(FibrePlantDevice):
    """The plant, counting the runs of its state provider."""

    state_runs = 0

    async def state(self):
        self.state_runs += 1
        return await super().state()


def test_the_plant_state_runs_only_for_a_get_that_can_select_it():
    async def main():
        topology = default_topology()
        twin = build_twin(topology, Clock(1.0), random.Random(1))
        device = CountingPlant(topology, NetworkContext(twin, KeyNetwork(twin.clock)))
        await device.start()
        try:
            async with await NetconfClient.connect("127.0.0.1", device.port, "admin", "admin") as nc:
                monitoring = await nc.get(("subtree", f'<netconf-state xmlns="{MONITORING}"><sessions/></netconf-state>'))
                runs_elsewhere = device.state_runs
                plant = await nc.get(("subtree", PLANT))
                runs_for_plant = device.state_runs
                await nc.get()
                return monitoring, runs_elsewhere, plant, runs_for_plant, device.state_runs
        finally:
            await device.stop()
    monitoring, runs_elsewhere, plant, runs_for_plant, runs_for_all = asyncio.run(asyncio.wait_for(main(), 30))
    assert monitoring.find(f"{{{MONITORING}}}netconf-state") is not None
    assert runs_elsewhere == 0
    assert plant.find(f"{{{NS}}}fibre-plant/{{{NS}}}spans") is not None
    assert (runs_for_plant, runs_for_all) == (1, 2)
