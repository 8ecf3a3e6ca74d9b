"""`qstrata models`: show, check and generate bindings of the YANG modules.

    qstrata models tree [MODULE...]                   pyang tree of the modules
    qstrata models check [MODULE...]                  pyang lint and yanglint: pass/fail table
    qstrata models bindings [--out DIR] [MODULE...]   pyangbind bindings

Without MODULE, every module of the YANG directory (the project's yang/ unless
--yang-dir names another) is used.
"""
import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys

from netconf_core.yangdirs import IANA_YANG_DIR, IETF_YANG_DIR, PROJECT_YANG_DIR
from tools import bindings

PYANG_LINT_OPTIONS = ["--strict", "--lint", "--max-line-length", "72", "-W", "error"]
"""RFC 8407 rules, strict YANG, lines of at most 72 characters, every warning an error."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    module: str
    tool: str
    passed: bool
    output: str


def search_path(yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> list[pathlib.Path]:
    return [yang_dir, IETF_YANG_DIR, IANA_YANG_DIR]


def modules_in(yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> list[str]:
    """Names of the modules in yang_dir (one module per <name>.yang file)."""
    return sorted(path.stem for path in yang_dir.glob("*.yang"))


def module_file(module: str, yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> pathlib.Path:
    path = yang_dir / f"{module}.yang"
    if not path.is_file():
        raise ValueError(f"no module {module!r} in {yang_dir} (there is no {path.name})")
    return path


def pyang_lint(module: str, yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> CheckResult:
    """Lint one module (not the modules it imports) with pyang."""
    command = [
        sys.executable, "-m", "pyang", *PYANG_LINT_OPTIONS,
        "--path", _joined(search_path(yang_dir)),
        str(module_file(module, yang_dir)),
    ]
    return _run_tool(module, "pyang --lint", command)


def yanglint_load(module: str, yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> CheckResult:
    """Load and compile one module, with the modules it imports, in yanglint (libyang)."""
    command = ["yanglint", "-D"]
    for directory in search_path(yang_dir):
        command += ["-p", str(directory)]
    command.append(str(module_file(module, yang_dir)))
    return _run_tool(module, "yanglint", command)


def check(modules: list[str], yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> list[CheckResult]:
    results = []
    for module in modules:
        results += [pyang_lint(module, yang_dir), yanglint_load(module, yang_dir)]
    return results


def format_report(results: list[CheckResult]) -> str:
    """A table with one row per module and one column per tool, then the output of each failure."""
    tools = list(dict.fromkeys(result.tool for result in results))
    modules = list(dict.fromkeys(result.module for result in results))
    verdict = {(r.module, r.tool): "pass" if r.passed else "FAIL" for r in results}
    width = max(len("module"), *(len(module) for module in modules)) + 2
    lines = ["module".ljust(width) + "".join(tool.ljust(14) for tool in tools)]
    for module in modules:
        lines.append(module.ljust(width) + "".join(verdict[module, tool].ljust(14) for tool in tools))
    failed_modules = sorted({r.module for r in results if not r.passed})
    lines.append("")
    if failed_modules:
        lines.append(f"{len(failed_modules)} of {len(modules)} modules fail: {', '.join(failed_modules)}")
        for result in results:
            if not result.passed:
                lines += ["", f"--- {result.module}: {result.tool}", result.output]
    else:
        lines.append(f"all {len(modules)} modules pass")
    return "\n".join(line.rstrip() for line in lines)


def tree(modules: list[str], yang_dir: pathlib.Path = PROJECT_YANG_DIR) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "pyang", "--format", "tree",
        "--path", _joined(search_path(yang_dir)),
        *(str(module_file(module, yang_dir)) for module in modules),
    ]
    return subprocess.run(command, capture_output=True, text=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="show, check and generate bindings of the YANG modules",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="models_command", required=True)

    tree_parser = commands.add_parser("tree", help="print the pyang tree of modules")
    _add_module_arguments(tree_parser)
    tree_parser.set_defaults(func=_run_tree)

    check_parser = commands.add_parser(
        "check", help="lint (pyang) and load (yanglint) modules; non-zero exit if any fails")
    _add_module_arguments(check_parser)
    check_parser.set_defaults(func=_run_check)

    bindings_parser = commands.add_parser("bindings", help="generate pyangbind bindings")
    bindings_parser.add_argument(
        "modules", nargs="*", metavar="MODULE",
        help=f"modules to generate (default: {', '.join(bindings.binding_modules())})")
    bindings_parser.add_argument(
        "--out", type=pathlib.Path, default=bindings.DEFAULT_OUT_DIR,
        help="directory to write the bindings to (default: %(default)s)")
    bindings_parser.set_defaults(func=_run_bindings)


def _add_module_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="module names (default: all)")
    parser.add_argument("--yang-dir", type=pathlib.Path, default=PROJECT_YANG_DIR,
                        help="directory of the modules (default: the project's yang/)")


def _selected_modules(args: argparse.Namespace) -> list[str]:
    modules = args.modules or modules_in(args.yang_dir)
    for module in modules:
        module_file(module, args.yang_dir)
    return modules


def _run_tree(args: argparse.Namespace) -> int:
    try:
        result = tree(_selected_modules(args), args.yang_dir)
    except ValueError as error:
        print(f"qstrata models tree: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def _run_check(args: argparse.Namespace) -> int:
    try:
        results = check(_selected_modules(args), args.yang_dir)
    except ValueError as error:
        print(f"qstrata models check: {error}", file=sys.stderr)
        return 2
    print(format_report(results))
    return 0 if all(result.passed for result in results) else 1


def _run_bindings(args: argparse.Namespace) -> int:
    try:
        for module in args.modules or bindings.binding_modules():
            print(bindings.generate(module, args.out))
    except bindings.BindingError as error:
        print(f"qstrata models bindings: {error}", file=sys.stderr)
        return 1
    return 0


def _run_tool(module: str, tool: str, command: list[str]) -> CheckResult:
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        return CheckResult(module, tool, False, f"{command[0]} not found; install it (yanglint: "
                                                "apt-get install libyang2-tools)")
    output = (result.stdout + result.stderr).strip()
    return CheckResult(module, tool, result.returncode == 0 and not output, output)


def _joined(paths: list[pathlib.Path]) -> str:
    return os.pathsep.join(str(path) for path in paths)
