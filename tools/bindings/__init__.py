"""Typed Python bindings (pyangbind) of the project's YANG modules.

Each module with data nodes gets one generated Python file, named after the
module with underscores (qi-intent -> qi_intent.py); its root class has the
same name.  A module that augments another module's tree is generated
together with that module, since pyangbind places augmented nodes in the
tree they extend: qi_connectivity.py, for example, holds the ietf_network
class with the fibre network augmentations.  RPCs get input and output
classes; YANG 1.1 actions are left out (pyangbind 0.8.7 cannot generate
them).
"""
import importlib.util
import os
import pathlib
import subprocess
import sys
from types import ModuleType

import pyangbind.plugin

from netconf_core.models import PROJECT_MODULES
from netconf_core.yangdirs import SEARCH_DIRS

DEFAULT_OUT_DIR = pathlib.Path(__file__).resolve().parent / "generated"

TYPE_ONLY_MODULES = ("qi-types", "qi-alarms", "etsi-qkd-node-types")
"""Modules without data nodes: their types are generated into the modules using them."""

AUGMENTED_MODULES: dict[str, list[str]] = {
    "qi-qkd-node-ext": ["etsi-qkd-sdn-node"],
    "qi-connectivity": ["ietf-network", "ietf-network-topology"],
    "qi-forwarding": ["ietf-network", "ietf-network-topology"],
    "qi-fabric": ["ietf-network", "ietf-network-topology"],
    "qi-entanglement-intent": ["qi-intent"],
}
"""For each module that augments others, the modules whose trees it extends."""

PLUGIN_DIRS = [
    pathlib.Path(pyangbind.plugin.__file__).resolve().parent,
    pathlib.Path(__file__).resolve().parent / "pyang_plugins",
]


class BindingError(Exception):
    """pyang could not generate the bindings of a module; the message is pyang's output."""


def binding_modules() -> list[str]:
    """The project modules that have bindings."""
    return [name for name in PROJECT_MODULES if name not in TYPE_ONLY_MODULES]


def binding_name(module: str) -> str:
    """Python name of the generated file and of its root class."""
    return module.replace("-", "_")


def generate(module: str, out_dir: pathlib.Path = DEFAULT_OUT_DIR) -> pathlib.Path:
    """Generate the bindings of `module` into out_dir; return the file written."""
    if module not in binding_modules():
        raise BindingError(f"{module}: not a project module with data nodes; "
                           f"choose from {', '.join(binding_modules())}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{binding_name(module)}.py"
    sources = [_module_file(name) for name in AUGMENTED_MODULES.get(module, []) + [module]]
    command = [sys.executable, "-m", "pyang"]
    for plugin_dir in PLUGIN_DIRS:
        command += ["--plugindir", str(plugin_dir)]
    command += [
        "--path", os.pathsep.join(str(path) for path in SEARCH_DIRS),
        "--transform", "drop-actions",
        "--format", "pybind", "--build-rpcs",
        "--output", str(target),
        *(str(path) for path in sources),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BindingError(f"{module}: pyang failed:\n{result.stderr.strip()}")
    return target


def load(module: str, out_dir: pathlib.Path = DEFAULT_OUT_DIR) -> ModuleType:
    """Import the bindings of `module` generated into out_dir."""
    path = out_dir / f"{binding_name(module)}.py"
    if not path.exists():
        raise BindingError(f"{module}: no bindings in {out_dir}; generate them first")
    spec = importlib.util.spec_from_file_location(f"qstrata_bindings.{binding_name(module)}", path)
    assert spec is not None and spec.loader is not None
    binding = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(binding)
    return binding


def _module_file(module: str) -> pathlib.Path:
    """The file of a module: the project's yang/ first, then pyang's IETF and IANA modules."""
    for directory in SEARCH_DIRS:
        path = directory / f"{module}.yang"
        if path.exists():
            return path
    raise BindingError(f"{module}: no {module}.yang in {', '.join(map(str, SEARCH_DIRS))}")
