"""The entanglement levels as processes of their own (issue 17): `qstrata up` of the embedded
entanglement network runs the fabric controller and the entanglement service controller as
`qstrata run fabric|entanglement`, from the deployments it writes, and the orchestrator as
their client. An entanglement intent applied at the orchestrator over NETCONF (host key
pinned, the generated credentials of qstrata-stack.json) goes active across the processes;
pairs are taken at both end nodes with the same ids; SIGTERM stops every process. Then the
deployment reader of the two levels: every mistake named by its key path."""
from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import pytest
import yaml

from models.intent import INTENTS_FILTER, read_intents
from netconf_core import public_key_line
from test_processes import ROOT, alive, children, session, stack_file, start_up, stop_up
from tools.demo_entanglement import ALICE, BOB, MIN_FIDELITY, NAME, intent_edit
from tools.deployment import DeploymentError, load_deployment
from tools.entanglement_client import EntanglementClient

LEVELS = {"devices", "connectivity", "forwarding", "service", "fabric", "entanglement", "orchestrator"}
START_S, ACTIVE_S = 90.0, 40.0


async def intent_when_active(row: dict) -> dict:
    async with await session(row) as nc:
        await nc.edit_config(intent_edit(NAME, MIN_FIDELITY), target="candidate")
        await nc.commit()
        intent: dict = {}
        try:
            async with asyncio.timeout(ACTIVE_S):
                while (intent := read_intents(await nc.get(("subtree", INTENTS_FILTER))).get(NAME, {})) \
                        .get("state") != "active":
                    await asyncio.sleep(0.3)
        except TimeoutError:
            raise AssertionError(f"intent {NAME} not active within {ACTIVE_S:g} s: {intent}") from None
        return intent


async def pairs_at_both_ends(rows: dict) -> tuple[list, list]:
    alice, bob = rows[ALICE], rows[BOB]
    async with await EntanglementClient.connect(alice["host"], alice["port"], *alice["read_write"],
                                                alice["host_key"]) as a, \
            await EntanglementClient.connect(bob["host"], bob["port"], *bob["read_write"], bob["host_key"]) as b:
        created = await a.create(BOB, number=5, min_fidelity=MIN_FIDELITY)
        return created, await b.receive(ALICE)


def test_up_runs_the_entanglement_levels_as_processes_and_delivers_pairs(tmp_path):
    up, out = start_up(tmp_path, str(ROOT / "devices" / "topologies" / "entanglement.yaml"), "--no-console",
                       "--workers", "1")
    started: dict[str, int] = {}
    try:
        out.wait_for(r"Wrote qstrata-stack\.json", START_S)
        started = children(up.pid)
        assert set(started) == LEVELS, started
        assert len(set(started.values())) == len(LEVELS)
        rows = stack_file(tmp_path)
        deployments = tmp_path / "state" / "deployments"
        assert {p.stem for p in deployments.iterdir()} == LEVELS
        orchestrator = yaml.safe_load((deployments / "orchestrator.yaml").read_text())
        assert orchestrator["orchestrator"]["entanglement"] == "entanglement"
        pinned = next(p for p in orchestrator["peers"] if p["name"] == "entanglement")
        assert (pinned["port"], pinned["host_key"]) == (rows["entanglement"]["port"], rows["entanglement"]["host_key"])
        assert rows["orchestrator"]["read_write"][1] != "admin"   # generated credentials

        intent = asyncio.run(intent_when_active(rows["orchestrator"]))
        path = intent["paths"][0]["nodes"]
        assert path[0] == ALICE and path[-1] == BOB and len(path) >= 3, path

        created, received = asyncio.run(pairs_at_both_ends(rows))
        assert len(created) == 5
        assert [p.pair_id for p in received] == [p.pair_id for p in created]
        assert all(p.goodness >= MIN_FIDELITY for p in created + received)
        stop_up(up, out, started)
        assert not (tmp_path / "qstrata-stack.json").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(30)
        for pid in started.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- the deployment files of the two levels ----------------------------------------------------

@pytest.fixture
def host_key(tmp_path) -> tuple[pathlib.Path, str]:
    from netconf_core import persistent_host_key

    path = tmp_path / "host.key"
    return path, public_key_line(persistent_host_key(path))


def deployment(level: str, key: tuple[pathlib.Path, str], section, peers=("qn-a", "qn-b", "conn")) -> dict:
    data = {"level": level, "listen": {"address": "127.0.0.1", "port": 0, "host_key_file": str(key[0])},
            "users": [{"name": "admin", "access": "read-write", "password": "pw"}],
            "peers": [{"name": name, "address": "127.0.0.1", "port": 830, "user": "admin", "password": "pw",
                       "host_key": key[1]} for name in peers]}
    if section is not None:
        data[level] = section
    return data


def problems(tmp_path: pathlib.Path, data: dict) -> list[str]:
    path = tmp_path / "level.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DeploymentError) as error:
        load_deployment(path)
    return [p.split(": ", 1)[1] for p in error.value.problems]


def test_fabric_and_entanglement_deployments_are_read_with_their_roles(tmp_path, host_key):
    path = tmp_path / "fabric.yaml"
    path.write_text(yaml.safe_dump(deployment("fabric", host_key, {"connectivity": "conn"})))
    fabric = load_deployment(path)
    assert fabric.part.connectivity == "conn" and [p.name for p in fabric.device_peers()] == ["qn-a", "qn-b"]
    path.write_text(yaml.safe_dump(deployment("fabric", host_key, None, peers=("qn-a",))))   # direct fibre
    assert load_deployment(path).part.connectivity is None
    path.write_text(yaml.safe_dump(deployment("entanglement", host_key, {"fabric": "conn"})))
    service = load_deployment(path)
    assert service.part.fabric == "conn" and [p.name for p in service.device_peers()] == ["qn-a", "qn-b"]


def test_fabric_and_entanglement_deployment_mistakes_are_named(tmp_path, host_key):
    assert problems(tmp_path, deployment("fabric", host_key, {"connectivity": "nowhere", "speed": 2})) == [
        "fabric.speed: unknown key (expected: connectivity)",
        "fabric.connectivity: no peer named 'nowhere' in peers (peers: conn, qn-a, qn-b)"]
    assert problems(tmp_path, deployment("entanglement", host_key, None)) == ["entanglement: missing"]
    assert problems(tmp_path, deployment("entanglement", host_key, {})) == ["entanglement.fabric: missing"]
    assert problems(tmp_path, deployment("entanglement", host_key, {"fabric": "fab"})) == [
        "entanglement.fabric: no peer named 'fab' in peers (peers: conn, qn-a, qn-b)"]
    orchestrator = deployment("orchestrator", host_key, {
        "service": "qn-a", "forwarding": "qn-b", "connectivity": "conn", "intent_store": "store",
        "entanglement": "ent"}, peers=("qn-a", "qn-b", "conn", "other"))
    assert problems(tmp_path, orchestrator) == [
        "orchestrator.entanglement: no peer named 'ent' in peers (peers: conn, other, qn-a, qn-b)",
        "peers[3]: the orchestrator's peers are its three controllers and its entanglement service controller; "
        "'other' is none of orchestrator.service, .forwarding, .connectivity, .entanglement"]
