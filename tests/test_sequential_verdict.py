"""People's verdict as a sequential test: its bar, its statistic, its error rate under many looks.

The error-rate tests read the verdict after every 16 simulated blind rankings, as the worker reads
it whenever rankings arrive; the bench (``bench/verdict_power.py``) runs more seeds and effects.
"""

from __future__ import annotations

import math

import pytest

from bench.verdict_power import (
    BASE_CORRECTNESS,
    first_verdict,
    interval_verdict,
    sequential_verdict,
)
from rlhf_loop.arena.sequential import (
    BOUNDARY_AT_BUDGET,
    boundary,
    net_preferences,
    sequential_evidence,
    z_score,
)

BUDGET = 512  # pairs: 128 blind rankings of two responses per version


def test_the_bar_is_steep_early_lowest_at_the_budget_and_higher_after_it() -> None:
    assert boundary(0, BUDGET) == math.inf
    bars = [boundary(pairs, BUDGET) for pairs in (64, 128, 256, 512)]
    assert bars == sorted(bars, reverse=True)
    assert bars[0] == pytest.approx(BOUNDARY_AT_BUDGET * math.sqrt(8))
    assert bars[-1] == pytest.approx(2.326, abs=1e-3)  # 4·(1 - Φ(c)) = 4%
    late = [boundary(pairs, BUDGET) for pairs in (513, 1024, 4096, 51200)]
    assert all(3.5 < bar < 4.0 for bar in late)  # the last 1%, spread over all later looks


def test_net_preference_counts_each_ranking_once_from_the_first_versions_side() -> None:
    # v1's responses ranked 2nd and 4th against v0's 1st and 3rd: one win, three losses
    mixed = [(0, 1), (0, 3), (1, 2), (1, 4)]
    tied = [(0, 1), (0, 1), (1, 1), (1, 1)]
    ahead = [(1, 1), (0, 2), (1, 1), (0, 2)]
    nets, pairs = net_preferences([mixed, tied, ahead, [(0, 1), (0, 2)]], 1, 0)
    assert nets == [-0.5, 0.0, 1.0] and pairs == 12  # the last ranking holds no v1
    with pytest.raises(ValueError, match="itself"):
        net_preferences([mixed], 1, 1)


def test_z_is_infinite_only_when_every_ranking_agrees() -> None:
    assert z_score([1.0] * 12) == math.inf and z_score([-0.5] * 12) == -math.inf
    assert z_score([0.0] * 12) == 0.0 and z_score([]) == 0.0
    assert z_score([1.0, -1.0] * 6) == pytest.approx(0.0)
    assert z_score([1.0, 0.0] * 8) == pytest.approx(0.5 / (math.sqrt(4 / 15) / 4))


def test_unanimous_rankings_decide_only_from_ten_rankings_on() -> None:
    ahead = [(1, 1), (0, 2), (1, 1), (0, 2)]
    assert sequential_evidence([ahead] * 9, 1, 0, BUDGET).verdict == "no evidence yet"
    decided = sequential_evidence([ahead] * 10, 1, 0, BUDGET)
    assert decided.verdict == "better" and decided.win_rate == 1.0
    assert sequential_evidence([ahead] * 10, 0, 1, BUDGET).verdict == "worse"


def _false_verdicts(rule, runs: int, most: int) -> float:
    said = [
        first_verdict(rule, BASE_CORRECTNESS, seed, 16, most, BUDGET)[1] for seed in range(runs)
    ]
    return sum(s != "no evidence yet" for s in said) / runs


def test_equal_versions_read_at_every_look_rarely_get_a_verdict() -> None:
    """Up to twice the budget, a look every 16 rankings: the sequential test stays near its 5%
    (at most 14 of 300 runs, a one-sided binomial bound), where re-reading a 95% interval does
    not (about 1 run in 5, 23% in the bench)."""
    sequential = _false_verdicts(sequential_verdict, 300, 256)
    assert sequential <= 14 / 300
    assert _false_verdicts(interval_verdict, 60, 256) > 0.10


def test_a_clear_gain_is_seen_within_the_budget() -> None:
    """+26 points of correctness (the live policy's 0.59 to 0.85): 'better' within 128 blind
    rankings in nearly every run; the reverse, 'worse'."""
    for gain, expected in ((0.26, "better"), (-0.26, "worse")):
        outcomes = [
            first_verdict(sequential_verdict, BASE_CORRECTNESS + gain, seed, 16, 128, BUDGET)
            for seed in range(40)
        ]
        assert sum(said == expected for _, said in outcomes) >= 36
