"""NETCONF benchmark: our server (`qstrata serve`, its own process) and yuma123 netconfd (behind
OpenSSH, tools/netconfd.py) side by side, on the same model (the engine test model without its
action, which netconfd cannot serve) and the same payload, through the same client
(netconf_core/client.py), so that the client is not the variable.

Rows: connect+hello time; sequential get/s and edit-config/s on one session; pipelined get/s on
one session; get/s over many concurrent sessions. Each row runs for a bounded time per server.
The get is a subtree filter on the interfaces list; the edit-config merges a new mtu into running.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from tools import conform
from tools.netconfd import NetconfdServer

INTERFACES = 20  # list entries in the payload every get returns
GET_FILTER = ("subtree", f'<interfaces xmlns="{conform.NS}"/>')
PAYLOAD = (f'<system xmlns="{conform.NS}"><hostname>bench</hostname></system><interfaces xmlns="{conform.NS}">'
           + "".join(f"<interface><name>eth{i}</name><vlan>{i + 1}</vlan><speed-mbps>1000</speed-mbps></interface>"
                     for i in range(INTERFACES)) + "</interfaces>")
MAX_CONNECTS = 200
CLOSE_TIMEOUT = 5.0


@dataclass
class Target:
    name: str
    host: str
    port: int
    username: str
    password: str | None = None
    client_key: str | None = None

    async def connect(self) -> NetconfClient:
        return await NetconfClient.connect(self.host, self.port, self.username, password=self.password,
                                           client_keys=[self.client_key] if self.client_key else None, timeout=30)


async def finish(client: NetconfClient) -> None:
    """close-session, but never wait long for it: the measurements do not include closing."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.close_session()
    except (OSError, TimeoutError, RPCError):
        client.close()


@dataclass
class Row:
    title: str
    unit: str  # "ms" (lower is better) or "/s" (higher is better)
    values: dict[str, float]


# --- measurements -------------------------------------------------------------------------------


async def connect_ms(target: Target, seconds: float) -> float:
    """Median time of SSH connect + netconf subsystem + hello exchange."""
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(times) < MAX_CONNECTS:
        started = time.perf_counter()
        client = await target.connect()
        times.append((time.perf_counter() - started) * 1000)
        await finish(client)
    return statistics.median(times)


async def rate(workers: list[Callable[[], Awaitable[object]]], seconds: float) -> float:
    """Requests per second: each worker repeats its request until the deadline."""
    count = 0
    deadline = time.monotonic() + seconds

    async def loop(request: Callable[[], Awaitable[object]]) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await request()
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(w) for w in workers))
    return count / (time.monotonic() - started)


async def sequential_get(target: Target, seconds: float) -> float:
    client = await target.connect()
    try:
        return await rate([lambda: client.get(GET_FILTER)], seconds)
    finally:
        await finish(client)


async def sequential_edit(target: Target, seconds: float) -> float:
    values = itertools.cycle(range(1000, 9000))
    client = await target.connect()

    def edit() -> Awaitable[None]:  # a new mtu each time, so that every edit changes running
        return client.edit_config(f'<system xmlns="{conform.NS}"><mtu>{next(values)}</mtu></system>')
    try:
        return await rate([edit], seconds)
    finally:
        await finish(client)


async def pipelined_get(target: Target, seconds: float, depth: int) -> float:
    client = await target.connect()
    try:
        return await rate([lambda: client.get(GET_FILTER)] * depth, seconds)
    finally:
        await finish(client)


async def concurrent_get(target: Target, seconds: float, sessions: int) -> float:
    clients = await asyncio.gather(*(target.connect() for _ in range(sessions)))
    try:
        return await rate([lambda c=c: c.get(GET_FILTER) for c in clients], seconds)
    finally:
        await asyncio.gather(*(finish(c) for c in clients))


async def load_payload(target: Target) -> None:
    """The same configuration on both servers; the check makes sure the payload is what get returns."""
    client = await target.connect()
    try:
        await client.edit_config(PAYLOAD, target="running")
        data = await client.get(GET_FILTER)
    finally:
        await finish(client)
    count = len(data.findall(f"{{{conform.NS}}}interfaces/{{{conform.NS}}}interface")) if data is not None else 0
    if count != INTERFACES:
        raise RuntimeError(f"{target.name}: the payload did not load ({count} interfaces)")


async def measure(targets: list[Target], seconds: float, sessions: int, depth: int) -> list[Row]:
    rows = [
        Row("connect+hello (median)", "ms", {}),
        Row("get/s, one session, sequential", "/s", {}),
        Row("edit-config/s, one session, sequential", "/s", {}),
        Row(f"get/s, one session, {depth} pipelined", "/s", {}),
        Row(f"get/s, {sessions} concurrent sessions", "/s", {}),
    ]
    runs = [lambda t: connect_ms(t, seconds), lambda t: sequential_get(t, seconds),
            lambda t: sequential_edit(t, seconds), lambda t: pipelined_get(t, seconds, depth),
            lambda t: concurrent_get(t, seconds, sessions)]
    for target in targets:
        await load_payload(target)
        for row, measurement in zip(rows, runs):
            print(f"{target.name}: {row.title} ...", file=sys.stderr, flush=True)
            row.values[target.name] = await measurement(target)
    return rows


# --- servers --------------------------------------------------------------------------------------


@contextmanager
def model_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as tmp:
        (Path(tmp) / conform.MODEL_FILE.name).write_text(conform.without_actions(conform.MODEL_FILE.read_text()))
        yield Path(tmp)


@contextmanager
def our_server(yang_dir: Path) -> Iterator[Target]:
    password = secrets.token_urlsafe(12)
    qstrata = Path(sys.executable).with_name("qstrata")
    process = subprocess.Popen([str(qstrata), "serve", "--yang", str(yang_dir), "--module", conform.MODULE,
                                "--port", "0", "--user", "admin", "--password", password],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        match = re.search(r"on 127\.0\.0\.1:(\d+) ", process.stdout.readline())
        if match is None:
            raise RuntimeError("qstrata serve did not start")
        yield Target("qstrata serve", "127.0.0.1", int(match.group(1)), "admin", password=password)
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def netconfd_server(yang_dir: Path) -> Iterator[Target]:
    # target running: edit-config goes to running on both servers (:writable-running).
    with NetconfdServer([conform.MODULE], [yang_dir], target="running") as server:
        yield Target("netconfd", server.host, server.port, server.username, client_key=str(server.client_key))


# --- report ---------------------------------------------------------------------------------------


def cell(value: float, unit: str) -> str:
    return f"{value:.1f} ms" if unit == "ms" else f"{value:.0f}"


def table(rows: list[Row], names: list[str]) -> str:
    """One line per row; the last column is how many times faster our server is (< 1: slower)."""
    ours, theirs = names
    lines = [f"{'':42}{ours:>15}{theirs:>12}{'speed-up':>10}"]
    for row in rows:
        a, b = row.values[ours], row.values[theirs]
        speedup = b / a if row.unit == "ms" else a / b
        lines.append(f"{row.title:42}{cell(a, row.unit):>15}{cell(b, row.unit):>12}{speedup:>9.2f}x"
                     + ("  <- ours slower" if speedup < 1 else ""))
    return "\n".join(lines)


def main(seconds: float = 3.0, sessions: int = 50, depth: int = 16) -> int:
    if seconds <= 0 or sessions < 1 or depth < 1:
        raise SystemExit("--seconds, --sessions and --depth must be positive")
    with model_dir() as yang_dir, our_server(yang_dir) as ours, netconfd_server(yang_dir) as theirs:
        rows = asyncio.run(measure([ours, theirs], seconds, sessions, depth))
    print(f"NETCONF benchmark: {conform.MODULE} model, {INTERFACES} interfaces per get, {seconds:g} s per row "
          "and server, same client (netconf_core.client)")
    print(table(rows, [ours.name, theirs.name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
