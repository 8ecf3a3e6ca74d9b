"""The chaos soak (issue 12), short and seeded: random cuts, repairs, eavesdroppers, drained
pools and device crashes on a generated 12-node network with single and protected intents of
different priorities, every invariant checked after each fault (tools/bench_chaos.py); the
driver reaches the stack over NETCONF and ETSI 014 only. Longer runs are the benchmark
(`qstrata bench chaos`)."""
from __future__ import annotations

import asyncio

from tools.bench_chaos import FAULT_KINDS, soak

SOAK_S = 40.0


def test_a_short_seeded_chaos_soak_keeps_every_invariant(tmp_path):
    report = asyncio.run(asyncio.wait_for(soak(12, SOAK_S, seed=3, state_dir=tmp_path / "stack"), 240))
    print(report.text())
    assert report.violations == []
    assert {i.paths for i in report.intents} == {1, 2} and len({i.priority for i in report.intents}) > 1
    assert set(report.faults) == set(FAULT_KINDS), report.faults  # every kind of fault happened
    assert len(report.recovery) >= sum(report.faults.values())
    assert report.keys > 0
