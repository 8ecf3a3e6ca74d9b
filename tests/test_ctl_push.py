"""The forwarding controller follows its QKD nodes' link state by YANG-Push (RFC 8641).

Against a DeviceHost on the Madrid topology with a connectivity controller, and the resync
period so long that no resync runs during a test: the controller keeps one on-change
subscription on each node, and the jitter of a link's skr and the QBER a very weak
eavesdropper adds reach its qi-forwarding state through it: the nodes notify neither (skr
moves less than sdqkdn_link_perf_update's share, the QBER stays under the threshold), so
without the subscription they would wait for the next resync. Every engine server offers ietf-yang-push, so a
controller that watches nothing (watches=()) stands for a device without it: it subscribes
to nothing and its resync reads the nodes' link state, as polling did.
"""
from __future__ import annotations

import pytest
from lxml import etree

from conftest import ForwardingStack

NW = "urn:ietf:params:xml:ns:yang:ietf-network"
NT = "urn:ietf:params:xml:ns:yang:ietf-network-topology"
FWD = "urn:qstrata:yang:qi-forwarding"
ETSI = "urn:etsi:qkd:yang:etsi-qkd-node"
FP = "urn:qstrata:yang:qi-fibre-plant"
TYPES = "urn:etsi:qkd:yang:etsi-qkd-node-types"
SN = "urn:ietf:params:xml:ns:yang:ietf-subscribed-notifications"
MON = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
NS = {"f": FWD, "e": ETSI, "sn": SN}
# An intercept-resend on this share of the photons: QBER + 0.1 %, skr a few % lower, which
# the nodes do not notify.
EAVESDROPPED = 0.004
QKDL = "00000000-0000-4000-8000-000000000001"
# The quantum channel of qkd-quintin:1 - qkd-distrito:2 bypasses Concepcion through sw-concepcion.
QD = (f'<networks xmlns="{NW}" xmlns:t="{TYPES}"><network><network-id>qkd</network-id>'
      f'<link xmlns="{NT}"><link-id>q-d</link-id>'
      f'<source><source-node>qkd-quintin</source-node><source-tp>1</source-tp></source>'
      f'<destination><dest-node>qkd-distrito</dest-node><dest-tp>2</dest-tp></destination>'
      f'<qkd-link xmlns="{FWD}"><qkdl-id>{QKDL}</qkdl-id><link-type>t:PHYS</link-type></qkd-link>'
      f'</link></network></networks>')


class Stack(ForwardingStack):
    """Madrid devices, a connectivity controller and a forwarding controller (its resync
    period and watches given), with the PHYS link q-d ACTIVE."""

    def __init__(self, resync_period: float, **kwargs) -> None:
        super().__init__(resync_period, **kwargs)
        self.run(self._configure())

    async def _configure(self) -> None:
        async with await self.client() as nc:
            await nc.edit_config(QD, target="candidate")
            await nc.commit()
        await self.until(lambda: self.has("status", "etsi-qkdn-types:ACTIVE"))

    async def link_state(self) -> etree._Element:
        """q-d's qkd-link state as the controller serves it north."""
        async with await self.client() as nc:
            data = await nc.get(filter=("subtree", f'<networks xmlns="{NW}"><network><network-id>qkd</network-id>'
                                                   f'<link xmlns="{NT}"><link-id>q-d</link-id></link>'
                                                   f'</network></networks>'))
        return data.find(".//f:qkd-link", namespaces=NS)

    async def has(self, leaf: str, value: str) -> bool:
        state = await self.link_state()
        return state is not None and state.findtext(f"f:{leaf}", namespaces=NS) == value

    async def rpcs_received(self, node: str) -> int:
        """in-rpcs of a QKD node's server (RFC 6022 statistics), this read included."""
        async with await self.client(node) as nc:
            data = await nc.get(filter=("subtree", f'<netconf-state xmlns="{MON}"><statistics/></netconf-state>'))
        return int(data.findtext(f".//{{{MON}}}in-rpcs"))

    async def subscriptions(self, node: str) -> list[etree._Element]:
        """The YANG-Push subscriptions a QKD node holds."""
        async with await self.client(node) as nc:
            data = await nc.get(filter=("subtree", f'<subscriptions xmlns="{SN}"/>'))
        return data.findall(".//sn:subscription", namespaces=NS)

    async def eavesdrop(self, fraction: float) -> None:
        async with await self.client("fibre-plant") as nc:
            await nc.dispatch(f'<attach-eavesdropper xmlns="{FP}"><span-id>quintin-concepcion</span-id>'
                              f'<fraction>{fraction}</fraction></attach-eavesdropper>')


@pytest.fixture
def pushed():
    running = Stack(resync_period=3600)
    yield running
    running.close()


@pytest.fixture
def polled():
    running = Stack(resync_period=0.5, watches=())
    yield running
    running.close()


def _qber(state: etree._Element) -> float:
    return float(state.findtext("f:qber", namespaces=NS))


def test_skr_and_qber_changes_reach_the_controller_through_its_subscription(pushed: Stack) -> None:
    async def scenario() -> None:
        assert all(pushed.ctl.links[n].pushing for n in ("qkd-quintin", "qkd-distrito"))
        for node in ("qkd-quintin", "qkd-distrito"):
            (subscription,) = await pushed.subscriptions(node)
            assert subscription.find(".//{urn:ietf:params:xml:ns:yang:ietf-yang-push}on-change") is not None
        # The jitter of skr: each node period a new value, none of them notified.
        seen = set()

        async def several_skr() -> bool:
            seen.add((await pushed.link_state()).findtext("f:skr", namespaces=NS))
            return len(seen) >= 3
        await pushed.until(several_skr, timeout=20)
        # The pushed changes are read from the subscription's copy, not by asking the node:
        # over three more skr values, the source node answers nothing but this test's reads
        # (the first one's close-session, and the second <get>).
        rpcs = await pushed.rpcs_received("qkd-quintin")
        seen.clear()
        await pushed.until(several_skr, timeout=20)
        assert await pushed.rpcs_received("qkd-quintin") == rpcs + 2
        before = _qber(await pushed.link_state())
        await pushed.eavesdrop(EAVESDROPPED)

        async def raised() -> bool:
            return _qber(await pushed.link_state()) > before + 0.05
        await pushed.until(raised, timeout=20)
        assert _qber(await pushed.link_state()) < 5.0
    pushed.run(scenario())


def test_a_controller_without_subscriptions_polls_at_its_resync(polled: Stack) -> None:
    async def scenario() -> None:
        for node in ("qkd-quintin", "qkd-distrito"):
            assert await polled.subscriptions(node) == []
            assert polled.ctl.polled(polled.ctl.links[node])
        before = _qber(await polled.link_state())
        await polled.eavesdrop(EAVESDROPPED)

        async def raised() -> bool:
            return _qber(await polled.link_state()) > before + 0.05
        await polled.until(raised, timeout=20)
    polled.run(scenario())
