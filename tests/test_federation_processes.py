"""A federation as standing processes (issue 15): `qstrata up federation.yaml` runs the plant's
devices, each domain's controllers, orchestrator and federation agent, and the platform, each
its own `qstrata run` process, and federates them. A user of domain A then asks the platform
(over NETCONF, its host key pinned) for keys between sae-a (A) and sae-c (C); both SAEs fetch
matching keys over ETSI GS QKD 014 with their client certificates; a delivery report the transit
member forges is disputed, not billed; a span cut inside the transit member fails its segment
and re-routes the service, each member is billed on the agreement that carried its keys at the
time, and the transit member's rating falls below the threshold; a roaming intent written at A's
orchestrator is escalated to the platform and comes up across domains; SIGTERM stops every
process. Then end-user mobility as processes: an SAE moves from C to D mid-service, and keys and
charging follow it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import subprocess
import sys
import time
from typing import Iterator

import aiohttp
import yaml

from conftest import until
from devices.topology import embedded_topology
from models.federation import (DeliveryReport, EndCount, delivery_report, read_charging, read_disputes,
                               read_service_statuses, service_delete)
from models.intent import read_intents
from models.ns import FEDERATION, FIBRE_PLANT, INTENT, KEY_MANAGER
from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.ssh import trusted_host_keys
from test_federation import iso_us
from test_federation_roaming import intent_xml
from test_processes import Output, assert_ended, child_env, children, session, start_up, terminate
from tools.demo_steps import exchange_keys
from tools.federated_stack import service_request
from tools.federation_deploy import MEMBER_KEY_FILE, border_links
from tools.pki import client_context
from tools.stack import PKI_DIR, KeyDeliveryPki

ROOT = pathlib.Path(__file__).resolve().parents[1]
START_S, ACTIVE_S, STOP_S = 300.0, 90.0, 120.0  # generous: 22 processes on a shared machine
SERVICE = "a-to-c"


async def platform(info: dict, account: tuple[str, str]) -> NetconfClient:
    user, password = account
    return await NetconfClient.connect(info["host"], info["port"], user, password=password,
                                       known_hosts=trusted_host_keys(info["host_key"]), timeout=20)


async def wait_active(nc: NetconfClient, avoiding: list[str] | None = None) -> list[str]:
    """The route of SERVICE once it is active (on a route other than `avoiding`)."""
    deadline = time.monotonic() + ACTIVE_S
    last = None
    while time.monotonic() < deadline:
        last = read_service_statuses(await nc.get(("subtree", f'<federation xmlns="{FEDERATION}"><services/>'
                                                              "</federation>"))).get(SERVICE)
        if last is not None and last.status == "active" and list(last.route) != avoiding:
            return list(last.route)
        await asyncio.sleep(0.5)
    raise AssertionError(f"service {SERVICE} not active within {ACTIVE_S:g} s: {last}")


def owed(*carried: tuple[list[str], int]) -> dict[tuple[str, str], int]:
    """The keys each member after the payer should be billed for, by (member, agreement): on
    each (route, keys) carried, under its agreement with the member before it on that route."""
    wanted: dict[tuple[str, str], int] = {}
    for route, keys in carried:
        for previous, member in zip(route, route[1:]):
            agreement = "-".join(sorted((previous, member)))
            wanted[(member, agreement)] = wanted.get((member, agreement), 0) + keys
    return wanted


async def billed(info: dict, service: str) -> dict[tuple[str, str], int]:
    """The keys the platform's charging records bill for `service`, by (member, agreement),
    the payer's own left out."""
    async with await platform(info, info["admin"]) as admin:
        data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><charging/></federation>'))
    totals: dict[tuple[str, str], int] = {}
    for c in read_charging(data).values():
        if c.service_id == service and c.agreement is not None:
            totals[(c.member_id, c.agreement)] = totals.get((c.member_id, c.agreement), 0) + c.keys
    return totals


async def until_billed(info: dict, service: str, wanted: dict[tuple[str, str], int]) -> None:
    """Wait until the agents' reports (every second) bill `service` as `wanted`."""
    async def as_wanted():
        return await billed(info, service) == wanted
    try:
        await until(as_wanted, f"charging of {service}", ACTIVE_S, 1.0)
    except AssertionError:
        raise AssertionError(f"wanted {wanted}, billed {await billed(info, service)}") from None


@contextlib.contextmanager
def federation_up(tmp_path: pathlib.Path) -> Iterator[tuple[dict, Output, dict[str, int]]]:
    """`qstrata up federation.yaml` until the block ends: its stack file, its output and its
    processes; then SIGTERM, and it must exit 0 leaving none of them."""
    up, out = start_up(tmp_path, str(ROOT / "devices/topologies/federation.yaml"))
    processes: dict[str, int] = {}
    try:
        out.wait_for(r"^Ctrl-C stops\.$", START_S)
        processes = children(up.pid, by=b"--config")
        yield json.loads((tmp_path / "qstrata-stack.json").read_text()), out, processes
    finally:
        code = terminate(up, STOP_S)
    assert_ended(code, out, tmp_path, processes)


def test_up_runs_a_federation_of_processes_that_delivers_cross_domain_keys(tmp_path):
    env, state = child_env(), tmp_path / "state"
    with federation_up(tmp_path) as (stack, out, processes):
        topology = embedded_topology("federation.yaml")
        # every domain's four levels and agent, the plant's devices, the platform: one process each
        assert len(processes) == 1 + 5 * len(topology.domains) + 1, sorted(processes)
        assert set(stack["domains"]) == set(topology.domains)
        assert {row["level"] for row in stack["domains"]["A"]} == {"connectivity", "forwarding", "service",
                                                                    "orchestrator"}
        text = "\n".join(out.lines)
        for domain in topology.domains:
            assert f"domain {domain}:" in text and f"{domain}/orchestrator" in text
        # a domain's forwarding controller manages the domain's QKD nodes only
        forwarding = yaml.safe_load((state / "deployments/A/forwarding.yaml").read_text())
        nodes = {p["name"] for p in forwarding["peers"] if p["name"].startswith("qkd-")}
        assert nodes == {n.id for n in topology.domain_part("A").qkd_nodes}
        info = stack["federation"]
        levels = {row["name"]: row for row in stack["levels"]}
        urls = {name: row["etsi014_url"] for name, row in levels.items() if row.get("etsi014_url")}
        km = {s.id: s.km for s in topology.saes}
        pki = KeyDeliveryPki(state / PKI_DIR)

        async def keys_a_to_c() -> list[str]:
            """Key IDs sae-a and sae-c both got, the same keys, over ETSI 014 with their certificates."""
            async with aiohttp.ClientSession() as http:
                got, same = await exchange_keys(http, (urls[km["sae-a"]], "sae-a"), (urls[km["sae-c"]], "sae-c"),
                                                timeout=ACTIVE_S, tls=lambda sae: client_context(pki.sae(sae)))
            assert got and same
            return got

        async def scenario() -> list[str]:
            other = await platform(info, info["service_users"]["B"])
            try:   # B's service user may not ask for a service A pays for
                try:
                    await other.edit_config(service_request(SERVICE, "A", ("sae-a", "A"), ("sae-c", "C"), 10000))
                    raise AssertionError("users-B wrote a service of member A")
                except RPCError as error:
                    assert error.tag == "access-denied", error
            finally:
                other.close()
            async with await platform(info, info["service_users"]["A"]) as user:
                await user.edit_config(service_request(SERVICE, "A", ("sae-a", "A"), ("sae-c", "C"), 10000))
                route = await wait_active(user)
            assert route[0] == "A" and route[-1] == "C" and len(route) == 3, route
            ids = await keys_a_to_c()
            # The transit member's own key claims a million keys passed on (its key managers
            # counted no such thing): the next member's counts contradict it, so it is disputed
            # and not billed.
            transit, after_it = route[1], route[2]
            links = {b.peer_member: b.link_id for b in border_links(topology, transit)}
            async with await NetconfClient.connect(
                    info["host"], info["port"], transit, known_hosts=trusted_host_keys(info["host_key"]),
                    client_keys=[str(state / transit / "agent" / MEMBER_KEY_FILE)], timeout=20) as forger:
                now = time.time()
                await forger.dispatch(delivery_report(DeliveryReport(SERVICE, iso_us(now), iso_us(now + 0.01), (
                    EndCount("ingress", links[route[0]], 0, 0),
                    EndCount("egress", links[after_it], 1_000_000, 256_000_000)))))
            async with await platform(info, info["admin"]) as admin:
                async def disputed():
                    data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><charging/><disputes/>'
                                                       "</federation>"))
                    return [data] if read_disputes(data) else None
                [data] = await until(disputed, "the forged report disputed", ACTIVE_S, 0.5)
            [dispute] = read_disputes(data).values()
            # (the honest counts lag a report or so behind: the claim exceeds them by about 1,000,000)
            assert (dispute.service_id, dispute.sender, dispute.receiver) == (SERVICE, transit, after_it), dispute
            assert dispute.sent[0] >= 1_000_000 and dispute.disputed[0] == dispute.sent[0] - dispute.received[0] \
                and 1_000_000 - dispute.disputed[0] < 1_000, dispute
            charged = [c.keys for c in read_charging(data).values() if c.member_id == transit]
            assert charged and max(charged) < 1_000_000, charged
            # The re-route case: a span inside the transit member is cut, its segment fails; the
            # service moves to the other transit member, and each member is billed on the
            # agreement that carried its keys at the time. The transit member, rated on the
            # time it held its segment up (threshold 0.99 here), is flagged.
            async with await platform(info, info["admin"]) as admin:
                await admin.edit_config(f'<federation xmlns="{FEDERATION}"><ratings><threshold>0.99</threshold>'
                                        "</ratings></federation>")
            inside = next(span.id for span in topology.spans
                          if topology.domain_of(span.a.node) == topology.domain_of(span.b.node) == transit)
            async with await session(levels["fibre-plant"]) as plant:
                await plant.dispatch(f'<cut-span xmlns="{FIBRE_PLANT}"><span-id>{inside}</span-id></cut-span>')
            async with await platform(info, info["service_users"]["A"]) as user:
                detour = await wait_active(user, avoiding=route)
            assert detour[0] == "A" and detour[-1] == "C" and transit not in detour, detour
            later = await keys_a_to_c()
            assert not set(later) & set(ids)
            await until_billed(info, SERVICE, owed((route, len(ids)), (detour, len(later))))
            ratings = subprocess.run([sys.executable, "-m", "tools.cli", "federation", "ratings", "--port",
                                      str(info["port"]), f"--password={info['admin'][1]}", "--host-key",
                                      info["host_key"]], env=env, capture_output=True, text=True, timeout=60)
            assert ratings.returncode == 0, ratings.stderr
            rows = {line.split()[0]: line for line in ratings.stdout.splitlines()[1:]}
            assert rows[transit].endswith("below the threshold"), ratings.stdout
            assert float(rows[transit].split()[4]) < 1 and "below" not in rows[after_it], ratings.stdout
            # The user ends that service; a roaming intent for the same SAEs at A's own
            # orchestrator (a process) is escalated to the platform (another process), routed
            # across domains, and active with its domains and segments; keys flow again.
            async with await platform(info, info["service_users"]["A"]) as user:
                await user.edit_config(service_delete(SERVICE))
            row = next(r for r in stack["domains"]["A"] if r["level"] == "orchestrator")
            async with await session(row) as nc:
                await nc.edit_config(intent_xml("roam1", "sae-a", "sae-c"))

                seen = {}

                async def roaming_active():
                    seen.update(read_intents(await nc.get(("subtree", f'<intents xmlns="{INTENT}"/>'))))
                    return seen["roam1"] if seen.get("roam1", {}).get("state") == "active" else None
                try:
                    intent = await until(roaming_active, "roaming intent roam1 active", timeout=ACTIVE_S, period=0.5)
                except AssertionError as failure:
                    raise AssertionError(f"{failure}: it is {seen.get('roam1')}") from None
            fed = intent["federation"]
            assert (fed["source-domain"], fed["destination-domain"], fed["status"]) == ("A", "C", "active"), fed
            assert fed["domains"][0] == "A" and fed["domains"][-1] == "C", fed
            assert [s["status"] for s in fed["segments"]] == ["active"] * len(fed["domains"]), fed
            roamed = await keys_a_to_c()
            assert not set(roamed) & set(ids)
            return fed["domains"]

        route = asyncio.run(scenario())
        # `qstrata intent list --domain D` reads domain D's orchestrator: the transit domain holds
        # the roaming service's segment as an intent, the other middle domain does not, and the
        # ended service's segment is gone
        transit, other = route[1], ({"B", "D"} - {route[1]}).pop()
        for domain, holds in ((transit, True), (other, False)):
            listed = subprocess.run([sys.executable, "-m", "tools.cli", "intent", "list", "--domain", domain],
                                    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            assert ("fed-roam-A-roam1" in listed.stdout) == holds, (domain, listed.stdout)
            assert f"fed-{SERVICE}" not in listed.stdout, (domain, listed.stdout)
        unknown = subprocess.run([sys.executable, "-m", "tools.cli", "intent", "list", "--domain", "Z"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert unknown.returncode != 0 and "no domain 'Z'" in unknown.stderr, unknown


def test_an_sae_moves_domains_between_processes_and_its_keys_and_charging_follow(tmp_path):
    """End-user mobility with every level a process: sae-c, served by C, is attached at D's
    km-d2 by D's operator (a NETCONF edit on the key manager) and moved there (move-sae at the
    platform); the roaming intent of A follows it to D, keys keep matching and none is served
    twice, and charging bills each member on the agreement of the route of the time."""
    env = child_env()
    with federation_up(tmp_path) as (stack, out, processes):
        info, levels = stack["federation"], {row["name"]: row for row in stack["levels"]}
        urls = {name: row["etsi014_url"] for name, row in levels.items() if row.get("etsi014_url")}
        pki = KeyDeliveryPki(tmp_path / "state" / PKI_DIR)
        served: dict[str, str] = {}   # key ID -> the key manager that handed it to sae-c

        async def keys_at(http, km: str) -> None:
            ids, same = await exchange_keys(http, (urls["km-a1"], "sae-a"), (urls[km], "sae-c"), timeout=ACTIVE_S,
                                            tls=lambda sae: client_context(pki.sae(sae)))
            assert ids and same and not set(ids) & set(served), (km, ids)
            served.update(dict.fromkeys(ids, km))

        async def scenario() -> tuple[list[str], list[str]]:
            orchestrator = next(r for r in stack["domains"]["A"] if r["level"] == "orchestrator")
            async with await session(orchestrator) as nc, aiohttp.ClientSession() as http:
                async def federation_of(destination: str):
                    fed = read_intents(await nc.get(("subtree", f'<intents xmlns="{INTENT}"/>'))).get(
                        "travel", {}).get("federation") or {}
                    return fed if (fed.get("destination-domain"), fed.get("status")) == (destination, "active") \
                        else None
                await nc.edit_config(intent_xml("travel", "sae-a", "sae-c"))
                before = (await until(lambda: federation_of("C"), "travel active to C", ACTIVE_S, 0.5))["domains"]
                for _ in range(2):
                    await keys_at(http, "km-c3")
                # D's operator attaches sae-c at km-d2; D's agent advertises it; the admin moves it.
                async with await session(levels["km-d2"]) as km:
                    await km.edit_config(f'<key-manager xmlns="{KEY_MANAGER}"><saes><sae><sae-id>sae-c</sae-id>'
                                         "</sae></saes></key-manager>")
                async with await platform(info, info["admin"]) as admin:
                    async def moved():
                        try:
                            await admin.dispatch(FEDERATION.element("move-sae", leaves={"sae-id": "sae-c",
                                                                                       "member-id": "D"}))
                        except RPCError as error:   # until D's agent advertises it
                            assert error.tag == "invalid-value" and "does not advertise" in error.message, error
                            return False
                        return True
                    await until(moved, "move-sae accepted", ACTIVE_S, 0.5)
                after = (await until(lambda: federation_of("D"), "travel active to D", ACTIVE_S, 0.5))["domains"]
                for _ in range(2):
                    await keys_at(http, "km-d2")
            return before, after

        before, after = asyncio.run(scenario())
        assert before[0] == after[0] == "A" and before[-1] == "C" and after[-1] == "D", (before, after)

        # Charging: each member after A is paid under the agreement with the member before it on
        # the route that carried the keys.
        at = {km: sum(1 for where in served.values() if where == km) for km in ("km-c3", "km-d2")}
        wanted = owed((before, at["km-c3"]), (after, at["km-d2"]))
        asyncio.run(until_billed(info, "roam-A-travel", wanted))
        # `qstrata federation settle D` (a NETCONF client of the platform) shows what D is owed from A
        settle = subprocess.run([sys.executable, "-m", "tools.cli", "federation", "settle", "D", "--port",
                                 str(info["port"]), f"--password={info['admin'][1]}", "--host-key", info["host_key"]],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert settle.returncode == 0, settle.stderr
        line = next(l.split() for l in settle.stdout.splitlines() if l.startswith("receivable ") and " A-D " in l)
        assert int(line[3]) == wanted[("D", "A-D")], settle.stdout

