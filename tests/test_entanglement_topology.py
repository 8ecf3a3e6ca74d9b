"""The quantum_nodes and entanglement_links sections of a topology file: the embedded
entanglement network loads, and each mistake is named with its entry and what is wrong."""
from __future__ import annotations

import copy

import pytest

from devices.topology import TopologyError, embedded_topology, parse_topology

BASE = {
    "sites": [{"id": "a"}, {"id": "b"}],
    "spans": [{"id": "a-b", "a": "a:1", "b": "b:1", "length_km": 5}],
    "quantum_nodes": [
        {"id": "qa", "site": "a", "role": "end-node", "interfaces": [{"name": "east", "attach": "a:1"}]},
        {"id": "qb", "site": "b", "role": "end-node", "interfaces": [{"name": "west", "attach": "b:1"}]},
    ],
    "entanglement_links": [{"id": "l", "a": "qa:east", "b": "qb:west"}],
}


def test_the_embedded_entanglement_network_loads():
    topology = embedded_topology("entanglement.yaml")
    roles = {n.id: n.role for n in topology.quantum_nodes}
    assert roles == {"qn-alice": "end-node", "qn-r1": "repeater", "qn-r2": "repeater", "qn-r3": "repeater",
                     "qn-bob": "end-node"}
    assert len(topology.entanglement_links) == 5
    assert topology.quantum_nodes[0].applications == ("app-alice",)


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["quantum_nodes"][0].update(role="router"),
     "quantum_nodes[0] ('qa'): role must be one of end-node, repeater, got 'router'"),
    (lambda d: d["quantum_nodes"][0]["interfaces"][0].update(attach="b:2"),
     "quantum_nodes[0] ('qa') interfaces[0]: attach 'b:2' is at site 'b', but the node is at site 'a'"),
    (lambda d: d["quantum_nodes"][1]["interfaces"][0].update(attach="a:1"),
     "attach 'a:1' is already used by quantum_nodes[0] ('qa') interfaces[0]"),
    (lambda d: d["quantum_nodes"][0].update(storage_qubits=0),
     "storage_qubits must be a whole number from 1 to 65535, got 0"),
    (lambda d: d["quantum_nodes"][0].update(gate_fidelity=1.5), "gate_fidelity must be within 0..1, got 1.5"),
    (lambda d: d["entanglement_links"][0].update(b="qc:west"),
     "entanglement_links[0] ('l'): b 'qc:west' must be 'quantum-node:interface' of a known quantum node"),
    (lambda d: d["entanglement_links"][0].update(b="qb:north"), "quantum node 'qb' has no interface 'north'"),
    (lambda d: d["entanglement_links"][0].update(b="qa:east"), "joins quantum node 'qa' to itself"),
    (lambda d: d["entanglement_links"][0].update(type="teleport"),
     "type must be one of single-click, double-click, source-in-the-middle, got 'teleport'"),
    (lambda d: d["entanglement_links"][0].update(id="a-b"), "duplicate id 'a-b': already used by spans[0]"),
])
def test_each_mistake_is_named(change, problem):
    data = copy.deepcopy(BASE)
    parse_topology(copy.deepcopy(data), "net.yaml")   # valid before the change
    change(data)
    with pytest.raises(TopologyError) as raised:
        parse_topology(data, "net.yaml")
    assert any(problem in p and p.startswith("net.yaml: ") for p in raised.value.problems), raised.value.problems
