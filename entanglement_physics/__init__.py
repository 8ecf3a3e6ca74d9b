"""The entanglement physics shared by the levels, a library like qkd_physics that imports
nothing of the project: `link`, an elementary link's success probability, attempt cycle, rate
and fidelity from its fibre and the nodes' profile; `werner`, Werner-state fidelity, swapping,
memory decoherence, BBPSSW purification, cut-off and measure-directly sampling; `chain`, a
repeater chain's end-to-end rate and fidelity for a swap order and purification rounds;
`planner`, the fidelity-aware choice of path, swap order and rounds over a graph of links.
Formulas are those of the qstrata entanglement reference (docs/entanglement.md names it)."""
from entanglement_physics.chain import ChainLink, ChainNode, Segment, balanced_order, evaluate_chain
from entanglement_physics.link import (NV_CENTRE, TRAPPED_ION, LinkPerformance, NodeProfile, Scheme,
                                       elementary_link, expected_wait)
from entanglement_physics.planner import Infeasible, MemoryShortfall, Plan, memory_needed, plan

__all__ = ["NV_CENTRE", "TRAPPED_ION", "ChainLink", "ChainNode", "Infeasible", "LinkPerformance", "MemoryShortfall",
           "NodeProfile", "Plan", "Scheme", "Segment", "balanced_order", "elementary_link", "evaluate_chain",
           "expected_wait", "memory_needed", "plan"]
