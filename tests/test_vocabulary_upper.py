"""The model vocabulary of the upper strata (models/forwarding, service, key_manager, intent,
federation): what a builder writes is valid under the project's YANG modules (libyang, through
the engine's Schema) and its reader gives back what was built."""
from __future__ import annotations

import copy
import pathlib
from types import SimpleNamespace

import libyang
import pytest
from lxml import etree

from decimal import Decimal

from models.federation import (Advertisement, Charge, ExternalLink, FederationConfig, MemberStatus, Node, Sae,
                               SegmentStatus, ServiceStatus, add_member, add_service_status, advertisement_config,
                               application_status, available_rates, federation_state, member_joined, member_left,
                               read_charging, read_members, read_service_statuses, service_status_change)
from models.forwarding import (ExternalLinkRequest, ExternalPeer, ForwardingView, LinkRequest, LinkStatus, NodeStatus,
                               add_phys_link, external_links_config, forwarding_state, link_requests,
                               link_status_change, links_config, links_delete, qber_alarm, topology_config)
from models.intent import (IntentSpec, generations, intent_elements, intent_state, intent_state_change, read_intents,
                           segment_intent)
from models.key_manager import (DEFAULT_LOW_WATERMARK, KmConfig, KmCounters, KmSession, KmView, PoolState, RelayTotals,
                                SessionState, km_edit, km_state, pool_empty, pool_low, session_state_change)
from models.ns import FEDERATION, FORWARDING, INTENT, KEY_MANAGER, SERVICE
from models.qkd_node import Interface, NodeView
from models.service import (DEFAULT_KEY_SIZE, MIN_BURST_BITS, SESSIONS_FILTER, Hop, SegmentEnds, ServiceView, Session,
                            SessionConfig, session_filter, session_status_change, sessions_of, sessions_selected)
from netconf_core.datastore import empty_tree, merge_state
from netconf_core.edit import apply_edit
from netconf_core.ns import BASE
from netconf_core.schema_cache import schema_for

INSTANCES = pathlib.Path(__file__).parent / "instances"


def _instance(module: str, name: str) -> etree._Element:
    root = empty_tree()
    root.append(etree.parse(str(INSTANCES / module / name)).getroot())
    return root


def _edited(schema, tree: etree._Element, *edits: etree._Element) -> etree._Element:
    """`tree` with each edit-config applied in turn, validated after each."""
    for edit in edits:
        config = etree.Element(BASE("config"))
        config.append(copy.deepcopy(edit))
        tree = schema.canonical(apply_edit(schema, tree, config), config_only=True)
    return tree


def _valid_data(schema, root: etree._Element) -> etree._Element:
    """`root` (configuration and state) once libyang has validated it."""
    xml = "".join(etree.tostring(child, encoding="unicode") for child in root)
    schema.ctx.parse_data_mem(xml, "xml", strict=True, validate_present=True).free()
    return root


def _valid_notification(schema, event: etree._Element) -> etree._Element:
    notif = libyang.DataType.NOTIF_YANG
    schema.ctx.parse_op_mem("xml", etree.tostring(event, encoding="unicode"), notif).validate_op(notif)
    return event


# --- qi-forwarding: the links the orchestrator asks for, read as the levels read the topology -------

def test_requested_links_are_valid_and_read_back():
    schema = schema_for(("qi-forwarding",))
    before = _instance("qi-forwarding", "valid-config.xml")
    network_id = ForwardingView.parse(before).network_id
    new = SimpleNamespace(link_id="carol-alice", a=("carol", "1"), b=("alice", "1"),
                          qkdl_id="b0000000-0000-4000-8000-0000000000ca")
    view = ForwardingView.parse(_edited(schema, before, links_config(network_id, [new])))
    link = view.links["carol-alice"]
    assert (link.a, link.b, link.qkdl_id, link.link_type, link.external) == (
        ("carol", "1"), ("alice", "1"), new.qkdl_id, "PHYS", False)
    gone = ForwardingView.parse(_edited(schema, before, links_config(network_id, [new]),
                                        links_delete(network_id, ["carol-alice"])))
    assert sorted(gone.links) == sorted(ForwardingView.parse(before).links)


def test_inter_domain_link_end_is_valid_and_read_back():
    schema = schema_for(("qi-forwarding",))
    before = _instance("qi-forwarding", "valid-config-inter-domain.xml")
    request = ExternalLinkRequest("a-east-b-west", ("a-east", "2"), ("b-west", "7"),
                                  "b0000000-0000-4000-8000-0000000000ac", "domain-c",
                                  "c0000000-0000-4000-8000-00000000000c", "km-c-west")
    after = _edited(schema, before, external_links_config("qkd", [request]))  # replaces the link
    view = ForwardingView.parse(after)
    link = view.links["a-east-b-west"]
    assert (link.a, link.b, link.qkdl_id, link.peer_km) == (request.local, request.remote, request.qkdl_id,
                                                           request.peer_km)
    assert view.km_of("b-west") == "km-c-west" and view.km_of("a-east") == "km-a-east"
    planned = view.key_paths({})
    assert planned.is_external("b-west") and planned.km_of("b-west") == "km-c-west"
    assert (planned.links["a-east-b-west"].status, planned.links["a-east-b-west"].eskr) == ("OFF", 0)


def test_requested_links_are_read_as_the_controller_realises_them():
    schema = schema_for(("qi-forwarding",))
    before = _instance("qi-forwarding", "valid-config-inter-domain.xml")
    planned = SimpleNamespace(link_id="a-east-a-west", a=("a-east", "1"), b=("a-west", "1"),
                              qkdl_id="b0000000-0000-4000-8000-0000000000ee")
    external = ExternalLinkRequest("a-east-b-west", ("a-east", "2"), ("b-west", "7"),
                                   "b0000000-0000-4000-8000-0000000000ac", "domain-c",
                                   "c0000000-0000-4000-8000-00000000000c", "km-c-west")
    requests = link_requests(_edited(schema, before, links_config("qkd", [planned]),
                                     external_links_config("qkd", [external])), "qkd")
    assert requests["a-east-a-west"] == LinkRequest("a-east-a-west", planned.a, planned.b, planned.qkdl_id, "PHYS")
    assert requests["a-east-b-west"] == LinkRequest(
        "a-east-b-west", external.local, external.remote, external.qkdl_id, "PHYS",
        external=ExternalPeer("domain-c", external.peer_qkdn_id, "km-c-west"))
    assert not requests["a-east-b-west"].has_optical_path and requests["a-east-a-west"].path_name == "a-east-a-west"
    assert link_requests(before, "another") == {}


def _node(name: str, qkdn_id: str, site: str, att_port: int) -> NodeView:
    interfaces = {1: Interface(1, site, att_port, "DV-QKD", "TRANSMITTER", "ENABLED"),
                  2: Interface(2, None, None, None, None, None)}
    return NodeView(name, qkdn_id, site, "OPERATING", interfaces, {}, {}, None)


def test_controller_topology_and_state_are_valid_and_read_back():
    schema = schema_for(("qi-forwarding",))
    nodes = [_node("qkd-b", "a0000000-0000-4000-8000-00000000000b", "site-b", 3),
             _node("qkd-a", "a0000000-0000-4000-8000-00000000000a", "site-a", None)]
    networks, network = topology_config("qkd", "fibre", nodes, {"site-a": "km-a"})
    add_phys_link(network, "ab", ("qkd-a", "1"), ("qkd-b", "1"), "b0000000-0000-4000-8000-0000000000ab")
    config = empty_tree()
    config.append(networks)
    data = schema.canonical(config, config_only=True)
    state = forwarding_state("qkd", [NodeStatus("qkd-a", "OPERATING", {1: "ENABLED", 2: None}),
                                     NodeStatus("qkd-b", "FAILURE")],
                             [LinkStatus("ab", "ACTIVE", 1200, 1000, 900, 2.5, 3.25, 4096)])
    wrapped = empty_tree()
    wrapped.append(state)
    merge_state(schema, data, wrapped)
    view = ForwardingView.parse(_valid_data(schema, data))
    assert [(n.id, n.qkdn_id, n.site, n.km_id, n.interfaces) for n in view.nodes.values()] == [
        ("qkd-a", nodes[1].qkdn_id, "site-a", "km-a", {"1": ("site-a", "panel"), "2": None}),
        ("qkd-b", nodes[0].qkdn_id, "site-b", "", {"1": ("site-b", "3"), "2": None})]
    link = view.links["ab"]
    assert (link.a, link.b, link.link_type, link.status, link.skr, link.eskr, link.qber, link.channel_loss) == (
        ("qkd-a", "1"), ("qkd-b", "1"), "PHYS", "ACTIVE", 1200.0, 1000.0, 2.5, 3.25)
    statuses = {n.text for n in data.iter(FORWARDING("status"))}
    assert statuses == {"etsi-qkdn-types:OPERATING", "etsi-qkdn-types:ENABLED", "etsi-qkdn-types:FAILURE",
                        "etsi-qkdn-types:ACTIVE"}


def test_controller_notifications_are_valid():
    schema = schema_for(("qi-forwarding",))
    change = _valid_notification(schema, link_status_change("qkd", "ab", "b0000000-0000-4000-8000-0000000000ab",
                                                            "OFF", "ACTIVE", "x" * 2000))
    assert (FORWARDING.text(change, "status"), FORWARDING.text(change, "previous-status"),
            len(FORWARDING.text(change, "reason"))) == ("etsi-qkdn-types:OFF", "etsi-qkdn-types:ACTIVE", 1024)
    first = link_status_change("qkd", "ab", "b0000000-0000-4000-8000-0000000000ab", "PENDING", None, "configured")
    assert FORWARDING.find(_valid_notification(schema, first), "previous-status") is None
    alarm = _valid_notification(schema, qber_alarm("qkd", "ab", "b0000000-0000-4000-8000-0000000000ab",
                                                   7.25, 5.0, True))
    assert [FORWARDING.text(alarm, leaf) for leaf in ("qber", "threshold", "raised")] == ["7.250", "5.000", "true"]


# --- qi-service: the orchestrator's request, as the service controller reads it ------------------

SEGMENTED = SessionConfig("sae-a", "sae-far", 2000, 512, 600, 4, frozenset({"n1", "n2"}), frozenset({"l9"}),
                          5.125, SegmentEnds("km-a", "km-far", None, "a-east-b-west"))


@pytest.mark.parametrize("request_", [SessionConfig("sae-a", "sae-b", 1000), SEGMENTED], ids=["plain", "segment"])
def test_session_request_is_valid_and_read_back_whole(request_):
    schema = schema_for(("qi-service",))
    tree = _edited(schema, empty_tree(), request_.config("s1"))
    assert sessions_of(tree) == {"s1": request_}
    assert sessions_of(_edited(schema, tree, SessionConfig.delete("s1"))) == {}


def test_session_state_is_valid_and_read_back():
    schema = schema_for(("qi-service",))
    hops = (Hop("km-a", "qkd-a", "ab"), Hop("km-b", "qkd-b", "bc"), Hop("km-c", "qkd-c", None))
    built = ServiceView({
        "s1": Session("s1", "sae-a", "sae-c", 1000, "active", "installed over qkd-a - qkd-b - qkd-c", hops, 12, 3072,
                      SessionConfig("sae-a", "sae-c", 1000), "2026-01-01T00:00:00+00:00"),
        "s2": Session("s2", "sae-a", "sae-b", 500, "failed", "no path", (), 0, 0,
                      SessionConfig("sae-a", "sae-b", 500, qber_ceiling=4.0), "2026-01-01T00:00:01+00:00"),
    }, {"sae-a": "km-a", "sae-b": "km-b", "sae-c": "km-c"})
    data = built.state()
    for entry in SERVICE.all(data, "sessions/session"):  # the configuration the state belongs to
        name = SERVICE.text(entry, "name")
        entry.extend(c for c in SERVICE.find(built.sessions[name].config.config(name), "session")
                     if etree.QName(c).localname != "name")
    for element in data.iter():
        element.attrib.pop(BASE("operation"), None)
    read = ServiceView.parse(_valid_data(schema, data))
    assert read == built


def test_session_entries_unchanged_since_the_last_read_are_neither_built_nor_read_again():
    hops = (Hop("km-a", "qkd-a", "ab"), Hop("km-b", "qkd-b", None))
    sessions = {"s1": Session("s1", "sae-a", "sae-b", 1000, "active", "installed", hops, 12, 3072),
                "s2": Session("s2", "sae-a", "sae-c", 500, "failed", "no path", ())}
    view = ServiceView(dict(sessions), {"sae-a": "km-a"})
    text = lambda tree: etree.tostring(tree, encoding="unicode")
    built: dict = {}
    first = view.state(built)
    assert text(first) == text(view.state())
    first[0].remove(first[0][0])            # the caller changes its tree (a filter prunes it) ...
    assert text(view.state(built)) == text(view.state())  # ... not the entries kept
    view.sessions["s1"] = Session("s1", "sae-a", "sae-b", 1000, "degraded", "eskr low", hops, 13, 3328)
    assert text(view.state(built)) == text(view.state()) and "degraded" in text(view.state(built))
    assert set(built) == set(view.sessions.values())  # what is gone is not kept

    known: dict = {}
    read = ServiceView.parse(view.state(), known)
    again = ServiceView.parse(view.state(), known)
    assert again == ServiceView.parse(view.state()) and again.sessions["s1"] is read.sessions["s1"]
    del view.sessions["s2"]
    view.sessions["s1"] = sessions["s1"]
    changed = ServiceView.parse(view.state(), known)
    assert changed == ServiceView.parse(view.state()) and changed.sessions["s1"].status == "active"
    assert list(changed.sessions) == ["s1"] and len(known) == 1


def test_session_status_change_is_valid():
    schema = schema_for(("qi-service",))
    event = _valid_notification(schema, session_status_change("s1", "degraded", "active", "x" * 2000,
                                                              "2026-01-01T00:00:00+00:00"))
    assert (SERVICE.text(event, "status"), SERVICE.text(event, "previous-status"), len(SERVICE.text(event, "reason"))) \
        == ("degraded", "active", 1024)


# --- qi-key-manager: the service controller's edits, read back as it reads a key manager ---------

def test_key_manager_edits_are_valid_and_read_back():
    schema = schema_for(("qi-key-manager",))
    tree = empty_tree()
    root = KEY_MANAGER.sub(tree, "key-manager")
    KEY_MANAGER.sub(root, "km-id", "km-a")
    KEY_MANAGER.sub(KEY_MANAGER.sub(KEY_MANAGER.sub(root, "saes"), "sae"), "sae-id", "sae-a")
    q1, q2 = "b0000000-0000-4000-8000-000000000001", "b0000000-0000-4000-8000-000000000002"
    first = KmConfig({q1: "km-b"}, {"km-c": ("km-b", q1)},
                     {"s1": KmSession("sae-a", "sae-c", "km-c", 1000, 262_144, 256, None)})
    second = KmConfig({q1: "km-b", q2: "km-d"}, {"km-d": ("km-d", q2)},
                      {"s2": KmSession("sae-a", "sae-d", "km-d", 500, 300_000, 512, 60)})
    after_first = _edited(schema, tree, km_edit(KmConfig(), first))
    assert KmView.from_xml(KEY_MANAGER.find(after_first, "key-manager")).config == first
    after_second = _edited(schema, after_first, km_edit(first, second))
    view = KmView.from_xml(KEY_MANAGER.find(after_second, "key-manager"))
    assert (view.km_id, view.saes, view.config) == ("km-a", frozenset({"sae-a"}), second)
    assert km_edit(second, second) is None


def test_key_manager_counters_are_read_per_session_and_per_pair():
    data = empty_tree()
    root = KEY_MANAGER.sub(data, "key-manager")
    session = KEY_MANAGER.sub(KEY_MANAGER.sub(root, "sessions"), "session")
    for tag, value in (("session-id", "s1"), ("delivered-keys", 4), ("delivered-bits", 1024)):
        KEY_MANAGER.sub(session, tag, value)
    pair = KEY_MANAGER.sub(KEY_MANAGER.sub(root, "relay-statistics"), "sae-pair")
    for tag, value in (("master-sae-id", "sae-a"), ("slave-sae-id", "sae-b"), ("forwarded-keys", 2),
                       ("forwarded-bits", 512), ("received-keys", 3), ("received-bits", 768)):
        KEY_MANAGER.sub(pair, tag, value)
    counters = KmCounters.parse(data)
    assert counters.count("delivered", "s1", ("sae-a", "sae-b")) == (4, 1024)
    assert counters.count("forwarded", "s1", ("sae-a", "sae-b")) == (2, 512)
    assert counters.count("received", "s2", ("sae-a", "sae-b")) == (3, 768)
    assert counters.count("delivered", "s2", ("sae-a", "sae-b")) is None


def test_key_manager_reads_the_module_defaults_for_absent_leaves():
    schema = schema_for(("qi-key-manager",))
    default = lambda path: int(next(schema.ctx.find_path(f"/qi-key-manager:key-manager/{path}")).default())
    assert (DEFAULT_LOW_WATERMARK, MIN_BURST_BITS, DEFAULT_KEY_SIZE) == (
        default("key-pools/key-pool/low-watermark"), default("sessions/session/qos/burst"),
        default("sessions/session/qos/key-size"))
    tree = empty_tree()
    root = KEY_MANAGER.sub(tree, "key-manager")
    KEY_MANAGER.sub(root, "km-id", "km-a")
    KEY_MANAGER.sub(KEY_MANAGER.sub(KEY_MANAGER.sub(root, "saes"), "sae"), "sae-id", "sae-a")
    q1 = "b0000000-0000-4000-8000-000000000001"
    tree = _edited(schema, tree, km_edit(KmConfig(), KmConfig({q1: "km-b"}, {}, {
        "s1": KmSession("sae-a", "sae-b", "km-b", 1000, MIN_BURST_BITS, DEFAULT_KEY_SIZE, None)})))
    view = KmView.from_xml(KEY_MANAGER.find(tree, "key-manager"))
    qos = KEY_MANAGER.find(tree, "key-manager/sessions/session/qos")
    for leaf in ("burst", "key-size"):  # the editor wrote them; the reader must fill them in when absent
        qos.remove(KEY_MANAGER.find(qos, leaf))
    read = KmView.from_xml(KEY_MANAGER.find(tree, "key-manager"))
    assert read == view and read.low_watermarks == {q1: DEFAULT_LOW_WATERMARK}
    assert read.is_master_end(read.config.sessions["s1"])


def test_key_manager_state_is_valid_and_read_back_by_the_service_controller():
    schema = schema_for(("qi-key-manager",))
    tree = empty_tree()
    root = KEY_MANAGER.sub(tree, "key-manager")
    KEY_MANAGER.sub(root, "km-id", "km-a")
    KEY_MANAGER.sub(KEY_MANAGER.sub(KEY_MANAGER.sub(root, "saes"), "sae"), "sae-id", "sae-a")
    q1 = "b0000000-0000-4000-8000-000000000001"
    session = KmSession("sae-a", "sae-b", "km-b", 1000, 262_144, 256, 60)
    other = KmSession("sae-a", "sae-c", "km-c", 500, 262_144, 256, None)
    tree = _edited(schema, tree, km_edit(KmConfig(), KmConfig({q1: "km-b"}, {}, {"s1": session, "s2": other})))
    counters = KmCounters({"s1": (4, 1024)}, {("sae-a", "sae-b"): (2, 512)}, {("sae-c", "sae-a"): (3, 768)})
    state = empty_tree()
    state.append(km_state("http://127.0.0.1:1/", [PoolState(q1, 4096, 65_536, 10_000, 5904)],
                          {"s1": SessionState("active", "1 hop(s)", 2048, "2026-01-01T00:00:00Z"),
                           "s2": SessionState("pending", "no route yet")},
                          counters, RelayTotals(5, 1280, 1, "no pool")))
    merge_state(schema, tree, state)
    read = KmCounters.parse(_valid_data(schema, tree))
    assert read.delivered == {"s1": (4, 1024), "s2": (0, 0)}
    assert (read.forwarded, read.received) == ({("sae-a", "sae-b"): (2, 512), ("sae-c", "sae-a"): (0, 0)},
                                               {("sae-a", "sae-b"): (0, 0), ("sae-c", "sae-a"): (3, 768)})
    assert KEY_MANAGER.number(tree, "key-manager/key-pools/key-pool/next-key-index") == 10_000 - 4096


def test_key_manager_notifications_are_valid():
    schema = schema_for(("qi-key-manager",))
    q1 = "b0000000-0000-4000-8000-000000000001"
    events = [_valid_notification(schema, event) for event in (
        session_state_change("s1", "active", "pending", "1 hop(s)"), pool_low(q1, "km-b", 100, 1_048_576),
        pool_empty(q1, "km-b"))]
    assert [[etree.QName(leaf).localname for leaf in event] for event in events] == [
        ["session-id", "status", "previous-status", "reason"], ["link-id", "peer-km-id", "stored", "low-watermark"],
        ["link-id", "peer-km-id"]]


# --- qi-intent: a segment's intent, and an intent's state as the command line reads it -----------

def test_the_sessions_a_filter_selects_are_read_from_it():
    def selected(*children: str, kind: str = "subtree"):
        flt = etree.Element("filter", type=kind)
        flt.extend(etree.fromstring(c) for c in children)
        return sessions_selected(flt)
    one = lambda name: f'<sessions xmlns="{SERVICE}"><session><name>{name}</name></session></sessions>'
    assert selected(session_filter("s1")) == {"s1"}
    assert selected(one("s1"), one("s2")) == {"s1", "s2"}
    assert selected(f'<sae-directory xmlns="{SERVICE}"/>') == set()
    assert selected(SESSIONS_FILTER) is None
    assert selected(f'<sessions xmlns="{SERVICE}"><session><status/></session></sessions>') is None
    assert selected(f'<sessions xmlns="{SERVICE}"><session><name/></session></sessions>') is None
    assert selected("<sessions/>") is None  # no namespace: it matches in every module
    assert sessions_selected(None) is None and selected(kind="xpath") is None


def test_segment_intent_is_valid_and_read_back():
    schema = schema_for(("qi-intent",))
    ends = SegmentEnds("km-a", "km-far", None, "a2-b1")
    tree = _edited(schema, empty_tree(), segment_intent("fed-x", "x", "sae-a", "sae-far", 3000, ends))
    assert IntentSpec.from_xml(intent_elements(tree)["fed-x"]) == IntentSpec(
        "fed-x", "sae-a", "sae-far", 3000, service="x", segment=ends)


def test_intent_state_is_valid_and_read_back():
    schema = schema_for(("qi-intent",))
    config = _instance("qi-intent", "valid-config.xml")
    name = next(iter(intent_elements(config)))
    record = SimpleNamespace(name=name, generation=3, state="active", state_since="2026-01-01T00:00:00.000Z",
                             reason="keys flow",
                             status={"observed-rate": 1200, "session": name,
                                     "conditions": {"ready": {"status": "true", "reason": "Ready",
                                                              "message": "keys flow as asked",
                                                              "last-transition-time": "2026-01-01T00:00:00.000Z"}},
                                     "paths": [{"in-use": True, "hops": [
                                         {"km-id": "km-a", "node-id": "qkd-a", "link-id": "ab"},
                                         {"km-id": "km-b", "node-id": "qkd-b", "link-id": None}]}]})
    transitions = [SimpleNamespace(sequence=1, from_state=None, to_state="planned", time="2026-01-01T00:00:00.000Z",
                                   reason="created", count=1),
                   SimpleNamespace(sequence=2, from_state="planned", to_state="compiling",
                                   time="2026-01-01T00:00:00.000Z", reason="decomposing", count=3)]
    state = intent_state(record, transitions, observed_generation=2)
    intent = intent_elements(config)[name]
    intent.extend(state[1:])  # the state leaves of the configured intent (its name is there already)
    data = _valid_data(schema, config)
    read = read_intents(data)[name]
    assert (read["state"], read["reason"], read["observed-rate"], read["session"]) == (
        "active", "keys flow", "1200", name)
    assert generations(intent_elements(data)[name]) == (3, 2)
    assert read["paths"] == [{"in-use": True, "nodes": ["qkd-a", "qkd-b"], "links": ["ab"]}]
    assert read["conditions"] == [{"type": "ready", "status": "true", "reason": "Ready", "message":
                                   "keys flow as asked", "last-transition-time": "2026-01-01T00:00:00.000Z"}]
    assert [(t["sequence"], t.get("from"), t["to"], t.get("count")) for t in read["history"]] == [
        ("1", None, "planned", None), ("2", "planned", "compiling", "3")]


def test_intent_state_change_is_valid():
    schema = schema_for(("qi-intent",))
    transition = SimpleNamespace(from_state=None, to_state="planned", time="2026-01-01T00:00:00.000Z",
                                 reason="created by the operator")
    event = _valid_notification(schema, intent_state_change("i1", transition, 4))
    assert [etree.QName(c).localname for c in event] == ["name", "to", "generation", "time", "reason"]
    assert INTENT.text(event, "generation") == "4"


# --- qi-federation: an agent's advertisement, as the platform and the other agents read it --------

def test_advertisement_is_valid_and_read_back_by_platform_and_agents():
    schema = schema_for(("qi-federation",))
    config = _instance("qi-federation", "valid-config.xml")
    members = FederationConfig.read(config).members
    member, peer = sorted(members)[:2]
    offer = Advertisement((Node("a-east", "km-a-east", "site-e", "a0000000-0000-4000-8000-00000000000e"),),
                          (ExternalLink("a2-b1", "a-east", peer, "b-west", 5000, 2),),
                          (Sae("sae-a", "km-a-east"),))
    tree = _edited(schema, config, advertisement_config(member, offer))
    platform = FederationConfig.read(tree)
    assert platform.sae_kms[(member, "sae-a")] == "km-a-east"
    [(crossing, capacity)] = platform.offers[member].items()
    assert (crossing.link_id, crossing.local_node, crossing.peer_member, crossing.peer_node, capacity) == (
        "a2-b1", "a-east", peer, "b-west", 5000)
    _, read = read_members(tree)[member]
    assert read == offer


def test_service_status_is_valid_and_read_back():
    schema = schema_for(("qi-federation",))
    data = _instance("qi-federation", "valid-config.xml")
    service_id = next(iter(FederationConfig.read(data).services))
    built = ServiceStatus(service_id, "active", "routed over domain-a, domain-b", ("domain-a", "domain-b"),
                          (SegmentStatus(0, "domain-a", None, "a-east", "fed-xd-1", "active"),
                           SegmentStatus(1, "domain-b", "b-west", None, None, "pending")))
    entry = add_service_status(etree.Element(FEDERATION("services")), built)
    configured = next(s for s in FEDERATION.all(data, "federation/services/service")
                      if FEDERATION.text(s, "service-id") == service_id)
    configured.extend(entry[1:])  # the state leaves of the configured service
    assert read_service_statuses(_valid_data(schema, data)) == {service_id: built}


def test_platform_member_entry_and_state_are_valid_and_read_back():
    schema = schema_for(("qi-federation",))
    data = _instance("qi-federation", "valid-config.xml")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2pQ7xR4vT9mK1sB6nY3wZ8cF0hJ5gL2dA7uN4eV1oT domain-c"
    add_member(FEDERATION.find(data, "federation/members"), "domain-c", "Operator C", key, "127.0.0.1", "18303")
    data = schema.canonical(data, config_only=True)
    entry = FederationConfig.read(data).members["domain-c"]
    assert (entry.name, entry.ssh_public_key, entry.agent_address, entry.agent_port, entry.role) == (
        "Operator C", key, "127.0.0.1", 18303, "member")
    service = ServiceStatus("xd-1", "establishing", "setting up", ("domain-a", "domain-b"),
                            (SegmentStatus(0, "domain-a", None, "a-east", None, "pending"),))
    charge = Charge(1, "domain-b", "xd-1", 2400, 614_400, "2026-01-01T00:00:00Z", None, "a-b", Decimal("0.0025"),
                    Decimal("1.536"))
    state = empty_tree()
    state.append(federation_state(
        [MemberStatus("domain-a", "admitted", "2026-01-01T00:00:00Z"), MemberStatus("domain-b", "suspended"),
         MemberStatus("domain-c", "applied")], {"domain-a": [("a-east-b-west", 150_000)]}, [service], [charge]))
    merge_state(schema, data, state)
    read = _valid_data(schema, data)
    assert {member: status for member, (status, _) in read_members(read).items()} == {
        "platform": "", "domain-a": "admitted", "domain-b": "suspended", "domain-c": "applied"}
    assert available_rates(read) == {"domain-a": {"a-east-b-west": 150_000}}
    assert read_service_statuses(read) == {"xd-1": service}
    assert read_charging(read) == {1: charge}


def test_platform_notifications_are_valid():
    schema = schema_for(("qi-federation",))
    time = "2026-01-01T00:00:00Z"
    events = [_valid_notification(schema, event) for event in (
        service_status_change("xd-1", "active", "establishing", "keys flow", time),
        member_joined("domain-a", "Operator A", time), member_left("domain-a", "withdrawn", time))]
    assert [[FEDERATION.text(event, leaf) for leaf in ("member-id", "service-id", "time")] for event in events] == [
        [None, "xd-1", time], ["domain-a", None, time], ["domain-a", None, time]]
    assert (application_status("applied").tag, application_status("applied").text) == (FEDERATION("status"), "applied")
