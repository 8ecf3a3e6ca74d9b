"""The twin service: one network's fibre plant, clock and link key streams over HTTP, shared by
devices in several processes (devices/twin_service.py, docs/twin-service.md)."""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import queue
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from contextlib import AsyncExitStack

import asyncssh
import pytest
import yaml

from devices.base import NetworkContext
from devices.host import key_manager_sites
from devices.keystore import KeyNetwork, KeyStream
from devices.qkd_node import QkdNodeDevice, node_uuid
from devices.topology import build_twin, default_topology
from devices.twin import Clock
from devices.twin_service import TwinAddress, TwinClient, TwinError, TwinService
from models.ns import ETSI_NODE, FIBRE_PLANT
from netconf_core.client import NetconfClient
from tools.deployment import DeploymentError, load_deployment

ROOT = pathlib.Path(__file__).resolve().parent.parent
QA = str(uuid.UUID(int=0xA1))  # qkd-quintin if2 -- span quintin-almagro -- qkd-almagro if2
NODE = f'<qkd_node xmlns="{ETSI_NODE}"/>'


def phys_link(link_id: str, local_if: int, remote: str, remote_if: int) -> str:
    return (f'<qkd_node xmlns="{ETSI_NODE}"><qkd_links><qkd_link><qkdl_id>{link_id}</qkdl_id>'
            f'<qkdl_type xmlns:t="urn:etsi:qkd:yang:etsi-qkd-node-types">t:PHYS</qkdl_type>'
            f"<qkdl_local><qkdi_id>{local_if}</qkdi_id></qkdl_local>"
            f"<qkdl_remote><qkdn_id>{node_uuid(remote)}</qkdn_id><qkdi_id>{remote_if}</qkdi_id></qkdl_remote>"
            f"</qkd_link></qkd_links></qkd_node>")


async def link_state(port: int, link_id: str) -> tuple[str, str]:
    """(status, skr) of a link at the QKD node listening on `port`."""
    async with await NetconfClient.connect("127.0.0.1", port, "admin", "admin") as nc:
        data = await nc.get(("subtree", NODE))
    for link in data.iter(ETSI_NODE("qkd_link")):
        if link.findtext(ETSI_NODE("qkdl_id")) == link_id:
            return (link.findtext(ETSI_NODE("qkdl_status")).split(":")[1],
                    link.findtext(f"{ETSI_NODE('qkdl_performance')}/{ETSI_NODE('skr')}"))
    raise AssertionError(f"no link {link_id}")


async def until(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def stream_as(address: TwinAddress, km: str, link_id: str):
    """The link's stream as a key manager's KeyNetwork gets it (a client of its own)."""
    client = TwinClient(address, device=km)
    client.key_managers = [km]
    await client.start()
    keys = KeyNetwork(client.clock)
    keys.stream_source = client
    return client, keys.stream(link_id)


# -- in one process: the service and two nodes, every request over HTTP -----------------------

class OneNetwork:
    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack
        self.topology = default_topology()
        twin = build_twin(self.topology, Clock(speed=10.0), random.Random(2))
        self.service = TwinService(twin, "s3cret-token", key_manager_sites=key_manager_sites(self.topology))
        self.nodes: dict[str, QkdNodeDevice] = {}

    async def start(self) -> None:
        await self.service.start()
        self.stack.push_async_callback(self.service.stop)
        self.address = TwinAddress("127.0.0.1", self.service.port, "s3cret-token")
        context = NetworkContext(None, KeyNetwork(), twin_service=self.address)
        for name in ("qkd-quintin", "qkd-almagro"):
            node = QkdNodeDevice(next(n for n in self.topology.qkd_nodes if n.id == name), context)
            await node.start()
            self.stack.push_async_callback(node.stop)
            self.nodes[name] = node

    async def activate(self) -> None:
        for name, remote in (("qkd-quintin", "qkd-almagro"), ("qkd-almagro", "qkd-quintin")):
            async with await NetconfClient.connect("127.0.0.1", self.nodes[name].port, "admin", "admin") as nc:
                await nc.edit_config(phys_link(QA, 2, remote, 2))

        async def active():
            states = [await link_state(n.port, QA) for n in self.nodes.values()]
            return states[0][0] == states[1][0] == "ACTIVE" and states
        await until(active, "the link to be ACTIVE at both ends")


def in_one_process(test):
    async def main():
        async with AsyncExitStack() as stack:
            network = OneNetwork(stack)
            await network.start()
            await test(network)
    asyncio.run(main())


def curl(url: str, *args: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args, url], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body else {}


def test_the_service_refuses_a_client_without_the_network_token():
    async def test(network: OneNetwork):
        url = f"http://127.0.0.1:{network.service.port}/v1/clock"
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(None, curl, url)
        assert status == 401 and "bearer token" in body["error"]
        status, _ = await loop.run_in_executor(None, curl, url, "-H", "Authorization: Bearer wrong",
                                               "-H", "X-Twin-Device: qkd-quintin")
        assert status == 401
        status, body = await loop.run_in_executor(None, curl, url, "-H", "Authorization: Bearer s3cret-token")
        assert status == 400 and "X-Twin-Device" in body["error"]
        status, body = await loop.run_in_executor(None, curl, url, "-H", "Authorization: Bearer s3cret-token",
                                                  "-H", "X-Twin-Device: qkd-quintin")
        assert status == 200 and body["speed"] == 10.0
        with pytest.raises(TwinError) as refused:
            await TwinClient(TwinAddress("127.0.0.1", network.service.port, "not-the-token")).start()
        assert refused.value.status == 401
    in_one_process(test)


def test_a_link_stream_goes_to_its_two_ends_and_their_key_managers_only():
    async def test(network: OneNetwork):
        with pytest.raises(TwinError) as early:  # not agreed yet: nobody gets it
            await network.nodes["qkd-quintin"].twin.request("GET", f"/streams/{QA}", "km-quintin")
        assert early.value.status == 404
        await network.activate()
        twin = network.nodes["qkd-quintin"].twin
        served = {who: await twin.request("GET", f"/streams/{QA}", who)
                  for who in ("qkd-quintin", "qkd-almagro", "km-quintin", "km-almagro")}
        assert len({body["secret"] for body in served.values()}) == 1
        assert served["km-quintin"]["secret"] == network.service.streams[QA].snapshot()["secret"]
        for outsider in ("km-norte", "qkd-norte", "fibre-plant", "sw-concepcion"):
            with pytest.raises(TwinError) as refused:
                await twin.request("GET", f"/streams/{QA}", outsider)
            assert refused.value.status == 403 and "neither an end" in str(refused.value)
        # A node's own readings carry the bits produced, never the secret.
        links = await twin.request("GET", f"/nodes/{node_uuid('qkd-quintin')}/links", "qkd-quintin")
        assert "secret" not in json.dumps(links) and links["links"][QA]["generating"]
        with pytest.raises(TwinError) as other:
            await twin.request("GET", f"/nodes/{node_uuid('qkd-quintin')}/links", "qkd-almagro")
        assert other.value.status == 403
    in_one_process(test)


def test_a_process_hears_the_events_of_its_own_links_and_nodes_only():
    async def test(network: OneNetwork):
        heard: dict[str, list[dict]] = {"km-quintin": [], "km-norte": [], "nodes": []}
        network.nodes["qkd-quintin"].twin.watch(heard["nodes"].append)   # the process of both QKD nodes
        clients = {}
        for km in ("km-quintin", "km-norte"):   # a process of its own each
            client = TwinClient(network.address, device=km)
            client.key_managers = [km]
            await client.start()
            network.stack.push_async_callback(client.stop)
            client.watch(heard[km].append)
            clients[km] = client
        for km in clients:   # both ask before the ends agree (404); km-norte may never read it
            with pytest.raises(TwinError) as early:
                await clients[km].request("GET", f"/streams/{QA}", km)
            assert early.value.status == 404
        await network.activate()
        with pytest.raises(TwinError) as refused:
            await clients["km-norte"].request("GET", f"/streams/{QA}", "km-norte")
        assert refused.value.status == 403

        async def rate_changes_heard():
            return sum(e["type"] == "stream" and e["link"] == QA for e in heard["km-quintin"]) >= 2
        await until(rate_changes_heard, "two rate changes of the link at its key manager's process")
        network.service.twin.cut_span("quintin-almagro")   # a plant event: every process hears it
        await until(lambda: asyncio.sleep(0, all(any(e["type"] == "plant" for e in events)
                                                 for events in heard.values())), "the cut at every process")
        assert not [e for e in heard["km-norte"] if e["type"] in ("stream", "nodes", "quantum")]
        assert not [e for e in heard["km-quintin"] if e["type"] == "nodes"]   # it runs no QKD node
        assert not [e for e in heard["nodes"] if e["type"] == "stream"]      # it holds no key stream
        own = {node.qkdn_id for node in network.nodes.values()}
        wakes = [e["wake"] for e in heard["nodes"] if e["type"] == "nodes"]
        assert wakes and all(set(wake) <= own for wake in wakes)
    in_one_process(test)


def test_only_a_switch_sets_its_cross_connects_and_a_bad_set_changes_nothing():
    async def test(network: OneNetwork):
        twin = network.nodes["qkd-quintin"].twin
        with pytest.raises(TwinError) as refused:
            await twin.request("PUT", "/switches/sw-concepcion/cross-connects", "qkd-quintin",
                               {"cross_connects": [[1, 4, 1.0]]})
        assert refused.value.status == 403
        await twin.request("PUT", "/switches/sw-concepcion/cross-connects", "sw-concepcion",
                           {"cross_connects": [[1, 4, 1.0]]})
        with pytest.raises(TwinError) as bad:
            await twin.request("PUT", "/switches/sw-concepcion/cross-connects", "sw-concepcion",
                               {"cross_connects": [[1, 2, 1.0], [2, 3, 1.0]]})
        assert bad.value.status == 409 and "already cross-connected" in str(bad.value)
        made = network.service.twin.cross_connects("sw-concepcion")
        assert [(xc.port_a, xc.port_b) for xc in made] == [(1, 4)]
        with pytest.raises(TwinError) as span:
            await twin.request("POST", "/spans/no-such-span", "fibre-plant", {"action": "cut"})
        assert span.value.status == 404
    in_one_process(test)


def test_both_key_managers_derive_the_same_bits_at_the_same_emulated_time():
    async def test(network: OneNetwork):
        await network.activate()
        a_client, a = await stream_as(network.address, "km-quintin", QA)
        b_client, b = await stream_as(network.address, "km-almagro", QA)
        try:
            await until(lambda: asyncio.sleep(0, a.bound and b.bound and a.produced_bits() > 4096),
                        "both streams bound and producing")
            for _ in range(20):  # the rate changes (jitter) every period: both follow
                now = a_client.clock.now()
                assert a.produced_bits(now) == b.produced_bits(now) == network.service.streams[QA].produced_bits(now)
                await asyncio.sleep(0.1)
            assert a.bits(0, 4096) == b.bits(0, 4096) != bytes(512)
            assert abs(a_client.clock.now() - network.service.clock.now()) < 0.01 * 10
        finally:
            await a_client.stop()
            await b_client.stop()
    in_one_process(test)


# -- three processes: the twin service and two device hosts ------------------------------------

class Output:
    """What a process prints, read by a thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(process.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            assert line is not None, "the process ended:\n" + "\n".join(self.seen[-30:])
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.seen[-30:]))


def run_level(tmp_path: pathlib.Path, level: str, config: dict, name: str) -> tuple[subprocess.Popen, Output]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", level, "--config", str(path)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, Output(process)


def devices_config(tmp_path: pathlib.Path, name: str, run: list[str], twin_port: int) -> dict:
    key = tmp_path / f"{name}.key"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o600)
    return {"level": "devices", "name": name, "listen": {"address": "127.0.0.1", "host_key_file": key.name},
            "users": [{"name": "admin", "access": "read-write", "password": "admin"}],
            "state_dir": name,
            "devices": {"etsi014": {"insecure_http": True}, "run": run,
                        "twin": {"address": "127.0.0.1", "port": twin_port, "token_file": "token"}}}


def device_ports(out: Output, devices: list[str]) -> dict[str, int]:
    ports = {}
    while set(ports) != set(devices):
        match = out.wait_for(r"^(\S+)\s+\S+\s+127\.0\.0\.1:(\d+)")
        ports[match[1]] = int(match[2])
    out.wait_for("ready on")
    return ports


def test_two_device_hosts_in_separate_processes_share_one_twin_service(tmp_path):
    (tmp_path / "token").write_text("a-network-token\n")
    (tmp_path / "token").chmod(0o600)
    processes = []
    try:
        twin, twin_out = run_level(tmp_path, "twin", {
            "level": "twin", "listen": {"address": "127.0.0.1", "port": 0},
            "twin": {"speed": 10, "seed": 4, "token_file": "token"}}, "twin")
        processes.append(twin)
        twin_port = int(twin_out.wait_for(r"twin ready on 127\.0\.0\.1:(\d+)")[1])
        a_devices, b_devices = ["fibre-plant", "qkd-quintin", "km-quintin"], ["qkd-almagro", "km-almagro"]
        a, a_out = run_level(tmp_path, "devices", devices_config(tmp_path, "host-a", a_devices, twin_port), "host-a")
        processes.append(a)
        b, b_out = run_level(tmp_path, "devices", devices_config(tmp_path, "host-b", b_devices, twin_port), "host-b")
        processes.append(b)
        ports = device_ports(a_out, a_devices) | device_ports(b_out, b_devices)
        assert ports["qkd-quintin"] != ports["qkd-almagro"]
        asyncio.run(across_processes(TwinAddress("127.0.0.1", twin_port, "a-network-token"), ports))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def across_processes(address: TwinAddress, ports: dict[str, int]) -> None:
    for name, remote in (("qkd-quintin", "qkd-almagro"), ("qkd-almagro", "qkd-quintin")):
        async with await NetconfClient.connect("127.0.0.1", ports[name], "admin", "admin") as nc:
            await nc.edit_config(phys_link(QA, 2, remote, 2))

    async def both(status: str):
        states = [await link_state(ports[n], QA) for n in ("qkd-quintin", "qkd-almagro")]
        return states[0] == states[1] and states[0][0] == status and states
    (_, skr), _ = await until(lambda: both("ACTIVE"), "the link ACTIVE at both ends, one reading")
    assert int(skr) > 0

    # The key managers of both ends: the same bits for the same offsets, the same count of
    # produced bits at the same emulated time; a key manager of neither end gets nothing.
    a_client, a = await stream_as(address, "km-quintin", QA)
    b_client, b = await stream_as(address, "km-almagro", QA)
    outsider = TwinClient(address, device="km-norte")
    await outsider.start()
    try:
        await until(lambda: asyncio.sleep(0, a.bound and b.bound and a.produced_bits() > 8192), "the streams")
        now = a_client.clock.now()
        assert a.produced_bits(now) == b.produced_bits(now) > 0
        assert a.bits(1024, 2048) == b.bits(1024, 2048)
        with pytest.raises(TwinError) as refused:
            await outsider.request("GET", f"/streams/{QA}", "km-norte")
        assert refused.value.status == 403

        # A cut on the plant (host A) takes the link down at both ends, within a bound.
        async with await NetconfClient.connect("127.0.0.1", ports["fibre-plant"], "admin", "admin") as nc:
            await nc.dispatch(f'<cut-span xmlns="{FIBRE_PLANT}"><span-id>quintin-almagro</span-id></cut-span>')
        cut_at = time.monotonic()
        await until(lambda: both("PASSIVE"), "the link down at both ends", timeout=5.0)
        assert time.monotonic() - cut_at < 5.0
        await until(lambda: asyncio.sleep(0, a.rate_bps == b.rate_bps == 0.0), "the key rate 0 at both ends", 5.0)
        now = a_client.clock.now()
        assert a.produced_bits(now) == b.produced_bits(now)
    finally:
        for client in (a_client, b_client, outsider):
            await client.stop()


def test_a_rate_change_dated_ahead_counts_from_its_date_and_a_history_carries_over():
    now = [0.0]
    clock = Clock(source=lambda: now[0])
    stream = KeyStream("l", clock, rate_bps=800.0)
    now[0] = 1.0
    stream.set_rate(0.0, at=1.5)  # announced now, effective in half a second
    assert stream.rate_bps == 800.0 and stream.produced_bits() == 800
    now[0] = 3.0
    assert stream.rate_bps == 0.0 and stream.produced_bits() == 1200
    copy = KeyStream("l", clock, bound=False)
    assert copy.produced_bits() == 0 and copy.rate_bps == 0.0  # nothing until the service hands it over
    copy.bind(bytes.fromhex(stream.snapshot()["secret"]), stream.history())
    assert copy.produced_bits() == 1200 and copy.bits(0, 1200) == stream.bits(0, 1200)
    with pytest.raises(ValueError, match="key rate must be >= 0"):
        stream.set_rate(-1.0)


def test_a_twin_deployment_names_each_mistake(tmp_path):
    (tmp_path / "token").write_text("t\n")
    path = tmp_path / "twin.yaml"
    path.write_text(yaml.safe_dump({"level": "twin", "listen": {"address": "127.0.0.1", "port": 70000},
                                    "twin": {"speed": -1, "token": "x", "token_file": "token", "colour": 1}}))
    with pytest.raises(DeploymentError) as error:
        load_deployment(path)
    problems = "\n".join(error.value.problems)
    for expected in ("listen.port: bad port 70000", "twin.speed: must be a number > 0",
                     "twin.token: give the token the devices share", "twin.colour: unknown key"):
        assert f"{path}: {expected}" in problems
    path.write_text(yaml.safe_dump({"level": "twin", "listen": {"address": "127.0.0.1", "port": 0},
                                    "twin": {"seed": 3, "token_file": "token"}}))
    deployment = load_deployment(path)
    assert (deployment.listen.port, deployment.part.seed, deployment.part.token_file) == (0, 3, tmp_path / "token")


# -- the QKD nodes of one process read their links in one request a period ------------------------

async def all_nodes_in_one_process(stack: AsyncExitStack, hand: list[float]):
    """Every QKD node of the default topology in one process, on a clock driven by hand, with a
    period long enough that only the test and the service's events make them read their links."""
    topology = default_topology()
    service = TwinService(build_twin(topology, Clock(source=lambda: hand[0]), random.Random(2)), "s3cret-token",
                          key_manager_sites=key_manager_sites(topology))
    await service.start()
    stack.push_async_callback(service.stop)
    context = NetworkContext(None, KeyNetwork(), twin_service=TwinAddress("127.0.0.1", service.port, "s3cret-token"))
    nodes = {}
    for spec in topology.qkd_nodes:
        node = QkdNodeDevice(spec, context)
        node.period = 3600.0
        await node.start()
        stack.push_async_callback(node.stop)
        nodes[spec.id] = node
    for name, remote in (("qkd-quintin", "qkd-almagro"), ("qkd-almagro", "qkd-quintin")):
        async with await NetconfClient.connect("127.0.0.1", nodes[name].port, "admin", "admin") as nc:
            await nc.edit_config(phys_link(QA, 2, remote, 2))

    async def active():   # each end's cached reading is dropped when the other end registers
        return all([(await link_state(nodes[n].port, QA))[0] == "ACTIVE" for n in ("qkd-quintin", "qkd-almagro")])
    await until(active, "the link to be ACTIVE at both ends")
    hand[0] += 50.0   # the stream has produced bits, and produces no more until the clock moves
    return service, nodes


def test_the_batch_of_a_process_gives_each_node_the_readings_of_its_own_resource():
    async def main():
        async with AsyncExitStack() as stack:
            service, nodes = await all_nodes_in_one_process(stack, [0.0])
            twin = nodes["qkd-quintin"].twin
            one_by_one = {n.qkdn_id: (await twin.request("GET", f"/nodes/{n.qkdn_id}/links", n.id))["links"]
                          for n in nodes.values()}
            everyone = {n.qkdn_id: n.id for n in nodes.values()}
            batch = await twin.request("POST", "/nodes/links", body={"nodes": everyone})
            assert batch["nodes"] == {q: {"links": links} for q, links in one_by_one.items()}
            quintin = batch["nodes"][node_uuid("qkd-quintin")]["links"][QA]
            assert quintin["generating"] and quintin["produced_bits"] > 0 and "secret" not in json.dumps(batch)

            mine = {node_uuid("qkd-quintin"): "qkd-quintin", node_uuid("qkd-almagro"): "qkd-quintin"}
            with pytest.raises(TwinError) as other:   # one node of another device refuses the whole batch
                await twin.request("POST", "/nodes/links", body={"nodes": mine})
            assert other.value.status == 403 and "only qkd-almagro reads its links" in str(other.value)
            for bad in ({"nodes": [node_uuid("qkd-quintin")]}, {"nodes": {node_uuid("qkd-quintin"): 7}}, {}):
                with pytest.raises(TwinError) as refused:
                    await twin.request("POST", "/nodes/links", body=bad)
                assert refused.value.status == 400 and "qkdn_id" in str(refused.value)
            unknown = await twin.request("POST", "/nodes/links", body={"nodes": {"no-such-node": "qkd-quintin"}})
            assert unknown["nodes"]["no-such-node"]["status"] == 404
    asyncio.run(main())


def test_the_qkd_nodes_of_a_process_read_their_links_in_one_request_a_period():
    async def main():
        async with AsyncExitStack() as stack:
            service, nodes = await all_nodes_in_one_process(stack, [0.0])
            twin = nodes["qkd-quintin"].twin
            expected = [(await twin.request("GET", f"/nodes/{n.qkdn_id}/links", n.id))["links"] for n in nodes.values()]
            twin.node_links.drop()   # a new round
            service.requests.clear()
            assert await asyncio.gather(*(n.readings() for n in nodes.values())) == expected
            assert service.requests == {"POST /v1/nodes/links": 1}
            assert await asyncio.gather(*(n.readings() for n in nodes.values())) == expected
            assert service.requests == {"POST /v1/nodes/links": 1}   # kept for the period

            for node in nodes.values():
                node.period = 0.001
            await asyncio.sleep(0.01)   # the period is over: the next reading asks again, for all
            await asyncio.gather(*(n.readings() for n in nodes.values()))
            assert service.requests == {"POST /v1/nodes/links": 2}

            # A node the service no longer knows reports its failure as before; the others their links.
            await twin.request("DELETE", f"/nodes/{node_uuid('qkd-quintin')}", "qkd-quintin")
            twin.node_links.drop()
            quintin, almagro = await asyncio.gather(nodes["qkd-quintin"].views(), nodes["qkd-almagro"].readings())
            assert quintin[QA].why_not == "the twin service is unreachable" and quintin[QA].status == "PENDING"
            assert almagro[QA]["why_not"] == f"remote node {node_uuid('qkd-quintin')} is not reachable"
    asyncio.run(main())
