"""`qstrata demo --entanglement` runs its whole story and exits 0 (as a user runs it: the
installed command, in its own process)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

QSTRATA = pathlib.Path(sys.executable).parent / "qstrata"


def test_the_entanglement_demo_succeeds():
    result = subprocess.run([str(QSTRATA), "demo", "--entanglement"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "all 7 steps succeeded" in out
    assert "same ids" in out and "predicted by their fidelity" in out
    assert "the intent went repairing -> active" in out
    assert "failed: best achievable fidelity" in out and "< 0.99 requested" in out
