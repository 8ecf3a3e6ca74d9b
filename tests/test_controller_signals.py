"""The stratum controllers signal their state changes (NetconfServer.signals_state): an
on-change YANG-Push subscription (RFC 8641) to a controller's operational state, taken with
our client as the console takes it, gets a push-change-update when the devices under the
controller change (a span cut in the twin, a switch or QKD node lost, a QKD link down, an
elementary link down, an entanglement session made active by the controller's own loop),
and nothing while nothing changes; a controller whose devices are quiet is not looked at
at all meanwhile (no poll). The connectivity and forwarding controllers' resync periods are
long, so that only the signals of their hooks can bring the changes; the fabric controller
resyncs every 2 s and the entanglement controller passes every 0.5 s (tests/entanglement_net.py),
and those passes signal too."""
from __future__ import annotations

import asyncio

import pytest
from lxml import etree

from conftest import ForwardingStack, HostedDevices
from controller.connectivity import ConnectivityController
from devices.plant import NS as PLANT_NS
from devices.topology import default_topology
from entanglement_net import EntanglementNet, run
from models import entanglement as em
from models.ns import NODE_EXT
from netconf_core import NetconfClient
from netconf_core.server import User

NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
ALARMS = "urn:ietf:params:xml:ns:yang:ietf-alarms"
FWD = "urn:qstrata:yang:qi-forwarding"
TYPES = "urn:etsi:qkd:yang:etsi-qkd-node-types"
ES = "urn:qstrata:yang:qi-entanglement-service"
YP = "urn:ietf:params:xml:ns:yang:ietf-yang-push"
YP_NS = {"yp": YP}
USERS = {"admin": User(password="admin"), "monitor": User(password="monitor")}
IDLE_S = 1.5  # six looks of a polling subscription (push.ON_CHANGE_POLL)
QKDL = "00000000-0000-4000-8000-000000000001"
Q_D = (f'<networks xmlns="{NW}" xmlns:t="{TYPES}"><network><network-id>qkd</network-id>'
       f'<link xmlns="{NT}"><link-id>q-d</link-id>'
       f'<source><source-node>qkd-quintin</source-node><source-tp>1</source-tp></source>'
       f'<destination><dest-node>qkd-distrito</dest-node><dest-tp>2</dest-tp></destination>'
       f'<qkd-link xmlns="{FWD}"><qkdl-id>{QKDL}</qkdl-id><link-type>t:PHYS</link-type></qkd-link>'
       f'</link></network></networks>')


class LookedAt(ConnectivityController):
    """The connectivity controller, counting the calls of its state provider: each look of
    an on-change subscription at its operational state is one."""

    looks = 0

    async def state(self):
        self.looks += 1
        return await super().state()


def edits(update: etree._Element) -> list[tuple[str, str]]:
    """(target, the value's text) of each edit of a push-change-update."""
    out = []
    for edit in update.iterfind("yp:datastore-changes/yp:yang-patch/yp:edit", YP_NS):
        value = edit.find("yp:value", YP_NS)
        out.append((edit.findtext("yp:target", namespaces=YP_NS) or "",
                    " ".join(value.itertext()) if value is not None else ""))
    return out


async def quiet(subscription, seconds: float = IDLE_S) -> bool:
    """Whether the subscription delivers nothing within `seconds`."""
    try:
        await subscription.next(seconds)
    except TimeoutError:
        return True
    return False


async def pushed(subscription, *words: str, timeout: float = 20.0) -> None:
    """Wait (bounded) for a push-change-update with an edit whose target and value hold `words`."""
    async with asyncio.timeout(timeout):
        while True:
            update = await subscription.next()
            assert update is not None, "the subscription ended"
            assert etree.QName(update).localname == "push-change-update"
            if any(all(w in f"{target} {value}" for w in words) for target, value in edits(update)):
                return


async def subscribe(nc: NetconfClient, xpath: str, **prefixes: str):
    """An on-change subscription to operational, past its first push-update."""
    subscription = await nc.establish_subscription("operational", xpath=xpath, namespaces=prefixes, on_change=True)
    first = await subscription.next(30)
    assert etree.QName(first).localname == "push-update"
    return subscription


@pytest.fixture
def madrid_fibre():
    devices = HostedDevices(default_topology())
    ctl = LookedAt("connectivity", devices.of_kind("fibre-plant", "optical-switch"), USERS, resync_period=3600)
    devices.run(ctl.start())
    devices.run(ctl.wait_synced())
    yield devices, ctl
    devices.close(ctl)


def test_connectivity_pushes_a_span_cut_and_a_lost_switch_and_is_not_polled(madrid_fibre) -> None:
    devices, ctl = madrid_fibre

    async def scenario() -> None:
        assert ctl.server.signals_state
        async with await NetconfClient.connect("127.0.0.1", ctl.port, "admin", password="admin") as nc:
            subscription = await subscribe(nc, "/nw:networks | /al:alarms/al:alarm-list", nw=NW, al=ALARMS)
            looks = ctl.looks
            assert await quiet(subscription)
            assert ctl.looks == looks   # nothing changed: not looked at
            async with await NetconfClient.connect(*_at(devices, "fibre-plant")) as plant:
                await plant.dispatch(f'<cut-span xmlns="{PLANT_NS}"><span-id>quintin-concepcion</span-id></cut-span>')
            await pushed(subscription, "quintin-concepcion", "down")
            # A switch lost (no notification, no resync): the link's loss of its session signals.
            await devices.host.crash("sw-norte")
            await pushed(subscription, "sw-norte", "unknown")
    devices.run(scenario())


def _at(devices: HostedDevices, name: str) -> tuple:
    endpoint = devices.devices[name]
    return endpoint.host, endpoint.port, "admin", "admin"


@pytest.fixture
def madrid_qkd():
    stack = ForwardingStack(resync_period=3600)
    yield stack
    stack.close()


def test_forwarding_pushes_a_qkd_link_down_and_a_lost_node(madrid_qkd: ForwardingStack) -> None:
    stack = madrid_qkd
    link_status = "/nw:networks/nw:network/nt:link/f:qkd-link/f:status"
    node_status = "/nw:networks/nw:network/nw:node/f:qkd-node/f:status"
    prefixes = {"nw": NW, "nt": NT, "f": FWD}

    async def configure() -> None:
        async with await stack.client() as nc:
            await nc.edit_config(Q_D, target="candidate")
            await nc.commit()

            async def active() -> bool:
                data = await nc.get(filter=("xpath", link_status, prefixes))
                return data is not None and "ACTIVE" in "".join(data.itertext())
            await stack.until(active, timeout=20)

    async def scenario() -> None:
        assert stack.ctl.server.signals_state
        async with await stack.client() as nc:
            subscription = await subscribe(nc, f"{link_status} | {node_status}", **prefixes)
            # The link's skr moves every node period, pushed by the nodes; its status does not.
            assert await quiet(subscription)
            async with await stack.client("qkd-quintin") as node:
                await node.dispatch(f'<inject-failure xmlns="{NODE_EXT}"><reason>laser aged</reason></inject-failure>')
            await pushed(subscription, "q-d", "OFF")
            # A node lost (no notification, no resync): the link's loss of its session signals.
            await stack.host.crash("qkd-distrito")
            await pushed(subscription, "qkd-distrito", "FAILURE")
    stack.run(configure())
    stack.run(scenario())


def test_fabric_pushes_an_elementary_link_down(tmp_path) -> None:
    async def test(net: EntanglementNet) -> None:
        nc = await net.session("fabric")
        subscription = await subscribe(nc, "/nw:networks", nw=NW)
        plant = await net.session("fibre-plant")
        await plant.dispatch(f'<cut-span xmlns="{PLANT_NS}"><span-id>r1-r2</span-id></cut-span>')
        await pushed(subscription, "el-r1-r2", "down")
    run(tmp_path, test, service=False)


def test_entanglement_pushes_a_session_its_loop_made_active(tmp_path) -> None:
    async def test(net: EntanglementNet) -> None:
        nc = await net.session("entanglement")
        subscription = await subscribe(nc, "/es:sessions", es=ES)
        await nc.edit_config(em.SessionRequest("pairs", "app-alice", "app-bob", 0.8, pair_rate=5).config())
        # Installing comes with the commit; active with a pass of the reconcile loop, which signals.
        await pushed(subscription, "pairs", "active")
    run(tmp_path, test)
