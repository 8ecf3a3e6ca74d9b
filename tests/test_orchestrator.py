"""The orchestrator (issue 6): the intent store, the lifecycle, decomposition over the
strata, and scenarios over the full stack with real NETCONF sessions."""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from lxml import etree
from ncclient import manager

from devices.topology import default_topology
from netconf_core import NetconfClient, schema_for
from orchestrator import lifecycle
from orchestrator.intents import Orchestrator
from orchestrator.planner import Demand, Infeasible, Network, Planner, candidate_links
from orchestrator.store import IntentStore
from models.forwarding import ForwardingView
from models.ns import NT as NT_NS, NW as NW_NS, SERVICE as SVC_NS
from models.service import ServiceView
from models.connectivity import read_fibre_network
from tools.cmd_demo import Operator, path_of
from tools.cmd_intent import intent_states
from conftest import stack_scenario

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONN_NS = "urn:qstrata:yang:qi-connectivity"
FWD_NS = "urn:qstrata:yang:qi-forwarding"
INT_NS = "urn:qstrata:yang:qi-intent"
NC_NOTIFICATIONS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"


# --- the store ------------------------------------------------------------------------------

def test_store_keeps_intents_history_and_links_across_reopening(tmp_path):
    store = IntentStore(tmp_path)
    assert store.journal_mode == "wal"
    assert store.put_config("a", "<intent/>", "planned", "created by the operator") is True
    assert store.put_config("a", "<intent><x/></intent>", "planned", "ignored for an existing intent") is False
    store.transition("a", "compiling", "decomposing")
    store.set_status("a", {"session": "a", "paths": []})
    store.record_link("l1", {"qkdl-id": "u"}, "a")
    store.close()

    reopened = IntentStore(tmp_path)
    record = reopened.get("a")
    assert (record.config, record.state, record.reason) == ("<intent><x/></intent>", "compiling", "decomposing")
    assert record.status == {"session": "a", "paths": []}
    assert [(t.sequence, t.from_state, t.to_state) for t in reopened.history("a")] == [
        (1, None, "planned"), (2, "planned", "compiling")]
    assert reopened.link_claims() == {"l1": {"a"}}
    reopened.claim_links("a", set())
    assert reopened.link_claims() == {"l1": set()}
    reopened.forget("a")
    assert reopened.get("a") is None and reopened.history("a") == []
    reopened.close()


def test_store_link_claims_kept_in_memory_agree_with_the_tables(tmp_path):
    """The claims a pass reads come from the store's index; after every kind of write it says
    what the tables say (as a fresh store reads them back)."""
    store = IntentStore(tmp_path)
    for name in ("a", "b"):
        store.put_config(name, "<intent/>", "planned", "created by the operator")
    store.record_link("l1", {"qkdl-id": "u1"}, "a")
    store.record_link("l2", {"qkdl-id": "u2"}, "a")
    store.claim_links("b", {"l1", "l2", "not-created"})  # only created links are claimed
    store.claim_links("a", {"l2"})                         # l1 released by a
    store.forget_link("l2")                                # its claims go with it
    store.record_link("l3", {"qkdl-id": "u3"}, "b")
    store.forget("b")
    expected = {"l1": set(), "l3": set()}
    assert store.link_claims() == expected
    store.claim_links("a", {"l1", "l3"})
    expected = {"l1": {"a"}, "l3": {"a"}}
    assert store.link_claims() == expected
    store.close()
    reopened = IntentStore(tmp_path)
    assert reopened.link_claims() == expected
    rows = reopened.db.execute("SELECT link_id, intent FROM link_claim ORDER BY link_id").fetchall()
    assert [tuple(r) for r in rows] == [("l1", "a"), ("l3", "a")]
    reopened.close()


def test_store_transition_of_an_unknown_intent_is_refused(tmp_path):
    store = IntentStore(tmp_path)
    with pytest.raises(KeyError, match="no intent 'ghost'"):
        store.transition("ghost", "compiling", "why")
    store.close()


def test_store_is_plain_sqlite_in_wal_mode(tmp_path):
    IntentStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "intents.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "intent", "transition", "created_link", "link_claim"}
    db.close()


# --- the lifecycle --------------------------------------------------------------------------

def test_lifecycle_follows_the_design():
    for a, b in [("planned", "compiling"), ("compiling", "installing"), ("installing", "active"),
                 ("active", "degraded"), ("degraded", "repairing"), ("repairing", "active"),
                 ("repairing", "failed"), ("active", "removing"), ("removing", "removed")]:
        lifecycle.check(a, b)
    with pytest.raises(lifecycle.IllegalTransition, match="from planned to active"):
        lifecycle.check("planned", "active")
    with pytest.raises(lifecycle.IllegalTransition, match="from removed to active"):
        lifecycle.check("removed", "active")
    assert set(lifecycle.ALLOWED) == set(lifecycle.STATES)


# --- decomposition, on the embedded network -------------------------------------------------

def _fibre_xml(topology, cut: tuple[str, ...] = ()) -> etree._Element:
    """A topology's fibre plant as the connectivity stratum publishes it (RFC 8345), with
    the spans `cut` down."""
    ports: dict[str, set[str]] = {s.id: set() for s in topology.sites}
    ports.update({sw.id: {str(p) for p in sw.ports} for sw in topology.switches})
    for span in topology.spans:
        for end in (span.a, span.b):
            ports[end.node].add(str(end.port))
    sites = {s.id: s.id for s in topology.sites} | {sw.id: sw.site for sw in topology.switches}
    kinds = {sw.id: "optical-switch" for sw in topology.switches}
    nodes = "".join(
        f"<node><node-id>{n}</node-id><fibre-node xmlns='{CONN_NS}'><kind>{kinds.get(n, 'site')}</kind>"
        f"<site>{sites[n]}</site></fibre-node>"
        + "".join(f"<nt:termination-point><nt:tp-id>{p}</nt:tp-id></nt:termination-point>" for p in sorted(ps))
        + "</node>" for n, ps in ports.items())
    links = "".join(
        f"<nt:link><nt:link-id>{s.id}</nt:link-id><nt:source><nt:source-node>{s.a.node}</nt:source-node>"
        f"<nt:source-tp>{s.a.port}</nt:source-tp></nt:source><nt:destination><nt:dest-node>{s.b.node}</nt:dest-node>"
        f"<nt:dest-tp>{s.b.port}</nt:dest-tp></nt:destination><fibre-span xmlns='{CONN_NS}'>"
        f"<length>{s.length_km}</length><attenuation>{s.attenuation_db_per_km}</attenuation>"
        f"<oper-status>{'down' if s.id in cut else 'up'}</oper-status>"
        f"</fibre-span></nt:link>" for s in topology.spans)
    return etree.fromstring(
        f"<data><networks xmlns='{NW_NS}' xmlns:nt='{NT_NS}'><network><network-id>fibre</network-id>"
        f"<network-types><fibre-network xmlns='{CONN_NS}'/></network-types>{nodes}{links}</network></networks></data>")


def _forwarding_xml(topology, links: list[tuple[str, str, str, str, str, str]]) -> etree._Element:
    """The QKD network: nodes with their interfaces' attachments, and `links` as
    (id, node a, tp a, node b, tp b, eskr)."""
    kms = {km.site: km.id for km in topology.key_managers}
    nodes = "".join(
        f"<node><node-id>{n.id}</node-id><qkd-node xmlns='{FWD_NS}'><qkdn-id>x</qkdn-id><site>{n.site}</site>"
        f"<km-id>{kms[n.site]}</km-id></qkd-node>"
        + "".join(f"<nt:termination-point><nt:tp-id>{i.id}</nt:tp-id><nt:supporting-termination-point>"
                  f"<nt:network-ref>fibre</nt:network-ref><nt:node-ref>{i.attach.node}</nt:node-ref>"
                  f"<nt:tp-ref>{i.attach.port}</nt:tp-ref></nt:supporting-termination-point>"
                  f"</nt:termination-point>" for i in n.interfaces)
        + "</node>" for n in topology.qkd_nodes)
    link_xml = "".join(
        f"<nt:link><nt:link-id>{l}</nt:link-id><nt:source><nt:source-node>{a}</nt:source-node>"
        f"<nt:source-tp>{ta}</nt:source-tp></nt:source><nt:destination><nt:dest-node>{b}</nt:dest-node>"
        f"<nt:dest-tp>{tb}</nt:dest-tp></nt:destination><qkd-link xmlns='{FWD_NS}'><qkdl-id>u-{l}</qkdl-id>"
        f"<link-type>etsi-qkdn-types:PHYS</link-type><status>etsi-qkdn-types:ACTIVE</status><eskr>{eskr}</eskr>"
        f"</qkd-link></nt:link>" for l, a, ta, b, tb, eskr in links)
    return etree.fromstring(
        f"<data><networks xmlns='{NW_NS}' xmlns:nt='{NT_NS}'><network><network-id>qkd</network-id>"
        f"<network-types><qkd-network xmlns='{FWD_NS}'/></network-types>{nodes}{link_xml}</network></networks></data>")


@pytest.fixture
def madrid():
    return default_topology()


def test_candidate_links_join_neighbouring_trusted_nodes_and_bypass_others_through_switches(madrid):
    fwd = ForwardingView.parse(_forwarding_xml(madrid, []))
    fibre = read_fibre_network(_fibre_xml(madrid))
    pairs = {tuple(sorted(c.nodes())) for c in candidate_links(fwd, fibre) if not c.bypasses}
    assert pairs == {("qkd-concepcion", "qkd-quintin"), ("qkd-almagro", "qkd-concepcion"),
                     ("qkd-concepcion", "qkd-norte"), ("qkd-concepcion", "qkd-distrito"),
                     ("qkd-almagro", "qkd-quintin"), ("qkd-almagro", "qkd-norte"), ("qkd-distrito", "qkd-norte"),
                     ("qkd-almagro", "qkd-montegancedo")}
    # quintin and distrito are joined through sw-concepcion only past the trusted node at
    # Concepcion: an optical bypass, which says so
    [bypass] = [c for c in candidate_links(fwd, fibre) if c.link_id == "qkd-distrito.2-qkd-quintin.1"]
    assert (bypass.spans, bypass.bypasses) == (("quintin-concepcion", "concepcion-distrito"), ("concepcion",))
    quintin_concepcion = [c for c in candidate_links(fwd, fibre) if set(c.nodes()) == {"qkd-quintin", "qkd-concepcion"}]
    assert {c.spans for c in quintin_concepcion} == {("quintin-concepcion",)}


def test_plan_asks_only_for_missing_links(madrid):
    existing = [("q-c", "qkd-quintin", "1", "qkd-concepcion", "1", 900000)]
    network = Network.observe(ForwardingView.parse(_forwarding_xml(madrid, existing)),
                              read_fibre_network(_fibre_xml(madrid)))
    plan = Planner(network).plan(Demand("i", "km-quintin", "km-distrito", 10000))
    assert plan.nodes() == ["qkd-quintin", "qkd-concepcion", "qkd-distrito"]
    assert plan.link_ids()[0] == "q-c"
    assert [c.nodes() for c in plan.new_links] == [("qkd-concepcion", "qkd-distrito")]
    # the used interface of Concepcion is not offered again
    assert plan.new_links[0].a != ("qkd-concepcion", "1")


def test_plan_avoids_a_cut_span_and_names_it_when_nothing_else_works(madrid):
    network = Network.observe(ForwardingView.parse(_forwarding_xml(madrid, [])),
                              read_fibre_network(_fibre_xml(madrid, cut=("quintin-concepcion",))))
    plan = Planner(network).plan(Demand("i", "km-quintin", "km-distrito", 10000))
    assert plan.nodes() == ["qkd-quintin", "qkd-almagro", "qkd-norte", "qkd-distrito"]
    with pytest.raises(Infeasible, match="needs span quintin-concepcion, which is cut"):
        Planner(network).plan(Demand("i", "km-quintin", "km-concepcion", 10000, avoid_nodes=frozenset({"qkd-almagro"})))


def test_plan_gives_two_node_disjoint_paths_with_their_own_interfaces(madrid):
    network = Network.observe(ForwardingView.parse(_forwarding_xml(madrid, [])), read_fibre_network(_fibre_xml(madrid)))
    plan = Planner(network).plan(Demand("i", "km-quintin", "km-distrito", 10000, paths=2))
    inner = [set(plan.nodes(i)[1:-1]) for i in range(2)]
    assert not inner[0] & inner[1]
    ends = [end for c in plan.new_links for end in (c.a, c.b)]
    assert len(ends) == len(set(ends))
    with pytest.raises(Infeasible, match="only 2 node-disjoint path"):
        Planner(network).plan(Demand("i", "km-quintin", "km-distrito", 10000, paths=3))


def test_priority_order_decides_who_holds_a_scarce_link(madrid):
    existing = [("a-m", "qkd-almagro", "4", "qkd-montegancedo", "1", 700000)]
    network = Network.observe(ForwardingView.parse(_forwarding_xml(madrid, existing)),
                              read_fibre_network(_fibre_xml(madrid)))
    planner = Planner(network)
    high = planner.plan(Demand("high", "km-quintin", "km-montegancedo", 500000, priority=200))
    network.reserve(high)
    with pytest.raises(Infeasible, match=r"link a-m has 700000 bit/s of key, 500000 bit/s held by intents of "
                                         r"higher or equal priority \(high\); 400000 bit/s needed"):
        planner.plan(Demand("low", "km-almagro", "km-montegancedo", 400000, priority=50))


def test_plan_explains_hops_and_unknown_key_managers(madrid):
    network = Network.observe(ForwardingView.parse(_forwarding_xml(madrid, [])), read_fibre_network(_fibre_xml(madrid)))
    with pytest.raises(Infeasible, match="within max-hops 1: the shortest usable one has 2 hops"):
        Planner(network).plan(Demand("i", "km-quintin", "km-montegancedo", 1, max_hops=1))
    with pytest.raises(Infeasible, match="key manager km-mars has no QKD node"):
        Planner(network).plan(Demand("i", "km-quintin", "km-mars", 1))


# --- scenarios over the full stack ----------------------------------------------------------
#
# Every scenario runs the embedded Madrid network (devices, the three controllers and the
# orchestrator, each a NETCONF server on 127.0.0.1) and acts as an operator: NETCONF to the
# orchestrator and the controllers, ETSI GS QKD 014 to the key managers.

WAIT_S = 20.0
QD = ("qd", "sae-quintin", "sae-distrito")  # an intent between the two ends of the two routes


def scenario(tmp_path, body) -> None:
    stack_scenario(tmp_path, body, wait_s=WAIT_S, bound_s=120)


async def strata(op: Operator) -> dict[str, set[str]]:
    """What the strata hold: QKD links, optical paths, sessions."""
    networks = ("subtree", f"<networks xmlns='{NW_NS}'/>")
    fwd = ForwardingView.parse(await op.sessions["forwarding"].get(filter=networks))
    fibre = read_fibre_network(await op.sessions["connectivity"].get(filter=networks))
    service = next(row for row in op.stack.table() if row.level == "service")
    async with await NetconfClient.connect(service.host, service.port, *service.read_write) as nc:
        svc = ServiceView.parse(await nc.get(filter=("subtree", f"<sessions xmlns='{SVC_NS}'/>")))
    return {"links": {f"{l.id}={l.qkdl_id}" for l in fwd.links.values()}, "paths": set(fibre.optical_paths),
            "sessions": set(svc.sessions)}


async def reconcile_pass(orchestrator: Orchestrator) -> None:
    """Wake the reconcile loop and wait until it has made a full pass."""
    done = orchestrator.passes + 2  # the pass under way may have started before the wake-up
    orchestrator.wake()
    async with asyncio.timeout(WAIT_S):
        while orchestrator.passes < done:
            orchestrator.wake()
            await asyncio.sleep(0.02)


async def active(op: Operator, name: str, source: str, destination: str, rate: int = 20000, **leaves) -> dict:
    await op.push_intent(name, source, destination, rate, **leaves)
    intent = await op.wait_state(name, {"active", "failed"})
    assert intent["reached"]["state"] == "active", intent["reached"]["reason"]
    return intent


def test_intent_goes_active_over_ncclient_and_keys_match(tmp_path):
    async def body(stack, op):
        loop = asyncio.get_running_loop()
        port = stack.orchestrator.port

        def nms() -> None:  # a third-party NMS: ncclient, candidate + commit
            with manager.connect(host="127.0.0.1", port=port, username="admin", password="admin",
                                 hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30) as m:
                m.edit_config(target="candidate", config=(
                    f"<config xmlns='urn:ietf:params:xml:ns:netconf:base:1.0'><intents xmlns='{INT_NS}'><intent>"
                    f"<name>qd</name><endpoints><source-sae>sae-quintin</source-sae><destination-sae>sae-distrito"
                    f"</destination-sae></endpoints><min-rate>20000</min-rate></intent></intents></config>"))
                m.commit()
        await loop.run_in_executor(None, nms)
        intent = await op.wait_state("qd", {"active", "failed"})
        assert intent["reached"]["state"] == "active", intent["reached"]["reason"]
        nodes, links = path_of(intent)
        assert nodes == ["qkd-quintin", "qkd-concepcion", "qkd-distrito"]
        assert [t["to"] for t in intent["history"]] == ["planned", "compiling", "installing", "active"]
        assert all(t["time"] and t["reason"] for t in intent["history"])
        conditions = {c["type"].split(":")[-1]: c["status"] for c in intent["conditions"]}
        assert conditions == {"ready": "true", "path-found": "true", "installed": "true", "rate-met": "true",
                              "disjointness-met": "true"}
        assert int(intent["available-rate"]) >= 20000  # what the path carries; observed-rate is what is drawn
        # the state the orchestrator serves is valid qi-intent data, as libyang judges it
        data = await op.sessions["orchestrator"].get(filter=("subtree", f"<intents xmlns='{INT_NS}'/>"))
        text = "".join(etree.tostring(child, encoding="unicode") for child in data)
        schema_for(("qi-intent",)).ctx.parse_data_mem(text, "xml", strict=True, validate_present=True).free()
        held = await strata(op)
        # only what the path needed was asked for: two PHYS links and their optical paths
        assert {l.split("=")[0] for l in held["links"]} == set(links)
        assert held["paths"] == set(links) and held["sessions"] == {"qd"}
        ids, same = await op.fetch_keys("sae-quintin", "sae-distrito")
        assert same and len(set(ids)) == 4
    scenario(tmp_path, body)


def test_the_sessions_one_pass_writes_go_to_the_service_stratum_in_one_edit(tmp_path):
    """Two intents committed together wait for the same new links; the pass that finds them up
    writes both sessions in one edit, which the service controller takes as one commit (one
    netconf-config-change naming both) and places at once."""
    async def body(stack, op):
        service = next(row for row in op.stack.table() if row.level == "service")
        async with await NetconfClient.connect(service.host, service.port, *service.read_write) as nc:
            await nc.create_subscription()
            orchestrator = op.sessions["orchestrator"]
            for name, (source, destination) in (("qd", QD[1:]), ("dq", QD[:0:-1])):
                await orchestrator.edit_config(
                    f"<intents xmlns='{INT_NS}'><intent><name>{name}</name><endpoints><source-sae>{source}"
                    f"</source-sae><destination-sae>{destination}</destination-sae></endpoints>"
                    f"<min-rate>20000</min-rate></intent></intents>", target="candidate")
            await orchestrator.commit()
            for name in ("qd", "dq"):
                reached = (await op.wait_state(name, {"active", "failed"}))["reached"]
                assert reached["state"] == "active", reached["reason"]
            commits = []  # the targets of each commit of the service controller that wrote sessions
            try:
                async with asyncio.timeout(1.0):
                    async for message in nc.notifications():
                        change = message.find(f"{{{NC_NOTIFICATIONS_NS}}}netconf-config-change")
                        targets = [t.text for t in change.iter(f"{{{NC_NOTIFICATIONS_NS}}}target")] \
                            if change is not None else []
                        if any(t.startswith("/qi-service:sessions") for t in targets):
                            commits.append(targets)
            except TimeoutError:
                pass
            assert len(commits) == 1, commits  # one edit wrote both (the first creates the container)
    scenario(tmp_path, body)


def test_dry_run_reports_each_stratum_and_changes_nothing(tmp_path):
    async def body(stack, op):
        await active(op, *QD)
        before = await strata(op)
        nc = op.sessions["orchestrator"]
        new = (f"<intents xmlns='{INT_NS}'><intent><name>campus</name><endpoints><source-sae>sae-quintin"
               f"</source-sae><destination-sae>sae-montegancedo</destination-sae></endpoints>"
               f"<min-rate>5000</min-rate></intent></intents>")
        await nc.edit_config(new, target="running", test_option="test-only")  # the engine's own dry run
        await nc.edit_config(new, target="candidate")
        reply = await nc.dispatch(f"<dry-run xmlns='{INT_NS}'/>")
        q = lambda tag: f"{{{INT_NS}}}{tag}"
        [intent] = reply.iterfind(q("intent"))
        assert (intent.findtext(q("name")), intent.findtext(q("change")), intent.findtext(q("feasible"))) == (
            "campus", "create", "true")
        requests = [(r.findtext(q("stratum")), r.findtext(q("operation")), r.findtext(q("resource")),
                     r.findtext(q("name"))) for r in intent.iterfind(q("request"))]
        assert ("qit:quantum-forwarding", "create", "qkd-link") in {r[:3] for r in requests}
        assert ("qit:connectivity", "create", "optical-path") in {r[:3] for r in requests}
        assert requests[-1] == ("qit:service", "create", "session", "campus")
        new_links = [r[3] for r in requests if r[1:3] == ("create", "qkd-link")]
        assert {tuple(sorted(l.split("-qkd-"))) for l in new_links} == {
            ("qkd-almagro.2", "quintin.2"), ("montegancedo.1", "qkd-almagro.4")}
        hops = [h.findtext(q("node-id")) for h in intent.iterfind(f"{q('path')}/{q('hop')}")]
        assert hops == ["qkd-quintin", "qkd-almagro", "qkd-montegancedo"]
        await reconcile_pass(stack.orchestrator)  # a pass of the loop sees the candidate: it must not act on it
        assert await strata(op) == before
        assert set(await intent_states(nc)) == {"qd"}
        await nc.discard_changes()
        assert await nc.dispatch(f"<dry-run xmlns='{INT_NS}'/>") is None  # <ok/>: nothing would change
        # the replan action: the intent is planned again from scratch, and says why
        reply = await nc.dispatch(f"<action xmlns='urn:ietf:params:xml:ns:yang:1'><intents xmlns='{INT_NS}'>"
                                  f"<intent><name>qd</name><replan><reason>maintenance check</reason></replan>"
                                  f"</intent></intents></action>")
        assert reply.findtext(f"{{{INT_NS}}}state") == "active"
        assert (await op.wait_state("qd", {"repairing"}))["reached"]["reason"] == "maintenance check"
        assert (await op.wait_state("qd", {"active", "failed"}))["reached"]["state"] == "active"
    scenario(tmp_path, body)


def test_fibre_cut_degrades_the_intent_and_it_recovers_on_another_path(tmp_path):
    async def body(stack, op):
        intent = await active(op, *QD)
        _, links = path_of(intent)
        span = (await op.spans_of(links))[0]
        await op.span_action(span, "cut")
        degraded = (await op.wait_state("qd", {"degraded", "failed"}))["reached"]
        assert degraded["state"] == "degraded" and span in degraded["reason"]
        intent = await op.wait_state("qd", {"active", "failed"})
        assert intent["reached"]["state"] == "active", intent["reached"]["reason"]
        _, links = path_of(intent)
        assert span not in await op.spans_of(links)
        assert [t["to"] for t in intent["history"]][-3:] == ["degraded", "repairing", "active"]
        assert (await op.fetch_keys("sae-quintin", "sae-distrito"))[1]
    scenario(tmp_path, body)


def test_eavesdropper_raises_the_alarm_and_the_intent_reroutes(tmp_path):
    async def body(stack, op):
        intent = await active(op, *QD)
        _, links = path_of(intent)
        span = (await op.spans_of(links))[-1]
        await op.span_action(span, "attach-eavesdropper", **{"intercept-fraction": "0.5"})
        alarm = await op.wait_event("forwarding", lambda e: e.tag == f"{{{FWD_NS}}}qber-alarm")
        assert alarm.findtext(f"{{{FWD_NS}}}raised") == "true" and alarm.findtext(f"{{{FWD_NS}}}link-id") in links
        degraded = (await op.wait_state("qd", {"degraded", "failed"}))["reached"]
        assert degraded["state"] == "degraded" and alarm.findtext(f"{{{FWD_NS}}}link-id") in degraded["reason"]
        intent = await op.wait_state("qd", {"active", "failed"})
        assert intent["reached"]["state"] == "active", intent["reached"]["reason"]
        _, new_links = path_of(intent)
        assert span not in await op.spans_of(new_links)
        assert (await op.fetch_keys("sae-quintin", "sae-distrito"))[1]
    scenario(tmp_path, body)


def test_two_intents_compete_for_a_link_by_priority(tmp_path):
    async def body(stack, op):
        low = await active(op, "campus-low", "sae-almagro", "sae-montegancedo", 1000, priority=50)
        _, [link] = path_of(low)
        fwd = ForwardingView.parse(await op.sessions["forwarding"].get(filter=("subtree", f"<networks xmlns='{NW_NS}'/>")))
        share = int(fwd.links[link].eskr * 0.6)  # one intent fits the link, two do not
        await op.push_intent("campus-low", "sae-almagro", "sae-montegancedo", share, priority=50)
        assert (await op.wait_state("campus-low", {"active", "failed"}))["reached"]["state"] == "active"
        await op.push_intent("campus-high", "sae-quintin", "sae-montegancedo", share, priority=200)
        low = (await op.wait_state("campus-low", {"failed"}))["reached"]
        assert link in low["reason"] and "held by intents of higher or equal priority (campus-high)" in low["reason"]
        high = await op.intent("campus-high")
        if high["state"] != "active":
            high = await op.wait_state("campus-high", {"active", "failed"})
        assert high["state"] == "active", high["reason"]
        assert link in path_of(high)[1]
        assert "campus-low" not in (await strata(op))["sessions"]
        # the link is free again: the lower-priority intent comes back
        nc = op.sessions["orchestrator"]
        await nc.edit_config(f"<intents xmlns='{INT_NS}' xmlns:nc='urn:ietf:params:xml:ns:netconf:base:1.0'>"
                             f"<intent nc:operation='delete'><name>campus-high</name></intent></intents>",
                             target="candidate")
        await nc.commit()
        assert (await op.wait_state("campus-low", {"active"}))["reached"]["state"] == "active"
    scenario(tmp_path, body)


def test_an_impossible_intent_fails_naming_what_is_missing(tmp_path):
    async def body(stack, op):
        await op.push_intent("too-short", "sae-quintin", "sae-montegancedo", 1000, **{"max-hops": 1})
        intent = await op.wait_state("too-short", {"active", "failed"})
        assert intent["reached"]["state"] == "failed"
        assert intent["reached"]["reason"] == ("no path between qkd-quintin and qkd-montegancedo within max-hops 1: "
                                    "the shortest usable one has 2 hops")
        await op.push_intent("too-fast", "sae-almagro", "sae-montegancedo", 10**12)
        intent = await op.wait_state("too-fast", {"active", "failed"})
        assert intent["reached"]["state"] == "failed"
        reason = intent["reason"]  # as it stands now, after the new link showed its key rate
        assert "qkd-almagro" in reason and "qkd-montegancedo" in reason and f"{10**12} bit/s needed" in reason
        conditions = {c["type"].split(":")[-1]: c for c in intent["conditions"]}
        assert conditions["path-found"]["status"] == "false" and conditions["path-found"]["reason"] == "NoPath"
        await reconcile_pass(stack.orchestrator)
        assert await strata(op) == {"links": set(), "paths": set(), "sessions": set()}  # nothing half-working
    scenario(tmp_path, body)


def test_disable_enable_and_delete_an_intent(tmp_path):
    async def body(stack, op):
        await active(op, *QD)
        nc = op.sessions["orchestrator"]
        empty = {"links": set(), "paths": set(), "sessions": set()}

        async def enabled(value: str) -> None:
            await nc.edit_config(f"<intents xmlns='{INT_NS}'><intent><name>qd</name><enabled>{value}</enabled>"
                                 f"</intent></intents>", target="candidate")
            await nc.commit()
        await reconcile_pass(stack.orchestrator)
        intent = await op.intent("qd")
        assert (intent["generation"], intent["observed-generation"]) == ("1", "1")
        await enabled("false")
        assert (await op.intent("qd"))["generation"] == "2"  # counted at the commit, before any pass
        removed = (await op.wait_state("qd", {"removed"}))["reached"]
        assert removed["state"] == "removed"
        await reconcile_pass(stack.orchestrator)
        assert await strata(op) == empty  # the session, its links and their optical paths are gone
        intent = await op.intent("qd")  # the intent and its history stay
        assert [t["to"] for t in intent["history"]][-3:] == ["active", "removing", "removed"]
        assert (intent["generation"], intent["observed-generation"]) == ("2", "2")
        await enabled("true")
        reached = (await op.wait_state("qd", {"active", "failed"}))["reached"]
        assert (reached["state"], reached["generation"]) == ("active", "3")  # the verdict says what it is about
        await reconcile_pass(stack.orchestrator)
        intent = await op.intent("qd")
        assert (intent["generation"], intent["observed-generation"]) == ("3", "3")
        await nc.edit_config(f"<intents xmlns='{INT_NS}' xmlns:nc='urn:ietf:params:xml:ns:netconf:base:1.0'>"
                             f"<intent nc:operation='delete'><name>qd</name></intent></intents>", target="candidate")
        await nc.commit()
        await op.wait_state("qd", {"removed"})
        await reconcile_pass(stack.orchestrator)
        assert await intent_states(nc) == {} and await strata(op) == empty
    scenario(tmp_path, body)


def test_an_intent_ends_with_its_time_to_live(tmp_path):
    async def body(stack, op):
        await active(op, *QD, ttl=1)
        removed = (await op.wait_state("qd", {"removed", "failed"}))["reached"]
        assert removed == {"state": "removed", "reason": "its time to live of 1 s has passed: session qd removed, "
                                                          "and the links no other intent uses", "generation": "1"}
        await reconcile_pass(stack.orchestrator)
        assert (await op.intent("qd"))["state"] == "removed"  # not re-created: the intent has lived its time
        assert (await strata(op))["sessions"] == set()
    scenario(tmp_path, body)


def test_orchestrator_restarted_mid_change_ends_consistent_and_serves_each_key_once(tmp_path):
    async def body(stack, op):
        await op.push_intent(*QD, 20000)
        await op.wait_state("qd", {"installing"})
        old = stack.orchestrator
        await old.stop()  # in the middle of the change: links asked for, session not yet
        store = IntentStore(stack.state_dir / "orchestrator")
        asked, record = set(store.created_links()), store.get("qd")
        store.close()
        assert asked and record.state == "installing"
        created = (await strata(op))["links"]
        assert {l.split("=")[0] for l in created} <= asked
        endpoint = lambda level, server: stack.endpoint(level, server.port)
        stack.orchestrator = Orchestrator("orchestrator", endpoint("service", stack.service),
                                          endpoint("forwarding", stack.forwarding),
                                          endpoint("connectivity", stack.connectivity), stack.users,
                                          stack.state_dir / "orchestrator", port=old.port)
        await stack.orchestrator.start()
        await op.connect("orchestrator")
        intent = await op.intent("qd")
        if intent["state"] != "active":
            intent = await op.wait_state("qd", {"active", "failed"})
        assert intent["state"] == "active", intent["reason"]
        history = [(t["sequence"], t.get("from"), t["to"]) for t in intent["history"]]
        assert [h[2] for h in history] == ["planned", "compiling", "installing", "active"]
        assert [int(h[0]) for h in history] == [1, 2, 3, 4]
        held = await strata(op)
        assert created <= held["links"]  # what was made before the restart was kept, not made again
        pairs = [tuple(sorted(l.split("=")[0].split("-qkd-"))) for l in held["links"]]
        assert len(pairs) == len(set(pairs)) == 2 and held["sessions"] == {"qd"}
        # each key is served once at each end
        first, same = await op.fetch_keys("sae-quintin", "sae-distrito")
        second, again = await op.fetch_keys("sae-quintin", "sae-distrito")
        assert same and again and not set(first) & set(second)
        async with op.http.post(f"{op.key_api('sae-distrito')}/api/v1/keys/sae-quintin/dec_keys",
                                json={"key_IDs": [{"key_ID": first[0]}]}, **op.as_sae("sae-distrito")) as r:
            assert r.status == 400 and "already delivered" in (await r.json())["message"]
    scenario(tmp_path, body)


# --- the operator's command line ------------------------------------------------------------



def qstrata(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))))


def test_up_then_intent_apply_list_and_status_over_netconf(tmp_path):
    (tmp_path / "intent.yaml").write_text(
        "name: quintin-distrito\nendpoints: {source-sae: sae-quintin, destination-sae: sae-distrito}\n"
        "min-rate: 20000\npriority: 150\n")
    (tmp_path / "campus.json").write_text(json.dumps(
        {"intents": [{"name": "campus", "endpoints": {"source-sae": "sae-almagro",
                                                      "destination-sae": "sae-montegancedo"}, "min-rate": 5000}]}))
    (tmp_path / "bad.yaml").write_text("name: x\nendpoints: {source-sae: a, destination-sae: b}\nmin-rate: 1\nspeed: 3\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    up = subprocess.Popen([sys.executable, "-m", "tools.cli", "up", "--port", "0", "--demo-credentials"], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "qstrata-stack.json").exists():
            assert up.poll() is None, up.stderr.read()
            assert time.monotonic() < deadline, "qstrata up did not write its stack file"
            time.sleep(0.1)
        levels = {row["level"]: row for row in json.loads((tmp_path / "qstrata-stack.json").read_text())["levels"]}
        assert {"orchestrator", "service", "forwarding", "connectivity", "key-manager"} <= set(levels)
        assert levels["orchestrator"]["read_write"] == ["admin", "admin"]

        apply = qstrata(tmp_path, "intent", "apply", "intent.yaml")
        assert apply.returncode == 0, apply.stdout + apply.stderr
        assert "quintin-distrito: installing -> active" in apply.stdout
        dry = qstrata(tmp_path, "intent", "apply", "--dry-run", "campus.json")
        assert dry.returncode == 0, dry.stderr
        assert "intent campus: create, feasible" in dry.stdout and "(dry run: nothing was changed)" in dry.stdout
        assert "service" in dry.stdout and "create  session" in dry.stdout
        bad = qstrata(tmp_path, "intent", "apply", "bad.yaml")
        assert bad.returncode == 1 and "bad.yaml: intent 1 ('x'): unknown field(s) speed" in bad.stderr

        listing = qstrata(tmp_path, "intent", "list")
        [row] = [line for line in listing.stdout.splitlines() if line.startswith("quintin-distrito")]
        assert row.split()[1:3] == ["active", "150"] and "qkd-quintin - qkd-concepcion - qkd-distrito" in row
        status = qstrata(tmp_path, "status")
        assert status.returncode == 0, status.stderr
        sections = status.stdout.split("\n\n")
        assert [s.splitlines()[0] for s in sections] == ["INTENTS", "QKD LINKS", "ALARMS"]
        assert sections[1].count("ACTIVE") == 2 and sections[2].splitlines()[1] == "none"
        show = qstrata(tmp_path, "intent", "show", "quintin-distrito").stdout.splitlines()
        assert show[1].startswith("state active since ")
        assert [line.split()[2:5] for line in show if line.strip().startswith("4 ")] == [["installing", "->", "active"]]
    finally:
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    assert "stopped" in out and not (tmp_path / "qstrata-stack.json").exists()
