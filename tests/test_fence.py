"""The fence between the levels: the import-linter contracts of pyproject.toml hold on the
real tree and catch a deliberate breach in a copy of it; the engine's package exports what the
levels use and stays cheap to import."""
from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("netconf_core", "models", "qkd_physics", "entanglement_physics", "devices", "controller", "orchestrator",
            "console", "tools")
LINT_IMPORTS = str(pathlib.Path(sys.executable).with_name("lint-imports"))


def lint_imports(tree: pathlib.Path) -> subprocess.CompletedProcess:
    """lint-imports on the packages found in `tree` (it puts its working directory first on
    sys.path, ahead of the venv's editable install of the real tree)."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120)


def test_the_contracts_hold_on_the_real_tree() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 9 kept, 0 broken." in result.stdout


BREACHES = {
    "the engine imports a level": ({"netconf_core/_breach.py": "import controller.base\n"},
                                   "The engine imports no level BROKEN"),
    "the model vocabulary imports a level": ({"models/_breach.py": "import controller.base\n"},
                                             "The model vocabulary imports no level BROKEN"),
    "the engine imports the model vocabulary": ({"netconf_core/_breach.py": "import models.network\n"},
                                                "The engine imports no level BROKEN"),
    "the entanglement physics imports the QKD physics": (
        {"entanglement_physics/_breach.py": "import qkd_physics.model\n"},
        "The entanglement physics imports no level BROKEN"),
    "the physics model imports a level": ({"qkd_physics/_breach.py": "import devices.twin\n"},
                                          "The physics model imports no level BROKEN"),
    "a level imports another": ({"devices/_breach.py": "import orchestrator.store\n"},
                                "Devices, controllers and orchestrators do not import one another BROKEN"),
    "the console imports a level": ({"console/_breach.py": "import orchestrator.store\n"},
                                    "The console imports no level BROKEN"),
    "a level imports the console": ({"controller/_breach.py": "import console.hub\n"},
                                    "Only tools starts the console: nothing else imports it BROKEN"),
    "a level imports the command line": ({"controller/_breach.py": "import tools.netconfd\n"},
                                         "Only tools composes the levels: nothing else imports it BROKEN"),
    "a cycle inside the engine": ({"netconf_core/_cycle_a.py": "from netconf_core import _cycle_b\n",
                                   "netconf_core/_cycle_b.py": "from netconf_core import _cycle_a\n"},
                                  "No import cycles between the modules of a package BROKEN"),
}


@pytest.mark.parametrize("breach", list(BREACHES))
def test_a_breach_in_a_copy_of_the_tree_is_caught(tmp_path: pathlib.Path, breach: str) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    files, broken = BREACHES[breach]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout
    assert "Contracts: 8 kept, 1 broken." in result.stdout   # the breach, and nothing else


LOADERS = {"files", "import_module", "__import__"}  # importlib.resources.files, importlib.import_module


def test_no_level_reaches_another_package_by_name() -> None:
    """import-linter sees imports only: a level that loads another package's files or modules by
    name (importlib.resources.files("tools"), import_module("controller.x")) breaks the fence
    unseen. Only tools, the composition root, may."""
    breaches = []
    for package in PACKAGES:
        if package == "tools":
            continue
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                target = node.args[0].value
                if name in LOADERS and isinstance(target, str) and target.split(".")[0] in PACKAGES \
                        and target.split(".")[0] != package:
                    breaches.append(f"{source.relative_to(ROOT)}:{node.lineno} loads {target!r}")
    assert breaches == []


def test_the_session_names_the_server_for_type_checkers_only() -> None:
    """The one import the cycle contract ignores (session -> server) must not run: at run time
    the server imports the session, never the other way round."""
    graph = grimp.build_graph("netconf_core", exclude_type_checking_imports=True, cache_dir=None)
    assert not graph.chain_exists("netconf_core.session", "netconf_core.server")
    assert graph.chain_exists("netconf_core.server", "netconf_core.session")


def test_the_engine_package_exports_the_levels_api_lazily() -> None:
    script = ("import sys, netconf_core\n"
              "assert 'netconf_core.server' not in sys.modules, 'importing the package imported the server'\n"
              "from netconf_core import DeviceLink, NetconfServer, schema_for\n"
              "from netconf_core.link import DeviceLink as link_class\n"
              "from netconf_core.server import NetconfServer as server_class\n"
              "assert (DeviceLink, NetconfServer) == (link_class, server_class)\n"
              "missing = [n for n in netconf_core.__all__ if getattr(netconf_core, n, None) is None]\n"
              "assert not missing, missing\n"
              "print(len(netconf_core.__all__))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 15
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        import netconf_core
        netconf_core.NoSuchThing  # noqa: B018
