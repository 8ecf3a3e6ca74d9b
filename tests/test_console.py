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
from devices.topology import default_topology, embedded_topology
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
        await settled(console, "connectivity")

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


async def settled(console, key: str, timeout: float = 20.0) -> None:
    """Wait until the level behind `key` has stopped changing and the console's view of it is
    what a read gives (a test that cut a span leaves the network as it found it)."""
    watch = next(w for w in console._watches if w.key == key)
    nc = await watch.link.session()
    async with asyncio.timeout(timeout):
        last = None
        while True:
            read = await watch.reader.read(nc)
            if read == last and read == console.hub.views[key]:
                return
            last = read
            await asyncio.sleep(0.3)


def test_views_follow_yang_push_without_reads_and_match_what_a_read_gives(running):
    """The levels with YANG-Push are followed by their updates: a cut and a repair reach the
    views with no <get> of the connectivity controller, and each pushed view is the one a read
    of the level gives."""
    loop, console = running
    watches = {w.key: w for w in console._watches}
    assert {key for key, w in watches.items() if w.pushed} == {"connectivity", "forwarding", "orchestrator"}
    assert not watches["service"].pushed and not watches["km:km-quintin"].pushed   # read: see console.views
    reads = watches["connectivity"].reads
    span = "almagro-concepcion"

    async def flow():
        for action, up in (("cut-span", False), ("repair-span", True)):
            await console.actions.fault(READ_WRITE, {"action": action, "span": span})
            async with asyncio.timeout(15):
                while spans(console)[span]["up"] is not up:
                    await asyncio.sleep(0.05)
        for key in ("connectivity", "orchestrator"):   # once the repair's last updates are in
            await settled(console, key)

    loop.run(flow(), timeout=60)
    assert watches["connectivity"].reads == reads == 0


def test_a_rereading_console_follows_a_cut_by_reading_the_level(running):
    from console.server import ConsoleServer

    loop, console = running
    span = "norte-distrito"
    rereading = ConsoleServer(console.levels, console.users, title="madrid", follow="reread")

    async def flow():
        await rereading.start()
        try:
            await rereading.synced(30)
            watch = next(w for w in rereading._watches if w.key == "connectivity")
            assert not watch.pushed
            reads = watch.reads
            for action, up in (("cut-span", False), ("repair-span", True)):
                await rereading.actions.fault(READ_WRITE, {"action": action, "span": span})
                async with asyncio.timeout(15):
                    while {s["id"]: s for s in rereading.hub.views["connectivity"]["spans"]}[span]["up"] is not up:
                        await asyncio.sleep(0.05)
            assert watch.reads >= reads + 2
            await settled(rereading, "connectivity")
            await settled(console, "connectivity")
        finally:
            await rereading.stop()

    loop.run(flow(), timeout=60)
    with pytest.raises(ValueError, match="follow must be one of push, reread"):
        ConsoleServer(console.levels, console.users, follow="sometimes")


def test_the_layout_is_kept_on_the_server_per_network_for_every_browser(tmp_path):
    from console.server import ConsoleServer

    users = {"admin": ConsoleUser("admin", "pw", READ_WRITE), "monitor": ConsoleUser("monitor", "pw2", READ_ONLY)}
    admin = {"Authorization": aiohttp.encode_basic_auth("admin", "pw")}
    monitor = {"Authorization": aiohttp.encode_basic_auth("monitor", "pw2")}
    loop = LoopThread()
    try:
        async def flow():
            async with ConsoleServer([], users, title="net/one", state_dir=tmp_path) as console:
                assert await call(console, "GET", "/api/layout", auth=monitor, headers={}) == (
                    200, {"network": "net/one", "positions": {}})
                whole = {"n:a": {"x": 1, "y": 2}, "n:b": {"x": -3.5, "y": 4}}
                assert (await call(console, "POST", "/api/layout", auth=admin,
                                   body={"positions": whole, "replace": True}))[0] == 200
                assert (await call(console, "POST", "/api/layout", auth=admin,
                                   body={"positions": {"n:b": {"x": 10, "y": 20}}}))[0] == 200
                for body, message in [({"positions": {"n:a": {"x": "left", "y": 0}}}, "x of n:a must be a finite number"),
                                      ({"positions": {"n:a": {"x": 1}}}, "must be {x, y}"),
                                      ({"positions": [1, 2]}, "positions must be an object"),
                                      ({"positions": {}, "replace": "yes"}, "replace must be true or false")]:
                    status, reply = await call(console, "POST", "/api/layout", auth=admin, body=body)
                    assert status == 400 and message in reply["error"], reply
                status, reply = await call(console, "POST", "/api/layout", auth=monitor,
                                           body={"positions": {"n:a": {"x": 0, "y": 0}}})
                assert (status, reply["tag"]) == (403, "access-denied")
            # a new console on the same state directory (a restart): the same layout, for anyone
            async with ConsoleServer([], users, title="net/one", state_dir=tmp_path) as console:
                status, reply = await call(console, "GET", "/api/layout", auth=monitor, headers={})
                assert reply["positions"] == {"n:a": {"x": 1.0, "y": 2.0}, "n:b": {"x": 10.0, "y": 20.0}}
            async with ConsoleServer([], users, title="another", state_dir=tmp_path) as console:
                assert (await call(console, "GET", "/api/layout", auth=admin, headers={}))[1]["positions"] == {}

        loop.run(flow(), timeout=60)
    finally:
        loop.close()
    assert [p.name for p in (tmp_path / "layouts").iterdir()] == ["net_one.json"]


@pytest.fixture(scope="module")
def entangled():
    """The embedded entanglement network (devices/topologies/entanglement.yaml) and a console."""
    from console.server import ConsoleServer

    loop = LoopThread()
    stack = Stack(embedded_topology("entanglement.yaml"), passwords=dict(DEMO_PASSWORDS), insecure_sae_header=True)
    loop.run(stack.start(), timeout=120)
    rows = stack.table()
    console = ConsoleServer(console_levels(rows), console_users(rows), title="entanglement")
    loop.run(console.start())
    loop.run(console.synced(60), timeout=90)
    yield loop, stack, console
    loop.run(console.stop())
    loop.run(stack.stop(), timeout=120)
    loop.close()


def test_the_fabric_view_shows_entanglement_links_with_rate_and_fidelity(entangled):
    loop, stack, console = entangled
    topology = stack.topology

    async def settled() -> dict:
        async with asyncio.timeout(30):   # the links come up as the nodes report them
            while True:
                fabric = console.hub.views["fabric"]
                if fabric["links"] and all(l["up"] and l["rate"] and l["fidelity"] for l in fabric["links"]):
                    return fabric
                await asyncio.sleep(0.1)

    fabric = loop.run(settled(), timeout=60)
    assert {n["id"]: n["site"] for n in fabric["nodes"]} == {n.id: n.site for n in topology.quantum_nodes}
    assert {n["id"]: n["role"] for n in fabric["nodes"]}["qn-r1"] == "repeater"
    link = next(l for l in fabric["links"] if {l["a"], l["b"]} == {"qn-alice", "qn-r1"})
    assert 0.5 < link["fidelity"] <= 1.0 and link["rate"] > 0 and link["status"] == "up"
    assert "sessions" in console.hub.views["entanglement"]
    watches = {w.key: w for w in console._watches}
    assert watches["fabric"].pushed and watches["entanglement"].pushed
    status, state = loop.run(call(console, "GET", "/api/state", auth=MONITOR, headers={}))
    assert status == 200 and state["views"]["fabric"]["links"]


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
