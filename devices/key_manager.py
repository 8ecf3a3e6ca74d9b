"""The emulated key manager: serves qi-key-manager over NETCONF and ETSI GS QKD 014 over HTTP.

Configuration drives a `devices.keystore.KeyManager`: key-pools become `add_link`, the
forwarding table `set_route`, a session whose master SAE is attached here `open_session`
(a token bucket of the session's qos rate and burst; keys of the session's key-size unless
the SAE asks for another size). A session whose slave SAE is attached here is the receiving
end: nothing to open, but its state is reported all the same. State is read from the key
manager at get time; a watcher task sends pool-low, pool-empty and session-state-change
when what they describe changes. Actions: flush (a pool, at both ends of its link) and
restart (a crash for an outage, carried out by the device host through `on_restart`).

Key managers reach each other only over the network: the KM-to-KM protocol (devices/km_peer.py,
docs/km-protocol.md), served on the ETSI 014 listener (HTTPS with the key manager's own
certificate, which it also presents to its peers), at the addresses of `peers/peer` in the
configuration. Nothing about another key manager is looked at in process: the session's
peer-km-id says where its other SAE is (that key manager checks it serves it), and a
session's status comes from planning over the protocol (the slave end plans the way back).

Pools and undelivered keys are written under the device's directory (keys/<km-id>.db, an
SQLite database: see devices.keystore for what is written when, and the delivery semantics),
the configuration in its datastores: a restarted key manager resumes its pools and keys from
disk, and its SAEs, routes and sessions from its startup configuration. A damaged state file
stops the device from starting with a `KeyStateError` naming the file (the command line prints
it, without a traceback). A session's time to
live runs on the network's emulated clock from when the session was configured (or the key
manager restarted).
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import pathlib
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from lxml import etree

from devices.base import Device, NetworkContext
from devices.etsi014 import LOOPBACK, Etsi014Server
from devices.keystore import (Change, DiscardMessage, Key, KeyLimits, KeyManager, KeyNetwork, KeyServiceError,
                              KeyStatus, NoRoute, PeerChannel, RelayMessage, Route, TokenBucket, not_enough_key,
                              UnknownSAE)
from devices.km_peer import KmPeerApi, KmPeerClient
from devices.topology import KeyManagerSpec, SaeSpec
from models.key_manager import (KmConfig, KmCounters, KmSession, KmView, PoolState, RelayTotals, SessionState,
                                km_state, pool_empty, pool_low, session_state_change)
from models.ns import KEY_MANAGER as KM
from netconf_core.datastore import empty_tree
from netconf_core.errors import RPCError
from netconf_core.session import Session

log = logging.getLogger(__name__)

MODULE = "qi-key-manager"
ROOT_PATH = f"/{MODULE}:key-manager"
FLUSH_PATH = f"{ROOT_PATH}/key-pools/key-pool/flush"
RESTART_PATH = f"{ROOT_PATH}/restart"
WATCH_PERIOD_S = 1.0
# How a session's status stays true without planning every session each period. Planning is
# hop by hop over the KM-to-KM protocol: re-planning every session each period made 300 sessions
# on one host cost a core in plans alone, and re-planning all of a key manager's sessions on each
# configuration change (every route of every new session it relays) made 1,000 cost more still.
# A session is planned at once when its configuration or the route to its peer key manager
# changes, when a pool it crosses goes, and when a local link it crosses goes low, empty or back
# or its key rate moves by more than RATE_MOVED (a fraction); reads and the watch serve what was
# last planned. Beyond that the watch re-plans a session that is not active every FRESH_WATCHES
# periods, and re-verifies at most REVERIFIED_PER_WATCH active sessions a period, the longest
# unplanned first: each at least every max(FRESH_WATCHES, sessions / REVERIFIED_PER_WATCH)
# periods, which catches what changed on hops further away.
FRESH_WATCHES = 5
REVERIFIED_PER_WATCH = 1
RATE_MOVED = 0.25  # well above the twin's default rate jitter (+-5 %): a cut or a real drop, not noise
REASON_MAX = 1024  # qit:reason length


# -- configuration: read with models.key_manager (KmView), as the service controller reads it ----

EMPTY_CONFIG = KmView("", None, frozenset(), KmConfig())


# -- the key manager, with the accounting the device reports ---------------------------------

@dataclass
class Delivered:
    keys: int = 0
    bits: int = 0


class AccountedKeyManager(KeyManager):
    """A KeyManager that also keeps what qi-key-manager reports and enforces per session:
    keys delivered to the local SAE, the session's key size and its expiry (emulated time);
    and, per key manager, relayed bits, keys it could not relay, and per pair of SAEs the
    keys it passed on to a next hop and those that arrived for its slave SAE."""

    def __init__(self, km_id: str, network: KeyNetwork, state_dir: pathlib.Path | None = None,
                 limits: KeyLimits = KeyLimits(), peers: PeerChannel | None = None) -> None:
        self.delivered: dict[tuple[str, str], Delivered] = {}
        self.forwarded: dict[tuple[str, str], Delivered] = {}
        self.received: dict[tuple[str, str], Delivered] = {}
        self.key_sizes: dict[tuple[str, str], int] = {}
        self.expiry: dict[tuple[str, str], float] = {}
        self.relayed_bits = 0
        self.dropped_keys = 0
        self.last_drop_reason = ""
        super().__init__(km_id, network, state_dir, limits, peers)

    async def status(self, master_sae: str, slave_sae: str, key_size: int | None = None) -> KeyStatus:
        self._check_expiry(master_sae, slave_sae)
        return await super().status(master_sae, slave_sae, key_size or self.key_sizes.get((master_sae, slave_sae)))

    async def enc_keys(self, master_sae: str, slave_sae: str, number: int = 1,
                       size: int | None = None) -> list[Key]:
        self._check_expiry(master_sae, slave_sae)
        if size is None:
            size = self.key_sizes.get((master_sae, slave_sae))
        keys = await super().enc_keys(master_sae, slave_sae, number, size)
        _count(self.delivered, master_sae, slave_sae, keys)
        return keys

    def dec_keys(self, slave_sae: str, master_sae: str, key_ids: list[str]) -> list[Key]:
        keys = super().dec_keys(slave_sae, master_sae, key_ids)
        _count(self.delivered, master_sae, slave_sae, keys)
        return keys

    async def _forward(self, destination_km: str, master_sae: str, slave_sae: str, keys: list[Key],
                       incoming: Change | None = None, bucket: TokenBucket | None = None) -> None:
        await super()._forward(destination_km, master_sae, slave_sae, keys, incoming, bucket)
        _count(self.forwarded, master_sae, slave_sae, keys)

    def _store(self, master_sae: str, slave_sae: str, keys: list[Key]) -> None:
        super()._store(master_sae, slave_sae, keys)
        _count(self.received, master_sae, slave_sae, keys)

    async def receive(self, caller: str, message: RelayMessage | DiscardMessage) -> None:
        if not isinstance(message, RelayMessage) or message.destination_km == self.id:
            await super().receive(caller, message)
            return
        try:
            await super().receive(caller, message)
        except KeyServiceError as error:
            self.dropped_keys += len(message.key_ids)
            self.last_drop_reason = error.message[:REASON_MAX]
            raise
        self.relayed_bits += 8 * sum(len(c) for c in message.ciphertexts)

    def _check_expiry(self, master_sae: str, slave_sae: str) -> None:
        expires = self.expiry.get((master_sae, slave_sae))
        if expires is not None and self.network.clock.now() >= expires:
            raise UnknownSAE(f"the key session of SAE {master_sae} with SAE {slave_sae} has expired")


def _count(table: dict[tuple[str, str], Delivered], master_sae: str, slave_sae: str, keys: list[Key]) -> None:
    counter = table.setdefault((master_sae, slave_sae), Delivered())
    counter.keys += len(keys)
    counter.bits += 8 * sum(len(k.key) for k in keys)


# -- the device -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionView:
    """What planning a session last found, and when (monotonic time): its status and reason,
    and the links the plan crossed."""

    session: KmSession
    planned_at: float
    status: str
    reason: str
    links: frozenset[str]


class KeyManagerDevice(Device):
    """One key manager of the topology, with the SAEs the topology attaches to it."""

    kind = "key-manager"
    modules = (MODULE,)

    def __init__(self, km_spec: KeyManagerSpec, saes: list[SaeSpec] | tuple[SaeSpec, ...], network: NetworkContext,
                 port: int = 0, etsi014_port: int = 0) -> None:
        strangers = [s.id for s in saes if s.km != km_spec.id]
        if strangers:
            raise ValueError(f"key manager {km_spec.id}: SAE(s) {', '.join(strangers)} belong to other key managers")
        super().__init__(km_spec.id, network, port)
        self.spec = km_spec
        self.sae_ids = tuple(s.id for s in saes)
        self.etsi014_port = etsi014_port
        self.watch_period = WATCH_PERIOD_S
        self.km: AccountedKeyManager | None = None
        self.etsi014: Etsi014Server | None = None
        self.peers: KmPeerClient | None = None
        self.config = EMPTY_CONFIG
        self._default_outage = next(self.schema.ctx.find_path(f"{ROOT_PATH}/restart/outage")).default()
        # link -> (below low watermark, empty, its key rate when sessions across it were last planned for it)
        self._pool_flags: dict[str, tuple[bool, bool, float]] = {}
        self._session_states: dict[str, str] = {}  # last status notified
        self._session_views: dict[str, SessionView] = {}  # session id -> what was last planned
        # Set by the device host: crash this device now, start it again from disk after the
        # outage (seconds of emulated time). The restart action needs it.
        self.on_restart: Callable[[float], None] | None = None
        self.server.add_rpc(FLUSH_PATH, self._flush)
        self.server.add_rpc(RESTART_PATH, self._restart)

    @property
    def etsi014_url(self) -> str | None:
        return self.etsi014.url if self.etsi014 else None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        directory = self.network.device_dir(self.id)
        tls, peer_tls = self.network.etsi014_tls, self.network.km_peer_tls
        if tls is not None and peer_tls is None:
            raise ValueError(f"key manager {self.id}: the KM-to-KM interface needs km_peer_tls (a client TLS context "
                             f"per key manager id) beside etsi014_tls")
        # KM-to-KM messages are served on the ETSI 014 listener: TLS there means TLS between peers.
        self.peers = KmPeerClient(self.id, peer_tls(self.id) if tls is not None and peer_tls else None,
                                  self.config_peer_url)
        self.km = AccountedKeyManager(self.id, self.network.keys, directory / "keys" if directory else None,
                                      peers=self.peers)
        try:
            await super().start()
            self.etsi014 = Etsi014Server(self.km, port=self.etsi014_port, ssl_context=tls(self.id) if tls else None,
                                         insecure_sae_header=self.network.insecure_sae_header,
                                         extra_routes=KmPeerApi(self.km, insecure=tls is None).routes(),
                                         host=self.network.host if tls else LOOPBACK)
            await self.etsi014.start()
        except BaseException:
            await self.stop()
            raise
        self.etsi014_port = self.etsi014.port
        self.spawn(self._watch())

    async def stop(self) -> None:
        """Stop serving; the key manager's pools and keys stay on disk (a crash loses nothing)."""
        if self.etsi014 is not None:
            await self.etsi014.stop()
            self.etsi014 = None
        if self.peers is not None:
            await self.peers.close()
            self.peers = None
        await super().stop()
        if self.km is not None:
            self.network.keys.unregister(self.id)
            self.km.close()
            self.km = None
        self.config = EMPTY_CONFIG

    def config_peer_url(self, km_id: str) -> str | None:
        """Where the configuration says peer `km_id`'s KM-to-KM interface is."""
        return self.config.config.peers.get(km_id)

    def initial_config(self) -> list[etree._Element]:
        root = KM.element("key-manager", leaves={"km-id": self.id, "site": self.spec.site or None})
        if self.sae_ids:
            saes = KM.sub(root, "saes")
            for sae in self.sae_ids:
                KM.sub(KM.sub(saes, "sae"), "sae-id", sae)
        return [root]

    # -- configuration ---------------------------------------------------------------------

    async def apply(self, before: etree._Element, after: etree._Element) -> None:
        root = KM.find(after, "key-manager")
        if root is None:
            raise _invalid("the key-manager container cannot be removed: it is this device's configuration",
                           ROOT_PATH)
        config = KmView.from_xml(root)
        self._check(config)
        self._reconcile(config)
        self._forget_views_changed_by(config.config)
        self.config = config

    def _forget_views_changed_by(self, new: KmConfig) -> None:
        """Drop the plans `new` may have made wrong, so they are made again: those of sessions
        whose route to the peer changed or whose plan crossed a pool that is gone, and every plan
        that found the session not active (whatever it lacked may be here now). A session whose
        own configuration changed no longer matches its view (`_current_status`)."""
        old = self.config.config
        rerouted = {d for d in old.routes.keys() | new.routes.keys() if old.routes.get(d) != new.routes.get(d)}
        gone = {link for link, peer_km in old.pools.items() if new.pools.get(link) != peer_km}
        for session_id, view in list(self._session_views.items()):
            if view.session.peer_km in rerouted or view.links & gone or view.status != "active":
                del self._session_views[session_id]

    def _check(self, config: KmView) -> None:
        """Refuse what the key manager cannot do, before anything changes."""
        assert self.km is not None
        if config.km_id != self.id:
            raise _invalid(f"this key manager is {self.id}; km-id cannot be changed to {config.km_id}",
                           f"{ROOT_PATH}/km-id")
        for link, peer_km in config.config.pools.items():
            where = f"{ROOT_PATH}/key-pools/key-pool[link-id='{link}']/peer-km-id"
            existing = self.km.pools.get(link)
            if existing is not None and existing.peer_km != peer_km:
                raise _invalid(f"link {link} leads to key manager {existing.peer_km}, not {peer_km}: "
                               f"delete the pool first to pair the link with another key manager", where)
        for peer_km, url in config.config.peers.items():
            if urllib.parse.urlsplit(url).scheme not in ("https", "http") or not urllib.parse.urlsplit(url).netloc:
                raise _invalid(f"peer {peer_km}: url must be an https:// (or, in the insecure mode, http://) base "
                               f"URL, got {url!r}", f"{ROOT_PATH}/peers/peer[km-id='{peer_km}']/url")
        for session_id, session in config.config.sessions.items():
            where = f"{ROOT_PATH}/sessions/session[session-id='{session_id}']"
            if session.master_sae not in config.saes and session.slave_sae not in config.saes:
                raise _invalid(f"session {session_id}: neither SAE {session.master_sae} nor SAE "
                               f"{session.slave_sae} is attached to key manager {self.id}", where)
            if session.master_sae in config.saes and session.slave_sae in config.saes and session.peer_km != self.id:
                raise _invalid(f"session {session_id}: both SAEs are attached to key manager {self.id}, so "
                               f"its peer-km-id must be {self.id} (local delivery)", where)
            if not self.km.limits.min_key_size <= session.key_size <= self.km.limits.max_key_size:
                raise _invalid(f"session {session_id}: key-size {session.key_size} is outside what this "
                               f"key manager delivers ({self.km.limits.min_key_size} to "
                               f"{self.km.limits.max_key_size} bits)", f"{where}/qos/key-size")

    def _reconcile(self, config: KmView) -> None:
        """Make the key manager do what `config` says; idempotent."""
        km = self.km
        assert km is not None
        now = self.network.keys.clock.now()
        for sae in km.saes - config.saes:
            km.detach_sae(sae)
        for sae in config.saes - km.saes:
            km.attach_sae(sae)
        local = {s.pair: s for s in config.config.sessions.values()}
        masters = {pair: s for pair, s in local.items() if config.is_master_end(s)}
        for pair in set(km.sessions) - set(masters):
            km.close_session(*pair)
        for table in (km.key_sizes, km.expiry, km.delivered):
            for pair in set(table) - set(local):
                del table[pair]
        routes = {destination: Route(*hop) for destination, hop in config.config.routes.items()}
        for destination in set(km.routes) - set(routes):
            km.remove_route(destination)
        for link in set(self.config.config.pools) - set(config.config.pools):
            km.remove_link(link)  # pools restored from disk but not configured stay, unused, until they are
            self._pool_flags.pop(link, None)
        for link, peer_km in config.config.pools.items():
            if link not in km.pools:
                km.add_link(link, peer_km)
        for destination, route in routes.items():
            if km.routes.get(destination) != route:
                km.set_route(destination, route.next_hop_km, route.link_id)
        previous = {s.pair: s for s in self.config.config.sessions.values()}
        for pair, session in local.items():
            old = previous.get(pair)
            if pair in masters and (pair not in km.sessions or old is None
                                    or (old.rate, old.burst, old.peer_km) != (session.rate, session.burst,
                                                                               session.peer_km)):
                km.open_session(session.master_sae, session.slave_sae, session.rate, session.burst, session.peer_km)
            km.key_sizes[pair] = session.key_size
            if session.ttl is None:
                km.expiry.pop(pair, None)
            elif pair not in km.expiry or old is None or old.ttl != session.ttl:
                km.expiry[pair] = now + session.ttl

    # -- state -----------------------------------------------------------------------------

    async def state(self) -> etree._Element | None:
        km = self.km
        if km is None:
            return None
        pools = []
        for link in self.config.config.pools:
            pool = km.pools[link]
            pools.append(PoolState(link, pool.available_bits(), pool.max_bits, pool.stream.produced_bits(),
                                   pool.consumed_bits))
        sessions = {}
        clock = self.network.keys.clock
        for session_id, session in self.config.config.sessions.items():
            status, reason = await self._current_status(session_id, session)
            tokens = int(km.sessions[session.pair].bucket.available()) if session.pair in km.sessions else None
            expires, expires_at = km.expiry.get(session.pair), None
            if expires is not None:
                wall = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                    seconds=(expires - clock.now()) / clock.speed)
                expires_at = wall.strftime("%Y-%m-%dT%H:%M:%SZ")
            sessions[session_id] = SessionState(status, reason, tokens, expires_at)
        delivered = {session_id: (km.delivered[s.pair].keys, km.delivered[s.pair].bits)
                     for session_id, s in self.config.config.sessions.items() if s.pair in km.delivered}
        counters = KmCounters(delivered, *({pair: (d.keys, d.bits) for pair, d in table.items()}
                                           for table in (km.forwarded, km.received)))
        relay = RelayTotals(km.stats.keys_relayed, km.relayed_bits, km.dropped_keys, km.last_drop_reason)
        data = empty_tree()
        url = self.etsi014.url if self.etsi014 is not None else None
        data.append(km_state(url, pools, sessions, counters, relay, peer_url=url))
        return data

    async def _current_status(self, session_id: str, session: KmSession) -> tuple[str, str]:
        """A session's (status, reason), for a read of the state and for the watch: what was
        last planned while the session is configured as it was then and has not expired, else
        planned now (the watch decides when a plan is old: see FRESH_WATCHES). A read costs no
        KM-to-KM round trips then, and a controller reading many key managers sees the status
        their notifications gave."""
        known = self._session_views.get(session_id)
        if known is not None and known.session == session and not self._expired(session):
            return known.status, known.reason  # (the time to live runs on the network's clock, which may jump)
        view = SessionView(session, time.monotonic(), *await self._session_status(session))
        self._session_views[session_id] = view
        return view.status, view.reason

    def _expired(self, session: KmSession) -> bool:
        expires = self.km.expiry.get(session.pair) if self.km is not None else None
        return expires is not None and self.network.keys.clock.now() >= expires

    async def _session_status(self, session: KmSession) -> tuple[str, str, frozenset[str]]:
        """(status, reason) of a session seen from this end, by planning over the KM-to-KM
        channel towards the peer key manager (the slave end plans the way back, over the same
        links): the path must be complete ("pending" while a route or a pool is missing), lead
        to the key manager of the other SAE ("failed" for an unreachable key manager, a loop or
        another key manager), hold one key on every hop and keep up with the session's rate."""
        assert self.km is not None
        route = self.km.routes.get(session.peer_km)
        links = frozenset([route.link_id] if route is not None else [])  # (when no plan names them)
        if self._expired(session):
            return "expired", f"the time to live of {session.ttl} s has passed", links
        master_end = self.config.is_master_end(session)
        pair = session.pair if master_end else (session.slave_sae, session.master_sae)
        try:  # one plan of no bits: every hop says how much key it holds
            hops = (await self.km.plan(session.peer_km, 0, pair=pair)).hops
        except NoRoute as error:
            return "pending", error.message[:REASON_MAX], links
        except KeyServiceError as error:
            return "failed", error.message[:REASON_MAX], links
        links = frozenset(hop.link_id for hop in hops)
        short = next((hop for hop in hops if hop.available_bits < session.key_size), None)
        if short is not None:
            return "starved", not_enough_key(short, session.key_size).message[:REASON_MAX], links
        if not hops:
            return "active", f"both SAEs are attached to key manager {self.id}: it delivers the keys itself", links
        rate, link = min((h.rate_bps, h.link_id) for h in hops)
        if rate < session.rate:
            return "starved", f"link {link} distils {rate:.0f} b/s of key; the session needs {session.rate} b/s", links
        source, destination = (self.id, session.peer_km) if master_end else (session.peer_km, self.id)
        return "active", f"{len(hops)} hop(s) from key manager {source} to key manager {destination}", links

    # -- notifications ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_period)
            try:
                await self.watch_once()
            except Exception:  # the watcher must outlive one bad round
                log.exception("%s: watching pools and sessions failed", self.id)

    async def watch_once(self) -> None:
        """Compare pools and sessions with what was last reported; notify the changes."""
        if self.km is None:
            return
        for link in self.config.config.pools:
            await self._pool_level(link)
        self._forget_old_views()
        for session_id, session in self.config.config.sessions.items():
            status, reason = await self._current_status(session_id, session)
            previous = self._session_states.get(session_id, "pending")
            self._session_states[session_id] = status
            if status != previous:
                await self.notify(session_state_change(session_id, status, previous, reason))
        for gone in set(self._session_states) - set(self.config.config.sessions):
            del self._session_states[gone]
        for gone in set(self._session_views) - set(self.config.config.sessions):
            del self._session_views[gone]

    def _forget_old_views(self) -> None:
        """Drop the plans the watch makes again this period (see FRESH_WATCHES)."""
        now, old_after = time.monotonic(), FRESH_WATCHES * self.watch_period
        old = sorted((view.planned_at, session_id) for session_id, view in self._session_views.items()
                     if now - view.planned_at > old_after)
        active = [session_id for _, session_id in old if self._session_views[session_id].status == "active"]
        for session_id in set(session_id for _, session_id in old) - set(active[REVERIFIED_PER_WATCH:]):
            del self._session_views[session_id]

    async def _pool_level(self, link: str, stored: int | None = None) -> None:
        """Notify pool-low and pool-empty on the way down; a new pool counts as empty. Sessions
        planned across the link are planned again when it goes low, empty or back, or its key
        rate moves by more than RATE_MOVED of what it was when they were. `stored`: the bits
        the pool holds, when not what it says (a flush has emptied it)."""
        assert self.km is not None
        pool = self.km.pools[link]
        stored, rate = pool.available_bits() if stored is None else stored, pool.stream.rate_bps
        peer_km, low_watermark = self.config.config.pools[link], self.config.low_watermarks[link]
        low, empty = stored < low_watermark, stored < self.km.limits.min_key_size
        was_low, was_empty, planned_rate = self._pool_flags.get(link, (True, True, 0.0))
        rate_moved = abs(rate - planned_rate) > RATE_MOVED * max(rate, planned_rate)
        self._pool_flags[link] = (low, empty, rate if rate_moved else planned_rate)
        if (low, empty) != (was_low, was_empty) or rate_moved:
            for session_id, view in list(self._session_views.items()):
                if link in view.links:
                    del self._session_views[session_id]
        if low and not was_low:
            await self.notify(pool_low(link, peer_km, stored, low_watermark))
        if empty and not was_empty:
            await self.notify(pool_empty(link, peer_km))

    # -- actions ---------------------------------------------------------------------------

    async def _flush(self, session: Session, action: etree._Element, context: etree._Element | None) -> list:
        link = KM.text(context, "link-id", "")
        if self.km is None or link not in self.config.config.pools:
            raise RPCError("data-missing", f"key manager {self.id} has no pool for link {link}")
        pool = self.km.pools[link]
        consumed = pool.consumed_bits
        await self._pool_level(link)  # the level the flush falls from
        try:
            await self.km.flush(link)
        except (KeyServiceError, ValueError) as error:
            raise RPCError("operation-failed", f"flushing the pool of link {link} failed: {error}") from None
        await self._pool_level(link, 0)
        return [KM.element("discarded", pool.consumed_bits - consumed)]

    async def _restart(self, session: Session, action: etree._Element, context: etree._Element | None) -> None:
        if self.on_restart is None:
            raise RPCError("operation-not-supported", f"key manager {self.id} runs outside a device host: "
                                                      f"nothing would start it again")
        outage = KM.text(action, "outage", "")
        self.on_restart(float(outage or self._default_outage))


def _invalid(message: str, path: str) -> RPCError:
    return RPCError("invalid-value", message, path=path, path_nsmap={MODULE: KM})
