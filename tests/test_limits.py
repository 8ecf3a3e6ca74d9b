"""Transport limits (issue 13): nothing a client sends can stall other clients or exhaust the
process. Real SSH sessions (asyncssh, ncclient, our NetconfClient) against real NetconfServers
on 127.0.0.1: idle connection floods, descriptor exhaustion, over-size and many-chunk
messages, 1.0 framing without its marker, clients that do not read, too many sessions."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import pathlib
import resource
import selectors
import socket
import subprocess
import sys
import time
import weakref

import asyncssh
import pytest
from lxml import etree

from conftest import ENGINE_NS, TEST_YANG, start_server
from netconf_core.client import NetconfClient
from netconf_core.errors import BASE_NS
from netconf_core.framing import FrameReader, encode
from netconf_core.ssh import TransportLimits

BOUND = 10.0  # generous: "answered while the other client misbehaves", not a speed target
HELLO_10 = (f'<hello xmlns="{BASE_NS}"><capabilities><capability>urn:ietf:params:netconf:base:1.0'
            "</capability></capabilities></hello>").encode()
HELLO_11 = HELLO_10.replace(b"</capabilities>", b"<capability>urn:ietf:params:netconf:base:1.1</capability>"
                            b"</capabilities>")
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
STATISTICS = ("subtree", f'<netconf-state xmlns="{MONITORING_NS}"><statistics/></netconf-state>')


class Raw:
    """A NETCONF session with the framing done by the test, so that anything can be sent."""

    def __init__(self, conn, writer, reader, base11: bool):
        self.conn, self.writer, self.reader = conn, writer, reader
        self.frames = FrameReader()
        self.base11 = base11

    @classmethod
    async def open(cls, port: int, base11: bool = True, user: str = "admin", password: str = "admin-pw") -> "Raw":
        conn = await asyncssh.connect("127.0.0.1", port, username=user, password=password, known_hosts=None,
                                      client_keys=None, agent_path=None, config=None)
        writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
        raw = cls(conn, writer, reader, base11)
        hello = await raw.read()
        assert hello is not None and etree.QName(hello).localname == "hello"
        writer.write(encode(HELLO_11 if base11 else HELLO_10, chunked=False))
        if base11:
            raw.frames.switch_to_chunked()
        return raw

    def send(self, message: bytes) -> None:
        self.writer.write(encode(message, self.base11))

    async def read(self) -> etree._Element | None:
        """The next message, or None once the server closed the session."""
        async with asyncio.timeout(BOUND):
            while (message := self.frames.next_message()) is None:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.frames.feed(data)
        return etree.fromstring(message)

    async def closed_by_server(self, timeout: float = BOUND) -> bool:
        """Wait for the server to end the session, discarding what it sends until then."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except (asyncssh.Error, ConnectionError):
            pass
        return True

    def close(self) -> None:
        self.conn.close()


def rpc(body: str, message_id: int = 1) -> bytes:
    return f'<rpc message-id="{message_id}" xmlns="{BASE_NS}">{body}</rpc>'.encode()


async def watcher(port: int) -> NetconfClient:
    return await NetconfClient.connect("127.0.0.1", port, "admin", "admin-pw", timeout=BOUND)


async def statistics(client: NetconfClient) -> dict[str, int]:
    data = await client.get(filter=STATISTICS)
    stats = data.find(f"{{{MONITORING_NS}}}netconf-state/{{{MONITORING_NS}}}statistics")
    return {etree.QName(c).localname: int(c.text) for c in stats if c.text and c.text.isdigit()}


async def timed_get(client: NetconfClient) -> float:
    start = time.monotonic()
    await client.get_config()
    return time.monotonic() - start


def until(condition, timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def raise_descriptor_limit(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} descriptors, the hard limit is {hard}")
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, hard


def open_idle(port: int, count: int) -> list[socket.socket]:
    """TCP connections that never start SSH, opened at a pace the listen backlog absorbs."""
    socks = []
    for i in range(count):
        if i % 50 == 0:
            time.sleep(0.02)
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
    return socks


def wait_all_closed(socks: list[socket.socket], timeout: float) -> int:
    """Wait until the server closed every connection; how many it had not closed in time."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    open_count, deadline = len(socks), time.monotonic() + timeout
    while open_count and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # an SSH version line is no reason to stop waiting
                selector.unregister(key.fileobj)
                open_count -= 1
    selector.close()
    return open_count


# --- connections: floods of idle connections, descriptor exhaustion ------------------------------

def test_idle_connection_flood_is_refused_then_dropped_and_other_servers_answer(loop_thread, engine_schema,
                                                                                 caplog) -> None:
    caplog.set_level(logging.INFO)
    saved = raise_descriptor_limit(2000 + 1000)
    limits = TransportLimits(max_connections=200, max_unauthenticated=100, login_timeout=3.0)
    flooded = start_server(loop_thread, engine_schema, limits=limits, name="flooded")
    other = start_server(loop_thread, engine_schema, name="other")
    socks: list[socket.socket] = []
    try:
        socks = open_idle(flooded.port, 2000)
        start = time.monotonic()
        with other.connect() as m:
            m.get_config("running")
        assert time.monotonic() - start < BOUND
        listener = flooded.server._listener
        assert listener.connections <= limits.max_unauthenticated
        # Refused ones are closed at accept, admitted ones when the login timeout expires.
        assert wait_all_closed(socks, limits.login_timeout + 20) == 0
        assert listener.refused >= 2000 - limits.max_unauthenticated
        assert until(lambda: listener.connections == 0)  # the server's side of the close may lag
        with flooded.connect() as m:  # under the limit again: an authenticated client is served
            m.get_config("running")
        refusal_lines = [r for r in caplog.records if r.name == "netconf_core.ssh" and "refusing" in r.message]
        assert 1 <= len(refusal_lines) <= 3, [r.message for r in refusal_lines]  # rate-limited, no traceback
    finally:
        for sock in socks:
            sock.close()
        loop_thread.run(flooded.server.stop())
        loop_thread.run(other.server.stop())
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


TWO_SERVERS = """
import asyncio, os, pathlib, sys
from netconf_core.schema import Schema
from netconf_core.server import NetconfServer, User
from netconf_core.ssh import TransportLimits

async def main():
    schema = Schema(["qs-engine-test"], [pathlib.Path(sys.argv[1])])
    users = {"admin": User(password="admin-pw")}
    flooded = NetconfServer(schema, users, name="flooded",
                            limits=TransportLimits(max_connections=10000, max_unauthenticated=10000))
    other = NetconfServer(schema, users, name="other")
    await flooded.start()
    await other.start()
    print(flooded.port, other.port, flush=True)
    hog = []
    while (line := await asyncio.to_thread(sys.stdin.readline)).strip() != "quit":
        if line.strip() == "hog":  # take every descriptor left
            try:
                while True:
                    hog.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            print("hogged", len(hog), flush=True)
        elif line.strip() == "free":
            for fd in hog:
                os.close(fd)
            hog.clear()
            print("freed", flush=True)
    await flooded.stop()
    await other.stop()

asyncio.run(main())
"""


def test_out_of_descriptors_pauses_accepting_without_a_log_flood(tmp_path: pathlib.Path) -> None:
    """A process with no descriptor left: accept fails on every server; one log line (asyncio's
    own loop logged a traceback per attempt, megabytes a minute), sessions already open are
    served, and accepting resumes once descriptors are free."""
    script = tmp_path / "two_servers.py"
    script.write_text(TWO_SERVERS)
    stderr = tmp_path / "stderr.txt"
    repo = pathlib.Path(__file__).resolve().parent.parent

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    with open(stderr, "wb") as err:
        server = subprocess.Popen([sys.executable, str(script), str(TEST_YANG)], cwd=repo, preexec_fn=low_limit,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                  env={**os.environ, "PYTHONPATH": str(repo)})
    socks: list[socket.socket] = []
    try:
        flooded_port, other_port = map(int, server.stdout.readline().split())

        async def scenario() -> None:
            nonlocal socks
            open_session = await watcher(other_port)
            server.stdin.write("hog\n")
            server.stdin.flush()
            assert (await asyncio.to_thread(server.stdout.readline)).startswith("hogged")
            socks = await asyncio.to_thread(open_idle, flooded_port, 300)
            await asyncio.sleep(3 * 1.0)  # three accept pauses
            assert await timed_get(open_session) < BOUND  # a session already open is served
            log = stderr.read_text()
            assert "Traceback" not in log, log[:2000]
            assert 1 <= log.count("out of descriptors") <= 2, log[:2000]
            for sock in socks:
                sock.close()
            server.stdin.write("free\n")
            server.stdin.flush()
            assert (await asyncio.to_thread(server.stdout.readline)).strip() == "freed"
            for port in (other_port, flooded_port):  # both accept again
                client = await watcher(port)
                assert await timed_get(client) < BOUND
                client.close()
            open_session.close()
        asyncio.run(scenario())
        assert server.poll() is None
    finally:
        for sock in socks:
            sock.close()
        if server.poll() is None:
            server.stdin.write("quit\n")
            server.stdin.flush()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_per_user_session_limit_refuses_the_next_session_with_its_reason(loop_thread, engine_schema) -> None:
    served = start_server(loop_thread, engine_schema, limits=TransportLimits(max_sessions_per_user=2))

    async def scenario() -> None:
        first, second = await watcher(served.port), await watcher(served.port)
        conn = await asyncssh.connect("127.0.0.1", served.port, username="admin", password="admin-pw",
                                      known_hosts=None, client_keys=None, agent_path=None, config=None)
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.open_session(subsystem="netconf", encoding=None)
        assert refused.value.reason == "user 'admin' already has 2 NETCONF sessions on this server, its limit"
        reader = await Raw.open(served.port, user="reader", password="reader-pw")  # another user's quota
        reader.close()
        first.close()
        async with asyncio.timeout(BOUND):  # the closed session's place is free again
            while served.server._user_channels["admin"] >= 2:
                await asyncio.sleep(0.05)
        writer, _, _ = await conn.open_session(subsystem="netconf", encoding=None)
        writer.close()
        conn.close()
        second.close()
    try:
        asyncio.run(scenario())
    finally:
        loop_thread.run(served.server.stop())


# --- incoming: over-size messages, chunk floods, 1.0 framing without its marker ------------------

def test_over_cap_message_and_one_byte_chunk_flood_close_the_session_others_are_served(loop_thread,
                                                                                      engine_schema) -> None:
    limits = TransportLimits(max_message=1024 * 1024, max_chunks=10_000)
    served = start_server(loop_thread, engine_schema, limits=limits)

    async def scenario() -> None:
        other = await watcher(served.port)
        before = await statistics(other)
        big = await Raw.open(served.port)
        for _ in range(17):  # 17 chunks of 64 KiB: one more than a 1 MiB message holds
            big.writer.write(b"\n#65536\n" + b"x" * 65536)
        assert await big.closed_by_server()
        assert await timed_get(other) < BOUND

        flood = await Raw.open(served.port)
        flood.writer.write(b"\n#1\na" * 3_000_000)  # 15 MB of one-byte chunks
        latency = await timed_get(other)
        assert await flood.closed_by_server()
        assert latency < BOUND
        after = await statistics(other)
        assert after["dropped-sessions"] - before["dropped-sessions"] == 2
        assert after["in-bad-rpcs"] - before["in-bad-rpcs"] == 2  # kept after the sessions ended
        assert len(served.server.sessions) == 1
        big.close()
        flood.close()
        other.close()
    try:
        asyncio.run(scenario())
    finally:
        loop_thread.run(served.server.stop())


def test_base10_session_without_its_marker_does_not_delay_others(loop_thread, engine_schema) -> None:
    """32 MB without ]]>]]> is searched once, not once per packet: another client's gets are
    answered meanwhile, and the marker, when it comes, ends one 32 MB message."""
    served = start_server(loop_thread, engine_schema, limits=TransportLimits(max_message=64 * 1024 * 1024))

    async def scenario() -> None:
        other = await watcher(served.port)
        slow = await Raw.open(served.port, base11=False)
        piece = b"a" * 65536
        latencies = []

        async def send() -> None:
            for _ in range(512):  # 32 MiB
                slow.writer.write(piece)
                await slow.writer.drain()
        sending = asyncio.ensure_future(send())
        while not sending.done():
            latencies.append(await timed_get(other))
        await sending
        assert max(latencies) < BOUND, latencies
        slow.writer.write(b"]]>]]>")
        reply = await slow.read()
        assert reply is not None and reply.findtext(f"{{{BASE_NS}}}rpc-error/{{{BASE_NS}}}error-tag") == \
            "malformed-message"
        slow.close()
        other.close()
    try:
        asyncio.run(scenario())
    finally:
        loop_thread.run(served.server.stop())


# --- outgoing: clients that do not read ----------------------------------------------------------

def seed_interfaces(client_port: int, count: int) -> None:
    async def seed() -> None:
        client = await watcher(client_port)
        body = "".join(f"<interface><name>eth{i}</name><vlan>{i % 4000 + 1}</vlan></interface>" for i in range(count))
        await client.edit_config(f'<config xmlns="{BASE_NS}"><interfaces xmlns="{ENGINE_NS}">{body}</interfaces>'
                                 "</config>")
        client.close()
    asyncio.run(seed())


def test_client_that_never_reads_is_held_back_then_dropped(loop_thread, engine_schema) -> None:
    limits = TransportLimits(output_high_water=64 * 1024, output_stall_timeout=2.0, max_queued_requests=8)
    served = start_server(loop_thread, engine_schema, limits=limits)
    seed_interfaces(served.port, 300)

    async def scenario() -> None:
        other = await watcher(served.port)
        sender = await Raw.open(served.port)
        session = served.server.sessions[max(served.server.sessions)]
        reply_size = len(etree.tostring(await other.get_config()))
        dropped_before = (await statistics(other))["dropped-sessions"]
        async def send_gets() -> None:
            try:
                for i in range(3000):  # ~19 kB replies: 57 MB if they were all written
                    sender.send(rpc("<get-config><source><running/></source></get-config>", i))
                    if i % 20 == 0:
                        await asyncio.sleep(0)
            except (asyncssh.Error, OSError):  # the server dropped the session
                pass
        sending = asyncio.ensure_future(send_gets())
        unsent, queued = [], []
        async with asyncio.timeout(60):  # dropped once its output made no progress for 2 s
            while session.id in served.server.sessions:
                unsent.append(session._transport.get_write_buffer_size())
                queued.append(session._queue.qsize())
                await asyncio.sleep(0.05)
        sending.cancel()
        assert len(unsent) > 2 / 0.05 / 2, "dropped before it stalled"
        assert max(unsent) <= 2 * limits.output_high_water + 2 * reply_size, (max(unsent), reply_size)
        assert max(queued) <= limits.max_queued_requests + 400  # one SSH packet of gets past the pause
        assert (await statistics(other))["dropped-sessions"] == dropped_before + 1
        assert await timed_get(other) < BOUND
        ref = weakref.ref(session)
        del session
        sender.close()
        async with asyncio.timeout(BOUND):  # nothing keeps the dead session (and its buffers)
            while ref() is not None:
                gc.collect()
                await asyncio.sleep(0.1)
        other.close()
    try:
        asyncio.run(scenario())
    finally:
        loop_thread.run(served.server.stop())


def test_stalled_subscriber_is_closed_at_the_hard_limit(loop_thread, engine_schema) -> None:
    limits = TransportLimits(output_high_water=64 * 1024, output_hard_limit=512 * 1024)
    served = start_server(loop_thread, engine_schema, limits=limits)
    event = etree.fromstring(f'<link-event xmlns="{ENGINE_NS}"><name>{"e" * 200}</name><status>down</status>'
                             "</link-event>")

    async def scenario() -> None:
        subscriber = await Raw.open(served.port)
        subscriber.send(rpc(f'<create-subscription xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"/>'))
        assert (await subscriber.read()).find(f"{{{BASE_NS}}}ok") is not None
        session = served.server.sessions[max(served.server.sessions)]

        async def publish() -> int:
            """Notify until the subscriber is dropped (it never reads); the most bytes unsent."""
            most = 0
            for _ in range(40_000):  # ~12 MB: beyond the SSH window and the hard limit
                if session.closed:
                    break
                await served.server.notify(event)
                most = max(most, session._transport.get_write_buffer_size())
            return most
        most = served.loop.run(publish(), timeout=60)
        assert session.closed and session.id not in served.server.sessions
        assert most <= limits.output_hard_limit + 2048
        assert await subscriber.closed_by_server()
        other = await watcher(served.port)
        assert await timed_get(other) < BOUND
        other.close()
    try:
        asyncio.run(scenario())
    finally:
        loop_thread.run(served.server.stop())


def test_a_host_of_many_devices_raises_its_descriptor_limit_up_to_what_it_needs():
    """raise_descriptor_limit lifts a low soft limit to the wanted count (not past the hard
    limit for an unprivileged process, and never lowers it); in a child, so this process's
    limits stay as they are."""
    script = ("import resource\n"
              "from netconf_core.ssh import raise_descriptor_limit\n"
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
              "print(raise_descriptor_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
              "print(raise_descriptor_limit(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=pathlib.Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "1000", "1000", "1000"]
