"""qi-service: the key-delivery sessions a service controller serves. One class for what a
session asks for (`SessionConfig`: built by the orchestrator, read by the service controller
and read back by the orchestrator), and one for what the controller reports of it (`Session`
and the SAE directory in a `ServiceView`: built by the controller, read by the orchestrator)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from models.ns import SERVICE
from netconf_core.ns import BASE

DEFAULT_KEY_SIZE = 256      # qi-service key-size default
MIN_BURST_BITS = 262_144    # the qi-key-manager default token bucket
REASON_LENGTH = 1024        # qit:reason
OPERATION = BASE("operation")
SESSIONS_FILTER = f'<sessions xmlns="{SERVICE}"/>'
SERVICE_FILTER = SESSIONS_FILTER + f'<sae-directory xmlns="{SERVICE}"/>'


def sessions_selected(flt: etree._Element | None) -> set[str] | None:
    """The names of the sessions a <get>'s <filter> can select (RFC 6241 6.2.5: a <session>
    with a content match on its name selects that one), or None when it may select any (no
    filter, an xpath filter, a <session> without a name to match)."""
    if flt is None or flt.get("type", "subtree") != "subtree":
        return None
    names: set[str] = set()
    for sessions in flt:
        if not isinstance(sessions.tag, str) or sessions.tag != SERVICE("sessions"):
            if isinstance(sessions.tag, str) and etree.QName(sessions).namespace is None:
                return None  # a node of no namespace matches in every one
            continue
        entries = [e for e in sessions if isinstance(e.tag, str)]
        if not entries:
            return None
        for entry in entries:
            name = entry.find(SERVICE("name"))
            if entry.tag != SERVICE("session") or name is None or len(name) or not (name.text or "").strip():
                return None
            names.add(name.text.strip())
    return names


def sessions_config(requests: dict[str, "SessionConfig"]) -> etree._Element:
    """<sessions> with each request as its entry (name -> request), each replacing what the
    service stratum held: one edit for many sessions, which the controller places at once."""
    sessions = etree.Element(SERVICE("sessions"), nsmap={None: SERVICE, "nc": BASE})
    for name, request in requests.items():
        request.append_to(sessions, name)
    return sessions


def session_filter(*names: str) -> str:
    """A subtree filter of the sessions `names` (configuration and state), as a client reads
    them back."""
    sessions = etree.Element(SERVICE("sessions"), nsmap={None: str(SERVICE)})
    for name in names:
        SERVICE.sub(SERVICE.sub(sessions, "session"), "name", name)
    return etree.tostring(sessions).decode()


@dataclass(frozen=True)
class SegmentEnds:
    """Where a segment of a cross-domain service enters and leaves the domain, and the key
    managers of the service's SAEs (the `segment` of qi-service sessions and of qi-intent)."""

    source_km: str
    destination_km: str
    ingress_link: str | None
    egress_link: str | None

    @classmethod
    def parse(cls, element: etree._Element | None, ns=SERVICE) -> SegmentEnds | None:
        if element is None:
            return None
        return cls(ns.text(element, "source-km", ""), ns.text(element, "destination-km", ""),
                   ns.text(element, "ingress-link"), ns.text(element, "egress-link"))

    def append_to(self, parent: etree._Element, ns=SERVICE) -> None:
        for tag, value in (("source-km", self.source_km), ("destination-km", self.destination_km),
                           ("ingress-link", self.ingress_link), ("egress-link", self.egress_link)):
            if value is not None:
                ns.sub(parent, tag, value)


def _int(element: etree._Element, tag: str) -> int | None:
    value = SERVICE.number(element, tag)
    return int(value) if value is not None else None


@dataclass(frozen=True)
class SessionConfig:
    """What a qi-service session asks for (its configuration)."""

    source_sae: str
    destination_sae: str
    rate: int
    key_size: int = DEFAULT_KEY_SIZE
    ttl: int | None = None
    max_hops: int | None = None
    avoid_nodes: frozenset[str] = frozenset()
    avoid_links: frozenset[str] = frozenset()
    qber_ceiling: float | None = None
    segment: SegmentEnds | None = None

    @classmethod
    def parse(cls, element: etree._Element) -> SessionConfig:
        """From a session entry or plan-path input (the leaves they share)."""
        return cls(SERVICE.text(element, "source-sae", ""), SERVICE.text(element, "destination-sae", ""),
                   _int(element, "rate") or 0, _int(element, "key-size") or DEFAULT_KEY_SIZE, _int(element, "ttl"),
                   _int(element, "max-hops"),
                   frozenset((e.text or "").strip() for e in SERVICE.all(element, "avoid-nodes")),
                   frozenset((e.text or "").strip() for e in SERVICE.all(element, "avoid-links")),
                   SERVICE.number(element, "qber-ceiling"), SegmentEnds.parse(SERVICE.find(element, "segment")))

    def config(self, name: str) -> etree._Element:
        """<sessions> with this session as entry `name` (see `sessions_config`)."""
        return sessions_config({name: self})

    def append_to(self, sessions: etree._Element, name: str) -> None:
        """This session as entry `name` of `sessions`, replacing what the service stratum held
        (a merge would keep avoid-links and avoid-nodes entries no longer asked for). The QBER
        ceiling is written with 3 decimals, as qit:qber holds it."""
        session = SERVICE.sub(sessions, "session")
        session.set(OPERATION, "replace")
        leaves = [("name", name), ("source-sae", self.source_sae), ("destination-sae", self.destination_sae),
                  ("rate", self.rate), ("key-size", self.key_size), ("ttl", self.ttl), ("max-hops", self.max_hops)]
        leaves += [("avoid-nodes", n) for n in sorted(self.avoid_nodes)]
        leaves += [("avoid-links", l) for l in sorted(self.avoid_links)]
        leaves.append(("qber-ceiling", None if self.qber_ceiling is None else f"{self.qber_ceiling:.3f}"))
        for tag, value in leaves:
            if value is not None:
                SERVICE.sub(session, tag, value)
        if self.segment is not None:
            self.segment.append_to(SERVICE.sub(session, "segment"))

    @staticmethod
    def delete(name: str) -> etree._Element:
        """<sessions> removing entry `name`."""
        sessions = etree.Element(SERVICE("sessions"), nsmap={None: SERVICE, "nc": BASE})
        session = SERVICE.sub(sessions, "session")
        session.set(OPERATION, "remove")
        SERVICE.sub(session, "name", name)
        return sessions

    @property
    def border_links(self) -> frozenset[str]:
        """The inter-domain links a segment may use; no other session uses any."""
        segment = self.segment
        return frozenset(l for l in (segment.ingress_link, segment.egress_link) if l) if segment else frozenset()

    @property
    def burst(self) -> int:
        """Token bucket size: one second of the rate, at least the key manager's default bucket."""
        return max(MIN_BURST_BITS, self.rate, self.key_size)


def sessions_of(config: etree._Element | None) -> dict[str, SessionConfig]:
    """The sessions of a configuration tree, by name."""
    return {SERVICE.text(s, "name", ""): SessionConfig.parse(s) for s in SERVICE.all(config, "sessions/session")}


# --- the state the service controller reports -----------------------------------------------------

@dataclass(frozen=True)
class Hop:
    km_id: str
    node_id: str
    link_id: str | None


def parse_hops(parent: etree._Element | None, ns=SERVICE) -> tuple[Hop, ...]:
    """The hops of a qi-types key-path grouping, in index order."""
    hops = sorted(ns.all(parent, "hop"), key=lambda h: int(ns.text(h, "index", "0")))
    return tuple(Hop(ns.text(h, "km-id", ""), ns.text(h, "node-id", ""), ns.text(h, "link-id")) for h in hops)


def append_hops(parent: etree._Element, hops: tuple[Hop, ...], ns=SERVICE) -> None:
    """qi-types key-path hops under `parent`, indexed from 0."""
    for index, hop in enumerate(hops):
        element = ns.sub(parent, "hop")
        ns.sub(element, "index", index)
        ns.sub(element, "km-id", hop.km_id)
        ns.sub(element, "node-id", hop.node_id)
        if hop.link_id is not None:
            ns.sub(element, "link-id", hop.link_id)


@dataclass(frozen=True)
class Session:
    name: str
    source_sae: str
    destination_sae: str
    rate: int
    status: str | None
    reason: str
    path: tuple[Hop, ...]
    delivered_keys: int = 0
    delivered_bits: int = 0
    config: SessionConfig | None = None  # as the service stratum holds it
    since: str = ""                      # status-since

    @property
    def links(self) -> tuple[str, ...]:
        return tuple(h.link_id for h in self.path if h.link_id)

    def state(self, parent: etree._Element) -> etree._Element:
        """This session's state leaves as an entry of `parent` (<sessions>)."""
        entry = SERVICE.sub(parent, "session")
        SERVICE.sub(entry, "name", self.name)
        SERVICE.sub(entry, "status", self.status)
        SERVICE.sub(entry, "reason", self.reason[:REASON_LENGTH])
        SERVICE.sub(entry, "status-since", self.since)
        if self.path:
            append_hops(SERVICE.sub(entry, "path"), self.path)
        SERVICE.sub(entry, "delivered-keys", self.delivered_keys)
        SERVICE.sub(entry, "delivered-bits", self.delivered_bits)
        return entry


@dataclass
class ServiceView:
    sessions: dict[str, Session] = field(default_factory=dict)
    saes: dict[str, str] = field(default_factory=dict)  # sae-id -> km-id

    @classmethod
    def parse(cls, data: etree._Element | None, known: dict[bytes, Session] | None = None) -> ServiceView:
        """The sessions (configuration and state) and SAE directory of a <get> reply. `known`:
        the sessions a previous parse read, by the text of their entry, kept up to date by this
        one: an entry unchanged since is not read again (a reader of 1,000 sessions in every
        pass spent a tenth of it here)."""
        view, seen = cls(), {}
        for entry in SERVICE.all(data, "sessions/session"):
            text = etree.tostring(entry, with_tail=False) if known is not None else b""
            session = known.get(text) if known is not None else None
            if session is None:
                session = _parse_session(entry)
            seen[text] = session
            view.sessions[session.name] = session
        if known is not None:
            known.clear()
            known.update(seen)
        for sae in SERVICE.all(data, "sae-directory/sae"):
            view.saes[SERVICE.text(sae, "sae-id", "")] = SERVICE.text(sae, "km-id", "")
        return view

    def state(self, built: dict[Session, etree._Element] | None = None) -> etree._Element:
        """The <data> tree of the sessions' state and the SAE directory. `built`: the entries a
        previous call built, by session, kept up to date by this one: an unchanged session's
        entry is copied rather than built again (six times faster)."""
        data = etree.Element(BASE("data"), nsmap={None: BASE})
        sessions = SERVICE.sub(data, "sessions")
        used = {}
        for _, session in sorted(self.sessions.items()):
            entry = built.get(session) if built is not None else None
            if entry is None:  # the copy kept is the caller's tree's no more, which it may change
                entry = copy.deepcopy(session.state(sessions)) if built is not None else session.state(sessions)
            else:
                sessions.append(copy.deepcopy(entry))
            used[session] = entry
        if built is not None:
            built.clear()
            built.update(used)
        directory = SERVICE.sub(data, "sae-directory")
        for sae, km in sorted(self.saes.items()):
            entry = SERVICE.sub(directory, "sae")
            SERVICE.sub(entry, "sae-id", sae)
            SERVICE.sub(entry, "km-id", km)
        return data


def _parse_session(entry: etree._Element) -> Session:
    return Session(SERVICE.text(entry, "name", ""), SERVICE.text(entry, "source-sae", ""),
                   SERVICE.text(entry, "destination-sae", ""), _int(entry, "rate") or 0, SERVICE.text(entry, "status"),
                   SERVICE.text(entry, "reason", ""), parse_hops(SERVICE.find(entry, "path")),
                   _int(entry, "delivered-keys") or 0, _int(entry, "delivered-bits") or 0, SessionConfig.parse(entry),
                   SERVICE.text(entry, "status-since", ""))


def session_status_change(name: str, status: str, previous: str | None, reason: str, time: str) -> etree._Element:
    """The session-status-change notification."""
    change = SERVICE.element("session-status-change")
    SERVICE.sub(change, "name", name)
    SERVICE.sub(change, "status", status)
    if previous is not None:
        SERVICE.sub(change, "previous-status", previous)
    SERVICE.sub(change, "reason", reason[:REASON_LENGTH])
    SERVICE.sub(change, "time", time)
    return change
