"""The devices level over worker processes (`devices.workers`, tools/device_workers.py): the
Madrid network run by `qstrata run devices` over two workers, reached over real NETCONF
sessions with the host key pinned and over ETSI 014 with aiohttp; keys relayed between key
managers of different workers; the workers dying with their parent, even on SIGKILL."""
from __future__ import annotations

import asyncio
import os
import re
import pathlib
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
import yaml

from devices.etsi014 import SAE_HEADER
from devices.host import device_builders
from devices.topology import default_topology
from models.ns import KEY_MANAGER as KM_NS
from netconf_core import persistent_host_key, public_key_line
from netconf_core.client import NetconfClient, UntrustedHostKey
from netconf_core.ssh import trusted_host_keys
from test_devices_e2e import PATH, SESSION_BURST, cross_connects, key_manager, keys_of, km_leaf, phys_links
from tools import cli
from tools.cmd_run import READY
from tools.deployment import DeploymentError, load_deployment
from tools.device_table import parse_table
from tools.device_workers import split_devices

ROOT = pathlib.Path(__file__).resolve().parents[1]
START_S = 60.0


def deployment(tmp_path: pathlib.Path, workers: object = 2) -> pathlib.Path:
    key = tmp_path / "devices.key"
    persistent_host_key(key)
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({
        "level": "devices", "listen": {"address": "127.0.0.1", "host_key_file": str(key)},
        "users": [{"name": "admin", "access": "read-write", "password": "admin"},
                  {"name": "monitor", "access": "read-only", "password": "monitor"}],
        "state_dir": str(tmp_path / "state"),
        "devices": {"speed": 5, "workers": workers, "etsi014": {"insecure_http": True}}}))
    return path


class Level:
    """`qstrata run devices --config FILE` in a process of its own, until its ready line."""

    def __init__(self, config: pathlib.Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", "devices", "--config", str(config)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        lines: list[str] = []
        deadline = time.monotonic() + START_S
        while not lines or READY not in lines[-1]:
            line = self.process.stdout.readline()
            assert line and time.monotonic() < deadline, f"no ready line: {lines}\n{self.process.stderr.read()}"
            lines.append(line.rstrip("\n"))
        self.ready_line = lines[-1]
        self.rows = {row.id: row for row in parse_table(lines[:-1])}
        self.host_key = public_key_line(persistent_host_key(config.parent / "devices.key"))

    def workers(self) -> list[int]:
        return [pid for pid, parent in processes().items() if parent == self.process.pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()


def processes() -> dict[int, int]:
    """Every live process's parent, by pid (Linux /proc)."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                found[int(entry.name)] = int(fields[1])
    return found


@pytest.fixture
def level(tmp_path):
    running = Level(deployment(tmp_path))
    try:
        yield running
    finally:
        running.stop()
        assert not set(running.workers()), "a worker outlived the level"


def test_every_device_answers_on_its_port_over_two_workers_with_its_host_key_pinned(level):
    topology = default_topology()
    assert [row for row in level.rows] == [d for d, _ in device_builders(topology, None)]
    assert f"({len(level.rows)} devices)" in level.ready_line
    assert len({row.port for row in level.rows.values()}) == len(level.rows)
    assert len(level.workers()) == 2

    async def check() -> None:
        for row in level.rows.values():
            async with await NetconfClient.connect("127.0.0.1", row.port, "monitor", "monitor", timeout=20,
                                                   known_hosts=trusted_host_keys(level.host_key)) as nc:
                advertised = {module for capability in nc.server_capabilities
                              for module in re.findall(r"module=([\w-]+)", capability)}
                assert set(row.modules) <= advertised, row.id
                assert len(await nc.get()), row.id
        other = public_key_line(asyncssh_key())
        with pytest.raises(UntrustedHostKey):
            await NetconfClient.connect("127.0.0.1", level.rows["km-norte"].port, "monitor", "monitor",
                                        known_hosts=trusted_host_keys(other), timeout=20)
    asyncio.run(check())


def asyncssh_key():
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519")


def test_keys_flow_between_key_managers_of_different_workers(level):
    shares = split_devices(default_topology(), list(level.rows), 2)
    worker_of = {device: index for index, share in enumerate(shares) for device in share}
    assert len({worker_of[km] for km in PATH}) == 2   # the path crosses from one worker to the other
    urls = {row.id: row.etsi014_url for row in level.rows.values() if row.etsi014_url}
    pinned = trusted_host_keys(level.host_key)

    async def scenario() -> None:
        async def edit(device: str, config: str) -> None:
            async with await NetconfClient.connect("127.0.0.1", level.rows[device].port, "admin", "admin",
                                                   known_hosts=pinned, timeout=20) as nc:
                await nc.edit_config(config)

        await edit("sw-norte", cross_connects())
        for node in ("qkd-quintin", "qkd-almagro", "qkd-norte", "qkd-distrito"):
            await edit(node, phys_links(node))
        for km in reversed(PATH):
            await edit(km, key_manager(km, urls))
        async with aiohttp.ClientSession() as http:
            async def call(url: str, sae: str, body: dict | None = None) -> tuple[int, dict]:
                method = "POST" if body is not None else "GET"
                async with http.request(method, url, headers={SAE_HEADER: sae}, json=body) as response:
                    return response.status, await response.json()

            quintin, distrito = f"{urls['km-quintin']}/api/v1/keys", f"{urls['km-distrito']}/api/v1/keys"
            async with asyncio.timeout(40):
                while (await call(f"{quintin}/sae-distrito/status", "sae-quintin"))[1].get(
                        "stored_key_count", 0) < SESSION_BURST // 256:
                    await asyncio.sleep(0.2)
            status, sent = await call(f"{quintin}/sae-distrito/enc_keys", "sae-quintin", {"number": 2})
            assert status == 200, sent
            ids = [{"key_ID": k} for k in keys_of(sent)]
            status, received = await call(f"{distrito}/sae-quintin/dec_keys", "sae-distrito", {"key_IDs": ids})
            assert status == 200 and keys_of(received) == keys_of(sent), received
            status, again = await call(f"{distrito}/sae-quintin/dec_keys", "sae-distrito", {"key_IDs": ids[:1]})
            assert status == 400 and "already delivered" in again["message"]
        async with await NetconfClient.connect("127.0.0.1", level.rows["km-almagro"].port, "monitor", "monitor",
                                               known_hosts=pinned, timeout=20) as nc:
            relay = (await nc.get(("subtree", f'<key-manager xmlns="{KM_NS}"/>')))[0]
        assert km_leaf(relay, "relay-statistics/relayed-keys") == "2"   # over the boundary between workers
    asyncio.run(scenario())


def test_killing_the_parent_with_sigkill_leaves_no_worker_behind(tmp_path):
    running = Level(deployment(tmp_path))
    try:
        workers = running.workers()
        assert len(workers) == 2
        os.kill(running.process.pid, signal.SIGKILL)
        running.process.wait(10)
        deadline = time.monotonic() + 10
        while set(workers) & set(processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(workers) & set(processes()), "a worker outlived its parent"
    finally:
        running.stop()
        for pid in running.workers():
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("value, said", [(0, "the number 0"), (-3, "the number -3"), (True, "true"),
                                         ("two", "the string 'two'"), (1.5, "the number 1.5")])
def test_a_bad_workers_value_is_refused_with_its_key_path(tmp_path, value, said):
    path = deployment(tmp_path, value)
    with pytest.raises(DeploymentError) as refused:
        load_deployment(path)
    assert refused.value.problems == [f"{path}: devices.workers: must be a whole number >= 1 (the processes the "
                                      f"devices are spread over; 1: this process alone), got {said}"]


def test_a_bad_workers_option_is_refused(capsys):
    assert cli.main(["devices", "up", "--workers", "0"]) == 2
    assert "qstrata devices up: --workers must be >= 1, got 0" in capsys.readouterr().err


def test_the_split_keeps_each_site_together_and_the_shares_balanced():
    from devices.topology import generate_topology, parse_topology

    topology = parse_topology(generate_topology(100), "generated")
    ids = [d for d, _ in device_builders(topology, None)]
    site_of = {d.id: d.site for d in (*topology.qkd_nodes, *topology.key_managers)}
    for workers in (2, 3, 7):
        shares = split_devices(topology, ids, workers)
        assert len(shares) == workers and sorted(sum(shares, [])) == sorted(ids)
        assert max(map(len, shares)) - min(map(len, shares)) <= 2
        where = {device: index for index, share in enumerate(shares) for device in share}
        assert all(where[f"km-{site[5:]}"] == where[f"qkd-{site[5:]}"] for site in set(site_of.values()))
    few = ["fibre-plant", "qkd-001", "km-001"]
    assert split_devices(topology, few, 8) == [["fibre-plant"], ["qkd-001", "km-001"]]  # no more shares than groups

