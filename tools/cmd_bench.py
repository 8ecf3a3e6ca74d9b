"""`qstrata bench`: benchmarks. `netconf` compares our NETCONF server with netconfd; `restconf`
puts RESTCONF and NETCONF on one server side by side; `devices`
measures how many emulated devices one process hosts; `controllers` times device sync and
session re-plans; `orchestrator` times intents from commit to active and back after a cut (--intents N: with N
intents in place, and the orchestrator's memory);
`keys` times ETSI 014 enc_keys and dec_keys while undelivered keys pile up; `chaos` soaks the
closed loop in random faults and checks its invariants; `push` times YANG-Push on-change
notifications from edit-config to subscriber; `fabric` times the fidelity-aware entanglement
planner; `federation` times re-routes across a federation (trigger to keys on the new route);
`console` times the operator's console in a browser (first render, update latency)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks", description=__doc__)
    targets = p.add_subparsers(dest="bench", required=True)
    netconf = targets.add_parser("netconf", help="our NETCONF server and netconfd side by side, same model and payload")
    netconf.add_argument("--seconds", type=float, default=2.0, help="time per row, server and round (default 2)")
    netconf.add_argument("--sessions", type=int, default=50, help="concurrent sessions in the last row (default 50)")
    netconf.add_argument("--depth", type=int, default=16, help="pipelined requests in flight (default 16)")
    netconf.add_argument("--rounds", type=int, default=3, help="rounds; each cell is their median (default 3)")
    netconf.add_argument("--against", metavar="REVISION",
                         help="also measure `qstrata serve` of this git revision (a temporary worktree), side by side")
    netconf.set_defaults(func=run_netconf)
    restconf = targets.add_parser("restconf", help="RESTCONF and NETCONF reads and writes on one server, side by side")
    restconf.add_argument("--seconds", type=float, default=2.0, help="time per cell and round (default 2)")
    restconf.add_argument("--depth", type=int, default=16, help="requests in flight in the second row (default 16)")
    restconf.add_argument("--rounds", type=int, default=3, help="rounds; each cell is their median (default 3)")
    restconf.set_defaults(func=run_restconf)
    devices = targets.add_parser("devices", help="emulated devices over worker processes and in one, side by side: "
                                                 "memory, start time, get/s and get latency while all are polled")
    from tools import bench_devices  # light: it imports the device host only in its processes

    bench_devices.add_arguments(devices)
    devices.set_defaults(func=bench_devices.run)
    controllers = targets.add_parser("controllers", help="device discovery and sync time, re-plan after link down")
    from tools import bench_controllers  # light: it imports the levels only when it runs

    bench_controllers.add_arguments(controllers)
    controllers.set_defaults(func=bench_controllers.run)
    orchestrator = targets.add_parser("orchestrator", help="intent commit to active, fibre cut to active again; "
                                                           "--intents N: with N intents in place")
    from tools import bench_orchestrator  # light: it imports the stack only when it runs

    bench_orchestrator.add_arguments(orchestrator)
    keys = targets.add_parser("keys", help="ETSI 014 enc_keys and dec_keys latency with 0, 10,000 and 100,000 "
                                           "undelivered keys waiting")
    from tools import bench_keys  # light: it imports the key manager only when it runs

    bench_keys.add_arguments(keys)
    keys.set_defaults(func=bench_keys.run)
    chaos = targets.add_parser("chaos", help="random cuts, eavesdroppers, drains and crashes on a generated "
                                             "network, checking the closed loop's invariants throughout")
    from tools import bench_chaos  # light: it imports the stack only when it runs

    bench_chaos.add_arguments(chaos)
    chaos.set_defaults(func=bench_chaos.run)
    push = targets.add_parser("push", help="YANG-Push on-change latency, edit-config to push-change-update")
    from tools import bench_push  # light: it imports the engine only when it runs

    bench_push.add_arguments(push)
    follow = targets.add_parser("follow", help="the forwarding controller following its nodes: on-change "
                                               "subscriptions against polling, side by side")
    from tools import bench_follow  # light: it imports the stack only when it runs

    bench_follow.add_arguments(follow)
    fabric = targets.add_parser("fabric", help="fidelity-aware entanglement planning on generated networks of "
                                               "100 and 1,000 nodes")
    from tools import bench_fabric  # light: it imports the planner only when it runs

    bench_fabric.add_arguments(fabric)
    federation = targets.add_parser("federation", help="re-routes across a federation (a border link cut, a "
                                                       "move-sae): trigger to keys flowing on the new route")
    from tools import bench_federation  # light: it imports the federated stack only when it runs

    bench_federation.add_arguments(federation)
    console = targets.add_parser("console", help="the operator's console in headless chromium: first full render "
                                                 "and notification-to-page latency, 100 and 1,000 nodes")
    from tools import bench_console  # light: it imports the stack and the browser only when it runs

    bench_console.add_arguments(console)
    console.set_defaults(func=bench_console.run)


def run_netconf(args: argparse.Namespace) -> int:
    from tools import bench_netconf  # imported here: it loads asyncssh, libyang and the netconfd harness

    return bench_netconf.main(seconds=args.seconds, sessions=args.sessions, depth=args.depth,
                              rounds=args.rounds, against=args.against)


def run_restconf(args: argparse.Namespace) -> int:
    from tools import bench_restconf

    return bench_restconf.main(seconds=args.seconds, depth=args.depth, rounds=args.rounds)
