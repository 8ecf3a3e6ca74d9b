"""The README, followed literally: a fresh clone of the repository, then its two commands.

`make demo` and `make test` set up their own venv in the clone (system packages are the
machine's). This is the slowest test of the suite: it runs the whole suite once more, in the
clone, where this test skips itself."""
import os
import pathlib
import subprocess

import pytest

from test_demo import check_summary

ROOT = pathlib.Path(__file__).resolve().parents[1]
NESTED = "QSTRATA_README_TEST"
TIMEOUT_S = 3600

pytestmark = pytest.mark.skipif(os.environ.get(NESTED) == "1", reason="already inside the README test")


def readme_commands(readme: pathlib.Path) -> list[str]:
    """The commands of the README's first code block, without their comments."""
    text = readme.read_text()
    block = text.split("```", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.splitlines()[1:] if line.split("#", 1)[0].strip()]


def what_failed(stdout: str) -> str:
    """The nested run's failure reports and summary lines, in full: its tail alone cuts them to 80 columns."""
    failures = stdout.find("= FAILURES =")
    report = stdout[failures:failures + 12000] if failures >= 0 else ""
    summary = [line for line in stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "\n".join([report, *summary, stdout[-2000:]])


def test_readme_commands_work_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "qstrata"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    commands = readme_commands(clone / "README.md")
    assert commands == ["make demo", "make test"]
    env = dict(os.environ, **{NESTED: "1", "COLUMNS": "400"})
    env.pop("VIRTUAL_ENV", None)  # the clone's commands make and use the clone's own venv
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # typed at a shell, not run by an outer make
        env.pop(name, None)
    results = {}
    for command in commands:
        results[command] = subprocess.run(command.split(), cwd=clone, env=env, capture_output=True, text=True,
                                          timeout=TIMEOUT_S)
        assert results[command].returncode == 0, (command, what_failed(results[command].stdout),
                                                  results[command].stderr[-4000:])
    assert (clone / ".venv" / "bin" / "qstrata").exists()
    check_summary(results["make demo"].stdout)
    assert " passed" in results["make test"].stdout.splitlines()[-1]
