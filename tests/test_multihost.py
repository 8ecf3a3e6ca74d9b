"""Every level on a host of its own (issue 14), the hosts being network namespaces this test
makes (ip netns, veth, a bridge) and removes:

    site-a        10.213.0.1   the twin service; the fibre plant, the switches and the QKD nodes and
                               key managers of quintin, concepcion and almagro (one devices process)
    site-b        10.213.0.2   the QKD nodes and key managers of norte, distrito and montegancedo
    controllers   10.213.0.3   connectivity, forwarding and service controllers (a process each)
    orchestrator  10.213.0.4   the orchestrator
    client        10.213.0.10  the bridge joining them; the operator's and the SAEs' tools

Each level is its own OS process (`qstrata run LEVEL --config FILE`, each with its deployment
file), under one supervisor. The operator pushes an intent with `qstrata intent apply`; the two
SAEs fetch keys with curl over ETSI 014 with their client certificates. Then the forwarding
controller and site-b's devices (with the destination SAE's key manager) are killed with
SIGKILL: both are restarted, the intent is active again, a key stored before the crash is
still delivered, none is delivered twice, and new keys match at both ends.
"""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from test_processes import child_env

SUBNET = "10.213.0"
HOSTS = {"site-a": 1, "site-b": 2, "controllers": 3, "orchestrator": 4}
CLIENT = 10
SITE_B = {"qkd-norte", "qkd-distrito", "qkd-montegancedo", "km-norte", "km-distrito", "km-montegancedo"}
CONTROLLERS = ("connectivity", "forwarding", "service")
MASTER, SLAVE = ("sae-quintin", "km-quintin"), ("sae-distrito", "km-distrito")
INTENT = """\
intents:
  - name: quintin-distrito
    endpoints: {source-sae: sae-quintin, destination-sae: sae-distrito}
    min-rate: 1000
"""
START_S, ACTIVE_S = 180.0, 90.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host] if host in HOSTS else CLIENT}"


class Lan:
    """The namespaces: one per host, and the client's, which holds the bridge."""

    def __init__(self) -> None:
        self.prefix = f"qs{os.getpid()}"
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def make(self) -> None:
        client = self.ns("client")
        self._ip("netns", "add", client)
        self.made.append(client)
        self._ip("-n", client, "link", "add", "br0", "type", "bridge")
        self._ip("-n", client, "addr", "add", f"{address('client')}/24", "dev", "br0")
        for index, host in enumerate(HOSTS):
            ns = self.ns(host)
            self._ip("netns", "add", ns)
            self.made.append(ns)
            self._ip("-n", client, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("-n", client, "link", "set", f"v{index}", "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{address(host)}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", client, "link", "set", "br0", "up")
        self._ip("-n", client, "link", "set", "lo", "up")

    def remove(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.made.clear()

    def run(self, host: str, *argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *argv], capture_output=True, text=True,
                              timeout=timeout, check=check, env=child_env())

    @staticmethod
    def _ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@pytest.fixture
def lan():
    network = Lan()
    try:
        network.make()
        yield network
    finally:
        network.remove()
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(network.prefix)]


def host_of(level: str, device: str | None = None) -> str:
    if level == "devices":
        return "site-b" if device in SITE_B else "site-a"
    return "orchestrator" if level == "orchestrator" else "controllers"


def split_deployments(state: pathlib.Path) -> dict[str, pathlib.Path]:
    """`qstrata up`'s deployments (all on 127.0.0.1), moved onto the hosts: every level listens
    on its host's address and reaches its peers at theirs; the devices split in two processes
    over a twin service of their own."""
    deployments = state / "deployments"
    load = lambda level: yaml.safe_load((deployments / f"{level}.yaml").read_text())  # noqa: E731
    token = state / "twin.token"
    token.write_text(os.urandom(16).hex())
    token.chmod(0o600)
    twin_port = free_port()
    files = {"twin": deployments / "twin.yaml"}
    files["twin"].write_text(yaml.safe_dump({"level": "twin", "listen": {"address": address("site-a"), "port": twin_port},
                                             "twin": {"token_file": str(token)}}))
    devices = load("devices")
    everything = list(devices["devices"]["ports"])
    for host in ("site-a", "site-b"):
        part = dict(devices, listen={**devices["listen"], "address": address(host)})
        part["devices"] = {k: v for k, v in devices["devices"].items() if k != "speed"}
        part["devices"]["run"] = [d for d in everything if host_of("devices", d) == host]
        part["devices"]["twin"] = {"address": address("site-a"), "port": twin_port, "token_file": str(token)}
        part["state_dir"] = f"{devices['state_dir']}-{host}"  # the processes' device state apart
        files[f"devices-{host}"] = deployments / f"devices-{host}.yaml"
        files[f"devices-{host}"].write_text(yaml.safe_dump(part))
    for level in CONTROLLERS + ("orchestrator",):
        data = load(level)
        data["listen"]["address"] = address(host_of(level))
        for peer in data.get("peers", []):
            kind = "devices" if peer["name"] in everything else peer["name"]
            peer["address"] = address(host_of(kind, peer["name"]))
        files[level] = deployments / f"{level}.yaml"
        files[level].write_text(yaml.safe_dump(data))
    return files


def free_port() -> int:
    from tools.cmd_up import _free_ports

    return _free_ports(1, set())[0]


async def supervise(lan: Lan, files: dict[str, pathlib.Path], logs: pathlib.Path):
    from tools.cmd_run import READY
    from tools.supervisor import Program, Supervisor

    hosts = {"twin": "site-a", "devices-site-a": "site-a", "devices-site-b": "site-b",
             **{level: host_of(level) for level in CONTROLLERS + ("orchestrator",)}}
    programs = [Program(name, ("ip", "netns", "exec", lan.ns(hosts[name]), sys.executable, "-m", "tools.cli", "run",
                               name.split("-")[0], "--config", str(path)),
                        ready=READY, log_file=logs / f"{name}.log")
                for name, path in files.items()]
    said: list[str] = []
    supervisor = Supervisor(programs, say=said.append)
    await supervisor.start(timeout=START_S)
    return supervisor, said


class Operator:
    """The client host's tools: `qstrata intent` and curl as the SAEs."""

    def __init__(self, lan: Lan, tmp: pathlib.Path, plan, rows: dict) -> None:
        self.lan, self.tmp, self.plan, self.rows = lan, tmp, plan, rows
        orchestrator = rows["orchestrator"]
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text(f"[{address('orchestrator')}]:{orchestrator.port} {orchestrator.host_key}\n")
        self.login = ["--host", address("orchestrator"), "--port", str(orchestrator.port),
                      "--user", orchestrator.read_write[0], f"--password={orchestrator.read_write[1]}",
                      "--known-hosts", str(self.known_hosts), "--stack-file", str(tmp / "none.json")]

    def intent(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lan.run("client", sys.executable, "-m", "tools.cli", "intent", *argv, *self.login,
                            check=check, timeout=120)

    def wait_active(self, timeout: float = ACTIVE_S) -> str:
        deadline, shown = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            shown = self.intent("show", "quintin-distrito", check=False).stdout
            if "\nstate active" in shown:
                return shown
            time.sleep(1)
        raise AssertionError(f"the intent is not active within {timeout:g} s:\n{shown}")

    def etsi014(self, sae: tuple[str, str], path: str, body: dict | None = None) -> tuple[int, dict]:
        """curl as SAE sae[0] to its key manager sae[1], by the key manager's name (its
        certificate names it), resolved to its host's address."""
        sae_id, km = sae
        credential = self.plan.pki.sae(sae_id)
        port = int(self.rows[km].etsi014_url.rsplit(":", 1)[1])
        argv = ["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", "--cacert", str(self.plan.pki.ca.ca_file),
                "--cert", str(credential.cert_file), "--key", str(credential.key_file),
                "--resolve", f"{km}:{port}:{address(host_of('devices', km))}", f"https://{km}:{port}{path}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        out = self.lan.run("client", *argv).stdout
        text, status = out.rsplit("\n", 1)
        return int(status), json.loads(text) if text.strip() else {}

    def enc_keys(self, number: int, timeout: float = ACTIVE_S) -> list[dict]:
        """Keys for the master SAE, once its key manager has them to give (503 while a path
        is being restored)."""
        deadline = time.monotonic() + timeout
        while True:
            status, answer = self.etsi014(MASTER, f"/api/v1/keys/{SLAVE[0]}/enc_keys", {"number": number, "size": 256})
            if status != 503 or time.monotonic() > deadline:
                assert status == 200, answer
                return answer["keys"]
            time.sleep(1)

    def dec_keys(self, key_ids: list[str]) -> tuple[int, dict]:
        return self.etsi014(SLAVE, f"/api/v1/keys/{MASTER[0]}/dec_keys",
                            {"key_IDs": [{"key_ID": k} for k in key_ids]})


def test_every_level_on_its_own_host_survives_the_loss_of_a_controller_and_a_key_manager(lan, tmp_path):
    from devices.topology import default_topology
    from tools.cmd_up import plan_stack

    state = tmp_path / "state"
    plan = plan_stack(default_topology(), None, state, 1.0, 0, False, False)
    files = split_deployments(state)
    rows = {row.name: row for row in plan.rows}
    operator = Operator(lan, tmp_path, plan, rows)
    (tmp_path / "intent.yaml").write_text(INTENT)

    async def scenario() -> None:
        supervisor, said = await supervise(lan, files, state / "logs")
        try:
            await asyncio.to_thread(operator.intent, "apply", str(tmp_path / "intent.yaml"))
            shown = await asyncio.to_thread(operator.wait_active)
            assert "path 0 (in use): qkd-quintin" in shown

            keys = await asyncio.to_thread(operator.enc_keys, 2)
            status, fetched = await asyncio.to_thread(operator.dec_keys, [keys[0]["key_ID"]])
            assert status == 200 and fetched["keys"] == [keys[0]]           # the same key at both ends
            status, again = await asyncio.to_thread(operator.dec_keys, [keys[0]["key_ID"]])
            assert status == 400, again                                      # and only once

            for name in ("forwarding", "devices-site-b"):
                pid = supervisor.pid(name)
                os.kill(pid, 9)
                async with asyncio.timeout(60):
                    while supervisor.pid(name) in (None, pid) or supervisor.deaths(name) < 1:
                        await asyncio.sleep(0.2)
                await supervisor.wait_ready(name, 60)
            assert any("forwarding" in line and "SIGKILL" in line for line in said), said
            assert any("devices-site-b" in line and "SIGKILL" in line for line in said), said
            assert supervisor.deaths("orchestrator") == supervisor.deaths("devices-site-a") == 0

            await asyncio.to_thread(operator.wait_active)
            # Stored at km-distrito before its process was killed: delivered now, once.
            status, fetched = await asyncio.to_thread(operator.dec_keys, [keys[1]["key_ID"]])
            assert status == 200 and fetched["keys"] == [keys[1]]
            status, again = await asyncio.to_thread(operator.dec_keys, [keys[0]["key_ID"], keys[1]["key_ID"]])
            assert status == 400, again
            fresh = await asyncio.to_thread(operator.enc_keys, 3)
            status, fetched = await asyncio.to_thread(operator.dec_keys, [k["key_ID"] for k in fresh])
            assert status == 200 and fetched["keys"] == fresh
            assert not {k["key"] for k in fresh} & {k["key"] for k in keys}
        finally:
            await supervisor.stop()
    asyncio.run(scenario())
