"""The model vocabulary (models/): every reader reads back what its builder wrote, after
libyang validated it against the project's modules; and no namespace URI is written out
anywhere but in netconf_core/ns.py and models/ns.py."""
from __future__ import annotations

import copy
import pathlib
import re
import subprocess

import pytest
from lxml import etree

from models import alarms, connectivity as conn, network as nw, qkd_node as node
from models.ns import CONNECTIVITY, ETSI_NODE, NODE_EXT, QI_ALARMS
from netconf_core import schema_for
from netconf_core.datastore import empty_tree, merge_state
from netconf_core.errors import RPCError
from netconf_core.ns import BASE
from netconf_core.yangdirs import PROJECT_YANG_DIR, SEARCH_DIRS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def validated(modules: tuple[str, ...], *elements: etree._Element) -> etree._Element:
    """The canonical <data> tree of configuration `elements` (edit-config operation attributes
    dropped), as the engine would store it: libyang raises RPCError if it is not valid."""
    data = empty_tree()
    for element in elements:
        element = copy.deepcopy(element)
        for entry in element.iter():
            entry.attrib.pop(BASE("operation"), None)
        data.append(element)
    return schema_for(modules).canonical(data, config_only=True)


def yanglint(kind: str, elements: list[etree._Element], directory: pathlib.Path, modules: tuple[str, ...]) -> None:
    """Fail unless yanglint accepts `elements` as a document of type `kind` (data: a <get>
    reply's content; notif: a notification's content) against `modules`."""
    path = directory / f"{kind}-{len(list(directory.iterdir()))}.xml"
    path.write_bytes(b"".join(etree.tostring(e) for e in elements))
    files = [next(d / f"{m}.yang" for d in (PROJECT_YANG_DIR, *SEARCH_DIRS) if (d / f"{m}.yang").exists())
             for m in modules]
    command = ["yanglint", "-D", "-t", kind, *(arg for d in SEARCH_DIRS for arg in ("-p", str(d))), *map(str, files)]
    result = subprocess.run(command + [str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"yanglint refuses {path}:\n{result.stderr}"


def with_state(modules: tuple[str, ...], config: etree._Element, state: etree._Element,
               directory: pathlib.Path) -> etree._Element:
    """`state` merged into `config` as the engine merges a state provider's answer, checked by
    yanglint as a <get> reply."""
    merged = copy.deepcopy(config)
    merge_state(schema_for(modules), merged, state)
    yanglint("data", list(merged), directory, modules)
    return merged


# --- ietf-network ----------------------------------------------------------------------------

def test_networks_nodes_tps_and_links_read_back_as_built() -> None:
    networks = nw.networks_element()
    fibre = nw.add_network(networks, "fibre", CONNECTIVITY("fibre-network"))
    for name in ("a", "b"):
        nw.add_termination_point(nw.add_node(fibre, name), "1")
    span = CONNECTIVITY.sub(nw.add_link(fibre, "a-b", ("a", "1"), ("b", "1")), "fibre-span")
    CONNECTIVITY.sub(span, "length", "1.0")
    CONNECTIVITY.sub(span, "attenuation", "0.2")
    qkd = nw.add_network(networks, "qkd", None, ["fibre"])
    nw.add_termination_point(nw.add_node(qkd, "qa", [("fibre", "a")]), "7", ("a", "1"), "fibre")
    nw.add_termination_point(nw.add_node(qkd, "qb", [("fibre", "b")]), "8", ("b", "1"), "fibre")
    nw.add_link(qkd, "qa-qb", ("qa", "7"), ("qb", "8"), ["a-b"], "fibre")

    data = validated(("qi-connectivity",), networks)

    assert [nw.network_id(n) for n in nw.networks(data)] == ["fibre", "qkd"]
    read = nw.find_network(data, network_id="qkd")
    assert nw.find_network(data, network_type=CONNECTIVITY("fibre-network")) is nw.networks(data)[0]
    assert nw.find_network(data, network_id="qkd", network_type=CONNECTIVITY("fibre-network")) is None
    assert nw.network_types(nw.networks(data)[0]) == [CONNECTIVITY("fibre-network")]
    assert nw.network_types(read) == []
    assert nw.supporting_networks(read) == ["fibre"]
    assert [(nw.node_id(n), nw.supporting_nodes(n)) for n in nw.nodes(read)] == [
        ("qa", [("fibre", "a")]), ("qb", [("fibre", "b")])]
    assert [[(nw.tp_id(tp), nw.supporting_tp(tp)) for tp in nw.termination_points(n)] for n in nw.nodes(read)] == [
        [("7", ("a", "1"))], [("8", ("b", "1"))]]
    [link] = nw.links(read)
    assert (nw.link_id(link), nw.link_source(link), nw.link_destination(link), nw.supporting_links(link)) == (
        "qa-qb", ("qa", "7"), ("qb", "8"), ["a-b"])
    assert nw.supporting_tp(nw.termination_points(nw.nodes(nw.find_network(data, network_id="fibre"))[0])[0]) is None
    assert nw.resource_link(nw.link_resource("qkd", "qa-qb")) == "qa-qb"


# --- ietf-alarms -------------------------------------------------------------------------------

ALARM_MODULES = ("ietf-alarms", "qi-alarms", "ietf-network", "ietf-network-topology")
QBER = alarms.AlarmType("qber-above-threshold", QI_ALARMS, "qi-al", "QBER above the threshold.")
DOWN = alarms.AlarmType("link-down", QI_ALARMS, "qi-al", "A link went down.", ("major", "minor"))


def test_an_alarm_list_reads_back_as_built(tmp_path: pathlib.Path) -> None:
    raised = alarms.Alarm(nw.link_resource("qkd", "l1"), "qber-above-threshold", False, "major", "QBER 9 %",
                          "2026-01-01T00:00:02.000000Z", "2026-01-01T00:00:01.000000Z", "2026-01-01T00:00:01.000000Z",
                          (alarms.StatusChange("2026-01-01T00:00:01.000000Z", "major", "QBER 8 %"),
                           alarms.StatusChange("2026-01-01T00:00:02.000000Z", "major", "QBER 9 %")))
    cleared = alarms.Alarm(nw.link_resource("qkd", "l2"), "link-down", True, "minor", "l2 is ACTIVE again",
                           "2026-01-01T00:00:03.000000Z", "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z",
                           (alarms.StatusChange("2026-01-01T00:00:03.000000Z", "cleared", "l2 is ACTIVE again"),))
    element = alarms.alarms_element([QBER, DOWN], [raised, cleared], "2026-01-01T00:00:03.000000Z")

    data = empty_tree()
    data.append(element)
    yanglint("data", [element], tmp_path, ALARM_MODULES)

    assert alarms.read_alarms(data) == [raised, cleared]
    assert alarms.read_alarms(data.find(element.tag)) == [raised, cleared]
    assert [a.link_id for a in alarms.read_alarms(data)] == ["l1", "l2"]
    assert alarms.raised_link_alarms(alarms.read_alarms(data)) == {"l1": "QBER 9 %"}
    assert alarms.raised_link_alarms(alarms.read_alarms(data), "link-down") == {}
    assert alarms.read_alarms(None) == []


def test_an_alarm_notification_names_its_resource_and_type_with_their_prefixes(tmp_path: pathlib.Path) -> None:
    event = alarms.alarm_notification(QBER, nw.link_resource("qkd", "l1"), "2026-01-01T00:00:01Z", "cleared", "ok")
    yanglint("notif", [event], tmp_path, ALARM_MODULES)
    resource, kind = event.find(alarms.ALARMS("resource")), event.find(alarms.ALARMS("alarm-type-id"))
    # Each leaf resolves its own prefixes, wherever the engine moves it.
    assert {resource.nsmap[p] for p in ("nw", "nt")} == set(nw.RESOURCE_PREFIXES.values())
    assert kind.nsmap["qi-al"] == QI_ALARMS and kind.text == "qi-al:qber-above-threshold"
    assert [alarms.ALARMS.text(event, tag) for tag in ("time", "perceived-severity", "alarm-text")] == [
        "2026-01-01T00:00:01Z", "cleared", "ok"]


# --- qi-connectivity, qi-optical-switch ------------------------------------------------------------

def _fibre() -> conn.Fibre:
    fibre = conn.Fibre(sites={"a", "b"})
    fibre.switches["sw"] = conn.Switch("sw", "a", 0.5, {1: conn.SwitchPort(1, 0.25), 2: conn.SwitchPort(2, 0.0)})
    end = conn.TermPoint
    fibre.spans["a-sw"] = conn.Span("a-sw", end("a", conn.PANEL_TP), end("sw", "1"), 10.0, 0.2, 2.0)
    fibre.spans["sw-b"] = conn.Span("sw-b", end("sw", "2"), end("b", "1"), 20.0, 0.25, 6.5, up=False,
                                    eavesdropper=0.25)
    return fibre


CONN_MODULES = ("qi-connectivity", "qi-types")


def test_the_fibre_network_and_its_optical_paths_read_back_as_built(tmp_path: pathlib.Path) -> None:
    fibre = _fibre()
    request = conn.PathRequest("p1", conn.TermPoint("a", conn.PANEL_TP), conn.TermPoint("b", "1"), 3, 9.5,
                               frozenset({"a-sw", "sw-b"}))
    networks = conn.topology_element("fibre", fibre, None)
    paths = CONNECTIVITY.sub(nw.find_network(networks, network_id="fibre"), "optical-paths")
    paths.append(conn.path_request_element(request, "replace"))
    config = validated(CONN_MODULES, networks)
    network = conn.fibre_network(config, "fibre")
    assert conn.read_path_requests(network) == {"p1": request}

    state = empty_tree()
    state_network = conn.state_network(state, "fibre")
    for span in fibre.spans.values():
        conn.add_span_state(state_network, span)
    path_state = conn.PathState("up", "placed", 3, 8.75, 30.0, (conn.PathHop("a-sw", "a", "sw"),
                                                                  conn.PathHop("sw-b", "sw", "b")))
    conn.add_path_state(CONNECTIVITY.sub(state_network, "optical-paths"), "p1", path_state)
    data = with_state(CONN_MODULES, config, state, tmp_path)

    assert conn.read_path_states(conn.fibre_network(data, "fibre")) == {"p1": path_state}
    view = conn.read_fibre_network(data)
    assert view.network_id == "fibre"
    assert view.nodes["sw"] == conn.FibreNode("sw", "optical-switch", "a", ("1", "2"), {"1": 0.25, "2": 0.0}, 0.5)
    assert view.nodes["sw"].insertion_loss == {"1": 0.25, "2": 0.0}
    assert view.nodes["a"] == conn.FibreNode("a", "site", "a", (conn.PANEL_TP,), {conn.PANEL_TP: 0.0})
    assert view.spans == {"a-sw": conn.FibreSpan("a-sw", ("a", conn.PANEL_TP), ("sw", "1"), 2.0, True, False),
                          "sw-b": conn.FibreSpan("sw-b", ("sw", "2"), ("b", "1"), 6.5, False, True)}
    assert view.optical_paths == {"p1": ("a-sw", "sw-b")}
    assert conn.read_path_losses(data) == {"p1": 8.75}
    assert conn.find_fibre_network_id(data) == "fibre"
    # What only the controller may change: everything but the optical paths.
    assert CONNECTIVITY.find(nw.find_network(conn.without_paths(config), network_id="fibre"), "optical-paths") is None


def test_the_plant_inventory_reads_back_as_the_plant_serves_it(tmp_path: pathlib.Path) -> None:
    fibre = _fibre()
    fibre.switches["sw"] = conn.Switch("sw", "a", 0.5, {1: conn.SwitchPort(1), 2: conn.SwitchPort(2)})
    plant = conn.plant_state("madrid", 12.5, [("a", "Site A"), ("b", "Site B")], list(fibre.switches.values()),
                             list(fibre.spans.values()))
    yanglint("data", [plant], tmp_path, ("qi-fibre-plant",))
    assert conn.read_plant(plant) == fibre
    event = conn.FIBRE_PLANT.element("span-status-change", leaves={
        "span-id": "sw-b", "change": "cut", "status": "cut", "eavesdropper-fraction": "0.25"})
    yanglint("notif", [event], tmp_path, ("qi-fibre-plant",))
    assert conn.read_span_status_change(event) == conn.SpanStatus("sw-b", False, 0.25)
    assert conn.read_span_status_change(conn.OPTICAL_SWITCH.element("port-status-change")) is None


def test_a_cross_connect_edit_reads_back_as_the_switch_holds_it(tmp_path: pathlib.Path) -> None:
    switch = conn.OPTICAL_SWITCH.element("optical-switch", leaves={"switch-id": "sw", "site": "a", "fabric-loss": "0.5"})
    ports = conn.OPTICAL_SWITCH.sub(switch, "ports")
    for port in (1, 2, 3):
        ports.append(conn.OPTICAL_SWITCH.element("port", leaves={"port-id": port, "insertion-loss": "0.0"}))
    edit = conn.cross_connect_edit({"old"}, [conn.CrossConnect("p1", 1, 2, 7), conn.CrossConnect("p2", 3, 2)])
    entries = conn.OPTICAL_SWITCH.all(edit, "optical-switch/cross-connects/cross-connect")
    assert [e.get(BASE("operation")) for e in entries] == ["remove", "replace", "replace"]
    switch.append(entries[1].getparent())
    switch.find(conn.OPTICAL_SWITCH("cross-connects")).remove(entries[0])
    switch.find(conn.OPTICAL_SWITCH("cross-connects")).remove(entries[2])

    config = validated(("qi-optical-switch",), switch)
    state = empty_tree()
    state.append(conn.switch_state({1: "up", 2: "up", 3: "down"}, [("p1", "up", 0.5)]))
    data = with_state(("qi-optical-switch",), config, state, tmp_path)

    read = conn.read_switch(conn.OPTICAL_SWITCH.find(data, "optical-switch"))
    assert read.cross_connects == {"p1": conn.CrossConnect("p1", 1, 2, 7)}
    assert read.ports == {1: conn.SwitchPort(1, 0.0), 2: conn.SwitchPort(2, 0.0),  # 0.0 is not the default 0.3
                          3: conn.SwitchPort(3, 0.0, True, "down")}
    assert (read.id, read.site, read.fabric_loss) == ("sw", "a", 0.5)
    assert read.cross_connect_loss(read.cross_connects["p1"]) == 0.5


# --- etsi-qkd-sdn-node + qi-qkd-node-ext ----------------------------------------------------------

NODE_MODULES = ("etsi-qkd-node-types", "etsi-qkd-sdn-node", "qi-qkd-node-ext")
A, B = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"


def test_a_qkd_node_reads_back_the_links_written_to_it_and_the_state_it_serves(tmp_path: pathlib.Path) -> None:
    phys = node.NodeLinkConfig("00000000-0000-4000-8000-000000000001", "PHYS", A, 1, B, 2, "TRANSMITTER", 1550)
    virt = node.NodeLinkConfig("00000000-0000-4000-8000-000000000002", "VIRT", A, None, B, None, None, None,
                               None, (B,), 1000)
    root = ETSI_NODE.element("qkd_node", leaves={"qkdn_id": A, "qkdn_location_id": "site-a"})
    interface = ETSI_NODE.sub(ETSI_NODE.sub(root, "qkd_interfaces"), "qkd_interface")
    ETSI_NODE.sub(interface, "qkdi_id", 1)
    interface.append(ETSI_NODE.element("qkdi_att_point", leaves={"device": "sw", "port": 4}))
    edit = node.node_links_edit([node.node_link_element(phys), node.node_link_element(virt),
                                 node.link_removal("00000000-0000-4000-8000-000000000009")])
    links = ETSI_NODE.find(edit, "qkd_node/qkd_links")
    assert [e.get(BASE("operation")) for e in links] == ["replace", "replace", "remove"]
    links.remove(links[2])
    root.append(links)
    config = validated(NODE_MODULES, root)

    state = empty_tree()
    state.append(node.node_state("OPERATING", {1: "ENABLED"}, [
        (phys.qkdl_id, "ACTIVE", node.performance_element("qkdl_performance", 5, 1200, 1100, 2.5),
         node.KeyPool(0, 4096, 4096)),
        (virt.qkdl_id, "OFF", node.performance_element("qkdl_performance", 0, 0, 0, None), None)]))
    data = with_state(NODE_MODULES, config, state, tmp_path)

    view = node.read_node("qkd-a", ETSI_NODE.find(data, "qkd_node"))
    assert (view.name, view.qkdn_id, view.site, view.status) == ("qkd-a", A, "site-a", "OPERATING")
    assert view.links == {phys.qkdl_id: phys, virt.qkdl_id: virt}
    assert view.states == {phys.qkdl_id: node.LinkState("ACTIVE", 1200, 1100, 5, 2.5, 0),
                           virt.qkdl_id: node.LinkState("OFF", 0, 0, 0, None, None)}
    assert view.interfaces[1] == node.Interface(1, "sw", 4, view.interfaces[1].technology,
                                                view.interfaces[1].role, "ENABLED")
    phys_entry = ETSI_NODE.find(data, "qkd_node/qkd_links/qkd_link")
    assert NODE_EXT.text(phys_entry, "key-pool/generated") == NODE_EXT.text(phys_entry, "key-pool/consumed") == "4096"


def test_an_identity_of_another_module_is_not_taken_for_an_etsi_one() -> None:
    leaf = node.identity_leaf(ETSI_NODE.element("qkd_link"), "qkdl_type", "PHYS")
    assert node.types_identity(leaf) == "PHYS"
    foreign = etree.fromstring(f'<qkdl_type xmlns="{ETSI_NODE}" xmlns:x="{QI_ALARMS}">x:PHYS</qkdl_type>')
    assert node.types_identity(foreign) is None


def test_a_model_that_libyang_refuses_is_not_read() -> None:
    """The round trips above validate for real: a builder's mistake fails them."""
    request = conn.PathRequest("p1", conn.TermPoint("a", "1"), conn.TermPoint("b", "1"))
    path = conn.path_request_element(request)
    CONNECTIVITY.sub(path, "no-such-leaf", "1")
    networks = conn.topology_element("fibre", conn.Fibre(), None)
    CONNECTIVITY.sub(nw.find_network(networks, network_id="fibre"), "optical-paths").append(path)
    with pytest.raises(RPCError):
        validated(CONN_MODULES, networks)


# --- every namespace once --------------------------------------------------------------------------

LEVELS_AND_ENGINE = ("netconf_core", "models", "devices", "controller", "orchestrator", "tools")
NAMESPACE_FILES = {"netconf_core/ns.py", "models/ns.py"}


def _namespaces() -> set[str]:
    uris = set()
    for name in NAMESPACE_FILES:
        uris |= set(re.findall(r'Namespace\("([^"]+)"\)', (ROOT / name).read_text()))
    return uris


def _written_out(uris: set[str], text: str) -> list[str]:
    """The URIs `text` holds whole (not as the start of a longer name)."""
    return sorted(uri for uri in uris if re.search(re.escape(uri) + r"(?![\w:.-])", text))


def test_the_namespace_files_name_every_protocol_and_model_namespace() -> None:
    from models import ns as model_ns
    from netconf_core import ns as engine_ns
    declared = {value for module in (engine_ns, model_ns) for value in vars(module).values()
                if isinstance(value, engine_ns.Namespace)}
    assert declared == _namespaces()  # the check below sees every namespace


def test_no_namespace_uri_is_written_out_beside_its_namespace_file() -> None:
    uris = _namespaces()
    found = []
    for package in LEVELS_AND_ENGINE:
        for source in sorted((ROOT / package).rglob("*.py")):
            name = source.relative_to(ROOT).as_posix()
            if name in NAMESPACE_FILES:
                continue
            found += [f"{name}: {uri}" for uri in _written_out(uris, source.read_text())]
    assert found == []
