"""The optical switch device over real NETCONF sessions: its cross-connects are the twin's,
conflicting ones are refused precisely and change nothing, port status follows the fibre."""
from __future__ import annotations

import asyncio
import random

import pytest
from lxml import etree

from device_checks import next_notification, validated_get, yanglint
from devices.base import NetworkContext
from devices.keystore import KeyNetwork
from devices.optical_switch import NS, OpticalSwitchDevice
from devices.topology import build_twin, default_topology
from devices.twin import Endpoint
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError

SWITCH = f'<optical-switch xmlns="{NS}"/>'
QUINTIN, DISTRITO = Endpoint("quintin", 1), Endpoint("distrito", 2)  # the two ends of the Concepcion bypass


def q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def run(test) -> None:
    """Start sw-concepcion of the Madrid network, run `test(device, nc)` with an admin session."""
    async def main():
        topology = default_topology()
        network = NetworkContext(build_twin(topology, rng=random.Random(1)), KeyNetwork())
        spec = next(s for s in topology.switches if s.id == "sw-concepcion")
        device = OpticalSwitchDevice(spec, network)
        await device.start()
        try:
            async with await NetconfClient.connect("127.0.0.1", device.port, "admin", "admin") as nc:
                await test(device, nc)
        finally:
            await device.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def switch(ports: str = "", cross_connects: str = "") -> str:
    return (f'<optical-switch xmlns="{NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
            f"{f'<ports>{ports}</ports>' if ports else ''}"
            f"{f'<cross-connects>{cross_connects}</cross-connects>' if cross_connects else ''}</optical-switch>")


def port(port_id: int, leaves: str = "") -> str:
    return f"<port><port-id>{port_id}</port-id>{leaves}</port>"


def xc(name: str, in_port: int, out_port: int, wavelength: int | None = None) -> str:
    channel = f"<wavelength>{wavelength}</wavelength>" if wavelength else ""
    return (f"<cross-connect><name>{name}</name><in-port>{in_port}</in-port><out-port>{out_port}</out-port>"
            f"{channel}</cross-connect>")


def cross_connect(name: str, in_port: int, out_port: int, wavelength: int | None = None) -> str:
    return switch(cross_connects=xc(name, in_port, out_port, wavelength))


def entries(node: etree._Element, kind: str, key: str) -> dict[str, etree._Element]:
    return {e.findtext(q(key)): e for e in node.iter(q(kind))}


def test_boots_with_its_ports_and_a_cross_connect_joins_two_spans(tmp_path):
    async def test(device: OpticalSwitchDevice, nc: NetconfClient):
        state = await validated_get(nc, SWITCH, tmp_path)
        ports = entries(state, "port", "port-id")
        assert list(ports) == [str(p) for p in range(1, 9)]
        assert ports["1"].findtext(q("span")) == "quintin-concepcion"
        assert ports["4"].findtext(q("span")) == "concepcion-distrito"
        assert ports["5"].find(q("span")) is None  # faces a QKD interface
        assert {p.findtext(q("oper-status")) for p in ports.values()} == {"up"}
        assert entries(state, "cross-connect", "name") == {}

        await nc.edit_config(cross_connect("bypass", 1, 4, wavelength=20))
        xc = entries(await validated_get(nc, SWITCH, tmp_path), "cross-connect", "name")["bypass"]
        assert (xc.findtext(q("insertion-loss")), xc.findtext(q("oper-status"))) == ("1.0", "up")
        path = device.network.twin.path_between(QUINTIN, DISTRITO)
        assert path.spans == ("quintin-concepcion", "concepcion-distrito")
        assert device.network.twin.path_loss_db(path) == pytest.approx((4.1 + 15.3) * 0.2 + 1.0)

        await nc.edit_config(switch(ports=port(1, "<insertion-loss>0.250</insertion-loss>")))
        xc = entries(await validated_get(nc, SWITCH, tmp_path), "cross-connect", "name")["bypass"]
        assert xc.findtext(q("insertion-loss")) == "1.25"
        assert device.network.twin.path_loss_db(device.network.twin.path_between(QUINTIN, DISTRITO)) == \
            pytest.approx((4.1 + 15.3) * 0.2 + 1.25)

        await nc.edit_config(switch(cross_connects='<cross-connect nc:operation="delete"><name>bypass</name>'
                                                   "</cross-connect>"))
        assert device.network.twin.cross_connects("sw-concepcion") == []
    run(test)


OS = "qi-optical-switch"
XC_PATH = f"/{OS}:optical-switch/{OS}:cross-connects/{OS}:cross-connect[{OS}:name='{{}}']"

REFUSED = {
    "port reused on another wavelength": (
        cross_connect("other", 5, 4, wavelength=21),
        "in-use", XC_PATH.format("other"),
        "cross-connect 'other' needs port 4, already used by cross-connect 'bypass'; this fibre switch gives "
        "a port one cross-connect, whatever the wavelength"),
    "port reused on the same wavelength (the model's rule)": (
        cross_connect("same", 4, 6, wavelength=20),
        "operation-failed", XC_PATH.format("bypass"),
        "a port is already used on this wavelength"),
    "whole-fibre cross-connect on a port in use (the model's rule, found at the entry checked first)": (
        cross_connect("whole", 1, 6),
        "operation-failed", XC_PATH.format("bypass"), "a port is already used on this wavelength"),
    "cross-connect to a port the switch lacks": (
        switch(ports=port(12), cross_connects=xc("far", 5, 12, wavelength=22)),
        "invalid-value", XC_PATH.format("far"),
        "cross-connect 'far' names port 12, which switch 'sw-concepcion' does not have (its ports: 1, 2, 3, 4, 5, 6, "
        "7, 8)"),
    "port the switch lacks": (
        switch(ports=port(12)),
        "invalid-value", f"/{OS}:optical-switch/{OS}:ports/{OS}:port[{OS}:port-id='12']",
        "switch 'sw-concepcion' has no port 12 (its ports: 1, 2, 3, 4, 5, 6, 7, 8)"),
    "cross-connect to an unconfigured port (the model's leafref)": (
        cross_connect("nowhere", 5, 9),
        "data-missing", XC_PATH.format("nowhere") + f"/{OS}:out-port", 'Invalid leafref value "9"'),
    "another switch's id": (
        f'<optical-switch xmlns="{NS}"><switch-id>sw-norte</switch-id></optical-switch>',
        "invalid-value", f"/{OS}:optical-switch/{OS}:switch-id",
        "switch-id 'sw-norte' is not this switch: it is 'sw-concepcion'"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_conflicting_configuration_is_refused_precisely_and_changes_nothing(tmp_path, case):
    edit, tag, path, message = REFUSED[case]

    async def test(device: OpticalSwitchDevice, nc: NetconfClient):
        await nc.edit_config(cross_connect("bypass", 1, 4, wavelength=20))
        config_before = etree.tostring(await nc.get_config())
        made_before = device.network.twin.cross_connects("sw-concepcion")
        with pytest.raises(RPCError) as refused:
            await nc.edit_config(edit)
        assert (refused.value.tag, refused.value.path) == (tag, path)
        assert message in refused.value.message
        assert etree.tostring(await nc.get_config()) == config_before
        assert device.network.twin.cross_connects("sw-concepcion") == made_before
        assert device.network.twin.path_between(QUINTIN, DISTRITO) is not None
    run(test)


def test_a_cut_span_takes_its_port_and_cross_connect_down_and_is_notified(tmp_path):
    async def test(device: OpticalSwitchDevice, nc: NetconfClient):
        await nc.edit_config(cross_connect("bypass", 1, 4))
        await nc.create_subscription()
        twin = device.network.twin
        twin.cut_span("concepcion-distrito")
        change = await next_notification(nc, q("port-status-change"), tmp_path)
        assert [change.findtext(q(t)) for t in ("switch-id", "port-id", "oper-status", "reason")] == \
            ["sw-concepcion", "4", "down", "span concepcion-distrito cut"]
        xc = await next_notification(nc, q("cross-connect-status-change"), tmp_path)
        assert [xc.findtext(q(t)) for t in ("name", "oper-status")] == ["bypass", "down"]
        state = await validated_get(nc, SWITCH, tmp_path)
        assert entries(state, "port", "port-id")["4"].findtext(q("oper-status")) == "down"
        assert entries(state, "port", "port-id")["1"].findtext(q("oper-status")) == "up"
        assert entries(state, "cross-connect", "name")["bypass"].findtext(q("oper-status")) == "down"

        twin.repair_span("concepcion-distrito")
        change = await next_notification(nc, q("port-status-change"), tmp_path)
        assert [change.findtext(q(t)) for t in ("port-id", "oper-status", "reason")] == \
            ["4", "up", "span concepcion-distrito repaired"]
        xc = await next_notification(nc, q("cross-connect-status-change"), tmp_path)
        assert xc.findtext(q("oper-status")) == "up"
    run(test)


def test_disabling_a_port_takes_its_cross_connect_out_of_the_fibre(tmp_path):
    async def test(device: OpticalSwitchDevice, nc: NetconfClient):
        await nc.edit_config(cross_connect("bypass", 1, 4))
        await nc.create_subscription()
        await nc.edit_config(switch(ports=port(4, "<enabled>false</enabled>")))
        change = await next_notification(nc, q("port-status-change"), tmp_path)
        assert [change.findtext(q(t)) for t in ("port-id", "oper-status", "reason")] == \
            ["4", "down", "configuration changed"]
        assert device.network.twin.path_between(QUINTIN, DISTRITO) is None
        state = await validated_get(nc, SWITCH, tmp_path)
        assert entries(state, "cross-connect", "name")["bypass"].findtext(q("oper-status")) == "down"
        yanglint("config", list(await nc.get_config(filter=("subtree", SWITCH))), tmp_path)
    run(test)
