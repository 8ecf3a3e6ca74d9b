"""Elementary entanglement links: heralded generation over lossy fibre.

Formulas of the qstrata entanglement reference, section "Elementary link (heralded, midpoint
station)": fibre transmissivity eta_f(l) = 10^(-alpha*l/10); per arm of a link of length L
with the station in the middle eta_arm = p_emit * eta_f(L/2) * eta_det; success probability
per attempt 2*a*eta_arm (single-click), eta_arm^2/2 (double-click, Barrett-Kok) or
p_pair*eta_A*eta_B (source in the middle); attempt cycle t_prep + L/c; rate modes*p/T_cycle;
expected wait T_cycle/p. Parameter sets: reference section "Parameter sets" (SquidASM
configurations from arXiv:2207.10579).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

SPEED_IN_FIBRE_M_PER_S = 2.0e8


class Scheme(enum.Enum):
    """How a link makes pairs (the identities of qi-quantum-node)."""

    SINGLE_CLICK = "single-click"
    DOUBLE_CLICK = "double-click"
    SOURCE_IN_THE_MIDDLE = "source-in-the-middle"


@dataclass(frozen=True)
class NodeProfile:
    """The photonics and memory of a quantum node. The defaults are the reference's NV-like
    worked example (p_emit 5.1e-4, 0.2 dB/km, ideal detectors, a = 0.1)."""

    emission_probability: float = 5.1e-4  # p_emit: a photon gets into the fibre
    detector_efficiency: float = 1.0  # eta_det
    alpha_db_per_km: float = 0.2
    bright_state_population: float = 0.1  # a, single-click
    hom_visibility: float = 0.9  # V, double-click
    pair_source_probability: float = 0.01  # p_pair: a source emits a pair per attempt
    source_fidelity: float = 0.95  # of the pairs a source in the middle emits
    preparation_time_s: float = 0.0  # t_prep
    modes: int = 1  # attempts in parallel
    storage_t2_s: float | None = None  # None: no decoherence
    gate_fidelity: float = 1.0  # depolarising factor of a swap on the Werner parameter
    swap_success_probability: float = 1.0

    def __post_init__(self) -> None:
        for name in ("emission_probability", "detector_efficiency", "bright_state_population",
                     "hom_visibility", "pair_source_probability", "source_fidelity", "gate_fidelity",
                     "swap_success_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"NodeProfile.{name} must be within 0..1, got {getattr(self, name)!r}")
        if self.alpha_db_per_km < 0 or self.preparation_time_s < 0 or self.modes < 1:
            raise ValueError("NodeProfile: alpha and preparation time must be >= 0, modes >= 1")
        if self.storage_t2_s is not None and not self.storage_t2_s > 0:
            raise ValueError(f"NodeProfile.storage_t2_s must be > 0 or None, got {self.storage_t2_s!r}")

    @property
    def decoherence_rate(self) -> float:
        """Depolarising rate of one stored half, 1/T (reference: w(t) = w0 exp(-t/T))."""
        return 0.0 if self.storage_t2_s is None else 1.0 / self.storage_t2_s


# Reference table "Parameter sets": storage T2 and p_emit, 0.25 dB/km, HOM visibility, and the
# two-qubit gate depolarisation (0.06 and 0.1) as the swap's factor on the Werner parameter.
NV_CENTRE = NodeProfile(emission_probability=5.1e-4, alpha_db_per_km=0.25, hom_visibility=0.9,
                        storage_t2_s=1.0, gate_fidelity=1 - 0.06)
TRAPPED_ION = NodeProfile(emission_probability=0.111, alpha_db_per_km=0.25, hom_visibility=0.89,
                          storage_t2_s=0.085, gate_fidelity=1 - 0.1)


@dataclass(frozen=True)
class LinkPerformance:
    success_probability: float  # per attempt
    attempt_cycle_s: float
    rate: float  # pairs per second
    fidelity: float  # of a fresh pair
    channel_loss_db: float


def transmissivity(length_km: float, alpha_db_per_km: float) -> float:
    """eta_f(l) = 10^(-alpha*l/10)."""
    return 10 ** (-alpha_db_per_km * length_km / 10)


def arm_efficiency(length_km: float, profile: NodeProfile) -> float:
    """eta_arm = p_emit * eta_f(L/2) * eta_det: one node to the midpoint station."""
    return (profile.emission_probability * transmissivity(length_km / 2, profile.alpha_db_per_km)
            * profile.detector_efficiency)


def attempt_cycle(length_km: float, profile: NodeProfile) -> float:
    """T_cycle = t_prep + L/c: the photons reach the midpoint and the herald comes back."""
    return profile.preparation_time_s + length_km * 1e3 / SPEED_IN_FIBRE_M_PER_S


def success_probability(length_km: float, scheme: Scheme, profile: NodeProfile) -> float:
    eta_arm = arm_efficiency(length_km, profile)
    if scheme is Scheme.SINGLE_CLICK:
        return min(1.0, 2 * profile.bright_state_population * eta_arm)
    if scheme is Scheme.DOUBLE_CLICK:
        return eta_arm ** 2 / 2
    # a source in the middle: each photon crosses half the fibre into a detector
    eta_half = transmissivity(length_km / 2, profile.alpha_db_per_km) * profile.detector_efficiency
    return profile.pair_source_probability * eta_half * eta_half


def fresh_fidelity(scheme: Scheme, profile: NodeProfile) -> float:
    """F ~ 1 - a (single-click), (1 + V)/2 (double-click), the source's own (source in the middle)."""
    if scheme is Scheme.SINGLE_CLICK:
        return 1 - profile.bright_state_population
    if scheme is Scheme.DOUBLE_CLICK:
        return (1 + profile.hom_visibility) / 2
    return profile.source_fidelity


def elementary_link(length_km: float, scheme: Scheme, profile: NodeProfile = NodeProfile()) -> LinkPerformance:
    """Success probability per attempt, attempt cycle, rate (modes * p / T_cycle) and fidelity
    of an elementary link of `length_km` of fibre between two nodes of `profile`."""
    if length_km < 0:
        raise ValueError(f"a link length must be >= 0 km, got {length_km!r}")
    p = success_probability(length_km, scheme, profile)
    cycle = attempt_cycle(length_km, profile)
    rate = profile.modes * p / cycle if cycle > 0 else float("inf")
    return LinkPerformance(p, cycle, rate, fresh_fidelity(scheme, profile), profile.alpha_db_per_km * length_km)


def expected_wait(success: float, cycle_s: float) -> float:
    """E[wait] = T_cycle / p: the number of attempts until a success is geometric."""
    if not 0 < success <= 1:
        raise ValueError(f"a success probability must be within (0, 1], got {success!r}")
    return cycle_s / success
