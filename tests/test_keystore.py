"""Key-manager core: pools in step, hop-by-hop relay, ETSI 014 semantics, persistence
(SQLite, written ahead of every use of a link's key), expiry and caps of undelivered keys."""
import asyncio
import base64
import contextlib
import json
import sqlite3
import stat
import time as wall

import pytest

from devices.keystore import (BadKeyRequest, DiscardMessage, InMemoryPeers, Key, KeyLimits, KeyManager, KeyNetwork,
                              KeyStateError, KeyUnavailable, PeerRefused, RelayMessage, UnknownSAE)
from devices.twin import Clock

LINKS = {"ab": ("A", "B"), "bc": ("B", "C"), "cd": ("C", "D")}


class ManualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    """Drive one coroutine of the key managers to its end (in process, they wait on nothing else)."""
    return asyncio.run(coro)


class RecordingPeers(InMemoryPeers):
    """The in-memory KM-to-KM channel, keeping a copy of what crosses it (relays and discards)."""

    def __init__(self, network: KeyNetwork) -> None:
        super().__init__(network)
        self.messages: list[tuple[str, object]] = []

    async def send(self, sender, km_id, message):
        if isinstance(message, (RelayMessage, DiscardMessage)):
            self.messages.append((km_id, message))
        return await super().send(sender, km_id, message)


class RecordingNetwork(KeyNetwork):
    """The real in-process network, with a recording channel for the chain's key managers."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.peers = RecordingPeers(self)

    @property
    def messages(self) -> list[tuple[str, object]]:
        return self.peers.messages


def start_chain(network, state_dir=None, max_bits=1_000_000, rate_bps=100_000.0, limits=KeyLimits(),
                session_rate_bps=1e6, session_burst_bits=100_000):
    """A - B - C - D over links ab, bc, cd; SAE sa at A, sd at D; a session each way.
    Configuration is not persisted, so a restarted key manager gets it again from here."""
    kms = {name: KeyManager(name, network, state_dir, limits, getattr(network, "peers", None)) for name in "ABCD"}
    for link, (x, y) in LINKS.items():
        kms[x].add_link(link, y, max_bits)
        kms[y].add_link(link, x, max_bits)
        network.stream(link).set_rate(rate_bps)
    for here, towards_d, towards_a in (("A", ("B", "ab"), None), ("B", ("C", "bc"), ("A", "ab")),
                                       ("C", ("D", "cd"), ("B", "bc")), ("D", None, ("C", "cd"))):
        if towards_d:
            kms[here].set_route("D", *towards_d)
        if towards_a:
            kms[here].set_route("A", *towards_a)
    kms["A"].attach_sae("sa")
    kms["D"].attach_sae("sd")
    kms["A"].open_session("sa", "sd", rate_bps=session_rate_bps, burst_bits=session_burst_bits, peer_km="D")
    kms["D"].open_session("sd", "sa", rate_bps=session_rate_bps, burst_bits=session_burst_bits, peer_km="A")
    return kms


@pytest.fixture
def time():
    return ManualTime()


@pytest.fixture
def network(time):
    return RecordingNetwork(Clock(source=time))


@pytest.fixture
def kms(network, time):
    kms = start_chain(network)
    time.t += 1.0  # 100,000 bits on every link
    return kms


def tails(kms):
    return {(link, end): kms[end].pools[link].tail for link, ends in LINKS.items() for end in ends}


def test_pools_fill_at_the_link_rate_on_emulated_time_and_stop_at_their_cap(network, time):
    a = KeyManager("A", network)
    b = KeyManager("B", network)
    a.add_link("ab", "B", max_bits=16_000)
    b.add_link("ab", "A", max_bits=16_000)
    network.stream("ab").set_rate(1000.0)
    assert a.pools["ab"].available_bits() == 0
    time.t += 10.0
    assert a.pools["ab"].available_bits() == b.pools["ab"].available_bits() == 10_000
    time.t += 2.5
    assert a.pools["ab"].available_bits() == 12_496  # whole bytes only
    network.stream("ab").set_rate(0.0)  # link down: the pool keeps what it has
    time.t += 100.0
    assert a.pools["ab"].available_bits() == 12_496
    network.stream("ab").set_rate(1000.0)
    time.t += 100.0
    assert a.pools["ab"].available_bits() == 16_000


def test_keys_cross_three_hops_and_both_ends_of_every_link_stay_in_step(kms, network):
    keys = run(kms["A"].enc_keys("sa", "sd", number=3, size=256))
    assert len({k.key_id for k in keys}) == 3 and all(len(k.key) == 32 for k in keys)
    for link, ends in LINKS.items():
        pools = [kms[end].pools[link] for end in ends]
        assert [p.consumed_bits for p in pools] == [768, 768]
        assert pools[0].tail == pools[1].tail == 768
    assert kms["B"].stored_key_count == kms["C"].stored_key_count == 0
    assert kms["D"].stored_key_count == 3
    assert (kms["B"].stats.keys_relayed, kms["C"].stats.keys_relayed) == (3, 3)

    # The classical channel carried one message per hop, holding one-time-pad ciphertext only.
    relayed = [m for _, m in network.messages if isinstance(m, RelayMessage)]
    assert [(m.link_id, m.offset) for m in relayed] == [("ab", 0), ("bc", 0), ("cd", 0)]
    for message in relayed:
        pad = network.stream(message.link_id).bits(message.offset, 768)
        for i, (key, ciphertext) in enumerate(zip(keys, message.ciphertexts)):
            assert ciphertext != key.key
            assert bytes(x ^ y for x, y in zip(ciphertext, pad[32 * i:32 * i + 32])) == key.key

    got = kms["D"].dec_keys("sd", "sa", [k.key_id for k in reversed(keys)])
    assert got == list(reversed(keys))
    assert kms["D"].stored_key_count == 0
    assert (kms["A"].stats.keys_served, kms["D"].stats.keys_delivered) == (3, 3)


def test_a_key_is_delivered_once(kms):
    key = run(kms["A"].enc_keys("sa", "sd"))[0]
    with pytest.raises(BadKeyRequest) as wrong_master:
        kms["D"].dec_keys("sd", "someone-else", [key.key_id])
    assert "unknown, expired or already delivered" in wrong_master.value.details[0]["reason"]
    assert kms["D"].dec_keys("sd", "sa", [key.key_id]) == [key]
    with pytest.raises(BadKeyRequest, match="1 of 1 key_IDs cannot be delivered") as again:
        kms["D"].dec_keys("sd", "sa", [key.key_id])
    assert again.value.details == [{"key_ID": key.key_id, "reason": "no key with this ID for SAE sd from "
                                                                     "SAE sa (unknown, expired or already delivered)"}]
    assert again.value.http_status == 400


def test_dec_keys_is_all_or_nothing(kms):
    first, second = run(kms["A"].enc_keys("sa", "sd", number=2))
    with pytest.raises(BadKeyRequest, match="listed twice"):
        kms["D"].dec_keys("sd", "sa", [first.key_id, first.key_id])
    with pytest.raises(BadKeyRequest, match="1 of 2 key_IDs"):
        kms["D"].dec_keys("sd", "sa", [second.key_id, "00000000-0000-0000-0000-000000000000"])
    assert kms["D"].dec_keys("sd", "sa", [first.key_id, second.key_id]) == [first, second]


def test_not_enough_key_on_a_middle_hop_consumes_nothing_anywhere(kms, network):
    run(kms["B"].drain("bc", 100_000 - 512))  # 512 bits left on bc, at both B and C
    before = tails(kms)
    tokens = kms["A"].sessions[("sa", "sd")].bucket.available()
    sent = len(network.messages)
    with pytest.raises(KeyUnavailable, match=r"not enough key on link bc \(B -> C\): 512 bits, 768 needed") as error:
        run(kms["A"].enc_keys("sa", "sd", number=3, size=256))
    assert error.value.http_status == 503
    assert error.value.details == [{"link": "bc", "available_bits": 512, "needed_bits": 768}]
    assert tails(kms) == before
    assert kms["A"].sessions[("sa", "sd")].bucket.available() == tokens
    assert len(network.messages) == sent and kms["D"].stored_key_count == 0
    assert len(run(kms["A"].enc_keys("sa", "sd", number=2, size=256))) == 2  # what fits is served


def test_token_bucket_limits_the_session_rate(kms, time):
    kms["A"].open_session("sa", "sd", rate_bps=1000.0, burst_bits=1024, peer_km="D")
    run(kms["A"].enc_keys("sa", "sd", number=4, size=256))
    before = tails(kms)
    with pytest.raises(KeyUnavailable, match="session rate exceeded: 0 bits left in the bucket, 256 requested"):
        run(kms["A"].enc_keys("sa", "sd", number=1, size=256))
    assert tails(kms) == before
    time.t += 0.256  # 256 bits of tokens come back
    assert len(run(kms["A"].enc_keys("sa", "sd", number=1, size=256))) == 1
    with pytest.raises(KeyUnavailable, match="2048 requested"):
        run(kms["A"].enc_keys("sa", "sd", number=8, size=256))  # more than the burst: never served


def test_unreachable_key_manager_or_missing_route_is_503_with_nothing_consumed(kms, network):
    before = tails(kms)
    network.unregister("C")
    with pytest.raises(KeyUnavailable, match="key manager C is unreachable"):
        run(kms["A"].enc_keys("sa", "sd"))
    kms["B"].remove_route("D")
    with pytest.raises(KeyUnavailable, match="key manager B has no route to key manager D"):
        run(kms["A"].enc_keys("sa", "sd"))
    assert tails(kms) == before


def test_routing_loop_is_detected(kms):
    kms["B"].set_route("D", "A", "ab")
    with pytest.raises(KeyUnavailable, match="routing loop towards key manager D: A -> B -> A"):
        run(kms["A"].enc_keys("sa", "sd"))


@pytest.mark.parametrize("master, slave, number, size, error, message", [
    ("sa", "sd", 0, 256, BadKeyRequest, "number must be an integer from 1 to 128, got 0"),
    ("sa", "sd", 129, 256, BadKeyRequest, "number must be an integer from 1 to 128"),
    ("sa", "sd", True, 256, BadKeyRequest, "number must be an integer"),
    ("sa", "sd", 1, 100, BadKeyRequest, "size must be a multiple of 8 from 64 to 8192 bits, got 100"),
    ("sa", "sd", 1, 16384, BadKeyRequest, "size must be a multiple of 8"),
    ("sx", "sd", 1, 256, UnknownSAE, "SAE sx is not served by key manager A"),
    ("sa", "sx", 1, 256, UnknownSAE, "SAE sa has no key session with SAE sx"),
])
def test_bad_requests_are_refused_before_anything_is_consumed(kms, master, slave, number, size, error, message):
    before = tails(kms)
    with pytest.raises(error, match=message):
        run(kms["A"].enc_keys(master, slave, number, size))
    assert tails(kms) == before


def test_status_counts_what_the_whole_path_can_deliver(kms):
    run(kms["C"].drain("cd", 100_000 - 2560))
    status = run(kms["A"].status("sa", "sd"))
    assert (status.source_km, status.target_km, status.key_size) == ("A", "D", 256)
    assert status.stored_key_count == 10  # the weakest hop, cd, holds 2560 bits
    assert status.max_key_count == 100_000 // 256  # the session's burst is smaller than the pools
    assert (status.max_key_per_request, status.min_key_size, status.max_key_size) == (128, 64, 8192)
    with pytest.raises(UnknownSAE):
        run(kms["A"].status("sd", "sa"))


def test_drain_and_flush_act_on_both_ends(kms, network):
    run(kms["A"].drain("ab", 40_000))
    assert kms["A"].pools["ab"].available_bits() == kms["B"].pools["ab"].available_bits() == 60_000
    assert network.messages[-1] == ("B", DiscardMessage("ab", 0, 40_000))
    run(kms["B"].flush("ab"))
    assert kms["A"].pools["ab"].available_bits() == kms["B"].pools["ab"].available_bits() == 0
    with pytest.raises(KeyUnavailable, match="not enough key on link ab"):
        run(kms["A"].enc_keys("sa", "sd"))
    with pytest.raises(ValueError, match="positive multiple of 8"):
        run(kms["A"].drain("ab", 7))


def test_drain_while_the_peer_is_down_is_caught_up_by_offsets(kms, network):
    network.unregister("B")
    run(kms["A"].drain("ab", 50_000))  # B never hears of it
    network.register(kms["B"])
    assert kms["B"].pools["ab"].tail == 0
    run(kms["A"].enc_keys("sa", "sd"))
    assert kms["A"].pools["ab"].tail == kms["B"].pools["ab"].tail == 50_256


def test_a_full_pool_drops_its_oldest_bits_and_the_ends_still_agree(network, time):
    kms = start_chain(network, max_bits=4096)
    time.t += 10.0  # a million bits produced, 4096 kept
    assert kms["A"].pools["ab"].available_bits() == 4096
    key = run(kms["A"].enc_keys("sa", "sd", size=1024))[0]
    assert kms["D"].dec_keys("sd", "sa", [key.key_id]) == [key]
    assert kms["A"].pools["ab"].available_bits() == kms["B"].pools["ab"].available_bits() == 3072


def test_sessions_between_saes_of_one_key_manager_need_no_link(network):
    a = KeyManager("A", network)
    a.attach_sae("s1")
    a.attach_sae("s2")
    a.open_session("s1", "s2", rate_bps=1000, burst_bits=512, peer_km="A")
    keys = run(a.enc_keys("s1", "s2", number=2))
    assert a.dec_keys("s2", "s1", [k.key_id for k in keys]) == keys
    assert run(a.status("s1", "s2")).stored_key_count == 0  # the bucket is empty now


def test_configuration_mistakes_are_refused(kms, network):
    with pytest.raises(ValueError, match="link 'ab' goes to 'B', not to next hop 'C'"):
        kms["A"].set_route("D", "C", "ab")
    with pytest.raises(ValueError, match="key manager A has no pool for link 'xy'"):
        kms["A"].set_route("D", "B", "xy")
    with pytest.raises(ValueError, match="key manager 'A' is already running"):
        KeyManager("A", network)
    with pytest.raises(ValueError, match="token bucket needs rate >= 0 and burst > 0"):
        kms["A"].open_session("sa", "sd", rate_bps=10, burst_bits=0, peer_km="D")


def test_key_bytes_stay_out_of_reprs(kms):
    key = run(kms["A"].enc_keys("sa", "sd"))[0]
    assert key.key.hex() not in repr(key) and str(key.key) not in repr(key)
    assert repr(Key("id", b"\x01\x02")) == "Key(key_id='id')"


def test_crashed_key_manager_comes_back_with_its_pools_and_undelivered_keys(network, time, tmp_path):
    kms = start_chain(network, state_dir=tmp_path)
    time.t += 1.0
    keys = run(kms["A"].enc_keys("sa", "sd", number=2))
    for name in ("D.db", "D.db-wal", "D.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.json*")) and not list(tmp_path.glob("*.tmp"))
    tail_before = kms["D"].pools["cd"].tail

    network.unregister("D")  # crash: the object and its memory are gone
    del kms["D"]
    with pytest.raises(KeyUnavailable, match="key manager D is unreachable"):
        run(kms["A"].enc_keys("sa", "sd"))
    d = KeyManager("D", network, tmp_path)
    assert d.pools["cd"].tail == tail_before and d.stored_key_count == 2
    d.attach_sae("sd")
    d.set_route("A", "C", "cd")
    assert d.dec_keys("sd", "sa", [k.key_id for k in keys]) == keys
    more = run(kms["A"].enc_keys("sa", "sd"))
    assert d.dec_keys("sd", "sa", [more[0].key_id]) == more


def test_whole_network_restarts_from_disk_with_the_same_link_keys(tmp_path):
    time = ManualTime()
    first = start_chain(KeyNetwork(Clock(source=time)), state_dir=tmp_path)
    time.t += 1.0
    pending = run(first["A"].enc_keys("sa", "sd"))
    run(first["A"].enc_keys("sa", "sd"))
    pad = first["B"].pools["bc"].stream.bits(0, 4096)

    again = KeyNetwork(Clock(source=ManualTime()))
    kms = start_chain(again, state_dir=tmp_path, rate_bps=0.0)
    assert again.stream("bc").bits(0, 4096) == pad
    assert kms["B"].pools["bc"].tail == kms["C"].pools["bc"].tail == 512
    assert kms["B"].pools["bc"].available_bits() == 100_000 - 512
    assert kms["D"].dec_keys("sd", "sa", [pending[0].key_id]) == pending
    fresh = run(kms["A"].enc_keys("sa", "sd"))
    assert kms["D"].dec_keys("sd", "sa", [fresh[0].key_id]) == fresh


def test_undelivered_keys_are_rows_of_the_state_database(network, time, tmp_path):
    kms = start_chain(network, state_dir=tmp_path)
    time.t += 1.0
    key = run(kms["A"].enc_keys("sa", "sd"))[0]
    with sqlite3.connect(tmp_path / "D.db") as db:
        assert db.execute("SELECT key_id, master_sae, slave_sae, key FROM keys").fetchall() == \
            [(key.key_id, "sa", "sd", key.key)]
        assert db.execute("SELECT tail FROM pools WHERE link_id = 'cd'").fetchone() == (256,)
    kms["D"].dec_keys("sd", "sa", [key.key_id])
    with sqlite3.connect(tmp_path / "D.db") as db:
        assert db.execute("SELECT COUNT(*) FROM keys").fetchone() == (0,)


# -- write ahead: a link's key is on disk as used before any ciphertext under it leaves --------

def test_every_key_manager_writes_its_tails_before_it_sends_and_receivers_before_they_pass_on(time, tmp_path):
    seen = []

    class Watching(InMemoryPeers):
        async def send(self, sender, km_id, message):
            if isinstance(message, (RelayMessage, DiscardMessage)):
                with sqlite3.connect(tmp_path / f"{sender}.db") as db:  # what a crash right now would leave
                    tails = dict(db.execute("SELECT link_id, tail FROM pools"))
                seen.append((sender, message.link_id, message.offset, tails))
            return await super().send(sender, km_id, message)

    network = KeyNetwork(Clock(source=time))
    network.peers = Watching(network)
    kms = start_chain(network, state_dir=tmp_path)
    time.t += 1.0
    run(kms["A"].enc_keys("sa", "sd", number=2))
    assert seen == [("A", "ab", 0, {"ab": 512}), ("B", "bc", 0, {"ab": 512, "bc": 512}),
                    ("C", "cd", 0, {"bc": 512, "cd": 512})]
    with sqlite3.connect(tmp_path / "D.db") as db:
        assert dict(db.execute("SELECT link_id, tail FROM pools")) == {"cd": 512}
        assert db.execute("SELECT COUNT(*) FROM keys").fetchone() == (2,)
    seen.clear()
    run(kms["C"].drain("bc", 800))
    assert seen == [("C", "bc", 512, {"bc": 1312, "cd": 512})]


def test_a_receiver_refuses_bits_it_already_used(kms, network):
    run(kms["A"].enc_keys("sa", "sd"))
    replay = next(m for _, m in network.messages if isinstance(m, RelayMessage) and m.link_id == "bc")
    with pytest.raises(KeyUnavailable, match=r"link bc: bits \[0, 256\) are not in the pool"):
        run(kms["C"].handle("B", replay))
    assert kms["D"].stored_key_count == 1
    before = tails(kms)
    fresh = RelayMessage("bc", kms["C"].pools["bc"].tail, "D", "sa", "sd", ("k",), (b"x" * 32,))
    with pytest.raises(PeerRefused, match="key manager C takes messages on link bc only from key manager B, not from D"):
        run(kms["C"].handle("D", fresh))  # only the link's peer may use it
    assert tails(kms) == before


def test_a_peer_that_fell_behind_is_caught_up_by_the_senders_tail(kms, network):
    """A crash can leave the receiver of a link behind its sender: the next use of the link,
    from either end, starts after the larger tail."""
    run(kms["A"].enc_keys("sa", "sd"))
    kms["B"].pools["ab"].tail = 0  # as if B had crashed before writing what it received
    kms["B"].pools["bc"].tail = 0
    run(kms["D"].enc_keys("sd", "sa"))  # B sends on ab towards A, C... towards B on bc
    relayed = [(m.link_id, m.offset) for _, m in network.messages if isinstance(m, RelayMessage)]
    assert relayed[3:] == [("cd", 256), ("bc", 256), ("ab", 256)]


def test_a_pool_removed_and_added_again_resumes_its_tail(kms, network, time, tmp_path):
    run(kms["A"].enc_keys("sa", "sd", number=4))
    for end in ("A", "B"):
        kms[end].remove_link("ab")
    kms["A"].add_link("ab", "B")
    kms["B"].add_link("ab", "A")
    kms["A"].set_route("D", "B", "ab")
    assert kms["A"].pools["ab"].tail == kms["B"].pools["ab"].tail == 1024
    assert kms["A"].pools["ab"].consumed_bits == 0  # a new pool: its own counters
    run(kms["A"].enc_keys("sa", "sd"))
    assert [m.offset for _, m in network.messages if isinstance(m, RelayMessage) and m.link_id == "ab"] == [0, 1024]


def test_a_pool_added_again_while_its_stream_waits_for_the_twin_keeps_its_tail(kms, network, time, tmp_path):
    """Re-added before the twin service has bound the link's stream (its secret not known
    yet), a pool keeps the tail it had: the stream may bind to the same secret, whose used
    bits must not be offered again."""
    run(kms["A"].enc_keys("sa", "sd", number=4))
    real = network.stream("ab")
    kms["A"].remove_link("ab")
    network.remove_stream("ab")
    waiting = network.stream("ab")
    waiting.bound = False  # as the twin service's client hands it out, until it binds
    kms["A"].add_link("ab", "B")
    assert kms["A"].pools["ab"].tail == 1024
    waiting.bind(bytes.fromhex(real.snapshot()["secret"]), real.history())
    assert kms["A"].pools["ab"].stream.bits(1024, 256) == real.bits(1024, 256)


# -- undelivered keys: expiry, cap, what Status counts ---------------------------------------

def test_undelivered_keys_expire_after_their_max_age(network, time, tmp_path):
    kms = start_chain(network, state_dir=tmp_path, limits=KeyLimits(max_key_age_s=60.0))
    time.t += 1.0
    old = run(kms["A"].enc_keys("sa", "sd", number=2))
    time.t += 30.0
    young = run(kms["A"].enc_keys("sa", "sd"))
    assert kms["D"].stored_key_count == 3
    time.t += 30.0  # the first two are 60 s old
    assert kms["D"].stored_key_count == 1 and kms["D"].stats.keys_expired == 2
    with pytest.raises(BadKeyRequest, match="unknown, expired or already delivered"):
        kms["D"].dec_keys("sd", "sa", [old[0].key_id])
    network.unregister("D")  # the ages are on disk
    d = KeyManager("D", network, tmp_path, KeyLimits(max_key_age_s=60.0))
    d.attach_sae("sd")
    assert d.stored_key_count == 1
    time.t += 29.0
    assert d.dec_keys("sd", "sa", [young[0].key_id]) == young
    with sqlite3.connect(tmp_path / "D.db") as db:
        assert db.execute("SELECT COUNT(*) FROM keys").fetchone() == (0,)


def test_a_whole_network_restarted_keeps_the_ages_of_waiting_keys(tmp_path):
    time, limits = ManualTime(), KeyLimits(max_key_age_s=60.0)
    kms = start_chain(KeyNetwork(Clock(source=time)), state_dir=tmp_path, limits=limits)
    time.t += 10.0
    older = run(kms["A"].enc_keys("sa", "sd"))
    time.t += 30.0
    newer = run(kms["A"].enc_keys("sa", "sd"))
    time.t += 1000.0  # the network stops: its clock goes with it
    again = KeyNetwork(Clock(source=time))  # from 0
    d = start_chain(again, state_dir=tmp_path, limits=limits)["D"]
    time.t += 29.0
    assert d.stored_key_count == 2
    time.t += 1.0  # 30 s + 30 s since the older one arrived
    assert d.stored_key_count == 1 and d.dec_keys("sd", "sa", [newer[0].key_id]) == newer
    with pytest.raises(BadKeyRequest, match="expired"):
        d.dec_keys("sd", "sa", [older[0].key_id])


def test_keys_waiting_per_sae_pair_are_capped_and_enc_keys_beyond_is_503_consuming_nothing(network, time):
    kms = start_chain(network, limits=KeyLimits(max_stored_keys=4))
    time.t += 1.0
    first = run(kms["A"].enc_keys("sa", "sd", number=3))
    status = run(kms["A"].status("sa", "sd"))
    assert (status.stored_key_count, status.max_key_count) == (1, 4)  # room for one more at D
    before, tokens = tails(kms), kms["A"].sessions[("sa", "sd")].bucket.available()
    with pytest.raises(KeyUnavailable, match="key manager D holds 3 undelivered keys from SAE sa for SAE sd "
                                             r"\(at most 4\): SAE sd must fetch keys") as refused:
        run(kms["A"].enc_keys("sa", "sd", number=2))
    assert refused.value.http_status == 503
    assert refused.value.details == [{"km": "D", "stored_keys": 3, "max_stored_keys": 4, "requested_keys": 2}]
    assert tails(kms) == before and kms["A"].sessions[("sa", "sd")].bucket.available() == tokens
    assert kms["D"].waiting_keys("sa", "sd") == 3 and kms["D"].waiting_keys("sd", "sa") == 0
    kms["D"].dec_keys("sd", "sa", [k.key_id for k in first[:2]])
    assert run(kms["A"].status("sa", "sd")).stored_key_count == 3
    assert len(run(kms["A"].enc_keys("sa", "sd", number=3))) == 3
    assert kms["D"].stored_key_count == 4 and run(kms["A"].status("sa", "sd")).stored_key_count == 0
    assert len(run(kms["D"].enc_keys("sd", "sa", number=4))) == 4  # the other direction has its own cap


@pytest.mark.parametrize("limits, message", [
    (dict(max_stored_keys=0), "max_stored_keys must be a positive integer"),
    (dict(max_key_age_s=0), "max_key_age_s must be > 0"),
    (dict(max_key_per_request=True), "max_key_per_request must be a positive integer"),
])
def test_key_limits_are_checked(limits, message):
    with pytest.raises(ValueError, match=message):
        KeyLimits(**limits)


# -- dec_keys: bounded, linear --------------------------------------------------------------

def test_dec_keys_takes_at_most_max_key_per_request_ids(kms):
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(129)]
    with pytest.raises(BadKeyRequest, match="at most 128 key_IDs per request, got 129") as refused:
        kms["D"].dec_keys("sd", "sa", ids)
    assert refused.value.details == [{"max_key_per_request": 128, "key_IDs": 129}]


def test_dec_keys_checks_18000_ids_in_linear_time_with_a_bounded_message(network, time):
    kms = start_chain(network, limits=KeyLimits(max_key_per_request=20_000))
    time.t += 1.0
    key = run(kms["A"].enc_keys("sa", "sd"))[0]
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(17_999)] + [key.key_id, key.key_id]
    started = wall.perf_counter()
    with pytest.raises(BadKeyRequest) as refused:
        kms["D"].dec_keys("sd", "sa", ids)
    assert wall.perf_counter() - started < 2.0  # a quadratic check took 10 s
    assert refused.value.message.startswith("18000 of 18001 key_IDs cannot be delivered: 00000000-0000-4000-8000-"
                                            "000000000000: no key with this ID")
    assert refused.value.message.endswith("; and 17995 more") and len(refused.value.message) < 1500
    assert refused.value.details[-1] == {"key_ID": key.key_id, "reason": "listed twice"}
    assert kms["D"].dec_keys("sd", "sa", [key.key_id]) == [key]


def test_each_operation_writes_only_what_it_changed(network, time, tmp_path):
    """One small transaction per operation, whatever is stored: not a rewrite of the state."""
    kms = start_chain(network, state_dir=tmp_path, limits=KeyLimits(max_stored_keys=10_000))
    time.t += 1.0
    for _ in range(40):
        run(kms["A"].enc_keys("sa", "sd", number=100, size=64))  # 4,000 keys waiting at D
        time.t += 1.0
    statements = []
    kms["D"].store._db.set_trace_callback(statements.append)
    keys = run(kms["A"].enc_keys("sa", "sd", number=2))
    kms["D"].dec_keys("sd", "sa", [k.key_id for k in keys])
    writes = [s for s in statements if s.split()[0] in ("INSERT", "DELETE", "UPDATE", "BEGIN", "COMMIT")]
    assert [s.split("(")[0].split(" VALUES")[0].strip() for s in writes] == [
        "BEGIN IMMEDIATE", "INSERT OR REPLACE INTO pools", "INSERT INTO keys", "INSERT INTO keys", "COMMIT",
        "BEGIN IMMEDIATE", "DELETE FROM keys WHERE key_id = '" + keys[0].key_id + "'",
        "DELETE FROM keys WHERE key_id = '" + keys[1].key_id + "'", "COMMIT"]
    assert kms["D"].stored_key_count == 4_000


# -- damaged, foreign and former state files -------------------------------------------------

def _damage(tmp_path, how):
    """A's state file, damaged `how`; returns what the error must say."""
    network = KeyNetwork(Clock(source=ManualTime()))
    a = KeyManager("A", network, tmp_path)
    a.add_link("ab", "B")
    a.close()
    path = tmp_path / "A.db"
    if how == "garbage":
        path.write_bytes(b"this is not a database" * 200)
        return "cannot use it as a key manager state database: file is not a database"
    if how == "truncated":
        with contextlib.closing(sqlite3.connect(path)) as db:  # a few pages (closing: in the file, not the WAL)
            db.executemany("INSERT INTO keys VALUES (?, 'sa', 'sb', ?, 0)", [(str(i), b"k" * 500) for i in range(40)])
            db.commit()
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size - 4096 - 100)
        return "the database is damaged"
    if how == "scribbled":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.executemany("INSERT INTO keys VALUES (?, 'sa', 'sb', ?, 0)", [(str(i), b"k" * 500) for i in range(40)])
            db.commit()
        raw = bytearray(path.read_bytes())
        raw[4096 + 8:4096 + 1000] = b"\xff" * 992  # the second page: a b-tree page
        path.write_bytes(bytes(raw))
        return "the database is damaged"
    if how == "foreign":
        path.unlink()
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (text)")
        return r"not a key manager state database \(tables notes; expected keys, meta, pools\)"
    if how == "other-km":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = 'B' WHERE name = 'km_id'")
        return "the state of key manager 'B', not of 'A'"
    if how == "newer":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = '7' WHERE name = 'version'")
        return "state format version '7'; this key manager reads version 1"
    if how == "bad-tail":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE pools SET tail = -8")
        return "pool of link 'ab': tail must be a non-negative multiple of 8, got -8"
    if how == "bad-key":
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO keys VALUES ('k1', 'sa', 'sb', 'text, not bytes', 0)")
        return "stored key 'k1' is damaged"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["garbage", "truncated", "scribbled", "foreign", "other-km", "newer", "bad-tail",
                                 "bad-key"])
def test_a_damaged_or_foreign_state_database_is_a_clear_error_naming_the_file(tmp_path, how):
    message = _damage(tmp_path, how)
    network = KeyNetwork(Clock(source=ManualTime()))
    with pytest.raises(KeyStateError, match=f"^{tmp_path / 'A.db'}: ({message})") as error:
        KeyManager("A", network, tmp_path)
    assert isinstance(error.value, ValueError) and isinstance(error.value, OSError)
    assert error.value.__cause__ is None
    assert not network.is_up("A")


def _old_state(tmp_path, network, time):
    """A - B - C - D run by the former JSON persistence: B.json and D.json as it wrote them."""
    time.t += 1.0
    secret = "11" * 32
    keys = {"6f1d3a5e-0000-4000-8000-000000000001": base64.b64encode(b"k" * 32).decode()}
    stream = {"link_id": "cd", "secret": secret, "produced_bits": 100_000, "rate_bps": 100_000.0}
    state = {"km_id": "D", "pools": {"cd": {"peer_km": "C", "max_bits": 1_000_000, "tail": 256, "consumed_bits": 256,
                                            "stream": stream}},
             "stored_keys": {key_id: {"master_sae": "sa", "slave_sae": "sd", "key": key}
                             for key_id, key in keys.items()}}
    (tmp_path / "D.json").write_text(json.dumps(state))
    return state


def test_a_state_file_of_the_former_json_format_is_migrated_once(network, time, tmp_path):
    state = _old_state(tmp_path, network, time)
    d = KeyManager("D", network, tmp_path)
    assert d.pools["cd"].tail == 256 and d.pools["cd"].consumed_bits == 256
    assert network.stream("cd").snapshot()["secret"] == "11" * 32
    assert not (tmp_path / "D.json").exists()
    assert json.loads((tmp_path / "D.json.migrated").read_text()) == state
    d.attach_sae("sd")
    key_id = next(iter(state["stored_keys"]))
    network.unregister("D")
    d.close()
    again = KeyManager("D", network, tmp_path)  # from the database now
    again.attach_sae("sd")
    assert again.dec_keys("sd", "sa", [key_id]) == [Key(key_id, b"k" * 32)]


def test_a_migration_cut_short_after_its_database_is_finished_and_a_stray_json_file_refused(network, time, tmp_path):
    _old_state(tmp_path, network, time)
    KeyManager("D", network, tmp_path).close()
    network.unregister("D")
    (tmp_path / "D.json.migrated").rename(tmp_path / "D.json")  # as if killed before the rename
    KeyManager("D", network, tmp_path).close()
    network.unregister("D")
    assert not (tmp_path / "D.json").exists() and (tmp_path / "D.json.migrated").exists()
    (tmp_path / "D.json").write_text('{"pools": {}, "stored_keys": {}}')  # not the one migrated
    with pytest.raises(KeyStateError, match=f"^{tmp_path / 'D.json'}: a key manager state file of the former JSON "
                                            f"format next to {tmp_path / 'D.db'}, which was not migrated from it"):
        KeyManager("D", network, tmp_path)


@pytest.mark.parametrize("text, message", [
    ('{"pools": 3}', "expected an object with objects 'pools' and 'stored_keys'"),
    ("{not json", "JSONDecodeError"),
    ('{"pools": {"ab": {"peer_km": "B"}}, "stored_keys": {}}', "KeyError: 'stream'"),
    ('{"km_id": "Z", "pools": {}, "stored_keys": {}}', "the state of key manager 'Z', not of 'A'"),
])
def test_a_damaged_state_file_of_the_former_format_is_a_clear_error(network, tmp_path, text, message):
    (tmp_path / "A.json").write_text(text)
    with pytest.raises(KeyStateError, match=f"^{tmp_path / 'A.json'}: not a key manager state file .*{message}"):
        KeyManager("A", network, tmp_path)
    assert (tmp_path / "A.json").read_text() == text and not (tmp_path / "A.db").exists()
