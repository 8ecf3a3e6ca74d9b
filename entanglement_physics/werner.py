"""Werner states: fidelity, swapping, memory decoherence, purification, cut-off, and sampling
measure-directly outcomes.

A Werner state rho = w |Phi+><Phi+| + (1 - w) I/4 has fidelity F = (1 + 3w)/4 (reference,
section "Werner states, swapping, purification"); every operation here acts on w or F as that
section and section "Memory decoherence" of the qstrata entanglement reference give.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

BASES = ("X", "Y", "Z")
# Correlation <sigma ⊗ sigma> of |Phi+> in each basis: +1 for XX and ZZ, -1 for YY.
PHI_PLUS_CORRELATION = {"X": 1, "Y": -1, "Z": 1}


def werner_parameter(fidelity: float) -> float:
    """w = (4F - 1)/3."""
    return (4 * fidelity - 1) / 3


def fidelity_of(w: float) -> float:
    """F = (1 + 3w)/4."""
    return (1 + 3 * w) / 4


def swap(f1: float, f2: float, gate_fidelity: float = 1.0) -> float:
    """Fidelity after swapping two Werner pairs: w = w1*w2 (ideal Bell measurement), i.e.
    F = F1*F2 + (1-F1)*(1-F2)/3; an imperfect swap multiplies w by the node's gate/measurement
    factor (depolarising model)."""
    return fidelity_of(werner_parameter(f1) * werner_parameter(f2) * gate_fidelity)


def chain_fidelity(fidelities: Sequence[float], gate_fidelity: float = 1.0) -> float:
    """F_e2e = 1/4 + 3/4 * prod_i (4F_i - 1)/3 for ideal swaps (each of the n-1 swaps also
    multiplies w by gate_fidelity)."""
    w = math.prod(werner_parameter(f) for f in fidelities) * gate_fidelity ** (len(fidelities) - 1)
    return fidelity_of(w)


def depolarised(fidelity: float, wait_s: float, *coherence_times_s: float | None) -> float:
    """Depolarising memory: w(t) = w0 * exp(-t * sum(1/T_i)) over the stored halves (one T per
    half; None for a half that does not decay)."""
    rate = sum(1 / t for t in coherence_times_s if t is not None)
    return fidelity_of(werner_parameter(fidelity) * math.exp(-wait_s * rate))


def dephased_perfect_pair(wait_s: float, t2_s: float) -> float:
    """A perfect pair with one qubit dephasing at T2: F(t) = (1 + exp(-t/T2))/2."""
    return (1 + math.exp(-wait_s / t2_s)) / 2


def purification_success(f1: float, f2: float | None = None) -> float:
    """BBPSSW success probability; for two pairs of fidelity F (the reference's case)
    p = F^2 + 2F(1-F)/3 + 5(1-F)^2/9, and for F1 != F2 the same expansion term by term."""
    f2 = f1 if f2 is None else f2
    return f1 * f2 + (f1 * (1 - f2) + (1 - f1) * f2) / 3 + 5 * (1 - f1) * (1 - f2) / 9


def purified(f1: float, f2: float | None = None) -> float:
    """BBPSSW output fidelity on success: F' = (F^2 + (1-F)^2/9) / p_succ (two pairs in, one
    out); F1*F2 + (1-F1)(1-F2)/9 over p for unequal pairs."""
    f2 = f1 if f2 is None else f2
    return (f1 * f2 + (1 - f1) * (1 - f2) / 9) / purification_success(f1, f2)


def expired(age_s: float, max_age_s: float | None) -> bool:
    """Cut-off: a pair older than the maximum age is discarded."""
    return max_age_s is not None and age_s > max_age_s


def memory_wait(mean_wait_s: float, decay_rate: float, max_age_s: float | None = None) -> tuple[float, float]:
    """A pair that waits in memory for a partner which arrives after an exponentially
    distributed time of mean `mean_wait_s` (the continuous form of the geometric number of
    attempts): the mean factor E[exp(-k W) | W <= c] its Werner parameter keeps (decay rate
    k, the sum of 1/T over its stored halves), and the probability that it is used before the
    cut-off c (1 - exp(-c/m)); the rest are discarded."""
    if mean_wait_s <= 0:
        return 1.0, 1.0
    mu = 1 / mean_wait_s
    if max_age_s is None:
        return mu / (mu + decay_rate), 1.0
    survival = -math.expm1(-mu * max_age_s)
    if survival <= 0:
        return 1.0, 0.0
    factor = mu / (mu + decay_rate) * -math.expm1(-(mu + decay_rate) * max_age_s) / survival
    return factor, survival


def sample_measure_directly(fidelity: float, count: int, rng: random.Random,
                            bases: Sequence[str] = ("Z",)) -> list[tuple[str, str, int, int]]:
    """Outcomes (+1/-1) of measuring `count` Werner pairs of `fidelity` at both ends, each end
    choosing its basis at random among `bases`: with probability w the pair is |Phi+> (outcomes
    correlated as <XX> = <ZZ> = 1, <YY> = -1, independent in different bases), otherwise the
    maximally mixed state (independent outcomes). So in equal bases the correlation is +-w,
    and Z outcomes agree with probability (1 + w)/2."""
    for basis in bases:
        if basis not in BASES:
            raise ValueError(f"unknown basis {basis!r}; choose from {', '.join(BASES)}")
    w = werner_parameter(fidelity)
    if not 0 <= w <= 1:  # below F = 1/4 a Werner state is no mixture of |Phi+> and noise
        raise ValueError(f"sampling needs a fidelity within 0.25..1, got {fidelity!r}")
    samples = []
    for _ in range(count):
        basis_a, basis_b = rng.choice(bases), rng.choice(bases)
        outcome_a = rng.choice((1, -1))
        if basis_a == basis_b and rng.random() < w:
            outcome_b = outcome_a * PHI_PLUS_CORRELATION[basis_a]
        else:
            outcome_b = rng.choice((1, -1))
        samples.append((basis_a, basis_b, outcome_a, outcome_b))
    return samples
