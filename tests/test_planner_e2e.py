"""A planner that knows what it can build (issue 12), on the full stack (devices, the three
controllers, the orchestrator, each a NETCONF server on 127.0.0.1), acting as an operator:
a dry run's verdict on a new link's key rate agrees with what the link then delivers; an
optical bypass of a trusted node through its site's switch is planned when it is the way
that works, and comes up; observed-rate is the rate the SAEs draw keys at (ETSI GS QKD 014)."""
from __future__ import annotations

import asyncio
import time

import pytest

from devices.topology import parse_topology
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from models.forwarding import ForwardingView
from models.ns import NW as NW_NS
from models.connectivity import FibreNetwork, read_fibre_network
from qkd_physics import expected_eskr
from tools.cmd_demo import Operator, path_of
from conftest import stack_scenario, until

INT_NS = "urn:qstrata:yang:qi-intent"
WAIT_S = 30.0
NETWORKS = ("subtree", f"<networks xmlns='{NW_NS}'/>")
JITTER = 0.05  # the twin's noise on a link's key rate

# Two sites at the ends of one 95 km span (19 dB): a new link there carries about 18 kb/s.
LONG_SPAN = parse_topology({
    "name": "long-span",
    "sites": [{"id": "west"}, {"id": "east"}],
    "spans": [{"id": "west-east", "a": "west:1", "b": "east:1", "length_km": 95}],
    "qkd_nodes": [{"id": "qkd-west", "site": "west", "interfaces": [{"id": 1, "attach": "west:1"}]},
                  {"id": "qkd-east", "site": "east", "interfaces": [{"id": 1, "attach": "east:1"}]}],
    "key_managers": [{"id": "km-west", "site": "west"}, {"id": "km-east", "site": "east"}],
    "saes": [{"id": "sae-west", "km": "km-west"}, {"id": "sae-east", "km": "km-east"}],
}, "long-span")


def scenario(tmp_path, body, topology=None) -> None:
    stack_scenario(tmp_path, body, wait_s=WAIT_S, bound_s=180, topology=topology)


def intent_xml(name: str, source: str, destination: str, rate: int, extra: str = "") -> str:
    return (f"<intents xmlns='{INT_NS}'><intent><name>{name}</name><endpoints><source-sae>{source}</source-sae>"
            f"<destination-sae>{destination}</destination-sae></endpoints><min-rate>{rate}</min-rate>{extra}"
            f"</intent></intents>")


async def dry_run(op: Operator, *intents: str) -> dict[str, dict]:
    """The orchestrator's dry-run of a candidate holding `intents`; the candidate is discarded."""
    nc = op.sessions["orchestrator"]
    for intent in intents:
        await nc.edit_config(intent, target="candidate")
    try:
        reply = await nc.dispatch(f"<dry-run xmlns='{INT_NS}'/>")
    finally:
        await nc.discard_changes()
    q = lambda tag: f"{{{INT_NS}}}{tag}"
    return {e.findtext(q("name")): {
        "feasible": e.findtext(q("feasible")) == "true", "reason": e.findtext(q("reason")),
        "nodes": [h.findtext(q("node-id")) for h in e.iterfind(f"{q('path')}/{q('hop')}")],
        "requests": [(r.findtext(q("stratum")), r.findtext(q("operation")), r.findtext(q("resource")),
                      r.findtext(q("name")), r.findtext(q("detail"))) for r in e.iterfind(q("request"))]}
        for e in reply.iterfind(q("intent"))}


async def views(op: Operator) -> tuple[ForwardingView, FibreNetwork]:
    return (ForwardingView.parse(await op.sessions["forwarding"].get(filter=NETWORKS)),
            read_fibre_network(await op.sessions["connectivity"].get(filter=NETWORKS)))


# --- a dry run's verdict on a new link's rate is the outcome ---------------------------------

def test_dry_run_feasibility_over_a_95_km_span_agrees_with_the_outcome(tmp_path):
    estimate = expected_eskr(19.0)
    assert 10_000 < estimate < 30_000  # the span is long: 100 kb/s is out of reach, 2 kb/s is not

    async def body(stack, op):
        fast = intent_xml("fast", "sae-west", "sae-east", 100_000)
        slow = intent_xml("slow", "sae-west", "sae-east", 2_000)
        verdict = (await dry_run(op, fast))["fast"]
        assert not verdict["feasible"]
        assert verdict["reason"] == (f"no path between qkd-west and qkd-east: a new link qkd-east-qkd-west over 19 dB "
                                     f"would carry about {int(estimate)} bit/s of key; 100000 bit/s needed")
        verdict = (await dry_run(op, slow))["slow"]
        assert verdict["feasible"], verdict["reason"]
        assert ("qit:quantum-forwarding", "create", "qkd-link", "qkd-east.1-qkd-west.1") in {
            r[:4] for r in verdict["requests"]}
        assert (await views(op))[0].links == {}  # a dry run builds nothing

        nc = op.sessions["orchestrator"]
        await nc.edit_config(fast, target="candidate")
        await nc.edit_config(slow, target="candidate")
        await nc.commit()
        outcome = {}
        for name in ("fast", "slow"):
            outcome[name] = (await op.wait_state(name, {"active", "failed"}))["reached"]
        assert outcome["slow"]["state"] == "active", outcome["slow"]["reason"]
        assert outcome["fast"]["state"] == "failed"
        assert "bit/s of key" in outcome["fast"]["reason"] and "100000 bit/s needed" in outcome["fast"]["reason"]
        assert (await op.fetch_keys("sae-west", "sae-east"))[1]
        # the link delivers what was expected of it (within the twin's noise)
        fwd, _ = await views(op)
        [link] = fwd.links.values()
        assert link.up and link.eskr == pytest.approx(estimate, rel=JITTER + 0.01)
        assert (await op.intent("fast"))["state"] == "failed"  # and the real link does not change the verdict
    scenario(tmp_path, body, LONG_SPAN)


# --- an optical bypass of a trusted node, planned by intent ---------------------------------

def test_madrid_bypass_of_concepcion_is_planned_when_it_is_the_way_and_comes_up(tmp_path):
    # one hop between Quintin and Distrito: only light through sw-concepcion, past the trusted
    # node at Concepcion, does it (4.1 + 15.3 km at 0.2 dB/km, and 1 dB through the switch)
    loss = round(4.1 * 0.2 + 15.3 * 0.2 + 1.0, 3)
    bypass = "qkd-distrito.2-qkd-quintin.1"

    async def body(stack, op):
        one_hop = intent_xml("direct", "sae-quintin", "sae-distrito", 20_000, "<max-hops>1</max-hops>")
        verdict = (await dry_run(op, one_hop))["direct"]
        assert verdict["feasible"], verdict["reason"]
        assert verdict["nodes"] == ["qkd-quintin", "qkd-distrito"]
        [link] = [r for r in verdict["requests"] if r[:3] == ("qit:quantum-forwarding", "create", "qkd-link")]
        assert link[3] == bypass
        assert link[4].endswith(f"expected eskr about {int(expected_eskr(loss))} bit/s, bypassing the trusted node "
                                f"at concepcion")
        [optical] = [r for r in verdict["requests"] if r[:3] == ("qit:connectivity", "create", "optical-path")]
        assert optical[3] == bypass
        assert f"from distrito:2 to quintin:1 over spans concepcion-distrito, quintin-concepcion ({loss:g} dB)" \
            in optical[4]

        await op.push_intent("direct", "sae-quintin", "sae-distrito", 20_000, **{"max-hops": 1})
        reached = (await op.wait_state("direct", {"active", "failed"}))["reached"]
        assert reached["state"] == "active", reached["reason"]
        assert path_of(await op.intent("direct")) == (["qkd-quintin", "qkd-distrito"], [bypass])
        ids, same = await op.fetch_keys("sae-quintin", "sae-distrito")
        assert same and ids
        fwd, fibre = await views(op)
        assert set(fibre.optical_paths[fwd.links[bypass].optical_path or bypass]) == {
            "quintin-concepcion", "concepcion-distrito"}
        assert fwd.links[bypass].eskr == pytest.approx(expected_eskr(loss), rel=JITTER + 0.01)
        # with no constraint, the trusted node is still the way
        await op.push_intent("trusted", "sae-quintin", "sae-almagro", 20_000)
        assert (await op.wait_state("trusted", {"active", "failed"}))["reached"]["state"] == "active"
        assert path_of(await op.intent("trusted"))[0] == ["qkd-quintin", "qkd-almagro"]
    scenario(tmp_path, body)


# --- observed-rate is what the SAEs draw ------------------------------------------------------

KEY_BITS = 256
KEYS_PER_FETCH = 2
FETCH_PERIOD_S = 0.1     # 2 keys of 256 bits every 0.1 s: about 5 kb/s asked by the SAE
FETCH_FOR_S = 14.0       # longer than the orchestrator's window (10 s) and period (5 s)


def test_observed_rate_follows_the_keys_the_saes_fetch(tmp_path):
    async def body(stack, op):
        await op.push_intent("qa", "sae-quintin", "sae-almagro", 20_000)
        assert (await op.wait_state("qa", {"active", "failed"}))["reached"]["state"] == "active"

        async def reading() -> dict:
            stack.orchestrator.wake()  # a pass reads the delivered counters now
            await asyncio.sleep(0.3)
            return await op.intent("qa")

        idle = await reading()
        assert int(idle.get("observed-rate") or 0) == 0  # nobody fetched a key yet
        assert int(idle["available-rate"]) >= 20_000    # ... though the path carries far more
        fetched, start = 0, time.monotonic()
        for tick in range(int(FETCH_FOR_S / FETCH_PERIOD_S)):
            _, same = await op.fetch_keys("sae-quintin", "sae-almagro", KEYS_PER_FETCH, KEY_BITS)
            assert same
            fetched += KEYS_PER_FETCH * KEY_BITS
            await asyncio.sleep(max(0.0, start + (tick + 1) * FETCH_PERIOD_S - time.monotonic()))
        drawn = fetched / (time.monotonic() - start)
        observed = int((await reading())["observed-rate"])
        assert 0.5 * drawn <= observed <= 1.5 * drawn, (observed, drawn)

        async def idle_again():
            return int((await reading()).get("observed-rate") or 0) <= 0.1 * drawn
        await until(idle_again, "observed-rate back near 0 once the SAEs stop", timeout=25.0)
    scenario(tmp_path, body)


# --- plan-path may include the links that could be built -------------------------------------

def test_plan_path_includes_buildable_links_only_when_asked(tmp_path):
    svc = "urn:qstrata:yang:qi-service"
    q = lambda tag: f"{{{svc}}}{tag}"

    async def body(stack, op):
        service = next(row for row in stack.table() if row.level == "service")
        async with await NetconfClient.connect(service.host, service.port, *service.read_only) as nc:
            async def plan(extra: str = "") -> list[dict]:
                reply = await nc.dispatch(f"<plan-path xmlns='{svc}'><source-sae>sae-quintin</source-sae>"
                                          f"<destination-sae>sae-distrito</destination-sae><rate>20000</rate>{extra}"
                                          f"</plan-path>")
                return [{"nodes": [h.findtext(q("node-id")) for h in sorted(
                            p.iterfind(q("hop")), key=lambda h: int(h.findtext(q("index"))))],
                         "links": [h.findtext(q("link-id")) for h in p.iterfind(q("hop")) if h.findtext(q("link-id"))],
                         "buildable": [e.text for e in p.iterfind(q("buildable-link"))],
                         "headroom": int(p.findtext(q("headroom")))} for p in reply.iterfind(q("path"))]

            with pytest.raises(RPCError, match="no chain of PHYS QKD links joins qkd-quintin and qkd-distrito"):
                await plan()  # nothing is built yet
            [bypass] = await plan("<include-buildable>true</include-buildable>")
            assert bypass["nodes"] == ["qkd-quintin", "qkd-distrito"]  # the fewest hops: the bypass of Concepcion
            assert bypass["links"] == bypass["buildable"] == ["qkd-distrito.2-qkd-quintin.1"]
            assert bypass["headroom"] == int(expected_eskr(4.88))
            assert all(set(p["links"]) == set(p["buildable"])
                       for p in await plan("<include-buildable>true</include-buildable><path-count>2</path-count>"))

            await op.push_intent("qa", "sae-quintin", "sae-almagro", 20_000)  # builds quintin - almagro
            assert (await op.wait_state("qa", {"active", "failed"}))["reached"]["state"] == "active"
            [built] = path_of(await op.intent("qa"))[1]
            # around Concepcion, Norte and the one-hop bypasses: over the link built, then one to build
            [path] = await plan("<include-buildable>true</include-buildable>"
                                "<avoid-nodes>qkd-concepcion</avoid-nodes><avoid-nodes>qkd-norte</avoid-nodes>"
                                "<avoid-links>qkd-distrito.2-qkd-quintin.1</avoid-links>"
                                "<avoid-links>qkd-distrito.1-qkd-quintin.1</avoid-links>")
            assert path["nodes"] == ["qkd-quintin", "qkd-almagro", "qkd-distrito"]
            assert path["links"][0] == built and path["buildable"] == path["links"][1:]
            assert path["headroom"] < 1_000_000  # the link to build bypasses Norte or Concepcion: longer
    scenario(tmp_path, body)
