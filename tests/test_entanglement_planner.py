"""The fidelity-aware planner on small graphs whose best plan is worked out by hand here, from the
reference's closed forms (swap: w = w1*w2; BBPSSW; two links in step take 1.5 times one)."""
import itertools
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from entanglement_physics import ChainLink, ChainNode, Infeasible, evaluate_chain, memory_needed, plan

ROOT = Path(__file__).resolve().parents[1]


def w_of(f: float) -> float:
    return (4 * f - 1) / 3


def bbpssw(f: float) -> tuple[float, float]:
    """(F', p_succ) of one round on two pairs of fidelity f (reference formula)."""
    p = f * f + 2 * f * (1 - f) / 3 + 5 * (1 - f) ** 2 / 9
    return (f * f + (1 - f) ** 2 / 9) / p, p


def diamond() -> nx.Graph:
    """a-b-c: two good slow links (F 0.95, 10 pairs/s); a-d-c: two poor fast ones (F 0.85, 100/s)."""
    graph = nx.Graph()
    graph.add_edge("a", "b", rate=10.0, fidelity=0.95, link_id="ab")
    graph.add_edge("b", "c", rate=10.0, fidelity=0.95, link_id="bc")
    graph.add_edge("a", "d", rate=100.0, fidelity=0.85, link_id="ad")
    graph.add_edge("d", "c", rate=100.0, fidelity=0.85, link_id="dc")
    return graph


def test_the_fast_path_with_two_purification_rounds_wins_at_0_80():
    """a-d-c: 0 rounds give F 0.73, 1 round 0.79, 2 rounds 0.837 >= 0.80 at 1 / (1.5 * T2) with
    T2 = 2 * (2 * 0.01 / p1) / p2 = 11.7 pairs/s; a-b-c gives 0.903 at 1 / (1.5 * 0.1) = 6.7/s."""
    f1, p1 = bbpssw(0.85)
    f2, p2 = bbpssw(f1)
    t2 = 2 * (2 * 0.01 / p1) / p2
    chosen = plan(diamond(), "a", "c", 0.80)
    assert chosen.path == ("a", "d", "c")
    assert chosen.link_ids == ("ad", "dc")
    assert chosen.swap_order == ("d",)
    assert chosen.purification_rounds == (2, 2)
    assert chosen.rate == pytest.approx(1 / (1.5 * t2))
    assert chosen.fidelity == pytest.approx((1 + 3 * w_of(f2) ** 2) / 4)
    assert chosen.fidelity >= 0.80 > (1 + 3 * w_of(f1) ** 2) / 4  # one round is not enough
    assert chosen.rate > 1 / (1.5 * 0.1)


def test_the_good_path_wins_when_purification_costs_too_much():
    """At 0.85 the fast path needs three rounds (F 0.88) and falls to 5.2 pairs/s, below the
    6.7/s of a-b-c without purification."""
    f1, p1 = bbpssw(0.85)
    f2, p2 = bbpssw(f1)
    f3, p3 = bbpssw(f2)
    three_rounds_rate = 1 / (1.5 * 2 * (2 * (2 * 0.01 / p1) / p2) / p3)
    assert three_rounds_rate < 1 / 0.15
    chosen = plan(diamond(), "a", "c", 0.85)
    assert (chosen.path, chosen.purification_rounds) == (("a", "b", "c"), (0, 0))
    assert chosen.rate == pytest.approx(1 / 0.15)
    assert chosen.fidelity == pytest.approx((1 + 3 * w_of(0.95) ** 2) / 4)


def test_an_unreachable_fidelity_is_refused_with_the_best_achievable():
    best = (1 + 3 * w_of(0.95) ** 2) / 4  # 0.903: a-b-c, no purification allowed
    with pytest.raises(Infeasible, match=re.escape(f"best achievable fidelity {best:.2f} < 0.95 requested")) as raised:
        plan(diamond(), "a", "c", 0.95, max_rounds=0)
    assert raised.value.best_fidelity == pytest.approx(best)
    # with purification the same request is met
    assert plan(diamond(), "a", "c", 0.95).fidelity >= 0.95


def test_a_refusal_prints_the_two_fidelities_apart():
    best = (1 + 3 * w_of(0.95) ** 2) / 4  # 0.90333
    with pytest.raises(Infeasible, match=re.escape(f"best achievable fidelity {best:.3f} < 0.905 requested")):
        plan(diamond(), "a", "c", 0.9049, max_rounds=0)  # 0.90 < 0.90 would say nothing


def test_a_cut_off_shorter_than_any_wait_leaves_no_plan():
    graph = diamond()
    for node in graph:
        graph.nodes[node]["decoherence_rate"] = 0.1
    with pytest.raises(Infeasible, match="keeps a pair within the maximum age 0.0 s"):
        plan(graph, "a", "c", 0.6, max_age_s=0.0)


def test_no_path_gives_its_own_reason():
    with pytest.raises(Infeasible, match="no path of elementary links from a to c"):
        plan(diamond(), "a", "c", 0.6, avoid_nodes={"b", "d"})
    with pytest.raises(Infeasible, match="within 1 links"):
        plan(diamond(), "a", "c", 0.6, max_hops=1)
    with pytest.raises(Infeasible, match="z is not a node"):
        plan(diamond(), "a", "z", 0.6)
    dead = diamond()
    for _, _, data in dead.edges(data=True):
        data["rate"] = 0.0
    with pytest.raises(Infeasible, match="no path"):
        plan(dead, "a", "c", 0.6)


def test_nodes_that_cannot_swap_or_purify_are_respected():
    graph = diamond()
    graph.nodes["d"]["can_swap"] = False
    assert plan(graph, "a", "c", 0.80).path == ("a", "b", "c")
    graph = diamond()
    graph.nodes["d"]["can_purify"] = False  # a-d-c stays at 0.73 < 0.80
    chosen = plan(graph, "a", "c", 0.80)
    assert chosen.path == ("a", "b", "c") and chosen.purification_rounds == (0, 0)


def test_purification_needs_storage_qubits_per_side_and_a_repeater_halves_its_own():
    assert memory_needed((0, 0)) == [1, 2, 1]      # no purification: a qubit per pair half
    assert memory_needed((1, 1, 1)) == [2, 4, 4, 2]  # one round: two pairs held at once per side
    assert memory_needed((2, 0)) == [3, 6, 1]      # a repeater keeps half its qubits for each side


def test_a_plan_routes_around_a_repeater_short_of_storage_qubits():
    """a-d-c needs two rounds at 0.80, so 3 pairs per side, 6 qubits at d; with 5 the plan
    routes over a-b-c (no purification, 2 qubits at b), with 6 it stays."""
    graph = diamond()
    graph.nodes["d"]["storage_qubits"] = 5
    graph.nodes["b"]["storage_qubits"] = 2
    chosen = plan(graph, "a", "c", 0.80)
    assert (chosen.path, chosen.purification_rounds) == (("a", "b", "c"), (0, 0))
    graph.nodes["d"]["storage_qubits"] = 6
    assert plan(graph, "a", "c", 0.80).path == ("a", "d", "c")


def test_a_plan_only_missing_memory_forbids_is_refused_naming_the_node():
    """Without a-b-c: two rounds on a-d-c reach 0.80 but need 6 qubits at d; one round fits
    the 4 there and reaches 0.79 only."""
    graph = diamond()
    graph.remove_node("b")
    graph.nodes["d"]["storage_qubits"] = 4
    f1, _ = bbpssw(0.85)
    one_round = (1 + 3 * w_of(f1) ** 2) / 4
    with pytest.raises(Infeasible) as refused:
        plan(graph, "a", "c", 0.80)
    assert str(refused.value) == (
        "repeater d has 4 storage qubits, the plan needs 6 (2 purification rounds per link, 3 pairs held at once "
        f"per side); within the nodes' storage qubits the best achievable fidelity is {one_round:.2f} < 0.80 "
        "requested")
    assert refused.value.best_fidelity == pytest.approx(one_round)
    graph.nodes["d"]["storage_qubits"] = 8
    graph.nodes["a"]["storage_qubits"] = 2   # an end node needs rounds + 1
    with pytest.raises(Infeasible, match=r"^end node a has 2 storage qubits, the plan needs 3 \(2 purification"):
        plan(graph, "a", "c", 0.80)
    graph.nodes["a"]["storage_qubits"] = 8
    graph.nodes["d"]["storage_qubits"] = 1   # not even one pair per side: nothing fits
    with pytest.raises(Infeasible) as refused:
        plan(graph, "a", "c", 0.6)
    assert str(refused.value) == "repeater d has 1 storage qubit, the plan needs 2 (no purification)"
    assert refused.value.best_fidelity is None


def test_equal_paths_are_broken_by_name():
    graph = nx.Graph()
    for relay in ("y", "x"):
        graph.add_edge("s", relay, rate=5.0, fidelity=0.9)
        graph.add_edge(relay, "t", rate=5.0, fidelity=0.9)
    assert plan(graph, "s", "t", 0.7).path == ("s", "x", "t")
    assert plan(graph, "s", "t", 0.7).link_ids == (("s", "x"), ("x", "t"))


def test_with_decoherence_the_planner_picks_the_best_swap_order_and_rounds():
    """A chain of four links of unequal rates through decaying memories: the plan's rate is the
    best of every swap order and round count meeting the fidelity (brute force)."""
    rates, fidelities = [50.0, 5.0, 40.0, 8.0], [0.97, 0.95, 0.96, 0.94]
    decay = [0.0, 0.2, 0.05, 0.3, 0.0]
    graph = nx.Graph()
    for i, (rate, fidelity) in enumerate(zip(rates, fidelities)):
        graph.add_edge(i, i + 1, rate=rate, fidelity=fidelity)
    for i, k in enumerate(decay):
        graph.nodes[i]["decoherence_rate"] = k
    chosen = plan(graph, 0, 4, 0.78, max_age_s=1.0)
    nodes = [ChainNode(decoherence_rate=k) for k in decay]
    links = [ChainLink(r, f) for r, f in zip(rates, fidelities)]
    feasible = []
    for order in itertools.permutations([1, 2, 3]):
        for rounds in range(4):
            result = evaluate_chain(nodes, links, order, rounds, max_age_s=1.0)
            if result.fidelity >= 0.78:
                feasible.append((result.rate, order, rounds))
    best_rate = max(rate for rate, _, _ in feasible)
    best = {(order, rounds) for rate, order, rounds in feasible if rate == pytest.approx(best_rate)}
    assert chosen.rate == pytest.approx(best_rate)
    assert (chosen.swap_order, chosen.purification_rounds[0]) in best
    assert len(set(chosen.purification_rounds)) == 1
    assert len(feasible) < 6 * 4  # the fidelity rules some plans out
    rates_by_order = {order: evaluate_chain(nodes, links, order, 0, 1.0).rate
                      for order in itertools.permutations([1, 2, 3])}
    assert len({round(r, 9) for r in rates_by_order.values()}) > 1  # the order matters here


def test_fabric_benchmark_runs_on_a_small_network():
    result = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "fabric", "--sizes", "20", "40",
                             "--queries", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if re.match(r"\s*(20|40)\s", line)]
    assert len(rows) == 2, result.stdout
    for row in rows:
        fields = row.split()
        assert int(fields[2]) == 4  # queries planned
        assert all(float(x) > 0 for x in fields[4:7]), row  # p50, p90, max times
