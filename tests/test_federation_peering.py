"""Direct peering of two providers with no federation platform (ITU-T Y.QKDNf Figure 2), on
127.0.0.1: domains A and B, each its own devices' controllers, orchestrator and peering agent;
the two agents talk over NETCONF only (each logs in to the other with its provider's key, host
keys pinned). The agreement is negotiated by both, a service from sae-a (A) to sae-b (B)
delivers matching keys fetched over ETSI GS QKD 014 at both ends, relayed by the providers' own
key managers, and both agents hold the same charging records.
"""
from __future__ import annotations

import asyncio
import datetime
import pathlib
from collections.abc import Awaitable, Callable
from decimal import Decimal

import aiohttp
import pytest
from lxml import etree

from devices.topology import parse_topology
from models.federation import (DeliveryReport, EndCount, FederationConfig, ServiceRequest, delivery_report,
                               read_charging, read_disputes, read_service_statuses, service_config)
from models.federation_peering import accept_agreement, read_peering
from models.ns import FEDERATION, INTENT
from netconf_core import NetconfClient, trusted_host_keys
from netconf_core.errors import RPCError
from orchestrator.federation_charging import CLOCK_TOLERANCE_S
from tools.demo_steps import as_sae, exchange_keys
from tools.federation_deploy import service_user
from tools.peering_stack import PeeredStack
from conftest import until as poll_until

WAIT_S = 45.0
SCENARIO_S = 240.0
TOPOLOGY = {
    "name": "peering",
    "sites": [{"id": "a1", "name": "A core", "domain": "A"}, {"id": "a2", "name": "A border", "domain": "A"},
              {"id": "b1", "name": "B border", "domain": "B"}, {"id": "b2", "name": "B core", "domain": "B"}],
    "spans": [{"id": "a1-a2", "a": "a1:1", "b": "a2:1", "length_km": 8.0},
              {"id": "b1-b2", "a": "b1:2", "b": "b2:1", "length_km": 10.0},
              {"id": "a2-b1", "a": "a2:2", "b": "b1:1", "length_km": 12.0}],
    "qkd_nodes": [{"id": f"qkd-{n}", "site": n, "interfaces": [{"id": 1, "attach": f"{n}:1"},
                                                               {"id": 2, "attach": f"{n}:2"}]}
                  for n in ("a1", "a2", "b1", "b2")],
    "key_managers": [{"id": f"km-{n}", "site": n} for n in ("a1", "a2", "b1", "b2")],
    "saes": [{"id": "sae-a", "km": "km-a1"}, {"id": "sae-b", "km": "km-b2"}],
}
AGREEMENT = (f'<federation xmlns="{FEDERATION}"><agreements><agreement><agreement-id>ab</agreement-id>'
             "<member-a>A</member-a><member-b>B</member-b><price-per-kbit>0.002</price-per-kbit>"
             "</agreement></agreements></federation>")
S1 = service_config(ServiceRequest("s1", "A", "sae-a", "A", "sae-b", "B", 10000))


def run(scenario: Callable[[PeeredStack], Awaitable[None]]) -> None:
    async def main() -> None:
        async with PeeredStack(parse_topology(TOPOLOGY, "peering"), ("A", "B")) as peered:
            await scenario(peered)
    asyncio.run(asyncio.wait_for(main(), SCENARIO_S))


async def until(check: Callable[[], Awaitable[object]], what: str) -> object:
    return await poll_until(check, what, timeout=WAIT_S, period=0.1)


async def federation(nc: NetconfClient) -> etree._Element:
    return await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"/>'))


async def service(nc: NetconfClient, status: str, reason_part: str = ""):
    async def check():
        s1 = read_service_statuses(await federation(nc)).get("s1")
        return s1 if s1 is not None and s1.status == status and reason_part in s1.reason else None
    return await until(check, f"s1 {status} ({reason_part})")


async def agreement_status(nc: NetconfClient, status: str) -> None:
    async def check():
        peering = read_peering(await federation(nc))
        return peering and [a.status for a in peering.agreements] == [status]
    await until(check, f"agreement ab {status}")


async def intents(peered: PeeredStack, domain: str) -> dict[str, str]:
    stack = peered.stacks[domain]
    async with await stack.endpoint("orchestrator", stack.orchestrator.port).connect() as nc:
        data = await nc.get(("subtree", f'<intents xmlns="{INTENT}"/>'))
    return {INTENT.text(i, "name", ""): INTENT.text(i, "state", "") for i in INTENT.all(data, "intents/intent")}


async def refused(nc: NetconfClient, edit: str, tag: str, message: str) -> None:
    """The edit is refused with `tag` and a message holding `message`, and nothing changed."""
    before = etree.tostring(await nc.get_config())
    with pytest.raises(RPCError) as error:
        await nc.edit_config(edit)
    assert error.value.tag == tag and message in error.value.message, (error.value.tag, error.value.message)
    assert etree.tostring(await nc.get_config()) == before


def test_two_providers_peer_directly_and_deliver_matching_keys_without_a_platform():
    async def scenario(peered: PeeredStack) -> None:
        admin_a, admin_b = await peered.connect("A"), await peered.connect("B")
        user_a = await peered.connect("A", service_user("A"))
        try:
            # No agreement yet: the service is rejected, saying why; no domain holds a segment.
            await user_a.edit_config(S1)
            s1 = await service(user_a, "rejected", "no agreement between A and B")
            assert s1.route == ()
            # A proposes; B sees the offer; until B accepts, the proposal carries no service.
            await admin_a.edit_config(AGREEMENT)
            await agreement_status(admin_a, "proposed")
            offers = await until(lambda: _offers(admin_b), "B sees A's offer")
            assert [(o.agreement_id, str(o.price_per_kbit)) for o in offers] == [("ab", "0.002")]
            await service(user_a, "rejected", "agreement ab is proposed by A and not accepted by B: no service "
                                              "until B accepts it")
            assert "fed-s1" not in await intents(peered, "A") and "fed-s1" not in await intents(peered, "B")
            # Bad proposals and requests are refused, precisely, and change nothing.
            fed = f'<federation xmlns="{FEDERATION}">'
            await refused(admin_a, fed + "<agreements><agreement><agreement-id>aa</agreement-id><member-a>A"
                          "</member-a><member-b>A</member-b></agreement></agreements></federation>",
                          "operation-failed", "an agreement is between two different members")
            await refused(admin_a, fed + "<agreements><agreement><agreement-id>ab</agreement-id>"
                          "<price-per-kbit>-1</price-per-kbit></agreement></agreements></federation>",
                          "invalid-value", "-1")
            await refused(user_a, etree.tostring(service_config(ServiceRequest(
                "s2", "A", "sae-a", "A", "sae-x", "A", 1000))).decode(), "invalid-value",
                "a service of the peering joins an SAE of A and one of B")
            await refused(admin_a, fed + "<members><member><member-id>A</member-id><name>Mallory</name></member>"
                          "</members></federation>", "invalid-value", "the members are this provider (A)")
            before = etree.tostring(await admin_b.get_config())
            with pytest.raises(RPCError) as error:
                await admin_b.dispatch(accept_agreement("ba"))
            assert error.value.tag == "invalid-value" and error.value.message == "A offers no agreement ba " \
                "(it offers ab)", error.value.message
            assert etree.tostring(await admin_b.get_config()) == before
            # B accepts: both hold the same terms, the agreement is in force on both sides.
            await admin_b.dispatch(accept_agreement("ab"))
            await agreement_status(admin_a, "agreed")
            await agreement_status(admin_b, "agreed")
            terms = [FederationConfig.read(await nc.get_config(filter=("subtree", f"{fed}<agreements/></federation>")))
                     .agreements for nc in (admin_a, admin_b)]
            assert terms[0] == terms[1] and [a.price_per_kbit for a in terms[0].values()] == [Decimal("0.002")]
            # The service comes up through A's and B's own orchestrators.
            s1 = await service(user_a, "active")
            assert s1.route == ("A", "B") and s1.reason == "routed through A, B"
            assert [(s.domain, s.ingress, s.egress, s.status) for s in s1.segments] == [
                ("A", None, "qkd-a2", "active"), ("B", "qkd-b1", None, "active")]
            assert (await intents(peered, "A"))["fed-s1"] == "active"
            assert (await intents(peered, "B"))["fed-s1"] == "active"
            # Keys: enc_keys for sae-a at A's key manager, dec_keys for sae-b at B's; same keys.
            urls = {row.id: row.etsi014_url for row in peered.host.table()}
            async with aiohttp.ClientSession() as http:
                ids, same = await exchange_keys(http, (urls["km-a1"], "sae-a"), (urls["km-b2"], "sae-b"), 4,
                                                timeout=WAIT_S, tls=peered.sae_ssl)
                assert same and len(ids) == 4
                async with http.post(f"{urls['km-b2']}/api/v1/keys/sae-a/dec_keys", **as_sae("sae-b", peered.sae_ssl),
                                     json={"key_IDs": [{"key_ID": ids[0]}]}) as again:
                    assert again.status in (400, 404), again.status   # a key is never served twice
            # Both agents confirm the 4 keys on the hop and bill B's segment under ab.
            for _ in range(2):
                await asyncio.sleep(CLOCK_TOLERANCE_S + 0.1)
                for domain in peered.domains.values():
                    await domain.report()
            for nc in (admin_a, admin_b):
                records = [r for r in read_charging(await federation(nc)).values() if r.service_id == "s1"]
                billed = {(r.member_id, r.agreement): r.keys for r in records}
                assert billed == {("A", None): 4, ("B", "ab"): 4}, billed
                assert not read_disputes(await federation(nc))
            # A count the other end contradicts is a dispute, not billed (B's key, forged by hand).
            await asyncio.sleep(CLOCK_TOLERANCE_S + 0.1)
            agent_a = peered.agents["A"]
            async with await NetconfClient.connect(peered.host.network.host, agent_a.port, "B",
                                                   client_keys=[peered.keys["B"]],
                                                   known_hosts=trusted_host_keys(agent_a.server.public_host_key)) as b:
                stamp = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
                await b.dispatch(delivery_report(DeliveryReport("s1", stamp, stamp, (
                    EndCount("ingress", "a2-b1", 1000, 256000),))))
            async def disputed():   # A's key manager, read later than B's (by the clock tolerance): 4 < 1004
                await asyncio.sleep(CLOCK_TOLERANCE_S + 0.1)
                await peered.domains["A"].report()
                return read_disputes(await federation(admin_a))
            disputes = await until(disputed, "a dispute over B's forged count")
            assert [(d.sender, d.receiver, d.disputed[0]) for d in disputes.values()] == [("A", "B", 1000)]
            records = read_charging(await federation(admin_a))
            assert {(r.member_id, r.agreement): r.keys for r in records.values()} == {("A", None): 4, ("B", "ab"): 4}
            # No platform: the agents serve no membership, and either side may end the agreement.
            with pytest.raises(RPCError) as error:
                await admin_a.dispatch(f'<admit-member xmlns="{FEDERATION}"><member-id>B</member-id></admit-member>')
            assert error.value.tag == "operation-not-supported", (error.value.tag, error.value.message)
            await admin_b.edit_config(f'{fed[:-1]} xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><agreements>'
                                      '<agreement nc:operation="delete"><agreement-id>ab</agreement-id></agreement>'
                                      "</agreements></federation>")
            await agreement_status(admin_a, "proposed")
            await service(user_a, "failed", "agreement ab is proposed by A and not accepted by B")
            await until(lambda: _gone(peered), "the segments' intents removed in A and B")
        finally:
            for nc in (admin_a, admin_b, user_a):
                nc.close()
    run(scenario)


async def _offers(nc: NetconfClient):
    peering = read_peering(await federation(nc))
    return peering.offers if peering else ()


async def _gone(peered: PeeredStack) -> bool:
    return all(["fed-s1" not in await intents(peered, d) for d in ("A", "B")])


# --- the federation-peer level's deployment file -------------------------------------------------

def peer_file(tmp_path, **changes) -> dict:
    """A good federation-peer deployment of A (peer B), with `changes` to its section."""
    import asyncssh
    import yaml

    for name in ("host.key", "a.key"):
        (tmp_path / name).write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    (tmp_path / "peering.yaml").write_text(yaml.safe_dump(TOPOLOGY))
    node = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    pinned = {"address": "127.0.0.1", "host_key": node}
    return {
        "level": "federation-peer",
        "listen": {"address": "127.0.0.1", "port": 8950, "host_key_file": "host.key"},
        "users": [{"name": "admin", "access": "admin", "password": "a"},
                  {"name": "users-A", "access": "service", "password": "u"}],
        "peers": [{"name": "peer-b", "port": 8951, "user": "A", "private_key_file": "a.key", **pinned},
                  {"name": "forwarding", "port": 8832, "user": "admin", "password": "p", **pinned},
                  {"name": "orchestrator", "port": 8830, "user": "federation", "private_key_file": "a.key", **pinned},
                  {"name": "km-a2", "port": 8311, "user": "admin", "password": "p", **pinned}],
        "federation-peer": {"member_id": "A", "peer": "peer-b", "peer_member_id": "B", "peer_public_key": node,
                            "forwarding": "forwarding", "orchestrator": "orchestrator", "topology": "peering.yaml",
                            "border_key_managers": {"km-a2": {"km-b1": "https://127.0.0.1:8412"}}, **changes},
    }


def load(tmp_path, data):
    import yaml

    from tools.deployment import load_deployment

    (tmp_path / "peer.yaml").write_text(yaml.safe_dump(data))
    return load_deployment(tmp_path / "peer.yaml")


def test_a_federation_peer_file_is_read_and_its_peers_have_roles(tmp_path):
    deployment = load(tmp_path, peer_file(tmp_path))
    assert deployment.level == "federation-peer" and deployment.part.peer_member_id == "B"
    assert [p.name for p in deployment.device_peers()] == ["km-a2"]
    assert deployment.access("admin") == ("admin",) and deployment.access("service") == ("users-A",)


@pytest.mark.parametrize("change, problem", [
    ({"peer_member_id": "A"}, "federation-peer.peer_member_id: a provider does not peer with itself (A)"),
    ({"peer": "nobody"}, "federation-peer.peer: no peer named 'nobody' in peers"),
    ({"peer_member_id": "C"}, "federation-peer.peer_member_id: no domain 'C' in topology peering"),
    ({"peer_public_key": "ssh-ed25519 nonsense"}, "federation-peer.peer_public_key: not an OpenSSH public key line"),
    ({"capacity_share": 3}, "federation-peer.capacity_share: must be a number within 0..1"),
    ({"border_key_managers": {"km-zz": {"km-b1": "https://127.0.0.1:1"}}},
     "federation-peer.border_key_managers.km-zz: not one of the key managers in peers"),
    ({"colour": "blue"}, "federation-peer.colour: unknown key"),
])
def test_a_bad_federation_peer_file_is_refused_precisely(tmp_path, change, problem):
    from tools.deployment import DeploymentError

    with pytest.raises(DeploymentError) as error:
        load(tmp_path, peer_file(tmp_path, **change))
    assert any(problem in p for p in error.value.problems), error.value.problems


def test_the_peer_entry_logs_in_as_this_member_with_its_key(tmp_path):
    from tools.deployment import DeploymentError

    data = peer_file(tmp_path)
    data["peers"][0] = {**data["peers"][0], "user": "admin", "password": "x"}
    del data["peers"][0]["private_key_file"]
    data["users"].append({"name": "B", "access": "service", "password": "b"})
    with pytest.raises(DeploymentError) as error:
        load(tmp_path, data)
    problems = "\n".join(error.value.problems)
    assert "peers[0].user: the peer's agent knows this provider as its member_id 'A', not 'admin'" in problems
    assert "peers[0]: the peer's agent lets this provider in by its key: give private_key_file" in problems
    assert "users[2].name: 'B' is a member's name: the peer logs in as its member_id" in problems


def test_qstrata_run_federation_peer_refuses_a_bad_file(tmp_path):
    import subprocess
    import sys

    import yaml

    (tmp_path / "peer.yaml").write_text(yaml.safe_dump(peer_file(tmp_path, peer_member_id="A")))
    done = subprocess.run([sys.executable, "-m", "tools.cli", "run", "federation-peer", "--config",
                           str(tmp_path / "peer.yaml")], capture_output=True, text=True, timeout=60,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
    assert done.returncode == 1
    assert "federation-peer.peer_member_id: a provider does not peer with itself (A)" in done.stderr, done.stderr
