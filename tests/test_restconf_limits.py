"""The HTTP side's limits of the RESTCONF server (netconf_core.restconf.HttpLimits), each driven
by real HTTP clients (curl, http.client, aiohttp) against a RestconfServer on 127.0.0.1: the
client over a limit gets the status and ietf-restconf:errors the limit names, and the server
goes on serving the others."""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator

import aiohttp
from lxml import etree

from conftest import ENGINE_NS, LoopThread, start_server
from netconf_core.restconf import HttpLimits, RestconfServer

AUTH = {"Authorization": "Basic YWRtaW46YWRtaW4tcHc="}  # admin:admin-pw
READER_AUTH = {"Authorization": "Basic cmVhZGVyOnJlYWRlci1wdw=="}  # reader:reader-pw
JSON = "application/yang-data+json"
VERSION = "/restconf/yang-library-version"


class Served:
    def __init__(self, loop: LoopThread, restconf: RestconfServer):
        self.loop = loop
        self.restconf = restconf
        self.port = restconf.port

    def curl(self, *args: str, path: str = VERSION) -> tuple[int, dict, bytes]:
        """curl's status, headers and body."""
        raw = subprocess.run(["curl", "-s", "-S", "-i", "--max-time", "20", "-u", "admin:admin-pw", *args,
                              f"http://127.0.0.1:{self.port}{path}"], capture_output=True, check=True).stdout
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def get(conn: http.client.HTTPConnection, path: str = VERSION) -> int:
    conn.request("GET", path, headers=AUTH)
    response = conn.getresponse()
    response.read()
    return response.status


def error_tag(body: bytes) -> str:
    return json.loads(body)["ietf-restconf:errors"]["error"][0]["error-tag"]


@contextlib.contextmanager
def serving(engine_schema, limits: HttpLimits) -> Iterator[tuple[Served, object]]:
    loop = LoopThread()
    running = start_server(loop, engine_schema)
    restconf = RestconfServer(running.server, "127.0.0.1", 0, limits=limits)
    loop.run(restconf.start())
    try:
        yield Served(loop, restconf), running.server
    finally:
        loop.run(restconf.stop())
        loop.run(running.server.stop())
        loop.close()


def until(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not so after {seconds} s"
        time.sleep(0.05)


def test_connections_over_the_limit_get_503_and_the_open_ones_are_served(engine_schema):
    with serving(engine_schema, HttpLimits(max_connections=3)) as (served, _):
        held = [served.connection() for _ in range(3)]
        assert [get(c) for c in held] == [200, 200, 200]  # three keep-alive connections, open
        status, headers, body = served.curl()
        assert status == 503 and headers["retry-after"] == "1", body
        assert headers["content-type"] == JSON and error_tag(body) == "resource-denied"
        assert b"3 connections are open" in body
        assert [get(c) for c in held] == [200, 200, 200]  # the open ones are still served
        held.pop().close()
        until(lambda: served.curl()[0] == 200, "a new connection served once one closed")
        for c in held:
            c.close()


def test_requests_in_progress_over_the_limit_get_503_until_one_ends(engine_schema):
    with serving(engine_schema, HttpLimits(max_requests=2)) as (served, server):
        release = asyncio.Event()
        started: list[int] = []

        async def slow_ping(session, operation, context):
            started.append(1)
            await release.wait()
            received = etree.Element(f"{{{ENGINE_NS}}}received")
            received.text = "1"
            return [received]

        async def register():
            server.add_rpc("/qs-engine-test:ping", slow_ping)
        served.loop.run(register())
        body = json.dumps({"qs-engine-test:input": {"host": "h"}}).encode()
        slow = []
        for _ in range(2):
            conn = served.connection()
            conn.request("POST", "/restconf/operations/qs-engine-test:ping", body=body,
                         headers={**AUTH, "Content-Type": JSON, "Accept": JSON})
            slow.append(conn)
        until(lambda: len(started) == 2, "both pings in progress")
        status, headers, reply = served.curl()
        assert status == 503 and headers["retry-after"] == "1" and error_tag(reply) == "resource-denied"
        assert b"2 requests are in progress" in reply
        served.loop.loop.call_soon_threadsafe(release.set)
        for conn in slow:
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read()) == {"qs-engine-test:output": {"received": 1}}
            conn.close()
        assert served.curl()[0] == 200


def test_a_body_over_the_limit_gets_413_and_the_server_goes_on(engine_schema):
    with serving(engine_schema, HttpLimits(max_body=2048)) as (served, server):
        big = json.dumps({"qs-engine-test:interfaces": {"interface": [{"name": f"eth{i}"} for i in range(300)]}})
        status, _, body = served.curl("-X", "PUT", "-H", f"Content-Type: {JSON}", "--data-binary", big,
                                      path="/restconf/data/qs-engine-test:interfaces")
        assert status == 413 and error_tag(body) == "too-big", body
        assert server.running().find(f"{{{ENGINE_NS}}}interfaces") is None  # nothing written
        assert served.curl()[0] == 200


def test_headers_over_the_limits_get_431(engine_schema):
    with serving(engine_schema, HttpLimits(max_header_line=1024, max_headers=20)) as (served, _):
        status, headers, body = served.curl("-H", "X-Long: " + "a" * 2000)
        assert status == 431 and headers["content-type"] == JSON and error_tag(body) == "too-big", body
        assert b"1024 bytes a line" in body
        many = [arg for i in range(40) for arg in ("-H", f"X-Field-{i}: {i}")]
        status, _, body = served.curl(*many)
        assert status == 431 and error_tag(body) == "too-big", body
        status, _, body = served.curl("-H", "X-Long: " + "a" * 900)  # within the limits
        assert status == 200, body


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(engine_schema):
    with serving(engine_schema, HttpLimits(keepalive_timeout=0.5)) as (served, _):
        idle, busy = served.connection(), served.connection()
        assert get(idle) == 200 and get(busy) == 200
        deadline = time.monotonic() + 10
        idle.sock.settimeout(0.2)
        closed = False
        while not closed and time.monotonic() < deadline:
            assert get(busy) == 200  # a connection in use stays open
            with contextlib.suppress(socket.timeout):
                closed = idle.sock.recv(1) == b""
        assert closed, "the idle connection is still open after 10 s"
        busy.close()
        idle.close()


def test_event_streams_per_user_are_capped_and_others_still_subscribe(engine_schema):
    with serving(engine_schema, HttpLimits(max_streams_per_user=2, stream_heartbeat=0.2)) as (served, _):
        url = f"http://127.0.0.1:{served.port}/restconf/streams/NETCONF/json"

        async def scenario():
            async with aiohttp.ClientSession() as client:
                streams = [await client.get(url, headers=AUTH) for _ in range(2)]
                assert [s.status for s in streams] == [200, 200]
                for stream in streams:
                    assert (await stream.content.readline()).startswith(b":")
                over = await client.get(url, headers={**AUTH, "Accept": JSON})
                assert over.status == 409 and error_tag(await over.read()) == "resource-denied"
                other_user = await client.get(url, headers=READER_AUTH)
                assert other_user.status == 200
                other_user.close()
                streams.pop().close()
                async with asyncio.timeout(10):
                    while True:
                        again = await client.get(url, headers=AUTH)
                        if again.status == 200:
                            break
                        again.close()
                        await asyncio.sleep(0.05)
                again.close()
                for stream in streams:
                    stream.close()
        asyncio.run(scenario())


def test_the_defaults_follow_the_ssh_side():
    """A device serves both transports: the same number of connections and message size."""
    from netconf_core.ssh import TransportLimits
    assert HttpLimits().max_connections == TransportLimits().max_connections
    assert HttpLimits().max_body == TransportLimits().max_message
