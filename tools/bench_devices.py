"""How many emulated devices one process hosts: for each size N, a generated topology of about
N devices (one fibre plant, and a QKD node and a key manager per site) runs in a server
process of its own, and this process, as the NMS, polls every device over NETCONF.

Reported per N: the server's memory (RSS growth from start-up to all devices running, per
device), the time to build and start the devices, then with one read-only session per
device:
- saturated: every device has one <get> outstanding at all times; get/s across all of them
  and the latency of each get (p50, p99);
- polled: every device gets one <get> per --period seconds, spread evenly; latency p50, p99
  and the share of gets answered within the target.
Each <get> asks for the device's own model (a subtree filter on its top-level node), as the
read-only user `monitor` unless --user admin is given (NACM checks every node a read-only
user reads; the read-write group's permit-all rule skips that).

    python -m tools.bench_devices [--sizes 100 500 1000] [--seconds 10] [--period 2] [--user monitor]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

TARGET_BYTES = 2 * 1024**3  # 1,000 devices in one process under 2 GiB
TARGET_LATENCY_S = 0.100  # each device answers get within 100 ms while all are polled
CONNECT_CONCURRENCY = 32


# -- the server process ----------------------------------------------------------------------

def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def serve(devices: int) -> None:
    """Run a generated network of about `devices` devices; print one JSON line describing it,
    and another when standard input closes, then stop."""
    from devices.host import DeviceHost
    from devices.topology import generate_topology, parse_topology

    sites = max(2, (devices - 1) // 2)
    topology = parse_topology(generate_topology(sites), "generated")
    before = rss_bytes()
    started = time.perf_counter()
    host = DeviceHost(topology, insecure_sae_header=True)   # NETCONF only is measured
    await host.start()
    start_s = time.perf_counter() - started
    after = rss_bytes()
    targets = []
    for device in host.devices.values():
        name, top = next((m, node) for m in device.modules
                         for node in device.schema.ctx.get_module(m).children())  # its first top-level node
        targets.append((device.port, f'<{top.name()} xmlns="{device.schema.namespace_of_module(name)}"/>'))
    print(json.dumps({"devices": len(host.devices), "rss_before": before, "rss_started": after,
                      "start_s": start_s, "targets": targets}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(json.dumps({"rss_end": rss_bytes()}), flush=True)
    await host.stop()


# -- the polling process ---------------------------------------------------------------------

@dataclass
class Row:
    devices: int
    mib_per_device: float
    rss_mib: float
    rss_with_sessions_mib: float
    start_s: float
    connect_s: float
    saturated_gets_per_s: float
    saturated_p50_ms: float
    saturated_p99_ms: float
    polled_gets_per_s: float
    polled_p50_ms: float
    polled_p99_ms: float
    polled_within_target: float
    worst_device_p99_ms: float


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def poll(targets: list[tuple[int, str]], seconds: float, period: float, user: str) -> dict:
    from netconf_core.client import NetconfClient

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(port: int) -> NetconfClient:
        async with gate:
            return await NetconfClient.connect("127.0.0.1", port, user, user, timeout=300)

    started = time.perf_counter()
    clients = await asyncio.gather(*(connect(port) for port, _ in targets))
    connect_s = time.perf_counter() - started

    async def saturate(client: NetconfClient, root: str, deadline: float, out: list[float]) -> None:
        while (begun := time.perf_counter()) < deadline:
            await client.get(("subtree", root))
            out.append(time.perf_counter() - begun)

    async def paced(client: NetconfClient, root: str, first: float, end: float, out: list[float]) -> None:
        due = first
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            begun = time.perf_counter()
            await client.get(("subtree", root))
            out.append(time.perf_counter() - begun)
            due += period

    saturated: list[list[float]] = [[] for _ in targets]
    begun = time.perf_counter()
    await asyncio.gather(*(saturate(c, root, begun + seconds, out)
                           for c, (_, root), out in zip(clients, targets, saturated)))
    saturated_s = time.perf_counter() - begun
    polled: list[list[float]] = [[] for _ in targets]
    begun = time.perf_counter()
    await asyncio.gather(*(paced(c, root, begun + period * i / len(targets), begun + seconds, out)
                           for i, (c, (_, root), out) in enumerate(zip(clients, targets, polled))))
    polled_s = time.perf_counter() - begun
    for client in clients:
        client.close()
    flat_saturated = [x for xs in saturated for x in xs]
    flat_polled = [x for xs in polled for x in xs]
    return {
        "connect_s": connect_s,
        "saturated_gets_per_s": len(flat_saturated) / saturated_s,
        "saturated_p50_ms": 1000 * percentile(flat_saturated, 0.50),
        "saturated_p99_ms": 1000 * percentile(flat_saturated, 0.99),
        "polled_gets_per_s": len(flat_polled) / polled_s,
        "polled_p50_ms": 1000 * percentile(flat_polled, 0.50),
        "polled_p99_ms": 1000 * percentile(flat_polled, 0.99),
        "polled_within_target": sum(x <= TARGET_LATENCY_S for x in flat_polled) / max(1, len(flat_polled)),
        "worst_device_p99_ms": 1000 * max(percentile(xs, 0.99) for xs in polled if xs),
    }


def measure(devices: int, seconds: float, period: float, user: str) -> Row:
    server = subprocess.Popen([sys.executable, "-m", "tools.bench_devices", "--serve", str(devices)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process for {devices} devices ended without starting them")
        info = json.loads(line)
        polled = asyncio.run(poll([tuple(t) for t in info["targets"]], seconds, period, user))
        server.stdin.close()
        end = json.loads(server.stdout.readline())
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    mib = 1024**2
    grown = info["rss_started"] - info["rss_before"]
    return Row(info["devices"], grown / info["devices"] / mib, info["rss_started"] / mib, end["rss_end"] / mib,
               info["start_s"], **polled)


def format_rows(rows: list[Row], period: float) -> str:
    header = ("devices", "MiB/device", "RSS MiB", "RSS+sessions", "start s", "connect s",
              "sat get/s", "sat p50 ms", "sat p99 ms", f"polled get/s ({period:g} s period)",
              "p50 ms", "p99 ms", f"<= {TARGET_LATENCY_S * 1000:.0f} ms", "worst device p99 ms")
    lines = [(str(r.devices), f"{r.mib_per_device:.2f}", f"{r.rss_mib:.0f}", f"{r.rss_with_sessions_mib:.0f}",
              f"{r.start_s:.1f}", f"{r.connect_s:.1f}", f"{r.saturated_gets_per_s:.0f}",
              f"{r.saturated_p50_ms:.1f}", f"{r.saturated_p99_ms:.1f}", f"{r.polled_gets_per_s:.0f}",
              f"{r.polled_p50_ms:.1f}", f"{r.polled_p99_ms:.1f}", f"{100 * r.polled_within_target:.1f}%",
              f"{r.worst_device_p99_ms:.1f}") for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join(" | ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header] + lines)


def main(sizes: list[int], seconds: float, period: float, user: str) -> int:
    rows = []
    for devices in sizes:
        print(f"{devices} devices ...", file=sys.stderr, flush=True)
        rows.append(measure(devices, seconds, period, user))
    print(f"gets as user {user}")
    print(format_rows(rows, period))
    biggest = max(rows, key=lambda r: r.devices)
    memory_ok = biggest.rss_with_sessions_mib * 1024**2 < TARGET_BYTES
    latency_ok = biggest.polled_p99_ms <= TARGET_LATENCY_S * 1000
    print(f"\ntarget at {biggest.devices} devices: memory {'met' if memory_ok else 'MISSED'} "
          f"({biggest.rss_with_sessions_mib:.0f} MiB with every session open, limit 2048 MiB); "
          f"get within {TARGET_LATENCY_S * 1000:.0f} ms while all are polled every {period:g} s: "
          f"{'met' if latency_ok else 'MISSED'} (p99 {biggest.polled_p99_ms:.1f} ms)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, for `python -m tools.bench_devices` and `qstrata bench devices`."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000], help="device counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each polling phase (default 10)")
    parser.add_argument("--period", type=float, default=2.0,
                        help="seconds between two gets of a device in the polled phase (default 2)")
    parser.add_argument("--user", choices=("monitor", "admin"), default="monitor",
                        help="who polls: the read-only monitor (default) or the read-write admin")


def run(args: argparse.Namespace) -> int:
    return main(args.sizes, args.seconds, args.period, args.user)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tools.bench_devices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--serve", type=int, metavar="N", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        sys.exit(0)
    sys.exit(run(args))
