"""Protection that protects (issue 12): an intent with `disjoint-paths 2` keeps its keys flowing on
the surviving path when the other one breaks (degraded, with a condition naming the lost path),
re-plans the lost path and is active again once the fault is cleared; it fails only when no path
is left. The full stack on 127.0.0.1, driven as an operator would: NETCONF to every level,
ETSI GS QKD 014 over HTTP for the keys."""
from __future__ import annotations

import asyncio

from devices.topology import parse_topology
from tools.cmd_demo import Operator, path_of
from conftest import stack_scenario, until

WAIT_S = 30.0
MASTER, SLAVE = "sae-quintin", "sae-distrito"


def scenario(tmp_path, body, topology=None) -> None:
    stack_scenario(tmp_path, body, wait_s=WAIT_S, bound_s=240, topology=topology)


async def protected(op: Operator, name: str = "qp") -> dict:
    await op.push_intent(name, MASTER, SLAVE, 10000, **{"disjoint-paths": 2})
    intent = await op.wait_state(name, {"active", "degraded", "failed"})
    assert intent["reached"]["state"] == "active", intent["reached"]["reason"]
    assert len(intent["paths"]) == 2
    [first, second] = [p["nodes"] for p in intent["paths"]]
    assert not set(first[1:-1]) & set(second[1:-1])  # node-disjoint
    return intent


def condition(intent: dict, kind: str) -> dict:
    return next(c for c in intent["conditions"] if c["type"].endswith(kind))


async def in_state(op: Operator, name: str, state: str, check=lambda intent: True) -> dict | None:
    intent = await op.intent(name)
    return intent if intent["state"] == state and check(intent) else None


class KeyStream:
    """An application pair fetching keys over ETSI 014 without pause while faults come and go:
    every batch must match at both ends, and no key ID may come twice."""

    def __init__(self, op: Operator):
        self.op = op
        self.batches: list[tuple[list[str], bool]] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.batches.append(await self.op.fetch_keys(MASTER, SLAVE, number=2))
            await asyncio.sleep(0.1)

    async def more(self, count: int = 3) -> None:
        """Wait until `count` more batches were delivered (the stream fails the test if it broke)."""
        target = len(self.batches) + count
        await until(self._delivered(target), f"{count} more key batches")

    def _delivered(self, target: int):
        async def check() -> bool:
            if self.task.done():
                self.task.result()  # raises what stopped the stream
            return len(self.batches) >= target
        return check

    async def stop(self) -> list[str]:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        ids = [i for batch, _ in self.batches for i in batch]
        assert all(same for _, same in self.batches), "keys differ at the two ends"
        assert len(ids) == len(set(ids)), "a key ID was served twice"
        return ids


async def served_again(op: Operator, ids: list[str]) -> int:
    """dec_keys for keys already delivered: the status code the slave's key manager answers."""
    async with op.http.post(f"{op.key_api(SLAVE)}/api/v1/keys/{MASTER}/dec_keys", **op.as_sae(SLAVE),
                            json={"key_IDs": [{"key_ID": i} for i in ids]}) as reply:
        body = await reply.json()
        assert reply.status == 200 or "keys" not in body
        return reply.status


def test_eavesdropper_on_the_path_in_use_keys_move_to_the_standby_and_come_back_protected(tmp_path):
    async def body(stack, op):
        intent = await protected(op)
        used_nodes, used_links = path_of(intent)
        standby = next(p for p in intent["paths"] if not p["in-use"])
        standby_spans = await op.spans_of(standby["links"])
        tapped = next(s for s in await op.spans_of(used_links) if s not in standby_spans)
        stream = KeyStream(op)
        await stream.more()
        await op.span_action(tapped, "attach-eavesdropper", **{"intercept-fraction": "0.5"})
        lost = " - ".join(used_nodes)

        def names_the_lost_path(intent: dict) -> bool:
            return f"lost path {lost}" in condition(intent, "disjointness-met")["message"]
        degraded = await until(lambda: in_state(op, "qp", "degraded", names_the_lost_path), "degraded on one path")
        assert condition(degraded, "disjointness-met")["status"] == "false"
        assert any(link in condition(degraded, "disjointness-met")["message"] for link in used_links)
        assert path_of(degraded)[0] == standby["nodes"]  # keys moved to the surviving path
        assert "failed" not in [t["to"] for t in degraded["history"]]
        await stream.more()   # ... and keep flowing there
        await op.span_action(tapped, "remove-eavesdropper")
        back = await until(lambda: in_state(op, "qp", "active", lambda i: len(i["paths"]) == 2),
                           "active again on two paths")
        assert condition(back, "disjointness-met")["status"] == "true"
        [first, second] = [p["nodes"] for p in back["paths"]]
        assert not set(first[1:-1]) & set(second[1:-1])
        await stream.more()
        ids = await stream.stop()
        assert len(ids) >= 18
        assert await served_again(op, ids[:4]) != 200   # a delivered key is never served again
    scenario(tmp_path, body)


def test_a_cut_standby_degrades_without_moving_keys_and_both_paths_cut_fail(tmp_path):
    async def body(stack, op):
        intent = await protected(op)
        used_nodes, used_links = path_of(intent)
        standby = next(p for p in intent["paths"] if not p["in-use"])
        used_spans = await op.spans_of(used_links)
        cut = next(s for s in await op.spans_of(standby["links"]) if s not in used_spans)
        stream = KeyStream(op)
        await stream.more()
        await op.span_action(cut, "cut")
        lost = " - ".join(standby["nodes"])
        degraded = await until(lambda: in_state(op, "qp", "degraded", lambda i: f"lost path {lost}" in
                                                condition(i, "disjointness-met")["message"]),
                               "degraded, naming the cut standby path")
        assert path_of(degraded) == (used_nodes, used_links)   # the keys' path did not change
        assert [t["to"] for t in degraded["history"]][-1] == "degraded"  # straight from active: nothing to repair
        assert condition(degraded, "ready")["status"] == "false"
        await stream.more()
        ids = await stream.stop()

        await op.span_action(used_spans[0], "cut")   # now neither path is left
        failed = await op.wait_state("qp", {"failed"})
        assert "no path" in failed["reached"]["reason"], failed["reached"]["reason"]
        assert await served_again(op, ids[-2:]) != 200

        await op.span_action(used_spans[0], "repair")
        await op.span_action(cut, "repair")
        await until(lambda: in_state(op, "qp", "active", lambda i: len(i["paths"]) == 2), "active on two paths")
        ids_after, same = await op.fetch_keys(MASTER, SLAVE)
        assert same and not set(ids_after) & set(ids)
    scenario(tmp_path, body)


def test_a_protected_intent_with_one_path_from_the_start_is_degraded_not_failed(tmp_path):
    async def body(stack, op):
        # qkd-almagro avoided: only the route by Concepcion joins Quintin and Distrito
        await op.push_intent("qp", MASTER, SLAVE, 10000, **{"disjoint-paths": 2, "avoid-nodes": "qkd-almagro"})
        reached = (await op.wait_state("qp", {"active", "degraded", "failed"}))["reached"]
        assert reached["state"] == "degraded", reached["reason"]
        assert "only 1 node-disjoint path(s)" in reached["reason"]
        ids, same = await op.fetch_keys(MASTER, SLAVE)
        assert same and ids
    scenario(tmp_path, body)


def trap_network():
    """Six sites where the cheapest path s-a-b-t takes a node of each of the only two disjoint
    paths, s-a-d-t and s-c-b-t: planning the cheapest first, then one disjoint from it, finds one."""
    spans = [("s", "a", 2.0), ("a", "b", 2.0), ("b", "t", 2.0), ("s", "c", 10.0), ("c", "b", 10.0),
             ("a", "d", 10.0), ("d", "t", 10.0)]
    ports: dict[str, list[str]] = {site: [] for site in "sabtcd"}
    for a, b, _ in spans:
        for site in (a, b):
            ports[site].append(f"{site}:{len(ports[site]) + 1}")
    ends = iter(end for a, b, _ in spans for end in (ports[a].pop(0), ports[b].pop(0)))
    spans_data = [{"id": f"{a}-{b}", "a": next(ends), "b": next(ends), "length_km": km} for a, b, km in spans]
    interfaces = {site: [] for site in "sabtcd"}
    for span in spans_data:
        for end in (span["a"], span["b"]):
            site = end.split(":")[0]
            interfaces[site].append({"id": len(interfaces[site]) + 1, "attach": end})
    return parse_topology({
        "name": "disjoint-trap", "sites": [{"id": site} for site in "sabtcd"], "spans": spans_data,
        "qkd_nodes": [{"id": f"qkd-{site}", "site": site, "interfaces": interfaces[site]} for site in "sabtcd"],
        "key_managers": [{"id": f"km-{site}", "site": site} for site in "sabtcd"],
        "saes": [{"id": "sae-s", "km": "km-s"}, {"id": "sae-t", "km": "km-t"}]}, "disjoint-trap")


def test_two_disjoint_paths_are_found_where_the_cheapest_path_blocks_the_second(tmp_path):
    async def body(stack, op):
        await op.push_intent("qp", "sae-s", "sae-t", 1000, **{"disjoint-paths": 2})
        reached = (await op.wait_state("qp", {"active", "degraded", "failed"}))["reached"]
        assert reached["state"] == "active", reached["reason"]
        intent = await op.intent("qp")
        assert sorted(p["nodes"] for p in intent["paths"]) == [["qkd-s", "qkd-a", "qkd-d", "qkd-t"],
                                                                ["qkd-s", "qkd-c", "qkd-b", "qkd-t"]]
        ids, same = await op.fetch_keys("sae-s", "sae-t")
        assert same and ids
    scenario(tmp_path, body, trap_network())
