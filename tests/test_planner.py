"""The planner on small hand-made networks (no servers): the key rate it expects of the links
it would build, optical bypasses of trusted nodes through switches, one optical path per
span, and the delivered-rate meter of the orchestrator."""
from __future__ import annotations

import pytest

from orchestrator.delivery import DeliveryMeter
from orchestrator.planner import Demand, Infeasible, Network, Planner, candidate_links
from models.forwarding import ForwardingView, QkdNode
from models.connectivity import FibreNetwork, FibreNode, FibreSpan
from qkd_physics import DeviceProfile, expected_eskr, link_performance


def fibre(spans: list[tuple[str, str, str, float]], switches: dict[str, tuple[str, float]] = {},
          paths: dict[str, tuple[str, ...]] = {}, down: set[str] = frozenset()) -> FibreNetwork:
    """Spans as (id, 'node:port', 'node:port', loss dB); switches as id -> (site, fabric loss)."""
    view = FibreNetwork("fibre")
    ports: dict[str, set[str]] = {}
    for span_id, a, b, loss in spans:
        ends = [tuple(end.split(":")) for end in (a, b)]
        for node, port in ends:
            ports.setdefault(node, set()).add(port)
        view.spans[span_id] = FibreSpan(span_id, ends[0], ends[1], loss, span_id not in down, False)
    for switch, (site, fabric) in switches.items():
        ports.setdefault(switch, set()).update({"7", "8"})  # two ports for interfaces plugged in
    for node, tps in ports.items():
        site, fabric = switches.get(node, (node, 0.0))
        kind = "optical-switch" if node in switches else "site"
        view.nodes[node] = FibreNode(node, kind, site, tuple(sorted(tps)), {}, fabric)
    view.optical_paths = dict(paths)
    return view


def qkd(nodes: dict[str, list[str]]) -> ForwardingView:
    """QKD nodes 'qkd-X' at site X with key manager 'km-X', each interface i attached at the
    i-th attachment point given."""
    view = ForwardingView("qkd")
    for site, attachments in nodes.items():
        view.nodes[f"qkd-{site}"] = QkdNode(f"qkd-{site}", f"km-{site}", site,
                                            {str(i + 1): tuple(a.split(":")) for i, a in enumerate(attachments)})
    return view


#   a:1 ---(x)--- sw-b:1 [switch at site b, QKD node b plugged at 7 and 8] sw-b:2 ---(y)--- c:1
TRUSTED_SITE = dict(spans=[("x", "a:1", "sw-b:1", 4.0), ("y", "sw-b:2", "c:1", 6.0)],
                    switches={"sw-b": ("b", 1.0)})
TRUSTED_NODES = {"a": ["a:1"], "b": ["sw-b:7", "sw-b:8"], "c": ["c:1"]}


def network(**changes) -> Network:
    layout = TRUSTED_SITE | changes
    return Network.observe(qkd(TRUSTED_NODES), fibre(**layout))


def test_a_new_link_is_expected_to_carry_the_model_eskr_at_its_loss_fabric_included():
    by_pair = {c.nodes(): c for c in candidate_links(qkd(TRUSTED_NODES), fibre(**TRUSTED_SITE))}
    to_b = by_pair[("qkd-a", "qkd-b")]
    assert to_b.loss_db == pytest.approx(4.0 + 1.0)  # span x, then the switch's fabric
    skr, _ = link_performance(5.0, DeviceProfile())
    assert to_b.eskr == pytest.approx(skr * 0.99, rel=1e-6) == pytest.approx(expected_eskr(5.0), rel=1e-6)
    assert to_b.bypasses == ()


def test_feasibility_follows_the_expected_rate_and_names_it():
    planner = Planner(network())
    rate = int(planner.network.candidates[0].eskr)
    plan = planner.plan(Demand("slow", "km-a", "km-b", rate - 1000))
    assert [c.nodes() for c in plan.new_links] == [("qkd-a", "qkd-b")]
    with pytest.raises(Infeasible) as refused:
        planner.plan(Demand("fast", "km-a", "km-b", rate + 1000))
    assert str(refused.value) == (f"no path between qkd-a and qkd-b: a new link qkd-a-qkd-b over 5 dB would carry "
                                  f"about {rate} bit/s of key; {rate + 1000} bit/s needed")


def test_beyond_the_cut_off_a_span_carries_no_key():
    far = Network.observe(qkd({"a": ["a:1"], "d": ["d:1"]}), fibre([("long", "a:1", "d:1", 24.0)]))
    [link] = far.candidates
    assert link.eskr == 0.0
    with pytest.raises(Infeasible, match="over 24 dB would carry about 0 bit/s of key; 1 bit/s needed"):
        Planner(far).plan(Demand("i", "km-a", "km-d", 1))


def test_a_higher_priority_demand_holds_the_expected_rate_of_a_new_link():
    net = network()
    planner = Planner(net)
    rate = int(next(c for c in net.candidates if c.nodes() == ("qkd-a", "qkd-b")).eskr)
    net.reserve(planner.plan(Demand("first", "km-a", "km-b", rate // 2 + 1)))
    with pytest.raises(Infeasible, match="held by intents of higher or equal priority"):
        planner.plan(Demand("second", "km-a", "km-b", rate // 2 + 1))


def test_the_trusted_node_is_preferred_and_bypassed_when_it_cannot_serve():
    planner = Planner(network())
    assert planner.plan(Demand("i", "km-a", "km-c", 1000)).nodes() == ["qkd-a", "qkd-b", "qkd-c"]
    for demand in (Demand("i", "km-a", "km-c", 1000, avoid_nodes=frozenset({"qkd-b"})),
                   Demand("i", "km-a", "km-c", 1000, max_hops=1)):
        plan = planner.plan(demand)
        [bypass] = plan.new_links
        assert plan.nodes() == ["qkd-a", "qkd-c"]
        assert (bypass.spans, bypass.bypasses, bypass.loss_db) == (("x", "y"), ("b",), 11.0)
        assert bypass.eskr == pytest.approx(expected_eskr(11.0), rel=1e-6)


def test_a_bypass_is_offered_only_where_no_route_through_trusted_nodes_joins_the_interfaces():
    pairs = {(c.nodes(), c.bypasses) for c in candidate_links(qkd(TRUSTED_NODES), fibre(**TRUSTED_SITE))}
    assert pairs == {(("qkd-a", "qkd-b"), ()), (("qkd-b", "qkd-c"), ()), (("qkd-a", "qkd-c"), ("b",))}


def test_a_span_carries_one_optical_path():
    held = network(paths={"other": ("y",)})  # someone else's optical path on span y
    with pytest.raises(Infeasible, match="needs span y, which carries other"):
        Planner(held).plan(Demand("i", "km-a", "km-c", 1000))
    # a standby path may not share a span with the primary: the bypass rides on x and y too
    with pytest.raises(Infeasible, match="only 1 node-disjoint path"):
        Planner(network()).plan(Demand("i", "km-a", "km-c", 1000, paths=2))


def test_two_disjoint_paths_each_with_its_own_fibre():
    #  a:1 -x- b:1   b:2 -y- c:1      (trusted route a - b - c)
    #  a:2 ------z------ c:2          (direct, a second path)
    net = Network.observe(qkd({"a": ["a:1", "a:2"], "b": ["b:1", "b:2"], "c": ["c:1", "c:2"]}),
                          fibre([("x", "a:1", "b:1", 3.0), ("y", "b:2", "c:1", 3.0), ("z", "a:2", "c:2", 8.0)]))
    plan = Planner(net).plan(Demand("i", "km-a", "km-c", 1000, paths=2))
    assert sorted(plan.nodes(i) for i in range(2)) == [["qkd-a", "qkd-b", "qkd-c"], ["qkd-a", "qkd-c"]]
    spans = [s for c in plan.new_links for s in c.spans]
    assert sorted(spans) == ["x", "y", "z"]


def test_a_cut_span_is_named():
    with pytest.raises(Infeasible, match="needs span y, which is cut"):
        Planner(network(down={"y"})).plan(Demand("i", "km-a", "km-c", 1000, avoid_nodes=frozenset({"qkd-b"})))


def test_the_delivered_rate_is_the_counter_growth_over_the_window():
    meter = DeliveryMeter(window=10.0, min_span=1.0)
    assert meter.observe("s", 0, now=100.0) is None
    assert meter.observe("s", 256, now=100.5) is None          # not a second apart yet
    assert meter.observe("s", 2560, now=101.0) == 2560
    for t in range(2, 30):                                      # 1024 bit/s from t=101 on
        rate = meter.observe("s", 2560 + 1024 * (t - 1), now=100.0 + t)
    assert rate == 1024                                         # the early burst has left the window
    assert meter.observe("s", 10, now=130.0) is None            # the counter went back: start again
    meter.forget("s")
    assert meter.observe("s", 0, now=131.0) is None
    with pytest.raises(ValueError):
        DeliveryMeter(window=1.0, min_span=2.0)
