"""`qstrata demo`, run as a user runs it: a subprocess, judged by its exit code and summary."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 300
STEPS = [
    "Start the embedded Madrid network: devices, 3 controllers, orchestrator",
    "Push a key-service intent to the orchestrator over NETCONF",
    "The intent goes active",
    "Fetch keys through ETSI GS QKD 014 at both ends",
    "Cut a fibre under the intent's path",
    "The intent degrades and recovers on another path",
    "Keys still match on the new path",
    "Put an eavesdropper on a span of the new path",
    "The intent re-routes around the eavesdropper",
    "Keys still match after the re-route",
]


def check_summary(stdout: str, steps: list[str] = STEPS) -> None:
    """Every step of the demo appears in the closing summary as succeeded, in order."""
    summary = stdout[stdout.rindex("\nSUMMARY\n"):].splitlines()[2:]
    assert [re.sub(r" \(\d+\.\d s\)$", "", line.strip()) for line in summary[:-1]] == [
        f"[ok] {number}. {step}" for number, step in enumerate(steps, 1)]
    assert summary[-1] == f"all {len(steps)} steps succeeded"


def test_demo_runs_every_step_and_ends_with_its_summary():
    result = subprocess.run([sys.executable, "-m", "tools.cli", "demo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_summary(result.stdout)
    # progress is shown as it happens, and the keys themselves never are
    assert "degraded" in result.stdout and "QBER alarm on link" in result.stdout
    assert '"key"' not in result.stdout and "shutting down" in result.stdout
