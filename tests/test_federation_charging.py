"""Charging, disputes, settlement and ratings of the federation platform over real SSH sessions
on 127.0.0.1: the platform and the four members' agents of tests/test_federation.py (A-B-C and
A-D-C, the route through D dearer), whose domains report what their key managers counted at
both ends of their segments (`Federation.report`, `Federation.carry`); a third-party client
(ncclient) and the `qstrata federation` command line settle too.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from decimal import Decimal

import libyang
import pytest
from lxml import etree
from ncclient import manager
from ncclient.xml_ import to_ele

from models.federation import (Charge, DeliveryReport, Dispute, EndCount, Rating, Settlement, SettlementLine,
                               delivery_report, federation_state, read_charging, read_delivery_report, read_disputes,
                               read_ratings, read_settlement, settle_request, settlement_output)
from models.ns import FEDERATION
from netconf_core.datastore import empty_tree, merge_state
from netconf_core.errors import RPCError
from netconf_core.schema_cache import schema_for
from orchestrator.federation import SegmentReply
from orchestrator.federation_charging import iso
from test_federation import ADMIN_PW, ALICE_PW, FED_NS, NS, Federation, records, resources, run, service, state

KEY_BITS = 256


def kbit_price(keys: int, price: str) -> Decimal:
    return Decimal(keys * KEY_BITS) / 1000 * Decimal(price)


def period(before: float = 60, after: float = 60) -> tuple[str, str]:
    return iso(time.time() - before), iso(time.time() + after)


def test_a_reroute_bills_each_domain_on_the_agreement_that_carried_it_and_settles(tmp_path):
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C")
        start, end = period()
        await fed.carry("s1", 4, "ABC")
        await fed.agents["B"].update(resources("B", without=("b2-c1",)))  # B no longer offers its link to C
        await fed.platform.settled()
        assert service(await state(alice), "s1")["route"] == ["A", "D", "C"]
        await fed.carry("s1", 4, "ADC")
        # C was paid under b-c for the keys that came through B, under c-d for those through D.
        charged = records(await state(fed.admin))
        for key, keys, price, closed in ((("C", "s1", "b-c"), 4, "0.003", True),
                                         (("C", "s1", "c-d"), 4, "0.005", False),
                                         (("B", "s1", "a-b"), 4, "0.002", True),
                                         (("D", "s1", "a-d"), 4, "0.005", False)):
            record = charged[key]
            assert (int(record["keys"]), Decimal(record["amount"]), record["end-time"] is not None) == (
                keys, kbit_price(keys, price), closed), key
        # The payer's settlement: one line per agreement and counterparty.
        bill = read_settlement(await alice.dispatch(settle_request("A", start, end)))
        lines = {(l.direction, l.counterparty, l.agreement): (l.keys, l.bits, l.amount, l.disputed_keys)
                 for l in bill.lines}
        assert lines == {("payable", "B", "a-b"): (4, 1024, kbit_price(4, "0.002"), 0),
                         ("payable", "C", "b-c"): (4, 1024, kbit_price(4, "0.003"), 0),
                         ("payable", "C", "c-d"): (4, 1024, kbit_price(4, "0.005"), 0),
                         ("payable", "D", "a-d"): (4, 1024, kbit_price(4, "0.005"), 0)}
        assert (bill.receivable, bill.payable, bill.net) == (0, sum(l[2] for l in lines.values()),
                                                             -sum(l[2] for l in lines.values()))
        # C's, asked by its own agent: what A owes it; a period before the deliveries: nothing.
        c = await fed.agents["C"].session()
        bill = read_settlement(await c.dispatch(settle_request("C", start, end)))
        assert {(l.direction, l.counterparty, l.agreement, l.keys) for l in bill.lines} == {
            ("receivable", "A", "b-c", 4), ("receivable", "A", "c-d", 4)}
        earlier = read_settlement(await c.dispatch(settle_request("C", iso(time.time() - 7200),
                                                                  iso(time.time() - 3600))))
        assert earlier.lines == () and earlier.receivable == 0
        # Bad requests: a period that ends before it starts; another member's settlement.
        with pytest.raises(RPCError) as err:
            await c.dispatch(settle_request("C", end, start))
        assert err.value.tag == "invalid-value" and err.value.info.get("bad-element") == "period-end"
        for client, member in ((c, "A"), (alice, "C")):
            with pytest.raises(RPCError) as err:
                await client.dispatch(settle_request(member, start, end))
            assert err.value.tag == "access-denied" and f"not {member}" in err.value.message
        with pytest.raises(RPCError) as err:
            await fed.admin.dispatch(settle_request("X", start, end))
        assert err.value.tag == "invalid-value" and "no member X" in err.value.message
        # ncclient, a third-party client, settles A as the administrator.
        def with_ncclient() -> etree._Element:
            with manager.connect(host="127.0.0.1", port=fed.platform.port, username="admin", password=ADMIN_PW,
                                 hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30) as m:
                reply = m.dispatch(to_ele(etree.tostring(settle_request("A", start, end), encoding="unicode")))
                return etree.fromstring(reply.xml.encode())
        by_ncclient = read_settlement(await asyncio.to_thread(with_ncclient))
        assert by_ncclient.payable == bill_payable(lines) and len(by_ncclient.lines) == 4
        # The command line, as alice.
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "federation", "settle", "A", "--port", str(fed.platform.port),
            "--user", "alice", "--password", ALICE_PW, "--host-key", fed.platform.server.public_host_key,
            "--from", start, "--to", end, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, errors = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, errors.decode()
        text = out.decode()
        assert f"settlement of A from {start} to {end}" in text
        assert "payable     C             c-d                 4       1024" in text
        assert f"payable {bill_payable(lines)}" in text
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "federation", "settle", "C", "--port", str(fed.platform.port),
            "--user", "alice", "--password", ALICE_PW, "--host-key", fed.platform.server.public_host_key,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, errors = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 1 and "the platform refused: access-denied" in errors.decode()
        secret = tmp_path / "admin-password"  # the password off the command line
        secret.write_text(ADMIN_PW + "\n")
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "federation", "ratings", "--port", str(fed.platform.port),
            "--password-file", str(secret), "--host-key", fed.platform.server.public_host_key,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, errors = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, errors.decode()
        rows = {line.split()[0]: line.split()[1:] for line in out.decode().splitlines()[1:]}
        assert set(rows) == {"A", "B", "C", "D"} and rows["D"][:2] == ["4", "4"]  # requested, delivered
    run(scenario, timeout=90)


def bill_payable(lines: dict) -> Decimal:
    return sum((amount for _, _, amount, _ in lines.values()), Decimal(0))


def test_a_forged_delivery_report_is_disputed_not_billed():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C")
        start, end = period()
        await fed.carry("s1", 4, "ABC")
        # B, in transit, claims it passed a million keys on to C; C's key managers counted none.
        await fed.report("B", "s1", 0, 1_000_000)
        assert int(records(await state(fed.admin))[("B", "s1", "a-b")]["keys"]) == 4  # not billed
        await fed.report("C", "s1", 0, 0)
        data = await state(fed.admin)
        charges = {(c.member_id, c.agreement): c for c in read_charging(data).values()}
        [dispute] = read_disputes(data).values()
        assert (dispute.service_id, dispute.hop, dispute.sender, dispute.receiver) == ("s1", "b2-c1", "B", "C")
        assert (dispute.sent, dispute.received, dispute.disputed) == (
            (1_000_004, 1_000_004 * KEY_BITS), (4, 4 * KEY_BITS), (1_000_000, 1_000_000 * KEY_BITS))
        assert set(dispute.records) == {charges[("B", "a-b")].record_id, charges[("C", "b-c")].record_id}
        for member, agreement in (("B", "a-b"), ("C", "b-c")):
            charge = charges[(member, agreement)]
            assert (charge.keys, charge.disputed_keys) == (4, 1_000_000)
        # Honest deliveries after it are billed, and the dispute is not raised again.
        await fed.carry("s1", 2, "ABC")
        data = await state(fed.admin)
        assert int(records(data)[("B", "s1", "a-b")]["keys"]) == 6 and len(read_disputes(data)) == 1
        bill = read_settlement(await alice.dispatch(settle_request("A", start, end)))
        line = next(l for l in bill.lines if l.counterparty == "B")
        assert (line.keys, line.amount, line.disputed_keys) == (6, kbit_price(6, "0.002"), 1_000_000)
        assert [(d.dispute_id, d.disputed[0]) for d in bill.disputes] == [(dispute.dispute_id, 1_000_000)]
        # Who sees it: its two ends and the payer, not D; B's rating counts it.
        for member, sees in (("B", True), ("C", True), ("D", False)):
            view = await state(await fed.agents[member].session())
            assert bool(read_disputes(view)) == sees, member
        assert read_disputes(await state(alice))
        assert read_ratings(await state(fed.admin))["B"].disputes == 1
        # A report read before the previous one is refused, and changes nothing.
        fed.clock -= 10
        with pytest.raises(RPCError) as err:
            await fed.report("C", "s1", 5, 5)
        assert err.value.tag == "invalid-value" and err.value.info.get("bad-element") == "read-start"
        assert records(await state(fed.admin)) == records(data)
    run(scenario)


def test_a_forged_report_is_disputed_when_both_ends_report_closer_than_the_clock_tolerance():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C")
        await fed.carry("s1", 4, "ABC")
        # B and C now report every 0.3 s, so their latest readings are never the clock
        # tolerance apart; C's readings are still compared with B's earlier ones.
        await fed.report("B", "s1", 0, 1_000_000)
        for member in "CBC":
            fed.clock -= 0.7
            await fed.report(member, "s1", 0, 0)
        [dispute] = read_disputes(await state(fed.admin)).values()
        assert (dispute.sender, dispute.receiver, dispute.sent[0], dispute.received[0], dispute.disputed[0]) == (
            "B", "C", 1_000_004, 4, 1_000_000), dispute
        assert int(records(await state(fed.admin))[("B", "s1", "a-b")]["keys"]) == 4
    run(scenario)


def test_a_member_that_drops_deliveries_loses_its_rating_and_the_traffic():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.admin.edit_config(f'<federation xmlns="{FED_NS}"><ratings><threshold>0.7</threshold>'
                                    "</ratings></federation>")
        await fed.request(alice, "s1", "A", "A", "C")
        assert service(await state(alice), "s1")["route"] == ["A", "B", "C"]
        # B passes on 18 of the 30 keys A gave it, as C confirms (and B's own counts show).
        await fed.report("A", "s1", 30, 30)
        await fed.report("C", "s1", 18, 18)
        await fed.report("B", "s1", 30, 18)
        await fed.platform.settled()
        data = await state(fed.admin)
        ratings = read_ratings(data)
        assert ratings["B"] == Rating("B", 30, 18, Decimal("0.600"), Decimal("1.000"), 0, Decimal("0.600"), True)
        assert not ratings["A"].below_threshold and ratings["A"].score == 1 and ratings["D"].score == 1
        assert read_disputes(data) == {}  # B says so itself: it is rated, not disputed
        # The traffic moves away from B, saying why; a new service avoids it too.
        s1 = service(data, "s1")
        assert (s1["status"], s1["route"]) == ("active", ["A", "D", "C"])
        assert s1["reason"] == "re-routed through A, D, C: member B is rated below the threshold (score 0.600 < 0.7)"
        await fed.request(alice, "s2", "A", "A", "C")
        assert service(await state(alice), "s2")["route"] == ["A", "D", "C"]
        # B may not change how it is rated; it reads its own rating only; the administrator
        # sees B flagged and suspends it.
        b = await fed.agents["B"].session()
        with pytest.raises(RPCError) as err:
            await b.edit_config(f'<federation xmlns="{FED_NS}"><ratings><threshold>0</threshold></ratings>'
                                "</federation>")
        assert err.value.tag == "access-denied"
        assert set(read_ratings(await state(b))) == {"B"}
        assert set(read_ratings(await state(alice))) == {"A"}
        await fed.admin_do("suspend-member", "B", "drops keys")
        assert (await state(fed.admin)).xpath("//f:member[f:member-id='B']/f:status/text()",
                                              namespaces=NS) == ["suspended"]
    run(scenario)


def test_a_segment_that_fails_lowers_its_member_s_availability():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C")
        await asyncio.sleep(0.3)
        fed.domains["C"].refuse = True  # asked again, C cannot set its segment up either
        await fed.platform.segment_changed("s1", "C", SegmentReply("failed", "s1-C", "QKD link down"))
        await asyncio.sleep(0.3)
        ratings = read_ratings(await state(fed.admin))
        assert Decimal("0.2") < ratings["C"].availability < Decimal("0.8")
        assert ratings["B"].availability == 1 and ratings["A"].availability == 1
    run(scenario)


def test_charging_state_and_rpcs_are_valid_and_read_back():
    schema = schema_for(("qi-federation",))
    charge = Charge(3, "domain-b", "xd-1", 4, 1024, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "a-b",
                    Decimal("0.002"), Decimal("0.002048"), 1, "b2-c1", 10, 2560)
    dispute = Dispute(1, "xd-1", "b2-c1", "domain-b", "domain-c", (14, 3584), (4, 1024), (10, 2560), (3,),
                      "2026-01-01T00:30:00Z")
    rating = Rating("domain-b", 30, 18, Decimal("0.6"), Decimal("1"), 1, Decimal("0.6"), True)
    state_tree = empty_tree()
    state_tree.append(federation_state([], {}, [], [charge], [dispute], [rating]))
    data = empty_tree()
    merge_state(schema, data, state_tree)
    xml = "".join(etree.tostring(child, encoding="unicode") for child in data)
    schema.ctx.parse_data_mem(xml, "xml", strict=True, validate_present=True).free()
    assert read_charging(data) == {3: charge}
    assert read_disputes(data) == {1: dispute}
    assert read_ratings(data) == {"domain-b": rating}
    report = DeliveryReport("xd-1", "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.6Z",
                            (EndCount("ingress", "b1-a2", 4, 1024), EndCount("egress", None, 4, 1024)))
    wrap = lambda rpc: (f'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1">'
                        f'{etree.tostring(rpc, encoding="unicode")}</rpc>').encode()
    period_ = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    for rpc in (delivery_report(report), settle_request("domain-b", *period_)):
        schema.validate_operation(wrap(rpc))
    assert read_delivery_report(delivery_report(report)) == report
    with pytest.raises(RPCError):  # the validation is real: no such end
        bad = DeliveryReport("xd-1", *period_, (EndCount("middle", None, 1, 1),))
        schema.validate_operation(wrap(delivery_report(bad)))
    # What settle answers, as libyang reads an output of the RPC.
    bill = Settlement("domain-a", *period_, (SettlementLine("payable", "domain-b", "a-b", Decimal("0.002"), 4, 1024,
                                                             Decimal("0.002048"), 10, 2560, (3,)),),
                      (dispute,), Decimal(0), Decimal("0.002048"))
    output = FEDERATION.element("settle")
    output.extend(settlement_output(bill))
    reply = libyang.DataType.REPLY_YANG
    schema.ctx.parse_op_mem("xml", etree.tostring(output, encoding="unicode"), reply).validate_op(reply)
    read = read_settlement(output)
    assert (read.lines, read.receivable, read.payable, read.net) == (bill.lines, 0, Decimal("0.002048"),
                                                                    Decimal("-0.002048"))
    assert [(d.dispute_id, d.hop, d.disputed, d.time) for d in read.disputes] == [(1, "b2-c1", (10, 2560),
                                                                                   "2026-01-01T00:30:00Z")]



def test_counts_that_lag_are_confirmed_later_and_not_disputed():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s2", "A", "A", "B", rate=5_000)
        # B read its key managers before A's last keys reached it: its older count is lower.
        await fed.report("B", "s2", 6, 6)
        await fed.report("A", "s2", 10, 10)
        charged = records(await state(fed.admin))
        assert int(charged[("B", "s2", "a-b")]["keys"]) == 6  # confirmed by both so far
        await fed.report("B", "s2", 4, 4)
        # Two readings closer than the clock tolerance are not compared: no dispute either.
        fed.clock -= 0.9
        await fed.report("A", "s2", 0, 0)
        data = await state(fed.admin)
        assert int(records(data)[("B", "s2", "a-b")]["keys"]) == 10 and read_disputes(data) == {}
        assert read_ratings(data)["B"].delivery_ratio == 1
    run(scenario)


def test_disputes_records_and_ratings_survive_a_platform_restart(tmp_path):
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C")
        await fed.carry("s1", 4, "ABC")
        await fed.report("B", "s1", 0, 1_000)
        await fed.report("C", "s1", 0, 0)
        before = await state(fed.admin)
        assert len(read_disputes(before)) == 1
        await fed.restart_platform()
        await fed.platform.settled()
        after = await state(fed.admin)
        assert read_disputes(after) == read_disputes(before) and read_charging(after) == read_charging(before)
        assert read_ratings(after)["B"].disputes == 1
        await fed.carry("s1", 2, "ABC")  # the hops' totals went on from where they were
        data = await state(fed.admin)
        assert int(records(data)[("B", "s1", "a-b")]["keys"]) == 6 and len(read_disputes(data)) == 1
    run(scenario, store_dir=tmp_path)


def test_keys_confirmed_on_a_new_hop_before_its_record_opens_are_billed_to_that_record():
    """After a re-route, both ends of the new hop may report before the platform has opened the
    hop's record (it still sets up the other segments): the record gets those keys when it opens."""
    from orchestrator.federation_charging import Charging

    charging = Charging()
    hop = charging.hop("s", "A", "a3-d1", "D", "d1-a3")
    t = 1000.0
    charging.count("A", hop, EndCount("egress", "a3-d1", 4, 4 * KEY_BITS), t, t + 0.01, t)
    charging.count("D", hop, EndCount("ingress", "d1-a3", 4, 4 * KEY_BITS), t + 1, t + 1.01, t + 1)
    assert hop.confirmed == (4, 4 * KEY_BITS)
    record = charging.open_record("A", "s", "A", 0, hop, None, Decimal(0), t + 2)
    assert (record.keys, record.bits) == (4, 4 * KEY_BITS)
    # Saved and read back: what was credited is not credited again; what follows is.
    charging = Charging.from_json(charging.to_json())
    hop, record = charging.hops[hop.key], charging.records[record.record_id]
    charging.count("A", hop, EndCount("egress", "a3-d1", 0, 0), t + 3, t + 3.01, t + 3)
    assert record.keys == 4
    charging.count("A", hop, EndCount("egress", "a3-d1", 2, 2 * KEY_BITS), t + 4, t + 4.01, t + 4)
    charging.count("D", hop, EndCount("ingress", "d1-a3", 2, 2 * KEY_BITS), t + 5, t + 5.01, t + 5)
    assert (record.keys, record.bits) == (6, 6 * KEY_BITS)
