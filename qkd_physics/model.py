"""Secret key rate and QBER of a QKD link: asymptotic decoy-state BB84.

The model (Lo, Ma, Chen 2005; Ma, Qi, Zhao, Lo 2005) turns the optical loss of a link into
the secret key rate and the quantum bit error rate for a device profile. It is pure
functions, shared by the levels and importing none of them: the emulated QKD nodes derive
their readings from it (the digital twin adds the noise), and the orchestrator's planner
estimates the key rate of a link it would build from the same model, so that a dry run's
verdict agrees with what the link then delivers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

E0 = 0.5  # error rate of a random (dark-count) detection
INTERCEPT_RESEND_ERROR = 0.25  # errors an intercept-resend attack causes on the pulses it touches
# Operating point reported when no mu gives key: the optimiser would otherwise drift to mu -> 0,
# where dark counts alone make the QBER 1/2 and hide what the link actually shows.
NOMINAL_MU = 0.5
GOLDEN = (math.sqrt(5) - 1) / 2
AUTHENTICATION_SHARE = 0.01  # of the skr, spent authenticating the classical channel: eskr is the rest
DEFAULT_QBER_THRESHOLD = 5.0  # percent: above it a node stops distilling key (qi-qkd-node-ext default)


@dataclass(frozen=True)
class DeviceProfile:
    """A QKD transmitter/receiver pair. The defaults are the reference profile, fitted to
    published commercial figures (about 1 Mb/s at 20 km and 10 kb/s at 100 km of fibre)."""

    alpha_db_per_km: float = 0.2  # fibre attenuation (SMF at 1550 nm)
    eta_bob: float = 0.10  # receiver efficiency (detectors and optics)
    y0: float = 3e-5  # dark-count yield per pulse
    e_det: float = 0.01  # misalignment error of the optics
    f_ec: float = 1.2  # error-correction inefficiency
    q: float = 0.5  # basis sifting factor (standard BB84)
    f_rep: float = 200e6  # pulse repetition rate, Hz
    # Throughput ceilings of the detectors and of post-processing; above the model's
    # zero-distance rate (about 2.5 Mb/s) so that they only bind for faster profiles.
    detector_cap_bps: float = 10e6
    pp_cap_bps: float = 5e6
    mu: float | None = None  # mean photon number of the signal state; None: optimised per loss

    def __post_init__(self) -> None:
        for name in ("alpha_db_per_km", "eta_bob", "y0", "e_det", "f_ec", "q", "f_rep",
                     "detector_cap_bps", "pp_cap_bps"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"DeviceProfile.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.mu is not None and not self.mu > 0:
            raise ValueError(f"DeviceProfile.mu must be > 0 or None, got {self.mu!r}")


def binary_entropy(x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0
    return -x * math.log2(x) - (1 - x) * math.log2(1 - x)


def _rate_and_qber(eta: float, mu: float, profile: DeviceProfile, added_error: float) -> tuple[float, float]:
    """Secret bits per pulse (may be negative: no key) and the QBER E_mu, for mean photon number mu."""
    detected = 1 - math.exp(-eta * mu)
    gain = profile.y0 + detected
    qber = min(E0, (E0 * profile.y0 + profile.e_det * detected) / gain + added_error)
    y1 = profile.y0 + eta
    e1 = min(E0, (E0 * profile.y0 + profile.e_det * eta) / y1 + added_error)
    q1 = y1 * mu * math.exp(-mu)
    rate = profile.q * (-gain * profile.f_ec * binary_entropy(qber) + q1 * (1 - binary_entropy(e1)))
    return rate, qber


def _best_mu(eta: float, profile: DeviceProfile, added_error: float) -> float:
    """Golden-section search for the mu that maximises the key rate (unimodal in mu)."""
    low, high = 1e-3, 1.5
    a = high - GOLDEN * (high - low)
    b = low + GOLDEN * (high - low)
    fa = _rate_and_qber(eta, a, profile, added_error)[0]
    fb = _rate_and_qber(eta, b, profile, added_error)[0]
    while high - low > 1e-4:
        if fa < fb:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = _rate_and_qber(eta, b, profile, added_error)[0]
        else:
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = _rate_and_qber(eta, a, profile, added_error)[0]
    return (low + high) / 2


def link_performance(loss_db: float, profile: DeviceProfile = DeviceProfile(),
                     eavesdrop_fraction: float = 0.0) -> tuple[float, float]:
    """(secret key rate in bit/s, QBER) for a link whose optical path loses `loss_db`.

    `loss_db` is the whole path: fibre (alpha * length) plus insertion losses. An
    intercept-resend eavesdropper on a fraction p of the pulses adds p/4 to the error rates;
    the key rate falls with it and is 0 once the errors leave nothing to distil.
    """
    if not loss_db >= 0:
        raise ValueError(f"loss_db must be >= 0, got {loss_db!r}")
    if not 0.0 <= eavesdrop_fraction <= 1.0:
        raise ValueError(f"eavesdrop_fraction must be within [0, 1], got {eavesdrop_fraction!r}")
    eta = profile.eta_bob * 10 ** (-loss_db / 10)
    added_error = INTERCEPT_RESEND_ERROR * eavesdrop_fraction
    mu = profile.mu if profile.mu is not None else _best_mu(eta, profile, added_error)
    rate, qber = _rate_and_qber(eta, mu, profile, added_error)
    if rate <= 0.0 and profile.mu is None:
        qber = _rate_and_qber(eta, NOMINAL_MU, profile, added_error)[1]
    skr = min(max(rate, 0.0) * profile.f_rep, profile.detector_cap_bps, profile.pp_cap_bps)
    return skr, qber


def effective_key_rate(skr_bps: float) -> float:
    """The eskr of a link generating `skr_bps`: what is left after authentication."""
    return skr_bps * (1 - AUTHENTICATION_SHARE)


def expected_eskr(loss_db: float, profile: DeviceProfile = DeviceProfile(),
                  qber_threshold: float = DEFAULT_QBER_THRESHOLD) -> float:
    """The eskr (bit/s) a link over an untapped optical path of `loss_db` is expected to
    carry: 0 when it distils no key or its QBER (percent) is above `qber_threshold`."""
    skr, qber = link_performance(loss_db, profile)
    return 0.0 if skr <= 0 or qber * 100 > qber_threshold else effective_key_rate(skr)
