"""`qstrata demo --federation`: a federation of four QKD networks on loopback, in one command.

It starts the plant of devices/topologies/federation.yaml (domains A, B, C, D), each domain's
stratum controllers, orchestrator and federation agent, and the federation platform. Then it
acts as the operators, the federation's administrator and a user of domain A would, over
NETCONF and ETSI GS QKD 014 only: the domains join and agree transit; the user asks the
platform for keys between SAE sae-a (in A) and SAE sae-c (in C); both applications fetch keys
and compare them; the fibre between A and B is cut; the platform re-routes the service
through D; the keys match again; the charging records add up to the keys delivered, each on
the segment and agreement that carried them, as both ends of every inter-domain hop counted
them; the payer's settlement for the period and the members' ratings. Then roaming (Y.QKDNf
6.3): a user of domain C asks C's own orchestrator for keys between sae-c and sae-a, which C
does not serve; the intent (allow-federation) is escalated to the platform and served across
the domains. And mobility: sae-c moves to D's key manager km-d2 (D attaches it and calls
move-sae; C detaches it once its segments are released); both services follow it and their
keys match again. It ends with a summary: what roaming, mobility, charging, the settlement and
the ratings came to, then every step; the exit code is 0 only if every step succeeded.
"""
from __future__ import annotations

import asyncio
import datetime as dt

from lxml import etree

from models.federation import (read_charging, read_disputes, read_ratings, read_service_statuses, read_settlement,
                               settle_request)
from models.ns import FEDERATION, FIBRE_PLANT
from netconf_core.errors import RPCError
from tools.demo_steps import StepFailed, Steps, exchange_keys

TOPOLOGY = "federation.yaml"
SERVICE_ID, PAYER, RATE = "a-to-c", "A", 10000
SOURCE, DESTINATION = ("sae-a", "A"), ("sae-c", "C")
CUT_SPAN = "a2-b1"
POLL_S = 0.2
ROAMING_INTENT, HOME = "to-bank-a", "C"   # an intent of C's orchestrator, sae-c -> sae-a
VISITED, VISITED_KM = "D", "km-d2"        # where sae-c moves


def service_state(data: etree._Element | None, service_id: str = SERVICE_ID) -> dict:
    """Status, reason, route and segments (domain, ingress, egress, intent, status) of a
    cross-domain service in a qi-federation reply; {} when it is not there."""
    service = read_service_statuses(data).get(service_id)
    if service is None:
        return {}
    return {"status": service.status, "reason": service.reason, "route": list(service.route),
            "segments": [(s.domain, s.ingress, s.egress, s.intent, s.status) for s in service.segments]}


SUMMARY_LINES = ("roaming", "mobility", "charging", "settlement", "ratings")


class FederationDemo(Steps):
    figures: dict[str, str]  # what the summary shows of each part of the story, as it happened

    def summary(self) -> int:
        print("\nFEDERATION", flush=True)
        for part in SUMMARY_LINES:
            print(f"  {part}: {self.figures.get(part, 'not reached')}", flush=True)
        return super().summary()

    async def run(self) -> int:
        self.figures = {}
        from devices.topology import embedded_topology
        from tools.federated_stack import FederatedStack

        fed = FederatedStack(embedded_topology(TOPOLOGY))
        try:
            if await self.step("Start domains A, B, C, D (devices, 3 controllers, orchestrator, agent) and the "
                               "federation platform", lambda: self._start_federation(fed)):
                await self._story(fed)
        finally:
            print("shutting down ...", flush=True)
            await fed.stop()
        return self.summary()

    async def _start_federation(self, fed) -> str:
        await fed.start(self.timeout)
        devices = len(fed.host.table())
        return (f"{devices} devices on one emulated plant; {len(fed.stacks)} domains of 4 NETCONF levels each; "
                f"federation platform at port {fed.platform.port}")

    async def _story(self, fed) -> None:
        import aiohttp

        from devices.host import PLANT_ID
        from models.intent import read_intents
        from models.ns import INTENT, KEY_MANAGER
        from netconf_core.ns import BASE
        from orchestrator.federation_roaming import service_name
        from tools.federated_stack import ADMIN, service_request, service_user

        user = await fed.connect(service_user(PAYER))
        seen: dict = {}
        delivered: list[int] = []  # keys fetched end to end, before and after the failure
        urls = {row.id: row.etsi014_url for row in fed.host.table()}
        km = {sae.id: sae.km for sae in fed.topology.saes}

        async def federate() -> str:
            await fed.federate(self.timeout)
            links = sorted({b.link_id for m in fed.members.values() for b in m.border_links})
            return (f"{', '.join(fed.members)} admitted; transit agreed between neighbours; inter-domain links "
                    f"{', '.join(links)} up, each configured by its two domains, one end each")

        async def request() -> str:
            await user.edit_config(service_request(SERVICE_ID, PAYER, SOURCE, DESTINATION, RATE))
            return (f"service {SERVICE_ID}: {SOURCE[0]} ({SOURCE[1]}) -> {DESTINATION[0]} ({DESTINATION[1]}), "
                    f"{RATE} bit/s, asked by {service_user(PAYER)} on the platform's service interface")

        async def routed(avoid: str | None = None) -> str:
            async with asyncio.timeout(self.timeout):
                while True:
                    state = service_state(await user.get(("subtree", f'<federation xmlns="{FEDERATION}"><services/>'
                                                                     "</federation>")))
                    if state.get("status") != seen.get("status") or state.get("route") != seen.get("route"):
                        self.say(f"{state.get('status')} {' - '.join(state.get('route') or [])}: {state.get('reason')}")
                        seen.update(state)
                    if state.get("status") == "active" and avoid not in state["route"]:
                        return f"active through {', '.join(state['route'])}: {state['reason']}"
                    await asyncio.sleep(POLL_S)

        async def keys(master: str = SOURCE[0], slave: str = DESTINATION[0]) -> str:
            async with aiohttp.ClientSession() as http:
                ids, same = await exchange_keys(http, (urls[km[master]], master), (urls[km[slave]], slave),
                                                timeout=self.timeout, tls=fed.sae_ssl)
            if not same:
                raise StepFailed("the two ends got different keys")
            if master == SOURCE[0]:
                delivered.append(len(ids))
            return (f"{len(ids)} keys of 256 bits: enc_keys for {master} at {km[master]}, dec_keys for {slave} at "
                    f"{km[slave]}; they match (first ID {ids[0]})")

        async def cut() -> str:
            plant = next(row for row in fed.host.table() if row.id == PLANT_ID)
            where = fed.stacks[PAYER].endpoint(plant.id, plant.port)
            async with await where.connect() as nc:
                await nc.dispatch(f'<cut-span xmlns="{FIBRE_PLANT}"><span-id>{CUT_SPAN}</span-id></cut-span>')
            return f"fibre {CUT_SPAN} between domains A and B cut (cut-span of the emulated plant)"

        async def report_twice() -> None:
            """Each domain reports what its key managers counted; a second round lets every
            hop's two counts be compared, the newer with the older."""
            for _ in range(2):
                await asyncio.sleep(0.1)
                for member in fed.members.values():
                    await member.report()

        async def charging() -> str:
            await report_twice()
            async with await fed.connect(ADMIN) as admin:
                data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><charging/></federation>'))
            records = sorted((c for c in read_charging(data).values() if c.service_id == SERVICE_ID),
                             key=lambda c: c.record_id)
            for c in records:
                self.say(f"{c.member_id}: {c.keys} keys, {c.bits} bits on hop {c.hop or '-'}, agreement "
                         f"{c.agreement or '- (its own)'}, owed {c.amount} credits"
                         + (", closed" if c.end_time else ""))
            before, after = delivered[0], sum(delivered[1:])
            wanted = {("A", None): before + after, ("B", "A-B"): before, ("C", "B-C"): before,
                      ("C", "C-D"): after, ("D", "A-D"): after}
            totals: dict[tuple[str, str | None], int] = {}
            for c in records:
                totals[(c.member_id, c.agreement)] = totals.get((c.member_id, c.agreement), 0) + c.keys
            if totals != wanted or read_disputes(data):
                raise StepFailed(f"charged keys {totals}, but {wanted} were delivered; disputes "
                                 f"{list(read_disputes(data).values())}")
            self.figures["charging"] = (f"{before + after} keys, each billed on the agreement that carried it "
                                        f"(B-C {before}, C-D {after}), confirmed by both ends of every hop; "
                                        "no disputes")
            return (f"{before + after} keys delivered end to end, each charged on the segment and agreement that "
                    f"carried it and confirmed by both ends of its hop: C {before} under B-C then {after} under "
                    f"C-D, B {before}, D {after}; no disputes")

        async def settlement() -> str:
            start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
            period = [t.isoformat(timespec="seconds").replace("+00:00", "Z")
                      for t in (start, start + dt.timedelta(hours=2))]
            async with await fed.connect(ADMIN) as admin:
                bill = read_settlement(await admin.dispatch(settle_request(PAYER, *period)))
                data = await admin.get(("subtree", f'<federation xmlns="{FEDERATION}"><ratings/></federation>'))
            for line in bill.lines:
                self.say(f"{PAYER} {line.direction} {line.counterparty}: {line.keys} keys under {line.agreement} "
                         f"at {line.price_per_kbit} credits/kbit = {line.amount} credits")
            ratings = read_ratings(data)
            for member, r in sorted(ratings.items()):
                self.say(f"rating {member}: delivery {r.delivery_ratio}, availability {r.availability}, disputes "
                         f"{r.disputes}, score {r.score}" + (" (below the threshold)" if r.below_threshold else ""))
            if bill.payable <= 0 or set(ratings) != set(fed.members):
                raise StepFailed(f"settlement {bill} / ratings {ratings} incomplete")
            self.figures["settlement"] = f"{PAYER} owes {bill.payable} credits: " + "; ".join(
                f"{line.counterparty} {line.amount} under {line.agreement}" for line in bill.lines if
                line.direction == "payable")
            self.figures["ratings"] = ", ".join(
                f"{m} {r.score} (delivery {r.delivery_ratio}, availability {r.availability}, {r.disputes} disputes)"
                + (" below the threshold" if r.below_threshold else "") for m, r in sorted(ratings.items()))
            return (f"{PAYER} owes {bill.payable} credits for the period over {len(bill.lines)} lines; ratings of "
                    f"{', '.join(f'{m} {r.score}' for m, r in sorted(ratings.items()))}")

        async def roaming_intent() -> str:
            stack = fed.stacks[HOME]
            async with await stack.endpoint("orchestrator", stack.orchestrator.port).connect() as nc:
                await nc.edit_config(
                    f'<intents xmlns="{INTENT}"><intent><name>{ROAMING_INTENT}</name><endpoints>'
                    f"<source-sae>{DESTINATION[0]}</source-sae><destination-sae>{SOURCE[0]}</destination-sae>"
                    f"</endpoints><min-rate>{RATE}</min-rate><allow-federation>true</allow-federation></intent>"
                    "</intents>")
                async with asyncio.timeout(self.timeout):
                    while (intent := read_intents(await nc.get(("subtree", f'<intents xmlns="{INTENT}"/>'))).get(
                            ROAMING_INTENT, {})).get("state") != "active":
                        await asyncio.sleep(POLL_S)
            route = intent["federation"]["domains"]
            segments = ", ".join(f"{s['domain']} {s['status']}" for s in intent["federation"]["segments"])
            self.figures["roaming"] = (f"intent {ROAMING_INTENT} of {HOME} ({DESTINATION[0]} -> {SOURCE[0]}) served by "
                                       f"service {intent['federation']['service']} through {', '.join(route)}")
            return (f"intent {ROAMING_INTENT} of {HOME}'s orchestrator, {DESTINATION[0]} -> {SOURCE[0]} (not served "
                    f"by {HOME}): escalated as service {intent['federation']['service']}, active through "
                    f"{', '.join(route)} (segments: {segments})")

        async def roaming_keys() -> str:
            return await keys(DESTINATION[0], SOURCE[0])

        async def km_sae(domain: str, km_id: str, operation: str) -> None:
            row = next(r for r in fed.host.table() if r.id == km_id)
            async with await fed.stacks[domain].endpoint(km_id, row.port, row.host_key).connect() as nc:
                await nc.edit_config(f'<key-manager xmlns="{KEY_MANAGER}" xmlns:nc="{BASE}"><saes><sae '
                                     f'nc:operation="{operation}"><sae-id>{DESTINATION[0]}</sae-id></sae></saes>'
                                     "</key-manager>")

        async def move() -> str:
            moved = asyncio.get_running_loop().time()
            await km_sae(VISITED, VISITED_KM, "merge")
            await fed.members[VISITED].sync()
            await fed.members[VISITED].agent.move_sae(DESTINATION[0])
            wanted = {SERVICE_ID: (SOURCE[1], VISITED), service_name(HOME, ROAMING_INTENT): (VISITED, SOURCE[1])}
            async with await fed.connect(ADMIN) as admin, asyncio.timeout(self.timeout):
                while True:
                    states = read_service_statuses(await admin.get(("subtree", f'<federation xmlns="{FEDERATION}">'
                                                                               "<services/></federation>")))
                    if all(states.get(s) is not None and states[s].status == "active" and
                           (states[s].route[0], states[s].route[-1]) == ends for s, ends in wanted.items()):
                        break
                    await asyncio.sleep(POLL_S)
            took = asyncio.get_running_loop().time() - moved
            km[DESTINATION[0]] = VISITED_KM
            self.figures["mobility"] = (f"{DESTINATION[0]} moved from {DESTINATION[1]} to {VISITED}; both services "
                                        f"re-routed in {took:.1f} s (" + "; ".join(
                                            f"{s} through {', '.join(states[s].route)}" for s in wanted) + ")")
            async with asyncio.timeout(self.timeout):  # C's segments go: its operator lets the SAE go
                while True:
                    try:
                        await km_sae(DESTINATION[1], "km-c3", "remove")
                        break
                    except RPCError:
                        await asyncio.sleep(POLL_S)
            return (f"{DESTINATION[0]} attached to {VISITED_KM} by {VISITED}, move-sae; both services re-routed "
                    f"in {took:.1f} s: " + "; ".join(f"{s} through {', '.join(states[s].route)}" for s in wanted)
                    + f"; {DESTINATION[1]} detached it from km-c3")

        async def keys_after_move() -> str:
            """Keys relayed just before the move reached km-c3: the first exchange may miss; the
            next ones must match."""
            async with asyncio.timeout(self.timeout):
                while True:
                    try:
                        matched = "; ".join([await keys(), await keys(DESTINATION[0], SOURCE[0])])
                        self.figures["mobility"] += "; keys match for both after the move"
                        return matched
                    except StepFailed as err:
                        self.say(f"not yet: {err}")
                        await asyncio.sleep(POLL_S)

        for title, action in (
                ("The domains join, are admitted and agree transit", federate),
                ("A user of domain A asks the platform for keys between sae-a (A) and sae-c (C)", request),
                ("The platform routes the service through A, B, C", routed),
                ("Fetch keys through ETSI GS QKD 014 at both ends", keys),
                ("Cut the fibre between domains A and B", cut),
                ("The platform re-routes the service through D", lambda: routed(avoid="B")),
                ("Keys still match over the new route", keys),
                ("Charging records add up to the keys delivered", charging),
                ("Settle the payer's period; rate the members", settlement),
                ("Roaming: an intent of C for keys with sae-a is escalated to the platform", roaming_intent),
                ("Fetch the roaming intent's keys at both ends", roaming_keys),
                ("Mobility: sae-c moves to D's key manager; its services follow it", move),
                ("Keys match for both services after the move", keys_after_move)):
            if not await self.step(title, action):
                break
        user.close()
