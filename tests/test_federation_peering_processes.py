"""Direct peering as standing processes (issue 15): `qstrata up --peering A,B` runs the plant's
devices, domain A's and domain B's controllers and orchestrator, and each provider's peering
agent (level federation-peer), each its own `qstrata run` process, and no federation platform.
The two operators' agreement is proposed by A and taken by B over their agents; a user of A
then asks A's agent for keys between sae-a (A) and sae-b (B); both SAEs fetch matching keys
over ETSI GS QKD 014, relayed between the providers' key managers; both agents bill the same
keys on the agreement; SIGTERM stops every process.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import yaml

from models.federation import ServiceRequest, read_charging, read_disputes, read_service_statuses, service_config
from models.federation_peering import read_peering
from models.ns import FEDERATION
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.ssh import trusted_host_keys
from test_federation_peering import TOPOLOGY
from test_processes import ROOT, assert_ended, child_env, children, start_up, terminate
from tools.demo_steps import as_sae, exchange_keys
from tools.pki import client_context
from tools.stack import PKI_DIR, KeyDeliveryPki
from conftest import until

START_S, ACTIVE_S, STOP_S = 300.0, 120.0, 120.0   # generous: 11 processes on a shared machine


async def agent(info: dict, account: str) -> NetconfClient:
    """A session to a provider's peering agent (its row of qstrata-stack.json), host key pinned."""
    user, password = info[account]
    return await NetconfClient.connect(info["host"], info["port"], user, password=password,
                                       known_hosts=trusted_host_keys(info["host_key"]), timeout=20)


async def federation(nc: NetconfClient):
    return await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"/>'))


def test_up_peering_runs_two_providers_as_processes_that_deliver_keys_without_a_platform(tmp_path):
    topology = tmp_path / "peering.yaml"
    topology.write_text(yaml.safe_dump(TOPOLOGY))
    up, out = start_up(tmp_path, "--peering", "A,B", str(topology))
    processes: dict[str, int] = {}
    try:
        out.wait_for(r"^Ctrl-C stops\.$", START_S)
        processes = children(up.pid, by=b"--config")
        # the devices, each domain's four levels and its peering agent: one process each, no platform
        assert len(processes) == 1 + 2 * 5, sorted(processes)
        assert sum(config.endswith("federation-peer.yaml") for config in processes) == 2, sorted(processes)
        stack = json.loads((tmp_path / "qstrata-stack.json").read_text())
        assert "federation" not in stack and set(stack["peering"]) == {"A", "B"}
        assert "A and B peered under agreement A-B" in "\n".join(out.lines)
        urls = {row["name"]: row["etsi014_url"] for row in stack["levels"] if row.get("etsi014_url")}
        pki = KeyDeliveryPki(tmp_path / "state" / PKI_DIR)
        tls = lambda sae: client_context(pki.sae(sae))   # noqa: E731

        async def scenario() -> None:
            admins = [await agent(stack["peering"][d], "admin") for d in ("A", "B")]
            user_a, user_b = [await agent(stack["peering"][d], "service_user") for d in ("A", "B")]
            try:
                # `up` negotiated the agreement as both operators would: in force on both sides.
                for nc in admins:
                    peering = read_peering(await federation(nc))
                    assert [(a.agreement_id, a.status) for a in peering.agreements] == [("A-B", "agreed")], peering
                    assert peering.peer_reachable, peering
                # B's users may not ask A's agent for a service; A's may, and it comes up A -> B.
                service = service_config(ServiceRequest("s1", "A", "sae-a", "A", "sae-b", "B", 10000))
                try:
                    await user_b.edit_config(service)
                    raise AssertionError("B's service user wrote a service at B's agent that A pays for")
                except RPCError as error:
                    assert error.tag in ("access-denied", "invalid-value"), (error.tag, error.message)
                await user_a.edit_config(service)

                async def active():
                    s1 = read_service_statuses(await federation(user_a)).get("s1")
                    return s1 if s1 is not None and s1.status == "active" else None
                s1 = await until(active, "s1 active", timeout=ACTIVE_S, period=0.5)
                assert s1.route == ("A", "B"), s1
                async with aiohttp.ClientSession() as http:
                    ids, same = await exchange_keys(http, (urls["km-a1"], "sae-a"), (urls["km-b2"], "sae-b"), 4,
                                                    timeout=ACTIVE_S, tls=tls)
                    assert same and len(ids) == 4
                    async with http.post(f"{urls['km-b2']}/api/v1/keys/sae-a/dec_keys", **as_sae("sae-b", tls),
                                         json={"key_IDs": [{"key_ID": ids[0]}]}) as again:
                        assert again.status in (400, 404), again.status   # a key is never served twice

                # Both agents, by their own periodic reports, bill B's segment on the agreement, alike.
                async def billed():
                    books = []
                    for nc in admins:
                        data = await federation(nc)
                        assert not read_disputes(data), read_disputes(data)
                        books.append({(r.member_id, r.agreement): r.keys for r in read_charging(data).values()
                                      if r.service_id == "s1"})
                    return books[0] if books[0] == books[1] and books[0].get(("B", "A-B"), 0) >= 4 else None
                books = await until(billed, "both agents bill s1's keys on A-B", timeout=ACTIVE_S, period=1.0)
                assert set(books) == {("A", None), ("B", "A-B")} and books[("A", None)] == books[("B", "A-B")], books
            finally:
                for nc in (*admins, user_a, user_b):
                    nc.close()

        asyncio.run(scenario())
    finally:
        code = terminate(up, STOP_S)
    assert_ended(code, out, tmp_path, processes)


def test_up_peering_refuses_domains_that_cannot_peer(tmp_path):
    topology = tmp_path / "peering.yaml"
    topology.write_text(yaml.safe_dump(TOPOLOGY))
    for pair, problem in (("A,Z", "no domain 'Z' in topology peering (domains: A, B)"),
                          ("A,A", "give two different domains as A,B, got 'A,A'"),
                          ("A", "give two different domains as A,B, got 'A'")):
        done = subprocess.run([sys.executable, "-m", "tools.cli", "up", "--peering", pair, str(topology),
                               "--state-dir", str(tmp_path / "state")], cwd=tmp_path, env=child_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and f"qstrata up: --peering: {problem}" in done.stderr, (pair, done.stderr)
        assert not (tmp_path / "state").exists()
    federation_file = str(ROOT / "devices/topologies/federation.yaml")
    done = subprocess.run([sys.executable, "-m", "tools.cli", "up", "--peering", "A,C", federation_file],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no inter-domain link joins A and C in topology federation" in done.stderr, \
        done.stderr
