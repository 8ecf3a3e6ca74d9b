"""The decoy-state BB84 link model against the reference table (qkd-link-physics.md)."""
import math

import pytest

from qkd_physics import AUTHENTICATION_SHARE, DeviceProfile, effective_key_rate, expected_eskr, link_performance

PROFILE = DeviceProfile()

# Reference figures for the default profile: (km, skr in b/s, QBER or None).
# Tolerance: 5 % relative on the key rate, 0.1 percentage point absolute on the QBER.
REFERENCE = [
    (10, 1.6e6, 0.010),
    (25, 790e3, None),
    (50, 240e3, None),
    (75, 66e3, None),
    (100, 13e3, 0.029),
    (110, 4.2e3, 0.042),
]


@pytest.mark.parametrize("km, skr, qber", REFERENCE)
def test_reference_table(km, skr, qber):
    got_skr, got_qber = link_performance(km * PROFILE.alpha_db_per_km, PROFILE)
    assert got_skr == pytest.approx(skr, rel=0.05)
    if qber is not None:
        assert got_qber == pytest.approx(qber, abs=0.001)


def test_key_rate_falls_with_distance_to_a_cut_off_near_115_km():
    rates = [link_performance(km * 0.2)[0] for km in range(0, 121, 5)]
    assert all(a > b for a, b in zip(rates, rates[1:]) if a > 0)
    # Bisection for the distance where the key vanishes: the reference says about 115 km.
    low, high = 100.0, 150.0
    while high - low > 0.1:
        mid = (low + high) / 2
        low, high = (mid, high) if link_performance(mid * 0.2)[0] > 0 else (low, mid)
    assert 115.0 <= low <= 120.0
    assert link_performance(120 * 0.2) == (0.0, pytest.approx(0.072, abs=0.01))


def test_optimised_mu_beats_every_fixed_mu():
    for loss in (2.0, 10.0, 20.0):
        best = link_performance(loss)[0]
        fixed = [link_performance(loss, DeviceProfile(mu=m / 20))[0] for m in range(1, 31)]
        assert best >= max(fixed) * 0.9999
        assert best > link_performance(loss, DeviceProfile(mu=0.1))[0]


def test_eavesdropper_adds_a_quarter_of_its_fraction_to_the_qber_and_cuts_the_key():
    clean_skr, clean_qber = link_performance(2.0)
    previous = clean_skr
    for p in (0.05, 0.1, 0.2, 0.3):
        skr, qber = link_performance(2.0, eavesdrop_fraction=p)
        assert qber - clean_qber == pytest.approx(p / 4, abs=0.003)
        assert 0 < skr < previous
        previous = skr
    # Past the QBER the protocol can distil from (about 9 % at this loss): no key at all.
    skr, qber = link_performance(2.0, eavesdrop_fraction=0.4)
    assert skr == 0.0
    assert qber == pytest.approx(clean_qber + 0.1, abs=0.003)
    assert link_performance(2.0, eavesdrop_fraction=1.0)[1] == pytest.approx(0.26, abs=0.003)


def test_caps_bound_the_key_rate():
    assert link_performance(2.0, DeviceProfile(detector_cap_bps=500e3))[0] == 500e3
    assert link_performance(2.0, DeviceProfile(pp_cap_bps=300e3, detector_cap_bps=400e3))[0] == 300e3
    fast = DeviceProfile(f_rep=2e9)  # ten times the pulses: the default post-processing cap binds
    assert link_performance(2.0, fast)[0] == fast.pp_cap_bps


def test_no_light_gives_no_key_and_random_errors():
    assert link_performance(math.inf) == (0.0, 0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"loss_db": -1.0}, "loss_db must be >= 0"),
    ({"loss_db": math.nan}, "loss_db must be >= 0"),
    ({"loss_db": 5.0, "eavesdrop_fraction": 1.5}, "eavesdrop_fraction must be within"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        link_performance(**kwargs)


def test_bad_profile_is_refused():
    with pytest.raises(ValueError, match="DeviceProfile.eta_bob must be >= 0"):
        DeviceProfile(eta_bob=-0.1)
    with pytest.raises(ValueError, match="DeviceProfile.mu must be > 0"):
        DeviceProfile(mu=0.0)


def test_expected_eskr_is_the_skr_less_authentication_and_zero_where_no_key_is_distilled():
    skr, qber = link_performance(19.0)
    assert expected_eskr(19.0) == pytest.approx(skr * (1 - AUTHENTICATION_SHARE)) == effective_key_rate(skr)
    assert expected_eskr(24.0) == 0.0                                   # past the cut-off
    assert expected_eskr(19.0, qber_threshold=qber * 100 - 0.01) == 0.0  # a node that stops distilling
    assert expected_eskr(5.0, DeviceProfile(f_rep=100e6)) == pytest.approx(expected_eskr(5.0) / 2, rel=1e-6)
