"""The NETCONF benchmark runs end to end: our server (on its own SSH and behind sshd), netconfd
and the SSH floor, every row
measured and reported (no figure is asserted: speed belongs to the benchmark, not to tests)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_netconf_benchmark_reports_every_row_for_the_four_servers():
    result = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "netconf", "--seconds", "0.2", "--rounds", "1",
                             "--sessions", "3", "--depth", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert re.search(r"qstrata serve\s+qstrata via sshd\s+netconfd\s+SSH floor\s+speed-up\s+via sshd", lines[1])
    for title in ("connect+hello", "get/s, one session, sequential", "edit-config/s, one session, sequential",
                  "get/s, one session, 2 pipelined", "get/s, 3 concurrent sessions"):
        row = next(line for line in lines if line.startswith(title))
        # four servers and two speed-ups (ours against netconfd, ours via sshd against netconfd)
        figures = re.findall(r"(\d+(?:\.\d+)?)(?: ms)?", row[42:])
        assert len(figures) == 6 and all(float(f) > 0 for f in figures), row
    for title in ("server CPU per get, sequential", "server CPU per edit-config, sequential"):
        row = next(line for line in lines if line.startswith(title))
        # ours, ours via sshd (its own process only), netconfd ("-": its work is spread over
        # several processes), the SSH floor
        cells = re.fullmatch(r"\s*(\d+) us\s+(\d+) us\s+-\s+(\d+) us\s*(?:\S+x.*)?", row[42:])
        assert cells and all(int(c) > 0 for c in cells.groups()), row


def test_controllers_benchmark_takes_its_options_and_compares_with_a_revision():
    """`qstrata bench controllers` passes its options through (a small network, no re-plans)
    and with --against measures HEAD in a worktree beside this checkout, one row per figure."""
    result = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "controllers", "--sizes", "8", "--replans",
                             "0", "--against", "HEAD", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("sync 8 key managers"))
    before, after, ratio = (float(x) for x in row.split()[-3:])
    # the ratio is of the unrounded figures, printed to 2 decimals; the figures to 3
    assert before > 0 and after > 0 and ratio == pytest.approx(after / before, rel=0.02, abs=0.01)
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "qstrata-bench-" not in worktrees


def test_orchestrator_benchmark_with_intents_in_place_reports_every_row():
    """`qstrata bench orchestrator --intents N` on a small generated network: the probe on the
    empty network, N intents until all are active, the memory, the probe with N in place."""
    result = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "orchestrator", "--nodes", "12", "--intents",
                             "5", "--runs", "1", "--timeout", "400"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("orchestrator with 5 intents on generated-12-seed-0 (12 QKD nodes)"), lines
    figures = {}
    for title in ("commit->active, empty network (s)", "the same, links exist (s)",
                  "5 intents: commit->all active (s)", "memory before them (MiB)", "memory with them active (MiB)",
                  "commit->active, 5 in place (s)", "5 in place / empty (links exist)"):
        row = next(line for line in lines if line.strip().startswith(title))
        figures[title] = float(row[44:].split()[0])
        assert figures[title] > 0, row
    ratio = figures["commit->active, 5 in place (s)"] / figures["the same, links exist (s)"]
    assert figures["5 in place / empty (links exist)"] == pytest.approx(ratio, rel=0.02, abs=0.01)
