"""How many emulated devices a host runs, over worker processes and in one: for each size N, a
generated topology of about N devices (one fibre plant, and a QKD node and a key manager per
site) runs as the devices level (`qstrata run devices`, its own process), once over
--workers processes (default: one per core) and once in one process, side by side; this
process, as the NMS, opens one read-only NETCONF session per device and polls every device
once per --period seconds (each period in turn, spread evenly) for --seconds.

Reported per N and host: memory (the sum of the RSS of every process of the level, with every
session open), the time until the level's ready line (every device serving), the time to open
every session, and per period: get/s, the latency of each get (p50, p99) and the share within
the target. Each <get> asks for the device's own model (a subtree filter on its top-level
node), as the read-only user `monitor` unless --user admin is given. With netconfd installed
(tools/netconfd.py), it also reports the memory of one netconfd (behind its own sshd) per
device for --netconfd counts of devices, on the engine test model: what a host of real
NETCONF servers, one per device, would take.

    python -m tools.bench_devices [--sizes 1000 5000] [--workers N] [--period 10 2] [--seconds 20] [--no-single]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import yaml

TARGET_LATENCY_S = 0.100  # each device answers get within 100 ms while all are polled
CONNECT_CONCURRENCY = 32
START_TIMEOUT_S = 1800.0  # the start of the biggest single-process host
PASSWORDS = {"admin": "admin", "monitor": "monitor"}


# -- memory ----------------------------------------------------------------------------------

def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree(root: int) -> list[int]:
    """`root` and every live process below it."""
    parents: dict[int, int] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user and system) that `root` and every live process below it have used."""
    ticks = 0
    for pid in tree(root):
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue   # ended meanwhile
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss(root: int) -> int:
    total = 0
    for pid in tree(root):
        try:
            total += rss_bytes(pid)
        except OSError:
            pass   # ended meanwhile
    return total


# -- the devices level -----------------------------------------------------------------------

class DevicesLevel:
    """`qstrata run devices` on a generated topology of about `devices` devices over `workers`
    processes, plain HTTP for ETSI 014 (NETCONF only is measured)."""

    def __init__(self, devices: int, workers: int, scratch: pathlib.Path) -> None:
        from devices.topology import generate_topology
        from netconf_core import persistent_host_key

        directory = scratch / f"{devices}-{workers}"
        directory.mkdir()
        (directory / "topology.yaml").write_text(yaml.safe_dump(generate_topology(max(2, (devices - 1) // 2))))
        persistent_host_key(directory / "devices.key")
        config = directory / "devices.yaml"
        config.write_text(yaml.safe_dump({
            "level": "devices", "listen": {"address": "127.0.0.1", "host_key_file": "devices.key"},
            "users": [{"name": "admin", "access": "read-write", "password": PASSWORDS["admin"]},
                      {"name": "monitor", "access": "read-only", "password": PASSWORDS["monitor"]}],
            "devices": {"topology": "topology.yaml", "workers": workers, "etsi014": {"insecure_http": True}}}))
        self.config = config
        self.process: subprocess.Popen | None = None

    def start(self) -> tuple[list, float]:
        """Start it; its device rows and the seconds until its ready line."""
        from tools.cmd_run import READY
        from tools.device_table import parse_table

        began = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", "devices", "--config",
                                         str(self.config)], stdout=subprocess.PIPE, text=True, start_new_session=True)
        lines: list[str] = []
        while not lines or READY not in lines[-1]:
            line = self.process.stdout.readline()
            if not line or time.perf_counter() - began > START_TIMEOUT_S:
                raise RuntimeError(f"the devices level ({self.config}) did not start")
            lines.append(line.rstrip("\n"))
        return parse_table(lines[:-1]), time.perf_counter() - began

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.communicate()


def own_model(row) -> str:
    """A subtree filter on the top-level node of the device's first model that has one."""
    from netconf_core import schema_for

    schema = schema_for(row.modules)
    name, top = next((m, node) for m in row.modules for node in schema.ctx.get_module(m).children())
    return f'<{top.name()} xmlns="{schema.namespace_of_module(name)}"/>'


# -- polling ---------------------------------------------------------------------------------

def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@dataclass
class Polled:
    period: float
    gets_per_s: float
    p50_ms: float
    p99_ms: float
    within_target: float


@dataclass
class Row:
    devices: int
    workers: int
    processes: int
    rss_mib: float
    start_s: float
    connect_s: float
    polled: list[Polled] = field(default_factory=list)


async def poll(rows: list, host_key: str, periods: list[float], seconds: float, user: str,
               memory) -> tuple[float, list, int]:
    """Open a session per device, poll in each period; (connect s, a Polled per period, `memory()`
    read with every session open after the polling)."""
    from netconf_core.client import NetconfClient
    from netconf_core.ssh import raise_descriptor_limit, trusted_host_keys

    raise_descriptor_limit(2 * len(rows) + 1024)  # a session per device, as the NMS
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    pinned = trusted_host_keys(host_key)

    async def connect(port: int) -> NetconfClient:
        async with gate:
            return await NetconfClient.connect("127.0.0.1", port, user, PASSWORDS[user], known_hosts=pinned,
                                               timeout=300)

    began = time.perf_counter()
    clients = await asyncio.gather(*(connect(row.port) for row in rows))
    connect_s = time.perf_counter() - began
    filters = [own_model(row) for row in rows]

    async def paced(client, root: str, first: float, end: float, period: float, out: list[float]) -> None:
        due = first
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            started = time.perf_counter()
            await client.get(("subtree", root))
            out.append(time.perf_counter() - started)
            due += period

    results = []
    for period in periods:
        latencies: list[float] = []
        began = time.perf_counter()
        await asyncio.gather(*(paced(c, root, began + period * i / len(rows), began + max(seconds, period), period,
                                     latencies) for i, (c, root) in enumerate(zip(clients, filters))))
        elapsed = time.perf_counter() - began
        results.append(Polled(period, len(latencies) / elapsed, 1000 * percentile(latencies, 0.50),
                              1000 * percentile(latencies, 0.99),
                              sum(x <= TARGET_LATENCY_S for x in latencies) / max(1, len(latencies))))
    rss = memory()
    for client in clients:
        client.close()
    return connect_s, results, rss


def measure(devices: int, workers: int, periods: list[float], seconds: float, user: str,
            scratch: pathlib.Path) -> Row:
    from netconf_core import persistent_host_key, public_key_line

    level = DevicesLevel(devices, workers, scratch)
    try:
        rows, start_s = level.start()
        key = public_key_line(persistent_host_key(level.config.parent / "devices.key"))
        connect_s, polled, rss = asyncio.run(poll(rows, key, periods, seconds, user,
                                                  lambda: tree_rss(level.process.pid)))
        return Row(len(rows), workers, len(tree(level.process.pid)), rss / 1024**2, start_s, connect_s, polled)
    finally:
        level.stop()


def netconfd_memory(counts: list[int]) -> list[tuple[int, float]]:
    """(devices, MiB) for one netconfd and its sshd per device; [] without netconfd."""
    from tools import conform
    from tools.netconfd import NetconfdError, NetconfdServer

    if shutil.which("netconfd") is None:
        return []
    figures = []
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as yang:
        (pathlib.Path(yang) / conform.MODEL_FILE.name).write_text(
            conform.without_actions(conform.MODEL_FILE.read_text()))
        for count in counts:
            servers = []
            try:
                before = tree_rss(os.getpid()) - rss_bytes()
                for _ in range(count):
                    server = NetconfdServer([conform.MODULE], [yang], target="running")
                    server.start()
                    servers.append(server)
                figures.append((count, (tree_rss(os.getpid()) - rss_bytes() - before) / 1024**2))
            except NetconfdError as error:
                print(f"netconfd: {error}", file=sys.stderr)
            finally:
                for server in servers:
                    server.stop()
    return figures


def format_rows(rows: list[Row]) -> str:
    periods = [p.period for p in rows[0].polled]
    header = ["devices", "workers", "processes", "RSS MiB", "MiB/device", "start s", "connect s"]
    for period in periods:
        header += [f"get/s @{period:g}s", f"p50 ms @{period:g}s", f"p99 ms @{period:g}s",
                   f"<= {TARGET_LATENCY_S * 1000:.0f} ms @{period:g}s"]
    lines = []
    for r in rows:
        line = [str(r.devices), str(r.workers), str(r.processes), f"{r.rss_mib:.0f}", f"{r.rss_mib / r.devices:.2f}",
                f"{r.start_s:.1f}", f"{r.connect_s:.1f}"]
        for p in r.polled:
            line += [f"{p.gets_per_s:.0f}", f"{p.p50_ms:.1f}", f"{p.p99_ms:.1f}", f"{100 * p.within_target:.1f}%"]
        lines.append(line)
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    return "\n".join(" | ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header] + lines)


def main(sizes: list[int], workers: int, periods: list[float], seconds: float, user: str,
         netconfd: list[int], single: bool = True) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-devices-") as scratch:
        for devices in sizes:
            for count in dict.fromkeys((workers, 1) if single else (workers,)):
                print(f"{devices} devices, {count} worker{'s' if count > 1 else ''} ...", file=sys.stderr,
                      flush=True)
                rows.append(measure(devices, count, periods, seconds, user, pathlib.Path(scratch)))
    print(f"devices level over {workers} workers and in one process (workers 1), gets as user {user}, "
          f"{os.cpu_count()} cores")
    print(format_rows(rows))
    figures = netconfd_memory(netconfd) if netconfd else []
    for count, mib in figures:
        print(f"netconfd + sshd per device, {count} devices: {mib:.0f} MiB ({mib / count:.1f} MiB/device)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, for `python -m tools.bench_devices` and `qstrata bench devices`."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="device counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of the multi-process host (default: one per core)")
    parser.add_argument("--period", type=float, nargs="+", default=[10.0, 2.0],
                        help="seconds between two gets of a device, one polling phase each (default 10 2)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="seconds of each polling phase (at least one period; default 20)")
    parser.add_argument("--user", choices=("monitor", "admin"), default="monitor",
                        help="who polls: the read-only monitor (default) or the read-write admin")
    parser.add_argument("--netconfd", type=int, nargs="*", default=[10, 50],
                        help="device counts for the netconfd-per-device memory figures (none: skip)")
    parser.add_argument("--single", action=argparse.BooleanOptionalAction, default=True,
                        help="also run each size in one process, beside the workers (default; --no-single "
                             "skips it, for sizes one process cannot start in reasonable time)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or min(args.sizes) < 3 or min(args.period) <= 0:
        print("qstrata bench devices: --workers >= 1, --sizes >= 3 and --period > 0, please", file=sys.stderr)
        return 2
    return main(args.sizes, args.workers, args.period, args.seconds, args.user, args.netconfd, args.single)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tools.bench_devices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
