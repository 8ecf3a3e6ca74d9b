"""The entanglement physics against the reference (entanglement-physics.md): expected values are
worked out here from the reference's closed forms and worked examples, not by the package.

Tolerances: 2 % relative where the reference rounds its worked example (p ~ 6.4e-5, rate ~
0.64/s), 5 % where it says "~" to one digit (double-click 5e-8), 1e-3 absolute on fidelities
it states to three digits; Monte-Carlo checks within 4 standard errors of the expected mean."""
import math
import random

import pytest

from entanglement_physics import (NV_CENTRE, TRAPPED_ION, ChainLink, ChainNode, NodeProfile, Scheme, balanced_order,
                                  elementary_link, evaluate_chain, expected_wait)
from entanglement_physics import werner

# --- one elementary link: the reference's worked example (NV-like emitter, 20 km, 0.2 dB/km) ---

WORKED = NodeProfile(emission_probability=5.1e-4, detector_efficiency=1.0, alpha_db_per_km=0.2,
                     bright_state_population=0.1)


def test_single_click_link_matches_the_worked_example():
    link = elementary_link(20, Scheme.SINGLE_CLICK, WORKED)
    eta_arm = 5.1e-4 * 10 ** (-0.2 * 10 / 10)  # p_emit * eta_f(L/2) * eta_det
    assert eta_arm == pytest.approx(3.2e-4, rel=0.02)
    assert link.success_probability == pytest.approx(2 * 0.1 * eta_arm, rel=1e-9)
    assert link.success_probability == pytest.approx(6.4e-5, rel=0.02)
    assert link.attempt_cycle_s == pytest.approx(100e-6, rel=1e-9)  # L/c, c = 2e8 m/s
    assert link.rate == pytest.approx(0.64, rel=0.02)
    assert link.fidelity == pytest.approx(0.9, abs=1e-9)  # 1 - a
    assert link.channel_loss_db == pytest.approx(4.0)
    assert expected_wait(link.success_probability, link.attempt_cycle_s) == pytest.approx(1 / 0.64, rel=0.02)


def test_double_click_and_source_in_the_middle():
    double = elementary_link(20, Scheme.DOUBLE_CLICK, WORKED)
    assert double.success_probability == pytest.approx(5e-8, rel=0.05)  # eta_arm^2 / 2
    assert double.fidelity == pytest.approx((1 + 0.9) / 2)  # (1 + V)/2
    source = NodeProfile(pair_source_probability=0.02, source_fidelity=0.97, alpha_db_per_km=0.2)
    link = elementary_link(30, Scheme.SOURCE_IN_THE_MIDDLE, source)
    eta_half = 10 ** (-0.2 * 15 / 10)
    assert link.success_probability == pytest.approx(0.02 * eta_half * eta_half, rel=1e-9)
    assert link.fidelity == 0.97


def test_rate_scales_with_modes_and_falls_with_length_and_preparation_time():
    one = elementary_link(20, Scheme.SINGLE_CLICK, WORKED)
    ten = elementary_link(20, Scheme.SINGLE_CLICK, NodeProfile(emission_probability=5.1e-4, modes=10))
    assert ten.rate == pytest.approx(10 * one.rate)
    slower = elementary_link(20, Scheme.SINGLE_CLICK, NodeProfile(emission_probability=5.1e-4,
                                                                  preparation_time_s=100e-6))
    assert slower.attempt_cycle_s == pytest.approx(200e-6)
    assert slower.rate == pytest.approx(one.rate / 2)
    rates = [elementary_link(km, Scheme.SINGLE_CLICK, WORKED).rate for km in (5, 10, 20, 40, 80)]
    assert rates == sorted(rates, reverse=True)


def test_parameter_sets_of_the_reference():
    assert (NV_CENTRE.emission_probability, NV_CENTRE.storage_t2_s, NV_CENTRE.alpha_db_per_km) == (5.1e-4, 1.0, 0.25)
    assert (TRAPPED_ION.emission_probability, TRAPPED_ION.storage_t2_s, TRAPPED_ION.hom_visibility) == \
        (0.111, 0.085, 0.89)
    assert NV_CENTRE.gate_fidelity == pytest.approx(0.94) and TRAPPED_ION.gate_fidelity == pytest.approx(0.9)
    assert TRAPPED_ION.decoherence_rate == pytest.approx(1 / 0.085)
    with pytest.raises(ValueError, match="within 0..1"):
        NodeProfile(hom_visibility=1.5)


# --- Werner states, swapping ----------------------------------------------------------


@pytest.mark.parametrize("fidelity", [0.25, 0.5, 0.8, 0.9, 1.0])
def test_werner_parameter_and_fidelity_are_inverse(fidelity):
    w = (4 * fidelity - 1) / 3
    assert werner.werner_parameter(fidelity) == pytest.approx(w)
    assert werner.fidelity_of(w) == pytest.approx(fidelity)


def test_swap_of_two_pairs_follows_the_closed_form():
    for f1, f2 in [(0.9, 0.9), (0.95, 0.8), (0.7, 0.99)]:
        assert werner.swap(f1, f2) == pytest.approx(f1 * f2 + (1 - f1) * (1 - f2) / 3)
    assert werner.swap(0.9, 0.9) == pytest.approx(0.813, abs=1e-3)
    # imperfect swap: w multiplied by the gate factor
    w = (4 * 0.9 - 1) / 3
    assert werner.swap(0.9, 0.9, gate_fidelity=0.94) == pytest.approx((1 + 3 * w * w * 0.94) / 4)


def test_chain_with_ideal_swaps_matches_the_reference():
    """Two links of 0.9 give 0.813 and three 0.738, whatever the order of the swaps."""
    assert werner.chain_fidelity([0.9, 0.9]) == pytest.approx(0.813, abs=1e-3)
    assert werner.chain_fidelity([0.9, 0.9, 0.9]) == pytest.approx(0.738, abs=1e-3)
    nodes = [ChainNode()] * 4
    links = [ChainLink(rate=5.0, fidelity=0.9)] * 3
    for order in ([1, 2], [2, 1]):
        assert evaluate_chain(nodes, links, order).fidelity == pytest.approx(0.738, abs=1e-3)
    five = evaluate_chain([ChainNode()] * 6, [ChainLink(1.0, 0.95)] * 5, balanced_order(5))
    assert five.fidelity == pytest.approx(0.25 + 0.75 * ((4 * 0.95 - 1) / 3) ** 5)


def test_two_links_in_step_wait_about_one_and_a_half_times_one_link():
    """The reference: two links of success p attempting in step need (3 - 2p)/(p(2 - p))
    attempts until both hold a pair; the chain model's mean time is within 1 % of it for
    small p, and a seeded simulation of the attempts agrees with the reference."""
    p, cycle = 0.01, 1e-4
    reference_attempts = (3 - 2 * p) / (p * (2 - p))
    link = ChainLink(rate=p / cycle, fidelity=1.0)
    joined = evaluate_chain([ChainNode()] * 3, [link, link], [1])
    assert joined.mean_time_s == pytest.approx(reference_attempts * cycle, rel=0.01)

    rng = random.Random(17)
    p, trials, total = 0.05, 20000, 0
    for _ in range(trials):
        attempts, first, second = 0, False, False
        while not (first and second):
            attempts += 1
            first = first or rng.random() < p
            second = second or rng.random() < p
        total += attempts
    assert total / trials == pytest.approx((3 - 2 * p) / (p * (2 - p)), rel=0.03)


def test_imperfect_swaps_and_swap_success_in_a_chain():
    nodes = [ChainNode(), ChainNode(swap_fidelity=0.9, swap_success=0.5), ChainNode()]
    links = [ChainLink(rate=2.0, fidelity=0.9)] * 2
    joined = evaluate_chain(nodes, links, [1])
    w = (4 * 0.9 - 1) / 3
    assert joined.fidelity == pytest.approx((1 + 3 * w * w * 0.9) / 4)
    assert joined.mean_time_s == pytest.approx(1.5 * (1 / 2.0) / 0.5)


# --- memory decoherence -----------------------------------------------------------------


def test_decoherence_over_a_wait_matches_the_reference():
    # F0 = 0.9, T = 1 s for each half, t = 0.5 s -> 0.49
    assert werner.depolarised(0.9, 0.5, 1.0, 1.0) == pytest.approx(0.49, abs=2e-3)
    w0 = (4 * 0.9 - 1) / 3
    assert werner.depolarised(0.9, 0.2, 0.5, None) == pytest.approx((1 + 3 * w0 * math.exp(-0.2 / 0.5)) / 4)
    assert werner.depolarised(0.9, 10.0, None, None) == pytest.approx(0.9)
    for t in (0.0, 0.1, 1.0):
        assert werner.dephased_perfect_pair(t, 0.5) == pytest.approx((1 + math.exp(-t / 0.5)) / 2)


def test_a_pair_waiting_for_its_neighbour_decays_in_the_chain():
    """A swap of two links through a repeater whose memory decays: the waiting pair loses
    exp(-k W) of its w, W exponential of mean one link's time: E = mu/(mu + k)."""
    rate, decay = 4.0, 1.0  # 1/s per stored half, at every node
    nodes = [ChainNode(decoherence_rate=decay)] * 3
    links = [ChainLink(rate=rate, fidelity=0.95)] * 2
    joined = evaluate_chain(nodes, links, [1])
    w = (4 * 0.95 - 1) / 3
    expected_factor = rate / (rate + 2 * decay)  # two halves of the waiting pair decay
    assert joined.fidelity == pytest.approx((1 + 3 * w * w * expected_factor) / 4)
    assert joined.fidelity < evaluate_chain([ChainNode()] * 3, links, [1]).fidelity


def test_memory_wait_with_a_cut_off_matches_a_seeded_simulation():
    mean_wait, decay, max_age = 0.5, 2.0, 0.4
    factor, survival = werner.memory_wait(mean_wait, decay, max_age)
    assert survival == pytest.approx(1 - math.exp(-max_age / mean_wait))
    rng = random.Random(5)
    waits = [rng.expovariate(1 / mean_wait) for _ in range(40000)]
    used = [t for t in waits if not werner.expired(t, max_age)]
    assert len(used) / len(waits) == pytest.approx(survival, abs=4 * math.sqrt(survival * (1 - survival) / len(waits)))
    decays = [math.exp(-decay * t) for t in used]
    mean = sum(decays) / len(decays)
    spread = math.sqrt(sum((d - mean) ** 2 for d in decays) / len(decays))
    assert factor == pytest.approx(mean, abs=4 * spread / math.sqrt(len(decays)))
    # without a cut-off nothing is discarded; a cut-off keeps the used pairs fresher
    no_cut, kept = werner.memory_wait(mean_wait, decay)
    assert kept == 1.0 and no_cut == pytest.approx(2.0 / (2.0 + decay)) and no_cut < factor


def test_cut_off_discards_old_pairs_and_slows_the_chain():
    assert werner.expired(0.6, 0.5) and not werner.expired(0.4, 0.5) and not werner.expired(100.0, None)
    nodes = [ChainNode(decoherence_rate=1.0)] * 3
    links = [ChainLink(rate=2.0, fidelity=0.95)] * 2
    free = evaluate_chain(nodes, links, [1])
    cut = evaluate_chain(nodes, links, [1], max_age_s=0.2)
    assert cut.fidelity > free.fidelity and cut.rate < free.rate


# --- purification -------------------------------------------------------------------------


def test_one_purification_round_matches_the_reference():
    f = 0.8
    p = f ** 2 + 2 * f * (1 - f) / 3 + 5 * (1 - f) ** 2 / 9
    assert werner.purification_success(f) == pytest.approx(p)
    assert werner.purified(f) == pytest.approx((f ** 2 + (1 - f) ** 2 / 9) / p)
    assert werner.purified(f) == pytest.approx(0.838, abs=1e-3)
    assert werner.purification_success(f) == pytest.approx(0.77, abs=2e-3)
    assert werner.purified(0.95, 0.95) == pytest.approx(werner.purified(0.95))


def test_one_purification_round_on_a_link_in_the_chain():
    """Without decoherence a round keeps F' and takes 2T/p_succ per pair."""
    link = ChainLink(rate=10.0, fidelity=0.8)
    segment = evaluate_chain([ChainNode(), ChainNode()], [link], [], purification_rounds=1)
    p = 0.8 ** 2 + 2 * 0.8 * 0.2 / 3 + 5 * 0.04 / 9
    assert segment.fidelity == pytest.approx((0.64 + 0.04 / 9) / p)
    assert segment.mean_time_s == pytest.approx(2 * 0.1 / p)


# --- measure-directly outcomes -------------------------------------------------------------


@pytest.mark.parametrize("fidelity", [0.6, 0.8, 0.95])
def test_measured_directly_correlations_converge_to_the_fidelity(fidelity):
    """Z outcomes of a Werner pair agree with probability (1 + w)/2 = (1 + 2F)/3; the <XX>,
    <YY>, <ZZ> correlators are w, -w, w; different bases are uncorrelated."""
    rng = random.Random(2026)
    samples = werner.sample_measure_directly(fidelity, 60000, rng, bases=("X", "Y", "Z"))
    w = (4 * fidelity - 1) / 3
    expected_sign = {"X": 1, "Y": -1, "Z": 1}
    for basis in ("X", "Y", "Z"):
        products = [a * b for ba, bb, a, b in samples if ba == bb == basis]
        n = len(products)
        assert n > 5000
        correlation = sum(products) / n
        assert correlation == pytest.approx(expected_sign[basis] * w, abs=4 * math.sqrt((1 - w * w) / n))
    mixed = [a * b for ba, bb, a, b in samples if ba != bb]
    assert sum(mixed) / len(mixed) == pytest.approx(0.0, abs=4 / math.sqrt(len(mixed)))
    z = [a == b for ba, bb, a, b in werner.sample_measure_directly(fidelity, 20000, random.Random(9))]
    agree = (1 + 2 * fidelity) / 3
    assert sum(z) / len(z) == pytest.approx(agree, abs=4 * math.sqrt(agree * (1 - agree) / len(z)))


def test_sampling_refuses_what_is_no_werner_mixture():
    with pytest.raises(ValueError, match="0.25..1"):
        werner.sample_measure_directly(0.2, 1, random.Random(0))
    with pytest.raises(ValueError, match="unknown basis"):
        werner.sample_measure_directly(0.9, 1, random.Random(0), bases=("W",))


def test_a_link_that_makes_no_pairs_stops_the_chain():
    dead = evaluate_chain([ChainNode()] * 3, [ChainLink(0.0, 0.9), ChainLink(5.0, 0.9)], [1], purification_rounds=1)
    assert dead.rate == 0.0


def test_chain_refuses_a_bad_swap_order():
    with pytest.raises(ValueError, match="swap order"):
        evaluate_chain([ChainNode()] * 3, [ChainLink(1.0, 0.9)] * 2, [2])
    assert balanced_order(4) == [1, 3, 2]
