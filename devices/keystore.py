"""Key-manager core: key pools per QKD link, forwarding, application sessions, hop-by-hop
key relay and the ETSI GS QKD 014 key-delivery semantics. No NETCONF and no HTTP here.

- A QKD link distils one `KeyStream`: the same bits at both ends, addressed by bit offset,
  produced at the link's eskr over emulated time (computed when asked, no background loop).
  Each end holds a `KeyPool` over it: the window of produced, unused bits, capped at
  `max_bits` (when full, the oldest bits are dropped). A block taken at one end is taken at
  the same offset at the other end, so both ends stay in step.
- `KeyNetwork` is the in-process registry of one network's key managers: the classical
  channel between them (it carries relay messages, which hold only one-time-pad ciphertext),
  the directory of which key manager serves which SAE, and the links' key streams.
- `KeyManager.enc_keys` makes fresh random keys for a master SAE and relays them to the
  slave SAE's key manager, hop by hop by XOR with each hop's link key. Capacity is checked on
  every hop, and in the session's token bucket, before anything is consumed: a request is
  served whole or not at all. `dec_keys` hands each key to the slave SAE once and deletes it.
- With a `state_dir`, a key manager writes its pools and undelivered keys there after every
  change (json, atomic replace) and a new `KeyManager` with the same id resumes from it.

Key bytes are never logged. Not thread-safe: drive one network from one thread (its event loop).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import secrets
import uuid
from dataclasses import dataclass, field

from devices.twin import Clock

DEFAULT_POOL_MAX_BITS = 10_000_000
_BLOCK_BYTES = 64  # one blake2b output


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


@dataclass(frozen=True)
class Key:
    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyLimits:
    default_key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_per_request: int = 128


class KeyStream:
    """The key one QKD link distils, identical at both ends, addressed by bit offset.

    The bits are a keyed hash of their block index, so both ends (and a restarted key
    manager) derive the same bits from the link's secret without storing them.
    """

    def __init__(self, link_id: str, clock: Clock, secret: bytes | None = None,
                 produced_bits: float = 0.0, rate_bps: float = 0.0) -> None:
        self.link_id = link_id
        self._clock = clock
        self._secret = secret or secrets.token_bytes(32)
        self._settled_bits = produced_bits
        self._settled_at = clock.now()
        self._rate_bps = rate_bps

    @property
    def rate_bps(self) -> float:
        return self._rate_bps

    def set_rate(self, rate_bps: float) -> None:
        """The link's eskr from now on (0 while the link is down)."""
        if not rate_bps >= 0:
            raise ValueError(f"link {self.link_id}: key rate must be >= 0, got {rate_bps!r}")
        now = self._clock.now()
        self._settled_bits += self._rate_bps * (now - self._settled_at)
        self._settled_at = now
        self._rate_bps = rate_bps

    def produced_bits(self) -> int:
        """All bits produced since the link started, in whole bytes."""
        exact = self._settled_bits + self._rate_bps * (self._clock.now() - self._settled_at)
        return int(exact) // 8 * 8

    def bits(self, offset: int, nbits: int) -> bytes:
        """The key bits [offset, offset + nbits); both multiples of 8."""
        first, end = offset // 8, (offset + nbits) // 8
        blocks = range(first // _BLOCK_BYTES, (end + _BLOCK_BYTES - 1) // _BLOCK_BYTES)
        data = b"".join(hashlib.blake2b(i.to_bytes(8, "big"), key=self._secret).digest() for i in blocks)
        skip = first - blocks.start * _BLOCK_BYTES
        return data[skip:skip + end - first]

    def snapshot(self) -> dict:
        return {"link_id": self.link_id, "secret": self._secret.hex(),
                "produced_bits": self.produced_bits(), "rate_bps": self._rate_bps}

    @classmethod
    def restore(cls, snapshot: dict, clock: Clock) -> KeyStream:
        return cls(snapshot["link_id"], clock, bytes.fromhex(snapshot["secret"]),
                   snapshot["produced_bits"], snapshot["rate_bps"])


class KeyPool:
    """One end's share of a link's key: offsets below `tail` are used; the pool holds the
    produced bits from max(tail, produced - max_bits)."""

    def __init__(self, stream: KeyStream, peer_km: str, max_bits: int, tail: int = 0,
                 consumed_bits: int = 0) -> None:
        if max_bits <= 0 or max_bits % 8:
            raise ValueError(f"link {stream.link_id}: max_bits must be a positive multiple of 8")
        self.stream = stream
        self.peer_km = peer_km
        self.max_bits = max_bits
        self.tail = tail
        self.consumed_bits = consumed_bits  # taken for relays and drains, at this end

    @property
    def link_id(self) -> str:
        return self.stream.link_id

    def _start(self, not_before: int) -> int:
        return max(self.tail, self.stream.produced_bits() - self.max_bits, not_before)

    def available_bits(self, not_before: int = 0) -> int:
        """Bits available here; `not_before` is the peer's tail, so that only bits that
        both ends still hold are counted."""
        return max(0, self.stream.produced_bits() - self._start(not_before))

    def take(self, bits: int, not_before: int = 0) -> int:
        """Use `bits` from the oldest bits both ends hold; returns their offset."""
        offset = self._start(not_before)
        if self.stream.produced_bits() - offset < bits:
            raise KeyUnavailable(f"link {self.link_id}: pool holds {self.available_bits(not_before)} bits, "
                                 f"{bits} needed")
        self.tail = offset + bits
        self.consumed_bits += bits
        return offset

    def take_at(self, offset: int, bits: int) -> None:
        """Use the bits the peer took at `offset`."""
        if offset < self.tail or offset + bits > self.stream.produced_bits():
            raise KeyUnavailable(f"link {self.link_id}: bits [{offset}, {offset + bits}) are not in the pool")
        self.tail = offset + bits
        self.consumed_bits += bits

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


class KeyNetwork:
    """The key managers of one emulated network, and what they share."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._kms: dict[str, KeyManager] = {}
        self._sae_km: dict[str, str] = {}
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
            raise KeyUnavailable(f"key manager {km_id} is unreachable")
        return km

    def is_up(self, km_id: str) -> bool:
        return km_id in self._kms

    def deliver(self, km_id: str, message: RelayMessage | DiscardMessage) -> None:
        """The classical channel: hand `message` to key manager `km_id`."""
        self.km(km_id).receive(message)

    def attach_sae(self, sae_id: str, km_id: str) -> None:
        owner = self._sae_km.setdefault(sae_id, km_id)
        if owner != km_id:
            raise ValueError(f"SAE {sae_id!r} is already attached to key manager {owner!r}")

    def detach_sae(self, sae_id: str) -> None:
        self._sae_km.pop(sae_id, None)

    def locate_sae(self, sae_id: str) -> str | None:
        return self._sae_km.get(sae_id)

    def stream(self, link_id: str) -> KeyStream:
        """The key stream of a QKD link, created on first use."""
        if link_id not in self._streams:
            self._streams[link_id] = KeyStream(link_id, self.clock)
        return self._streams[link_id]

    def adopt_stream(self, snapshot: dict) -> KeyStream:
        """The running stream of a link, or the saved one if the link is not running
        (the whole network restarted)."""
        link_id = snapshot["link_id"]
        if link_id not in self._streams:
            self._streams[link_id] = KeyStream.restore(snapshot, self.clock)
        return self._streams[link_id]

    def remove_stream(self, link_id: str) -> None:
        self._streams.pop(link_id, None)


class KeyManager:
    """One key manager (KME). Configuration is applied by method calls; its state is in plain
    attributes: `pools`, `routes`, `sessions`, `saes`, `stats`, `stored_key_count`."""

    def __init__(self, km_id: str, network: KeyNetwork, state_dir: pathlib.Path | None = None,
                 limits: KeyLimits = KeyLimits()) -> None:
        self.id = km_id
        self.network = network
        self.limits = limits
        self.state_file = state_dir / f"{km_id}.json" if state_dir is not None else None
        self.pools: dict[str, KeyPool] = {}
        self.routes: dict[str, Route] = {}
        self.sessions: dict[tuple[str, str], Session] = {}
        self.saes: set[str] = set()
        self.stats = KeyManagerStats()
        self._stored: dict[str, StoredKey] = {}
        if self.state_file is not None and self.state_file.exists():
            self._load()
        network.register(self)

    # -- configuration -------------------------------------------------------------------

    def add_link(self, link_id: str, peer_km: str, max_bits: int = DEFAULT_POOL_MAX_BITS) -> KeyPool:
        """A pool for a QKD link to `peer_km`; a pool restored from disk is kept."""
        pool = self.pools.get(link_id)
        if pool is not None:
            if pool.peer_km != peer_km:
                raise ValueError(f"key manager {self.id}: link {link_id!r} goes to {pool.peer_km!r}, not {peer_km!r}")
            pool.max_bits = max_bits
            return pool
        pool = self.pools[link_id] = KeyPool(self.network.stream(link_id), peer_km, max_bits)
        return pool

    def remove_link(self, link_id: str) -> None:
        self.pools.pop(link_id, None)
        self._persist()

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
        self.network.attach_sae(sae_id, self.id)
        self.saes.add(sae_id)

    def detach_sae(self, sae_id: str) -> None:
        if sae_id in self.saes:
            self.saes.discard(sae_id)
            self.network.detach_sae(sae_id)

    def open_session(self, master_sae: str, slave_sae: str, rate_bps: float, burst_bits: int) -> Session:
        session = Session(master_sae, slave_sae, TokenBucket(rate_bps, burst_bits, self.network.clock))
        self.sessions[(master_sae, slave_sae)] = session
        return session

    def close_session(self, master_sae: str, slave_sae: str) -> None:
        self.sessions.pop((master_sae, slave_sae), None)

    @property
    def stored_key_count(self) -> int:
        """Keys relayed here and waiting for their slave SAE."""
        return len(self._stored)

    # -- ETSI 014 ------------------------------------------------------------------------

    def status(self, master_sae: str, slave_sae: str) -> KeyStatus:
        session, destination = self._authorise(master_sae, slave_sae)
        hops = self.plan_relay(destination, 0)
        size = self.limits.default_key_size
        stored = min([h.available_bits for h in hops] + [int(session.bucket.available())]) // size
        most = min([h.max_bits for h in hops] + [session.bucket.burst_bits]) // size
        return KeyStatus(self.id, destination, master_sae, slave_sae, size, stored, most,
                         self.limits.max_key_per_request, self.limits.max_key_size, self.limits.min_key_size)

    def enc_keys(self, master_sae: str, slave_sae: str, number: int = 1, size: int | None = None) -> list[Key]:
        """Fresh keys for `master_sae`, delivered to `slave_sae`'s key manager; all or nothing."""
        size = self.limits.default_key_size if size is None else size
        self._check_request(number, size)
        session, destination = self._authorise(master_sae, slave_sae)
        bits = number * size
        session.bucket.check(bits)
        self.plan_relay(destination, bits)
        session.bucket.take(bits)
        keys = [Key(str(uuid.uuid4()), secrets.token_bytes(size // 8)) for _ in range(number)]
        if destination == self.id:
            self._store(master_sae, slave_sae, keys)
        else:
            self._forward(destination, master_sae, slave_sae, keys)
        self.stats.keys_served += number
        self._persist()
        return keys

    def dec_keys(self, slave_sae: str, master_sae: str, key_ids: list[str]) -> list[Key]:
        """The keys `master_sae` obtained for `slave_sae`, each handed out once, then deleted."""
        if slave_sae not in self.saes:
            raise UnknownSAE(f"SAE {slave_sae} is not served by key manager {self.id}")
        if not key_ids:
            raise BadKeyRequest("no key_ID given")
        problems = []
        for i, key_id in enumerate(key_ids):
            stored = self._stored.get(key_id)
            if key_ids.index(key_id) != i:
                problems.append({"key_ID": key_id, "reason": "listed twice"})
            elif stored is None or (stored.master_sae, stored.slave_sae) != (master_sae, slave_sae):
                problems.append({"key_ID": key_id, "reason": f"no key with this ID for SAE {slave_sae} "
                                                              f"from SAE {master_sae} (unknown or already delivered)"})
        if problems:
            reasons = "; ".join(f"{p['key_ID']}: {p['reason']}" for p in problems)
            raise BadKeyRequest(f"{len(problems)} of {len(key_ids)} key_IDs cannot be delivered: {reasons}",
                                problems)
        keys = [Key(key_id, self._stored.pop(key_id).key) for key_id in key_ids]
        self.stats.keys_delivered += len(keys)
        self._persist()
        return keys

    def _check_request(self, number: int, size: int) -> None:
        limits = self.limits
        if not _is_int(number) or not 1 <= number <= limits.max_key_per_request:
            raise BadKeyRequest(f"number must be an integer from 1 to {limits.max_key_per_request}, got {number!r}")
        if not _is_int(size) or not limits.min_key_size <= size <= limits.max_key_size or size % 8:
            raise BadKeyRequest(f"size must be a multiple of 8 from {limits.min_key_size} to "
                                f"{limits.max_key_size} bits, got {size!r}")

    def _authorise(self, master_sae: str, slave_sae: str) -> tuple[Session, str]:
        if master_sae not in self.saes:
            raise UnknownSAE(f"SAE {master_sae} is not served by key manager {self.id}")
        session = self.sessions.get((master_sae, slave_sae))
        destination = self.network.locate_sae(slave_sae)
        if session is None or destination is None:
            raise UnknownSAE(f"SAE {master_sae} has no key session with SAE {slave_sae}")
        return session, destination

    # -- relay ---------------------------------------------------------------------------

    def plan_relay(self, destination_km: str, bits: int, visited: tuple[str, ...] = ()) -> list[Hop]:
        """The hops from here to `destination_km`, each checked to hold `bits` at both ends.
        Consumes nothing; raises KeyUnavailable naming the first hop that cannot carry them."""
        if destination_km == self.id:
            return []
        if self.id in visited:
            raise KeyUnavailable(f"routing loop towards key manager {destination_km}: "
                                 f"{' -> '.join(visited + (self.id,))}")
        route = self.routes.get(destination_km)
        if route is None:
            raise KeyUnavailable(f"key manager {self.id} has no route to key manager {destination_km}")
        pool = self.pools[route.link_id]
        peer = self.network.km(route.next_hop_km)
        available = pool.available_bits(not_before=peer.pool_tail(route.link_id))
        if available < bits:
            raise KeyUnavailable(
                f"not enough key on link {route.link_id} ({self.id} -> {peer.id}): "
                f"{available} bits, {bits} needed",
                [{"link": route.link_id, "available_bits": available, "needed_bits": bits}])
        hop = Hop(self.id, peer.id, route.link_id, available, pool.max_bits)
        return [hop] + peer.plan_relay(destination_km, bits, visited + (self.id,))

    def pool_tail(self, link_id: str) -> int:
        """Where this end's pool of the link starts: the peer never offers bits below it."""
        pool = self.pools.get(link_id)
        if pool is None:
            raise KeyUnavailable(f"key manager {self.id} has no pool for link {link_id}")
        return pool.tail

    def receive(self, message: RelayMessage | DiscardMessage) -> None:
        """A message from a peer over the classical channel."""
        pool = self.pools.get(message.link_id)
        if pool is None:
            raise KeyUnavailable(f"key manager {self.id} has no pool for link {message.link_id}")
        if isinstance(message, DiscardMessage):
            pool.take_at(message.offset, message.bits)
        else:
            self._receive_relay(pool, message)
        self._persist()

    def _receive_relay(self, pool: KeyPool, message: RelayMessage) -> None:
        """Decrypt a hop's keys with this link's key, then store them or pass them on."""
        bits = 8 * sum(len(c) for c in message.ciphertexts)
        pool.take_at(message.offset, bits)
        pad = pool.stream.bits(message.offset, bits)
        keys, at = [], 0
        for key_id, ciphertext in zip(message.key_ids, message.ciphertexts):
            keys.append(Key(key_id, _xor(ciphertext, pad[at:at + len(ciphertext)])))
            at += len(ciphertext)
        if message.destination_km == self.id:
            self._store(message.master_sae, message.slave_sae, keys)
        else:
            self._forward(message.destination_km, message.master_sae, message.slave_sae, keys)
            self.stats.keys_relayed += len(keys)

    def _forward(self, destination_km: str, master_sae: str, slave_sae: str, keys: list[Key]) -> None:
        route = self.routes[destination_km]
        peer = self.network.km(route.next_hop_km)
        bits = 8 * sum(len(k.key) for k in keys)
        offset = self.pools[route.link_id].take(bits, not_before=peer.pool_tail(route.link_id))
        pad = self.pools[route.link_id].stream.bits(offset, bits)
        ciphertexts, at = [], 0
        for k in keys:
            ciphertexts.append(_xor(k.key, pad[at:at + len(k.key)]))
            at += len(k.key)
        self.network.deliver(peer.id, RelayMessage(route.link_id, offset, destination_km, master_sae, slave_sae,
                                                   tuple(k.key_id for k in keys), tuple(ciphertexts)))

    def _store(self, master_sae: str, slave_sae: str, keys: list[Key]) -> None:
        for k in keys:
            self._stored[k.key_id] = StoredKey(master_sae, slave_sae, k.key)

    # -- faults --------------------------------------------------------------------------

    def drain(self, link_id: str, bits: int) -> None:
        """Throw away `bits` of the link's key, at both ends (the peer is told the offset)."""
        if not _is_int(bits) or bits <= 0 or bits % 8:
            raise ValueError(f"bits to drain must be a positive multiple of 8, got {bits!r}")
        self._discard(link_id, bits)

    def flush(self, link_id: str) -> None:
        """Empty the link's pool, at both ends."""
        self._discard(link_id, None)

    def _discard(self, link_id: str, bits: int | None) -> None:
        pool = self.pools.get(link_id)
        if pool is None:
            raise ValueError(f"key manager {self.id} has no pool for link {link_id!r}")
        peer = self.network.km(pool.peer_km) if self.network.is_up(pool.peer_km) else None
        not_before = peer.pool_tail(link_id) if peer is not None else 0
        amount = pool.available_bits(not_before) if bits is None else bits
        offset = pool.take(amount, not_before)
        if peer is not None:
            self.network.deliver(peer.id, DiscardMessage(link_id, offset, amount))
        self._persist()

    # -- persistence ---------------------------------------------------------------------

    def _persist(self) -> None:
        if self.state_file is None:
            return
        state = {
            "km_id": self.id,
            "pools": {link_id: pool.snapshot() for link_id, pool in self.pools.items()},
            "stored_keys": {key_id: {"master_sae": k.master_sae, "slave_sae": k.slave_sae,
                                     "key": base64.b64encode(k.key).decode()}
                            for key_id, k in self._stored.items()},
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".json.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.state_file)

    def _load(self) -> None:
        assert self.state_file is not None
        try:
            state = json.loads(self.state_file.read_text())
            for link_id, p in state["pools"].items():
                stream = self.network.adopt_stream(p["stream"])
                self.pools[link_id] = KeyPool(stream, p["peer_km"], p["max_bits"], p["tail"], p["consumed_bits"])
            for key_id, k in state["stored_keys"].items():
                self._stored[key_id] = StoredKey(k["master_sae"], k["slave_sae"], base64.b64decode(k["key"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{self.state_file}: not a key manager state file ({exc})") from exc


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
