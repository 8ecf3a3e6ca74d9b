"""Cross-domain key services over the whole federated stack, on 127.0.0.1: four domains of
devices/topologies/federation.yaml (A, B, C in a line, D a second way from A to C), each with
its own devices' controllers, orchestrator and federation agent, and the federation platform;
real SSH sessions throughout, keys fetched through ETSI GS QKD 014 at both ends.
"""
from __future__ import annotations

import asyncio
import datetime
import pathlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal

import aiohttp
import pytest
from lxml import etree

from devices.topology import embedded_topology
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from models.federation import (DeliveryReport, EndCount, read_charging, read_disputes, read_settlement,
                               settle_request)
from models.ns import FEDERATION as FED_NS
from orchestrator.federation_charging import CLOCK_TOLERANCE_S
from models.forwarding import ForwardingView
from models.ns import NW as NW_NS
from test_demo import check_summary
from tools.demo_federation import service_state
from tools.demo_steps import exchange_keys
from tools.federated_stack import (ADMIN, PLATFORM_USER, PRICE_PER_KBIT, FederatedStack, service_request,
                                  service_user)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NS = {"f": FED_NS}
INT_NS = "urn:qstrata:yang:qi-intent"
KM_NS = "urn:qstrata:yang:qi-key-manager"
WAIT_S = 45.0  # each step's own bound: a step that takes longer fails, naming what it waited for
SCENARIO_S = 180.0  # the whole scenario's: above its steps' bounds, so that the failing step is named
DEMO_STEPS = [
    "Start domains A, B, C, D (devices, 3 controllers, orchestrator, agent) and the federation platform",
    "The domains join, are admitted and agree transit",
    "A user of domain A asks the platform for keys between sae-a (A) and sae-c (C)",
    "The platform routes the service through A, B, C",
    "Fetch keys through ETSI GS QKD 014 at both ends",
    "Cut the fibre between domains A and B",
    "The platform re-routes the service through D",
    "Keys still match over the new route",
    "Charging records add up to the keys delivered",
    "Settle the payer's period; rate the members",
    "Roaming: an intent of C for keys with sae-a is escalated to the platform",
    "Fetch the roaming intent's keys at both ends",
    "Mobility: sae-c moves to D's key manager; its services follow it",
    "Keys match for both services after the move",
]


def run(scenario: Callable[[FederatedStack, NetconfClient], Awaitable[None]]) -> None:
    """The federation started and federated, the service s1 (sae-a in A to sae-c in C)
    requested by a user of A, then the scenario."""
    async def main() -> None:
        async with FederatedStack(embedded_topology("federation.yaml")) as fed:
            await fed.federate(WAIT_S)
            user = await fed.connect(service_user("A"))
            try:
                await user.edit_config(service_request("s1", "A", ("sae-a", "A"), ("sae-c", "C"), 10000))
                await scenario(fed, user)
            finally:
                user.close()
    asyncio.run(asyncio.wait_for(main(), SCENARIO_S))


async def until(check: Callable[[], Awaitable[object]], what: str, seen: Callable[[], object] = lambda: None) -> object:
    """Poll `check` until it returns something true; fail after WAIT_S, with what `seen` says
    was last observed."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not (result := await check()):
                await asyncio.sleep(0.1)
            return result
    except TimeoutError:
        raise AssertionError(f"still not so after {WAIT_S:g} s: {what}; last seen: {seen()}") from None


async def routed(user: NetconfClient, route: list[str]) -> dict:
    last: list[dict] = [{}]

    async def active() -> dict | None:
        last[0] = s1 = service_state(await user.get(("subtree", f'<federation xmlns="{FED_NS}"><services/>'
                                                     '</federation>')), "s1")
        return s1 if s1.get("status") == "active" and s1["route"] == route else None
    return await until(active, f"service s1 active through {route}", lambda: last[0])


async def keys_match(fed: FederatedStack, number: int) -> int:
    urls = {row.id: row.etsi014_url for row in fed.host.table()}
    async with aiohttp.ClientSession() as http:
        ids, same = await exchange_keys(http, (urls["km-a1"], "sae-a"), (urls["km-c3"], "sae-c"), number,
                                        timeout=WAIT_S, tls=fed.sae_ssl)
    assert same and len(ids) == number
    return number


async def level(fed: FederatedStack, name: str, port: int, domain: str = "A") -> NetconfClient:
    """A session to a device of the plant or a level of `domain`, as its administrator (its
    host key pinned)."""
    return await fed.stacks[domain].endpoint(name, port).connect()


async def intents(fed: FederatedStack, domain: str) -> dict[str, etree._Element]:
    orchestrator = fed.stacks[domain].orchestrator
    async with await level(fed, "orchestrator", orchestrator.port, domain) as nc:
        data = await nc.get(("subtree", f'<intents xmlns="{INT_NS}"/>'))
    return {i.findtext(f"{{{INT_NS}}}name"): i for i in data.iter(f"{{{INT_NS}}}intent")} if data is not None else {}


async def forwarding(fed: FederatedStack, domain: str) -> ForwardingView:
    async with await level(fed, "forwarding", fed.stacks[domain].forwarding.port, domain) as nc:
        return ForwardingView.parse(await nc.get(("subtree", f'<networks xmlns="{NW_NS}"/>')))


async def key_manager(fed: FederatedStack, km_id: str) -> etree._Element:
    port = next(row.port for row in fed.host.table() if row.id == km_id)
    async with await level(fed, km_id, port) as nc:
        data = await nc.get(("subtree", f'<key-manager xmlns="{KM_NS}"/>'))
    return data.find(f"{{{KM_NS}}}key-manager")


def km_text(root: etree._Element, path: str) -> list[str]:
    return root.xpath(path, namespaces={"k": KM_NS})


async def charging(fed: FederatedStack) -> etree._Element:
    async with await fed.connect(ADMIN) as admin:
        return await admin.get(("subtree", f'<federation xmlns="{FED_NS}"><charging/></federation>'))


async def billed(fed: FederatedStack) -> dict[tuple[str, str | None], int]:
    """Keys charged for s1 by member and agreement, over all their records."""
    totals: dict[tuple[str, str | None], int] = {}
    for c in read_charging(await charging(fed)).values():
        if c.service_id == "s1":
            totals[(c.member_id, c.agreement)] = totals.get((c.member_id, c.agreement), 0) + c.keys
    return totals


async def report_all(fed: FederatedStack) -> None:
    """Every domain reports, twice, so that each hop's counts are compared both ways."""
    for _ in range(2):
        await asyncio.sleep(CLOCK_TOLERANCE_S + 0.1)
        for member in fed.members.values():
            await member.report()


def test_cross_domain_service_through_a_b_c_delivers_matching_keys():
    async def scenario(fed: FederatedStack, user: NetconfClient) -> None:
        s1 = await routed(user, ["A", "B", "C"])
        assert s1["reason"] == "routed through A, B, C"
        assert s1["segments"] == [("A", None, "qkd-a2", "fed-s1", "active"),
                                  ("B", "qkd-b1", "qkd-b2", "fed-s1", "active"),
                                  ("C", "qkd-c1", None, "fed-s1", "active")]
        # What a member sees of the others: border nodes with their qkdn_id and key manager,
        # shared SAEs, links; never a domain's inside (qkd-a1 and qkd-c3 are inner nodes).
        data = await user.get(("subtree", f'<federation xmlns="{FED_NS}"><advertisements/></federation>'))
        ads = {ad.findtext("f:member-id", namespaces=NS): ad for ad in data.iterfind(".//f:advertisement", NS)}
        assert ads["B"].xpath("f:border-node/f:node-id/text()", namespaces=NS) == ["qkd-b1", "qkd-b2"]
        assert all(ads["B"].xpath("f:border-node/f:qkdn-id/text()", namespaces=NS))
        assert ads["C"].xpath("f:sae/f:km-id/text()", namespaces=NS) == ["km-c3"]
        text = etree.tostring(data).decode()
        assert "qkd-a1" not in text and "qkd-c3" not in text
        # Each domain realised its segment as an intent between its border and the local SAE.
        realised = {d: (await intents(fed, d))["fed-s1"] for d in "ABC"}
        assert {d: i.findtext(f"{{{INT_NS}}}state") for d, i in realised.items()} == dict.fromkeys("ABC", "active")
        assert realised["A"].findtext(f"{{{INT_NS}}}segment/{{{INT_NS}}}egress-link") == "a2-b1"
        # Each domain configured its own end of the inter-domain links; they are up.
        fwd_a, fwd_b = await forwarding(fed, "A"), await forwarding(fed, "B")
        a2b1, b1a2 = fwd_a.links["a2-b1"], fwd_b.links["a2-b1"]
        assert (a2b1.a, a2b1.b, a2b1.peer_km) == (("qkd-a2", "2"), ("qkd-b1", "1"), "km-b1")
        assert (b1a2.a, b1a2.b, b1a2.peer_km) == (("qkd-b1", "1"), ("qkd-a2", "2"), "km-a2")
        assert a2b1.qkdl_id == b1a2.qkdl_id and a2b1.up and b1a2.up
        assert "qkd-b1" not in fwd_a.nodes and "qkd-a2" not in fwd_b.nodes
        # Keys: created at A's key manager, relayed by one-time pad through B, read at C's.
        delivered = await keys_match(fed, 4) + await keys_match(fed, 2)
        km_a1, km_b1, km_b2, km_c3 = [await key_manager(fed, k) for k in ("km-a1", "km-b1", "km-b2", "km-c3")]
        assert km_text(km_a1, "k:sessions/k:session/k:peer-km-id/text()") == ["km-c3"]
        assert km_text(km_c3, "k:sessions/k:session/k:peer-km-id/text()") == ["km-a1"]
        for transit in (km_b1, km_b2):  # routes towards both ends, no application session
            assert set(km_text(transit, "k:forwarding-table/k:route/k:destination-km-id/text()")) == {"km-a1", "km-c3"}
            assert km_text(transit, "k:sessions/k:session") == []
        assert km_text(km_b2, "k:forwarding-table/k:route[k:destination-km-id='km-c3']/k:next-hop-km-id/text()") \
            == ["km-c1"]
        pair = "k:relay-statistics/k:sae-pair[k:master-sae-id='sae-a'][k:slave-sae-id='sae-c']"
        assert km_text(km_b2, f"{pair}/k:forwarded-keys/text()") == [str(delivered)]
        assert km_text(km_c3, f"{pair}/k:received-keys/text()") == [str(delivered)]
    run(scenario)


def test_b_withdraws_the_service_moves_through_d_and_charging_adds_up():
    async def scenario(fed: FederatedStack, user: NetconfClient) -> None:
        await routed(user, ["A", "B", "C"])
        before = await keys_match(fed, 4)
        await fed.members["B"].withdraw("leaving the federation")
        s1 = await routed(user, ["A", "D", "C"])
        assert s1["reason"] == "re-routed through A, D, C: member B withdrew"
        assert [(d, i, e) for d, i, e, _, _ in s1["segments"]] == [("A", None, "qkd-a3"), ("D", "qkd-d1", "qkd-d2"),
                                                                   ("C", "qkd-c2", None)]
        after = await keys_match(fed, 3)
        # B's segment is released; B and its neighbours take down their ends of the links to each other.
        await until(lambda: _without(intents(fed, "B"), "fed-s1"), "B's segment intent removed")
        for domain, left in (("B", set()), ("A", {"a3-d1"}), ("C", {"d2-c2"})):
            await until(lambda: _external_links(fed, domain, left), f"{domain} keeps the links {left} only")
        assert (await intents(fed, "A"))["fed-s1"].findtext(f"{{{INT_NS}}}segment/{{{INT_NS}}}egress-link") == "a3-d1"
        await report_all(fed)
        # Each domain is charged on the segment and agreement that carried the keys, as both
        # ends of each hop counted them (their key managers' relay counters).
        assert await billed(fed) == {("A", None): before + after, ("B", "A-B"): before, ("C", "B-C"): before,
                                     ("C", "C-D"): after, ("D", "A-D"): after}
        data = await charging(fed)
        assert read_disputes(data) == {}
        for c in read_charging(data).values():
            price = Decimal(PRICE_PER_KBIT) if c.agreement else Decimal(0)
            assert c.bits == c.keys * 256 and c.amount == Decimal(c.bits) / 1000 * price, c
            assert (c.end_time is None) == (c.member_id in "ACD" and c.hop in ("a3-d1", "d2-c2")), c
    run(scenario)


def test_a_cut_inter_domain_link_is_advertised_down_and_routed_around_and_charging_holds():
    async def scenario(fed: FederatedStack, user: NetconfClient) -> None:
        await routed(user, ["A", "B", "C"])
        before = await keys_match(fed, 4)
        await report_all(fed)  # both ends of every hop have counted those keys
        # B, in transit, claims it passed a million keys on to C: C's key managers say otherwise.
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        await fed.members["B"].agent.report_delivery(DeliveryReport("s1", now, now, (
            EndCount("egress", "b2-c1", 1_000_000, 256_000_000),)))

        async def disputed() -> list:
            return list(read_disputes(await charging(fed)).values())
        [dispute] = await until(disputed, "the forged report is disputed by C's next report")
        assert (dispute.sender, dispute.receiver, dispute.disputed[0]) == ("B", "C", 1_000_000)
        assert dispute.received[0] < 1_000_000 and dispute.sent[0] == dispute.received[0] + 1_000_000
        plant = next(row for row in fed.host.table() if row.id == "fibre-plant")
        async with await level(fed, plant.id, plant.port) as nc:
            await nc.dispatch('<cut-span xmlns="urn:qstrata:yang:qi-fibre-plant"><span-id>a2-b1</span-id></cut-span>')
        await routed(user, ["A", "D", "C"])
        after = await keys_match(fed, 2)
        await report_all(fed)
        assert await billed(fed) == {("A", None): before + after, ("B", "A-B"): before, ("C", "B-C"): before,
                                     ("C", "C-D"): after, ("D", "A-D"): after}
        start = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
        end = start + datetime.timedelta(hours=2)
        async with await fed.connect(ADMIN) as admin:
            bill = read_settlement(await admin.dispatch(settle_request(
                "A", *(t.isoformat(timespec="seconds").replace("+00:00", "Z") for t in (start, end)))))
        lines = {(l.counterparty, l.agreement): (l.keys, l.disputed_keys) for l in bill.lines}
        # The dispute is over the hop B-C, on which both B's and C's records are billed.
        assert lines == {("B", "A-B"): (before, 1_000_000), ("C", "B-C"): (before, 1_000_000),
                         ("C", "C-D"): (after, 0), ("D", "A-D"): (after, 0)}
        assert bill.payable == Decimal((before * 2 + after * 2) * 256) / 1000 * Decimal(PRICE_PER_KBIT)

        async def offered_down() -> bool:
            async with await fed.connect(ADMIN) as admin:
                data = await admin.get(("subtree", f'<federation xmlns="{FED_NS}"><advertisements/></federation>'))
            capacity = data.xpath("//f:advertisement[f:member-id='A']/f:inter-domain-link[f:link-id='a2-b1']"
                                  "/f:capacity/text()", namespaces=NS)
            return capacity == ["0"]
        await until(offered_down, "A advertises the cut link with no capacity")
        assert not (await forwarding(fed, "A")).links["a2-b1"].up
    run(scenario)


def test_the_platform_manages_intents_on_a_domain_orchestrator_and_nothing_else():
    async def scenario(fed: FederatedStack, user: NetconfClient) -> None:
        await routed(user, ["A", "B", "C"])
        orchestrator = fed.stacks["A"].orchestrator
        async with await NetconfClient.connect(fed.host.network.host, orchestrator.port, PLATFORM_USER,
                                               client_keys=[fed.platform_key]) as platform:
            data = await platform.get(("subtree", f'<intents xmlns="{INT_NS}"/>'))
            assert data.xpath("//i:intent/i:name/text()", namespaces={"i": INT_NS}) == ["fed-s1"]
            with pytest.raises(RPCError) as refused:  # e.g. making itself the domain's administrator
                await platform.edit_config('<nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"><groups>'
                                           f"<group><name>read-write</name><user-name>{PLATFORM_USER}</user-name>"
                                           "</group></groups></nacm>")
            assert refused.value.tag == "access-denied"
    run(scenario)


async def _without(intents_of: Awaitable[dict], name: str) -> bool:
    return name not in await intents_of


async def _external_links(fed: FederatedStack, domain: str, expected: set[str]) -> bool:
    return {link.id for link in (await forwarding(fed, domain)).links.values() if link.external} == expected


def test_federation_demo_runs_every_step_and_ends_with_its_summary():
    # Steps may take up to 60 s (30 by default): in CI a second suite shares the two cores, and a
    # re-route that sets up new QKD links once took longer than 30 s there.
    result = subprocess.run([sys.executable, "-m", "tools.cli", "demo", "--federation", "--timeout", "60"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_summary(result.stdout, DEMO_STEPS)
    assert "active through A, D, C" in result.stdout and "agreement B-C" in result.stdout
    assert "agreement C-D" in result.stdout and "no disputes" in result.stdout and "rating D:" in result.stdout
    assert '"key"' not in result.stdout and "shutting down" in result.stdout
    # The closing summary says what roaming, mobility, charging, settlement and ratings came to.
    closing = result.stdout[result.stdout.rindex("\nFEDERATION\n"):result.stdout.rindex("\nSUMMARY\n")]
    lines = {line.strip().partition(": ")[0]: line.strip().partition(": ")[2] for line in closing.splitlines()[2:]}
    for part, what in (("roaming", "intent to-bank-a of C (sae-c -> sae-a) served by service roam-C-to-bank-a"),
                       ("mobility", "sae-c moved from C to D; both services re-routed in"),
                       ("charging", "confirmed by both ends of every hop; no disputes"),
                       ("settlement", "A owes"), ("ratings", "(delivery ")):
        assert what in lines.get(part, ""), closing
    assert "keys match for both after the move" in closing and "not reached" not in closing


def test_a_restarted_agent_neither_reports_a_key_again_nor_loses_one(tmp_path):
    """B's agent (the transit domain's) restarts mid-service with the member's key: it reads what
    it had reported from its state directory, so its totals stay true and no dispute follows."""
    async def main() -> None:
        async with FederatedStack(embedded_topology("federation.yaml")) as fed:
            agent_state = tmp_path / "B-agent"
            old = fed.members["B"]  # B's agent keeps its baselines in a state directory
            await old.stop()
            fed.members["B"] = fed.member("B", old.agent.key, agent_state)
            await fed.members["B"].start(WAIT_S)
            await fed.federate(WAIT_S)
            user = await fed.connect(service_user("A"))
            try:
                await user.edit_config(service_request("s1", "A", ("sae-a", "A"), ("sae-c", "C"), 10000))
                await routed(user, ["A", "B", "C"])
                before = await keys_match(fed, 4)
                await report_all(fed)
                assert (agent_state / "charging.json").exists()
                old = fed.members["B"]
                await old.stop()
                fed.members["B"] = restarted = fed.member("B", old.agent.key, agent_state)
                await restarted.start(WAIT_S)
                await restarted.agent.wait_admitted(WAIT_S)
                assert restarted.readings == old.readings
                after = await keys_match(fed, 3)
                await report_all(fed)
                assert await billed(fed) == {("A", None): before + after, ("B", "A-B"): before + after,
                                             ("C", "B-C"): before + after}
                assert read_disputes(await charging(fed)) == {}
            finally:
                user.close()
    asyncio.run(asyncio.wait_for(main(), SCENARIO_S))
