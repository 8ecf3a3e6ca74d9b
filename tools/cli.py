"""The `qstrata` command line.

Each sub-command lives in its own module under tools/ and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed arguments and returning an exit code.
"""
import argparse
import importlib
import sys

COMMAND_MODULES = [
    "tools.cmd_models",
    "tools.cmd_topology",
    "tools.cmd_serve",
    "tools.cmd_conform",
    "tools.cmd_bench",
    "tools.cmd_devices",
    "tools.cmd_fault",
    "tools.cmd_up",
    "tools.cmd_run",
    "tools.cmd_intent",
    "tools.cmd_status",
    "tools.cmd_demo",
    "tools.cmd_federation",
    "tools.cmd_console",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qstrata", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
