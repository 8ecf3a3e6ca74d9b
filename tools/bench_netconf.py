"""NETCONF benchmark: our server (`qstrata serve`, its own process) and yuma123 netconfd (behind
OpenSSH, tools/netconfd.py) side by side, on the same model (the engine test model without its
action, which netconfd cannot serve) and the same payload, through the same client
(netconf_core/client.py), so that the client is not the variable.

Rows: connect+hello time; sequential get/s and edit-config/s on one session; pipelined get/s on
one session; get/s over many concurrent sessions. Each row runs for a bounded time per server.
The get is a subtree filter on the interfaces list; the edit-config merges a new mtu into running.

The servers take turns row by row, for several rounds, and each cell is the median of its
rounds: measured one after the other, a slow minute of the machine would favour one of them.

The column "qstrata via sshd" is the same server behind OpenSSH's sshd (netconf_core/sshd.py:
sshd hands the netconf subsystem's pipes to the server over a Unix socket), with the same sshd
settings as netconfd's (tools/openssh.py): the two deployments side by side; its own speed-up
column compares it with netconfd.

The SSH floor, is an asyncssh server (its own process, our SERVER_OPTIONS)
that answers every request with canned bytes: our get reply, or <ok/>. It does no NETCONF work
at all, so it shows what the transport alone costs, and how much of our time is NETCONF.

With --against REVISION, `qstrata serve` of that git revision (a temporary worktree) is measured
too, in the same turns. The last two rows are the CPU time (user + system, from /proc) our
servers' processes spent per request in the sequential rows: unlike requests per second, it
hardly moves when other work shares the machine, so it compares two revisions on a busy host.
netconfd's work is spread over sshd and its subsystem processes, so it has no figure there.
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
import contextlib
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
from tools.openssh import SshdFront

INTERFACES = 20  # list entries in the payload every get returns
GET_FILTER = ("subtree", f'<interfaces xmlns="{conform.NS}"/>')
PAYLOAD = (f'<system xmlns="{conform.NS}"><hostname>bench</hostname></system><interfaces xmlns="{conform.NS}">'
           + "".join(f"<interface><name>eth{i}</name><vlan>{i + 1}</vlan><speed-mbps>1000</speed-mbps></interface>"
                     for i in range(INTERFACES)) + "</interfaces>")
ROOT = Path(__file__).resolve().parents[1]
FLOOR_PASSWORD = "QSTRATA_BENCH_FLOOR_PASSWORD"  # how the floor server gets its password
MAX_CONNECTS = 200
NETCONFD = "netconfd"
SERVE_AT = "qstrata serve @"  # the name of the other revision's server
VIA_SSHD = "qstrata via sshd"
CLOSE_TIMEOUT = 5.0


@dataclass
class Target:
    name: str
    host: str
    port: int
    username: str
    password: str | None = None
    client_key: str | None = None
    pid: int | None = None  # the server's process, when its CPU time means something

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server's process so far."""
        if self.pid is None:
            return None
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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

    def value(self, name: str) -> float | None:
        values = [v for v in self.samples.get(name, []) if v is not None]
        return statistics.median(values) if values else None


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


@dataclass
class Rate:
    per_second: float
    cpu_us: float | None  # the server's CPU time per request, when it is known


async def rate(workers: list[Callable[[], Awaitable[object]]], seconds: float, target: Target | None = None) -> Rate:
    """Requests per second: each worker repeats its request until the deadline, with the CPU
    time the server of `target` spent per request when it is known."""
    count = 0
    deadline = time.monotonic() + seconds
    cpu_before = target.cpu_seconds() if target else None

    async def loop(request: Callable[[], Awaitable[object]]) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await request()
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(w) for w in workers))
    elapsed = time.monotonic() - started
    cpu_after = target.cpu_seconds() if target else None
    cpu_us = (cpu_after - cpu_before) / count * 1e6 if cpu_before is not None and cpu_after is not None and count \
        else None
    return Rate(count / elapsed, cpu_us)


async def sequential_get(target: Target, seconds: float) -> Rate:
    client = await target.connect()
    try:
        return await rate([lambda: client.get(GET_FILTER)], seconds, target)
    finally:
        await finish(client)


async def sequential_edit(target: Target, seconds: float) -> Rate:
    values = itertools.cycle(range(1000, 9000))
    client = await target.connect()

    def edit() -> Awaitable[None]:  # a new mtu each time, so that every edit changes running
        return client.edit_config(f'<system xmlns="{conform.NS}"><mtu>{next(values)}</mtu></system>')
    try:
        return await rate([edit], seconds, target)
    finally:
        await finish(client)


async def pipelined_get(target: Target, seconds: float, depth: int) -> Rate:
    client = await target.connect()
    try:
        return await rate([lambda: client.get(GET_FILTER)] * depth, seconds, target)
    finally:
        await finish(client)


async def concurrent_get(target: Target, seconds: float, sessions: int) -> Rate:
    clients = await asyncio.gather(*(target.connect() for _ in range(sessions)))
    try:
        return await rate([lambda c=c: c.get(GET_FILTER) for c in clients], seconds, target)
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
    cpu = {rows[1].title: Row("server CPU per get, sequential", "us", {}),
           rows[2].title: Row("server CPU per edit-config, sequential", "us", {})}
    runs = [lambda t: connect_ms(t, seconds), lambda t: sequential_get(t, seconds),
            lambda t: sequential_edit(t, seconds), lambda t: pipelined_get(t, seconds, depth),
            lambda t: concurrent_get(t, seconds, sessions)]
    for turn in range(rounds):
        for row, measurement in zip(rows, runs):
            for target in targets:
                print(f"round {turn + 1}/{rounds}, {target.name}: {row.title} ...", file=sys.stderr, flush=True)
                result = await measurement(target)
                if isinstance(result, Rate):
                    if row.title in cpu:
                        cpu[row.title].samples.setdefault(target.name, []).append(result.cpu_us)
                    result = result.per_second
                row.samples.setdefault(target.name, []).append(result)
    return rows + list(cpu.values())


# --- servers --------------------------------------------------------------------------------------


@contextmanager
def model_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-") as tmp:
        (Path(tmp) / conform.MODEL_FILE.name).write_text(conform.without_actions(conform.MODEL_FILE.read_text()))
        yield Path(tmp)


@contextmanager
def server_process(name: str, args: list[str], username: str, password: str,
                   env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[Target]:
    """A server in its own process, which prints 'on 127.0.0.1:PORT' once it listens."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd or ROOT)
    try:
        assert process.stdout is not None
        match = re.search(r"on 127\.0\.0\.1:(\d+)", process.stdout.readline())
        if match is None:
            raise RuntimeError(f"{name} did not start")
        yield Target(name, "127.0.0.1", int(match.group(1)), username, password=password, pid=process.pid)
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def our_server(yang_dir: Path, tree: Path | None = None, name: str = "qstrata serve",
               extra_args: tuple[str, ...] = ()) -> Iterator[Target]:
    """`qstrata serve` of this checkout, or of the source tree `tree` (another revision's)."""
    password = secrets.token_urlsafe(12)
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    with server_process(name, [sys.executable, "-m", "tools.cli", "serve", "--yang", str(yang_dir), "--module",
                               conform.MODULE, "--port", "0", "--user", "admin", f"--password={password}",
                               *extra_args], "admin", password, env=env, cwd=tree) as target:
        yield target


@contextmanager
def our_server_via_sshd(yang_dir: Path) -> Iterator[Target]:
    """`qstrata serve` of this checkout behind sshd (its CPU figures leave sshd's out)."""
    with tempfile.TemporaryDirectory(prefix="qstrata-bench-sshd-") as tmp:
        socket_path = Path(tmp) / "netconf.sock"
        with our_server(yang_dir, name=VIA_SSHD, extra_args=("--sshd-socket", str(socket_path))) as served, \
                SshdFront(socket_path, users=[served.username]) as front:
            yield Target(VIA_SSHD, front.host, front.port, front.username,
                         client_key=str(front.client_key(served.username)), pid=served.pid)


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
        yield Target(NETCONFD, server.host, server.port, server.username, client_key=str(server.client_key))


# --- report ---------------------------------------------------------------------------------------


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if unit == "ms" else f"{value:.0f} us" if unit == "us" else f"{value:.0f}"


def table(rows: list[Row], names: list[str]) -> str:
    """One line per row: the median of each server, how many times faster our server is than
    netconfd (< 1: slower; for the CPU rows, than the other revision, when there is one)."""
    ours, *others = names
    width = {n: max(12, len(n) + 2) for n in others}
    against = next((n for n in others if n.startswith(SERVE_AT)), None)
    via_sshd = VIA_SSHD in others
    lines = [f"{'':42}{ours:>15}" + "".join(f"{n:>{width[n]}}" for n in others) + f"{'speed-up':>10}"
             + (f"{'via sshd':>10}" if via_sshd else "")]

    def speedup(a: float | None, b: float | None, unit: str) -> float | None:
        return (b / a if unit in ("ms", "us") else a / b) if a and b else None

    for row in rows:
        # CPU per request: against the other revision, when there is one
        b = (row.value(against) if against else None) if row.unit == "us" else row.value(NETCONFD)
        main = speedup(row.value(ours), b, row.unit)
        sshd = speedup(row.value(VIA_SSHD), row.value(NETCONFD), row.unit) if via_sshd and row.unit != "us" else None
        figures = [x for x in (main, sshd) if x]
        lines.append(f"{row.title:42}{cell(row.value(ours), row.unit):>15}"
                     + "".join(f"{cell(row.value(n), row.unit):>{width[n]}}" for n in others)
                     + (f"{main:>9.2f}x" if main else f"{'':>10}")
                     + ((f"{sshd:>9.2f}x" if sshd else f"{'':>10}") if via_sshd else "")
                     + ("  <- ours slower" if any(x < 1 for x in figures) else ""))
    return "\n".join(lines)


def main(seconds: float = 2.0, sessions: int = 50, depth: int = 16, rounds: int = 3, against: str | None = None,
         via_sshd: bool = True) -> int:
    if seconds <= 0 or sessions < 1 or depth < 1 or rounds < 1:
        raise SystemExit("--seconds, --sessions, --depth and --rounds must be positive")
    from tools.bench_compare import revision_label, revision_tree

    with contextlib.ExitStack() as stack:
        yang_dir = stack.enter_context(model_dir())
        ours = stack.enter_context(our_server(yang_dir))
        targets = [ours]
        if against:
            tree = stack.enter_context(revision_tree(against))
            targets.append(stack.enter_context(our_server(yang_dir, tree, f"{SERVE_AT}{against}")))
        if via_sshd:
            targets.append(stack.enter_context(our_server_via_sshd(yang_dir)))
        theirs = stack.enter_context(netconfd_server(yang_dir))
        get_reply = b""
        for target in (*targets, theirs):
            reply = asyncio.run(load_payload(target))
            get_reply = get_reply or reply
        floor = stack.enter_context(floor_server(get_reply))
        targets += [theirs, floor]
        rows = asyncio.run(measure(targets, seconds, sessions, depth, rounds))
    print(f"NETCONF benchmark: {conform.MODULE} model, {INTERFACES} interfaces per get, {seconds:g} s per row "
          f"and server, median of {rounds} rounds, same client (netconf_core.client)"
          + (f"; {SERVE_AT}{against}: {revision_label(against)}" if against else ""))
    print(table(rows, [t.name for t in targets]))
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
