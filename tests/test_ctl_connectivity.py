"""The connectivity controller.

Routing on its own (a hand-made plant, no network), then the controller over real NETCONF
against a DeviceHost: on the Madrid topology, the discovered fibre topology, an optical path
(asked with ncclient) that becomes cross-connects whose route and loss are the twin's, a
conflicting request refused, a switch's refusal rolled back on every switch, drift repaired
after a switch restarts with another configuration; on a small plant with two routes, a cut
span (through the northbound action) that re-routes its path, and an eavesdropper.
"""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError as NcRPCError

from conftest import HostedDevices
from controller.connectivity import (ConnectivityController, Busy, CrossConnect, Fibre, NoRoute, PathRequest,
                                     Span, Switch, SwitchPort, TermPoint, find_route)
from device_checks import yanglint
from devices.topology import default_topology, parse_topology
from devices.twin import Endpoint as PlantEnd
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.server import User

NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
CONN = "urn:qstrata:yang:qi-connectivity"
OSW = "urn:qstrata:yang:qi-optical-switch"
NS = {"nw": NW, "nt": NT, "c": CONN, "o": OSW}
USERS = {"admin": User(password="admin"), "monitor": User(password="monitor")}


# -- routing over a hand-made plant ---------------------------------------------------------------
#
#   a:1 --ab(1 dB)-- 1[sw]3 --sb(1 dB)-- b:1        sw: fabric 0.5 dB, ports 0.25 dB
#                    2[sw]4 --sc(3 dB)-- c:1
#   a:2 --------------ac(9 dB)---------- c:2

def _plant() -> Fibre:
    spans = [Span("ab", TermPoint("a", "1"), TermPoint("sw", "1"), 5, 0.2, 1.0),
             Span("sb", TermPoint("sw", "3"), TermPoint("b", "1"), 5, 0.2, 1.0),
             Span("sc", TermPoint("sw", "4"), TermPoint("c", "1"), 15, 0.2, 3.0),
             Span("ac", TermPoint("a", "2"), TermPoint("c", "2"), 45, 0.2, 9.0)]
    ports = {p: SwitchPort(p, 0.25) for p in (1, 2, 3, 4)}
    return Fibre({"a", "b", "c"}, {"sw": Switch("sw", "a", 0.5, ports)}, {s.id: s for s in spans})


def _request(name: str = "p", src: str = "a:1", dst: str = "c:1", **kw) -> PathRequest:
    ends = [TermPoint(*end.split(":")) for end in (src, dst)]
    return PathRequest(name, ends[0], ends[1], **kw)


def test_lowest_loss_route_crosses_the_switch_through_one_cross_connect() -> None:
    route = find_route(_plant(), _request(), Busy(), {"sw"})
    assert [h.span for h in route.hops] == ["ab", "sc"]
    assert route.cross_connects == (("sw", CrossConnect("p", 1, 4, 1)),)
    assert (route.loss, route.length, route.wavelength) == (5.0, 20.0, 1)  # 1 + 3 + 0.25 + 0.25 + 0.5


def test_constraints_and_what_is_in_use_are_respected() -> None:
    fibre = _plant()
    busy = Busy()
    busy.hold_cross_connect("sw", CrossConnect("manual", 2, 4, None), "manual")
    with pytest.raises(NoRoute, match=r"no free route from a:1 to c:1 .*ports and spans of other paths"):
        find_route(fibre, _request(), busy, {"sw"})
    assert [h.span for h in find_route(fibre, _request(src="a:2", dst="c:2"), busy, {"sw"}).hops] == ["ac"]
    with pytest.raises(NoRoute, match=r"has 9.000 dB, above max-loss 8.000 dB"):
        find_route(fibre, _request(src="a:2", dst="c:2", max_loss=8.0), busy, {"sw"})
    fibre.spans["ab"].up = False
    with pytest.raises(NoRoute, match=r"spans down: ab; avoided: sb"):
        find_route(fibre, _request(dst="b:1", avoid_spans=frozenset({"sb"})), Busy(), {"sw"})
    with pytest.raises(NoRoute, match="switch sw is not reachable"):
        find_route(fibre, _request(src="sw:2"), Busy(), set())
    with pytest.raises(NoRoute, match="b:7 is not a termination point"):
        find_route(fibre, _request(dst="b:7"), Busy(), {"sw"})
    busy = Busy()
    busy.hold("other", _request("other", "a:2", "c:2"), None)
    with pytest.raises(NoRoute, match="c:2 already ends optical path 'other'"):
        find_route(_plant(), _request(src="b:1", dst="c:2"), busy, {"sw"})


# -- the controller over real NETCONF --------------------------------------------------------------

class Stack(HostedDevices):
    """A DeviceHost and a connectivity controller over its plant and switches, on a loop in a
    background thread (so that ncclient can be used from the test)."""

    def __init__(self, topology) -> None:
        super().__init__(topology)
        self.devices = {ep.name: ep for ep in self.of_kind("fibre-plant", "optical-switch")}
        self.ctl = ConnectivityController("connectivity", list(self.devices.values()), USERS, resync_period=3600)
        self.run(self.ctl.start())
        self.run(self.ctl.wait_synced())

    def close(self) -> None:
        super().close(self.ctl)

    async def client(self, port: int | None = None) -> NetconfClient:
        return await NetconfClient.connect("127.0.0.1", port or self.ctl.port, "admin", password="admin")

    def ncclient(self):
        return super().ncclient(self.ctl.port)

    async def twin_cross_connects(self, switch: str) -> list[tuple[int, int]]:
        return [(xc.port_a, xc.port_b) for xc in self.twin.cross_connects(switch)]

    def cross_connects(self, switch: str) -> list[tuple[int, int]]:
        """The cross-connects the twin's fibre has on a switch: what light actually follows."""
        return self.run(self.twin_cross_connects(switch))

    async def switch_config(self, switch: str) -> dict[str, tuple[str, str]]:
        ep = self.devices[switch]
        async with await NetconfClient.connect(ep.host, ep.port, "admin", password="admin") as nc:
            data = await nc.get_config(filter=("subtree", f'<optical-switch xmlns="{OSW}"/>'))
        return {xc.findtext("o:name", namespaces=NS): (xc.findtext("o:in-port", namespaces=NS),
                                                       xc.findtext("o:out-port", namespaces=NS))
                for xc in data.iterfind(".//o:cross-connect", namespaces=NS)}

    async def edit_switch(self, switch: str, body: str) -> None:
        ep = self.devices[switch]
        async with await NetconfClient.connect(ep.host, ep.port, "admin", password="admin") as nc:
            await nc.edit_config(f'<optical-switch xmlns="{OSW}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                 f'<cross-connects>{body}</cross-connects></optical-switch>')

    async def path_state(self, name: str) -> etree._Element | None:
        async with await self.client() as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>fibre</network-id>'
                                                   f'<optical-paths xmlns="{CONN}"><optical-path><name>{name}</name>'
                                                   f'</optical-path></optical-paths></network></networks>'))
        return data.find(".//c:optical-path", namespaces=NS)


def _path(name: str, src: tuple[str, int], dst: tuple[str, int], extra: str = "", operation: str = "") -> str:
    op = f' nc:operation="{operation}"' if operation else ""
    return (f'<networks xmlns="{NW}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><network>'
            f'<network-id>fibre</network-id><optical-paths xmlns="{CONN}"><optical-path{op}><name>{name}</name>'
            f'<source><node>{src[0]}</node><tp>{src[1]}</tp></source>'
            f'<destination><node>{dst[0]}</node><tp>{dst[1]}</tp></destination>{extra}'
            f'</optical-path></optical-paths></network></networks>')


def _delete(name: str) -> str:
    return (f'<networks xmlns="{NW}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><network>'
            f'<network-id>fibre</network-id><optical-paths xmlns="{CONN}"><optical-path nc:operation="delete">'
            f'<name>{name}</name></optical-path></optical-paths></network></networks>')


def _config(body: str) -> str:
    return f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">{body}</config>'


@pytest.fixture
def madrid():
    stack = Stack(default_topology())   # one per test: a failed test leaves nothing behind
    yield stack
    stack.close()


def test_topology_is_discovered_and_served_with_its_state(madrid: Stack, tmp_path) -> None:
    async def scenario():
        async with await madrid.client() as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"/>'))
        yanglint("data", list(data), tmp_path)
        return data
    data = madrid.run(scenario())
    nodes = {n.findtext("nw:node-id", namespaces=NS): n.findtext("c:fibre-node/c:kind", namespaces=NS)
             for n in data.iterfind(".//nw:node", namespaces=NS)}
    assert nodes == {"quintin": "site", "concepcion": "site", "almagro": "site", "norte": "site",
                     "distrito": "site", "montegancedo": "site",
                     "sw-concepcion": "optical-switch", "sw-norte": "optical-switch"}
    span = data.xpath("//nt:link[nt:link-id='almagro-montegancedo']", namespaces=NS)[0]
    assert span.findtext("nt:source/nt:source-node", namespaces=NS) == "almagro"
    assert span.findtext("nt:source/nt:source-tp", namespaces=NS) == "4"
    assert float(span.findtext("c:fibre-span/c:total-loss", namespaces=NS)) == pytest.approx(23.8 * 0.21, abs=1e-3)
    assert span.findtext("c:fibre-span/c:oper-status", namespaces=NS) == "up"
    switch_tps = data.xpath("//nw:node[nw:node-id='sw-norte']/nt:termination-point/nt:tp-id/text()", namespaces=NS)
    assert sorted(map(int, switch_tps)) == list(range(1, 9))


def test_the_discovered_topology_cannot_be_edited(madrid: Stack) -> None:
    with madrid.ncclient() as m, pytest.raises(NcRPCError) as err:
        m.edit_config(target="running", config=_config(
            f'<networks xmlns="{NW}"><network><network-id>fibre</network-id><link xmlns="{NT}">'
            f'<link-id>quintin-almagro</link-id><fibre-span xmlns="{CONN}"><length>1</length></fibre-span>'
            f'</link></network></networks>'))
    assert err.value.tag == "invalid-value"
    assert "discovered from the devices and cannot be edited" in err.value.message


def test_optical_path_becomes_cross_connects_with_the_twins_route_and_loss(madrid: Stack) -> None:
    with madrid.ncclient() as m:
        m.edit_config(target="candidate", config=_config(_path("qd", ("quintin", 1), ("distrito", 1))))
        m.commit()
    state = madrid.run(madrid.path_state("qd"))
    assert state.findtext("c:status", namespaces=NS) == "up"
    route = state.xpath("c:route/c:hop/c:span/text()", namespaces=NS)
    assert route == ["quintin-concepcion", "concepcion-norte", "norte-distrito"]
    assert madrid.cross_connects("sw-concepcion") == [(1, 3)]
    assert madrid.cross_connects("sw-norte") == [(1, 3)]
    assert madrid.run(madrid.switch_config("sw-norte")) == {"qd": ("1", "3")}

    async def twin_view():
        path = madrid.twin.path_between(PlantEnd("quintin", 1), PlantEnd("distrito", 1))
        return list(path.spans), madrid.twin.path_loss_db(path)
    spans, loss = madrid.run(twin_view())
    assert spans == route
    assert float(state.findtext("c:total-loss", namespaces=NS)) == pytest.approx(loss, abs=1e-3)
    assert float(state.findtext("c:length", namespaces=NS)) == pytest.approx(4.1 + 7.8 + 8.6)

    with madrid.ncclient() as m:
        m.edit_config(target="running", config=_config(_delete("qd")))
    assert madrid.cross_connects("sw-concepcion") == madrid.cross_connects("sw-norte") == []
    assert madrid.run(madrid.switch_config("sw-norte")) == {}


def test_conflicting_request_is_refused_and_nothing_is_applied(madrid: Stack) -> None:
    with madrid.ncclient() as m:
        m.edit_config(target="running", config=_config(_path("first", ("sw-concepcion", 5), ("distrito", 2))))
        before = m.get_config("running").data_xml
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=_config(_path("second", ("sw-concepcion", 6), ("distrito", 2))))
        assert err.value.tag == "resource-denied"
        assert "optical path 'second'" in err.value.message
        assert "distrito:2 already ends optical path 'first'" in err.value.message
        assert "qi-connectivity:optical-path[qi-connectivity:name='second']" in err.value.path
        assert m.get_config("running").data_xml == before
    assert madrid.cross_connects("sw-concepcion") == [(5, 4)]
    assert madrid.run(madrid.switch_config("sw-concepcion")) == {"first": ("5", "4")}
    with madrid.ncclient() as m:
        m.edit_config(target="running", config=_config(_delete("first")))
    assert madrid.cross_connects("sw-concepcion") == []


def test_a_switch_refusing_its_share_leaves_every_switch_as_it_was(madrid: Stack) -> None:
    # Set by hand behind the controller's back: it learns of it only at its next resync.
    madrid.run(madrid.edit_switch("sw-norte", "<cross-connect><name>by-hand</name><in-port>1</in-port>"
                                              "<out-port>6</out-port><wavelength>7</wavelength></cross-connect>"))
    with madrid.ncclient() as m:
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="candidate", config=_config(_path("qd", ("quintin", 1), ("distrito", 1))))
            m.commit()
        assert err.value.tag == "operation-failed"
        assert "device sw-norte refused the change" in err.value.message
        assert "port 1, already used by cross-connect 'by-hand'" in err.value.message
        m.discard_changes()
    assert madrid.cross_connects("sw-concepcion") == []  # its confirmed commit was cancelled
    assert madrid.run(madrid.switch_config("sw-concepcion")) == {}
    assert madrid.run(madrid.switch_config("sw-norte")) == {"by-hand": ("1", "6")}
    assert madrid.run(madrid.path_state("qd")) is None

    madrid.run(madrid.ctl.resync())  # now the controller knows, and refuses by itself
    with madrid.ncclient() as m, pytest.raises(NcRPCError) as err:
        m.edit_config(target="running", config=_config(_path("qd", ("quintin", 1), ("distrito", 1))))
    assert err.value.tag == "resource-denied"
    assert "no free route from quintin:1 to distrito:1" in err.value.message
    madrid.run(madrid.edit_switch("sw-norte", '<cross-connect nc:operation="delete"><name>by-hand</name>'
                                              '</cross-connect>'))
    madrid.run(madrid.ctl.resync())


def test_drift_is_noticed_and_repaired(madrid: Stack) -> None:
    with madrid.ncclient() as m:
        m.edit_config(target="running", config=_config(_path("qd", ("quintin", 1), ("distrito", 1))))
    # A switch restarted with another configuration: its saved datastores are gone.
    madrid.run(madrid.host.crash("sw-norte"))
    shutil.rmtree(madrid.host.network.device_dir("sw-norte") / "datastores")
    madrid.run(madrid.host.restart("sw-norte"))
    madrid.run(madrid.until(lambda: _equals(madrid.twin_cross_connects("sw-norte"), [(1, 3)])))
    assert madrid.run(madrid.switch_config("sw-norte")) == {"qd": ("1", "3")}
    # Changed by hand while the controller is connected: found by the periodic resync.
    madrid.run(madrid.edit_switch("sw-concepcion", '<cross-connect nc:operation="delete"><name>qd</name>'
                                                   '</cross-connect>'))
    assert madrid.cross_connects("sw-concepcion") == []
    madrid.run(madrid.ctl.resync())
    assert madrid.cross_connects("sw-concepcion") == [(1, 3)]
    with madrid.ncclient() as m:
        m.edit_config(target="running", config=_config(_delete("qd")))
    assert madrid.cross_connects("sw-concepcion") == madrid.cross_connects("sw-norte") == []


async def _equals(value: Awaitable, expected: object) -> bool:
    return await value == expected


# -- re-routing on a plant with two routes ------------------------------------------------------------
#
#   a:1 --- 1[s1]2 ------ direct (5 km) ------ 1[s2]3 --- b:1
#              3 --- (4 km) --- 1[s3]2 --- (4 km) --- 2

TWO_ROUTES = {
    "name": "two-routes",
    "sites": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
    "switches": [{"id": "s1", "site": "a", "ports": [1, 2, 3]}, {"id": "s2", "site": "b", "ports": [1, 2, 3]},
                 {"id": "s3", "site": "c", "ports": [1, 2]}],
    "spans": [{"id": "a-s1", "a": "a:1", "b": "s1:1", "length_km": 2},
              {"id": "direct", "a": "s1:2", "b": "s2:1", "length_km": 5},
              {"id": "s1-s3", "a": "s1:3", "b": "s3:1", "length_km": 4},
              {"id": "s3-s2", "a": "s3:2", "b": "s2:2", "length_km": 4},
              {"id": "s2-b", "a": "s2:3", "b": "b:1", "length_km": 2}],
}


@pytest.fixture
def two_routes():
    stack = Stack(parse_topology(TWO_ROUTES, "two-routes"))   # one per test: a failed test leaves nothing behind
    yield stack
    stack.close()


def _action(span: str, body: str) -> str:
    return (f'<action xmlns="urn:ietf:params:xml:ns:yang:1"><networks xmlns="{NW}"><network>'
            f'<network-id>fibre</network-id><link xmlns="{NT}"><link-id>{span}</link-id>'
            f'<fibre-span xmlns="{CONN}">{body}</fibre-span></link>'
            f'</network></networks></action>')


async def _events(nc: NetconfClient, count: int) -> list[tuple[str, str]]:
    """The next `count` qi-connectivity notifications, as (name, link-id or path status)."""
    out = []
    async for message in nc.notifications():
        event = next((c for c in message if etree.QName(c).namespace == CONN), None)
        if event is None:
            continue
        name = etree.QName(event).localname
        out.append((name, event.findtext(f"{{{CONN}}}status") or event.findtext(f"{{{CONN}}}link-id")))
        if len(out) == count:
            return out
    return out


def test_a_cut_span_reroutes_its_path_and_a_repair_is_reported(two_routes: Stack, tmp_path) -> None:
    stack = two_routes

    async def scenario():
        async with await stack.client() as nc:
            await nc.edit_config(_path("ab", ("a", 1), ("b", 1)))
            first = await stack.path_state("ab")
            with pytest.raises(RPCError) as err:
                await nc.edit_config(_path("tight", ("s1", 3), ("s2", 2), "<max-loss>2.5</max-loss>"))
            await nc.create_subscription()
            await nc.dispatch(_action("direct", f'<cut xmlns="{CONN}"/>'))
            events = await asyncio.wait_for(_events(nc, 3), 15)
            second = await stack.path_state("ab")
            light = stack.twin.path_between(PlantEnd("a", 1), PlantEnd("b", 1))
            twin_view = list(light.spans), stack.twin.path_loss_db(light)
            await nc.dispatch(_action("direct", f'<repair xmlns="{CONN}"/>'))
            repaired = await asyncio.wait_for(_events(nc, 1), 15)
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"/>'))
            yanglint("data", list(data), tmp_path)
            await nc.edit_config(_delete("ab"))
            return first, err.value, events, second, twin_view, repaired
    first, refusal, events, second, (spans, loss), repaired = stack.run(scenario())
    assert first.xpath("c:route/c:hop/c:span/text()", namespaces=NS) == ["a-s1", "direct", "s2-b"]
    assert float(first.findtext("c:total-loss", namespaces=NS)) == pytest.approx(0.4 + 1.0 + 0.4 + 2 * 1.0)
    assert refusal.tag == "resource-denied" and "above max-loss 2.500 dB" in refusal.message
    assert events == [("span-down", "direct"), ("optical-path-status-change", "down"),
                      ("optical-path-status-change", "up")]
    assert second.findtext("c:status", namespaces=NS) == "up"
    assert "re-routed around span direct" in second.findtext("c:reason", namespaces=NS)
    route = second.xpath("c:route/c:hop/c:span/text()", namespaces=NS)
    assert route == ["a-s1", "s1-s3", "s3-s2", "s2-b"]
    assert spans == route
    assert float(second.findtext("c:total-loss", namespaces=NS)) == pytest.approx(loss, abs=1e-3)
    assert repaired == [("span-up", "direct")]
    assert stack.cross_connects("s1") == stack.cross_connects("s3") == []


def test_eavesdropper_actions_reach_the_plant_and_show_in_span_state(two_routes: Stack, tmp_path) -> None:
    stack = two_routes

    async def span_state() -> etree._Element:
        async with await stack.client() as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>fibre</network-id>'
                                                   f'<link xmlns="{NT}"><link-id>s3-s2</link-id></link></network>'
                                                   f'</networks>'))
        return data.find(".//c:fibre-span", namespaces=NS)

    async def scenario():
        async with await stack.client() as nc:
            await nc.dispatch(_action("s3-s2", f'<attach-eavesdropper xmlns="{CONN}"><intercept-fraction>0.5'
                                               f'</intercept-fraction></attach-eavesdropper>'))
            await stack.until(lambda: _has(span_state(), "c:eavesdropper-present", "true"))
            attached = await span_state()
            yanglint("data", list(await nc.get(filter=("subtree", f'<networks xmlns="{NW}"/>'))), tmp_path)
            await nc.dispatch(_action("s3-s2", f'<remove-eavesdropper xmlns="{CONN}"/>'))
            await stack.until(lambda: _has(span_state(), "c:eavesdropper-present", "false"))
            with pytest.raises(RPCError) as err:
                await nc.dispatch(_action("nowhere", f'<cut xmlns="{CONN}"/>'))
            return attached, err.value
    attached, refusal = stack.run(scenario())
    assert attached.findtext("c:intercept-fraction", namespaces=NS).startswith("0.5")
    assert attached.xpath("c:active-faults/text()", namespaces=NS) == ["qit:eavesdropper"]
    assert stack.twin.spans["s3-s2"].eavesdrop_fraction == 0.0
    assert refusal.tag == "data-missing"


async def _has(state: Awaitable[etree._Element], path: str, value: str) -> bool:
    return (await state).findtext(path, namespaces=NS) == value
