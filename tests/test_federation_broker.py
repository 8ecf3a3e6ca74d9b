"""The federation broker (ITU-T Y.QKDNf 6.2, pre-established agreements) over real SSH sessions
on 127.0.0.1: members publish agreement offers on the platform, a member admitted later takes
one up and the agreement appears with its terms, with no administrator step; the precise
refusals; NACM lets a member write only its own offers. The platform and agents are those of
tests/test_federation.py (the domains behind the segment hook are its FakeDomain)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from models.federation import AgreementOffer, FederationConfig, offer_config
from netconf_core.errors import RPCError
from test_federation import ALICE_PW, Federation, resources, run, service, state


async def agreements(fed: Federation) -> dict:
    config = FederationConfig.read(await fed.admin.get_config())
    return {tuple(sorted(a.members)): a for a in config.agreements.values()}


def test_a_member_admitted_later_takes_up_an_offer_and_the_agreement_appears_with_its_terms():
    async def scenario(fed: Federation) -> None:
        await fed.join("A", "B", "C")
        a, b, d = fed.agents["A"], fed.agents["B"], fed.agents["D"]
        await a.publish_offer(AgreementOffer("A", "open", transit_allowed=True, price_per_kbit=Decimal("0.004"),
                                             capacity=50_000))
        await a.publish_offer(AgreementOffer("A", "for-b", open_to=("B",)))
        # A member writes its own offers only.
        with pytest.raises(RPCError) as err:
            await (await b.session()).edit_config(offer_config(AgreementOffer("A", "forged")))
        assert err.value.tag == "access-denied"
        # D applies: not admitted yet, it may not take anything up, and says so.
        await d.update(resources("D"))  # advertised once admitted
        assert await d.apply() == "applied"
        with pytest.raises(RPCError) as err:
            await d.take_offer("A", "open")
        assert (err.value.tag, err.value.message) == ("access-denied", "member D is applied: only an admitted member "
                                                                       "takes up an offer")
        await fed.admin_do("admit-member", "D")
        await d.wait_admitted()
        # What D sees: A's open offer, not the one made to B only.
        seen = FederationConfig.read(await state(await d.session())).agreement_offers
        assert set(seen) == {("A", "open")}
        for member, offer, tag, message in (
                ("A", "nothing", "invalid-value", "member A has no offer nothing"),
                ("A", "for-b", "access-denied", "offer for-b of member A is open to B only, not to D")):
            with pytest.raises(RPCError) as err:
                await d.take_offer(member, offer)
            assert (err.value.tag, err.value.message) == (tag, message)
        assert ("A", "D") not in await agreements(fed)
        # D takes the open offer up: the agreement A-D has its terms, and routing uses it.
        assert await d.take_offer("A", "open") == "A-D-open"
        agreement = (await agreements(fed))[("A", "D")]
        assert (agreement.agreement_id, agreement.transit_allowed, agreement.price_per_kbit, agreement.max_rate,
                agreement.offer) == ("A-D-open", True, Decimal("0.004"), 50_000, "open")
        with pytest.raises(RPCError) as err:
            await d.take_offer("A", "open")
        assert (err.value.tag, err.value.message) == ("data-exists", "members A and D are party to agreement "
                                                                     "A-D-open already")
        await fed.agents["A"].allow_service_user("alice")
        await fed.platform.settled()
        alice = await fed.connect("alice", password=ALICE_PW)
        await fed.request(alice, "to-d", "A", "A", "D")
        assert service(await state(alice), "to-d")["route"] == ["A", "D"]
        assert service(await state(alice), "to-d")["status"] == "active"
        # A withdraws the offer: no one else takes it up, the agreement made from it stays.
        await a.withdraw_offer("open")
        with pytest.raises(RPCError) as err:
            await fed.agents["C"].take_offer("A", "open")
        assert err.value.tag == "invalid-value"
        assert (await agreements(fed))[("A", "D")].agreement_id == "A-D-open"
        # An offer is open to others only.
        with pytest.raises(RPCError) as err:
            await a.publish_offer(AgreementOffer("A", "self", open_to=("A",)))
        assert "an offer is open to other members" in err.value.message
    run(scenario)
