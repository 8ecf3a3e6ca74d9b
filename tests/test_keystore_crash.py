"""Crash consistency of the key managers' state: no one-time pad is ever used twice, and a
key fetched at both ends is the same key or is reported lost, never served twice.

1. In process, exhaustively: a script of relays over the 3-hop chain A - B - C - D (both
   ways, with dec_keys at both ends and a drain), with a kill injected at every write of every
   key manager's state store, just before it commits and just after; then every key manager
   restarted from its state dir (in the same network, whose link streams run on, or in a new
   one restored from the state files alone), and the script carried on.
2. For real: a child process runs the chain on a state dir, issuing and fetching keys; it is
   killed with SIGKILL at random moments (seeded, bounded), started again, and at the end the
   invariants are checked from the persisted state and from the log the child fsync'd: every
   (link, offset, bits) it used for encryption and every key issued, fetched or lost.

Every (link, bit range) used to encrypt a relay message is recorded when the message leaves
its sender; the ranges of a link, from both of its ends, must never overlap.

    python tests/test_keystore_crash.py child STATE_DIR LOG SEED [OPS]   # the child process
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time as wall
from dataclasses import dataclass, field

import pytest

from devices.keystore import (BadKeyRequest, InMemoryPeers, KeyLimits, KeyManager, KeyNetwork, KeyUnavailable,
                              RelayMessage, StateStore)
from devices.twin import Clock
from test_keystore import LINKS, run, start_chain

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENDS = {"A": ("sa", "sd"), "D": ("sd", "sa")}  # key manager -> (its SAE, the SAE at the other end)
MAX_AGE_S = 600.0


class Crash(BaseException):
    """A kill at a write of a state store (not an Exception: nothing on the way catches it)."""


class ManualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Ledger:
    """What happened, as the outside world saw it."""

    pads: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)  # link -> (offset, bits, sender)
    issued: dict[str, bytes] = field(default_factory=dict)  # key ID -> key, as the master SAE got it
    delivered: dict[str, bytes] = field(default_factory=dict)  # key ID -> key, as the slave SAE got it
    lost: set[str] = field(default_factory=set)  # issued, then refused to the slave SAE
    pending: dict[str, dict[str, str]] = field(default_factory=lambda: {"A": {}, "D": {}})  # km -> id -> master

    def used(self, link: str, offset: int, bits: int, sender: str) -> None:
        self.pads.setdefault(link, []).append((offset, bits, sender))

    def reused(self) -> list[str]:
        return overlaps(self.pads)


def overlaps(pads: dict[str, list[tuple[int, int, str]]]) -> list[str]:
    """Every pair of overlapping bit ranges of one link, described."""
    found = []
    for link, uses in pads.items():
        uses = sorted(uses)
        for (o1, b1, s1), (o2, b2, s2) in zip(uses, uses[1:]):
            if o2 < o1 + b1:
                found.append(f"link {link}: [{o1}, {o1 + b1}) by {s1} and [{o2}, {o2 + b2}) by {s2}")
    return found


class LedgerPeers(InMemoryPeers):
    """The in-memory KM-to-KM channel; each relay message is recorded as it leaves its sender."""

    def __init__(self, network: KeyNetwork, ledger: Ledger) -> None:
        super().__init__(network)
        self.ledger = ledger

    async def send(self, sender, km_id, message):
        if isinstance(message, RelayMessage):
            self.ledger.used(message.link_id, message.offset, 8 * sum(map(len, message.ciphertexts)), sender)
        return await super().send(sender, km_id, message)


class LedgerNetwork(KeyNetwork):
    def __init__(self, clock: Clock, ledger: Ledger) -> None:
        super().__init__(clock)
        self.peers = LedgerPeers(self, ledger)


def configure(network: KeyNetwork, state_dir: pathlib.Path, rate_bps: float, max_bits: int) -> dict[str, KeyManager]:
    """The chain's key managers from `state_dir`, configured as at every start."""
    return start_chain(network, state_dir, max_bits, rate_bps, KeyLimits(max_key_age_s=MAX_AGE_S),
                       session_rate_bps=1e9, session_burst_bits=10**9)


def issue(kms, ledger: Ledger, master_km: str, number: int) -> None:
    master, slave = ENDS[master_km]
    slave_km = "D" if master_km == "A" else "A"
    for key in run(kms[master_km].enc_keys(master, slave, number)):
        assert key.key_id not in ledger.issued
        ledger.issued[key.key_id] = key.key
        ledger.pending[slave_km][key.key_id] = master


def fetch(kms, ledger: Ledger, slave_km: str) -> None:
    """dec_keys of every key issued for the SAE at `slave_km`; those refused are lost."""
    slave, master = ENDS[slave_km]
    while ledger.pending[slave_km]:
        ids = list(ledger.pending[slave_km])
        try:
            keys = kms[slave_km].dec_keys(slave, master, ids)
        except BadKeyRequest as refused:
            gone = {d["key_ID"] for d in refused.details}
            assert gone, refused.message
            for key_id in gone:
                ledger.lost.add(key_id)
                del ledger.pending[slave_km][key_id]
            continue
        for key in keys:
            assert key.key_id not in ledger.delivered, f"key {key.key_id} served twice"
            assert key.key == ledger.issued[key.key_id], f"key {key.key_id} differs at the two ends"
            ledger.delivered[key.key_id] = key.key
            del ledger.pending[slave_km][key.key_id]


class Writes:
    """StateStore.commit, counted; a Crash at write `at` (before or after it commits)."""

    def __init__(self, at: int | None = None, after_commit: bool = False) -> None:
        self.at, self.after_commit = at, after_commit
        self.count = 0
        self.fired = False
        self.original = StateStore.commit

    def commit(self, store, *args, **kwargs):
        self.count += 1
        hit = self.count == self.at
        if hit and not self.after_commit:
            self.fired = True
            raise Crash(f"before write {self.count} ({store.km_id})")
        result = self.original(store, *args, **kwargs)
        if hit:
            self.fired = True
            raise Crash(f"after write {self.count} ({store.km_id})")
        return result


def script(kms, ledger: Ledger, time: ManualTime):
    """The operations; each is one step a kill can interrupt."""
    def step(*calls):
        def run():
            time.t += 0.05
            for call in calls:
                call()
        return run
    return [
        step(lambda: issue(kms(), ledger, "A", 2)),
        step(lambda: issue(kms(), ledger, "D", 1)),
        step(lambda: fetch(kms(), ledger, "D")),
        step(lambda: run(kms()["C"].drain("bc", 800))),
        step(lambda: issue(kms(), ledger, "A", 3)),
        step(lambda: fetch(kms(), ledger, "A")),
        step(lambda: issue(kms(), ledger, "D", 2)),
        step(lambda: run(kms()["B"].flush("ab"))),
        step(lambda: None),  # the link refills (time passes)
        step(lambda: issue(kms(), ledger, "D", 1)),
        step(lambda: fetch(kms(), ledger, "D"), lambda: fetch(kms(), ledger, "A")),
        # carrying on after a kill: more keys both ways on every link, then everything fetched
        *[step(lambda: issue(kms(), ledger, "A", 2), lambda: issue(kms(), ledger, "D", 2)) for _ in range(2)],
        step(lambda: fetch(kms(), ledger, "A")),
        step(lambda: fetch(kms(), ledger, "D")),
    ]


class Chain:
    """The chain's key managers on one state dir, restarted from it after a crash."""

    def __init__(self, state_dir: pathlib.Path, ledger: Ledger, time: ManualTime, new_network: bool) -> None:
        self.state_dir, self.ledger, self.time, self.new_network = state_dir, ledger, time, new_network
        self.network = LedgerNetwork(Clock(source=time), ledger)
        self.kms = configure(self.network, state_dir, rate_bps=100_000.0, max_bits=1_000_000)

    def restart(self) -> None:
        for km_id in list(self.kms):
            self.network.unregister(km_id)  # its memory is gone; what it wrote stays
        self.kms = {}
        if self.new_network:  # the whole network restarts: link streams from the state files
            self.network = LedgerNetwork(Clock(source=self.time), self.ledger)
        self.kms = configure(self.network, self.state_dir, rate_bps=100_000.0, max_bits=1_000_000)


def run_with_crash(tmp_path: pathlib.Path, writes: Writes, new_network: bool) -> tuple[Ledger, Chain, bool]:
    ledger, time = Ledger(), ManualTime()
    crashed = False
    chain = None
    try:
        chain = Chain(tmp_path, ledger, time, new_network)
    except Crash:
        crashed = True
    if chain is None:  # killed while configuring: configure again from what is on disk
        chain = Chain(tmp_path, ledger, time, new_network)
    time.t += 1.0  # 100,000 bits on every link
    for step in script(lambda: chain.kms, ledger, time):
        try:
            step()
        except Crash:
            crashed = True
            chain.restart()
    fetch(chain.kms, ledger, "A")  # what a kill in the last fetches left
    fetch(chain.kms, ledger, "D")
    return ledger, chain, crashed


def check(ledger: Ledger, chain: Chain) -> dict:
    assert ledger.reused() == []
    assert set(ledger.issued) == set(ledger.delivered) | ledger.lost
    assert not set(ledger.delivered) & ledger.lost
    # what the slaves' key managers still hold: keys stored for a master SAE whose key manager
    # crashed before it answered (never issued: lost); they wait until they expire
    orphans = chain.kms["A"].stored_key_count + chain.kms["D"].stored_key_count
    chain.time.t += MAX_AGE_S
    assert chain.kms["A"].stored_key_count == chain.kms["D"].stored_key_count == 0
    return {"orphans": orphans, "lost": len(ledger.lost), "delivered": len(ledger.delivered)}


def test_without_a_crash_every_key_is_delivered(tmp_path):
    writes = Writes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StateStore, "commit", lambda store, *a, **kw: writes.commit(store, *a, **kw))
        ledger, chain, crashed = run_with_crash(tmp_path, writes, new_network=False)
    assert not crashed and check(ledger, chain) == {"orphans": 0, "lost": 0, "delivered": 17}
    assert writes.count >= 40


def _state_dir(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    """On tmpfs when there is one: the same code, without waiting for a disk's fsync."""
    shm = pathlib.Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        directory = shm / f"qstrata-crash-{os.getpid()}-{tmp_path.name}" / name
    else:
        directory = tmp_path / name
    directory.mkdir(parents=True)
    return directory


@pytest.mark.parametrize("new_network", [False, True], ids=["km-restart", "network-restart"])
def test_a_kill_at_any_write_of_any_key_manager_never_reuses_a_pad_nor_serves_a_key_twice(tmp_path, new_network):
    counting = Writes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StateStore, "commit", lambda store, *a, **kw: counting.commit(store, *a, **kw))
        run_with_crash(_state_dir(tmp_path, "count"), counting, new_network)
    totals = {"runs": 0, "orphans": 0, "lost": 0, "delivered": 0}
    try:
        for at in range(1, counting.count + 1):
            for after_commit in (False, True):
                writes = Writes(at, after_commit)
                state_dir = _state_dir(tmp_path, f"{at}-{after_commit}")
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(StateStore, "commit", lambda store, *a, **kw: writes.commit(store, *a, **kw))
                    ledger, chain, crashed = run_with_crash(state_dir, writes, new_network)
                assert crashed and writes.fired, (at, after_commit)
                try:
                    outcome = check(ledger, chain)
                except AssertionError as error:
                    raise AssertionError(f"kill {'after' if after_commit else 'before'} write {at}: {error}") from None
                totals["runs"] += 1
                for name, value in outcome.items():
                    totals[name] += value
    finally:
        base = pathlib.Path("/dev/shm") / f"qstrata-crash-{os.getpid()}-{tmp_path.name}"
        if base.is_dir():
            import shutil
            shutil.rmtree(base)
    print(f"\n{'new network' if new_network else 'key managers'} restarted: {counting.count} write points x "
          f"(before, after commit) = {totals['runs']} kills; keys delivered {totals['delivered']}, "
          f"lost {totals['lost']} (issued, refused after the kill), orphaned {totals['orphans']} "
          f"(stored, never issued: expired)")
    assert totals["runs"] == 2 * counting.count and totals["lost"] + totals["orphans"] > 0


def test_the_ledger_catches_a_pad_used_twice():
    ledger = Ledger()
    ledger.used("ab", 0, 256, "A")
    ledger.used("ab", 256, 256, "B")
    assert ledger.reused() == []
    ledger.used("ab", 384, 64, "A")
    assert ledger.reused() == ["link ab: [256, 512) by B and [384, 448) by A"]


# -- real kills ------------------------------------------------------------------------------

KILLS = 10
SEED = 20240613


class LoggingPeers(InMemoryPeers):
    """The child's KM-to-KM channel: each use of a link's key for encryption is logged
    (fsync'd) before the message goes to its receiver."""

    def __init__(self, network: KeyNetwork, log) -> None:
        super().__init__(network)
        self.log = log

    async def send(self, sender, km_id, message):
        if isinstance(message, RelayMessage):
            self.log(f"P {message.link_id} {sender} {message.offset} {8 * sum(map(len, message.ciphertexts))}")
        return await super().send(sender, km_id, message)


class LoggingNetwork(KeyNetwork):
    def __init__(self, clock: Clock, log) -> None:
        super().__init__(clock)
        self.peers = LoggingPeers(self, log)


def _digest(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:32]


def child(state_dir: str, log_path: str, seed: str, ops: str | None = None) -> int:
    """Issue and fetch keys over the chain until killed (or `ops` operations are done)."""
    rng = random.Random(int(seed))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(*lines: str) -> None:
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
        os.fsync(fd)

    pending: dict[str, dict[str, None]] = {"A": {}, "D": {}}  # slave's km -> key IDs, from the log
    if os.path.exists(log_path):
        for line in pathlib.Path(log_path).read_text().splitlines():
            kind, *rest = line.split()
            if kind == "E" and len(rest) == 3:
                pending[rest[0]][rest[1]] = None
            elif kind in ("D", "L") and rest:
                for waiting in pending.values():
                    waiting.pop(rest[0], None)
    network = LoggingNetwork(Clock(), log)
    kms = configure(network, pathlib.Path(state_dir), rate_bps=2_000_000.0, max_bits=4_000_000)
    print("ready", flush=True)
    done = 0
    while ops is None or done < int(ops):
        done += 1
        roll = rng.random()
        try:
            if roll < 0.45:
                master_km = rng.choice("AD")
                slave_km = "D" if master_km == "A" else "A"
                master, slave = ENDS[master_km]
                keys = run(kms[master_km].enc_keys(master, slave, rng.randint(1, 4)))
                log(*(f"E {slave_km} {k.key_id} {_digest(k.key)}" for k in keys))
                pending[slave_km].update(dict.fromkeys(k.key_id for k in keys))
            elif roll < 0.95:
                slave_km = rng.choice("AD")
                ids = list(pending[slave_km])[:4]
                if not ids:
                    continue
                slave, master = ENDS[slave_km]
                try:
                    keys = kms[slave_km].dec_keys(slave, master, ids)
                except BadKeyRequest as refused:
                    gone = [d["key_ID"] for d in refused.details]
                    log(*(f"L {key_id}" for key_id in gone))
                    for key_id in gone:
                        pending[slave_km].pop(key_id, None)
                    continue
                log(*(f"D {k.key_id} {_digest(k.key)}" for k in keys))
                for k in keys:
                    del pending[slave_km][k.key_id]
            else:
                link = rng.choice(list(LINKS))
                run(kms[rng.choice(LINKS[link])].drain(link, 512))
        except KeyUnavailable:
            wall.sleep(0.002)  # pools refill (after a restart the streams resume from the state files)
    return 0


def _start_child(state_dir: pathlib.Path, log: pathlib.Path, seed: int, ops: int | None = None) -> subprocess.Popen:
    command = [sys.executable, __file__, "child", str(state_dir), str(log), str(seed)] + ([str(ops)] if ops else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    with selectors.DefaultSelector() as selector:  # epoll: select() refuses descriptors over 1023
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        raise AssertionError(f"the child did not start: {proc.stderr.read().decode()[-3000:]}")


def _persisted(state_dir: pathlib.Path) -> tuple[dict, dict]:
    """Pool tails and stored key IDs in every key manager's database."""
    tails, stored = {}, {}
    for name in "ABCD":
        with sqlite3.connect(state_dir / f"{name}.db") as db:
            tails[name] = dict(db.execute("SELECT link_id, tail FROM pools"))
            stored[name] = {r[0] for r in db.execute("SELECT key_id FROM keys")}
    return tails, stored


def test_sigkill_at_random_moments_never_reuses_a_pad_nor_serves_a_key_twice(tmp_path):
    rng = random.Random(SEED)
    state_dir, log = tmp_path / "state", tmp_path / "log"
    started = wall.monotonic()
    for kill in range(KILLS):
        proc = _start_child(state_dir, log, SEED + kill)
        try:
            _wait_ready(proc)
            wall.sleep(rng.uniform(0.05, 0.6))
            if proc.poll() is not None:
                raise AssertionError(f"the child stopped by itself ({proc.returncode}): "
                                     f"{proc.stderr.read().decode()[-3000:]}")
        finally:  # whatever happens, the child (which runs until killed) does not outlive the test
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
    proc = _start_child(state_dir, log, SEED + KILLS, ops=60)  # after the last kill it carries on
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]

    pads: dict[str, list[tuple[int, int, str]]] = {}
    issued, delivered, lost, torn = {}, {}, set(), 0
    for line in log.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "P" and len(rest) == 4:
            pads.setdefault(rest[0], []).append((int(rest[2]), int(rest[3]), rest[1]))
        elif kind == "E" and len(rest) == 3:
            assert rest[1] not in issued
            issued[rest[1]] = rest[2]
        elif kind == "D" and len(rest) == 2:
            assert rest[0] not in delivered, f"key {rest[0]} served twice"
            assert issued.get(rest[0]) == rest[1], f"key {rest[0]} differs at the two ends"
            delivered[rest[0]] = rest[1]
        elif kind == "L" and len(rest) == 1:
            lost.add(rest[0])
        else:
            torn += 1
    assert overlaps(pads) == []
    assert not set(delivered) & lost and lost <= set(issued)
    tails, stored = _persisted(state_dir)
    for link, uses in pads.items():  # written ahead: every use is below its sender's tail on disk
        for offset, bits, sender in uses:
            assert tails[sender][link] >= offset + bits, (link, sender, offset, bits, tails[sender])
    waiting = stored["A"] | stored["D"]
    assert not waiting & set(delivered)  # a delivered key is gone from disk
    assert not stored["B"] and not stored["C"]
    orphans = waiting - set(issued)
    elapsed = wall.monotonic() - started
    print(f"\n{KILLS} SIGKILLs in {elapsed:.1f} s: {sum(map(len, pads.values()))} pad uses on {len(pads)} links, "
          f"none twice; keys issued {len(issued)}, delivered {len(delivered)}, lost {len(lost)}, waiting "
          f"{len(waiting & set(issued))}, orphaned {len(orphans)}; torn log lines {torn}")
    assert len(delivered) > 0 and sum(map(len, pads.values())) > 3 * KILLS


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        sys.exit(child(*sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} child STATE_DIR LOG SEED [OPS]")
