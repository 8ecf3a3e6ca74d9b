"""End-to-end rate and fidelity of a repeater chain, for a swap order and purification rounds.

A chain is n elementary links between n+1 nodes. Each link makes pairs at its rate (mean
time 1/rate between pairs: the geometric number of attempts, reference E[wait] = T_cycle/p,
taken as exponential). A segment is a stretch of the chain that holds a pair:

- a link purified r times: each BBPSSW round (reference formulas) takes two pairs of the
  level below, made one after the other on the link, so the first waits for the second in
  memory and decays (w(t) = w0 exp(-t/T) per stored half), and keeps one on success;
- a swap at node k of the segment ending at k and the one starting at k: both are made in
  parallel, the first ready waits for the other (and decays meanwhile), and the swap gives
  w = w1 * w2 * g_k (reference "swap" and "imperfect swap"), succeeding with probability
  p_swap(k). For two equal links the mean time until both hold a pair is 1.5 times one's,
  the reference's (3 - 2p)/(p(2 - p)) for small p.

With a cut-off (max age), a waiting pair older than the maximum age is discarded
(`werner.memory_wait`); a discard costs a fresh try of the step, so the step's time is divided
by the fraction used. These are mean-field estimates: expected times and expected Werner
parameters, which is what a planner compares; the emulator samples the same physics.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from entanglement_physics import werner


@dataclass(frozen=True)
class ChainNode:
    decoherence_rate: float = 0.0  # 1/T of one stored half, 1/s
    swap_fidelity: float = 1.0  # factor on w of a swap here
    swap_success: float = 1.0


@dataclass(frozen=True)
class ChainLink:
    rate: float  # pairs per second
    fidelity: float  # of a fresh pair


@dataclass(frozen=True)
class Segment:
    left: int  # index of the node at each end
    right: int
    mean_time_s: float  # mean time to make one pair of this segment
    w: float  # mean Werner parameter of that pair when it is ready

    @property
    def fidelity(self) -> float:
        return werner.fidelity_of(self.w)

    @property
    def rate(self) -> float:
        return 1 / self.mean_time_s if self.mean_time_s > 0 else float("inf")


def purified_link(segment: Segment, rounds: int, nodes: Sequence[ChainNode], max_age_s: float | None = None
                  ) -> Segment:
    """`rounds` BBPSSW rounds on one link's pairs: the first pair of each round waits in
    memory for the second (decaying), the round succeeds with p_succ and keeps one pair."""
    decay = nodes[segment.left].decoherence_rate + nodes[segment.right].decoherence_rate
    for _ in range(rounds if math.isfinite(segment.mean_time_s) else 0):
        factor, used = werner.memory_wait(segment.mean_time_s, decay, max_age_s)
        if used == 0:
            return Segment(segment.left, segment.right, float("inf"), segment.w)
        waited = werner.fidelity_of(segment.w * factor)
        fresh = segment.fidelity
        success = werner.purification_success(waited, fresh)
        segment = Segment(segment.left, segment.right, 2 * segment.mean_time_s / (success * used),
                          werner.werner_parameter(werner.purified(waited, fresh)))
    return segment


def swapped(a: Segment, b: Segment, nodes: Sequence[ChainNode], max_age_s: float | None = None) -> Segment:
    """Swap at the node joining a (ending there) and b (starting there), both made in parallel."""
    if a.right != b.left:
        raise ValueError(f"segments {a.left}-{a.right} and {b.left}-{b.right} do not meet")
    ta, tb = a.mean_time_s, b.mean_time_s
    if not (math.isfinite(ta) and math.isfinite(tb)):  # a segment that never holds a pair
        return Segment(a.left, b.right, float("inf"), 0.0)
    both_ready = ta + tb - ta * tb / (ta + tb)  # E[max] of two exponential times
    a_first = tb / (ta + tb)  # P(a is ready before b)
    middle = nodes[a.right]
    decay_a = nodes[a.left].decoherence_rate + middle.decoherence_rate
    decay_b = middle.decoherence_rate + nodes[b.right].decoherence_rate
    factor_a, used_a = werner.memory_wait(tb, decay_a, max_age_s)  # a waits for the rest of b
    factor_b, used_b = werner.memory_wait(ta, decay_b, max_age_s)
    used = a_first * used_a + (1 - a_first) * used_b
    if used == 0 or middle.swap_success == 0:
        return Segment(a.left, b.right, float("inf"), 0.0)
    factor = (a_first * used_a * factor_a + (1 - a_first) * used_b * factor_b) / used
    return Segment(a.left, b.right, both_ready / (middle.swap_success * used),
                   a.w * b.w * factor * middle.swap_fidelity)


def evaluate_chain(nodes: Sequence[ChainNode], links: Sequence[ChainLink], swap_order: Sequence[int],
                   purification_rounds: Sequence[int] | int = 0, max_age_s: float | None = None) -> Segment:
    """The end-to-end segment (mean time per pair, mean Werner parameter) of the chain of
    `links` between `nodes` (one more than links), swapping at the inner node indices of
    `swap_order` in that order, after `purification_rounds` on each link (one number for
    all, or one per link)."""
    if len(nodes) != len(links) + 1:
        raise ValueError(f"a chain of {len(links)} links has {len(links) + 1} nodes, not {len(nodes)}")
    if sorted(swap_order) != list(range(1, len(links))):
        raise ValueError(f"the swap order must name each inner node 1..{len(links) - 1} once, got {list(swap_order)}")
    rounds = [purification_rounds] * len(links) if isinstance(purification_rounds, int) else list(purification_rounds)
    if len(rounds) != len(links) or min(rounds, default=0) < 0:
        raise ValueError("give one purification round count >= 0 per link")
    segments = {}
    for i, (link, r) in enumerate(zip(links, rounds)):
        elementary = Segment(i, i + 1, 1 / link.rate if link.rate > 0 else float("inf"),
                             werner.werner_parameter(link.fidelity))
        segments[i] = purified_link(elementary, r, nodes, max_age_s)
    ending_at = {s.right: s for s in segments.values()}
    for k in swap_order:
        a, b = ending_at.pop(k), segments.pop(k)
        joined = swapped(a, b, nodes, max_age_s)
        segments[joined.left] = joined
        ending_at[joined.right] = joined
    (result,) = segments.values()
    return result


def balanced_order(link_count: int) -> list[int]:
    """Nested (doubling) swap order: the middle node of each half swaps after the halves."""
    def order(low: int, high: int) -> list[int]:  # segment between nodes low and high
        if high - low < 2:
            return []
        middle = (low + high) // 2
        return order(low, middle) + order(middle, high) + [middle]
    return order(0, link_count)
