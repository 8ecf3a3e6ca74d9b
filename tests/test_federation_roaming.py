"""Roaming, mobility and Fa user registration over the whole federated stack on 127.0.0.1
(devices/topologies/federation.yaml: A, B, C in a line, D a second way from A to C), each level
a NETCONF server of its own, real SSH sessions throughout, keys fetched through ETSI GS QKD 014:

- an intent with allow-federation in domain A whose destination SAE is C's is escalated by A's
  orchestrator to the platform (as A's service-layer account) and served across the domains;
- the reasons an escalation fails;
- an SAE that moves from C's key manager to D's keeps its service: keys match throughout, none
  is served twice, and charging follows the new route;
- a service-layer user applies on the platform, its member admits it, NACM limits it.

The tests that do not move an SAE share one federation (a module fixture on a loop thread);
each uses names of its own and removes what it made.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import asyncssh
import pytest
from lxml import etree

from conftest import LoopThread
from devices.topology import embedded_topology
from models.federation import (read_charging, read_disputes, read_members, read_service_statuses,
                               read_user_applications)
from models.intent import IntentSpec, read_intents
from models.ns import FEDERATION as FED
from models.ns import INTENT, KEY_MANAGER
from netconf_core import NetconfClient, trusted_host_keys
from netconf_core.errors import RPCError
from netconf_core.link import Endpoint
from netconf_core.ns import BASE
from orchestrator.federation_access import ENROL_USER
from orchestrator.federation_roaming import Roaming, service_name
from tools.federated_stack import ADMIN, FederatedStack, service_request, service_user

WAIT_S = 60.0
SERVICE_TYPES = {"sae-a": ("vpn", "backup")}


@pytest.fixture(scope="module")
def federation():
    loop = LoopThread()
    fed = FederatedStack(embedded_topology("federation.yaml"), service_types=SERVICE_TYPES)
    try:
        loop.run(fed.start(WAIT_S), timeout=WAIT_S * 2)
        loop.run(fed.federate(WAIT_S), timeout=WAIT_S * 2)
        yield loop, fed
    finally:
        loop.run(fed.stop(), timeout=WAIT_S * 2)
        loop.close()


def run(federation, scenario: Callable[[FederatedStack], Awaitable[None]], timeout: float = 240) -> None:
    loop, fed = federation
    loop.run(asyncio.wait_for(scenario(fed), timeout), timeout=timeout + 10)


async def until(check: Callable[[], Awaitable[object]], what: str, wait: float = WAIT_S) -> object:
    try:
        async with asyncio.timeout(wait):
            while not (result := await check()):
                await asyncio.sleep(0.1)
            return result
    except TimeoutError:
        raise AssertionError(f"still not so after {wait:g} s: {what}") from None


def intent_xml(name: str, source: str, destination: str, rate: int = 10000, allow: bool = True) -> str:
    return (f'<intents xmlns="{INTENT}"><intent><name>{name}</name><endpoints><source-sae>{source}</source-sae>'
            f"<destination-sae>{destination}</destination-sae></endpoints><min-rate>{rate}</min-rate>"
            f"<allow-federation>{'true' if allow else 'false'}</allow-federation></intent></intents>")


async def orchestrator(fed: FederatedStack, domain: str = "A") -> NetconfClient:
    stack = fed.stacks[domain]
    return await stack.endpoint("orchestrator", stack.orchestrator.port).connect()


async def intent_of(nc: NetconfClient, name: str) -> dict:
    return read_intents(await nc.get(("subtree", f'<intents xmlns="{INTENT}"/>'))).get(name, {})


async def intent_in(nc: NetconfClient, name: str, state: str, what: str = "") -> dict:
    async def there() -> dict | None:
        intent = await intent_of(nc, name)
        return intent if intent.get("state") == state and what in intent.get("reason", "") else None
    return await until(there, f"intent {name} {state} ({what})")


async def remove_intent(nc: NetconfClient, name: str) -> None:
    await nc.edit_config(f'<intents xmlns="{INTENT}" xmlns:nc="{BASE}"><intent nc:operation="remove">'
                         f"<name>{name}</name></intent></intents>")


async def services(fed: FederatedStack) -> dict:
    async with await fed.connect(ADMIN) as admin:
        return read_service_statuses(await admin.get(("subtree", f'<federation xmlns="{FED}"><services/>'
                                                                 "</federation>")))


def urls(fed: FederatedStack) -> dict[str, str]:
    return {row.id: row.etsi014_url for row in fed.host.table()}


async def exchange(http: aiohttp.ClientSession, fed: FederatedStack, master_km: str, slave_kms: list[str],
                   number: int = 4) -> tuple[str, dict[str, bytes]] | None:
    """enc_keys for sae-a at `master_km`, dec_keys for sae-c at the first of `slave_kms` that
    has them: (where, keys) when both ends got the same keys; None when no key could be had."""
    api = urls(fed)
    async with http.get(f"{api[master_km]}/api/v1/keys/sae-c/enc_keys", params={"number": str(number)},
                        ssl=fed.sae_ssl("sae-a")) as reply:
        if reply.status != 200:
            return None
        sent = {k["key_ID"]: k["key"] for k in (await reply.json())["keys"]}
    for km in slave_kms:
        async with http.post(f"{api[km]}/api/v1/keys/sae-a/dec_keys", ssl=fed.sae_ssl("sae-c"),
                             json={"key_IDs": [{"key_ID": i} for i in sent]}) as reply:
            if reply.status == 200:
                received = {k["key_ID"]: k["key"] for k in (await reply.json())["keys"]}
                assert received == sent, f"keys differ at {km}"
                return km, sent
    raise AssertionError(f"keys {list(sent)} served by {master_km} reached none of {slave_kms}")


async def keys_until(http, fed: FederatedStack, slave_kms: list[str], what: str) -> tuple[str, dict]:
    async def got():
        return await exchange(http, fed, "km-a1", slave_kms)
    return await until(got, what)


# --- roaming -------------------------------------------------------------------------------------


def test_a_roaming_intent_is_escalated_and_delivers_matching_keys_across_domains(federation):
    async def scenario(fed: FederatedStack) -> None:
        async with await orchestrator(fed) as nc:
            await nc.edit_config(intent_xml("roam1", "sae-a", "sae-c"))
            try:
                intent = await intent_in(nc, "roam1", "active")
                service = service_name("A", "roam1")
                federation_state = intent["federation"]
                assert (federation_state["service"], federation_state["status"], federation_state["source-domain"],
                        federation_state["destination-domain"]) == (service, "active", "A", "C")
                route = federation_state["domains"]
                assert route[0] == "A" and route[-1] == "C" and len(route) == 3
                assert [(s["domain"], s["status"]) for s in federation_state["segments"]] == [
                    (d, "active") for d in route]
                assert intent["paths"][0]["in-use"]
                assert {c["type"]: c["status"] for c in intent["conditions"]} == {
                    "federated": "true", "path-found": "true", "ready": "true"}
                assert f"keys flow through domains {', '.join(route)}" in intent["reason"]
                # The platform's service, paid by A, asked by A's service-layer account.
                async with await fed.connect(service_user("A")) as user:
                    seen = read_service_statuses(await user.get(("subtree", f'<federation xmlns="{FED}">'
                                                                            "<services/></federation>")))
                    config = await user.get_config(filter=("subtree", f'<federation xmlns="{FED}"><services/>'
                                                                      "</federation>"))
                assert seen[service].route == tuple(route)
                assert config.findtext(f".//{{{FED}}}requesting-member") == "A"
                async with aiohttp.ClientSession() as http:
                    where, keys = await keys_until(http, fed, ["km-c3"], "keys between sae-a (A) and sae-c (C)")
                assert where == "km-c3" and len(keys) == 4
            finally:
                await remove_intent(nc, "roam1")
            # The intent goes, and with it the platform's service and every segment.
            await until(lambda: _gone(nc, "roam1"), "intent roam1 removed")
            await until(lambda: _no_service(fed, service_name("A", "roam1")), "service released at the platform")
            for domain in fed.stacks:
                await until(lambda: _no_segment(fed, domain), f"no segment intent left in {domain}")
    run(federation, scenario)


async def _gone(nc: NetconfClient, name: str) -> bool:
    return not await intent_of(nc, name)


async def _no_service(fed: FederatedStack, service: str) -> bool:
    return service not in await services(fed)


async def _no_segment(fed: FederatedStack, domain: str) -> bool:
    async with await orchestrator(fed, domain) as nc:
        return not any(name.startswith("fed-roam-") for name in read_intents(await nc.get(
            ("subtree", f'<intents xmlns="{INTENT}"/>'))))


def test_an_escalation_that_cannot_be_served_fails_with_a_clear_reason(federation):
    async def scenario(fed: FederatedStack) -> None:
        async with await orchestrator(fed) as nc:
            names = ("local-only", "nowhere", "too-fast")
            try:
                # Without allow-federation the intent stays in its domain and fails there.
                await nc.edit_config(intent_xml("local-only", "sae-a", "sae-c", allow=False))
                local = await intent_in(nc, "local-only", "failed")
                assert "sae-c" in local["reason"] and not local["federation"]
                # An SAE that no member advertises.
                await nc.edit_config(intent_xml("nowhere", "sae-a", "sae-nowhere"))
                await intent_in(nc, "nowhere", "failed", "SAE sae-nowhere is not served by this domain and is "
                                                         "unknown to every member of the federation")
                # A route no inter-domain link can carry: the platform's reason, passed on.
                await nc.edit_config(intent_xml("too-fast", "sae-a", "sae-c", rate=10 ** 9))
                failed = await intent_in(nc, "too-fast", "failed", "no route from A to C with 1000000000 bit/s")
                assert failed["federation"]["status"] == "rejected"
                assert service_name("A", "too-fast") in await services(fed)
                assert service_name("A", "nowhere") not in await services(fed)
            finally:
                for name in names:
                    await remove_intent(nc, name)
            await until(lambda: _no_service(fed, service_name("A", "too-fast")), "the rejected service released")
    run(federation, scenario)


def test_without_a_platform_a_roaming_intent_fails_saying_so():
    """The orchestrator's roaming part as an orchestrator without a platform runs it."""
    spec = IntentSpec("roam", "sae-a", "sae-c", 1000, allow_federation=True)

    async def scenario() -> None:
        roaming = Roaming(None, None, lambda: None)
        verdict = (await roaming.serve([spec], {"sae-a": "km-a1"}))["roam"]
        assert (verdict.state, verdict.reason) == ("failed", "SAE sae-c is not served by this domain's key managers, "
                                                             "and no federation platform is configured to look "
                                                             "beyond this domain")
        # A platform that does not answer (a port nothing listens on: refused at once).
        pinned = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        unreachable = Roaming(Endpoint("platform", "127.0.0.1", 9, "users-A", "pw", host_key=pinned), "A",
                              lambda: None)
        unreachable.start()
        try:
            verdict = (await unreachable.serve([spec], {"sae-a": "km-a1"}))["roam"]
        finally:
            await unreachable.stop()
        assert verdict.state == "failed" and verdict.reason.startswith("the federation platform cannot be reached")
    asyncio.run(scenario())


# --- service discovery and Fa user registration ------------------------------------------------


def test_discovery_advertises_what_an_application_offers(federation):
    async def scenario(fed: FederatedStack) -> None:
        row = next(r for r in fed.host.table() if r.id == "km-a1")
        km = fed.stacks["A"].endpoint("km-a1", row.port, row.host_key)
        async with await km.connect() as nc:
            await nc.edit_config(f'<key-manager xmlns="{KEY_MANAGER}"><saes><sae><sae-id>sae-a</sae-id>'
                                 "<description>Bank A payments gateway</description></sae></saes></key-manager>")
        try:
            async def advertised():
                async with await fed.connect(service_user("C")) as user:
                    _, offer = read_members(await user.get(("subtree", f'<federation xmlns="{FED}"><members/>'
                                                                       "<advertisements/></federation>")))["A"]
                sae = next((s for s in offer.saes if s.sae_id == "sae-a"), None) if offer else None
                return sae if sae is not None and sae.description else None
            sae = await until(advertised, "sae-a advertised with its description")
            assert (sae.km_id, sae.description, sae.service_types) == ("km-a1", "Bank A payments gateway",
                                                                        ("vpn", "backup"))
        finally:
            async with await km.connect() as nc:
                await nc.edit_config(f'<key-manager xmlns="{KEY_MANAGER}" xmlns:nc="{BASE}"><saes><sae>'
                                     '<sae-id>sae-a</sae-id><description nc:operation="remove"/></sae></saes>'
                                     "</key-manager>")
    run(federation, scenario)


def test_a_service_user_applies_is_admitted_by_its_member_and_is_limited_by_nacm(federation):
    async def scenario(fed: FederatedStack) -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key().decode().strip()
        name = f"alice{int(time.time() * 1000) % 100000}"
        pinned = trusted_host_keys(fed.platform.server.public_host_key)

        async def login() -> NetconfClient:
            return await NetconfClient.connect("127.0.0.1", fed.platform.port, name, client_keys=[key],
                                               known_hosts=pinned)

        def apply(member: str = "A", user: str = name, ssh_key: str = public) -> etree._Element:
            return FED.element("apply-service-user", leaves={"user-name": user, "member-id": member,
                                                             "ssh-public-key": ssh_key,
                                                             "description": "Alice, an end user of A"})
        with pytest.raises(asyncssh.PermissionDenied):  # no account before applying
            await login()
        async with await NetconfClient.connect("127.0.0.1", fed.platform.port, ENROL_USER,
                                               password=fed.passwords[ENROL_USER], known_hosts=pinned) as enrol:
            for bad, tag, message in ((apply("Z"), "invalid-value", "member Z is not a member"),
                                      (apply(user=service_user("A")), "invalid-value", "is the name of an account"),
                                      (apply(user="A"), "invalid-value", "is the name of an account")):
                with pytest.raises(RPCError) as err:
                    await enrol.dispatch(bad)
                assert (err.value.tag, message in err.value.message) == (tag, True), err.value.message
            reply = await enrol.dispatch(apply())
            assert reply.findtext(f".//{{{FED}}}status") == "applied"
            with pytest.raises(RPCError) as err:
                await enrol.dispatch(apply())
            assert err.value.tag == "data-exists"
        request = service_request(f"{name}-s", "A", ("sae-a", "A"), ("sae-c", "C"), 1000)
        user = await login()
        try:
            # Before admission: its own application only; no service.
            assert read_user_applications(await user.get(("subtree", f'<federation xmlns="{FED}"/>'))) == {
                name: "applied"}
            with pytest.raises(RPCError) as err:
                await user.edit_config(request)
            assert err.value.tag == "access-denied"
            # Only the member it applied for admits it: C may not, A may.
            async with await fed.connect(ADMIN) as admin:
                applications = read_user_applications(await admin.get(("subtree", f'<federation xmlns="{FED}">'
                                                                                   "<service-users/></federation>")))
            assert applications[name] == "applied"
            c = await fed.members["C"].agent.session()
            with pytest.raises(RPCError) as err:
                await c.dispatch(FED.element("admit-service-user", leaves={"user-name": name}))
            assert err.value.tag == "access-denied"
            assert name not in read_user_applications(await c.get(("subtree", f'<federation xmlns="{FED}">'
                                                                              "<service-users/></federation>")))
            a = await fed.members["A"].agent.session()
            assert read_user_applications(await a.get(("subtree", f'<federation xmlns="{FED}"><service-users/>'
                                                                  "</federation>")))[name] == "applied"
            await a.dispatch(FED.element("admit-service-user", leaves={"user-name": name}))
            user.close()
            user = await login()
            assert read_user_applications(await user.get(("subtree", f'<federation xmlns="{FED}"><service-users/>'
                                                                     "</federation>"))) == {name: "admitted"}
            # Admitted: it requests services A pays for, not C's, and reads no NACM.
            await user.edit_config(request)
            with pytest.raises(RPCError) as err:
                await user.edit_config(service_request(f"{name}-c", "C", ("sae-c", "C"), ("sae-a", "A"), 1000))
            assert err.value.tag == "access-denied"
            nacm = await user.get_config(filter=("subtree", '<nacm xmlns="urn:ietf:params:xml:ns:yang:'
                                                            'ietf-netconf-acm"/>'))
            assert nacm is None or len(nacm) == 0
            await until(lambda: _routed(fed, f"{name}-s"), "the admitted user's service routed")
        finally:
            user.close()
            async with await fed.connect(ADMIN) as admin:
                await admin.edit_config(f'<federation xmlns="{FED}" xmlns:nc="{BASE}"><services>'
                                        f'<service nc:operation="remove"><service-id>{name}-s</service-id></service>'
                                        "</services></federation>")
    run(federation, scenario)


async def _routed(fed: FederatedStack, service: str) -> bool:
    status = (await services(fed)).get(service)
    return status is not None and status.status == "active"


# --- mobility ------------------------------------------------------------------------------------


async def attach(fed: FederatedStack, domain: str, km: str, sae: str, operation: str) -> None:
    """The operator of `domain` attaches (merge) or detaches (remove) an SAE on its key manager."""
    row = next(r for r in fed.host.table() if r.id == km)
    async with await fed.stacks[domain].endpoint(km, row.port, row.host_key).connect() as nc:
        await nc.edit_config(f'<key-manager xmlns="{KEY_MANAGER}" xmlns:nc="{BASE}"><saes>'
                             f'<sae nc:operation="{operation}"><sae-id>{sae}</sae-id></sae></saes></key-manager>')


def test_an_sae_that_moves_domains_keeps_its_service_with_keys_matching_and_charging_following():
    async def scenario() -> None:
        async with FederatedStack(embedded_topology("federation.yaml")) as fed:
            await fed.federate(WAIT_S)
            served: dict[str, str] = {}  # key ID -> the key manager that handed it to sae-c

            def count(where: str, keys: dict) -> None:
                assert not set(keys) & set(served), "a key ID served twice"
                served.update(dict.fromkeys(keys, where))
            async with await orchestrator(fed) as nc, aiohttp.ClientSession() as http:
                await nc.edit_config(intent_xml("travel", "sae-a", "sae-c"))
                intent = await intent_in(nc, "travel", "active")
                assert intent["federation"]["destination-domain"] == "C"
                for _ in range(2):
                    count(*await keys_until(http, fed, ["km-c3"], "keys before the move"))
                # sae-c moves into D's coverage: D attaches it and tells the platform.
                await attach(fed, "D", "km-d2", "sae-c", "merge")
                await fed.members["D"].sync()
                await fed.members["D"].agent.move_sae("sae-c")
                moved = time.monotonic()
                # Keys all along: the SAE takes them where they arrive (km-d2 once re-routed).
                while True:
                    got = await exchange(http, fed, "km-a1", ["km-d2", "km-c3"])
                    if got is not None:
                        count(*got)
                        if got[0] == "km-d2":
                            break
                    assert time.monotonic() - moved < WAIT_S, "keys never reached sae-c at km-d2"
                    await asyncio.sleep(0.1)
                count(*await keys_until(http, fed, ["km-d2"], "keys after the move"))
                service = (await services(fed))[service_name("A", "travel")]
                assert (service.route, service.destination_domain) == (("A", "D"), "D")
                # C's segment is gone: its operator detaches the SAE, and the intent says D.
                await until(lambda: _no_segment(fed, "C"), "C released its segment")
                await attach(fed, "C", "km-c3", "sae-c", "remove")
                intent = await intent_in(nc, "travel", "active", "through domains A, D")
                assert (intent["federation"]["destination-domain"], intent["federation"]["domains"]) == ("D",
                                                                                                        ["A", "D"])
                count(*await keys_until(http, fed, ["km-d2"], "keys once C let sae-c go"))
                # A key is handed out once: one taken at km-c3 before the move, one taken at
                # km-d2 after it, asked again where sae-c is now: refused; km-c3 no longer serves it.
                first, last = next(iter(served)), list(served)[-1]
                for km, key_id, status in (("km-d2", first, 400), ("km-d2", last, 400), ("km-c3", first, 401)):
                    async with http.post(f"{urls(fed)[km]}/api/v1/keys/sae-a/dec_keys", ssl=fed.sae_ssl("sae-c"),
                                         json={"key_IDs": [{"key_ID": key_id}]}) as reply:
                        assert reply.status == status, (km, await reply.text())
                # Charging: C is billed for what reached it, D for what reached it after the move.
                for _ in range(2):
                    await asyncio.sleep(0.1)
                    for member in fed.members.values():
                        await member.report()
                async with await fed.connect(ADMIN) as admin:
                    data = await admin.get(("subtree", f'<federation xmlns="{FED}"><charging/></federation>'))
                records = read_charging(data)
                billed: dict[tuple[str, str | None], int] = {}
                for c in records.values():
                    if c.service_id == service_name("A", "travel"):
                        billed[(c.member_id, c.agreement)] = billed.get((c.member_id, c.agreement), 0) + c.keys
                at_c = sum(1 for km in served.values() if km == "km-c3")
                at_d = sum(1 for km in served.values() if km == "km-d2")
                assert at_c >= 8 and at_d >= 8
                # Each transit and destination member is paid for what it carried, under the
                # agreement of the route of the time (A, the payer, owes itself nothing).
                assert {k: v for k, v in billed.items() if k[0] != "A"} == {
                    ("B", "A-B"): at_c, ("C", "B-C"): at_c, ("D", "A-D"): at_d}, (billed, at_c, at_d)
                assert not read_disputes(data)
                still_open = [c for c in records.values() if c.member_id in ("B", "C") and c.end_time is None
                              and c.service_id == service_name("A", "travel")]
                assert not still_open, "a record of the old route is still open after the move"
    asyncio.run(asyncio.wait_for(scenario(), 300))



def test_border_key_managers_peer_from_the_advertisements(federation):
    """Each domain advertises its border key managers' KM-to-KM URLs; the neighbour's agent
    writes the far end's into its own border key manager's peers (no deployment holds them)."""
    async def scenario(fed: FederatedStack) -> None:
        async def read(km: str, kind: str) -> etree._Element:
            row = next(r for r in fed.host.table() if r.id == km)
            domain = km.split("-")[1][0].upper()
            async with await fed.stacks[domain].endpoint(km, row.port, row.host_key).connect() as nc:
                if kind == "state":
                    return await nc.get(("subtree", f'<key-manager xmlns="{KEY_MANAGER}"><peer-interface/>'
                                                    "</key-manager>"))
                return await nc.get_config(filter=("subtree", f'<key-manager xmlns="{KEY_MANAGER}"><peers/>'
                                                              "</key-manager>"))
        async with await fed.connect(ADMIN) as admin:
            members = read_members(await admin.get(("subtree", f'<federation xmlns="{FED}"><members/>'
                                                               "<advertisements/></federation>")))
        b1 = next(n for n in members["B"][1].border_nodes if n.node_id == "qkd-b1")
        own_url = (await read("km-b1", "state")).findtext(f".//{{{KEY_MANAGER}}}peer-interface/{{{KEY_MANAGER}}}url")
        assert (b1.km_id, b1.km_url) == ("km-b1", own_url) and own_url
        peers = await read("km-a2", "config")
        urls_of = {p.findtext(f"{{{KEY_MANAGER}}}km-id"): p.findtext(f"{{{KEY_MANAGER}}}url")
                   for p in peers.iter(f"{{{KEY_MANAGER}}}peer")}
        assert urls_of.get("km-b1") == own_url
    run(federation, scenario)


def test_a_roaming_intent_whose_sae_comes_home_becomes_local_and_releases_the_service(federation):
    """Falling back: sae-c, served by C, is attached to A's km-a2; the intent of A no longer
    roams: the orchestrator releases the platform's service and realises it in A."""
    async def scenario(fed: FederatedStack) -> None:
        service = service_name("A", "home")
        async with await orchestrator(fed) as nc, aiohttp.ClientSession() as http:
            await nc.edit_config(intent_xml("home", "sae-a", "sae-c"))
            try:
                intent = await intent_in(nc, "home", "active")
                assert intent["federation"]["destination-domain"] == "C"
                await keys_until(http, fed, ["km-c3"], "keys while roaming")
                await attach(fed, "A", "km-a2", "sae-c", "merge")
                await until(lambda: _no_service(fed, service), "the platform's service released")

                async def local() -> dict | None:
                    found = await intent_of(nc, "home")
                    return found if found.get("state") == "active" and not found.get("federation") else None
                intent = await until(local, "intent home active in A alone")
                assert intent["reason"].startswith("keys flow over"), intent["reason"]
                assert all(c["status"] == "true" for c in intent["conditions"] if c["type"] == "ready")
                where, keys = await keys_until(http, fed, ["km-a2"], "keys within A")
                assert where == "km-a2" and len(keys) == 4
                for domain in ("B", "C", "D"):
                    await until(lambda: _no_segment(fed, domain), f"no segment intent left in {domain}")
            finally:
                await remove_intent(nc, "home")
                await until(lambda: _gone(nc, "home"), "intent home removed")
                await until(lambda: _detached(fed, "A", "km-a2", "sae-c"), "sae-c detached from km-a2 once its "
                                                                           "session went")
    run(federation, scenario)


async def _detached(fed: FederatedStack, domain: str, km: str, sae: str) -> bool:
    """Detach the SAE; False while a session of the key manager still names it."""
    try:
        await attach(fed, domain, km, sae, "remove")
    except RPCError:
        return False
    return True


def test_a_roaming_intent_says_why_it_waits_while_the_service_stratum_knows_no_sae():
    """A domain whose service stratum reports no SAE (here: a network without key managers): a
    new intent that may roam waits, saying so in its reason and conditions, instead of silently."""
    from devices.base import DEMO_PASSWORDS
    from tools.stack import Stack

    async def scenario() -> None:
        stack = Stack(embedded_topology("entanglement.yaml"), passwords=DEMO_PASSWORDS, insecure_sae_header=True)
        await stack.start()
        try:
            async with await stack.endpoint("orchestrator", stack.orchestrator.port).connect() as nc:
                await nc.edit_config(intent_xml("early", "sae-a", "sae-c"))
                intent = await intent_in(nc, "early", "installing", "reports no SAE of this domain's key managers")
                assert "whether sae-a and sae-c are served here or the intent must roam" in intent["reason"]
                assert {c["type"]: (c["status"], c["reason"]) for c in intent["conditions"]} == {
                    kind: ("false", "SaesUnknown") for kind in ("federated", "path-found", "ready")}
        finally:
            await stack.stop()
    asyncio.run(asyncio.wait_for(scenario(), 120))
