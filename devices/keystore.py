"""Key-manager core: key pools per QKD link, forwarding, application sessions, hop-by-hop
key relay and the ETSI GS QKD 014 key-delivery semantics. No NETCONF and no HTTP here.

- A QKD link distils one `KeyStream`: the same bits at both ends, addressed by bit offset,
  produced at the link's eskr over emulated time (computed when asked, no background loop).
  Each end holds a `KeyPool` over it: the window of produced, unused bits, capped at
  `max_bits` (when full, the oldest bits are dropped). A block taken at one end is taken at
  the same offset at the other end, so both ends stay in step.
- Key managers talk to each other only through a `PeerChannel`: `send(sender, peer, message)`
  of a `TailQuery`, `PlanRequest`, `RelayMessage` (one-time-pad ciphertext only) or
  `DiscardMessage`, answered by the peer's `KeyManager.handle`, which takes a message on a
  link only from the link's configured peer. devices/km_peer.py carries them over HTTPS with
  mutual TLS (docs/km-protocol.md); `InMemoryPeers` calls the peer object, for the unit tests
  of this module. `KeyNetwork` holds what one emulated network shares in process: the clock,
  the links' key streams and the registry of running key managers (which the in-memory
  channel uses).
- `KeyManager.enc_keys` makes fresh random keys for a master SAE and relays them to the
  slave SAE's key manager (the session's `peer_km`), hop by hop by XOR with each hop's link
  key. Capacity is checked on every hop (`plan`: each key manager asks the next hop its tail
  and the rest of the plan, then checks its own hop), in the session's token bucket, and at
  the slave's key manager (which must serve the slave SAE and have room for the SAE pair),
  before anything is consumed: a request is served whole or not at all.
  `dec_keys` hands each key to the slave SAE once and deletes it.

Persistence. With a `state_dir`, a key manager keeps its pools and undelivered keys in
`<state_dir>/<km_id>.db`, an SQLite database in WAL mode, written by one small transaction per
operation (the pool rows it changed, the keys it inserted or deleted), each synced to disk
before the operation goes on; a new `KeyManager` with the same id resumes from it. Without a
`state_dir` the same store lives in memory. A state file of the former JSON format
(`<km_id>.json`) is migrated into the database on first start and renamed `<km_id>.json.migrated`.
A state file that cannot be used (damaged, of another key manager, of an unknown format) raises
`KeyStateError`, naming the file and what is wrong.

No one-time pad is used twice, whatever the point at which a key manager crashes, by a rule
local to each key manager:
- write ahead: a sender records on disk the advanced tail of a link's pool before any
  ciphertext (or discard notice) under those bits leaves it;
- a receiver records the bits it received (and, relaying, the bits it takes on the next hop,
  in the same transaction) before it passes the keys on or stores them, and refuses bits
  below its own tail;
- one end of each link, its allocator (the smaller km-id), hands out every range of the
  link's key that ciphertext goes under, in both directions: for its own sends from the
  larger of its tail and the peer's (`TailQuery`), for the peer's when asked
  (`ReserveRequest`, its advanced tail on disk before it answers); so bits either end used
  (before a crash of either) are never offered again, and concurrent relays, however many
  are in flight, never share a pad. Messages may arrive out of order: a pool takes bits
  below its tail only from its holes (`KeyPool`), which a restart forgets.
Keys in flight when a key manager crashes are lost (the master SAE gets an error, or keys
already stored for the slave SAE wait unclaimed until they expire), never sent again.

Delivery is at most once: `dec_keys` deletes the keys in the transaction that precedes its
answer, so a crash (or a lost reply) between that commit and the answer reaching the slave SAE
loses those keys; they are never served twice. Likewise `enc_keys` answers the master SAE only
after the keys are stored at the slave's key manager.

Keys waiting for their slave SAE expire `KeyLimits.max_key_age_s` seconds of the network's
emulated clock after they arrived (a whole network restarted from disk has a new clock: ages
carry on from the newest waiting key's, the time from its arrival to the restart not counted).
At most `KeyLimits.max_stored_keys` wait per SAE pair: beyond that, `enc_keys` is refused with
503 (KeyUnavailable) before anything is consumed, until the slave SAE fetches keys or they expire.
`dec_keys` takes at most `KeyLimits.max_key_per_request` key IDs.

Key bytes are never logged. Not thread-safe: drive a key manager from one thread (its event
loop); `enc_keys`, `status`, `drain`, `flush` and `handle` are coroutines, as they wait for peers.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import pathlib
import reprlib
import secrets
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from devices.twin import Clock

DEFAULT_POOL_MAX_BITS = 10_000_000
DEFAULT_MAX_STORED_KEYS = 10_000  # per SAE pair, waiting at the slave's key manager
DEFAULT_MAX_KEY_AGE_S = 3600.0  # emulated seconds a key waits for its slave SAE
_BLOCK_BYTES = 64  # one blake2b output
STATE_FORMAT = "qstrata-key-manager"
STATE_VERSION = 1


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def shown(value: object) -> str:
    """repr() of a value from a request, cut short (long strings, deep or long containers)."""
    return _REPR.repr(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class KeyServiceError(Exception):
    """A request the key manager cannot serve; `http_status` is the ETSI 014 answer."""

    http_status = 500

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class BadKeyRequest(KeyServiceError):
    http_status = 400


class UnknownSAE(KeyServiceError):
    """The caller is not an SAE of this key manager, or has no session with the peer SAE."""

    http_status = 401


class KeyUnavailable(KeyServiceError):
    """Not enough key in a pool or token bucket, or no way to the destination: retry later."""

    http_status = 503


class StateWriteError(KeyUnavailable):
    """The key manager could not write its state (disk full, I/O error): nothing changed."""


class NoRoute(KeyUnavailable):
    """A key manager on the way has no route to the destination, or no pool for its link."""


class PeerUnreachable(KeyUnavailable):
    """A key manager on the way cannot be reached over the KM-to-KM channel."""


class RoutingLoop(KeyUnavailable):
    """The routes lead back to a key manager already on the way."""


class PeerRefused(KeyUnavailable):
    """A key manager refused a KM-to-KM message: the caller is not the peer of the link."""


# Every KeyServiceError a key manager raises, by name: how a peer's error crosses the
# KM-to-KM channel and is raised again as the same class (devices/km_peer.py).
SERVICE_ERRORS: dict[str, type[KeyServiceError]] = {
    cls.__name__: cls for cls in (KeyServiceError, BadKeyRequest, UnknownSAE, KeyUnavailable, StateWriteError,
                                  NoRoute, PeerUnreachable, RoutingLoop, PeerRefused)}


class KeyStateError(ValueError, OSError):
    """A key manager's state file cannot be used: damaged, of another key manager or of an
    unknown format. The message starts with the file's path. An OSError too, so that the
    command line reports it like other trouble with the state directory, without a traceback."""


@dataclass(frozen=True)
class Key:
    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyLimits:
    default_key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_per_request: int = 128  # enc_keys number, and key_IDs of one dec_keys
    max_stored_keys: int = DEFAULT_MAX_STORED_KEYS  # undelivered keys per SAE pair, at the slave's key manager
    max_key_age_s: float = DEFAULT_MAX_KEY_AGE_S  # emulated seconds before an undelivered key expires

    def __post_init__(self) -> None:
        for name in ("default_key_size", "min_key_size", "max_key_size", "max_key_per_request", "max_stored_keys"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"key limits: {name} must be a positive integer, got {value!r}")
        age = self.max_key_age_s
        if not (isinstance(age, (int, float)) and not isinstance(age, bool) and math.isfinite(age) and age > 0):
            raise ValueError(f"key limits: max_key_age_s must be > 0, got {self.max_key_age_s!r}")


class KeyStream:
    """The key one QKD link distils, identical at both ends, addressed by bit offset.

    The bits are a keyed hash of their block index, so both ends (and a restarted key
    manager) derive the same bits from the link's secret without storing them. How many
    bits exist at an emulated time follows from the rate history: segments (start, bits at
    start, rate). A rate change may be dated ahead (`at`): the twin service announces it to
    every holder of the stream before it takes effect, so that all of them count the same
    produced bits at the same emulated time (docs/twin-service.md).

    A stream `bound=False` waits for its material from the twin service: it produces
    nothing until `bind` gives it the link's secret and history.
    """

    KEEP_S = 5.0  # emulated seconds of rate history kept behind the newest past change

    def __init__(self, link_id: str, clock: Clock, secret: bytes | None = None,
                 produced_bits: float = 0.0, rate_bps: float = 0.0, bound: bool = True) -> None:
        self.link_id = link_id
        self._clock = clock
        self._secret = secret or secrets.token_bytes(32)
        self._segments: list[tuple[float, float, float]] = [(clock.now(), float(produced_bits), float(rate_bps))]
        self.bound = bound

    @property
    def rate_bps(self) -> float:
        return self._segment(self._clock.now())[2] if self.bound else 0.0

    def _segment(self, t: float) -> tuple[float, float, float]:
        for segment in reversed(self._segments):
            if segment[0] <= t:
                return segment
        return self._segments[0]

    def _bits_at(self, t: float) -> float:
        start, bits, rate = self._segment(t)
        return bits + rate * max(0.0, t - start)

    def set_rate(self, rate_bps: float, at: float | None = None) -> None:
        """The link's eskr from emulated time `at` (default: now) on; 0 while the link is down."""
        if not rate_bps >= 0:
            raise ValueError(f"link {self.link_id}: key rate must be >= 0, got {rate_bps!r}")
        now = self._clock.now()
        at = now if at is None else max(at, now)
        bits = self._bits_at(at)
        self._segments = [s for s in self._segments if s[0] < at] + [(at, bits, float(rate_bps))]
        past = [i for i, s in enumerate(self._segments) if s[0] <= now - self.KEEP_S]
        if len(past) > 1:
            del self._segments[:past[-1]]

    def produced_bits(self, at: float | None = None) -> int:
        """All bits produced since the link started (by emulated time `at`, default now), in
        whole bytes."""
        return int(self._bits_at(self._clock.now() if at is None else at)) // 8 * 8 if self.bound else 0

    def bits(self, offset: int, nbits: int) -> bytes:
        """The key bits [offset, offset + nbits); both multiples of 8."""
        first, end = offset // 8, (offset + nbits) // 8
        blocks = range(first // _BLOCK_BYTES, (end + _BLOCK_BYTES - 1) // _BLOCK_BYTES)
        data = b"".join(hashlib.blake2b(i.to_bytes(8, "big"), key=self._secret).digest() for i in blocks)
        skip = first - blocks.start * _BLOCK_BYTES
        return data[skip:skip + end - first]

    def history(self) -> list[list[float]]:
        """The rate history, as the twin service sends it: [start, bits at start, rate]."""
        return [list(s) for s in self._segments]

    def bind(self, secret: bytes, history: list) -> None:
        """Take the link's material from the twin service (a rebind replaces the history)."""
        self._secret = secret
        self.set_history(history)
        self.bound = True

    def set_history(self, history: list) -> None:
        segments = [(float(a), float(b), float(r)) for a, b, r in history]
        if not segments or any(b < 0 or r < 0 for _, b, r in segments):
            raise ValueError(f"link {self.link_id}: a rate history needs segments with bits and rate >= 0")
        self._segments = sorted(segments)

    def snapshot(self) -> dict:
        return {"link_id": self.link_id, "secret": self._secret.hex(),
                "produced_bits": self.produced_bits(), "rate_bps": self.rate_bps}

    @classmethod
    def restore(cls, snapshot: dict, clock: Clock) -> KeyStream:
        return cls(snapshot["link_id"], clock, bytes.fromhex(snapshot["secret"]),
                   snapshot["produced_bits"], snapshot["rate_bps"])


MAX_HOLES = 256  # ranges below a pool's tail that the peer may still send under (in memory)


class KeyPool:
    """One end's share of a link's key: offsets below `tail` are used, except the `holes`;
    the pool holds the produced bits from max(tail, produced - max_bits).

    One end of each link, its `allocator` (the key manager with the smaller id), hands out
    every range of the link's key that ciphertext is sent under, for both directions: its
    own sends, and the peer's (`hold`: asked by a ReserveRequest). So no two messages are
    ever encrypted with the same bits, however many are in flight. Messages can arrive out of
    order: the ranges below the tail not used here yet are holes (at the allocator, the
    ranges it holds for the peer; at the other end, the gaps its tail jumped over), taken
    once each. Holes are in memory only: after a restart they count as used, so a message
    in flight across a crash is refused, never taken twice."""

    def __init__(self, stream: KeyStream, peer_km: str, max_bits: int, tail: int = 0,
                 consumed_bits: int = 0, allocator: bool = True) -> None:
        if max_bits <= 0 or max_bits % 8:
            raise ValueError(f"link {stream.link_id}: max_bits must be a positive multiple of 8")
        self.stream = stream
        self.peer_km = peer_km
        self.max_bits = max_bits
        self.tail = tail
        self.consumed_bits = consumed_bits  # taken for relays and drains, at this end
        self.allocator = allocator
        self.holes: list[tuple[int, int]] = []  # [start, end) below the tail, unused here

    @property
    def link_id(self) -> str:
        return self.stream.link_id

    def _start(self, not_before: int) -> int:
        return max(self.tail, self.stream.produced_bits() - self.max_bits, not_before)

    def available_bits(self, not_before: int = 0) -> int:
        """Bits available here; `not_before` is the peer's tail, so that only bits that
        both ends still hold are counted."""
        return max(0, self.stream.produced_bits() - self._start(not_before))

    def reserve(self, bits: int, not_before: int = 0) -> int:
        """The offset of the oldest `bits` both ends hold; changes nothing (see `advance`)."""
        offset = self._start(not_before)
        if self.stream.produced_bits() - offset < bits:
            raise KeyUnavailable(f"link {self.link_id}: pool holds {self.available_bits(not_before)} bits, "
                                 f"{bits} needed")
        return offset

    def check_at(self, offset: int, bits: int) -> None:
        """Raise KeyUnavailable unless the peer's bits [offset, offset + bits) are still
        unused here: bits below the tail were used (but for the holes), and are never used again."""
        end = offset + bits
        if end > self.stream.produced_bits() or (
                offset < self.tail and not any(start <= offset and end <= stop for start, stop in self.holes)):
            raise KeyUnavailable(f"link {self.link_id}: bits [{offset}, {end}) are not in the pool")

    def advance(self, offset: int, bits: int) -> None:
        """Bits [offset, offset + bits) are used (their use is on disk already)."""
        end = offset + bits
        if offset >= self.tail:
            if offset > self.tail and not self.allocator:  # the allocator handed out the gap: it may come
                self._add_hole(self.tail, offset)
            self.tail = end
        else:
            self._fill(offset, end)
        self.consumed_bits += bits

    def hold(self, offset: int, bits: int) -> None:
        """The allocator gave [offset, offset + bits) to the peer (the tail is on disk already)."""
        if offset >= self.tail:
            self._add_hole(offset, offset + bits)
            self.tail = offset + bits

    def _add_hole(self, start: int, stop: int) -> None:
        self.holes.append((start, stop))
        if len(self.holes) > MAX_HOLES:
            del self.holes[0]  # the oldest counts as used

    def _fill(self, start: int, stop: int) -> None:
        for i, (a, b) in enumerate(self.holes):
            if a <= start and stop <= b:
                self.holes[i:i + 1] = [r for r in ((a, start), (stop, b)) if r[0] < r[1]]
                return

    def take(self, bits: int, not_before: int = 0) -> int:
        """Use `bits` from the oldest bits both ends hold; returns their offset (in memory
        only: the key manager writes the tail ahead of using the bits)."""
        offset = self.reserve(bits, not_before)
        self.advance(offset, bits)
        return offset

    def take_at(self, offset: int, bits: int) -> None:
        """Use the bits the peer took at `offset` (in memory only)."""
        self.check_at(offset, bits)
        self.advance(offset, bits)

    def snapshot(self) -> dict:
        return {"peer_km": self.peer_km, "max_bits": self.max_bits, "tail": self.tail,
                "consumed_bits": self.consumed_bits, "stream": self.stream.snapshot()}


class TokenBucket:
    """`rate_bps` tokens (bits) per emulated second, at most `burst_bits` saved up; starts full."""

    def __init__(self, rate_bps: float, burst_bits: int, clock: Clock) -> None:
        if not rate_bps >= 0 or not burst_bits > 0:
            raise ValueError(f"token bucket needs rate >= 0 and burst > 0, got {rate_bps!r}, {burst_bits!r}")
        self.rate_bps = rate_bps
        self.burst_bits = burst_bits
        self._clock = clock
        self._tokens = float(burst_bits)
        self._at = clock.now()

    def available(self) -> float:
        now = self._clock.now()
        self._tokens = min(float(self.burst_bits), self._tokens + self.rate_bps * (now - self._at))
        self._at = now
        return self._tokens

    def check(self, bits: int) -> None:
        """Raise KeyUnavailable unless `bits` can be taken now."""
        if self.available() < bits:
            raise KeyUnavailable(f"session rate exceeded: {int(self._tokens)} bits left in the bucket, "
                                 f"{bits} requested (rate {self.rate_bps} b/s, burst {self.burst_bits} bits)",
                                 [{"bucket_bits": int(self._tokens), "needed_bits": bits}])

    def take(self, bits: int) -> None:
        self.check(bits)
        self._tokens -= bits


@dataclass
class Session:
    master_sae: str
    slave_sae: str
    peer_km: str  # the key manager serving the slave SAE (this one for a local delivery)
    bucket: TokenBucket


@dataclass(frozen=True)
class Route:
    next_hop_km: str
    link_id: str


@dataclass(frozen=True)
class Hop:
    from_km: str
    to_km: str
    link_id: str
    available_bits: int  # both ends
    max_bits: int
    rate_bps: float = 0.0  # the link's key rate now


def not_enough_key(hop: Hop, bits: int) -> KeyUnavailable:
    """The error of a hop that holds fewer than `bits` bits of key."""
    return KeyUnavailable(f"not enough key on link {hop.link_id} ({hop.from_km} -> {hop.to_km}): "
                          f"{hop.available_bits} bits, {bits} needed",
                          [{"link": hop.link_id, "available_bits": hop.available_bits, "needed_bits": bits}])


@dataclass(frozen=True)
class Plan:
    """A relay checked hop by hop: the hops, and what the destination key manager still takes
    for the SAE pair (None when no pair was named)."""

    hops: tuple[Hop, ...]
    room: int | None = None
    max_stored_keys: int | None = None


@dataclass(frozen=True)
class TailQuery:
    """Asks the peer where its pool of the link starts."""

    link_id: str


@dataclass(frozen=True)
class ReserveRequest:
    """Asks the allocator of the link (the receiver) for `bits` of the link's key to send
    under, from `not_before` (the sender's tail) on; the answer is their offset."""

    link_id: str
    bits: int
    not_before: int


@dataclass(frozen=True)
class PlanRequest:
    """Asks the peer to check the rest of a relay towards `destination_km` (the sender checks
    its own hop, over `link_id`, with the tail the peer answers). With the SAE pair, the
    destination checks that it serves the slave SAE and has room for `number` more keys."""

    link_id: str
    destination_km: str
    bits: int
    visited: tuple[str, ...]
    master_sae: str | None = None
    slave_sae: str | None = None
    number: int = 0


@dataclass(frozen=True)
class PlanAnswer:
    """The receiver's tail of the link, and the rest of the plan or why it cannot be made."""

    tail: int
    plan: Plan | None = None
    error: KeyServiceError | None = None


@dataclass(frozen=True)
class RelayMessage:
    """What crosses the classical channel for one hop: one-time-pad ciphertexts, the offset of
    the pad in the link's key, and where the keys are going."""

    link_id: str
    offset: int
    destination_km: str
    master_sae: str
    slave_sae: str
    key_ids: tuple[str, ...]
    ciphertexts: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class DiscardMessage:
    """Tells the peer which bits of the link's key this end threw away (a drain)."""

    link_id: str
    offset: int
    bits: int


PeerMessage = TailQuery | ReserveRequest | PlanRequest | RelayMessage | DiscardMessage


@dataclass(frozen=True)
class StoredKey:
    master_sae: str
    slave_sae: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyStatus:
    """ETSI 014 Status, in this module's names."""

    source_km: str
    target_km: str
    master_sae: str
    slave_sae: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_sae_id_count: int = 0  # additional slave SAEs (multicast) are not supported


@dataclass
class KeyManagerStats:
    keys_served: int = 0  # to master SAEs by enc_keys
    keys_delivered: int = 0  # to slave SAEs by dec_keys
    keys_relayed: int = 0  # passed on as an intermediate trusted node
    keys_expired: int = 0  # waited here longer than max_key_age_s, deleted undelivered


# -- the persistent store ------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pools (link_id TEXT PRIMARY KEY, peer_km TEXT NOT NULL, max_bits INTEGER NOT NULL,
                    tail INTEGER NOT NULL, consumed_bits INTEGER NOT NULL, retired INTEGER NOT NULL,
                    secret TEXT NOT NULL, produced_bits INTEGER NOT NULL, rate_bps REAL NOT NULL);
CREATE TABLE keys (key_id TEXT PRIMARY KEY, master_sae TEXT NOT NULL, slave_sae TEXT NOT NULL,
                   key BLOB NOT NULL, stored_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX keys_by_age ON keys (stored_at);
"""
_TABLES = {"meta", "pools", "keys"}
_POOL_COLUMNS = "link_id, peer_km, max_bits, tail, consumed_bits, retired, secret, produced_bits, rate_bps"
_CHUNK = 500  # host parameters per statement


@dataclass(frozen=True)
class PoolRecord:
    """One row of the pools table: a pool (retired: removed by configuration; its tail is
    kept so that a pool added again for the link's same key stream resumes from it)."""

    link_id: str
    peer_km: str
    max_bits: int
    tail: int
    consumed_bits: int
    retired: bool
    stream: dict = field(repr=False)  # KeyStream.snapshot()

    @classmethod
    def of(cls, pool: KeyPool, tail: int, consumed_bits: int, retired: bool = False) -> PoolRecord:
        return cls(pool.link_id, pool.peer_km, pool.max_bits, tail, consumed_bits, retired, pool.stream.snapshot())

    def row(self) -> tuple:
        s = self.stream
        return (self.link_id, self.peer_km, self.max_bits, self.tail, self.consumed_bits, int(self.retired),
                s["secret"], s["produced_bits"], s["rate_bps"])


class StateStore:
    """The persistent state of one key manager: an SQLite database in WAL mode (in memory
    without a path). `commit` is the only write: one transaction, synced to disk (synchronous
    FULL) before it returns."""

    def __init__(self, path: pathlib.Path | None, km_id: str, now: float = 0.0) -> None:
        self.path = path
        self.km_id = km_id
        self._name = str(path) if path is not None else f"key manager {km_id} (in memory)"
        if path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._create()
            return
        legacy = path.with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() and legacy.exists():
            _migrate_json(legacy, path, km_id, now)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite gives -wal and -shm the same mode
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise KeyStateError(f"{path}: cannot open the key manager state database ({exc})") from None
        try:
            self._open(legacy)
        except BaseException:
            self._db.close()
            raise

    def _fail(self, what: str) -> KeyStateError:
        return KeyStateError(f"{self._name}: {what}")

    def _open(self, legacy: pathlib.Path) -> None:
        db = self._db
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                self._create()
                tables = set(_TABLES)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_CORRUPT"):
                raise self._fail(f"the database is damaged: {exc}") from None
            raise self._fail(f"cannot use it as a key manager state database: {exc}") from None
        try:
            problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if mode != "wal":
            raise self._fail(f"cannot use write-ahead logging (journal mode {mode})")
        if problems != ["ok"]:
            raise self._fail(f"the database is damaged: {'; '.join(problems)}")
        if not _TABLES <= tables:
            raise self._fail(f"not a key manager state database (tables {', '.join(sorted(tables))}; "
                             f"expected {', '.join(sorted(_TABLES))})")
        try:
            meta = dict(db.execute("SELECT name, value FROM meta"))
            columns = {table: [r[1] for r in db.execute(f"PRAGMA table_info({table})")] for table in ("pools", "keys")}
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"not a key manager state database: {exc}") from None
        if meta.get("format") != STATE_FORMAT:
            raise self._fail(f"not a key manager state database (format {meta.get('format')!r})")
        if meta.get("version") != str(STATE_VERSION):
            raise self._fail(f"state format version {meta.get('version')!r}; this key manager reads version "
                             f"{STATE_VERSION}")
        if meta.get("km_id") != self.km_id:
            raise self._fail(f"the state of key manager {meta.get('km_id')!r}, not of {self.km_id!r}")
        if columns["pools"] != [c.strip() for c in _POOL_COLUMNS.split(",")] or \
                columns["keys"] != ["key_id", "master_sae", "slave_sae", "key", "stored_at"]:
            raise self._fail("not a key manager state database (unexpected columns)")
        if legacy.exists():
            digest = hashlib.sha256(legacy.read_bytes()).hexdigest()
            if meta.get("migrated_from") != digest:
                raise KeyStateError(f"{legacy}: a key manager state file of the former JSON format next to "
                                    f"{self.path}, which was not migrated from it: remove one of the two")
            legacy.rename(legacy.with_suffix(".json.migrated"))  # a migration cut short after its database

    def _create(self) -> None:
        _create_schema(self._db, self.km_id)

    def close(self) -> None:
        self._db.close()

    # -- reads --------------------------------------------------------------------------

    def pools(self) -> list[PoolRecord]:
        try:
            rows = self._db.execute(f"SELECT {_POOL_COLUMNS} FROM pools ORDER BY link_id").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"the database is damaged: {exc}") from None
        return [_pool_record(self._name, *row) for row in rows]

    def waiting(self) -> dict[tuple[str, str], int]:
        """Keys waiting per (master SAE, slave SAE), each row checked (one scan)."""
        damaged = ("typeof(key_id) != 'text' OR typeof(master_sae) != 'text' OR typeof(slave_sae) != 'text' "
                   "OR typeof(key) != 'blob' OR length(key) = 0 OR typeof(stored_at) NOT IN ('real', 'integer')")
        try:
            rows = self._db.execute(f"SELECT master_sae, slave_sae, COUNT(*), SUM({damaged}) FROM keys "
                                    f"GROUP BY master_sae, slave_sae").fetchall()
            if any(bad for *_, bad in rows):
                key_id = self._db.execute(f"SELECT key_id FROM keys WHERE {damaged} LIMIT 1").fetchone()[0]
                raise self._fail(f"stored key {key_id!r} is damaged (wrong types or no key bytes)")
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"the database is damaged: {exc}") from None
        return {(m, s): n for m, s, n, _ in rows}

    def oldest(self) -> float | None:
        return self._db.execute("SELECT MIN(stored_at) FROM keys").fetchone()[0]

    def newest(self) -> float | None:
        return self._db.execute("SELECT MAX(stored_at) FROM keys").fetchone()[0]

    def fetch(self, key_ids: Iterable[str]) -> dict[str, StoredKey]:
        ids, found = list(key_ids), {}
        for at in range(0, len(ids), _CHUNK):
            chunk = ids[at:at + _CHUNK]
            for key_id, master, slave, key in self._db.execute(
                    f"SELECT key_id, master_sae, slave_sae, key FROM keys WHERE key_id IN "
                    f"({', '.join('?' * len(chunk))})", chunk):
                found[key_id] = StoredKey(master, slave, bytes(key))
        return found

    # -- the write -------------------------------------------------------------------------

    def commit(self, pools: Sequence[PoolRecord] = (), insert: Sequence[tuple[str, str, str, bytes, float]] = (),
               delete: Sequence[str] = (), expire_before: float | None = None) -> dict[tuple[str, str], int]:
        """One transaction: write pool rows, insert keys (key_id, master, slave, key,
        stored_at), delete keys by id, and delete the keys stored at or before
        `expire_before`; returns how many expired per (master SAE, slave SAE). On any error
        nothing is written."""
        db = self._db
        expired: dict[tuple[str, str], int] = {}
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if pools:
                    db.executemany(f"INSERT OR REPLACE INTO pools ({_POOL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   [p.row() for p in pools])
                if insert:
                    db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?)", insert)
                if delete:
                    db.executemany("DELETE FROM keys WHERE key_id = ?", [(k,) for k in delete])
                if expire_before is not None:
                    expired = {(m, s): n for m, s, n in db.execute(
                        "SELECT master_sae, slave_sae, COUNT(*) FROM keys WHERE stored_at <= ? "
                        "GROUP BY master_sae, slave_sae", (expire_before,))}
                    db.execute("DELETE FROM keys WHERE stored_at <= ?", (expire_before,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise StateWriteError(f"key manager {self.km_id}: a key ID is stored already ({exc})") from None
        except sqlite3.Error as exc:
            raise StateWriteError(f"key manager {self.km_id} cannot write its state to {self._name}: {exc}") from None
        return expired


def _pool_record(where: str, link_id, peer_km, max_bits, tail, consumed_bits, retired, secret, produced_bits,
                 rate_bps) -> PoolRecord:
    """A checked pool row (from the database or a JSON state file)."""
    def bad(what: str) -> KeyStateError:
        return KeyStateError(f"{where}: pool of link {link_id!r}: {what}")

    if not isinstance(link_id, str) or not link_id:
        raise KeyStateError(f"{where}: a pool has no link id ({link_id!r})")
    if not isinstance(peer_km, str) or not peer_km:
        raise bad(f"peer key manager must be a name, got {peer_km!r}")
    if not _is_int(max_bits) or max_bits <= 0 or max_bits % 8:
        raise bad(f"max_bits must be a positive multiple of 8, got {max_bits!r}")
    for name, value in (("tail", tail), ("consumed_bits", consumed_bits), ("produced_bits", produced_bits)):
        if not _is_int(value) or value < 0 or value % 8:
            raise bad(f"{name} must be a non-negative multiple of 8, got {value!r}")
    if retired not in (0, 1, False, True):
        raise bad(f"retired must be 0 or 1, got {retired!r}")
    try:
        if len(bytes.fromhex(secret)) < 16:
            raise ValueError("shorter than 16 bytes")
    except (TypeError, ValueError) as exc:
        raise bad(f"the key stream's secret is not hex of at least 16 bytes ({exc})") from None
    if not isinstance(rate_bps, (int, float)) or isinstance(rate_bps, bool) or not math.isfinite(rate_bps) \
            or rate_bps < 0:
        raise bad(f"rate_bps must be a finite number >= 0, got {rate_bps!r}")
    stream = {"link_id": link_id, "secret": secret, "produced_bits": produced_bits, "rate_bps": float(rate_bps)}
    return PoolRecord(link_id, peer_km, max_bits, tail, consumed_bits, bool(retired), stream)


def _migrate_json(legacy: pathlib.Path, path: pathlib.Path, km_id: str, now: float) -> None:
    """Move a state file of the former JSON format into a new database at `path`: built
    under another name, then renamed, so that `path` appears complete or not at all."""
    raw = legacy.read_bytes()
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or not isinstance(state.get("pools"), dict) \
                or not isinstance(state.get("stored_keys"), dict):
            raise ValueError("expected an object with objects 'pools' and 'stored_keys'")
        if state.get("km_id", km_id) != km_id:
            raise ValueError(f"the state of key manager {state.get('km_id')!r}, not of {km_id!r}")
        pools = []
        for link_id, p in state["pools"].items():
            s = p["stream"]
            if s["link_id"] != link_id:
                raise ValueError(f"pool {link_id!r} holds the stream of link {s['link_id']!r}")
            pools.append(_pool_record(str(legacy), link_id, p["peer_km"], p["max_bits"], p["tail"], p["consumed_bits"],
                                      0, s["secret"], s["produced_bits"], s["rate_bps"]))
        keys = []
        for key_id, k in state["stored_keys"].items():
            key = base64.b64decode(k["key"], validate=True)
            if not (isinstance(k["master_sae"], str) and isinstance(k["slave_sae"], str) and key):
                raise ValueError(f"stored key {key_id!r} is damaged")
            keys.append((key_id, k["master_sae"], k["slave_sae"], key, now))
    except KeyStateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise KeyStateError(f"{legacy}: not a key manager state file ({type(exc).__name__}: {exc})") from None
    building = path.with_name(path.name + ".migrating")
    for leftover in (building, building.with_name(building.name + "-wal"), building.with_name(building.name + "-shm")):
        leftover.unlink(missing_ok=True)
    os.close(os.open(building, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(building, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        _create_schema(db, km_id, {"migrated_from": hashlib.sha256(raw).hexdigest()}, commit=False)
        db.executemany(f"INSERT INTO pools ({_POOL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [p.row() for p in pools])
        db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?)", keys)
        db.execute("COMMIT")
    finally:
        db.close()  # checkpoints the WAL into the database file
    with open(building, "rb") as f:
        os.fsync(f.fileno())
    os.replace(building, path)
    _fsync_dir(path.parent)
    legacy.rename(legacy.with_suffix(".json.migrated"))
    _fsync_dir(path.parent)


def _create_schema(db: sqlite3.Connection, km_id: str, meta: dict[str, str] | None = None,
                   commit: bool = True) -> None:
    """The tables and their meta rows, in one transaction (left open unless `commit`)."""
    db.execute("BEGIN")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", STATE_FORMAT), ("version", str(STATE_VERSION)),
                                                       ("km_id", km_id), *(meta or {}).items()])
    if commit:
        db.execute("COMMIT")


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyNetwork:
    """What the key managers of one emulated network share in process: the clock, the links'
    key streams, and the registry of running key managers (one id runs once; the in-memory
    transport of unit tests finds its peers there)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._kms: dict[str, KeyManager] = {}
        self._streams: dict[str, KeyStream] = {}

    def register(self, km: KeyManager) -> None:
        if km.id in self._kms:
            raise ValueError(f"key manager {km.id!r} is already running")
        self._kms[km.id] = km

    def unregister(self, km_id: str) -> None:
        """The key manager stops (or crashes): nothing reaches it until one registers again."""
        self._kms.pop(km_id, None)

    def km(self, km_id: str) -> KeyManager:
        km = self._kms.get(km_id)
        if km is None:
            raise PeerUnreachable(f"key manager {km_id} is unreachable")
        return km

    def is_up(self, km_id: str) -> bool:
        return km_id in self._kms

    # The twin service's client (devices/twin_service.py) when the streams come from there, as
    # in a DeviceHost; None: the streams are this object's own (the key store alone, in tests).
    stream_source = None

    def stream(self, link_id: str) -> KeyStream:
        """The key stream of a QKD link, created on first use (from the twin service: bound
        once the service hands this network's key managers the link's material)."""
        if link_id not in self._streams:
            self._streams[link_id] = (self.stream_source.stream(link_id) if self.stream_source is not None
                                      else KeyStream(link_id, self.clock))
        return self._streams[link_id]

    def adopt_stream(self, snapshot: dict) -> KeyStream:
        """The running stream of a link, or the saved one if the link is not running
        (the whole network restarted)."""
        link_id = snapshot["link_id"]
        if link_id not in self._streams:
            self._streams[link_id] = (self.stream_source.adopt(snapshot) if self.stream_source is not None
                                      else KeyStream.restore(snapshot, self.clock))
        return self._streams[link_id]

    def remove_stream(self, link_id: str) -> None:
        self._streams.pop(link_id, None)
        if self.stream_source is not None:
            self.stream_source.forget(link_id)


class PeerChannel(Protocol):
    """How a key manager talks to its peers: `send` hands `message` to key manager `km_id`
    as sent by `sender` and returns the answer of its `KeyManager.handle` (the tail for a
    TailQuery, a PlanAnswer for a PlanRequest, None otherwise), raising its KeyServiceError.
    devices/km_peer.py does it over HTTPS with mutual TLS; `InMemoryPeers` in process."""

    async def send(self, sender: str, km_id: str, message: PeerMessage) -> object: ...


class InMemoryPeers:
    """The KM-to-KM channel of unit tests of this module: calls the peer KeyManager
    registered in the same KeyNetwork directly (the same `handle`, with the same checks of
    the sender, as the HTTPS transport). The devices use devices/km_peer.py."""

    def __init__(self, network: KeyNetwork) -> None:
        self.network = network

    async def send(self, sender: str, km_id: str, message: PeerMessage) -> object:
        return await self.network.km(km_id).handle(sender, message)


Change = tuple[KeyPool, int, int]  # (pool, offset, bits): bits of the pool's link this end uses


class KeyManager:
    """One key manager (KME). Configuration is applied by method calls; its state is in plain
    attributes: `pools`, `routes`, `sessions`, `saes`, `stats`, `stored_key_count`."""

    def __init__(self, km_id: str, network: KeyNetwork, state_dir: pathlib.Path | None = None,
                 limits: KeyLimits = KeyLimits(), peers: PeerChannel | None = None) -> None:
        self.id = km_id
        self.network = network
        self.peers: PeerChannel = peers if peers is not None else InMemoryPeers(network)
        self.limits = limits
        self.state_file = state_dir / f"{km_id}.db" if state_dir is not None else None
        self.pools: dict[str, KeyPool] = {}
        self.routes: dict[str, Route] = {}
        self.sessions: dict[tuple[str, str], Session] = {}
        self.saes: set[str] = set()
        self.stats = KeyManagerStats()
        if network.is_up(km_id):
            raise ValueError(f"key manager {km_id!r} is already running")
        self.store = StateStore(self.state_file, km_id, network.clock.now())
        try:
            self._retired: dict[str, PoolRecord] = {}  # pools removed by configuration: their tails
            for record in self.store.pools():
                if record.retired:
                    self._retired[record.link_id] = record
                    continue
                stream = network.adopt_stream(record.stream)
                self.pools[record.link_id] = KeyPool(stream, record.peer_km, record.max_bits, record.tail,
                                                     record.consumed_bits, allocator=km_id < record.peer_km)
            self._waiting = self.store.waiting()  # (master SAE, slave SAE) -> keys stored here
            self._oldest = self.store.oldest()  # stored_at of the oldest waiting key, or less
            # Keys are stamped on the network's clock; a network restarted from disk has a new
            # clock, from 0: the stamps carry on from the newest key's, so that the time the
            # network was down does not count towards the age of waiting keys.
            self._stamp_offset = max(0.0, (self.store.newest() or 0.0) - network.clock.now())
            network.register(self)
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        """Stop using the state store (everything is on disk already)."""
        self.store.close()

    # -- configuration -------------------------------------------------------------------

    def add_link(self, link_id: str, peer_km: str, max_bits: int = DEFAULT_POOL_MAX_BITS) -> KeyPool:
        """A pool for a QKD link to `peer_km`; a pool restored from disk is kept, and a pool
        removed before resumes its tail (if the link's key stream is the same)."""
        pool = self.pools.get(link_id)
        if pool is not None:
            if pool.peer_km != peer_km:
                raise ValueError(f"key manager {self.id}: link {link_id!r} goes to {pool.peer_km!r}, not {peer_km!r}")
            if pool.max_bits != max_bits:
                if not _is_int(max_bits) or max_bits <= 0 or max_bits % 8:
                    raise ValueError(f"link {link_id}: max_bits must be a positive multiple of 8")
                pool.max_bits = max_bits
                self._apply([(pool, pool.tail, 0)])
            return pool
        stream = self.network.stream(link_id)
        retired = self._retired.get(link_id)
        # An unbound stream's secret is not the link's yet: it may bind to the retired one's,
        # so its tail is kept (at worst some bits of a new stream are skipped, never reused).
        same = retired is not None and (not stream.bound or retired.stream["secret"] == stream.snapshot()["secret"])
        tail = retired.tail if same else 0
        pool = KeyPool(stream, peer_km, max_bits, tail, allocator=self.id < peer_km)
        self._apply([(pool, tail, 0)])  # on disk before anything uses it
        self._retired.pop(link_id, None)
        self.pools[link_id] = pool
        return pool

    def remove_link(self, link_id: str) -> None:
        pool = self.pools.get(link_id)
        if pool is None:
            return
        record = PoolRecord.of(pool, pool.tail, pool.consumed_bits, retired=True)
        self.store.commit(pools=[record])
        del self.pools[link_id]
        self._retired[link_id] = record

    def set_route(self, destination_km: str, next_hop_km: str, link_id: str) -> None:
        pool = self.pools.get(link_id)
        if pool is None:
            raise ValueError(f"key manager {self.id} has no pool for link {link_id!r}")
        if pool.peer_km != next_hop_km:
            raise ValueError(f"key manager {self.id}: link {link_id!r} goes to {pool.peer_km!r}, "
                             f"not to next hop {next_hop_km!r}")
        self.routes[destination_km] = Route(next_hop_km, link_id)

    def remove_route(self, destination_km: str) -> None:
        self.routes.pop(destination_km, None)

    def attach_sae(self, sae_id: str) -> None:
        self.saes.add(sae_id)

    def detach_sae(self, sae_id: str) -> None:
        self.saes.discard(sae_id)

    def open_session(self, master_sae: str, slave_sae: str, rate_bps: float, burst_bits: int,
                     peer_km: str) -> Session:
        """A session of `master_sae` (attached here) with `slave_sae`, attached to `peer_km`
        (this key manager's id for a local delivery)."""
        session = Session(master_sae, slave_sae, peer_km, TokenBucket(rate_bps, burst_bits, self.network.clock))
        self.sessions[(master_sae, slave_sae)] = session
        return session

    def close_session(self, master_sae: str, slave_sae: str) -> None:
        self.sessions.pop((master_sae, slave_sae), None)

    # -- keys waiting here for their slave SAE ---------------------------------------------

    @property
    def stored_key_count(self) -> int:
        """Keys relayed here and waiting for their slave SAE (expired keys are not)."""
        self._expire()
        return sum(self._waiting.values())

    def waiting_keys(self, master_sae: str, slave_sae: str) -> int:
        """Keys from `master_sae` waiting here for `slave_sae`."""
        self._expire()
        return self._waiting.get((master_sae, slave_sae), 0)

    def room(self, master_sae: str, slave_sae: str) -> int:
        """How many more keys from `master_sae` for `slave_sae` this key manager takes now."""
        return max(0, self.limits.max_stored_keys - self.waiting_keys(master_sae, slave_sae))

    def check_room(self, master_sae: str, slave_sae: str, number: int) -> None:
        """Raise KeyUnavailable unless `number` more keys for the pair fit here."""
        waiting = self.waiting_keys(master_sae, slave_sae)
        cap = self.limits.max_stored_keys
        if waiting + number > cap:
            raise KeyUnavailable(
                f"key manager {self.id} holds {waiting} undelivered keys from SAE {master_sae} for SAE {slave_sae} "
                f"(at most {cap}): SAE {slave_sae} must fetch keys (dec_keys) or let them expire",
                [{"km": self.id, "stored_keys": waiting, "max_stored_keys": cap, "requested_keys": number}])

    def _expire(self) -> None:
        """Delete the keys that waited `max_key_age_s` or more (one transaction)."""
        if self._oldest is None:
            return
        cutoff = self._stamp() - self.limits.max_key_age_s
        if self._oldest > cutoff:
            return
        self._oldest = self.store.oldest()  # the bound may be stale: keys were delivered since
        if self._oldest is None or self._oldest > cutoff:
            return
        expired = self.store.commit(expire_before=cutoff)
        for pair, n in expired.items():
            left = self._waiting.get(pair, 0) - n
            if left > 0:
                self._waiting[pair] = left
            else:
                self._waiting.pop(pair, None)
        self.stats.keys_expired += sum(expired.values())
        self._oldest = self.store.oldest()

    # -- ETSI 014 ------------------------------------------------------------------------

    async def status(self, master_sae: str, slave_sae: str, key_size: int | None = None) -> KeyStatus:
        """What `master_sae` can get for `slave_sae` now, in keys of `key_size` bits (the
        default size unless given): the weakest hop, the session's bucket and the room left
        at the slave's key manager for keys of this pair not fetched yet."""
        session, destination = self._authorise(master_sae, slave_sae)
        plan = await self.plan(destination, 0, pair=(master_sae, slave_sae))
        size = self.limits.default_key_size if key_size is None else key_size
        stored = min([h.available_bits for h in plan.hops] + [int(session.bucket.available())]) // size
        most = min([h.max_bits for h in plan.hops] + [session.bucket.burst_bits]) // size
        stored = min(stored, plan.room if plan.room is not None else stored)
        most = min(most, plan.max_stored_keys if plan.max_stored_keys is not None else most)
        return KeyStatus(self.id, destination, master_sae, slave_sae, size, stored, most,
                         self.limits.max_key_per_request, self.limits.max_key_size, self.limits.min_key_size)

    async def enc_keys(self, master_sae: str, slave_sae: str, number: int = 1,
                       size: int | None = None) -> list[Key]:
        """Fresh keys for `master_sae`, delivered to `slave_sae`'s key manager; all or nothing.
        The keys are returned once they are stored (on disk) at the slave's key manager."""
        size = self.limits.default_key_size if size is None else size
        self._check_request(number, size)
        session, destination = self._authorise(master_sae, slave_sae)
        bits = number * size
        session.bucket.check(bits)
        await self.plan(destination, bits, pair=(master_sae, slave_sae), number=number)
        keys = [Key(str(uuid.uuid4()), secrets.token_bytes(size // 8)) for _ in range(number)]
        if destination == self.id:
            self.check_room(master_sae, slave_sae, number)
            session.bucket.take(bits)
            self._store_keys(master_sae, slave_sae, keys)
        else:
            await self._forward(destination, master_sae, slave_sae, keys, bucket=session.bucket)
        self.stats.keys_served += number
        return keys

    def dec_keys(self, slave_sae: str, master_sae: str, key_ids: list[str]) -> list[Key]:
        """The keys `master_sae` obtained for `slave_sae`, each handed out once: they are
        deleted (on disk) before they are returned; all or nothing."""
        if slave_sae not in self.saes:
            raise UnknownSAE(f"SAE {slave_sae} is not served by key manager {self.id}")
        if not key_ids:
            raise BadKeyRequest("no key_ID given")
        most = self.limits.max_key_per_request
        if len(key_ids) > most:
            raise BadKeyRequest(f"at most {most} key_IDs per request, got {len(key_ids)}",
                                [{"max_key_per_request": most, "key_IDs": len(key_ids)}])
        self._expire()
        found = self.store.fetch(set(key_ids))
        problems, seen = [], set()
        for key_id in key_ids:
            stored = found.get(key_id)
            if key_id in seen:
                problems.append({"key_ID": key_id, "reason": "listed twice"})
            elif stored is None or (stored.master_sae, stored.slave_sae) != (master_sae, slave_sae):
                problems.append({"key_ID": key_id, "reason": f"no key with this ID for SAE {slave_sae} from SAE "
                                                              f"{master_sae} (unknown, expired or already delivered)"})
            seen.add(key_id)
        if problems:
            shown = "; ".join(f"{p['key_ID']}: {p['reason']}" for p in problems[:5])
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise BadKeyRequest(f"{len(problems)} of {len(key_ids)} key_IDs cannot be delivered: {shown}{more}",
                                problems)
        self.store.commit(delete=key_ids)
        pair = (master_sae, slave_sae)
        left = self._waiting.get(pair, 0) - len(key_ids)
        if left > 0:
            self._waiting[pair] = left
        else:
            self._waiting.pop(pair, None)
        if not self._waiting:
            self._oldest = None
        self.stats.keys_delivered += len(key_ids)
        return [Key(key_id, found[key_id].key) for key_id in key_ids]

    def _check_request(self, number: int, size: int) -> None:
        limits = self.limits
        if not _is_int(number) or not 1 <= number <= limits.max_key_per_request:
            raise BadKeyRequest(f"number must be an integer from 1 to {limits.max_key_per_request}, "
                                f"got {shown(number)}")
        if not _is_int(size) or not limits.min_key_size <= size <= limits.max_key_size or size % 8:
            raise BadKeyRequest(f"size must be a multiple of 8 from {limits.min_key_size} to "
                                f"{limits.max_key_size} bits, got {shown(size)}")

    def _authorise(self, master_sae: str, slave_sae: str) -> tuple[Session, str]:
        if master_sae not in self.saes:
            raise UnknownSAE(f"SAE {master_sae} is not served by key manager {self.id}")
        session = self.sessions.get((master_sae, slave_sae))
        if session is None:
            raise UnknownSAE(f"SAE {master_sae} has no key session with SAE {slave_sae}")
        return session, session.peer_km

    # -- relay ---------------------------------------------------------------------------

    async def plan_relay(self, destination_km: str, bits: int, visited: tuple[str, ...] = ()) -> list[Hop]:
        """The hops from here to `destination_km`, each checked to hold `bits` at both ends.
        Consumes nothing; raises KeyUnavailable naming the first hop that cannot carry them."""
        return list((await self.plan(destination_km, bits, visited)).hops)

    async def plan(self, destination_km: str, bits: int, visited: tuple[str, ...] = (),
                   pair: tuple[str, str] | None = None, number: int = 0) -> Plan:
        """`plan_relay`, hop by hop over the KM-to-KM channel; with the SAE pair, the
        destination also checks that it serves the slave SAE and has room for `number` keys."""
        if destination_km == self.id:
            if pair is None:
                return Plan(())
            master_sae, slave_sae = pair
            if slave_sae not in self.saes:
                raise UnknownSAE(f"SAE {slave_sae} is not served by key manager {self.id}")
            if number:
                self.check_room(master_sae, slave_sae, number)
            return Plan((), self.room(master_sae, slave_sae), self.limits.max_stored_keys)
        if self.id in visited:
            raise RoutingLoop(f"routing loop towards key manager {destination_km}: "
                              f"{' -> '.join(visited + (self.id,))}")
        route = self.routes.get(destination_km)
        if route is None:
            raise NoRoute(f"key manager {self.id} has no route to key manager {destination_km}")
        pool = self._route_pool(route)
        master_sae, slave_sae = pair if pair is not None else (None, None)
        answer = await self.peers.send(self.id, route.next_hop_km, PlanRequest(
            route.link_id, destination_km, bits, visited + (self.id,), master_sae, slave_sae, number))
        assert isinstance(answer, PlanAnswer)
        hop = Hop(self.id, route.next_hop_km, route.link_id, pool.available_bits(not_before=answer.tail),
                  pool.max_bits, pool.stream.rate_bps)
        if hop.available_bits < bits:
            raise not_enough_key(hop, bits)
        if answer.error is not None:
            raise answer.error
        assert answer.plan is not None
        return Plan((hop,) + answer.plan.hops, answer.plan.room, answer.plan.max_stored_keys)

    def _route_pool(self, route: Route) -> KeyPool:
        pool = self.pools.get(route.link_id)
        if pool is None:
            raise NoRoute(f"key manager {self.id} has no pool for link {route.link_id}")
        return pool

    def pool_tail(self, link_id: str) -> int:
        """Where this end's pool of the link starts: the peer never offers bits below it."""
        pool = self.pools.get(link_id)
        if pool is None:
            raise NoRoute(f"key manager {self.id} has no pool for link {link_id}")
        return pool.tail

    # -- the KM-to-KM channel, receiving side -----------------------------------------------

    def _peer_pool(self, caller: str, link_id: str) -> KeyPool:
        """The pool of `link_id`, whose peer must be `caller` (the authenticated sender); a
        caller that is no pool's peer learns nothing of the pools."""
        if all(p.peer_km != caller for p in self.pools.values()):
            raise PeerRefused(f"key manager {self.id} shares no QKD link with {caller}")
        pool = self.pools.get(link_id)
        if pool is None:
            raise NoRoute(f"key manager {self.id} has no pool for link {link_id}")
        if pool.peer_km != caller:
            raise PeerRefused(f"key manager {self.id} takes messages on link {link_id} only from key manager "
                              f"{pool.peer_km}, not from {caller}")
        return pool

    async def handle(self, caller: str, message: PeerMessage) -> object:
        """A message from key manager `caller` (as its transport authenticated it): the answer
        of a TailQuery (this end's tail) or a PlanRequest (a PlanAnswer); relays and discards
        go to `receive`. Messages on a link are taken only from the link's peer."""
        if isinstance(message, TailQuery):
            return self._peer_pool(caller, message.link_id).tail
        if isinstance(message, ReserveRequest):
            return self._hold(self._peer_pool(caller, message.link_id), message.bits, message.not_before)
        if isinstance(message, PlanRequest):
            tail = self._peer_pool(caller, message.link_id).tail
            pair = (message.master_sae, message.slave_sae) if message.master_sae and message.slave_sae else None
            try:
                plan = await self.plan(message.destination_km, message.bits, message.visited, pair, message.number)
            except KeyServiceError as error:
                return PlanAnswer(tail, error=error)
            return PlanAnswer(tail, plan)
        await self.receive(caller, message)
        return None

    async def receive(self, caller: str, message: RelayMessage | DiscardMessage) -> None:
        """A relay or discard from key manager `caller`. The bits it used are recorded here (on
        disk) before anything else happens; bits below this end's tail are refused."""
        pool = self._peer_pool(caller, message.link_id)
        if isinstance(message, DiscardMessage):
            pool.check_at(message.offset, message.bits)
            self._apply([(pool, message.offset, message.bits)])
        else:
            await self._receive_relay(pool, message)

    async def _receive_relay(self, pool: KeyPool, message: RelayMessage) -> None:
        """Decrypt a hop's keys with this link's key, then store them or pass them on."""
        if len(message.key_ids) != len(message.ciphertexts) or not message.key_ids:
            raise BadKeyRequest(f"a relay on link {message.link_id} needs one ciphertext per key ID "
                                f"({len(message.key_ids)} key IDs, {len(message.ciphertexts)} ciphertexts)")
        bits = 8 * sum(len(c) for c in message.ciphertexts)
        pool.check_at(message.offset, bits)
        pad = pool.stream.bits(message.offset, bits)
        keys, at = [], 0
        for key_id, ciphertext in zip(message.key_ids, message.ciphertexts):
            keys.append(Key(key_id, _xor(ciphertext, pad[at:at + len(ciphertext)])))
            at += len(ciphertext)
        incoming = (pool, message.offset, bits)
        if message.destination_km == self.id:
            self._store_keys(message.master_sae, message.slave_sae, keys, incoming)
        else:
            await self._forward(message.destination_km, message.master_sae, message.slave_sae, keys, incoming)
            self.stats.keys_relayed += len(keys)

    async def _forward(self, destination_km: str, master_sae: str, slave_sae: str, keys: list[Key],
                       incoming: Change | None = None, bucket: TokenBucket | None = None) -> None:
        """Encrypt `keys` with the next hop's link key and send them: the bits are recorded
        on disk (with `incoming`, the bits they arrived under) before the message leaves. The
        next hop's tail is asked first; from then until the write nothing else runs, so the
        bits are reserved, `bucket` (the session's, at the first hop) taken and the write made
        in one step of the event loop."""
        bits = 8 * sum(len(k.key) for k in keys)
        try:
            route = self.routes.get(destination_km)
            if route is None:
                raise NoRoute(f"key manager {self.id} has no route to key manager {destination_km}")
            pool = self._route_pool(route)
            offset = await self._allocate(pool, bits)
            if incoming is not None:
                incoming[0].check_at(incoming[1], incoming[2])  # a copy of the message may have come meanwhile
            if bucket is not None:
                bucket.take(bits)
        except KeyServiceError:
            self._spend(incoming)
            raise
        self._apply(([incoming] if incoming is not None else []) + [(pool, offset, bits)])
        pad = pool.stream.bits(offset, bits)
        ciphertexts, at = [], 0
        for k in keys:
            ciphertexts.append(_xor(k.key, pad[at:at + len(k.key)]))
            at += len(k.key)
        await self.peers.send(self.id, route.next_hop_km, RelayMessage(
            route.link_id, offset, destination_km, master_sae, slave_sae, tuple(k.key_id for k in keys),
            tuple(ciphertexts)))

    async def _allocate(self, pool: KeyPool, bits: int) -> int:
        """The offset of `bits` of the pool's link to send under: reserved here from the larger
        of both tails (the allocator), or by the peer (a ReserveRequest). From the answer to
        the write that uses them the caller runs without waiting."""
        if pool.allocator:
            tail = await self.peers.send(self.id, pool.peer_km, TailQuery(pool.link_id))
            assert isinstance(tail, int)
            return pool.reserve(bits, not_before=tail)
        offset = await self.peers.send(self.id, pool.peer_km, ReserveRequest(pool.link_id, bits, pool.tail))
        assert isinstance(offset, int)
        return offset

    def _hold(self, pool: KeyPool, bits: int, not_before: int) -> int:
        """Give the peer `bits` of the link to send under (this end allocates the link's key):
        the advanced tail is on disk before the offset is answered."""
        if not pool.allocator:
            raise PeerRefused(f"key manager {self.id} does not allocate the key of link {pool.link_id}: "
                              f"key manager {pool.peer_km} does")
        if not _is_int(bits) or bits <= 0 or bits % 8:
            raise BadKeyRequest(f"bits to reserve must be a positive multiple of 8, got {shown(bits)}")
        offset = pool.reserve(bits, not_before)
        self.store.commit(pools=[PoolRecord.of(pool, offset + bits, pool.consumed_bits)])
        pool.hold(offset, bits)
        return offset

    def _spend(self, incoming: Change | None) -> None:
        """Record the bits a relay arrived under that cannot go on: they are spent all the same
        (unless another message used them meanwhile)."""
        if incoming is None:
            return
        pool, offset, bits = incoming
        try:
            pool.check_at(offset, bits)
        except KeyUnavailable:
            return
        self._apply([incoming])

    def _store_keys(self, master_sae: str, slave_sae: str, keys: list[Key], incoming: Change | None = None) -> None:
        """Keep `keys` for `slave_sae` (with `incoming`, the bits they arrived under), in one
        transaction; refused, beyond the pair's cap, with the bits recorded all the same."""
        try:
            self.check_room(master_sae, slave_sae, len(keys))
        except KeyUnavailable:
            if incoming is not None:
                self._apply([incoming])
            raise
        now = self._stamp()
        self._apply([incoming] if incoming is not None else [],
                    insert=[(k.key_id, master_sae, slave_sae, k.key, now) for k in keys])
        pair = (master_sae, slave_sae)
        self._waiting[pair] = self._waiting.get(pair, 0) + len(keys)
        if self._oldest is None:
            self._oldest = now
        self._store(master_sae, slave_sae, keys)

    def _store(self, master_sae: str, slave_sae: str, keys: list[Key]) -> None:
        """Called once `keys` are stored for `slave_sae` (a hook for subclasses)."""

    def _stamp(self) -> float:
        """Now, as stored keys are stamped (see __init__)."""
        return self.network.clock.now() + self._stamp_offset

    def _apply(self, changes: Sequence[Change], insert: Sequence[tuple[str, str, str, bytes, float]] = ()) -> None:
        """Write the pools' advanced tails (and `insert`) in one transaction, then advance
        the pools in memory: memory never runs ahead of the disk."""
        after: dict[str, list] = {}
        for pool, offset, bits in changes:
            tail, consumed = after.get(pool.link_id, (pool, pool.tail, pool.consumed_bits))[1:]
            after[pool.link_id] = [pool, max(tail, offset + bits), consumed + bits]
        self.store.commit(pools=[PoolRecord.of(pool, tail, consumed) for pool, tail, consumed in after.values()],
                           insert=insert)
        for pool, offset, bits in changes:
            pool.advance(offset, bits)

    # -- faults --------------------------------------------------------------------------

    async def drain(self, link_id: str, bits: int) -> None:
        """Throw away `bits` of the link's key, at both ends (the peer is told the offset)."""
        if not _is_int(bits) or bits <= 0 or bits % 8:
            raise ValueError(f"bits to drain must be a positive multiple of 8, got {bits!r}")
        await self._discard(link_id, bits)

    async def flush(self, link_id: str) -> None:
        """Empty the link's pool, at both ends."""
        await self._discard(link_id, None)

    async def _discard(self, link_id: str, bits: int | None) -> None:
        """Discard at this end, then tell the peer; a peer that cannot be asked its tail is
        caught up later (its next relay offsets start at the larger tail)."""
        pool = self.pools.get(link_id)
        if pool is None:
            raise ValueError(f"key manager {self.id} has no pool for link {link_id!r}")
        try:
            not_before = await self.peers.send(self.id, pool.peer_km, TailQuery(link_id))
            assert isinstance(not_before, int)
            reachable = True
        except KeyServiceError:
            not_before, reachable = 0, False
        amount = pool.available_bits(not_before) if bits is None else bits
        if reachable and amount and not pool.allocator:
            offset = await self._allocate(pool, amount)
        else:  # no ciphertext goes under discarded bits: without the peer, this end discards alone
            offset = pool.reserve(amount, not_before)
        self._apply([(pool, offset, amount)])
        if reachable and amount:
            await self.peers.send(self.id, pool.peer_km, DiscardMessage(link_id, offset, amount))
