"""The console's server over a real Madrid stack, through its HTTP API (aiohttp's client, and
curl where a third-party client matters): login, the picture of every level, the live stream,
and precise refusals of bad input that leave the network as it was."""
from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import pytest

from conftest import LoopThread
from console.levels import READ_ONLY, READ_WRITE, ConsoleUser, LevelAccess, authenticate
from devices.base import DEMO_PASSWORDS
from devices.topology import default_topology
from tools.console_stack import console_levels, console_users
from tools.stack import Stack

ADMIN = {"Authorization": aiohttp.encode_basic_auth("admin", DEMO_PASSWORDS["admin"])}
MONITOR = {"Authorization": aiohttp.encode_basic_auth("monitor", DEMO_PASSWORDS["monitor"])}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def running():
    from console.server import ConsoleServer

    loop = LoopThread()
    stack = Stack(default_topology(), passwords=dict(DEMO_PASSWORDS))
    loop.run(stack.start(), timeout=120)
    rows = stack.table()
    console = ConsoleServer(console_levels(rows), console_users(rows), title="madrid")
    loop.run(console.start())
    loop.run(console.synced(60), timeout=90)
    yield loop, console
    loop.run(console.stop())
    loop.run(stack.stop(), timeout=120)
    loop.close()


async def call(console, method: str, path: str, auth=ADMIN, body=None, headers=JSON, session=None):
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.request(method, console.url + path.lstrip("/"), headers={**(auth or {}), **headers},
                                   data=json.dumps(body) if body is not None else None) as response:
            return response.status, await response.json(content_type=None)
    finally:
        if own:
            await session.close()


def spans(console) -> dict[str, dict]:
    return {s["id"]: s for s in console.hub.views["connectivity"]["spans"]}


def test_the_state_holds_every_level_of_the_madrid_network(running):
    loop, console = running
    status, state = loop.run(call(console, "GET", "/api/state", auth=MONITOR, headers={}))
    assert status == 200
    topology = default_topology()
    views = state["views"]
    assert {n["id"] for n in views["connectivity"]["nodes"]} == {s.id for s in topology.sites} | {
        s.id for s in topology.switches}
    assert set(spans(console)) == {s.id for s in topology.spans}
    assert {n["id"] for n in views["forwarding"]["nodes"]} == {n.id for n in topology.qkd_nodes}
    assert {k for k in views if k.startswith("km:")} == {f"km:{km.id}" for km in topology.key_managers}
    assert all(s["reachable"] for s in state["status"].values()), state["status"]
    assert "intents" in views["orchestrator"] and "sessions" in views["service"]


def test_login_cookie_and_logout(running):
    loop, console = running

    async def flow():
        # the console is reached by address (127.0.0.1), whose cookies aiohttp keeps only when unsafe=True
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            status, _ = await call(console, "GET", "/api/me", auth=None, headers={}, session=session)
            assert status == 401
            status, reply = await call(console, "POST", "/api/login", auth=None, session=session,
                                       body={"user": "monitor", "password": "wrong"})
            assert (status, reply["tag"]) == (401, "access-denied")
            async with session.post(console.url + "api/login", headers=JSON, data=json.dumps(
                    {"user": "monitor", "password": DEMO_PASSWORDS["monitor"]})) as response:
                assert (response.status, (await response.json())["role"]) == (200, READ_ONLY)
                set_cookie = response.headers["Set-Cookie"]
            assert "qstrata-console=" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
            status, reply = await call(console, "GET", "/api/me", auth=None, headers={}, session=session)
            assert (status, reply["user"], reply["emulated"]) == (200, "monitor", True)
            await call(console, "POST", "/api/logout", auth=None, session=session, body={})
            status, _ = await call(console, "GET", "/api/me", auth=None, headers={}, session=session)
            assert status == 401

    loop.run(flow())


def test_bad_requests_get_precise_refusals_and_change_nothing(running):
    loop, console = running
    before = spans(console)
    span = default_topology().spans[0].id
    cases = [
        ({"action": "cut-span", "span": span}, {}, 415, "application/json"),
        ({"action": "cut-span", "span": span}, {**JSON, "Origin": "http://evil.example"}, 403, "not this console"),
        ({"action": "explode"}, JSON, 400, "unknown fault 'explode'"),
        ({"action": "eavesdrop", "span": span, "fraction": 1.5}, JSON, 400, "within (0, 1]"),
        ({"action": "cut-span"}, JSON, 400, "give span"),
        ({"action": "cut-span", "span": "no-such-span"}, JSON, 400, "no span 'no-such-span'"),
        ({"action": "crash", "device": "no-such-node"}, JSON, 404, "no QKD node or key manager"),
        ({"action": "crash", "device": "qkd-quintin", "outage": -3}, JSON, 400, "outage"),
    ]
    for body, headers, want, message in cases:
        status, reply = loop.run(call(console, "POST", "/api/faults", body=body, headers=headers))
        assert status == want and message in reply["error"], (body, status, reply)
    for text, message in [("name: [x", "not valid YAML"),
                          ("name: x\nmin-rate: 5\n", "missing field 'endpoints'"),
                          ("name: x\nendpoints: {source-sae: a, destination-sae: b}\nmin-rate: fast\n",
                           "min-rate must be an integer")]:
        status, reply = loop.run(call(console, "POST", "/api/intents/apply", body={"text": text}))
        assert status == 400 and message in reply["error"], reply
    status, reply = loop.run(call(console, "POST", "/api/faults", auth=None, body={"action": "cut-span", "span": span}))
    assert status == 401
    loop.run(asyncio.sleep(0.5))
    assert spans(console) == before
    assert console.hub.views["orchestrator"]["intents"] == [] or all(
        i["name"] != "x" for i in console.hub.views["orchestrator"]["intents"])


def test_the_stream_follows_a_cut_and_a_repair(running):
    loop, console = running
    span = "quintin-almagro"

    async def follow():
        async with aiohttp.ClientSession(headers=MONITOR) as session:
            async with session.get(console.url + "api/stream") as stream:
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                first = await _sse(stream)
                assert first[0] == "snapshot" and "connectivity" in first[1]["views"]
                status, reply = await call(console, "POST", "/api/faults", body={"action": "cut-span", "span": span})
                assert status == 200, reply
                seen_level = seen_event = False
                async with asyncio.timeout(15):
                    while not (seen_level and seen_event):
                        kind, body = await _sse(stream)
                        if kind == "level" and body["key"] == "connectivity":
                            seen_level |= {s["id"]: s for s in body["view"]["spans"]}[span]["up"] is False
                        if kind == "event" and body["event"]["event"] == "span-down":
                            seen_event |= body["event"]["resource"] == span
        status, _ = await call(console, "POST", "/api/faults", body={"action": "repair-span", "span": span})
        assert status == 200
        async with asyncio.timeout(15):
            while not spans(console)[span]["up"]:
                await asyncio.sleep(0.1)

    loop.run(follow(), timeout=60)


def test_read_only_actions_are_refused_by_the_level_over_curl(running):
    loop, console = running
    span = "almagro-norte"
    result = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-u", f"monitor:{DEMO_PASSWORDS['monitor']}",
                             "-H", "Content-Type: application/json", "-d", json.dumps({"action": "cut-span", "span": span}),
                             console.url + "api/faults"], capture_output=True, text=True, timeout=60, check=True)
    text, _, code = result.stdout.rpartition("\n")
    assert code == "403" and json.loads(text)["tag"] == "access-denied"
    assert "user 'monitor' may not run qi-fibre-plant:cut-span" in json.loads(text)["error"]
    loop.run(asyncio.sleep(0.5))
    assert spans(console)[span]["up"]


async def _sse(response) -> tuple[str, dict]:
    """The next event of a Server-Sent Events stream (heartbeat comments skipped)."""
    kind, data = "message", []
    while True:
        line = (await response.content.readline()).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            return kind, json.loads("\n".join(data))


def test_levels_must_pin_a_host_key_and_users_have_a_role():
    with pytest.raises(ValueError, match="pins no host key"):
        LevelAccess("orchestrator", "orchestrator", "127.0.0.1", 830, {READ_ONLY: ("monitor", "pw")})
    with pytest.raises(ValueError, match="role must be one of"):
        ConsoleUser("eve", "pw", "superuser")
    users = {"admin": ConsoleUser("admin", "secret", READ_WRITE)}
    assert authenticate(users, "admin", "secret") is users["admin"]
    assert authenticate(users, "admin", "secreT") is None and authenticate(users, "nobody", "secret") is None


def test_the_console_serves_loopback_only():
    from console.server import ConsoleServer

    with pytest.raises(ValueError, match="loopback only"):
        ConsoleServer([], {}, host="0.0.0.0")
