"""The federation platform and its agents over real SSH sessions on 127.0.0.1: membership and
its access control, advertisements, domain-level routing and re-routing, charging.

Four domains A, B, C, D, each a FederationAgent with its own SSH key, joined through the
platform's enrolment account. Links A-B, B-C, A-D, D-C; every agreement allows transit and
the route through D is dearer, so A to C goes through B until B cannot carry it. The domains'
side of the segment hook is `FakeDomain`: a small in-process domain that records what it holds.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncssh
import pytest
from lxml import etree

from netconf_core.client import NetconfClient
from netconf_core.errors import RPCError
from netconf_core.server import User
from models.federation import DeliveryReport, EndCount, Sae, advertisement_config, read_members
from models.ns import FEDERATION as FED_NS
from orchestrator.federation import ENROL_USER, FederationPlatform, Segment, SegmentReply
from orchestrator.federation_charging import iso
from orchestrator.federation_agent import (DomainResources, ExternalLink, FederationAgent, InternalLink, Node,
                                           PlatformEndpoint, SharingPolicy)

NS = {"f": FED_NS}
ADMIN_PW, ENROL_PW, ALICE_PW = "admin-secret", "enrol-secret", "alice-secret"
CAPACITY = 100_000
RATE = 10_000
AGREEMENTS = [("a-b", "A", "B", "0.002"), ("b-c", "B", "C", "0.003"), ("a-d", "A", "D", "0.005"),
              ("c-d", "C", "D", "0.005")]
# member -> (border node -> (peer member, peer node))
BORDERS = {"A": {"a1": ("B", "b1"), "a2": ("D", "d1")}, "B": {"b1": ("A", "a1"), "b2": ("C", "c1")},
           "C": {"c1": ("B", "b2"), "c2": ("D", "d2")}, "D": {"d1": ("A", "a2"), "d2": ("C", "c2")}}


def run(scenario: Callable[[Federation], Awaitable[None]], timeout: float = 40, **kwargs: Any) -> None:
    async def main() -> None:
        async with Federation(**kwargs) as federation:
            await scenario(federation)
    asyncio.run(asyncio.wait_for(main(), timeout))


def resources(member: str, capacity: int = CAPACITY, without: tuple[str, ...] = ()) -> DomainResources:
    """The domain as its orchestrator knows it: border nodes, an internal core node and the
    internal links, the inter-domain links, and one link to a non-member the policy hides."""
    m = member.lower()
    borders = BORDERS[member]
    nodes = tuple(Node(n, f"km-{n}", f"site-{n}") for n in borders) + (Node(f"{m}-core", f"km-{m}-core"),
                                                                        Node(f"{m}-edge", f"km-{m}-edge"))
    internal = tuple(InternalLink(n, f"{m}-core", 40_000) for n in borders)
    external = tuple(ExternalLink(f"{n}-{peer_node}", n, peer, peer_node, capacity)
                     for n, (peer, peer_node) in borders.items() if f"{n}-{peer_node}" not in without)
    hidden = ExternalLink(f"{m}-edge-x", f"{m}-edge", "X", "x-edge", capacity)
    return DomainResources(nodes, internal, external + (hidden,))


class FakeDomain:
    """A member's domain behind the segment hook: holds segments, or refuses them."""

    def __init__(self, member_id: str):
        self.member_id = member_id
        self.held: dict[str, Segment] = {}
        self.released: list[tuple[str, Segment]] = []
        self.refuse = False
        self.setting_up = False  # answers pending, as an orchestrator that has not decided yet
        self.stale_failures = 0  # requests answered failed (the verdict on a segment it held before)
        self.asked = 0

    async def request_segment(self, service_id: str, segment: Segment) -> SegmentReply:
        assert segment.domain == self.member_id
        self.asked += 1
        if self.refuse:
            return SegmentReply("failed", reason="no QKD path between the border nodes")
        self.held[service_id] = segment
        intent = f"{service_id}-{self.member_id}"
        if self.stale_failures:
            self.stale_failures -= 1
            return SegmentReply("failed", intent=intent, reason="no path over the old link")
        if self.setting_up:
            return SegmentReply("pending", intent=intent, reason="QKD links coming up")
        return SegmentReply("active", intent=intent)

    async def release_segment(self, service_id: str, segment: Segment) -> None:
        if self.held.get(service_id) == segment:
            del self.held[service_id]
        self.released.append((service_id, segment))


class Federation:
    def __init__(self, store_dir=None, keys: dict[str, asyncssh.SSHKey] | None = None):
        self.store_dir = store_dir
        self.domains = {m: FakeDomain(m) for m in BORDERS}
        self.keys = keys or {m: asyncssh.generate_private_key("ssh-ed25519") for m in BORDERS}
        self.agents: dict[str, FederationAgent] = {}
        self.clients: list[NetconfClient] = []
        self.clock = time.time()  # when the domains last read their key managers, a second apart

    def _platform(self, port: int = 0) -> FederationPlatform:
        users = {"admin": User(password=ADMIN_PW), ENROL_USER: User(password=ENROL_PW),
                 "alice": User(password=ALICE_PW)}
        return FederationPlatform(users, "admin", self.store_dir, port,
                                  segment_handlers=lambda ep: self.domains.get(ep.member_id))

    async def restart_platform(self) -> None:
        """Stop the platform and start a new one on the same port and store."""
        port = self.platform.port
        await self.platform.stop()
        self.platform = self._platform(port)
        await self.platform.start()
        self.admin = await self.connect("admin", password=ADMIN_PW)

    async def __aenter__(self) -> Federation:
        self.platform = self._platform()
        await self.platform.start()
        self.endpoint = PlatformEndpoint("127.0.0.1", self.platform.port, ENROL_PW,
                                         host_key=self.platform.server.public_host_key)
        for member in BORDERS:
            policy = SharingPolicy(frozenset(BORDERS[member]), peers=frozenset(BORDERS) - {member},
                                   capacity_share=Fraction(1, 2) if member == "D" else Fraction(1))
            self.agents[member] = FederationAgent(member, f"Operator {member}", self.keys[member], self.endpoint,
                                                  policy, agent_port=18300 + len(self.agents))
        self.admin = await self.connect("admin", password=ADMIN_PW)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            await agent.close()
        for client in self.clients:
            client.close()
        await self.platform.stop()

    async def connect(self, user: str, password: str | None = None,
                      key: asyncssh.SSHKey | None = None) -> NetconfClient:
        client = await NetconfClient.connect("127.0.0.1", self.platform.port, user, password=password,
                                             client_keys=[key] if key else None)
        self.clients.append(client)
        return client

    async def join(self, *members: str) -> None:
        """Every member applies, the administrator admits them, each advertises."""
        for member in members:
            await self.agents[member].update(resources(member))  # kept until admitted
            assert await self.agents[member].apply() == "applied"
        for member in members:
            await self.admin.dispatch(f'<admit-member xmlns="{FED_NS}"><member-id>{member}</member-id></admit-member>')
        for member in members:
            await self.agents[member].wait_admitted()
        await self.platform.settled()

    async def agree(self, *only: str) -> None:
        body = "".join(f"<agreement><agreement-id>{i}</agreement-id><member-a>{a}</member-a><member-b>{b}</member-b>"
                       f"<transit-allowed>true</transit-allowed><price-per-kbit>{price}</price-per-kbit></agreement>"
                       for i, a, b, price in AGREEMENTS if not only or i in only)
        await self.admin.edit_config(f'<federation xmlns="{FED_NS}"><agreements>{body}</agreements></federation>')

    async def request(self, client: NetconfClient, service_id: str, payer: str, source: str, destination: str,
                      rate: int = RATE) -> None:
        await client.edit_config(
            f'<federation xmlns="{FED_NS}"><services><service><service-id>{service_id}</service-id>'
            f"<requesting-member>{payer}</requesting-member>"
            f"<source><sae-id>sae-{source.lower()}</sae-id><domain>{source}</domain></source>"
            f"<destination><sae-id>sae-{destination.lower()}</sae-id><domain>{destination}</domain></destination>"
            f"<rate>{rate}</rate></service></services></federation>")
        await self.platform.settled()

    async def admin_do(self, rpc: str, member: str, reason: str = "") -> None:
        why = f"<reason>{reason}</reason>" if reason else ""
        await self.admin.dispatch(f'<{rpc} xmlns="{FED_NS}"><member-id>{member}</member-id>{why}</{rpc}>')
        await self.platform.settled()

    def segment(self, member: str, service_id: str) -> Segment:
        """The member's segment of the service: the one it holds, else the last it released."""
        held = self.domains[member].held.get(service_id)
        return held or next(s for sid, s in reversed(self.domains[member].released) if sid == service_id)

    async def report(self, member: str, service_id: str, ingress: int, egress: int,
                     links: tuple[str | None, str | None] | None = None) -> None:
        """The member's agent reports what its key managers counted at the two ends of its
        segment (256-bit keys), read a second after the previous report of any member."""
        if links is None:
            segment = self.segment(member, service_id)
            links = (segment.ingress.link_id if segment.ingress else None,
                     segment.egress.link_id if segment.egress else None)
        at_ingress, at_egress = links
        self.clock += 1
        await self.agents[member].report_delivery(DeliveryReport(service_id, iso_us(self.clock),
                                                                 iso_us(self.clock + 0.01), (
            EndCount("ingress", at_ingress, ingress, ingress * 256),
            EndCount("egress", at_egress, egress, egress * 256))))

    async def carry(self, service_id: str, keys: int, route: str) -> None:
        """Every domain of the route reports `keys` more at both ends, in route order, then
        once more with nothing new (each hop's counts compared both ways)."""
        for member in route:
            await self.report(member, service_id, keys, keys)
        for member in route:
            await self.report(member, service_id, 0, 0)

    async def ready(self) -> NetconfClient:
        """All four members with agreements, and alice acting for A."""
        await self.join(*BORDERS)
        await self.agree()
        await self.agents["A"].allow_service_user("alice")
        await self.platform.settled()
        return await self.connect("alice", password=ALICE_PW)


def iso_us(epoch: float) -> str:
    """A date-and-time to the microsecond."""
    return iso(epoch).replace("Z", f".{int(epoch % 1 * 1e6):06d}Z")


async def state(client: NetconfClient) -> etree._Element:
    data = await client.get(("subtree", f'<federation xmlns="{FED_NS}"/>'))
    assert data is not None
    return data


def service(data: etree._Element, service_id: str) -> dict[str, Any]:
    found = data.xpath(f"//f:service[f:service-id='{service_id}']", namespaces=NS)
    if not found:
        return {}
    s = found[0]
    return {"status": s.findtext("f:status", namespaces=NS), "reason": s.findtext("f:reason", "", namespaces=NS),
            "route": s.xpath("f:domain-route/text()", namespaces=NS),
            "segments": [(g.findtext("f:domain", namespaces=NS), g.findtext("f:ingress", namespaces=NS),
                          g.findtext("f:egress", namespaces=NS), g.findtext("f:status", namespaces=NS))
                         for g in s.iterfind("f:segments/f:segment", namespaces=NS)]}


def records(data: etree._Element) -> dict[tuple[str, str, str | None], dict[str, str | None]]:
    """The charging records by member, service and agreement."""
    return {(r.findtext("f:member-id", namespaces=NS), r.findtext("f:service-id", namespaces=NS),
             r.findtext("f:agreement", namespaces=NS)):
            {tag: r.findtext(f"f:{tag}", namespaces=NS)
             for tag in ("keys", "bits", "amount", "agreement", "start-time", "end-time", "hop", "disputed-keys")}
            for r in data.iterfind(".//f:charging/f:record", namespaces=NS)}


async def refused(connect: Awaitable[NetconfClient]) -> bool:
    try:
        client = await connect
    except asyncssh.PermissionDenied:
        return True
    client.close()
    return False


def test_join_admission_and_what_an_applicant_may_do():
    async def scenario(fed: Federation) -> None:
        a, b = fed.agents["A"], fed.agents["B"]
        stranger = asyncssh.generate_private_key("ssh-ed25519")
        # Nobody is known yet: A's key, a stranger's key and a wrong enrolment password are refused.
        assert await refused(NetconfClient.connect("127.0.0.1", fed.platform.port, "A", client_keys=[a.key]))
        assert await refused(NetconfClient.connect("127.0.0.1", fed.platform.port, ENROL_USER, password="guess"))
        await fed.admin.create_subscription(filter=("subtree", f'<member-joined xmlns="{FED_NS}"/>'))
        assert await a.apply() == "applied"
        assert await b.apply() == "applied"
        with pytest.raises(RPCError) as err:
            await a.apply()
        assert err.value.tag == "data-exists" and "already (status applied)" in err.value.message
        assert await refused(NetconfClient.connect("127.0.0.1", fed.platform.port, "A", client_keys=[stranger]))
        # The enrolment account may apply and nothing else.
        enrol = await fed.connect(ENROL_USER, password=ENROL_PW)
        with pytest.raises(RPCError) as err:
            await enrol.get()
        assert err.value.tag == "access-denied"
        # An applicant reads its own membership only, and may not advertise nor admit itself.
        assert await a.status() == "applied"
        applicant = await a.session()
        seen = await state(applicant)
        assert seen.xpath("//f:member/f:member-id/text()", namespaces=NS) == ["A"]
        assert seen.xpath("//f:agreements | //f:advertisements | //f:services", namespaces=NS) == []
        await a.update(resources("A"))  # kept until admission
        assert a.advertised is None
        with pytest.raises(RPCError) as err:
            await applicant.edit_config(advertisement_config(a.member_id, a.policy.advertisement(resources("A"))))
        assert err.value.tag == "access-denied"
        with pytest.raises(RPCError) as err:
            await applicant.dispatch(f'<admit-member xmlns="{FED_NS}"><member-id>A</member-id></admit-member>')
        assert err.value.tag == "access-denied"
        # The administrator admits A; A is told by member-joined and now reads the federation.
        await fed.admin_do("admit-member", "A")
        notification = await anext(fed.admin.notifications())
        joined = notification.find(f"{{{FED_NS}}}member-joined")
        assert joined is not None and joined.findtext(f"{{{FED_NS}}}member-id") == "A"
        await a.wait_admitted()
        await fed.agree("a-b")
        seen = await state(applicant)
        assert seen.xpath("//f:member/f:member-id/text()", namespaces=NS) == ["A", "B"]
        assert seen.xpath("//f:member[f:member-id='B']/f:status/text()", namespaces=NS) == ["applied"]
        assert seen.xpath("//f:agreement/f:agreement-id/text()", namespaces=NS) == ["a-b"]
        with pytest.raises(RPCError) as err:
            await fed.admin_do("suspend-member", "B")
        assert err.value.tag == "invalid-value" and "only an admitted member" in err.value.message
    run(scenario)


def test_advertisements_show_what_the_policy_allows_and_only_their_owner_writes_them():
    async def scenario(fed: Federation) -> None:
        await fed.join(*BORDERS)
        await fed.agree()
        await fed.platform.settled()
        a_view = await state(await fed.agents["A"].session())
        ad = a_view.xpath("//f:advertisement[f:member-id='D']", namespaces=NS)[0]
        assert ad.xpath("f:border-node/f:node-id/text()", namespaces=NS) == ["d1", "d2"]
        links = {l.findtext("f:link-id", namespaces=NS): (l.findtext("f:peer-member", namespaces=NS),
                                                          l.findtext("f:capacity", namespaces=NS),
                                                          l.findtext("f:available", namespaces=NS))
                 for l in ad.iterfind("f:inter-domain-link", namespaces=NS)}
        # D offers half its spare capacity; both ends advertise each link, so it is usable up
        # to the smaller offer; the link to the non-member X stays inside D.
        assert links == {"d1-a2": ("A", str(CAPACITY // 2), str(CAPACITY // 2)),
                         "d2-c2": ("C", str(CAPACITY // 2), str(CAPACITY // 2))}
        # Nothing of any domain's inside reaches the platform, whoever reads.
        for view in (a_view, await state(fed.admin)):
            text = etree.tostring(view).decode()
            for m in "abcd":
                assert f"{m}-core" not in text and f"{m}-edge" not in text and "x-edge" not in text
        assert fed.agents["B"].advertised == fed.agents["B"].policy.advertisement(resources("B"))
        # Others' agent endpoints and the access rules are the administrator's to read.
        assert a_view.xpath("//f:member[f:member-id='A']/f:agent/f:port/text()", namespaces=NS) == ["18300"]
        assert a_view.xpath("//f:member[f:member-id!='A']/f:agent", namespaces=NS) == []
        nacm = await (await fed.agents["A"].session()).get_config(
            filter=("subtree", '<nacm xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-acm"/>'))
        assert nacm is None or len(nacm) == 0
        # A may not write B's advertisement; B's stays as it was.
        a = await fed.agents["A"].session()
        forged = advertisement_config(fed.agents["A"].member_id, fed.agents["B"].policy.advertisement(resources("B")))
        forged.find(".//f:member-id", NS).text = "B"
        for link in forged.iterfind(".//f:capacity", NS):
            link.text = "1"
        with pytest.raises(RPCError) as err:
            await a.edit_config(forged)
        assert err.value.tag == "access-denied"
        assert "advertisement[" in (err.value.path or "") and "member-id='B']" in (err.value.path or "")
        after = await state(fed.admin)
        assert after.xpath("//f:advertisement[f:member-id='B']//f:capacity/text()", namespaces=NS) == [
            str(CAPACITY)] * 2
    run(scenario)


def test_route_through_b_then_via_d_when_b_withdraws_with_charging_and_visibility():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C")
        await fed.request(alice, "s2", "A", "A", "B", rate=5_000)
        s1 = service(await state(fed.admin), "s1")
        assert s1["status"] == "active" and s1["route"] == ["A", "B", "C"]
        assert s1["reason"] == "routed through A, B, C"
        assert s1["segments"] == [("A", None, "a1", "active"), ("B", "b1", "b2", "active"),
                                  ("C", "c1", None, "active")]
        held = fed.domains["B"].held["s1"]
        assert (held.ingress.peer_member, held.ingress.peer_node, held.egress.peer_member, held.egress.peer_node,
                held.rate) == ("A", "a1", "C", "c1", RATE)
        assert fed.domains["A"].held["s1"].source_sae == "sae-a"
        assert fed.domains["C"].held["s1"].destination_sae == "sae-c"
        # alice acts for A: she may not request a service B would pay for.
        with pytest.raises(RPCError) as err:
            await fed.request(alice, "s9", "B", "B", "C")
        assert err.value.tag == "access-denied" and "which B pays for" in err.value.message
        assert err.value.path == "/qi-federation:federation/qi-federation:services/qi-federation:service" \
                                 "[qi-federation:service-id='s9']"
        # Deliveries before the failure, both ends of every hop agreeing.
        await fed.carry("s1", 40, "ABC")
        await fed.carry("s1", 10, "ABC")
        await fed.carry("s2", 20, "AB")
        with pytest.raises(RPCError) as err:
            await fed.report("D", "s1", 1, 1, links=("d1-a2", "d2-c2"))
        assert err.value.tag == "invalid-value" and "D has no segment of service s1" in err.value.message
        with pytest.raises(RPCError) as err:  # B's segment does not leave through its link to A
            await fed.report("B", "s1", 1, 1, links=("b1-a1", "b1-a1"))
        assert err.value.tag == "invalid-value" and "whose egress is link b1-a1" in err.value.message
        # B leaves: s1 moves through D, make-before-break; s2 ends in B and cannot move.
        d = await fed.connect("D", key=fed.keys["D"])  # the agent's session follows membership
        await d.create_subscription(filter=("subtree", f'<service-status-change xmlns="{FED_NS}"/>'))
        await fed.agents["B"].withdraw("leaving the federation")
        await fed.platform.settled()
        await fed.request(d, "s4", "D", "D", "A")  # D's own, after s1's and s2's changes
        told = []
        async for notification in d.notifications():
            told.append(notification.findtext(".//f:service-id", namespaces=NS))
            if told[-1] == "s4":
                break
        assert told == ["s1", "s4"]  # D carries s1; s2 is none of its business
        data = await state(fed.admin)
        s1 = service(data, "s1")
        assert s1["status"] == "active" and s1["route"] == ["A", "D", "C"]
        assert s1["reason"] == "re-routed through A, D, C: member B withdrew"
        assert s1["segments"] == [("A", None, "a2", "active"), ("D", "d1", "d2", "active"),
                                  ("C", "c2", None, "active")]
        assert "s1" not in fed.domains["B"].held and "s1" in fed.domains["D"].held
        assert fed.domains["A"].held["s1"].egress.link_id == "a2-d1"
        assert service(data, "s2")["status"] == "failed"
        assert service(data, "s2")["reason"] == "member B withdrew"
        assert "s2" not in fed.domains["A"].held
        assert data.xpath("//f:member[f:member-id='B']/f:status/text()", namespaces=NS) == ["withdrawn"]
        assert data.xpath("//f:advertisement[f:member-id='B']", namespaces=NS) == []
        assert await refused(NetconfClient.connect("127.0.0.1", fed.platform.port, "B",
                                                   client_keys=[fed.agents["B"].key]))
        await fed.carry("s1", 30, "ADC")
        # Charging: one record per member, service, segment and agreement, with what both ends
        # of its hop confirmed, priced by the agreement towards the payer (the payer owes
        # itself nothing). A's and C's segments changed: their old records are closed.
        data = await state(fed.admin)
        listed = data.xpath("//f:charging/f:record", namespaces=NS)
        charged = records(data)
        assert len(listed) == len(charged) + 1  # A's two own records of s1 share the key (A, s1, None)
        expected = {("B", "s1", "a-b"): (50, "0.002", "b2-c1"), ("C", "s1", "b-c"): (50, "0.003", "b2-c1"),
                    ("C", "s1", "c-d"): (30, "0.005", "d2-c2"), ("D", "s1", "a-d"): (30, "0.005", "d2-c2"),
                    ("B", "s2", "a-b"): (20, "0.002", "a1-b1"), ("A", "s4", "a-d"): (0, "0.005", "d1-a2")}
        own = {key: record for key, record in charged.items() if key[2] is None}
        assert set(own) == {("A", "s1", None), ("A", "s2", None), ("D", "s4", None)}  # A's s1 records: see below
        for key, (keys, price, hop) in expected.items():
            record = charged[key]
            assert (int(record["keys"]), int(record["bits"]), record["hop"]) == (keys, keys * 256, hop), key
            assert Decimal(record["amount"]) == Decimal(keys * 256) / 1000 * Decimal(price), key
        a_s1 = sorted((int(r.findtext("f:record-id", namespaces=NS)), r.findtext("f:hop", namespaces=NS),
                       int(r.findtext("f:keys", namespaces=NS)), r.findtext("f:end-time", namespaces=NS) is None)
                      for r in listed if (r.findtext("f:member-id", namespaces=NS),
                                          r.findtext("f:service-id", namespaces=NS)) == ("A", "s1"))
        assert [(hop, keys, is_open) for _, hop, keys, is_open in a_s1] == [("a1-b1", 50, False), ("a2-d1", 30, True)]
        assert charged[("B", "s1", "a-b")]["end-time"] is not None
        assert charged[("C", "s1", "b-c")]["end-time"] is not None and charged[("C", "s1", "c-d")]["end-time"] is None
        assert data.xpath("//f:charging/f:dispute", namespaces=NS) == []
        # Who sees what: the administrator everything, alice A's services and what A pays,
        # C the service through it and its own record only.
        c_view = await state(await fed.agents["C"].session())
        assert service(c_view, "s1") and not service(c_view, "s2")
        assert set(records(c_view)) == {("C", "s1", "b-c"), ("C", "s1", "c-d")}
        d_view = await state(await fed.agents["D"].session())
        # owed to D, or D pays
        assert set(records(d_view)) == {("D", "s1", "a-d"), ("D", "s4", None), ("A", "s4", "a-d")}
        alice_view = await state(alice)
        assert service(alice_view, "s1") and service(alice_view, "s2")
        assert set(records(alice_view)) == set(charged) - {("D", "s4", None)}
    run(scenario)


def test_reroute_when_a_link_is_withdrawn_or_its_capacity_drops_and_suspension():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()
        await fed.request(alice, "s1", "A", "A", "C", rate=30_000)
        assert service(await state(alice), "s1")["route"] == ["A", "B", "C"]
        # B stops offering its link to C: s1 goes through D (which offers 50 000 bit/s).
        await fed.agents["B"].update(resources("B", without=("b2-c1",)))
        await fed.platform.settled()
        s1 = service(await state(alice), "s1")
        assert (s1["status"], s1["route"]) == ("active", ["A", "D", "C"])
        assert s1["reason"] == "re-routed through A, D, C: B withdrew inter-domain link b2-c1 from its advertisement"
        data = await state(fed.admin)
        assert data.xpath("//f:advertisement[f:member-id='D']/f:inter-domain-link/f:available/text()",
                          namespaces=NS) == ["20000", "20000"]
        # B offers the link again: s1 stays where it is (no flapping back).
        await fed.agents["B"].update(resources("B"))
        await fed.platform.settled()
        assert service(await state(alice), "s1")["route"] == ["A", "D", "C"]
        # D's spare capacity drops below s1's rate: back through B, and the reason says why.
        await fed.agents["D"].update(resources("D", capacity=40_000))
        await fed.platform.settled()
        s1 = service(await state(alice), "s1")
        assert (s1["status"], s1["route"]) == ("active", ["A", "B", "C"])
        assert s1["reason"] == ("re-routed through A, B, C: inter-domain link a2-d1 (A-D) has 20000 bit/s left "
                                "of its 20000 bit/s, the service needs 30000")
        # The destination's member is suspended: no route; admitted again: routed again.
        await fed.admin_do("suspend-member", "C")
        s1 = service(await state(alice), "s1")
        assert (s1["status"], s1["reason"], s1["route"]) == ("failed", "member C is suspended", [])
        assert "s1" not in fed.domains["A"].held and "s1" not in fed.domains["C"].held
        c = await fed.agents["C"].session()
        assert service(await state(c), "s1") == {}  # a suspended member reads its membership only
        await fed.admin_do("admit-member", "C")
        s1 = service(await state(alice), "s1")
        assert (s1["status"], s1["route"]) == ("active", ["A", "B", "C"])
        # Deleting the service releases every segment.
        await alice.edit_config(f'<federation xmlns="{FED_NS}" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                '<services><service nc:operation="delete"><service-id>s1</service-id></service>'
                                "</services></federation>")
        await fed.platform.settled()
        assert all("s1" not in domain.held for domain in fed.domains.values())
    run(scenario)


def test_transit_needs_agreements_and_a_failing_transit_domain_is_routed_around():
    async def scenario(fed: Federation) -> None:
        await fed.join(*BORDERS)
        await fed.agree("a-b", "b-c", "a-d")
        a = await fed.agents["A"].session()
        # Without transit through B there is no way to C; the service says why.
        await fed.admin.edit_config(f'<federation xmlns="{FED_NS}"><agreements><agreement><agreement-id>b-c'
                                    "</agreement-id><transit-allowed>false</transit-allowed></agreement>"
                                    "</agreements></federation>")
        await fed.request(a, "s1", "A", "A", "C")
        s1 = service(await state(a), "s1")
        assert s1["status"] == "rejected" and s1["route"] == []
        assert s1["reason"].startswith("no route from A to C with 10000 bit/s")
        assert "transit-allowed agreements with both its neighbours" in s1["reason"]
        # C and D agree: A, D, C is a route (level-triggered: the rejected service is placed).
        await fed.agree("c-d")
        await fed.platform.settled()
        assert service(await state(a), "s1")["route"] == ["A", "D", "C"]
        # Transit through B allowed again, but B cannot set up its segment: D it stays.
        fed.domains["B"].refuse = True
        await fed.agents["D"].update(resources("D", without=("d2-c2",)))
        await fed.admin.edit_config(f'<federation xmlns="{FED_NS}"><agreements><agreement><agreement-id>b-c'
                                    "</agreement-id><transit-allowed>true</transit-allowed></agreement>"
                                    "</agreements></federation>")
        await fed.platform.settled()
        s1 = service(await state(a), "s1")
        assert s1["status"] == "failed" and s1["route"] == []
        assert "domain B failed its segment" in s1["reason"] and "avoiding B" in s1["reason"]
        assert fed.domains["B"].held == {} and fed.domains["A"].held == {}
        await fed.agents["D"].update(resources("D"))
        await fed.platform.settled()
        s1 = service(await state(a), "s1")
        assert (s1["status"], s1["route"]) == ("active", ["A", "D", "C"])
        # A new service would go through B (cheaper), but B's segments never came up: its
        # rating (availability 0) flags it, so D carries the new service from the start.
        data = await state(fed.admin)
        assert data.xpath("//f:ratings/f:rating[f:member-id='B']/f:availability/text()", namespaces=NS) == ["0.000"]
        assert data.xpath("//f:ratings/f:rating[f:member-id='B']/f:below-threshold/text()", namespaces=NS) == ["true"]
        await fed.request(a, "s2", "A", "A", "C")
        s2 = service(await state(a), "s2")
        assert (s2["status"], s2["route"]) == ("active", ["A", "D", "C"])
        assert s2["reason"] == "routed through A, D, C"
        assert all(sid != "s2" for sid, _ in fed.domains["A"].released)  # never sent towards B
        # A domain reports later that its segment degraded: the service says so.
        await fed.platform.segment_changed("s2", "D", SegmentReply("degraded", "s2-D", "QBER above 8 %"))
        s2 = service(await state(a), "s2")
        assert s2["status"] == "degraded"
        assert s2["reason"] == "domain D delivers less than the rate on its segment: QBER above 8 %"
    run(scenario)


def test_a_pending_segment_is_asked_again_when_its_domain_s_report_is_lost():
    async def scenario(fed: Federation) -> None:
        a = await fed.ready()
        fed.domains["C"].setting_up = True
        await fed.request(a, "s1", "A", "A", "C")
        s1 = service(await state(a), "s1")
        assert (s1["status"], s1["route"]) == ("establishing", ["A", "B", "C"])
        assert s1["reason"] == "domain C is still setting up its segment: QKD links coming up"
        # C's segment comes up, but its report never reaches the platform (it crossed the
        # platform's request and was overtaken by the request's older answer, or was given up).
        asked = fed.domains["C"].asked
        fed.domains["C"].setting_up = False
        async with asyncio.timeout(10):  # level-triggered: the platform asks again and sees it active
            while (s1 := service(await state(a), "s1"))["status"] != "active":
                await asyncio.sleep(0.1)
        assert s1["reason"] == "routed through A, B, C" and fed.domains["C"].asked > asked
        assert fed.domains["C"].held["s1"] == fed.segment("C", "s1")
    run(scenario)


def test_a_source_segment_that_reports_it_came_up_after_failing_is_charged():
    async def scenario(fed: Federation) -> None:
        a = await fed.ready()
        fed.domains["A"].stale_failures = 1
        await fed.request(a, "s1", "A", "A", "C")
        assert service(await state(a), "s1")["status"] == "failed"
        # A's orchestrator then realises the segment and A's agent says so, before the platform
        # asks again: the service is active and A's segment has its record.
        await fed.platform.segment_changed("s1", "A", SegmentReply("active", "s1-A"))
        assert service(await state(a), "s1")["status"] == "active"
        await fed.carry("s1", 7, "ABC")
        assert {(m, agreement): int(r["keys"]) for (m, sid, agreement), r in records(await state(fed.admin)).items()
                if sid == "s1"} == {("A", None): 7, ("B", "a-b"): 7, ("C", "b-c"): 7}
    run(scenario)


def test_memberships_and_charging_survive_a_restart(tmp_path):
    keys = {m: asyncssh.generate_private_key("ssh-ed25519") for m in BORDERS}

    async def first(fed: Federation) -> None:
        await fed.join("A", "B")
        await fed.agree("a-b")
        await fed.request(await fed.agents["A"].session(), "s1", "A", "A", "B")
        await fed.carry("s1", 5, "AB")

    async def second(fed: Federation) -> None:
        await fed.platform.settled()
        assert await fed.agents["A"].status() == "admitted"
        data = await state(fed.admin)
        assert records(data)[("B", "s1", "a-b")]["bits"] == "1280"
        assert service(data, "s1")["status"] == "active"
        assert fed.domains["B"].held["s1"].ingress.peer_node == "a1"  # asked again: the hook is idempotent
        assert await refused(NetconfClient.connect("127.0.0.1", fed.platform.port, "C", client_keys=[keys["C"]]))

    run(first, store_dir=tmp_path, keys=keys)
    run(second, store_dir=tmp_path, keys=keys)


def test_agents_reconnect_after_a_platform_restart_and_follow_the_membership_again(tmp_path):
    async def scenario(fed: Federation) -> None:
        await fed.join("A", "B")
        await fed.restart_platform()  # every member's session is gone

        async def b_links() -> dict[str, str]:
            data = await state(fed.admin)
            return {l.findtext("f:link-id", namespaces=NS): l.findtext("f:capacity", namespaces=NS)
                    for l in data.xpath("//f:advertisement[f:member-id='B']/f:inter-domain-link", namespaces=NS)}

        async def until(check: Callable[[], Awaitable[bool]]) -> None:
            async with asyncio.timeout(10):
                while not await check():
                    await asyncio.sleep(0.05)

        # B's network changes: its agent opens a new session to say so.
        await fed.agents["B"].update(resources("B", capacity=CAPACITY // 4))
        assert await b_links() == {"b1-a1": str(CAPACITY // 4)}
        # C joins: B's agent follows the membership again and offers its link to C.
        await fed.join("C")
        await until(lambda: _equal(b_links(), {"b1-a1": str(CAPACITY // 4), "b2-c1": str(CAPACITY // 4)}))
    run(scenario, store_dir=tmp_path)


async def _equal(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


def test_a_service_follows_its_sae_to_another_member_and_only_that_member_may_say_so():
    async def scenario(fed: Federation) -> None:
        alice = await fed.ready()

        async def serve(member: str, *saes: Sae) -> None:
            agent = fed.agents[member]
            agent.policy = replace(agent.policy, saes=None)  # every SAE its key managers serve
            await agent.update(replace(resources(member), saes=saes))
        await serve("A", Sae("sae-a", "km-a1"))
        await serve("C", Sae("sae-c", "km-c3"))
        await fed.request(alice, "s1", "A", "A", "C")
        assert service(await state(alice), "s1")["route"] == ["A", "B", "C"]
        # sae-c visits D: while C still serves it too, the service stays.
        await serve("D", Sae("sae-c", "km-d2", "Bank C branch", ("vpn",)))
        await fed.platform.settled()
        assert service(await state(alice), "s1")["route"] == ["A", "B", "C"]
        d, b = await fed.agents["D"].session(), await fed.agents["B"].session()
        for session, sae, member, tag, words in (
                (b, "sae-c", "D", "access-denied", "only member D"),
                (d, "sae-x", "D", "invalid-value", "does not advertise SAE sae-x"),
                (fed.admin, "sae-c", "Z", "invalid-value", "member Z is not a member")):
            with pytest.raises(RPCError) as err:
                await session.dispatch(f'<move-sae xmlns="{FED_NS}"><sae-id>{sae}</sae-id>'
                                       f"<member-id>{member}</member-id></move-sae>")
            assert err.value.tag == tag and words in err.value.message, err.value.message
        await fed.agents["D"].move_sae("sae-c")
        await fed.platform.settled()
        moved = service(await state(alice), "s1")
        assert moved["route"] == ["A", "D"] and moved["status"] == "active"
        assert "SAE sae-c moved from C to D" in moved["reason"]
        data = await state(alice)
        assert data.xpath("//f:service[f:service-id='s1']/f:destination/f:current-domain/text()",
                          namespaces=NS) == ["D"]
        assert fed.segment("D", "s1").destination_km == "km-d2" and "s1" not in fed.domains["C"].held
        # D's advertisement says what the visiting application offers.
        _, offer = read_members(await state(alice))["D"]
        assert offer.saes == (Sae("sae-c", "km-d2", "Bank C branch", ("vpn",)),)
    run(scenario)
