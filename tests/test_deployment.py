"""Deployment files (tools/deployment.py): every kind of mistake is reported with the file, the
key path and what is wrong, and a deployment that `qstrata up` generates reads back the same."""
from __future__ import annotations

import copy
import pathlib
import stat

import asyncssh
import pytest
import yaml

from devices.topology import default_topology
from netconf_core import public_key_line
from tools import cli
from tools.deployment import (DeploymentError, ForwardingPart, deployment_data, endpoint, load_deployment,
                              netconf_users, write_deployment)


@pytest.fixture
def keys(tmp_path) -> dict[str, object]:
    """A host key file of the level, and the public lines of two peers' host keys."""
    host = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "forwarding.key").write_bytes(host.export_private_key())
    client = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "client.key").write_bytes(client.export_private_key())
    return {"host": host, "node": public_key_line(asyncssh.generate_private_key("ssh-ed25519")),
            "connectivity": public_key_line(asyncssh.generate_private_key("ssh-ed25519")),
            "monitor": public_key_line(client)}


def forwarding(keys) -> dict:
    return {
        "level": "forwarding",
        "listen": {"address": "127.0.0.1", "port": 8832, "host_key_file": "forwarding.key"},
        "users": [{"name": "admin", "access": "read-write", "password": "s3cret"},
                  {"name": "monitor", "access": "read-only", "authorized_keys": [keys["monitor"]]}],
        "state_dir": "state",
        "peers": [{"name": "qkd-a", "address": "127.0.0.1", "port": 8301, "user": "admin", "password": "pw",
                   "host_key": keys["node"]},
                  {"name": "qkd-b", "address": "127.0.0.1", "port": 8302, "user": "admin",
                   "private_key_file": "client.key", "host_key": keys["node"]},
                  {"name": "connectivity", "address": "127.0.0.1", "port": 8831, "user": "admin", "password": "pw",
                   "host_key": keys["connectivity"]}],
        "forwarding": {"connectivity": "connectivity", "km_by_site": {"a": "km-a"}},
    }


def write(tmp_path: pathlib.Path, data: object, name: str = "forwarding.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def problems(path: pathlib.Path) -> list[str]:
    with pytest.raises(DeploymentError) as caught:
        load_deployment(path)
    return caught.value.problems


def test_a_good_file_gives_the_level_its_users_and_pinned_peers(tmp_path, keys):
    deployment = load_deployment(write(tmp_path, forwarding(keys)))
    assert (deployment.level, deployment.name, deployment.listen.port) == ("forwarding", "forwarding", 8832)
    assert deployment.listen.host_key_file == tmp_path / "forwarding.key"   # relative to the file
    assert deployment.state_dir == tmp_path / "state"
    assert [p.name for p in deployment.device_peers()] == ["qkd-a", "qkd-b"]
    assert deployment.part == ForwardingPart("connectivity", {"a": "km-a"})
    users = netconf_users(deployment)
    assert users["admin"].password == "s3cret" and users["monitor"].authorized_keys == [keys["monitor"]]
    assert deployment.access("read-write") == ("admin",) and deployment.access("read-only") == ("monitor",)
    link = endpoint(deployment.peer("qkd-b"))
    assert (link.host, link.port, link.username, link.host_key) == ("127.0.0.1", 8302, "admin", keys["node"])
    assert link.client_keys == (str(tmp_path / "client.key"),) and link.password is None


def _set(data: dict, path: tuple, value: object) -> None:
    *parents, last = path
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()
MISTAKES = [
    # (key path to change, new value, the message expected)
    (("listen", "port"), _DELETE, "listen.port: missing"),
    (("listen", "port"), "8832", "listen.port: must be a port number, got the string '8832'"),
    (("listen", "port"), 70000, "listen.port: bad port 70000: must be within 0..65535"),
    (("peers", 1, "port"), 0, "peers[1].port: bad port 0: must be within 1..65535"),
    (("peers", 2, "hostkey"), "x", "peers[2].hostkey: unknown key (expected: name, address, port, user"),
    (("peers", 2, "host_key"), "ssh-ed25519 nonsense", "peers[2].host_key: not an OpenSSH public key line"),
    (("peers", 0, "host_key"), _DELETE, "peers[0]: its host key is not pinned: give host_key"),
    (("peers", 0, "known_hosts"), "nowhere/known_hosts", "peers[0].known_hosts: no such file"),
    (("peers", 0, "password"), _DELETE, "peers[0]: no way to log in"),
    (("peers", 1, "private_key_file"), "forwarding.yaml", "peers[1].private_key_file: not an OpenSSH private key"),
    (("listen", "host_key_file"), "missing.key", "listen.host_key_file: no such file"),
    (("users", 0, "access"), "superuser", "users[0].access: must be one of read-write, read-only, got 'superuser'"),
    (("users", 1, "authorized_keys"), "ssh-ed25519 AAAA", "users[1].authorized_keys: must be a list"),
    (("users",), [], "users: must be a non-empty list of users"),
    (("forwarding", "connectivity"), "nobody", "forwarding.connectivity: no peer named 'nobody' in peers"),
    (("forwarding",), _DELETE, "forwarding: missing"),
    (("forwarding", "km_by_site"), {"a": 1}, "forwarding.km_by_site: must map each site"),
    (("level",), "router", "level: must be one of devices, connectivity, forwarding, service, orchestrator"),
    (("colour",), "blue", "colour: unknown key"),
    (("peers",), {"qkd-a": None}, "peers: must be a list of peers, got a mapping"),
]


@pytest.mark.parametrize("path, value, message", MISTAKES, ids=[m[2].split(":")[0] for m in MISTAKES])
def test_each_mistake_is_named_by_file_and_key_path(tmp_path, keys, path, value, message):
    data = forwarding(keys)
    _set(data, path, value)
    found = problems(write(tmp_path, data))
    file = str(tmp_path / "forwarding.yaml")
    assert any(p.startswith(f"{file}: {message}") for p in found), found
    assert all(p.startswith(f"{file}: ") for p in found)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path, keys):
    data = forwarding(keys)
    data["listen"]["port"] = -1
    data["peers"][0]["port"] = "x"
    del data["peers"][2]["user"]
    found = problems(write(tmp_path, data))
    assert [p.split(": ")[1] for p in found] == ["listen.port", "peers[0].port", "peers[2].user"]


def test_duplicate_names_and_files_that_are_not_deployments(tmp_path, keys):
    data = forwarding(keys)
    data["peers"][1]["name"] = "qkd-a"
    assert any("peers[1].name: peer 'qkd-a' appears twice" in p for p in problems(write(tmp_path, data)))
    assert problems(write(tmp_path, "level: [unclosed", "bad.yaml"))[0].startswith(
        f"{tmp_path / 'bad.yaml'}: not valid YAML")
    assert problems(write(tmp_path, "- a list", "list.yaml")) == [
        f"{tmp_path / 'list.yaml'}: (top): must be a mapping with level, listen and users, got a list"]
    assert problems(tmp_path / "absent.yaml")[0].startswith(f"{tmp_path / 'absent.yaml'}: cannot read")


def test_device_and_orchestrator_sections_are_checked_against_what_they_name(tmp_path, keys):
    devices = {"level": "devices", "listen": {"address": "127.0.0.1", "port": 1, "host_key_file": "forwarding.key"},
               "users": [{"name": "admin", "access": "read-write", "password": "pw"}],
               "devices": {"ports": {"qkd-quintin": {"netconf": 8301}, "qkd-mars": {"netconf": 8302},
                                     "fibre-plant": {"netconf": 8300, "etsi014": 8400}}}}
    found = problems(write(tmp_path, devices, "devices.yaml"))
    assert [p.split(": ", 1)[1] for p in found] == [
        "listen.port: not used by the devices level: each device's ports are under devices.ports",
        "devices.etsi014: missing"]
    devices["listen"].pop("port")
    devices["devices"]["etsi014"] = {"insecure_http": True}
    found = problems(write(tmp_path, devices, "devices.yaml"))
    assert sorted(p.split(": ", 1)[1] for p in found) == [
        "devices.ports.fibre-plant.etsi014: only a key manager serves ETSI 014",
        "devices.ports.qkd-mars: no such device in topology madrid"]
    devices["devices"]["etsi014"] = {"ca_file": "forwarding.key", "key_managers": {}}
    found = problems(write(tmp_path, devices, "devices.yaml"))
    assert f"{tmp_path / 'devices.yaml'}: devices.etsi014.key_managers.km-quintin: missing: every key manager " \
           f"needs a certificate" in found

    orchestrator = copy.deepcopy(forwarding(keys))
    orchestrator["level"] = "orchestrator"
    found = problems(write(tmp_path, orchestrator, "orchestrator.yaml"))
    assert f"{tmp_path / 'orchestrator.yaml'}: state_dir: unknown key (expected: level, listen, users, orchestrator, " \
           f"name, peers)" in found   # its datastores live with its intent store
    assert f"{tmp_path / 'orchestrator.yaml'}: orchestrator: missing" in found
    del orchestrator["forwarding"], orchestrator["state_dir"]
    orchestrator["orchestrator"] = {"service": "qkd-a", "forwarding": "qkd-b", "connectivity": "connectivity"}
    orchestrator["users"][0]["access"] = "intent-writer"
    found = problems(write(tmp_path, orchestrator, "orchestrator.yaml"))
    assert [p.split(": ", 1)[1] for p in found] == ["orchestrator.intent_store: missing"]
    orchestrator["orchestrator"].update(service="connectivity", intent_store="intents")
    found = problems(write(tmp_path, orchestrator, "orchestrator.yaml"))
    assert [p.split(": ", 1)[1] for p in found] == [
        "peers[0]: the orchestrator's peers are its three controllers; 'qkd-a' is none of orchestrator.service, "
        ".forwarding, .connectivity"]
    # roaming: the federation platform is a peer the section names, and the member id a string
    orchestrator["orchestrator"].update(service="qkd-a", platform="platform", member_id="")
    found = problems(write(tmp_path, orchestrator, "orchestrator.yaml"))
    assert sorted(p.split(": ", 1)[1] for p in found) == [
        "orchestrator.member_id: must be a non-empty string, got the string ''",
        "orchestrator.platform: no peer named 'platform' in peers (peers: connectivity, qkd-a, qkd-b)"]
    orchestrator["peers"].append(dict(orchestrator["peers"][0], name="platform"))
    orchestrator["orchestrator"].update(member_id="A")
    read = load_deployment(write(tmp_path, orchestrator, "orchestrator.yaml"))
    assert (read.part.platform, read.part.member_id, read.peer("platform").name) == ("platform", "A", "platform")


def test_qstrata_run_refuses_a_bad_file_with_its_problems(tmp_path, keys, capsys):
    data = forwarding(keys)
    data["listen"]["port"] = "http"
    assert cli.main(["run", "forwarding", "--config", str(write(tmp_path, data))]) == 1
    assert f"{tmp_path / 'forwarding.yaml'}: listen.port: must be a port number" in capsys.readouterr().err
    assert cli.main(["run", "service", "--config", str(write(tmp_path, forwarding(keys)))]) == 1
    assert "level: the file deploys the forwarding level, not service" in capsys.readouterr().err


def test_a_generated_stack_reads_back_the_same_and_pins_every_host_key(tmp_path):
    from tools.cmd_up import LEVEL_ORDER, plan_stack

    state = tmp_path / "state"
    plan = plan_stack(default_topology(), None, state, 2.0, 0, demo_credentials=False, insecure_sae_header=False)
    loaded = {level: load_deployment(plan.config(level)) for level in LEVEL_ORDER}
    for level, deployment in loaded.items():
        assert stat.S_IMODE(plan.config(level).stat().st_mode) == 0o600
        again = tmp_path / "copy" / f"{level}.yaml"
        write_deployment(again, deployment)
        assert load_deployment(again) == deployment
        assert deployment_data(load_deployment(again), again.parent) == deployment_data(deployment, again.parent)
    public = {level: public_key_line(asyncssh.read_private_key(str(d.listen.host_key_file)))
              for level, d in loaded.items()}
    rows = {row.name: row for row in plan.rows}
    for level, deployment in loaded.items():
        for peer in deployment.peers:
            owner = peer.name if peer.name in public else "devices"
            assert peer.host_key == public[owner], (level, peer.name)
            assert (peer.address, peer.port) == (rows[peer.name].host, rows[peer.name].port)
    assert loaded["devices"].part.speed == 2.0 and not loaded["devices"].part.etsi014.insecure_http
    assert set(loaded["devices"].part.etsi014.key_managers) == {km.id for km in default_topology().key_managers}
    passwords = {u.name: u.password for u in loaded["orchestrator"].users}
    assert passwords["admin"] != "admin" and len(passwords["admin"]) >= 12   # generated per stack
    # A second plan on the same state directory keeps every port, key and password.
    second = plan_stack(default_topology(), None, state, 2.0, 0, demo_credentials=False, insecure_sae_header=False)
    assert [(r.name, r.port, r.host_key, r.read_write) for r in second.rows] == \
           [(r.name, r.port, r.host_key, r.read_write) for r in plan.rows]


def test_the_examples_of_the_documentation_are_valid_deployments(tmp_path):
    """Each YAML example of docs/deployment.md loads, once the files it names exist."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    examples = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    assert len(examples) >= 2

    def files(node: object) -> list[tuple[str, str]]:
        if isinstance(node, dict):
            named = [(k, v) for k, v in node.items()
                     if isinstance(v, str) and (k.endswith("_file") or k == "known_hosts")]
            return named + [f for v in node.values() for f in files(v)]
        return [f for v in node for f in files(v)] if isinstance(node, list) else []

    for index, example in enumerate(examples):
        directory = tmp_path / str(index)
        for key, name in files(yaml.safe_load(example)):
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            key_file = key in ("host_key_file", "private_key_file", "key_file", "client_key_file")
            path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key() if key_file else b"x\n")
        deployment = load_deployment(write(directory, example, "example.yaml"))
        assert deployment.users or deployment.level == "federation-agent"   # an agent serves nothing
        assert deployment.level in ("devices", "federation") or deployment.peers


# --- the federation's two levels --------------------------------------------------------------

def federation_files(tmp_path: pathlib.Path, keys) -> tuple[dict, dict]:
    """A good platform deployment and a good agent deployment (domain A of federation.yaml)."""
    (tmp_path / "platform-client.key").write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    (tmp_path / "member.key").write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    platform = {
        "level": "federation",
        "listen": {"address": "127.0.0.1", "port": 8900, "host_key_file": "forwarding.key"},
        "users": [{"name": "admin", "access": "admin", "password": "a"},
                  {"name": "enrol", "access": "enrolment", "password": "e"},
                  {"name": "users-A", "access": "service", "password": "u"}],
        "state_dir": "platform",
        "federation": {"client_key_file": "platform-client.key", "members": [{"id": "A", "host_key": keys["node"]}]},
    }
    peer = {"address": "127.0.0.1", "user": "admin", "password": "pw", "host_key": keys["node"]}
    agent = {
        "level": "federation-agent",
        "peers": [{"name": "platform", "port": 8900, **peer, "user": "enrol"},
                  {"name": "forwarding", "port": 8832, **peer}, {"name": "orchestrator", "port": 8830, **peer},
                  {"name": "km-a2", "port": 8311, **peer}],
        "federation-agent": {
            "member_id": "A", "key_file": "member.key", "platform": "platform", "forwarding": "forwarding",
            "orchestrator": "orchestrator", "capacity_share": 0.5, "service_users": ["users-A"],
            "border_links": [{"link_id": "a2-b1", "local_node": "qkd-a2", "local_interface": 1,
                              "peer_member": "B", "peer_node": "qkd-b1"}],
            "saes": [{"id": "sae-a", "km": "km-a1"}],
            "border_key_managers": {"km-a2": {"km-b1": "https://127.0.0.1:8412"}}},
    }
    return platform, agent


def test_federation_files_read_back_the_same(tmp_path, keys):
    platform, agent = federation_files(tmp_path, keys)
    for data, name in ((platform, "platform.yaml"), (agent, "agent.yaml")):
        deployment = load_deployment(write(tmp_path, data, name))
        again = tmp_path / "copy" / name
        write_deployment(again, deployment)
        assert load_deployment(again) == deployment
    loaded = load_deployment(tmp_path / "agent.yaml")
    assert loaded.listen is None and not loaded.users
    assert [p.name for p in loaded.device_peers()] == ["km-a2"]      # the platform and levels are roles
    assert loaded.part.border_key_managers == {"km-a2": {"km-b1": "https://127.0.0.1:8412"}}
    pinned = load_deployment(tmp_path / "platform.yaml").part.members
    assert [(m.id, m.host_key) for m in pinned] == [("A", keys["node"])]


FEDERATION_MISTAKES = [
    ("platform", ("users", 2, "access"), "admin", "users: the platform has exactly one user with access admin, got 2"),
    ("platform", ("users", 1, "name"), "enrolment", "users[1].name: the enrolment account is named 'enrol'"),
    ("platform", ("users", 2, "access"), "read-write", "users[2].access: must be one of admin, enrolment, service"),
    ("platform", ("federation", "members", 0, "host_key"), _DELETE,
     "federation.members[0]: pin the member's orchestrator host key"),
    ("platform", ("federation", "members", 0, "host_key"), "ssh-ed25519 nonsense",
     "federation.members[0].host_key: not an OpenSSH public key line"),
    ("platform", ("peers",), [], "peers: unknown key"),
    ("platform", ("federation", "client_key_file"), "missing.key", "federation.client_key_file: no such file"),
    ("agent", ("federation-agent", "forwarding"), "fwd",
     "federation-agent.forwarding: no peer named 'fwd' in peers"),
    ("agent", ("peers", 0, "password"), _DELETE,
     "peers[0]: the platform peer is the enrolment account an applicant logs in as"),
    ("agent", ("federation-agent", "capacity_share"), 2,
     "federation-agent.capacity_share: must be a number within 0..1"),
    ("agent", ("federation-agent", "border_key_managers"), {"km-z": {"km-b1": "https://127.0.0.1:1"}},
     "federation-agent.border_key_managers.km-z: not one of the key managers in peers"),
    ("agent", ("federation-agent", "border_links", 0, "local_interface"), "one",
     "federation-agent.border_links[0].local_interface: must be an interface number"),
    ("agent", ("federation-agent", "topology"), "federation.yaml",
     "federation-agent.border_links: give the topology or list border_links and saes, not both"),
    ("agent", ("users",), [], "users: unknown key"),
]


@pytest.mark.parametrize("which, path, value, message", FEDERATION_MISTAKES,
                         ids=[m[3].split(":")[0] + "-" + str(i) for i, m in enumerate(FEDERATION_MISTAKES)])
def test_each_mistake_of_a_federation_file_is_named_by_key_path(tmp_path, keys, which, path, value, message):
    platform, agent = federation_files(tmp_path, keys)
    (tmp_path / "federation.yaml").write_text((pathlib.Path(__file__).resolve().parents[1] /
                                              "devices/topologies/federation.yaml").read_text())
    data = platform if which == "platform" else agent
    _set(data, path, value)
    found = problems(write(tmp_path, data, f"{which}.yaml"))
    assert any(p.startswith(f"{tmp_path / (which + '.yaml')}: {message}") for p in found), found


def test_an_agent_is_checked_against_its_topology(tmp_path, keys):
    _, agent = federation_files(tmp_path, keys)
    (tmp_path / "federation.yaml").write_text((pathlib.Path(__file__).resolve().parents[1] /
                                              "devices/topologies/federation.yaml").read_text())
    part = agent["federation-agent"]
    del part["border_links"], part["saes"]
    part["topology"] = "federation.yaml"
    assert load_deployment(write(tmp_path, agent, "agent.yaml")).part.topology == tmp_path / "federation.yaml"
    part["member_id"] = "Z"
    assert problems(write(tmp_path, agent, "agent.yaml")) == [
        f"{tmp_path / 'agent.yaml'}: federation-agent.member_id: no domain 'Z' in topology federation "
        "(domains: A, B, C, D)"]
    part["member_id"] = "B"   # km-a2 is A's, not B's
    assert any("'km-a2' is none of federation-agent.platform" in p
               for p in problems(write(tmp_path, agent, "agent.yaml")))
    del part["topology"]
    assert any("federation-agent: say what the member shares" in p
               for p in problems(write(tmp_path, agent, "agent.yaml")))


def test_qstrata_run_refuses_a_bad_federation_file(tmp_path, keys, capsys):
    platform, agent = federation_files(tmp_path, keys)
    platform["federation"]["members"] = [{"id": "A"}]
    assert cli.main(["run", "federation", "--config", str(write(tmp_path, platform, "platform.yaml"))]) == 1
    assert "federation.members[0]: pin the member's orchestrator host key" in capsys.readouterr().err
    assert cli.main(["run", "federation", "--config", str(write(tmp_path, agent, "agent.yaml"))]) == 1
    assert "the file deploys the federation-agent level, not federation" in capsys.readouterr().err
