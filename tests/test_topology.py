"""Topology files: the embedded Madrid network, one precise message per mistake, generation, CLI."""
import argparse
import copy
import importlib.resources
import json
import random

import networkx as nx
import pytest
import yaml

from devices.topology import (TopologyError, build_twin, default_topology, embedded_topology, generate_topology,
                              load_topology, parse_topology)
from devices.twin import Endpoint
from tools import cmd_topology


@pytest.fixture(scope="module")
def madrid_data():
    assert default_topology().name == "madrid"  # the embedded file is found and valid
    return yaml.safe_load((importlib.resources.files("devices") / "topologies" / "madrid.yaml").read_text())


def test_default_topology_is_a_small_metro_network_with_disjoint_routes():
    topology = default_topology()
    assert 5 <= len(topology.sites) <= 7 and len(topology.switches) in (1, 2)
    assert {"quintin", "norte", "concepcion", "almagro", "distrito"} <= {s.id for s in topology.sites}
    assert all(2 <= s.length_km <= 25 for s in topology.spans)
    assert {km.site for km in topology.key_managers} == {n.site for n in topology.qkd_nodes}
    graph = topology.fibre_graph()
    assert nx.is_connected(graph)
    km_site = {km.id: km.site for km in topology.key_managers}
    sae_sites = sorted({km_site[sae.km] for sae in topology.saes})
    assert len(list(nx.node_disjoint_paths(graph, "quintin", "distrito"))) >= 2
    assert {"quintin", "distrito"} <= set(sae_sites)


def test_default_topology_builds_a_twin_with_an_optical_bypass():
    twin = build_twin(default_topology())
    twin.connect("sw-concepcion", 1, 4)  # Quintin straight to Distrito, past Concepcion
    path = twin.path_between(Endpoint("quintin", 1), Endpoint("distrito", 2))
    assert path.spans == ("quintin-concepcion", "concepcion-distrito")
    assert twin.path_loss_db(path) == pytest.approx((4.1 + 15.3) * 0.2 + 1.0)


def write(tmp_path, data, name="net.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if name.endswith(".yaml") else json.dumps(data))
    return path


def mistakes(tmp_path, data) -> list[str]:
    path = write(tmp_path, data)
    with pytest.raises(TopologyError) as error:
        load_topology(path)
    assert str(error.value) == "\n".join(error.value.problems)
    return [p.removeprefix(f"{path}: ") for p in error.value.problems]


def qkd(data, node_id):
    return next(n for n in data["qkd_nodes"] if n["id"] == node_id)


CASES = {
    "unknown site": (
        lambda d: qkd(d, "qkd-quintin").update(site="atocha"),
        ["qkd_nodes[0] ('qkd-quintin'): site 'atocha' is not a known site",
         "qkd_nodes[0] ('qkd-quintin') interfaces[0] (1): attach 'quintin:1' is at site 'quintin', "
         "but the node is at site 'atocha'",
         "qkd_nodes[0] ('qkd-quintin') interfaces[1] (2): attach 'quintin:2' is at site 'quintin', "
         "but the node is at site 'atocha'",
         "key_managers[0] ('km-quintin'): site 'quintin' has no QKD node: a key manager sits with a QKD node",
         "qkd_nodes[0] ('qkd-quintin'): site 'atocha' has no key manager: each QKD node site needs one"]),
    "span to nowhere": (
        lambda d: d["spans"][0].update(b="sw-nowhere:1"),
        ["spans[0] ('quintin-concepcion'): b 'sw-nowhere:1' leads nowhere: no site or switch 'sw-nowhere'"]),
    "span to an unknown switch port": (
        lambda d: d["spans"][0].update(b="sw-concepcion:12"),
        ["spans[0] ('quintin-concepcion'): b 'sw-concepcion:12': switch 'sw-concepcion' has no port 12 "
         "(its ports: 1, 2, 3, 4, 5, 6, 7, 8)"]),
    "span on a switch without a port": (
        lambda d: d["spans"][0].update(b="sw-concepcion"),
        ["spans[0] ('quintin-concepcion'): b 'sw-concepcion' names switch 'sw-concepcion' without a port"]),
    "duplicate id": (
        lambda d: d["sites"].append({"id": "norte"}),
        ["sites[6] ('norte'): duplicate id 'norte': already used by sites[3]"]),
    "switch and site share an id": (
        lambda d: d["switches"].append({"id": "almagro", "site": "almagro", "ports": [1]}),
        ["switches[2] ('almagro'): duplicate id 'almagro': already used by sites[2]"]),
    "interface on an unknown switch port": (
        lambda d: qkd(d, "qkd-concepcion")["interfaces"][0].update(attach="sw-concepcion:9"),
        ["qkd_nodes[1] ('qkd-concepcion') interfaces[0] (1): attach 'sw-concepcion:9': switch "
         "'sw-concepcion' has no port 9 (its ports: 1, 2, 3, 4, 5, 6, 7, 8)"]),
    "interface on a switch port that carries a span": (
        lambda d: qkd(d, "qkd-norte")["interfaces"][0].update(attach="sw-norte:1"),
        ["qkd_nodes[3] ('qkd-norte') interfaces[0] (1): attach 'sw-norte:1': that switch port already "
         "carries spans[2] ('concepcion-norte'); plug interfaces into free ports"]),
    "interface at another site": (
        lambda d: qkd(d, "qkd-quintin")["interfaces"][1].update(attach="almagro:2"),
        ["qkd_nodes[0] ('qkd-quintin') interfaces[1] (2): attach 'almagro:2' is at site 'almagro', "
         "but the node is at site 'quintin'",
         "qkd_nodes[2] ('qkd-almagro') interfaces[1] (2): attach 'almagro:2' is already used by "
         "qkd_nodes[0] ('qkd-quintin') interfaces[1] (2)"]),
    "duplicate interface": (
        lambda d: qkd(d, "qkd-distrito")["interfaces"].append({"id": 1, "attach": "distrito:3"}),
        ["qkd_nodes[4] ('qkd-distrito') interfaces[2] (1): duplicate interface id 1 in QKD node "
         "'qkd-distrito'"]),
    "SAE on an unknown key manager": (
        lambda d: d["saes"][0].update(km="km-atocha"),
        ["saes[0] ('sae-quintin'): km 'km-atocha' is not a known key manager"]),
    "endpoint used by two spans": (
        lambda d: d["spans"][1].update(a="quintin:1"),
        ["spans[1] ('almagro-concepcion'): a 'quintin:1' already ends spans[0] ('quintin-concepcion')"]),
    "span looping on itself": (
        lambda d: d["spans"][4].update(b="quintin:2"),
        ["spans[4] ('quintin-almagro'): starts and ends at the same endpoint 'quintin:2'"]),
    "two key managers on a site": (
        lambda d: d["key_managers"].append({"id": "km-quintin-2", "site": "quintin"}),
        ["key_managers[6] ('km-quintin-2'): site 'quintin' already has key manager key_managers[0] ('km-quintin')"]),
    "QKD node site without key manager": (
        lambda d: d.update(key_managers=d["key_managers"][1:], saes=d["saes"][1:]),
        ["qkd_nodes[0] ('qkd-quintin'): site 'quintin' has no key manager: each QKD node site needs one"]),
    "switch on an unknown site": (
        lambda d: d["switches"][0].update(site="sol"),
        ["switches[0] ('sw-concepcion'): site 'sol' is not a known site"]),
    "misspelt, missing and negative fields": (
        lambda d: (d["spans"][0].update(lenght_km=4.1), d["spans"][0].pop("length_km"),
                   d["spans"][1].update(length_km=-2)),
        ["spans[0] ('quintin-concepcion'): unknown field 'lenght_km' (expected id, a, b, length_km, "
         "attenuation_db_per_km)",
         "spans[0] ('quintin-concepcion'): missing field 'length_km'",
         "spans[1] ('almagro-concepcion'): length_km must be a number >= 0, got -2"]),
    "unknown section": (
        lambda d: d.update(link=[]),
        ["top level: unknown key 'link' (expected name, description, sites, switches, spans, qkd_nodes, "
         "key_managers, saes, quantum_nodes, entanglement_links)"]),
    "port names instead of numbers": (
        lambda d: (d["switches"][1].update(ports=["p1", 2]), d["spans"][0].update(a="quintin:odf1")),
        ["switches[1] ('sw-norte'): ports must be a non-empty list of port numbers from 1 to 4294967295, "
         "got ['p1', 2]",
         "spans[0] ('quintin-concepcion'): a: endpoint 'quintin:odf1' is not 'node' or 'node:port' with a port "
         "number from 1 to 4294967295"]),
    "interface named instead of numbered": (
        lambda d: qkd(d, "qkd-montegancedo")["interfaces"][0].update(id="if1"),
        ["qkd_nodes[5] ('qkd-montegancedo') interfaces[0]: id must be an interface number from 1 to 4294967295, "
         "got 'if1'"]),
    "entry that is not a mapping": (
        lambda d: d["saes"].append("sae-x"),
        ["saes[4]: must be a mapping"]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_mistake_is_named_with_its_file_and_entry(tmp_path, madrid_data, case):
    mutate, expected = CASES[case]
    data = copy.deepcopy(madrid_data)
    mutate(data)
    assert mistakes(tmp_path, data) == expected


def test_unreadable_files_are_reported(tmp_path):
    with pytest.raises(TopologyError, match=r"missing.yaml: cannot read: No such file or directory"):
        load_topology(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("sites: [\n")
    with pytest.raises(TopologyError, match=r"bad.yaml: not valid YAML"):
        load_topology(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{'sites': []}")
    with pytest.raises(TopologyError, match=r"bad.json: not valid JSON"):
        load_topology(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(TopologyError, match=r"list.yaml: the topology must be a mapping"):
        load_topology(tmp_path / "list.yaml")
    with pytest.raises(TopologyError, match=r"empty.yaml: sites: at least one site is needed"):
        load_topology(write(tmp_path, {"name": "x"}, "empty.yaml"))


def test_json_files_hold_the_same_structure(tmp_path, madrid_data):
    assert load_topology(write(tmp_path, madrid_data, "net.json")) == default_topology()


def test_generated_topology_of_100_nodes_is_connected_valid_and_reproducible():
    data = generate_topology(100, seed=5)
    topology = parse_topology(data, "generated")
    assert len(topology.sites) == len(topology.qkd_nodes) == len(topology.key_managers) == len(topology.saes) == 100
    assert 100 < len(topology.spans) <= 125  # the ring and up to 25 chords
    graph = topology.fibre_graph()
    assert nx.is_connected(graph) and nx.node_connectivity(graph) >= 2  # the ring survives one cut
    assert all(2 <= s.length_km <= 25 for s in topology.spans)
    assert generate_topology(100, seed=5) == data
    assert generate_topology(100, seed=6) != data
    twin = build_twin(topology, rng=random.Random(1))
    span = topology.spans[0]
    twin_span = twin.spans[span.id]
    assert (twin_span.a, twin_span.b, twin_span.length_km) == (span.a, span.b, span.length_km)


def test_small_generated_topologies():
    two = parse_topology(generate_topology(2), "two")
    assert len(two.spans) == 1
    three = parse_topology(generate_topology(3), "three")
    assert len(three.spans) == 3
    with pytest.raises(ValueError, match="needs at least 2 nodes, got 1"):
        generate_topology(1)


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="qstrata")
    cmd_topology.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_generates_and_checks(tmp_path, capsys, madrid_data):
    out = tmp_path / "g.yaml"
    assert run_cli("topology", "generate", "--nodes", "12", "--seed", "3", "--out", str(out)) == 0
    assert yaml.safe_load(out.read_text()) == generate_topology(12, 3)
    assert run_cli("topology", "check", str(out)) == 0
    spans = len(generate_topology(12, 3)["spans"])
    assert f"{out}: ok: 12 sites, 0 switches, {spans} spans, 12 QKD nodes, 12 key managers, 12 SAEs" in capsys.readouterr().out

    broken = copy.deepcopy(madrid_data)
    broken["saes"][0]["km"] = "km-atocha"
    path = write(tmp_path, broken)
    assert run_cli("topology", "check", str(path)) == 1
    assert capsys.readouterr().err.strip() == f"{path}: saes[0] ('sae-quintin'): km 'km-atocha' is not a known key manager"

    assert run_cli("topology", "generate", "--nodes", "1") == 2
    assert "needs at least 2 nodes" in capsys.readouterr().err
    assert run_cli("topology", "generate", "--nodes", "4") == 0
    assert yaml.safe_load(capsys.readouterr().out) == generate_topology(4, 0)


def test_a_multi_domain_topology_gives_each_domain_its_own_part():
    topology = embedded_topology("federation.yaml")
    assert topology.domains == ("A", "B", "C", "D")
    assert [s.id for s in topology.inter_domain_spans()] == ["a2-b1", "b2-c1", "a3-d1", "d2-c2"]
    assert topology.domain_of("c3") == "C"
    b = topology.domain_part("B")
    assert ([s.id for s in b.sites], [s.id for s in b.spans], [n.id for n in b.qkd_nodes],
            [k.id for k in b.key_managers], b.saes) == (["b1", "b2"], ["b1-b2"], ["qkd-b1", "qkd-b2"],
                                                        ["km-b1", "km-b2"], ())
    assert [s.id for s in topology.domain_part("A").saes] == ["sae-a"]
    with pytest.raises(ValueError, match="topology federation has no domain 'E' \\(domains: A, B, C, D\\)"):
        topology.domain_part("E")


def test_every_site_names_a_domain_and_inter_domain_spans_end_at_border_sites(tmp_path, madrid_data):
    data = copy.deepcopy(madrid_data)
    for site in data["sites"][:5]:
        site["domain"] = "west" if site["id"] in ("quintin", "almagro") else "east"
    assert mistakes(tmp_path, data) == [
        "sites[5] ('montegancedo'): has no domain, but sites 'quintin', 'concepcion', 'almagro' name theirs: "
        "in a multi-domain topology every site belongs to a domain",
        "spans[0] ('quintin-concepcion'): joins domains 'west' and 'east' but ends at switch port "
        "'sw-concepcion:1': an inter-domain span ends at border sites",
        "spans[1] ('almagro-concepcion'): joins domains 'west' and 'east' but ends at switch port "
        "'sw-concepcion:2': an inter-domain span ends at border sites",
        "spans[5] ('almagro-norte'): joins domains 'west' and 'east' but ends at switch port 'sw-norte:2': "
        "an inter-domain span ends at border sites"]
