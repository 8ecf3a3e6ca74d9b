"""The forwarding controller.

VIRT hop chaining on its own, then the controller over real NETCONF against a DeviceHost on
the Madrid topology, with a connectivity controller south of it: the discovered QKD nodes; a
PHYS link asked with ncclient that becomes an optical path, cross-connects and ACTIVE links
with key on both QKD nodes; a VIRT link over two PHYS hops; a node that refuses (another
session holds its lock) leaving every device as it was; link-status-change and qber-alarm
from a cut and an eavesdropper; drift repaired after a node restarts with another
configuration; a link configured by hand on two nodes discovered. Each test starts its own
stack, and the PHYS link q-d when it builds on one (the q_d fixture).
"""
from __future__ import annotations

import asyncio
import shutil

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError as NcRPCError

from conftest import ForwardingStack
from controller.forwarding import LinkRequest, virt_chain
from device_checks import yanglint
from devices.qkd_node import node_uuid
from netconf_core import NetconfClient

NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD = "urn:qstrata:yang:qi-forwarding"
CONN = "urn:qstrata:yang:qi-connectivity"
ETSI = "urn:etsi:qkd:yang:etsi-qkd-node"
FP = "urn:qstrata:yang:qi-fibre-plant"
TYPES = "urn:etsi:qkd:yang:etsi-qkd-node-types"
NS = {"nw": NW, "nt": NT, "f": FWD, "c": CONN, "e": ETSI}


def _uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


# -- VIRT hops --------------------------------------------------------------------------------------

def test_virt_hops_chain_from_source_to_destination_in_any_order() -> None:
    phys = {name: LinkRequest(name, (a, "1"), (b, "1"), _uuid(i), "PHYS")
            for i, (name, a, b) in enumerate([("ab", "a", "b"), ("cb", "c", "b"), ("cd", "c", "d")])}
    virt = LinkRequest("ad", ("a", ""), ("d", ""), _uuid(9), "VIRT", supporting=frozenset({"cd", "ab", "cb"}))
    assert virt_chain(virt, phys) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"\(ab, cd\) do not chain from a to d"):
        virt_chain(LinkRequest("ad", ("a", ""), ("d", ""), _uuid(9), "VIRT", supporting=frozenset({"ab", "cd"})),
                   phys)
    with pytest.raises(ValueError, match="supporting links xy are not links"):
        virt_chain(LinkRequest("ax", ("a", ""), ("x", ""), _uuid(9), "VIRT", supporting=frozenset({"xy"})), phys)


# -- the controller over real NETCONF ----------------------------------------------------------------

class Stack(ForwardingStack):
    """Madrid devices, a connectivity controller and the forwarding controller on a loop in a
    background thread (so that ncclient can be used from the test)."""

    def ncclient(self):
        return super().ncclient(self.ctl.port)

    async def node_links(self, node: str) -> dict[str, etree._Element]:
        """The qkd_link entries (config and state) of a QKD node, by qkdl_id."""
        async with await self.client(node) as nc:
            data = await nc.get(filter=("subtree", f'<qkd_node xmlns="{ETSI}"><qkd_links/></qkd_node>'))
        return {link.findtext("e:qkdl_id", namespaces=NS): link
                for link in data.iterfind(".//e:qkd_link", namespaces=NS)}

    async def active_on(self, node: str, qkdl_id: str) -> bool:
        link = (await self.node_links(node)).get(qkdl_id)
        return (link is not None and link.findtext("e:qkdl_status", namespaces=NS) == "etsi-qkdn-types:ACTIVE"
                and int(link.findtext("e:qkdl_performance/e:skr", namespaces=NS)) > 0)

    async def link_state(self, link_id: str) -> etree._Element | None:
        async with await self.client() as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>qkd</network-id>'
                                                   f'<link xmlns="{NT}"><link-id>{link_id}</link-id></link>'
                                                   f'</network></networks>'))
        return data.find(".//f:qkd-link", namespaces=NS)

    async def optical_paths(self) -> dict[str, str]:
        """The connectivity controller's optical paths and their status."""
        async with await NetconfClient.connect("127.0.0.1", self.connectivity.port, "admin", password="admin") as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>fibre</network-id>'
                                                   f'<optical-paths xmlns="{CONN}"/></network></networks>'))
        return {p.findtext("c:name", namespaces=NS): p.findtext("c:status", namespaces=NS)
                for p in data.iterfind(".//c:optical-path", namespaces=NS)}

    async def cross_connects(self, switch: str) -> list[tuple[int, int]]:
        return [(xc.port_a, xc.port_b) for xc in self.twin.cross_connects(switch)]

    async def plant(self, rpc: str, span: str, extra: str = "") -> None:
        async with await self.client("fibre-plant") as nc:
            await nc.dispatch(f'<{rpc} xmlns="{FP}"><span-id>{span}</span-id>{extra}</{rpc}>')


def _link(link_id: str, src: tuple[str, int], dst: tuple[str, int], qkdl: str, kind: str = "PHYS",
          extra: str = "") -> str:
    return (f'<networks xmlns="{NW}" xmlns:t="{TYPES}"><network><network-id>qkd</network-id>'
            f'<link xmlns="{NT}"><link-id>{link_id}</link-id>'
            f'<source><source-node>{src[0]}</source-node><source-tp>{src[1]}</source-tp></source>'
            f'<destination><dest-node>{dst[0]}</dest-node><dest-tp>{dst[1]}</dest-tp></destination>{extra}'
            f'<qkd-link xmlns="{FWD}"><qkdl-id>{qkdl}</qkdl-id><link-type>t:{kind}</link-type></qkd-link>'
            f'</link></network></networks>')


def _delete(*link_ids: str) -> str:
    links = "".join(f'<link xmlns="{NT}" nc:operation="delete"><link-id>{i}</link-id></link>' for i in link_ids)
    return (f'<networks xmlns="{NW}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><network>'
            f'<network-id>qkd</network-id>{links}</network></networks>')


def _config(body: str) -> str:
    return f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">{body}</config>'


async def _events(nc: NetconfClient, tag: str, count: int) -> list[etree._Element]:
    out = []
    async for message in nc.notifications():
        event = next((c for c in message if c.tag == f"{{{FWD}}}{tag}"), None)
        if event is not None:
            out.append(event)
            if len(out) == count:
                return out
    return out


# The quantum channel of qkd-quintin:1 - qkd-distrito:2 bypasses Concepcion through sw-concepcion.
QD = _link("q-d", ("qkd-quintin", 1), ("qkd-distrito", 2), _uuid(1))


@pytest.fixture
def stack():
    """A stack of its own for each test: nothing one test configures or breaks reaches another."""
    running = Stack()
    yield running
    running.close()


@pytest.fixture
def q_d(stack: Stack) -> None:
    """The PHYS link q-d asked of the controller and ACTIVE with key on both of its QKD nodes."""
    async def configure() -> None:
        async with await stack.client() as nc:
            await nc.edit_config(QD, target="candidate")
            await nc.commit()
        for node in ("qkd-quintin", "qkd-distrito"):
            await stack.until(lambda: stack.active_on(node, _uuid(1)))
    stack.run(configure())


def test_nodes_are_discovered_with_site_key_manager_and_interfaces(stack: Stack, tmp_path) -> None:
    async def scenario():
        async with await stack.client() as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"/>'))
        yanglint("data", list(data), tmp_path)
        return data
    data = stack.run(scenario())
    node = data.xpath("//nw:node[nw:node-id='qkd-concepcion']", namespaces=NS)[0]
    assert node.findtext("f:qkd-node/f:qkdn-id", namespaces=NS) == node_uuid("qkd-concepcion")
    assert node.findtext("f:qkd-node/f:site", namespaces=NS) == "concepcion"
    assert node.findtext("f:qkd-node/f:km-id", namespaces=NS) == "km-concepcion"
    assert node.findtext("f:qkd-node/f:status", namespaces=NS) == "etsi-qkdn-types:OPERATING"
    assert node.xpath("nt:termination-point/nt:tp-id/text()", namespaces=NS) == ["1", "2", "3"]
    assert data.xpath("//nw:network/nw:supporting-network/nw:network-ref/text()", namespaces=NS) == ["qkd", "fibre"]
    # Each QKD interface names the fibre port it sits on (RFC 8345 supporting-termination-point).
    fibre_ports = node.xpath("nt:termination-point/nt:supporting-termination-point", namespaces=NS)
    assert [(p.findtext("nt:node-ref", namespaces=NS), p.findtext("nt:tp-ref", namespaces=NS))
            for p in fibre_ports] == [("sw-concepcion", "5"), ("sw-concepcion", "6"), ("sw-concepcion", "7")]
    assert node.xpath("nw:supporting-node/nw:node-ref/text()", namespaces=NS) == ["sw-concepcion"]


def test_phys_link_request_goes_through_connectivity_to_active_links(stack: Stack, tmp_path) -> None:
    async def subscribed() -> NetconfClient:
        nc = await stack.client()
        await nc.create_subscription()
        return nc
    listener = stack.run(subscribed())
    with stack.ncclient() as m:
        m.edit_config(target="candidate", config=_config(QD))
        m.commit()
    (event,) = stack.run(asyncio.wait_for(_events(listener, "link-status-change", 1), 15))
    stack.run(listener.close_session())
    assert (event.findtext("f:link-id", namespaces=NS), event.findtext("f:status", namespaces=NS)) == \
        ("q-d", "etsi-qkdn-types:ACTIVE")
    yanglint("notif", [event], tmp_path)
    assert stack.run(stack.optical_paths()) == {"q-d": "up"}
    assert stack.run(stack.cross_connects("sw-concepcion")) == [(1, 4)]
    for node in ("qkd-quintin", "qkd-distrito"):
        stack.run(stack.until(lambda: stack.active_on(node, _uuid(1))))
    quintin = stack.run(stack.node_links("qkd-quintin"))[_uuid(1)]
    assert quintin.findtext("e:phys_qkd_role", namespaces=NS) == "etsi-qkdn-types:TRANSMITTER"
    assert quintin.findtext("e:qkdl_remote/e:qkdn_id", namespaces=NS) == node_uuid("qkd-distrito")
    state = stack.run(stack.link_state("q-d"))
    assert state.findtext("f:status", namespaces=NS) == "etsi-qkdn-types:ACTIVE"
    assert int(state.findtext("f:skr", namespaces=NS)) > 0
    assert 0 < float(state.findtext("f:qber", namespaces=NS)) < 5
    assert float(state.findtext("f:channel-loss", namespaces=NS)) == pytest.approx((4.1 + 15.3) * 0.2 + 1.0)


@pytest.mark.usefixtures("q_d")
def test_virt_link_is_configured_along_its_relay_path(stack: Stack) -> None:
    hops = _link("q-a", ("qkd-quintin", 2), ("qkd-almagro", 2), _uuid(2)) + \
        _link("a-n", ("qkd-almagro", 3), ("qkd-norte", 1), _uuid(3))
    supporting = "".join(f"<supporting-link><network-ref>qkd</network-ref><link-ref>{hop}</link-ref>"
                         f"</supporting-link>" for hop in ("a-n", "q-a"))
    virt = _link("q-n", ("qkd-quintin", 1), ("qkd-norte", 2), _uuid(4), "VIRT", supporting)
    with stack.ncclient() as m:
        m.edit_config(target="running", config=_config(hops + virt))
    links = {node: stack.run(stack.node_links(node))[_uuid(4)] for node in ("qkd-quintin", "qkd-almagro", "qkd-norte")}
    hop = lambda node, tag: links[node].xpath(f"e:{tag}/text()", namespaces=NS)  # noqa: E731
    assert (hop("qkd-quintin", "virt_prev_hop"), hop("qkd-quintin", "virt_next_hop")) == \
        ([], [node_uuid("qkd-almagro")])
    assert (hop("qkd-almagro", "virt_prev_hop"), hop("qkd-almagro", "virt_next_hop")) == \
        ([node_uuid("qkd-quintin")], [node_uuid("qkd-norte")])
    assert (hop("qkd-norte", "virt_prev_hop"), hop("qkd-norte", "virt_next_hop")) == ([node_uuid("qkd-almagro")], [])
    stack.run(stack.until(lambda: stack.active_on("qkd-quintin", _uuid(4))))
    assert set(stack.run(stack.optical_paths())) == {"q-d", "q-a", "a-n"}
    with stack.ncclient() as m:
        m.edit_config(target="running", config=_config(_delete("q-n", "q-a", "a-n")))
    assert all(_uuid(4) not in stack.run(stack.node_links(n)) for n in ("qkd-quintin", "qkd-almagro", "qkd-norte"))
    assert set(stack.run(stack.optical_paths())) == {"q-d"}
    assert stack.run(stack.cross_connects("sw-norte")) == []


@pytest.mark.usefixtures("q_d")
def test_a_node_that_refuses_leaves_every_device_as_it_was(stack: Stack) -> None:
    async def lock() -> NetconfClient:
        holder = await stack.client("qkd-almagro")
        await holder.lock("candidate")  # another operator at work on that node
        return holder
    holder = stack.run(lock())
    with stack.ncclient() as m:
        with pytest.raises(NcRPCError) as err:
            m.edit_config(target="running", config=_config(
                _link("c-a", ("qkd-concepcion", 1), ("qkd-almagro", 1), _uuid(5))))
        with pytest.raises(NcRPCError) as conflict:  # the connectivity stratum refuses this one
            m.edit_config(target="running", config=_config(
                _link("q-d2", ("qkd-quintin", 1), ("qkd-distrito", 1), _uuid(7))))
    stack.run(holder.close_session())
    assert err.value.tag == "operation-failed"
    assert "device qkd-almagro refused the change" in err.value.message and "locked" in err.value.message
    assert conflict.value.tag == "operation-failed"
    assert ("the connectivity controller refused the optical paths: optical path 'q-d2': "
            "quintin:1 already ends optical path 'q-d'") in conflict.value.message
    for node in ("qkd-concepcion", "qkd-almagro", "qkd-quintin", "qkd-distrito"):
        assert set(stack.run(stack.node_links(node))) <= {_uuid(1)}
    assert set(stack.run(stack.optical_paths())) == {"q-d"}
    assert stack.run(stack.cross_connects("sw-concepcion")) == [(1, 4)]  # c-a's cross-connect was undone
    assert stack.run(stack.link_state("c-a")) is None


@pytest.mark.usefixtures("q_d")
def test_cut_and_eavesdropper_become_link_status_change_and_qber_alarm(stack: Stack, tmp_path) -> None:
    async def scenario():
        async with await stack.client() as nc:
            await nc.create_subscription()
            await stack.plant("cut-span", "concepcion-distrito")
            (down,) = await asyncio.wait_for(_events(nc, "link-status-change", 1), 15)
            await stack.plant("repair-span", "concepcion-distrito")
            (up,) = await asyncio.wait_for(_events(nc, "link-status-change", 1), 15)
            await stack.plant("attach-eavesdropper", "quintin-concepcion", "<fraction>1</fraction>")
            (raised,) = await asyncio.wait_for(_events(nc, "qber-alarm", 1), 15)
            await stack.plant("remove-eavesdropper", "quintin-concepcion")
            (cleared,) = await asyncio.wait_for(_events(nc, "qber-alarm", 1), 15)
            return down, up, raised, cleared
    down, up, raised, cleared = stack.run(scenario())
    text = lambda event, tag: event.findtext(f"f:{tag}", namespaces=NS)  # noqa: E731
    assert (text(down, "link-id"), text(down, "status"), text(down, "previous-status")) == \
        ("q-d", "etsi-qkdn-types:PASSIVE", "etsi-qkdn-types:ACTIVE")
    assert "concepcion-distrito cut" in text(down, "reason")
    assert text(up, "status") == "etsi-qkdn-types:ACTIVE"
    assert (text(raised, "raised"), text(raised, "link-id")) == ("true", "q-d")
    assert float(text(raised, "qber")) > float(text(raised, "threshold")) == 5.0
    assert text(cleared, "raised") == "false"
    yanglint("notif", [raised], tmp_path)


@pytest.mark.usefixtures("q_d")
def test_drift_is_noticed_and_repaired(stack: Stack) -> None:
    # qkd-distrito restarted with another configuration: its saved datastores are gone.
    stack.run(stack.host.crash("qkd-distrito"))
    shutil.rmtree(stack.host.network.device_dir("qkd-distrito") / "datastores")
    stack.run(stack.host.restart("qkd-distrito"))
    stack.run(stack.until(lambda: stack.active_on("qkd-distrito", _uuid(1))))
    # Removed by hand while the controller stays connected: found by the periodic resync.
    async def remove_by_hand():
        async with await stack.client("qkd-quintin") as nc:
            await nc.edit_config(f'<qkd_node xmlns="{ETSI}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                 f'<qkd_links><qkd_link nc:operation="delete"><qkdl_id>{_uuid(1)}</qkdl_id>'
                                 f'</qkd_link></qkd_links></qkd_node>')
    stack.run(remove_by_hand())
    assert _uuid(1) not in stack.run(stack.node_links("qkd-quintin"))
    stack.run(stack.ctl.resync())
    stack.run(stack.until(lambda: stack.active_on("qkd-quintin", _uuid(1))))


@pytest.mark.usefixtures("q_d")
def test_links_configured_by_hand_are_discovered_and_deleting_cleans_up(stack: Stack) -> None:
    async def configure_by_hand():
        for node, local, remote, role in (("qkd-almagro", 4, 1, "TRANSMITTER"), ("qkd-montegancedo", 1, 4, "RECEIVER")):
            peer = "qkd-montegancedo" if node == "qkd-almagro" else "qkd-almagro"
            async with await stack.client(node) as nc:
                await nc.edit_config(
                    f'<qkd_node xmlns="{ETSI}" xmlns:t="{TYPES}"><qkd_links><qkd_link><qkdl_id>{_uuid(6)}</qkdl_id>'
                    f'<qkdl_local><qkdn_id>{node_uuid(node)}</qkdn_id><qkdi_id>{local}</qkdi_id></qkdl_local>'
                    f'<qkdl_remote><qkdn_id>{node_uuid(peer)}</qkdn_id><qkdi_id>{remote}</qkdi_id></qkdl_remote>'
                    f'<qkdl_type>t:PHYS</qkdl_type><phys_qkd_role>t:{role}</phys_qkd_role></qkd_link></qkd_links>'
                    f'</qkd_node>')
    stack.run(configure_by_hand())
    stack.run(stack.ctl.resync())
    with stack.ncclient() as m:
        link = m.get_config("running", filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>qkd'
                                                          f'</network-id><link xmlns="{NT}"><link-id>{_uuid(6)}'
                                                          f'</link-id></link></network></networks>')).data_ele
        assert link.xpath("//nt:source/nt:source-node/text()", namespaces=NS) == ["qkd-almagro"]
        assert link.xpath("//nt:destination/nt:dest-tp/text()", namespaces=NS) == ["1"]
        m.edit_config(target="running", config=_config(_delete(_uuid(6), "q-d")))
    for node in ("qkd-almagro", "qkd-montegancedo", "qkd-quintin", "qkd-distrito"):
        assert stack.run(stack.node_links(node)) == {}
    assert stack.run(stack.optical_paths()) == {}
    assert stack.run(stack.cross_connects("sw-concepcion")) == []
