"""People's verdict between two versions, safe to read after every new blind ranking.

A candidate is judged each time blind rankings come in. A 95% interval read again at every look
is wrong far more often than 5%: on two equal versions, looking after every 16 blind rankings up
to 128 gave a verdict in 20% of runs (``bench/verdict_power.py``). So the verdict here uses a
boundary for continuous monitoring, of O'Brien-Fleming shape: with t = pairs / budget (the
operator's ``eval_max_comparisons``, capped at 1), it takes |z| >= c / sqrt(t). Under no
difference z·sqrt(t) moves as a Brownian path W(t), which crosses ±c before t = 1 with
probability at most 4·(1 - Φ(c)); c = 2.2414 makes that 5%, however often the verdict is read.
Early looks need overwhelming evidence, and at the budget the bar is 2.24, a little above the
1.96 of a single look.

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
BOUNDARY_AT_BUDGET = NormalDist().inv_cdf(1 - ALPHA / 4)  # 2.2414: P(sup |W| >= c) <= 4(1-Φ(c))
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
    """|z| a verdict needs after ``pairs`` of a ``budget``: c / sqrt(t), t = pairs / budget <= 1."""
    if pairs <= 0:
        return math.inf
    return BOUNDARY_AT_BUDGET / math.sqrt(min(1.0, pairs / budget))


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
