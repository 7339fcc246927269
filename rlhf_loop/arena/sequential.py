"""People's verdict between two versions, safe to read after every new blind ranking.

A candidate is judged each time blind rankings come in. A 95% interval read again at every look
is wrong far more often than 5%: on two equal versions, looking after every 16 blind rankings up
to 192 gave a verdict in 23% of runs (``bench/verdict_power.py``). So the verdict here uses a
boundary for continuous monitoring, of O'Brien-Fleming shape. With t = pairs / budget (the
operator's ``eval_max_comparisons``), under no difference z·sqrt(t) moves as a Brownian path
W(t), and P(sup over [0, T] of |W| >= c·sqrt(T)) <= 4·(1 - Φ(c)) for any T. So:

- within the budget (t <= 1), |z| >= c0 / sqrt(t), with 4·(1 - Φ(c0)) = 4%: c0 = 2.33;
- past it, the normal-mixture boundary (Robbins), |z| >= sqrt((1 + ρ/t)·(ln(1 + t/ρ) +
  2·ln(1/0.01))) with ρ = 1/4: a path crosses it at any time at most 1% of the time (Ville's
  inequality on the mixture martingale), and with this ρ the bar stays near 3.6 from one to ten
  budgets. A live version keeps being checked against its parent (immediate adoption) with the
  total error still at most 5%, however often and however long the verdict is read.

Early looks need overwhelming evidence; at the budget the bar is 2.33, a little above the 1.96
of a single look.

The statistic is model-free: per blind ranking, the candidate's net share of its pairs against
the other version, (wins - losses) / pairs, and z = their mean over its standard error across
rankings. Rankings, not pairs, are the independent unit (the pairs of one ranking share a prompt
and an annotator's moment), so the error is cluster-robust without a bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from rlhf_loop.arena.fit import Ranking
from rlhf_loop.arena.strengths import BETTER, NO_EVIDENCE, WORSE

ALPHA = 0.05  # two-sided: the chance of any verdict, over all looks, between equal versions
ALPHA_IN_BUDGET = 0.04  # of it, spent before the budget; the rest on all looks after it
MIXTURE_SCALE = 0.25  # ρ, in budgets: where the late bar is flattest


def _crossing_bar(alpha: float) -> float:
    """c with 4·(1 - Φ(c)) = alpha: a Brownian path leaves ±c within [0, 1] at most that often."""
    return NormalDist().inv_cdf(1 - alpha / 4)


BOUNDARY_AT_BUDGET = _crossing_bar(ALPHA_IN_BUDGET)  # 2.326
MIN_RANKINGS = 10  # a mean and spread over fewer rankings is no evidence, however lopsided


@dataclass(frozen=True)
class SequentialEvidence:
    """a against b from the rankings holding both, and the bar it must clear at this point."""

    rankings: int
    pairs: int
    net: float  # mean over rankings of (wins - losses) / pairs, from a's side; 0 = even
    z: float  # net over its standard error; ±inf when every ranking said the same
    boundary: float  # |z| needed now

    @property
    def win_rate(self) -> float:
        """The net preference on the scale annotators read: a's share of pairs, ties halved."""
        return 0.5 + self.net / 2

    @property
    def verdict(self) -> str:
        if self.rankings < MIN_RANKINGS:
            return NO_EVIDENCE
        if self.z >= self.boundary:
            return BETTER
        if self.z <= -self.boundary:
            return WORSE
        return NO_EVIDENCE


def boundary(pairs: int, budget: int) -> float:
    """|z| a verdict needs after ``pairs`` blind pairs, ``budget`` being the operator's
    ``eval_max_comparisons`` (the spending is in the module docstring)."""
    if pairs <= 0:
        return math.inf
    t = pairs / budget
    if t <= 1:
        return BOUNDARY_AT_BUDGET / math.sqrt(t)
    rho, late = MIXTURE_SCALE, ALPHA - ALPHA_IN_BUDGET
    return math.sqrt((1 + rho / t) * (math.log(1 + t / rho) + 2 * math.log(1 / late)))


def net_preferences(rankings: Sequence[Ranking], a: int, b: int) -> tuple[list[float], int]:
    """Per ranking holding both versions, a's (wins - losses) / pairs against b; and all pairs."""
    if a == b:
        raise ValueError(f"version {a} cannot be compared with itself")
    nets, pairs = [], 0
    for ranking in rankings:
        # rank 1 is best: a's response wins a pair when its rank number is the smaller
        outcomes = [
            (rank_b > rank_a) - (rank_b < rank_a)
            for va, rank_a in ranking
            if va == a
            for vb, rank_b in ranking
            if vb == b
        ]
        if outcomes:
            nets.append(sum(outcomes) / len(outcomes))
            pairs += len(outcomes)
    return nets, pairs


def z_score(values: Sequence[float]) -> float:
    """Mean over standard error (sample spread); ±inf for a spread of 0 around a non-zero mean."""
    n = len(values)
    if n == 0:
        return 0.0
    mean = sum(values) / n
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    if spread == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / (spread / math.sqrt(n))


def sequential_evidence(
    rankings: Sequence[Ranking], a: int, b: int, budget: int
) -> SequentialEvidence:
    """How far people's blind rankings put a above (or below) b, and the bar at this point."""
    nets, pairs = net_preferences(rankings, a, b)
    net = sum(nets) / len(nets) if nets else 0.0
    return SequentialEvidence(len(nets), pairs, net, z_score(nets), boundary(pairs, budget))
