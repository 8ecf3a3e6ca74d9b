"""qi-key-manager, for both of its sides: the part of a key manager's configuration the service
controller writes (pools, routes, sessions) read into `KmConfig` and written back as the
edit-config that turns one `KmConfig` into another; `KmView`, which is also how the key manager
itself reads its configuration; and its state, built by the key manager with `km_state` from
the delivery counters (`KmCounters`) the service controller reads back, and read with
`read_km_state` (the console)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lxml import etree

from models.ns import KEY_MANAGER as KM
from models.service import DEFAULT_KEY_SIZE, MIN_BURST_BITS
from netconf_core.ns import BASE

OPERATION = BASE("operation")
DEFAULT_LOW_WATERMARK = 1_048_576  # bits: the qi-key-manager default of a pool's low-watermark
CONFIG_FILTER = f'<key-manager xmlns="{KM}"/>'
COUNTERS_FILTER = f'<key-manager xmlns="{KM}"><sessions/><relay-statistics/></key-manager>'
PEER_INTERFACE_FILTER = f'<key-manager xmlns="{KM}"><peer-interface/></key-manager>'


@dataclass(frozen=True)
class KmSession:
    master_sae: str
    slave_sae: str
    peer_km: str
    rate: int
    burst: int
    key_size: int
    ttl: int | None

    @property
    def pair(self) -> tuple[str, str]:
        return self.master_sae, self.slave_sae


@dataclass
class KmConfig:
    """What the service controller manages on one key manager."""

    pools: dict[str, str] = field(default_factory=dict)                   # qkdl-id -> peer km
    routes: dict[str, tuple[str, str]] = field(default_factory=dict)      # destination -> (next hop, via)
    sessions: dict[str, KmSession] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)                   # km-id -> URL of its KM-to-KM API


@dataclass
class KmView:
    """A key manager as last read (or written) by the controller."""

    km_id: str
    site: str | None
    saes: frozenset[str]
    config: KmConfig
    low_watermarks: dict[str, int] = field(default_factory=dict)  # qkdl-id -> bits (default filled in)

    def is_master_end(self, session: KmSession) -> bool:
        """Whether this key manager is where the session's keys start (its master SAE is here)."""
        return session.master_sae in self.saes

    @classmethod
    def from_xml(cls, root: etree._Element) -> KmView:
        """From a <key-manager> element (qi-key-manager configuration); absent leaves that have
        a default in the module read as that default."""
        text = lambda el, path: KM.text(el, path, "")
        pools = {text(p, "link-id"): text(p, "peer-km-id") for p in KM.all(root, "key-pools/key-pool")}
        routes = {text(r, "destination-km-id"): (text(r, "next-hop-km-id"), text(r, "via-link-id"))
                  for r in KM.all(root, "forwarding-table/route")}
        sessions = {}
        for s in KM.all(root, "sessions/session"):
            ttl = KM.text(s, "qos/ttl")
            sessions[text(s, "session-id")] = KmSession(
                text(s, "master-sae-id"), text(s, "slave-sae-id"), text(s, "peer-km-id"),
                int(text(s, "qos/rate") or 0), int(KM.text(s, "qos/burst") or MIN_BURST_BITS),
                int(KM.text(s, "qos/key-size") or DEFAULT_KEY_SIZE), int(ttl) if ttl else None)
        peers = {text(p, "km-id"): text(p, "url") for p in KM.all(root, "peers/peer")}
        saes = frozenset(text(s, "sae-id") for s in KM.all(root, "saes/sae"))
        watermarks = {link: int(KM.text(p, "low-watermark") or DEFAULT_LOW_WATERMARK)
                      for p in KM.all(root, "key-pools/key-pool") for link in (text(p, "link-id"),)}
        return cls(text(root, "km-id"), KM.text(root, "site"), saes, KmConfig(pools, routes, sessions, peers), watermarks)


def km_edit(have: KmConfig, want: KmConfig) -> etree._Element | None:
    """The edit-config <key-manager> that turns `have` into `want`; None when equal. Pools are
    only added or changed, never removed: they hold key."""
    root = KM.element("key-manager")
    pools = [(link, peer) for link, peer in want.pools.items() if have.pools.get(link) != peer]
    if pools:
        container = KM.sub(root, "key-pools")
        for link, peer in pools:
            pool = KM.sub(container, "key-pool")
            KM.sub(pool, "link-id", link)
            KM.sub(pool, "peer-km-id", peer)
    _replace_changed(root, "peers", "peer", "km-id", have.peers, want.peers, lambda e, url: KM.sub(e, "url", url))
    _replace_changed(root, "forwarding-table", "route", "destination-km-id", have.routes, want.routes, _route_leaves)
    _replace_changed(root, "sessions", "session", "session-id", have.sessions, want.sessions, _session_leaves)
    return root if len(root) else None


def _replace_changed(root: etree._Element, container: str, entry: str, key: str, have: dict, want: dict,
                     leaves: Callable[[etree._Element, Any], None]) -> None:
    """Under `container`, the entries of a keyed list whose value differs between `have` and
    `want`: replaced by `want`'s (its `leaves` written), or removed when `want` has none."""
    changed = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    if not changed:
        return
    parent = KM.sub(root, container)
    for name in changed:
        element = KM.sub(parent, entry)
        KM.sub(element, key, name)
        if name in want:
            element.set(OPERATION, "replace")
            leaves(element, want[name])
        else:
            element.set(OPERATION, "remove")


def _route_leaves(route: etree._Element, hop: tuple[str, str]) -> None:
    next_hop, via = hop
    KM.sub(route, "next-hop-km-id", next_hop)
    KM.sub(route, "via-link-id", via)


def _session_leaves(entry: etree._Element, s: KmSession) -> None:
    KM.sub(entry, "master-sae-id", s.master_sae)
    KM.sub(entry, "slave-sae-id", s.slave_sae)
    KM.sub(entry, "peer-km-id", s.peer_km)
    qos = KM.sub(entry, "qos")
    KM.sub(qos, "rate", s.rate)
    KM.sub(qos, "burst", s.burst)
    KM.sub(qos, "key-size", s.key_size)
    if s.ttl is not None:
        KM.sub(qos, "ttl", s.ttl)


Counts = tuple[int, int]  # keys, bits


@dataclass
class KmCounters:
    """The delivery counters of a key manager's state: per session (delivered), and per pair
    of SAEs the keys it passed on towards the slave (forwarded) and those that arrived for it
    (received)."""

    delivered: dict[str, Counts] = field(default_factory=dict)                   # session-id ->
    forwarded: dict[tuple[str, str], Counts] = field(default_factory=dict)      # (master, slave) ->
    received: dict[tuple[str, str], Counts] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: etree._Element | None) -> KmCounters:
        counts = lambda entry, kind: tuple(int(KM.text(entry, f"{kind}-{unit}") or 0) for unit in ("keys", "bits"))
        out = cls({KM.text(s, "session-id"): counts(s, "delivered")
                   for s in KM.all(data, "key-manager/sessions/session")})
        for pair in KM.all(data, "key-manager/relay-statistics/sae-pair"):
            key = (KM.text(pair, "master-sae-id"), KM.text(pair, "slave-sae-id"))
            out.forwarded[key], out.received[key] = counts(pair, "forwarded"), counts(pair, "received")
        return out

    def count(self, counter: str, session_id: str, pair: tuple[str, str]) -> Counts | None:
        """The (keys, bits) of `counter` (delivered, forwarded or received) for a session, or None."""
        return self.delivered.get(session_id) if counter == "delivered" else getattr(self, counter).get(pair)


# --- what the key manager reports: its state and notifications -----------------------------------

@dataclass(frozen=True)
class PoolState:
    """A key pool's levels, in bits."""

    link_id: str
    stored: int
    capacity: int
    generated: int
    consumed: int


@dataclass(frozen=True)
class SessionState:
    status: str
    reason: str
    tokens: int | None = None        # bits the session's token bucket holds (its master end only)
    expires_at: str | None = None    # date-and-time, when the session has a time to live


@dataclass(frozen=True)
class RelayTotals:
    relayed_keys: int
    relayed_bits: int
    dropped_keys: int
    last_drop_reason: str | None = None


def peer_interface_url(data: etree._Element | None) -> str | None:
    """The base URL of a key manager's KM-to-KM interface, from a <get> answer."""
    return KM.text(data, "key-manager/peer-interface/url")


def km_state(etsi014_url: str | None, pools: list[PoolState], sessions: dict[str, SessionState],
             counters: KmCounters, relay: RelayTotals, peer_url: str | None = None) -> etree._Element:
    """The <key-manager> state container: pools, sessions (by session-id, with their delivered
    counters, zero when absent), relay totals and the per-pair counters of `counters`."""
    root = KM.element("key-manager")
    if etsi014_url is not None:
        KM.sub(KM.sub(root, "etsi014"), "url", etsi014_url)
    if peer_url is not None:
        KM.sub(KM.sub(root, "peer-interface"), "url", peer_url)
    if pools:
        container = KM.sub(root, "key-pools")
        for pool in pools:
            entry = KM.sub(container, "key-pool")
            for tag, value in (("link-id", pool.link_id), ("stored", pool.stored), ("capacity", pool.capacity),
                               ("generated", pool.generated), ("consumed", pool.consumed),
                               ("next-key-index", pool.generated - pool.stored)):
                KM.sub(entry, tag, value)
    if sessions:
        container = KM.sub(root, "sessions")
        for session_id, session in sessions.items():
            keys, bits = counters.delivered.get(session_id, (0, 0))
            entry = KM.sub(container, "session")
            for tag, value in (("session-id", session_id), ("status", session.status), ("reason", session.reason),
                               ("delivered-keys", keys), ("delivered-bits", bits), ("tokens", session.tokens),
                               ("expires-at", session.expires_at)):
                if value is not None:
                    KM.sub(entry, tag, value)
    statistics = KM.sub(root, "relay-statistics")
    KM.sub(statistics, "relayed-keys", relay.relayed_keys)
    KM.sub(statistics, "relayed-bits", relay.relayed_bits)
    KM.sub(statistics, "dropped-keys", relay.dropped_keys)
    if relay.last_drop_reason:
        KM.sub(statistics, "last-drop-reason", relay.last_drop_reason)
    for master, slave in sorted(counters.forwarded.keys() | counters.received.keys()):
        pair = KM.sub(statistics, "sae-pair")
        KM.sub(pair, "master-sae-id", master)
        KM.sub(pair, "slave-sae-id", slave)
        for kind, table in (("forwarded", counters.forwarded), ("received", counters.received)):
            keys, bits = table.get((master, slave), (0, 0))
            KM.sub(pair, f"{kind}-keys", keys)
            KM.sub(pair, f"{kind}-bits", bits)
    return root


def session_state_change(session_id: str, status: str, previous_status: str, reason: str) -> etree._Element:
    return KM.element("session-state-change", leaves={
        "session-id": session_id, "status": status, "previous-status": previous_status, "reason": reason})


def pool_low(link_id: str, peer_km: str, stored: int, low_watermark: int) -> etree._Element:
    return KM.element("pool-low", leaves={"link-id": link_id, "peer-km-id": peer_km, "stored": stored,
                                          "low-watermark": low_watermark})


def pool_empty(link_id: str, peer_km: str) -> etree._Element:
    return KM.element("pool-empty", leaves={"link-id": link_id, "peer-km-id": peer_km})


def read_km_state(root: etree._Element | None) -> tuple[dict[str, PoolState], dict[str, SessionState]]:
    """km_state's reader: the pools (by link-id) and the sessions (by session-id) of a
    <key-manager> element read with <get> (configuration and state)."""
    number = lambda element, tag: int(KM.text(element, tag) or 0)
    pools = {KM.text(p, "link-id", ""): PoolState(KM.text(p, "link-id", ""), number(p, "stored"), number(p, "capacity"),
                                                  number(p, "generated"), number(p, "consumed"))
             for p in KM.all(root, "key-pools/key-pool")}
    sessions = {}
    for s in KM.all(root, "sessions/session"):
        tokens = KM.text(s, "tokens")
        sessions[KM.text(s, "session-id", "")] = SessionState(KM.text(s, "status", ""), KM.text(s, "reason", ""),
                                                             int(tokens) if tokens else None, KM.text(s, "expires-at"))
    return pools, sessions
