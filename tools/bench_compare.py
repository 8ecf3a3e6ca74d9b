"""Run one benchmark on two implementations side by side: this checkout (its working tree,
uncommitted changes included) and a git revision checked out in a temporary worktree.

Each measurement runs in a fresh Python process whose imports come from the tree measured
(PYTHONPATH first, so the editable install of this checkout is not used for the other one),
and the two trees take turns, so that a slow spell of the machine does not fall on one side
only. A measurement is a Python snippet that sets `result` to a JSON-able value, written
against the benchmark functions both revisions have.

    with revision_tree("HEAD~3") as before:
        rows = alternate({"before": before, "after": CURRENT}, snippet, rounds=3)
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator

CURRENT = pathlib.Path(__file__).resolve().parent.parent
"""The checkout this module is part of."""

_RESULT_MARK = "bench-compare-result: "


@contextlib.contextmanager
def revision_tree(revision: str) -> Iterator[pathlib.Path]:
    """A detached git worktree of `revision` of this checkout, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as scratch:
        tree = pathlib.Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(CURRENT), "worktree", "add", "--detach", "--quiet", str(tree), revision],
                       check=True, capture_output=True, text=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(CURRENT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True, text=True)


def measure_in(tree: pathlib.Path, snippet: str, timeout: float = 1800.0) -> object:
    """Run `snippet` (which sets `result`) in a new interpreter importing from `tree`."""
    program = f"{snippet}\nimport json as _json\nprint({_RESULT_MARK!r} + _json.dumps(result), flush=True)\n"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", program], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK):])
    raise RuntimeError(f"the benchmark in {tree.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def alternate(trees: dict[str, pathlib.Path], snippet: str, rounds: int) -> dict[str, list[object]]:
    """`rounds` results of `snippet` per tree, the trees taking turns."""
    results: dict[str, list[object]] = {label: [] for label in trees}
    for _ in range(rounds):
        for label, tree in trees.items():
            results[label].append(measure_in(tree, snippet))
    return results


def revision_label(revision: str) -> str:
    """`revision` with its short commit id, for a report header."""
    done = subprocess.run(["git", "-C", str(CURRENT), "rev-parse", "--short", revision],
                          capture_output=True, text=True)
    commit = done.stdout.strip()
    return f"{revision} ({commit})" if commit and commit != revision else revision
