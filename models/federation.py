"""qi-federation: the federation platform's configuration as the platform reads it
(`FederationConfig`), and a member's advertisement, written by its federation agent
(`advertisement_config`) and read back by the platform and by the other members' agents
(`read_advertisement`, `read_members`). The platform's side is built here too: the member
entry an application adds, its state (memberships, what is left of each advertised link,
services, charging records and disputes, ratings: `federation_state`) and its notifications, each
beside the reader the agents, the demo and the tests use (`read_members`, `read_service_statuses`,
`read_charging`, `read_disputes`, `read_ratings`). The two RPCs of charging are here on both
sides too: an agent's `report-delivery` (`delivery_report`, `read_delivery_report`) and `settle`
(`settle_request`, `read_settle_request`, `settlement_output`, `read_settlement`). A service as a
user (or a roaming orchestrator) writes it is `service_config` / `service_delete`; a Fa user's
application, `add_user_application` and `read_user_applications`. The broker's offers:
`AgreementOffer`, `offer_config`, `take_offer`, and `add_agreement` (the platform's side)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from lxml import etree

from models.ns import FEDERATION
from netconf_core.ns import BASE, Namespace


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


# --- what a member advertises ----------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    node_id: str
    km_id: str
    site: str | None = None
    qkdn_id: str | None = None  # ETSI GS QKD 015 qkdn_id: what a neighbour names as its link's remote end
    km_url: str | None = None   # its key manager's KM-to-KM URL: what a neighbour's border key manager peers with


@dataclass(frozen=True)
class Sae:
    """An SAE of the domain and its key manager (ETSI GS QKD 014 KME); for service discovery,
    what its application is and the kinds of service it offers."""

    sae_id: str
    km_id: str
    description: str | None = None
    service_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExternalLink:
    """A QKD link from a node of the domain to a border node of another member."""

    link_id: str
    local_node: str
    peer_member: str
    peer_node: str
    capacity: int  # key rate the link can spare for cross-domain services, bit/s
    local_interface: int | None = None  # qkdi_id of the local node's interface on the link


@dataclass(frozen=True)
class Advertisement:
    border_nodes: tuple[Node, ...]
    links: tuple[ExternalLink, ...]  # capacity: what is offered
    saes: tuple[Sae, ...] = ()


def read_advertisement(ad: etree._Element) -> Advertisement:
    """An <advertisement> entry (its member-id aside)."""
    text = lambda element, tag: FEDERATION.text(element, tag) or None
    nodes = tuple(Node(text(n, "node-id") or "", text(n, "km-id") or "", text(n, "site"), text(n, "qkdn-id"),
                       text(n, "km-url")) for n in FEDERATION.all(ad, "border-node"))
    links = tuple(ExternalLink(text(l, "link-id") or "", text(l, "local-border-node") or "",
                               text(l, "peer-member") or "", text(l, "peer-border-node") or "",
                               int(text(l, "capacity") or 0), _int(text(l, "local-interface")))
                  for l in FEDERATION.all(ad, "inter-domain-link"))
    saes = tuple(Sae(text(s, "sae-id") or "", text(s, "km-id") or "", text(s, "description"),
                     tuple((e.text or "").strip() for e in FEDERATION.all(s, "service-type")))
                 for s in FEDERATION.all(ad, "sae"))
    return Advertisement(nodes, links, saes)


def advertisement_config(member_id: str, offer: Advertisement) -> etree._Element:
    """The <federation> edit that replaces the member's advertisement with `offer`."""
    fed = etree.Element(FEDERATION("federation"), nsmap={None: FEDERATION, "nc": BASE})
    ad = FEDERATION.sub(FEDERATION.sub(fed, "advertisements"), "advertisement")
    ad.set(BASE("operation"), "replace")
    FEDERATION.sub(ad, "member-id", member_id)
    for node in offer.border_nodes:
        element = FEDERATION.sub(ad, "border-node")
        for tag, value in (("node-id", node.node_id), ("km-id", node.km_id), ("qkdn-id", node.qkdn_id),
                           ("km-url", node.km_url), ("site", node.site)):
            if value:
                FEDERATION.sub(element, tag, value)
    for sae in offer.saes:
        element = FEDERATION.sub(ad, "sae")
        FEDERATION.sub(element, "sae-id", sae.sae_id)
        FEDERATION.sub(element, "km-id", sae.km_id)
        if sae.description:
            FEDERATION.sub(element, "description", sae.description)
        for kind in sae.service_types:
            FEDERATION.sub(element, "service-type", kind)
    for link in offer.links:
        element = FEDERATION.sub(ad, "inter-domain-link")
        for tag, value in (("link-id", link.link_id), ("local-border-node", link.local_node),
                           ("local-interface", link.local_interface), ("peer-member", link.peer_member),
                           ("peer-border-node", link.peer_node), ("capacity", link.capacity)):
            if value is not None:
                FEDERATION.sub(element, tag, value)
    return fed


def read_members(data: etree._Element | None) -> dict[str, tuple[str, Advertisement | None]]:
    """Every member of a <get> reply with its membership status ('' when not shown) and what it
    advertises (None when nothing)."""
    text = lambda element, tag: FEDERATION.text(element, tag) or None
    offers = {text(ad, "member-id"): read_advertisement(ad) for ad in data.iter(FEDERATION("advertisement"))} \
        if data is not None else {}
    return {text(m, "member-id") or "": (text(m, "status") or "", offers.get(text(m, "member-id")))
            for m in data.iter(FEDERATION("member"))} if data is not None else {}


# --- the platform's configuration --------------------------------------------------------------------

@dataclass(frozen=True)
class MemberEntry:
    member_id: str
    name: str
    role: str
    ssh_public_key: str
    agent_address: str | None
    agent_port: int
    service_users: tuple[str, ...]


@dataclass(frozen=True)
class Agreement:
    agreement_id: str
    members: frozenset[str]
    transit_allowed: bool
    price_per_kbit: Decimal
    max_rate: int | None
    offer: str | None = None  # the offer of one of the two that the other took up


@dataclass(frozen=True)
class AgreementOffer:
    """Terms a member publishes for members that join later (qi-federation offers): taken up
    with take-offer, they become an agreement; `open_to` empty: any admitted member."""

    member_id: str
    offer_id: str
    transit_allowed: bool = False
    price_per_kbit: Decimal = Decimal(0)
    capacity: int | None = None
    open_to: tuple[str, ...] = ()


def offer_config(offer: AgreementOffer, operation: str = "replace") -> etree._Element:
    """The <federation> edit that writes (or, with operation remove, withdraws) an offer."""
    fed = etree.Element(FEDERATION("federation"), nsmap={None: FEDERATION, "nc": BASE})
    own = FEDERATION.sub(FEDERATION.sub(fed, "offers"), "member-offers")
    FEDERATION.sub(own, "member-id", offer.member_id)
    entry = FEDERATION.sub(own, "offer")
    entry.set(BASE("operation"), operation)
    FEDERATION.sub(entry, "offer-id", offer.offer_id)
    if operation != "remove":
        FEDERATION.sub(entry, "transit-allowed", str(offer.transit_allowed).lower())
        FEDERATION.sub(entry, "price-per-kbit", offer.price_per_kbit)
        if offer.capacity is not None:
            FEDERATION.sub(entry, "capacity", offer.capacity)
        for member in offer.open_to:
            FEDERATION.sub(entry, "open-to", member)
    return fed


def take_offer(member_id: str, offer_id: str) -> etree._Element:
    """The <take-offer> RPC: take up `offer_id` of member `member_id`."""
    return FEDERATION.element("take-offer", leaves={"member-id": member_id, "offer-id": offer_id})


def add_agreement(tree: etree._Element, agreement_id: str, offer: AgreementOffer, taker: str) -> None:
    """Add, in a datastore tree holding <federation>, the agreement that `taker` gets by taking `offer` up."""
    fed = FEDERATION.find(tree, "federation")
    if fed is None:
        fed = etree.SubElement(tree, FEDERATION("federation"), nsmap={None: FEDERATION})
    agreements = FEDERATION.find(fed, "agreements")
    if agreements is None:
        agreements = FEDERATION.sub(fed, "agreements")
    entry = FEDERATION.sub(agreements, "agreement")
    for tag, value in (("agreement-id", agreement_id), ("member-a", offer.member_id), ("member-b", taker),
                       ("transit-allowed", str(offer.transit_allowed).lower()),
                       ("price-per-kbit", offer.price_per_kbit), ("max-rate", offer.capacity),
                       ("offer", offer.offer_id)):
        if value is not None:
            FEDERATION.sub(entry, tag, value)


@dataclass(frozen=True)
class Crossing:
    """An inter-domain link as one of its two domains advertises it."""

    link_id: str
    local_node: str
    peer_member: str
    peer_node: str


@dataclass(frozen=True)
class ServiceRequest:
    service_id: str
    requesting_member: str
    source_sae: str
    source_domain: str
    destination_sae: str
    destination_domain: str
    rate: int


def _service_edit(service_id: str, operation: str) -> tuple[etree._Element, etree._Element]:
    """A <federation> edit of one service entry with `operation`: (the edit, the entry)."""
    fed = etree.Element(FEDERATION("federation"), nsmap={None: FEDERATION, "nc": BASE})
    service = FEDERATION.sub(FEDERATION.sub(fed, "services"), "service")
    service.set(BASE("operation"), operation)
    FEDERATION.sub(service, "service-id", service_id)
    return fed, service


def service_config(request: ServiceRequest) -> etree._Element:
    """The <federation> edit that creates (or replaces) a cross-domain service as `request` says."""
    fed, service = _service_edit(request.service_id, "replace")
    FEDERATION.sub(service, "requesting-member", request.requesting_member)
    add_service_ends(FEDERATION, service, request)
    return fed


def add_service_ends(namespace: Namespace, parent: etree._Element, request: ServiceRequest) -> None:
    """A service's source and destination (each its SAE and domain) and rate under `parent`, as
    a qi-federation service and the peering's request-segment carry them."""
    for end, sae, domain in (("source", request.source_sae, request.source_domain),
                             ("destination", request.destination_sae, request.destination_domain)):
        element = namespace.sub(parent, end)
        namespace.sub(element, "sae-id", sae)
        namespace.sub(element, "domain", domain)
    namespace.sub(parent, "rate", request.rate)


def service_delete(service_id: str) -> etree._Element:
    """The <federation> edit that removes a service (nothing if it is not there)."""
    return _service_edit(service_id, "remove")[0]


@dataclass(frozen=True)
class UserApplication:
    """A service-layer (Fa) user's application to act for a member (qi-federation service-users)."""

    user_name: str
    member_id: str
    ssh_public_key: str
    description: str | None = None


def add_user_application(tree: etree._Element, application: UserApplication) -> None:
    """Add (or replace) a user's application in a datastore tree holding <federation>."""
    fed = FEDERATION.find(tree, "federation")
    if fed is None:
        fed = etree.SubElement(tree, FEDERATION("federation"), nsmap={None: FEDERATION})
    users = FEDERATION.find(fed, "service-users")
    if users is None:
        users = FEDERATION.sub(fed, "service-users")
    for old in FEDERATION.all(users, "service-user"):
        if FEDERATION.text(old, "user-name") == application.user_name:
            users.remove(old)
    entry = FEDERATION.sub(users, "service-user")
    for tag, value in (("user-name", application.user_name), ("member-id", application.member_id),
                       ("ssh-public-key", application.ssh_public_key), ("description", application.description)):
        if value:
            FEDERATION.sub(entry, tag, value)


@dataclass(frozen=True)
class RatingPolicy:
    """qi-federation ratings: the sliding window (seconds), the score below which a member is
    flagged, and how many disputes in the window flag it too."""

    window: int = 3600
    threshold: Decimal = Decimal("0.8")
    max_disputes: int = 3


@dataclass
class FederationConfig:
    members: dict[str, MemberEntry] = field(default_factory=dict)
    agreements: dict[frozenset[str], Agreement] = field(default_factory=dict)
    offers: dict[str, dict[Crossing, int]] = field(default_factory=dict)  # member -> crossing -> capacity
    services: dict[str, ServiceRequest] = field(default_factory=dict)
    sae_kms: dict[tuple[str, str], str] = field(default_factory=dict)  # (member, advertised SAE) -> its key manager
    applications: dict[str, UserApplication] = field(default_factory=dict)  # Fa user -> its application
    agreement_offers: dict[tuple[str, str], AgreementOffer] = field(default_factory=dict)  # (member, offer-id) ->
    rating: RatingPolicy = field(default_factory=RatingPolicy)

    @classmethod
    def read(cls, tree: etree._Element) -> FederationConfig:
        """From a datastore (or <data>) tree holding <federation>."""
        config = cls()
        fed = FEDERATION.find(tree, "federation")
        if fed is None:
            return config
        text = FEDERATION.text
        for m in FEDERATION.all(fed, "members/member"):
            agent = FEDERATION.find(m, "agent")
            entry = MemberEntry(text(m, "member-id", ""), text(m, "name", ""), text(m, "role", "member"),
                                text(m, "ssh-public-key", ""), text(agent, "address"), int(text(agent, "port", "830")),
                                tuple((e.text or "").strip() for e in FEDERATION.all(m, "service-user")))
            config.members[entry.member_id] = entry
        for a in FEDERATION.all(fed, "agreements/agreement"):
            max_rate = text(a, "max-rate")
            agreement = Agreement(text(a, "agreement-id", ""), frozenset((text(a, "member-a", ""),
                                                                           text(a, "member-b", ""))),
                                  text(a, "transit-allowed", "false") == "true",
                                  Decimal(text(a, "price-per-kbit", "0")), int(max_rate) if max_rate else None,
                                  text(a, "offer"))
            config.agreements[agreement.members] = agreement
        for o in FEDERATION.all(fed, "offers/member-offers/offer"):
            capacity = text(o, "capacity")
            offer = AgreementOffer(text(o.getparent(), "member-id", ""), text(o, "offer-id", ""),
                                   text(o, "transit-allowed", "false") == "true",
                                   Decimal(text(o, "price-per-kbit", "0")),
                                   int(capacity) if capacity else None,
                                   tuple((e.text or "").strip() for e in FEDERATION.all(o, "open-to")))
            config.agreement_offers[(offer.member_id, offer.offer_id)] = offer
        for ad in FEDERATION.all(fed, "advertisements/advertisement"):
            member_id = text(ad, "member-id", "")
            offer = read_advertisement(ad)
            offers = config.offers.setdefault(member_id, {})
            for sae in offer.saes:
                config.sae_kms[(member_id, sae.sae_id)] = sae.km_id
            for link in offer.links:
                offers[Crossing(link.link_id, link.local_node, link.peer_member, link.peer_node)] = link.capacity
        for u in FEDERATION.all(fed, "service-users/service-user"):
            application = UserApplication(text(u, "user-name", ""), text(u, "member-id", ""),
                                          text(u, "ssh-public-key", ""), text(u, "description"))
            config.applications[application.user_name] = application
        ratings = FEDERATION.find(fed, "ratings")
        if ratings is not None:
            default = RatingPolicy()
            config.rating = RatingPolicy(int(text(ratings, "window", str(default.window))),
                                         Decimal(text(ratings, "threshold", str(default.threshold))),
                                         int(text(ratings, "max-disputes", str(default.max_disputes))))
        for s in FEDERATION.all(fed, "services/service"):
            src, dst = FEDERATION.find(s, "source"), FEDERATION.find(s, "destination")
            request = ServiceRequest(text(s, "service-id", ""), text(s, "requesting-member", ""),
                                     text(src, "sae-id", ""), text(src, "domain", ""),
                                     text(dst, "sae-id", ""), text(dst, "domain", ""), int(text(s, "rate", "0")))
            config.services[request.service_id] = request
        return config


# --- the platform's state of a cross-domain service ------------------------------------------------

@dataclass(frozen=True)
class SegmentStatus:
    index: int
    domain: str
    ingress: str | None   # the border node where keys enter the domain (none in the first domain)
    egress: str | None    # ... and where they leave it (none in the last)
    intent: str | None    # the domain's intent that carries the segment
    status: str


@dataclass(frozen=True)
class ServiceStatus:
    service_id: str
    status: str
    reason: str = ""
    route: tuple[str, ...] = ()
    segments: tuple[SegmentStatus, ...] = ()
    source_domain: str | None = None       # the members that serve the two SAEs now
    destination_domain: str | None = None


def add_service_status(services: etree._Element, service: ServiceStatus) -> etree._Element:
    """The state of one service, as an entry of <services>."""
    entry = FEDERATION.sub(services, "service")
    FEDERATION.sub(entry, "service-id", service.service_id)
    FEDERATION.sub(entry, "status", service.status)
    if service.reason:
        FEDERATION.sub(entry, "reason", service.reason)
    for end, domain in (("source", service.source_domain), ("destination", service.destination_domain)):
        if domain:
            FEDERATION.sub(FEDERATION.sub(entry, end), "current-domain", domain)
    for domain in service.route:
        FEDERATION.sub(entry, "domain-route", domain)
    segments = FEDERATION.sub(entry, "segments")
    for segment in service.segments:
        element = FEDERATION.sub(segments, "segment")
        FEDERATION.sub(element, "index", segment.index)
        FEDERATION.sub(element, "domain", segment.domain)
        for tag in ("ingress", "egress", "intent"):
            if getattr(segment, tag):
                FEDERATION.sub(element, tag, getattr(segment, tag))
        FEDERATION.sub(element, "status", segment.status)
    return entry


def read_service_statuses(data: etree._Element | None) -> dict[str, ServiceStatus]:
    """The services' state in a <get> reply, by service-id."""
    text = FEDERATION.text
    out = {}
    for service in FEDERATION.all(data, "federation/services/service"):
        segments = tuple(SegmentStatus(int(text(s, "index", "0")), text(s, "domain", ""), text(s, "ingress"),
                                       text(s, "egress"), text(s, "intent"), text(s, "status", ""))
                         for s in FEDERATION.all(service, "segments/segment"))
        status = ServiceStatus(text(service, "service-id", ""), text(service, "status", ""), text(service, "reason", ""),
                               tuple((e.text or "").strip() for e in FEDERATION.all(service, "domain-route")), segments,
                               text(service, "source/current-domain"), text(service, "destination/current-domain"))
        out[status.service_id] = status
    return out


# --- what the platform writes: a member's entry, its state and notifications ----------------------

def add_member(members: etree._Element, member_id: str, name: str | None, ssh_public_key: str | None,
               agent_address: str | None, agent_port: str | int) -> etree._Element:
    """The configuration entry of an applying member, as a child of <members>."""
    entry = FEDERATION.sub(members, "member")
    for tag, value in (("member-id", member_id), ("name", name), ("ssh-public-key", ssh_public_key)):
        FEDERATION.sub(entry, tag, value)
    agent = FEDERATION.sub(entry, "agent")
    FEDERATION.sub(agent, "address", agent_address)
    FEDERATION.sub(agent, "port", agent_port)
    return entry


@dataclass(frozen=True)
class MemberStatus:
    member_id: str
    status: str                     # applied, admitted, suspended, withdrawn
    admitted_at: str | None = None


@dataclass(frozen=True)
class Charge:
    """A charging record: what one member delivered for one service over one segment under one
    agreement, as both ends of its hop confirm, and what it is owed."""

    record_id: int
    member_id: str
    service_id: str
    keys: int
    bits: int
    start_time: str
    end_time: str | None
    agreement: str | None
    price_per_kbit: Decimal
    amount: Decimal
    segment: int | None = None
    hop: str | None = None
    disputed_keys: int = 0
    disputed_bits: int = 0


@dataclass(frozen=True)
class Dispute:
    """Two ends of a hop that disagree: their totals when the platform found it, and the difference."""

    dispute_id: int
    service_id: str
    hop: str
    sender: str
    receiver: str
    sent: tuple[int, int]       # keys, bits
    received: tuple[int, int]
    disputed: tuple[int, int]
    records: tuple[int, ...]
    time: str


@dataclass(frozen=True)
class Rating:
    member_id: str
    requested_keys: int
    delivered_keys: int
    delivery_ratio: Decimal
    availability: Decimal
    disputes: int
    score: Decimal
    below_threshold: bool


def _leaves(parent: etree._Element, pairs: tuple[tuple[str, object], ...]) -> None:
    for tag, value in pairs:
        if value is not None:
            FEDERATION.sub(parent, tag, str(value).lower() if isinstance(value, bool) else value)


def federation_state(members: list[MemberStatus], available: dict[str, list[tuple[str, int]]],
                     services: list[ServiceStatus], charges: list[Charge], disputes: Sequence[Dispute] = (),
                     ratings: Sequence[Rating] = (), users: Sequence[tuple[str, str]] = ()) -> etree._Element:
    """The platform's <federation> state: memberships, the rate left on each advertised link
    (member -> (link-id, bit/s)), services, charging records and disputes, ratings, and the
    service users' applications ((user-name, status)), in the order given."""
    fed = FEDERATION.element("federation")
    container = FEDERATION.sub(fed, "members")
    for member in members:
        entry = FEDERATION.sub(container, "member")
        FEDERATION.sub(entry, "member-id", member.member_id)
        FEDERATION.sub(entry, "status", member.status)
        if member.admitted_at:
            FEDERATION.sub(entry, "admitted-at", member.admitted_at)
    if users:
        container = FEDERATION.sub(fed, "service-users")
        for user, status in users:
            _leaves(FEDERATION.sub(container, "service-user"), (("user-name", user), ("status", status)))
    container = FEDERATION.sub(fed, "advertisements")
    for member_id, links in available.items():
        ad = FEDERATION.sub(container, "advertisement")
        FEDERATION.sub(ad, "member-id", member_id)
        for link_id, left in links:
            link = FEDERATION.sub(ad, "inter-domain-link")
            FEDERATION.sub(link, "link-id", link_id)
            FEDERATION.sub(link, "available", left)
    container = FEDERATION.sub(fed, "services")
    for service in services:
        add_service_status(container, service)
    if ratings:
        container = FEDERATION.sub(fed, "ratings")
        for r in ratings:
            _leaves(FEDERATION.sub(container, "rating"), (
                ("member-id", r.member_id), ("requested-keys", r.requested_keys), ("delivered-keys", r.delivered_keys),
                ("delivery-ratio", r.delivery_ratio), ("availability", r.availability), ("disputes", r.disputes),
                ("score", r.score), ("below-threshold", r.below_threshold)))
    container = FEDERATION.sub(fed, "charging")
    for c in charges:
        _leaves(FEDERATION.sub(container, "record"), (
            ("record-id", c.record_id), ("member-id", c.member_id), ("service-id", c.service_id),
            ("segment", c.segment), ("hop", c.hop), ("keys", c.keys), ("bits", c.bits),
            ("disputed-keys", c.disputed_keys), ("disputed-bits", c.disputed_bits), ("start-time", c.start_time),
            ("end-time", c.end_time), ("agreement", c.agreement), ("price-per-kbit", c.price_per_kbit),
            ("amount", c.amount)))
    for d in disputes:
        element = FEDERATION.sub(container, "dispute")
        _leaves(element, (("dispute-id", d.dispute_id), ("service-id", d.service_id), ("hop", d.hop),
                          ("sender", d.sender), ("receiver", d.receiver), ("sent-keys", d.sent[0]),
                          ("sent-bits", d.sent[1]), ("received-keys", d.received[0]), ("received-bits", d.received[1]),
                          ("disputed-keys", d.disputed[0]), ("disputed-bits", d.disputed[1])))
        for record in d.records:
            FEDERATION.sub(element, "record", record)
        FEDERATION.sub(element, "time", d.time)
    return fed


def _opt_int(element: etree._Element, tag: str) -> int | None:
    return _int(FEDERATION.text(element, tag))


def read_charging(data: etree._Element | None) -> dict[int, Charge]:
    """The charging records of a <get> reply, by record-id."""
    text = FEDERATION.text
    out = {}
    for r in FEDERATION.all(data, "federation/charging/record"):
        charge = Charge(int(text(r, "record-id", "0")), text(r, "member-id", ""), text(r, "service-id", ""),
                        int(text(r, "keys", "0")), int(text(r, "bits", "0")), text(r, "start-time", ""),
                        text(r, "end-time"), text(r, "agreement"), Decimal(text(r, "price-per-kbit", "0")),
                        Decimal(text(r, "amount", "0")), _opt_int(r, "segment"), text(r, "hop"),
                        int(text(r, "disputed-keys", "0")), int(text(r, "disputed-bits", "0")))
        out[charge.record_id] = charge
    return out


def read_disputes(data: etree._Element | None) -> dict[int, Dispute]:
    """The disputes of a <get> reply, by dispute-id."""
    text = FEDERATION.text
    pair = lambda d, kind: (int(text(d, f"{kind}-keys", "0")), int(text(d, f"{kind}-bits", "0")))
    out = {}
    for d in FEDERATION.all(data, "federation/charging/dispute"):
        dispute = Dispute(int(text(d, "dispute-id", "0")), text(d, "service-id", ""), text(d, "hop", ""),
                          text(d, "sender", ""), text(d, "receiver", ""), pair(d, "sent"), pair(d, "received"),
                          pair(d, "disputed"), tuple(int(e.text) for e in FEDERATION.all(d, "record")),
                          text(d, "time", ""))
        out[dispute.dispute_id] = dispute
    return out


def read_ratings(data: etree._Element | None) -> dict[str, Rating]:
    """The members' ratings of a <get> reply, by member-id."""
    text = FEDERATION.text
    out = {}
    for r in FEDERATION.all(data, "federation/ratings/rating"):
        rating = Rating(text(r, "member-id", ""), int(text(r, "requested-keys", "0")),
                        int(text(r, "delivered-keys", "0")), Decimal(text(r, "delivery-ratio", "1")),
                        Decimal(text(r, "availability", "1")), int(text(r, "disputes", "0")),
                        Decimal(text(r, "score", "1")), text(r, "below-threshold", "false") == "true")
        out[rating.member_id] = rating
    return out


# --- the charging RPCs: report-delivery and settle ------------------------------------------------

@dataclass(frozen=True)
class EndCount:
    """What a domain's key managers counted at one end of its segment since the previous report."""

    end: str                # ingress or egress
    link_id: str | None     # the inter-domain link there; None at a local SAE's end
    keys: int
    bits: int


@dataclass(frozen=True)
class DeliveryReport:
    service_id: str
    read_start: str         # date-and-time: the key managers were read between these two
    read_end: str
    counts: tuple[EndCount, ...]


def delivery_report(report: DeliveryReport) -> etree._Element:
    """The <report-delivery> RPC of an agent."""
    op = FEDERATION.element("report-delivery")
    _leaves(op, (("service-id", report.service_id), ("read-start", report.read_start), ("read-end", report.read_end)))
    for count in report.counts:
        _leaves(FEDERATION.sub(op, "count"), (("end", count.end), ("link-id", count.link_id), ("keys", count.keys),
                                              ("bits", count.bits)))
    return op


def read_delivery_report(op: etree._Element) -> DeliveryReport:
    text = FEDERATION.text
    return DeliveryReport(text(op, "service-id", ""), text(op, "read-start", ""), text(op, "read-end", ""),
                          tuple(EndCount(text(c, "end", ""), text(c, "link-id"), int(text(c, "keys", "0")),
                                         int(text(c, "bits", "0"))) for c in FEDERATION.all(op, "count")))


@dataclass(frozen=True)
class SettlementLine:
    direction: str          # receivable or payable
    counterparty: str
    agreement: str | None
    price_per_kbit: Decimal
    keys: int
    bits: int
    amount: Decimal
    disputed_keys: int
    disputed_bits: int
    records: tuple[int, ...]


@dataclass(frozen=True)
class Settlement:
    member_id: str
    period_start: str
    period_end: str
    lines: tuple[SettlementLine, ...]
    disputes: tuple[Dispute, ...]
    receivable: Decimal
    payable: Decimal

    @property
    def net(self) -> Decimal:
        return self.receivable - self.payable


def settle_request(member_id: str, period_start: str, period_end: str) -> etree._Element:
    return FEDERATION.element("settle", leaves={"member-id": member_id, "period-start": period_start,
                                                "period-end": period_end})


def read_settle_request(op: etree._Element) -> tuple[str, str, str]:
    return tuple(FEDERATION.text(op, tag, "") for tag in ("member-id", "period-start", "period-end"))


def settlement_output(s: Settlement) -> list[etree._Element]:
    """The output leaves and lists of `settle`."""
    out = []

    def add(tag: str, value: object = None) -> etree._Element:
        element = FEDERATION.element(tag, value) if value is not None else FEDERATION.element(tag)
        out.append(element)
        return element
    for tag, value in (("member-id", s.member_id), ("period-start", s.period_start), ("period-end", s.period_end)):
        add(tag, value)
    for line in s.lines:
        element = add("line")
        _leaves(element, (("direction", line.direction), ("counterparty", line.counterparty),
                          ("agreement", line.agreement), ("price-per-kbit", line.price_per_kbit), ("keys", line.keys),
                          ("bits", line.bits), ("amount", line.amount), ("disputed-keys", line.disputed_keys),
                          ("disputed-bits", line.disputed_bits)))
        for record in line.records:
            FEDERATION.sub(element, "record", record)
    for d in s.disputes:
        _leaves(add("dispute"), (("dispute-id", d.dispute_id), ("service-id", d.service_id), ("hop", d.hop),
                                 ("sender", d.sender), ("receiver", d.receiver), ("disputed-keys", d.disputed[0]),
                                 ("disputed-bits", d.disputed[1]), ("time", d.time)))
    for tag, value in (("receivable", s.receivable), ("payable", s.payable), ("net", s.net)):
        add(tag, value)
    return out


def read_settlement(reply: etree._Element) -> Settlement:
    """A settle reply (its <rpc-reply> or <data> element)."""
    text = FEDERATION.text
    lines = tuple(SettlementLine(text(l, "direction", ""), text(l, "counterparty", ""), text(l, "agreement"),
                                 Decimal(text(l, "price-per-kbit", "0")), int(text(l, "keys", "0")),
                                 int(text(l, "bits", "0")), Decimal(text(l, "amount", "0")),
                                 int(text(l, "disputed-keys", "0")), int(text(l, "disputed-bits", "0")),
                                 tuple(int(e.text) for e in FEDERATION.all(l, "record")))
                  for l in FEDERATION.all(reply, "line"))
    disputes = tuple(Dispute(int(text(d, "dispute-id", "0")), text(d, "service-id", ""), text(d, "hop", ""),
                             text(d, "sender", ""), text(d, "receiver", ""), (0, 0), (0, 0),
                             (int(text(d, "disputed-keys", "0")), int(text(d, "disputed-bits", "0"))), (),
                             text(d, "time", ""))
                     for d in FEDERATION.all(reply, "dispute"))
    return Settlement(text(reply, "member-id", ""), text(reply, "period-start", ""), text(reply, "period-end", ""),
                      lines, disputes, Decimal(text(reply, "receivable", "0")), Decimal(text(reply, "payable", "0")))


def available_rates(data: etree._Element | None) -> dict[str, dict[str, int]]:
    """The rate left on each advertised inter-domain link in a <get> reply: member -> link-id -> bit/s."""
    return {FEDERATION.text(ad, "member-id", ""): {FEDERATION.text(link, "link-id", ""): int(left)
                                                  for link in FEDERATION.all(ad, "inter-domain-link")
                                                  for left in (FEDERATION.text(link, "available"),) if left is not None}
            for ad in FEDERATION.all(data, "federation/advertisements/advertisement")}


def _event(tag: str, leaves: tuple[tuple[str, object], ...]) -> etree._Element:
    event = FEDERATION.element(tag)
    for name, value in leaves:
        FEDERATION.sub(event, name, value)
    return event


def service_status_change(service_id: str, status: str, previous_status: str, reason: str,
                          time: str) -> etree._Element:
    return _event("service-status-change", (("service-id", service_id), ("status", status),
                                            ("previous-status", previous_status), ("reason", reason), ("time", time)))


def member_joined(member_id: str, name: str, time: str) -> etree._Element:
    return _event("member-joined", (("member-id", member_id), ("name", name), ("time", time)))


def member_left(member_id: str, reason: str, time: str) -> etree._Element:
    return _event("member-left", (("member-id", member_id), ("reason", reason), ("time", time)))


def read_user_applications(data: etree._Element | None) -> dict[str, str]:
    """The service users' applications of a <get> reply: user-name -> status ('' when not shown)."""
    return {FEDERATION.text(u, "user-name", ""): FEDERATION.text(u, "status", "")
            for u in FEDERATION.all(data, "federation/service-users/service-user")}


def application_status(status: str) -> etree._Element:
    """The output of apply-membership (the applicant's membership status) and of apply-service-user."""
    return FEDERATION.element("status", status)
