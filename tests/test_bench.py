"""The NETCONF benchmark runs end to end: our server, netconfd and the SSH floor, every row
measured and reported (no figure is asserted: speed belongs to the benchmark, not to tests)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_netconf_benchmark_reports_every_row_for_the_three_servers():
    result = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "netconf", "--seconds", "0.2", "--rounds", "1",
                             "--sessions", "3", "--depth", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert re.search(r"qstrata serve\s+netconfd\s+speed-up\s+SSH floor", lines[1])
    for title in ("connect+hello", "get/s, one session, sequential", "edit-config/s, one session, sequential",
                  "get/s, one session, 2 pipelined", "get/s, 3 concurrent sessions"):
        row = next(line for line in lines if line.startswith(title))
        figures = re.findall(r"(\d+(?:\.\d+)?)(?: ms)?", row[42:])
        assert len(figures) == 4 and all(float(f) > 0 for f in figures), row
