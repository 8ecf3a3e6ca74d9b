"""`qstrata topology`: generate topology files and check them."""
from __future__ import annotations

import argparse
import pathlib
import sys

import yaml

from devices.topology import TopologyError, generate_topology, load_topology, parse_topology


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("topology", help="generate and check topology files")
    commands = parser.add_subparsers(dest="topology_command", required=True)

    generate = commands.add_parser("generate", help="write a connected ring-with-chords topology")
    generate.add_argument("--nodes", type=int, required=True, help="number of sites (>= 2)")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same file")
    generate.add_argument("--out", type=pathlib.Path, help="file to write (default: standard output)")
    generate.set_defaults(func=_generate)

    check = commands.add_parser("check", help="validate a topology file and list every problem")
    check.add_argument("file", type=pathlib.Path)
    check.set_defaults(func=_check)


def _generate(args: argparse.Namespace) -> int:
    try:
        data = generate_topology(args.nodes, args.seed)
    except ValueError as exc:
        print(f"qstrata topology generate: {exc}", file=sys.stderr)
        return 2
    parse_topology(data, "generated")  # the generator's own output must be valid
    text = yaml.safe_dump(data, sort_keys=False)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"{args.out}: {args.nodes} sites, {len(data['spans'])} spans")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args.file)
    except TopologyError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(f"{args.file}: ok: {len(topology.sites)} sites, {len(topology.switches)} switches, "
          f"{len(topology.spans)} spans, {len(topology.qkd_nodes)} QKD nodes, "
          f"{len(topology.key_managers)} key managers, {len(topology.saes)} SAEs")
    return 0
