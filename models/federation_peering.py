"""qi-federation-peering: what two peering agents say to each other beyond qi-federation
(models/federation.py reads and builds the rest: members, advertisements, services, charging).
An agreement entry of qi-federation (`agreement_entry`, `read_agreements` is
FederationConfig.read's), the agent's peering state (`peering_state`, `read_peering`), and the
RPCs: accept-agreement, request-segment (`segment_request`, `read_segment_request`,
`segment_reply`, `read_segment_reply`) and release-segment."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from lxml import etree

from models.federation import Agreement, ServiceRequest, add_service_ends
from models.ns import FEDERATION, FEDERATION_PEERING as PEERING


def agreement_entry(agreement: Agreement) -> etree._Element:
    """An <agreement> entry of qi-federation agreements holding `agreement`'s terms."""
    entry = FEDERATION.element("agreement")
    member_a, member_b = sorted(agreement.members)
    for tag, value in (("agreement-id", agreement.agreement_id), ("member-a", member_a), ("member-b", member_b),
                       ("transit-allowed", str(agreement.transit_allowed).lower()),
                       ("price-per-kbit", agreement.price_per_kbit), ("max-rate", agreement.max_rate)):
        if value is not None:
            FEDERATION.sub(entry, tag, value)
    return entry


def differences(mine: Agreement, theirs: Agreement) -> list[str]:
    """The terms on which two entries of one agreement differ, each as 'term ours / theirs'."""
    terms = (("members", lambda a: "-".join(sorted(a.members))), ("transit-allowed", lambda a: a.transit_allowed),
             ("price-per-kbit", lambda a: a.price_per_kbit), ("max-rate", lambda a: a.max_rate or "no limit"))
    return [f"{name} {get(mine)} here, {get(theirs)} at the peer" for name, get in terms if get(mine) != get(theirs)]


@dataclass(frozen=True)
class AgreementStatus:
    agreement_id: str
    status: str    # proposed, agreed, differs
    reason: str = ""


@dataclass(frozen=True)
class Peering:
    member_id: str
    peer_member: str
    peer_reachable: bool
    reason: str = ""
    offers: tuple[Agreement, ...] = ()
    agreements: tuple[AgreementStatus, ...] = ()


def peering_state(peering: Peering) -> list[etree._Element]:
    """What the agent adds to its qi-federation state: each agreement's status, and the
    peering container (the children of <federation>)."""
    out = []
    if peering.agreements:
        agreements = FEDERATION.element("agreements")
        for a in peering.agreements:
            entry = FEDERATION.sub(agreements, "agreement")
            FEDERATION.sub(entry, "agreement-id", a.agreement_id)
            PEERING.sub(entry, "status", a.status)
            if a.reason:
                PEERING.sub(entry, "reason", a.reason)
        out.append(agreements)
    container = PEERING.element("peering")
    for tag, value in (("member-id", peering.member_id), ("peer-member", peering.peer_member),
                       ("peer-reachable", str(peering.peer_reachable).lower()), ("reason", peering.reason or None)):
        if value is not None:
            PEERING.sub(container, tag, value)
    for offer in peering.offers:
        entry = PEERING.sub(container, "offer")
        for tag, value in (("agreement-id", offer.agreement_id),
                           ("transit-allowed", str(offer.transit_allowed).lower()),
                           ("price-per-kbit", offer.price_per_kbit), ("max-rate", offer.max_rate)):
            if value is not None:
                PEERING.sub(entry, tag, value)
    out.append(container)
    return out


def read_peering(data: etree._Element | None) -> Peering | None:
    """The peering state of a <get> reply (None when it has none)."""
    fed = FEDERATION.find(data, "federation") if data is not None else None
    container = PEERING.find(fed, "peering") if fed is not None else None
    if container is None:
        return None
    text = PEERING.text
    member, peer = text(container, "member-id", ""), text(container, "peer-member", "")
    offers = tuple(Agreement(text(o, "agreement-id", ""), frozenset((member, peer)),
                             text(o, "transit-allowed", "false") == "true", Decimal(text(o, "price-per-kbit", "0")),
                             int(rate) if (rate := text(o, "max-rate")) else None)
                   for o in PEERING.all(container, "offer"))
    statuses = tuple(AgreementStatus(FEDERATION.text(a, "agreement-id", ""), text(a, "status", ""),
                                     text(a, "reason", ""))
                     for a in FEDERATION.all(fed, "agreements/agreement") if PEERING.find(a, "status") is not None)
    return Peering(member, peer, text(container, "peer-reachable", "false") == "true", text(container, "reason", ""),
                   offers, statuses)


def accept_agreement(agreement_id: str) -> etree._Element:
    return PEERING.element("accept-agreement", leaves={"agreement-id": agreement_id})


def segment_request(request: ServiceRequest) -> etree._Element:
    """The <request-segment> RPC for `request` (its requesting member is the caller)."""
    op = PEERING.element("request-segment")
    PEERING.sub(op, "service-id", request.service_id)
    add_service_ends(PEERING, op, request)
    return op


def read_segment_request(op: etree._Element, requesting_member: str) -> ServiceRequest:
    text = PEERING.text
    return ServiceRequest(text(op, "service-id", ""), requesting_member, text(op, "source/sae-id", ""),
                          text(op, "source/domain", ""), text(op, "destination/sae-id", ""),
                          text(op, "destination/domain", ""), int(text(op, "rate", "0")))


def segment_reply(status: str, intent: str | None, reason: str) -> list[etree._Element]:
    """The output leaves of request-segment."""
    return [PEERING.element(tag, value) for tag, value in (("status", status), ("intent", intent),
                                                           ("reason", reason or None)) if value is not None]


def read_segment_reply(reply: etree._Element | None) -> tuple[str, str | None, str]:
    """(status, intent, reason) of a request-segment reply."""
    text = lambda tag: next((e.text or "" for e in reply.iter(PEERING(tag))), None) if reply is not None else None
    return text("status") or "failed", text("intent"), text("reason") or ""


def release_segment(service_id: str) -> etree._Element:
    return PEERING.element("release-segment", leaves={"service-id": service_id})
