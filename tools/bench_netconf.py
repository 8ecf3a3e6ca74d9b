"""NETCONF benchmark: our server (`qstrata serve`, its own process) and yuma123 netconfd (behind
OpenSSH, tools/netconfd.py) side by side, on the same model (the engine test model without its
action, which netconfd cannot serve) and the same payload, through the same client
(netconf_core/client.py), so that the client is not the variable.

Rows: connect+hello time; sequential get/s and edit-config/s on one session; pipelined get/s on
one session; get/s over many concurrent sessions. Each row runs for a bounded time per server.
The get is a subtree filter on the interfaces list; the edit-config merges a new mtu into running.

The servers take turns row by row, for several rounds, and each cell is the median of its
rounds: measured one after the other, a slow minute of the machine would favour one of them.

A third column, the SSH floor, is an asyncssh server (its own process, our SERVER_OPTIONS)
that answers every request with canned bytes: our get reply, or <ok/>. It does no NETCONF work
at all, so it shows what the transport alone costs, and how much of our time is NETCONF.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import os
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

import asyncssh
from lxml import etree

from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.ns import BASE
from netconf_core.framing import FrameReader, FramingError, encode
from netconf_core.ssh import SERVER_OPTIONS, NetconfSubsystemChannel
from tools import conform
from tools.netconfd import NetconfdServer

INTERFACES = 20  # list entries in the payload every get returns
GET_FILTER = ("subtree", f'<interfaces xmlns="{conform.NS}"/>')
PAYLOAD = (f'<system xmlns="{conform.NS}"><hostname>bench</hostname></system><interfaces xmlns="{conform.NS}">'
           + "".join(f"<interface><name>eth{i}</name><vlan>{i + 1}</vlan><speed-mbps>1000</speed-mbps></interface>"
                     for i in range(INTERFACES)) + "</interfaces>")
ROOT = Path(__file__).resolve().parents[1]
FLOOR_PASSWORD = "QSTRATA_BENCH_FLOOR_PASSWORD"  # how the floor server gets its password
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
    samples: dict[str, list[float]]  # server -> one value per round

    def value(self, name: str) -> float:
        return statistics.median(self.samples[name])


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


async def load_payload(target: Target) -> bytes:
    """The same configuration on every NETCONF server; the check makes sure the payload is what
    get returns. Returns the data of that get, as the server wrote it."""
    client = await target.connect()
    try:
        await client.edit_config(PAYLOAD, target="running")
        data = await client.get(GET_FILTER)
    finally:
        await finish(client)
    count = len(data.findall(f"{{{conform.NS}}}interfaces/{{{conform.NS}}}interface")) if data is not None else 0
    if count != INTERFACES:
        raise RuntimeError(f"{target.name}: the payload did not load ({count} interfaces)")
    return etree.tostring(data)


async def measure(targets: list[Target], seconds: float, sessions: int, depth: int, rounds: int) -> list[Row]:
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
    for turn in range(rounds):
        for row, measurement in zip(rows, runs):
            for target in targets:
                print(f"round {turn + 1}/{rounds}, {target.name}: {row.title} ...", file=sys.stderr, flush=True)
                row.samples.setdefault(target.name, []).append(await measurement(target))
    return rows


# --- servers --------------------------------------------------------------------------------------


@contextmanager
def model_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as tmp:
        (Path(tmp) / conform.MODEL_FILE.name).write_text(conform.without_actions(conform.MODEL_FILE.read_text()))
        yield Path(tmp)


@contextmanager
def server_process(name: str, args: list[str], username: str, password: str,
                   env: dict[str, str] | None = None) -> Iterator[Target]:
    """A server in its own process, which prints 'on 127.0.0.1:PORT' once it listens."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        match = re.search(r"on 127\.0\.0\.1:(\d+)", process.stdout.readline())
        if match is None:
            raise RuntimeError(f"{name} did not start")
        yield Target(name, "127.0.0.1", int(match.group(1)), username, password=password)
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def our_server(yang_dir: Path) -> Iterator[Target]:
    password = secrets.token_urlsafe(12)
    qstrata = Path(sys.executable).with_name("qstrata")
    with server_process("qstrata serve", [str(qstrata), "serve", "--yang", str(yang_dir), "--module", conform.MODULE,
                                          "--port", "0", "--user", "admin", f"--password={password}"],
                        "admin", password) as target:
        yield target


@contextmanager
def floor_server(get_reply: bytes) -> Iterator[Target]:
    password = secrets.token_urlsafe(12)
    with tempfile.NamedTemporaryFile(prefix="qstrata-bench-reply-") as reply:
        reply.write(get_reply)
        reply.flush()
        with server_process("SSH floor", [sys.executable, "-m", "tools.bench_netconf", "--floor-server", reply.name],
                            "bench", password,
                            env={**os.environ, "PYTHONPATH": str(ROOT), FLOOR_PASSWORD: password}) as target:
            yield target


@contextmanager
def netconfd_server(yang_dir: Path) -> Iterator[Target]:
    # target running: edit-config goes to running on both servers (:writable-running).
    with NetconfdServer([conform.MODULE], [yang_dir], target="running") as server:
        yield Target("netconfd", server.host, server.port, server.username, client_key=str(server.client_key))


# --- report ---------------------------------------------------------------------------------------


def cell(value: float, unit: str) -> str:
    return f"{value:.1f} ms" if unit == "ms" else f"{value:.0f}"


def table(rows: list[Row], names: list[str]) -> str:
    """One line per row: the median of each server, how many times faster our server is than
    netconfd (< 1: slower), and the SSH floor."""
    ours, theirs, floor = names
    lines = [f"{'':42}{ours:>15}{theirs:>12}{'speed-up':>10}{floor:>12}"]
    for row in rows:
        a, b = row.value(ours), row.value(theirs)
        speedup = b / a if row.unit == "ms" else a / b
        lines.append(f"{row.title:42}{cell(a, row.unit):>15}{cell(b, row.unit):>12}{speedup:>9.2f}x"
                     f"{cell(row.value(floor), row.unit):>12}" + ("  <- ours slower" if speedup < 1 else ""))
    return "\n".join(lines)


def main(seconds: float = 2.0, sessions: int = 50, depth: int = 16, rounds: int = 3) -> int:
    if seconds <= 0 or sessions < 1 or depth < 1 or rounds < 1:
        raise SystemExit("--seconds, --sessions, --depth and --rounds must be positive")
    with model_dir() as yang_dir, our_server(yang_dir) as ours, netconfd_server(yang_dir) as theirs:
        get_reply = asyncio.run(load_payload(ours))
        asyncio.run(load_payload(theirs))
        with floor_server(get_reply) as floor:
            rows = asyncio.run(measure([ours, theirs, floor], seconds, sessions, depth, rounds))
    print(f"NETCONF benchmark: {conform.MODULE} model, {INTERFACES} interfaces per get, {seconds:g} s per row "
          f"and server, median of {rounds} rounds, same client (netconf_core.client)")
    print(table(rows, [ours.name, theirs.name, floor.name]))
    print(f"{floor.name}: asyncssh answering with canned bytes, no NETCONF work: the most any server on this "
          "transport can do")
    return 0


# --- the SSH floor: asyncssh and framing, no NETCONF work ---------------------------------------------


class _FloorChannel(NetconfSubsystemChannel):
    """Answers the hello with base:1.0 and 1.1, <get> with the canned data, anything else with <ok/>."""

    def __init__(self, get_reply: bytes):
        self.get_reply = get_reply
        self.reader = FrameReader()

    def session_started(self) -> None:
        assert self.chan is not None
        self.chan.write(encode(f'<hello xmlns="{BASE}"><capabilities><capability>urn:ietf:params:netconf:base:1.0'
                               "</capability><capability>urn:ietf:params:netconf:base:1.1</capability>"
                               "</capabilities><session-id>1</session-id></hello>".encode(), chunked=False))

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        assert self.chan is not None
        self.reader.feed(data)
        try:
            while (message := self.reader.next_message()) is not None:
                if b"<hello" in message[:200]:
                    self.reader.switch_to_chunked()
                    continue
                match = re.search(rb'message-id="([^"]*)"', message)
                body = self.get_reply if b"<get>" in message or b"<get " in message else b"<ok/>"
                self.chan.write(encode(b'<rpc-reply xmlns="%s" message-id="%s">%s</rpc-reply>'
                                       % (BASE.encode(), match.group(1) if match else b"", body), chunked=True))
                if b"close-session" in message:
                    self.chan.close()
        except FramingError:
            self.chan.close()


class _FloorServer(asyncssh.SSHServer):
    def __init__(self, get_reply: bytes):
        self.get_reply = get_reply

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "bench" and hmac.compare_digest(password.encode(), os.environ[FLOOR_PASSWORD].encode())

    def session_requested(self) -> _FloorChannel:
        return _FloorChannel(self.get_reply)


async def _serve_floor(get_reply: bytes) -> None:
    acceptor = await asyncssh.create_server(
        lambda: _FloorServer(get_reply), "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        **SERVER_OPTIONS)
    print(f"SSH floor on 127.0.0.1:{acceptor.sockets[0].getsockname()[1]}", flush=True)
    await acceptor.wait_closed()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-server"]:
        asyncio.run(_serve_floor(Path(sys.argv[2]).read_bytes()))
    else:
        sys.exit(main())
