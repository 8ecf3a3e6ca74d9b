"""Key-manager core: pools in step, hop-by-hop relay, ETSI 014 semantics, persistence."""
import base64
import stat

import pytest

from devices.keystore import (BadKeyRequest, DiscardMessage, Key, KeyManager, KeyNetwork, KeyUnavailable,
                              RelayMessage, UnknownSAE)
from devices.twin import Clock

LINKS = {"ab": ("A", "B"), "bc": ("B", "C"), "cd": ("C", "D")}


class ManualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class RecordingNetwork(KeyNetwork):
    """The real in-process network, keeping a copy of what crosses the classical channel."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.messages: list[tuple[str, object]] = []

    def deliver(self, km_id, message):
        self.messages.append((km_id, message))
        super().deliver(km_id, message)


def start_chain(network, state_dir=None, max_bits=1_000_000, rate_bps=100_000.0):
    """A - B - C - D over links ab, bc, cd; SAE sa at A, sd at D; a session each way.
    Configuration is not persisted, so a restarted key manager gets it again from here."""
    kms = {name: KeyManager(name, network, state_dir) for name in "ABCD"}
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
    kms["A"].open_session("sa", "sd", rate_bps=1e6, burst_bits=100_000)
    kms["D"].open_session("sd", "sa", rate_bps=1e6, burst_bits=100_000)
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
    keys = kms["A"].enc_keys("sa", "sd", number=3, size=256)
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
    key = kms["A"].enc_keys("sa", "sd")[0]
    with pytest.raises(BadKeyRequest) as wrong_master:
        kms["D"].dec_keys("sd", "someone-else", [key.key_id])
    assert "unknown or already delivered" in wrong_master.value.details[0]["reason"]
    assert kms["D"].dec_keys("sd", "sa", [key.key_id]) == [key]
    with pytest.raises(BadKeyRequest, match="1 of 1 key_IDs cannot be delivered") as again:
        kms["D"].dec_keys("sd", "sa", [key.key_id])
    assert again.value.details == [{"key_ID": key.key_id, "reason": "no key with this ID for SAE sd from "
                                                                     "SAE sa (unknown or already delivered)"}]
    assert again.value.http_status == 400


def test_dec_keys_is_all_or_nothing(kms):
    first, second = kms["A"].enc_keys("sa", "sd", number=2)
    with pytest.raises(BadKeyRequest, match="listed twice"):
        kms["D"].dec_keys("sd", "sa", [first.key_id, first.key_id])
    with pytest.raises(BadKeyRequest, match="1 of 2 key_IDs"):
        kms["D"].dec_keys("sd", "sa", [second.key_id, "00000000-0000-0000-0000-000000000000"])
    assert kms["D"].dec_keys("sd", "sa", [first.key_id, second.key_id]) == [first, second]


def test_not_enough_key_on_a_middle_hop_consumes_nothing_anywhere(kms, network):
    kms["B"].drain("bc", 100_000 - 512)  # 512 bits left on bc, at both B and C
    before = tails(kms)
    tokens = kms["A"].sessions[("sa", "sd")].bucket.available()
    sent = len(network.messages)
    with pytest.raises(KeyUnavailable, match=r"not enough key on link bc \(B -> C\): 512 bits, 768 needed") as error:
        kms["A"].enc_keys("sa", "sd", number=3, size=256)
    assert error.value.http_status == 503
    assert error.value.details == [{"link": "bc", "available_bits": 512, "needed_bits": 768}]
    assert tails(kms) == before
    assert kms["A"].sessions[("sa", "sd")].bucket.available() == tokens
    assert len(network.messages) == sent and kms["D"].stored_key_count == 0
    assert len(kms["A"].enc_keys("sa", "sd", number=2, size=256)) == 2  # what fits is served


def test_token_bucket_limits_the_session_rate(kms, time):
    kms["A"].open_session("sa", "sd", rate_bps=1000.0, burst_bits=1024)
    kms["A"].enc_keys("sa", "sd", number=4, size=256)
    before = tails(kms)
    with pytest.raises(KeyUnavailable, match="session rate exceeded: 0 bits left in the bucket, 256 requested"):
        kms["A"].enc_keys("sa", "sd", number=1, size=256)
    assert tails(kms) == before
    time.t += 0.256  # 256 bits of tokens come back
    assert len(kms["A"].enc_keys("sa", "sd", number=1, size=256)) == 1
    with pytest.raises(KeyUnavailable, match="2048 requested"):
        kms["A"].enc_keys("sa", "sd", number=8, size=256)  # more than the burst: never served


def test_unreachable_key_manager_or_missing_route_is_503_with_nothing_consumed(kms, network):
    before = tails(kms)
    network.unregister("C")
    with pytest.raises(KeyUnavailable, match="key manager C is unreachable"):
        kms["A"].enc_keys("sa", "sd")
    kms["B"].remove_route("D")
    with pytest.raises(KeyUnavailable, match="key manager B has no route to key manager D"):
        kms["A"].enc_keys("sa", "sd")
    assert tails(kms) == before


def test_routing_loop_is_detected(kms):
    kms["B"].set_route("D", "A", "ab")
    with pytest.raises(KeyUnavailable, match="routing loop towards key manager D: A -> B -> A"):
        kms["A"].enc_keys("sa", "sd")


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
        kms["A"].enc_keys(master, slave, number, size)
    assert tails(kms) == before


def test_status_counts_what_the_whole_path_can_deliver(kms):
    kms["C"].drain("cd", 100_000 - 2560)
    status = kms["A"].status("sa", "sd")
    assert (status.source_km, status.target_km, status.key_size) == ("A", "D", 256)
    assert status.stored_key_count == 10  # the weakest hop, cd, holds 2560 bits
    assert status.max_key_count == 100_000 // 256  # the session's burst is smaller than the pools
    assert (status.max_key_per_request, status.min_key_size, status.max_key_size) == (128, 64, 8192)
    with pytest.raises(UnknownSAE):
        kms["A"].status("sd", "sa")


def test_drain_and_flush_act_on_both_ends(kms, network):
    kms["A"].drain("ab", 40_000)
    assert kms["A"].pools["ab"].available_bits() == kms["B"].pools["ab"].available_bits() == 60_000
    assert network.messages[-1] == ("B", DiscardMessage("ab", 0, 40_000))
    kms["B"].flush("ab")
    assert kms["A"].pools["ab"].available_bits() == kms["B"].pools["ab"].available_bits() == 0
    with pytest.raises(KeyUnavailable, match="not enough key on link ab"):
        kms["A"].enc_keys("sa", "sd")
    with pytest.raises(ValueError, match="positive multiple of 8"):
        kms["A"].drain("ab", 7)


def test_drain_while_the_peer_is_down_is_caught_up_by_offsets(kms, network):
    network.unregister("B")
    kms["A"].drain("ab", 50_000)  # B never hears of it
    network.register(kms["B"])
    assert kms["B"].pools["ab"].tail == 0
    kms["A"].enc_keys("sa", "sd")
    assert kms["A"].pools["ab"].tail == kms["B"].pools["ab"].tail == 50_256


def test_a_full_pool_drops_its_oldest_bits_and_the_ends_still_agree(network, time):
    kms = start_chain(network, max_bits=4096)
    time.t += 10.0  # a million bits produced, 4096 kept
    assert kms["A"].pools["ab"].available_bits() == 4096
    key = kms["A"].enc_keys("sa", "sd", size=1024)[0]
    assert kms["D"].dec_keys("sd", "sa", [key.key_id]) == [key]
    assert kms["A"].pools["ab"].available_bits() == kms["B"].pools["ab"].available_bits() == 3072


def test_sessions_between_saes_of_one_key_manager_need_no_link(network):
    a = KeyManager("A", network)
    a.attach_sae("s1")
    a.attach_sae("s2")
    a.open_session("s1", "s2", rate_bps=1000, burst_bits=512)
    keys = a.enc_keys("s1", "s2", number=2)
    assert a.dec_keys("s2", "s1", [k.key_id for k in keys]) == keys
    assert a.status("s1", "s2").stored_key_count == 0  # the bucket is empty now


def test_configuration_mistakes_are_refused(kms, network):
    with pytest.raises(ValueError, match="link 'ab' goes to 'B', not to next hop 'C'"):
        kms["A"].set_route("D", "C", "ab")
    with pytest.raises(ValueError, match="key manager A has no pool for link 'xy'"):
        kms["A"].set_route("D", "B", "xy")
    with pytest.raises(ValueError, match="SAE 'sa' is already attached to key manager 'A'"):
        kms["B"].attach_sae("sa")
    with pytest.raises(ValueError, match="key manager 'A' is already running"):
        KeyManager("A", network)
    with pytest.raises(ValueError, match="token bucket needs rate >= 0 and burst > 0"):
        kms["A"].open_session("sa", "sd", rate_bps=10, burst_bits=0)


def test_key_bytes_stay_out_of_reprs(kms):
    key = kms["A"].enc_keys("sa", "sd")[0]
    assert key.key.hex() not in repr(key) and str(key.key) not in repr(key)
    assert repr(Key("id", b"\x01\x02")) == "Key(key_id='id')"


def test_crashed_key_manager_comes_back_with_its_pools_and_undelivered_keys(network, time, tmp_path):
    kms = start_chain(network, state_dir=tmp_path)
    time.t += 1.0
    keys = kms["A"].enc_keys("sa", "sd", number=2)
    state_file = tmp_path / "D.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    tail_before = kms["D"].pools["cd"].tail

    network.unregister("D")  # crash: the object and its memory are gone
    del kms["D"]
    with pytest.raises(KeyUnavailable, match="key manager D is unreachable"):
        kms["A"].enc_keys("sa", "sd")
    d = KeyManager("D", network, tmp_path)
    assert d.pools["cd"].tail == tail_before and d.stored_key_count == 2
    d.attach_sae("sd")
    d.set_route("A", "C", "cd")
    assert d.dec_keys("sd", "sa", [k.key_id for k in keys]) == keys
    more = kms["A"].enc_keys("sa", "sd")
    assert d.dec_keys("sd", "sa", [more[0].key_id]) == more


def test_whole_network_restarts_from_disk_with_the_same_link_keys(tmp_path):
    time = ManualTime()
    first = start_chain(KeyNetwork(Clock(source=time)), state_dir=tmp_path)
    time.t += 1.0
    pending = first["A"].enc_keys("sa", "sd")
    first["A"].enc_keys("sa", "sd")
    pad = first["B"].pools["bc"].stream.bits(0, 4096)

    again = KeyNetwork(Clock(source=ManualTime()))
    kms = start_chain(again, state_dir=tmp_path, rate_bps=0.0)
    assert again.stream("bc").bits(0, 4096) == pad
    assert kms["B"].pools["bc"].tail == kms["C"].pools["bc"].tail == 512
    assert kms["B"].pools["bc"].available_bits() == 100_000 - 512
    assert kms["D"].dec_keys("sd", "sa", [pending[0].key_id]) == pending
    fresh = kms["A"].enc_keys("sa", "sd")
    assert kms["D"].dec_keys("sd", "sa", [fresh[0].key_id]) == fresh


def test_a_damaged_state_file_is_reported(network, tmp_path):
    (tmp_path / "A.json").write_text('{"pools": 3}')
    with pytest.raises(ValueError, match=r"A.json: not a key manager state file"):
        KeyManager("A", network, tmp_path)


def test_stored_keys_are_base64_on_disk(network, time, tmp_path):
    kms = start_chain(network, state_dir=tmp_path)
    time.t += 1.0
    key = kms["A"].enc_keys("sa", "sd")[0]
    assert base64.b64encode(key.key).decode() in (tmp_path / "D.json").read_text()
