"""The key-manager device over real NETCONF sessions (netconf_core's client) and real HTTP
(aiohttp): configuration becomes pools, routes and sessions; state and notifications report
them (every get reply and notification checked by yanglint); faults, refusals, access
control, crash and restart."""
from __future__ import annotations

import asyncio
import base64
import pathlib
import subprocess
import sys
import uuid

import aiohttp
import pytest
from lxml import etree

from device_checks import next_notification, validated_get
from devices.base import NetworkContext
from devices.etsi014 import SAE_HEADER
from devices.key_manager import KeyManagerDevice
from models.ns import KEY_MANAGER as NS
from devices.keystore import KeyNetwork, KeyStateError, PlanRequest
from devices.topology import KeyManagerSpec, SaeSpec
from devices.twin import Clock, Twin
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError

ROOT = pathlib.Path(__file__).resolve().parents[1]
AB, BC = str(uuid.UUID(int=0xAB)), str(uuid.UUID(int=0xBC))
YANG_ACTION_NS = "urn:ietf:params:xml:ns:yang:1"


class ManualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Network:
    """Key managers km-a - km-b - km-c (links AB and BC) of one emulated network on a manual
    clock; SAE sae-a at km-a, sae-c at km-c. Devices keep their state under `state_dir`."""

    def __init__(self, state_dir) -> None:
        self.checks = state_dir / "checks"  # what yanglint is given
        self.time = ManualTime()
        clock = Clock(source=self.time)
        self.context = NetworkContext(Twin(clock), KeyNetwork(clock), state_dir=state_dir, insecure_sae_header=True)
        self.devices: dict[str, KeyManagerDevice] = {}

    def make(self, name: str, port: int = 0, etsi014_port: int = 0) -> KeyManagerDevice:
        km_id = f"km-{name}"
        saes = [SaeSpec(f"sae-{name}", km_id)] if name in "ac" else []
        device = KeyManagerDevice(KeyManagerSpec(km_id, f"site-{name}"), saes, self.context, port=port,
                                  etsi014_port=etsi014_port)
        device.watch_period = 0.05
        return device

    async def start(self, *names: str) -> None:
        for name in names:
            self.devices[name] = self.make(name)
            await self.devices[name].start()

    async def stop(self) -> None:
        for device in self.devices.values():
            await device.stop()

    def connect(self, name: str, user: str = "admin") -> NetconfClient:
        return NetconfClient.connect("127.0.0.1", self.devices[name].port, user, user)

    def advance(self, seconds: float) -> None:
        self.time.t += seconds

    async def get_km(self, nc: NetconfClient) -> etree._Element:
        """The key manager's data (config and state), checked by yanglint."""
        return await validated_get(nc, km(""), self.checks)

    async def notification(self, nc: NetconfClient, name: str) -> etree._Element:
        """The next qi-key-manager notification `name`, checked by yanglint."""
        return await next_notification(nc, f"{{{NS}}}{name}", self.checks)


def run(tmp_path, test, names: str = "abc") -> None:
    async def main():
        network = Network(tmp_path)
        await network.start(*names)
        try:
            await test(network)
        finally:
            await network.stop()
    asyncio.run(main())


def km(body: str) -> str:
    return f'<key-manager xmlns="{NS}">{body}</key-manager>'


def pool(link: str, peer: str, low_watermark: int | None = None) -> str:
    extra = f"<low-watermark>{low_watermark}</low-watermark>" if low_watermark is not None else ""
    return f"<key-pools><key-pool><link-id>{link}</link-id><peer-km-id>{peer}</peer-km-id>{extra}</key-pool></key-pools>"


def peers(network: Network, *names: str) -> str:
    """Where the key managers `names` serve the KM-to-KM protocol (their ETSI 014 listener)."""
    return "<peers>" + "".join(f"<peer><km-id>km-{n}</km-id><url>{network.devices[n].etsi014_url}</url></peer>"
                               for n in names) + "</peers>"


def route(destination: str, next_hop: str, link: str) -> str:
    return (f"<forwarding-table><route><destination-km-id>{destination}</destination-km-id>"
            f"<next-hop-km-id>{next_hop}</next-hop-km-id><via-link-id>{link}</via-link-id></route></forwarding-table>")


def session(master: str, slave: str, peer: str, rate: int, burst: int | None = None, ttl: int | None = None,
            key_size: int | None = None, session_id: str = "s1") -> str:
    qos = f"<rate>{rate}</rate>" + "".join(f"<{tag}>{value}</{tag}>" for tag, value in
                                           (("burst", burst), ("ttl", ttl), ("key-size", key_size)) if value)
    return (f"<sessions><session><session-id>{session_id}</session-id><master-sae-id>{master}</master-sae-id>"
            f"<slave-sae-id>{slave}</slave-sae-id><peer-km-id>{peer}</peer-km-id><qos>{qos}</qos></session></sessions>")


async def configure_chain(network: Network, rate: int = 10_000, burst: int | None = None, ttl: int | None = None,
                          key_size: int | None = None) -> None:
    """The links distil 100 kb/s for 1 s of emulated time; then, from km-c to km-a, pools on
    both links, routes both ways and the session sae-a -> sae-c at both ends."""
    for link in (AB, BC):
        network.context.keys.stream(link).set_rate(100_000.0)
    network.advance(1.0)
    configs = {
        "a": peers(network, "b") + pool(AB, "km-b") + route("km-c", "km-b", AB)
        + session("sae-a", "sae-c", "km-c", rate, burst, ttl, key_size),
        "b": peers(network, "a", "c") + pool(AB, "km-a") + pool(BC, "km-c") + route("km-c", "km-c", BC)
        + route("km-a", "km-a", AB),
        "c": peers(network, "b") + pool(BC, "km-b") + route("km-a", "km-b", BC)
        + session("sae-a", "sae-c", "km-a", rate, burst, ttl, key_size),
    }
    for name in "cba":
        async with await network.connect(name) as nc:
            await nc.edit_config(km(configs[name]))



def leaf(node: etree._Element, path: str) -> str | None:
    return node.findtext("/".join(f"{{{NS}}}{step}" for step in path.split("/")))


def pool_state(state: etree._Element, link: str) -> etree._Element:
    return next(p for p in state.iterfind(f"{{{NS}}}key-pools/{{{NS}}}key-pool") if leaf(p, "link-id") == link)


async def http(method: str, url: str, sae: str, **kw) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as client:
        async with client.request(method, url, headers={SAE_HEADER: sae}, **kw) as response:
            return response.status, await response.json()


def flush_action(link: str) -> str:
    return (f'<action xmlns="{YANG_ACTION_NS}">' + km(f"<key-pools><key-pool><link-id>{link}</link-id><flush/>"
                                                      "</key-pool></key-pools>") + "</action>")


# -- tests --------------------------------------------------------------------------------

def test_boots_with_its_inventory_and_serves_etsi014_on_loopback(tmp_path):
    async def test(network: Network):
        device = network.devices["a"]
        async with await network.connect("a") as nc:
            config = (await nc.get_config()).find(f"{{{NS}}}key-manager")
            assert leaf(config, "km-id") == "km-a" and leaf(config, "site") == "site-a"
            assert [leaf(s, "sae-id") for s in config.iterfind(f"{{{NS}}}saes/{{{NS}}}sae")] == ["sae-a"]
            assert config.find(f"{{{NS}}}key-pools") is None and config.find(f"{{{NS}}}sessions") is None
            state = await network.get_km(nc)
        url = leaf(state, "etsi014/url")
        assert url == f"http://127.0.0.1:{device.etsi014_port}" and device.etsi014_port > 0
        status, body = await http("GET", f"{url}/api/v1/keys/sae-c/status", "sae-a")
        assert status == 401 and "no key session" in body["message"]
    run(tmp_path, test, "a")


def test_keys_cross_two_hops_as_configured_over_netconf(tmp_path):
    async def test(network: Network):
        await configure_chain(network)
        urls = {name: d.etsi014_url for name, d in network.devices.items()}
        status, body = await http("POST", f"{urls['a']}/api/v1/keys/sae-c/enc_keys", "sae-a", json={"number": 2})
        assert status == 200, body
        ids = [k["key_ID"] for k in body["keys"]]
        status, got = await http("POST", f"{urls['c']}/api/v1/keys/sae-a/dec_keys", "sae-c",
                                 json={"key_IDs": [{"key_ID": i} for i in ids]})
        assert status == 200, got
        assert [base64.b64decode(k["key"]) for k in got["keys"]] == [base64.b64decode(k["key"]) for k in body["keys"]]
        assert all(len(base64.b64decode(k["key"])) == 32 for k in got["keys"])
        states = {}
        for name in "abc":
            async with await network.connect(name) as nc:
                states[name] = await network.get_km(nc)
        a, b, c = states["a"], states["b"], states["c"]
        for state in (a, c):
            s = state.find(f"{{{NS}}}sessions/{{{NS}}}session")
            assert (leaf(s, "status"), leaf(s, "delivered-keys"), leaf(s, "delivered-bits")) == ("active", "2", "512")
        assert leaf(a, "sessions/session/tokens") == str(262144 - 512)  # the default burst, less two keys
        assert leaf(c, "sessions/session/tokens") is None  # the receiving end has no bucket
        for state, link in ((a, AB), (b, AB), (b, BC), (c, BC)):
            p = pool_state(state, link)
            assert leaf(p, "consumed") == "512" and leaf(p, "generated") == "100000"
            assert int(leaf(p, "stored")) == 100_000 - 512 and leaf(p, "next-key-index") == "512"
        assert (leaf(b, "relay-statistics/relayed-keys"), leaf(b, "relay-statistics/relayed-bits")) == ("2", "512")
        assert leaf(a, "relay-statistics/relayed-keys") == "0"
    run(tmp_path, test)


@pytest.mark.parametrize("edit, message", [
    (km("<peers><peer><km-id>km-b</km-id><url>ftp://127.0.0.1:1</url></peer></peers>"),
     "peer km-b: url must be an https:// (or, in the insecure mode, http://) base URL, got 'ftp://127.0.0.1:1'"),
    (km(session("sae-x", "sae-y", "km-c", 1000)), "neither SAE sae-x nor SAE sae-y is attached to key manager km-a"),
    (km("<km-id>km-z</km-id>"), "this key manager is km-a; km-id cannot be changed to km-z"),
    (km(session("sae-a", "sae-c", "km-c", 1000, burst=20000, key_size=16384)),
     "key-size 16384 is outside what this key manager delivers (64 to 8192 bits)"),
])
def test_configurations_the_key_manager_cannot_serve_are_refused_and_change_nothing(tmp_path, edit, message):
    async def test(network: Network):
        async with await network.connect("b") as nc:
            await nc.edit_config(km(pool(BC, "km-c")))
        async with await network.connect("c") as nc:
            await nc.edit_config(km(pool(BC, "km-b")))
        async with await network.connect("a") as nc:
            before = etree.tostring(await nc.get_config())
            with pytest.raises(RPCError) as refused:
                await nc.edit_config(edit)
            assert refused.value.tag == "invalid-value" and message in refused.value.message
            assert etree.tostring(await nc.get_config()) == before
        assert network.context.keys.km("km-a").pools == {}
    run(tmp_path, test)


def test_the_key_manager_container_cannot_be_removed(tmp_path):
    async def test(network: Network):
        async with await network.connect("a") as nc:
            with pytest.raises(RPCError) as refused:
                await nc.edit_config(f'<key-manager xmlns="{NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" '
                                     f'nc:operation="delete"/>')
            assert "cannot be removed" in refused.value.message
    run(tmp_path, test, "a")


def test_a_pool_cannot_change_its_peer_while_it_exists(tmp_path):
    async def test(network: Network):
        async with await network.connect("a") as nc:
            await nc.edit_config(km(pool(AB, "km-b")))
            with pytest.raises(RPCError) as refused:
                await nc.edit_config(km(pool(AB, "km-c")))
            assert f"link {AB} leads to key manager km-b, not km-c" in refused.value.message
    run(tmp_path, test, "a")


def test_flush_empties_the_pool_at_both_ends_and_notifies(tmp_path):
    async def test(network: Network):
        async with await network.connect("a") as nc:
            await nc.edit_config(km(peers(network, "b") + pool(AB, "km-b", low_watermark=50_000)))
            await nc.create_subscription()
            async with await network.connect("b") as nb:
                await nb.edit_config(km(peers(network, "a") + pool(AB, "km-a")))
            network.context.keys.stream(AB).set_rate(100_000.0)
            network.advance(1.0)
            network.context.keys.stream(AB).set_rate(0.0)  # nothing arrives while we look
            reply = await nc.dispatch(flush_action(AB))
            assert reply.findtext(f"{{{NS}}}discarded") == "100000"
            low = await network.notification(nc, "pool-low")
            assert (leaf(low, "link-id"), leaf(low, "peer-km-id"), leaf(low, "stored"),
                    leaf(low, "low-watermark")) == (AB, "km-b", "0", "50000")
            empty = await network.notification(nc, "pool-empty")
            assert (leaf(empty, "link-id"), leaf(empty, "peer-km-id")) == (AB, "km-b")
            assert leaf(pool_state(await network.get_km(nc), AB), "stored") == "0"
        async with await network.connect("b") as nb:
            assert leaf(pool_state(await network.get_km(nb), AB), "stored") == "0"
    run(tmp_path, test, "ab")


def test_the_monitor_user_reads_but_cannot_configure_nor_flush(tmp_path):
    async def test(network: Network):
        async with await network.connect("a") as nc:
            await nc.edit_config(km(pool(AB, "km-b")))
        async with await network.connect("a", user="monitor") as nc:
            assert leaf(await network.get_km(nc), "km-id") == "km-a"
            with pytest.raises(RPCError) as denied:
                await nc.edit_config(km(route("km-c", "km-b", AB)))
            assert denied.value.tag == "access-denied"
            with pytest.raises(RPCError) as denied:
                await nc.dispatch(flush_action(AB))
            assert denied.value.tag == "access-denied"
    run(tmp_path, test, "a")


def test_restart_needs_a_device_host_to_start_the_key_manager_again(tmp_path):
    async def test(network: Network):
        async with await network.connect("a") as nc:
            with pytest.raises(RPCError) as refused:
                await nc.dispatch(f'<action xmlns="{YANG_ACTION_NS}">' + km("<restart/>") + "</action>")
            assert refused.value.tag == "operation-not-supported" and "outside a device host" in refused.value.message
            assert leaf(await network.get_km(nc), "km-id") == "km-a"  # still serving
    run(tmp_path, test, "a")


def test_session_status_follows_the_path_and_changes_are_notified(tmp_path):
    async def test(network: Network):
        async with await network.connect("a") as nc:
            await nc.create_subscription()
            await nc.edit_config(km(session("sae-a", "sae-c", "km-c", 10_000)))
            s = (await network.get_km(nc)).find(f"{{{NS}}}sessions/{{{NS}}}session")
            assert leaf(s, "status") == "pending" and "no route to key manager km-c" in leaf(s, "reason")
            await configure_chain(network)
            change = await network.notification(nc, "session-state-change")
            assert (leaf(change, "session-id"), leaf(change, "previous-status"), leaf(change, "status")) == \
                ("s1", "pending", "active")
            network.context.keys.stream(BC).set_rate(5_000.0)  # below the session's 10 kb/s
            change = await network.notification(nc, "session-state-change")
            assert leaf(change, "status") == "starved" and f"link {BC} distils 5000 b/s" in leaf(change, "reason")
            await network.devices["c"].stop()
            change = await network.notification(nc, "session-state-change")
            assert (leaf(change, "previous-status"), leaf(change, "status"), leaf(change, "reason")) == \
                ("starved", "failed", "key manager km-c is unreachable")
    run(tmp_path, test)


def test_a_session_is_planned_again_for_a_change_on_its_way_and_not_for_others(tmp_path):
    """Planning is hop by hop over the KM-to-KM protocol, so a key manager that relays for many
    sessions must not plan all of its own again for every route it is given: only a change that
    can alter a session's plan (here, the route to its peer) makes it plan that session anew."""
    async def test(network: Network):
        plans_from_a = []
        km_b = network.devices["b"].km
        handle = km_b.handle

        async def counting(caller, message):
            if isinstance(message, PlanRequest) and caller == "km-a":
                plans_from_a.append(message.destination_km)
            return await handle(caller, message)
        km_b.handle = counting
        async with await network.connect("a") as nc:
            await nc.create_subscription()
            await configure_chain(network)
            change = await network.notification(nc, "session-state-change")
            assert leaf(change, "status") == "active", leaf(change, "reason")
            # A session's plan is now re-verified after 5 s, unless a change asks sooner.
            network.devices["a"].watch_period = 1.0
            await asyncio.sleep(1.2)  # the watch sleeps at the new period
            plans_from_a.clear()
            await nc.edit_config(km(route("km-x", "km-b", AB)))  # a route s1 does not take
            await asyncio.sleep(2.5)  # two watch rounds
            assert plans_from_a == [], "a change that cannot alter s1's plan made km-a plan it again"
            delete = '<route nc:operation="delete" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
            await nc.edit_config(km(route("km-c", "km-b", AB).replace("<route>", delete)))  # s1's own route
            change = await network.notification(nc, "session-state-change")
            assert (leaf(change, "previous-status"), leaf(change, "status")) == ("active", "pending")
            assert "no route to key manager km-c" in leaf(change, "reason")
    run(tmp_path, test)


def test_a_session_beyond_its_bucket_gets_503_and_after_its_ttl_401(tmp_path):
    async def test(network: Network):
        await configure_chain(network, rate=1000, burst=1024, ttl=60, key_size=512)
        url = f"{network.devices['a'].etsi014_url}/api/v1/keys/sae-c"
        status, body = await http("GET", f"{url}/status", "sae-a")
        assert status == 200 and (body["key_size"], body["stored_key_count"], body["max_key_count"]) == (512, 2, 2)
        status, body = await http("GET", f"{url}/enc_keys?number=2", "sae-a")
        assert status == 200 and all(len(base64.b64decode(k["key"])) == 64 for k in body["keys"])
        status, body = await http("GET", f"{url}/enc_keys", "sae-a")
        assert status == 503 and "session rate exceeded" in body["message"]
        network.advance(61.0)
        status, body = await http("GET", f"{url}/enc_keys", "sae-a")
        assert status == 401 and "has expired" in body["message"]
        async with await network.connect("a") as nc:
            s = (await network.get_km(nc)).find(f"{{{NS}}}sessions/{{{NS}}}session")
        assert leaf(s, "status") == "expired" and leaf(s, "delivered-keys") == "2"
    run(tmp_path, test)


def test_a_crashed_key_manager_comes_back_with_its_startup_config_pools_and_keys(tmp_path):
    async def test(network: Network):
        await configure_chain(network)
        status, body = await http("GET", f"{network.devices['a'].etsi014_url}/api/v1/keys/sae-c/enc_keys", "sae-a")
        assert status == 200
        key = body["keys"][0]
        async with await network.connect("c") as nc:
            await nc.copy_config("running", "startup")
            await nc.edit_config(km(route("km-b", "km-b", BC)))  # not saved to startup: lost in the crash
            config_before = etree.tostring(await nc.get_config("startup"))
            consumed_before = leaf(pool_state(await network.get_km(nc), BC), "consumed")
        old = network.devices["c"]
        ports = (old.port, old.etsi014_port)
        await old.stop()
        assert not network.context.keys.is_up("km-c")
        network.devices["c"] = restarted = network.make("c", *ports)
        await restarted.start()
        assert (restarted.port, restarted.etsi014_port) == ports
        async with await network.connect("c") as nc:
            assert etree.tostring(await nc.get_config()) == config_before
            state = await network.get_km(nc)
        assert leaf(pool_state(state, BC), "consumed") == consumed_before == "256"
        assert leaf(state, "sessions/session/status") == "active"
        status, got = await http("GET", f"{restarted.etsi014_url}/api/v1/keys/sae-a/dec_keys?key_ID={key['key_ID']}",
                                 "sae-c")
        assert status == 200 and got["keys"][0]["key"] == key["key"]
    run(tmp_path, test)


def test_a_damaged_key_state_stops_the_device_with_an_error_naming_the_file(tmp_path):
    state = tmp_path / "km-a" / "keys" / "km-a.db"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a database" * 100)

    async def main():
        network = Network(tmp_path)
        device = network.make("a")
        with pytest.raises(KeyStateError, match=f"^{state}: cannot use it as a key manager state database: "
                                                f"file is not a database$"):
            await device.start()
        assert device.km is None and not network.context.keys.is_up("km-a")
        state.unlink()  # repaired (here: started afresh), the same device starts
        await device.start()
        await device.stop()
    asyncio.run(main())


def test_qstrata_devices_up_prints_a_damaged_key_state_without_a_traceback(tmp_path):
    state = tmp_path / "state" / "km-quintin" / "keys" / "km-quintin.db"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a database" * 100)
    command = [sys.executable, "-m", "tools.cli", "devices", "up", "--state-dir", str(tmp_path / "state")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"qstrata devices up: {state}: cannot use it as a key manager state database: "
                                     f"file is not a database")
