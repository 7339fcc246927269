"""Arena statistics on plain data: version strengths, reward-model accuracy, degeneration."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from rlhf_loop.arena import fit
from rlhf_loop.arena.accuracy import (
    AccuracyEvidence,
    accuracy_interval,
    enough_evidence,
    passes_gate,
    rankings_needed,
)
from rlhf_loop.arena.degeneration import (
    VersionSignal,
    length_correlation,
    overoptimisation_warning,
    proxy_disagreement,
    repeated_ngram_share,
)
from rlhf_loop.arena.resample import resample_indices
from rlhf_loop.arena.strengths import (
    BETTER,
    NO_EVIDENCE,
    REFERENCE,
    WORSE,
    DirectCounts,
    bootstrap_strengths,
    direct_comparisons,
    fit_strengths,
    verdict,
    version_results,
    win_rate,
    win_rate_interval,
)
from rlhf_loop.reward.losses import davidson_log_probs


def random_world(rng: np.random.Generator, n_rankings: int, n_versions: int) -> list:
    """Rankings of 2-4 responses from random versions (repeats allowed), ranks with ties."""
    strength = rng.normal(0.0, 0.7, n_versions)
    rankings = []
    for _ in range(n_rankings):
        versions = rng.integers(0, n_versions, rng.integers(2, 5))
        # coarse rounding of noisy scores makes ties common, as with real annotators
        score = np.round(strength[versions] + rng.gumbel(size=len(versions)))
        order = sorted(set(score), reverse=True)
        rankings.append(
            [(int(v), order.index(s) + 1) for v, s in zip(versions, score, strict=True)]
        )
    return rankings


def two_version_world(rng: np.random.Generator, n: int) -> list:
    """Version 2 against the base 1: win 0.6, tie 0.2, loss 0.2, so it takes 0.7 of the pairs."""
    outcomes = rng.choice(3, size=n, p=[0.6, 0.2, 0.2])
    ranks = {0: (1, 2), 1: (1, 1), 2: (2, 1)}  # (version 2's rank, version 1's rank)
    return [[(2, ranks[o][0]), (1, ranks[o][1])] for o in outcomes]


def pairs_of(wins: int, ties: int, losses: int) -> list:
    """Two-response rankings of version 1 against the base 0 with the given outcome counts."""
    return [[(1, 1), (0, 2)]] * wins + [[(1, 1), (0, 1)]] * ties + [[(1, 2), (0, 1)]] * losses


# --- strengths ----------------------------------------------------------------------------------


def test_batched_bootstrap_equals_a_loop_of_single_fits() -> None:
    rng = np.random.default_rng(3)
    rankings = random_world(rng, 80, 4)
    rankings += [[(4, 1), (int(v), 2)] for v in (0, 1, 2)]  # a rare version, absent from resamples
    boot = bootstrap_strengths(rankings, anchor=0, samples=40, seed=11)
    indices = resample_indices(len(rankings), 40, 11)
    for s, row in enumerate(indices):
        fit = fit_strengths([rankings[i] for i in row], anchor=0)
        for column, version in enumerate(boot.versions):
            expected = fit.strengths.get(version)
            got = boot.samples[s, column]
            if expected is None:
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-6)
        assert boot.log_nu[s] == pytest.approx(fit.log_nu, abs=1e-6)
    assert np.isnan(boot.samples[:, boot.versions.index(4)]).any()
    assert boot.point == fit_strengths(rankings, anchor=0)
    low, high = np.percentile(boot.samples[:, boot.versions.index(2)], [2.5, 97.5])
    assert boot.intervals[2] == pytest.approx((low, high), abs=1e-9)


def one_row_objective(
    problem: fit._Problem, counts: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fit's objective for one row, as a function of that row's parameters alone."""
    return lambda x: problem.objective(x[None], counts)[0]


def test_newton_derivatives_match_autograd_on_the_full_objective() -> None:
    # the fit's Hessian is assembled from per-pair curvatures; a wrong chain rule would only
    # slow Newton down, so check it against autograd's Hessian of the whole objective
    rankings = random_world(np.random.default_rng(3), 50, 5)
    pairs = fit.count_pairs(rankings, anchor=0)
    weights = np.random.default_rng(0).integers(0, 3, (3, len(rankings))).astype(float)
    counts = torch.from_numpy((pairs.counts.T @ weights.T).T.reshape(3, len(pairs.first), 3))
    first, second = torch.from_numpy(pairs.first), torch.from_numpy(pairs.second)
    x = torch.randn(
        3, len(pairs.versions), dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    for log_probs, rows in ((fit.batched_log_probs, 3), (fit.project_log_probs, 1)):
        problem = fit._Problem(log_probs, first, second, len(pairs.versions))
        grad, hessian = problem.derivatives(x[:rows], counts[:rows])
        for s in range(rows):
            objective = one_row_objective(problem, counts[s : s + 1])
            expected = torch.autograd.functional.hessian(objective, x[s])
            assert torch.allclose(hessian[s], expected, atol=1e-10)
            expected_grad = torch.autograd.functional.jacobian(objective, x[s])
            assert torch.allclose(grad[s], expected_grad, atol=1e-10)


def test_bootstrap_is_deterministic_per_seed() -> None:
    rankings = random_world(np.random.default_rng(0), 60, 3)
    first = bootstrap_strengths(rankings, anchor=0, samples=50, seed=5)
    again = bootstrap_strengths(rankings, anchor=0, samples=50, seed=5)
    other = bootstrap_strengths(rankings, anchor=0, samples=50, seed=6)
    assert np.array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)


def test_win_rate_is_the_project_davidson_model() -> None:
    a, b = np.array([0.3, -1.2, 2.0]), np.array([0.0, 0.5, 2.0])
    log_nu = np.array([-0.7, 0.4, 1.5])
    for i in range(3):
        log_win, log_tie = davidson_log_probs(
            torch.tensor(a[i]), torch.tensor(b[i]), torch.tensor(log_nu[i])
        )
        expected = log_win.exp() + 0.5 * log_tie.exp()
        assert win_rate(a, b, log_nu)[i] == pytest.approx(float(expected), abs=1e-12)
    assert win_rate(0.0, 0.0, 0.3) == pytest.approx(0.5)
    assert win_rate(1.0, 0.0, 0.3) + win_rate(0.0, 1.0, 0.3) == pytest.approx(1.0)


def test_two_versions_fit_the_closed_form() -> None:
    # With two players Davidson is saturated: ML outcome probabilities are the observed shares,
    # so θ = log(wins/losses) and log ν = log ties - ½ log(wins·losses).
    wins, ties, losses = 30, 12, 18
    fit = fit_strengths(pairs_of(wins, ties, losses), anchor=0)
    assert fit.strengths[1] == pytest.approx(math.log(wins / losses), abs=1e-3)
    assert fit.log_nu == pytest.approx(math.log(ties) - 0.5 * math.log(wins * losses), abs=1e-3)
    n = wins + ties + losses
    observed = (wins + 0.5 * ties) / n
    assert win_rate(fit.strengths[1], 0.0, fit.log_nu) == pytest.approx(observed, abs=1e-4)


def test_a_known_win_rate_of_070_is_found_and_called_better() -> None:
    rankings = two_version_world(np.random.default_rng(7), 600)
    boot = bootstrap_strengths(rankings, anchor=1, samples=1000, seed=0)
    point = win_rate(boot.point.strengths[2], 0.0, boot.point.log_nu)
    low, high = win_rate_interval(boot, 2, 1)
    assert point == pytest.approx(0.7, abs=0.03)
    assert low < 0.7 < high
    assert low > 0.5
    row = {r.version: r for r in version_results(rankings, anchor=1)}[2]
    assert row.verdict == BETTER
    assert row.pairs == 600 and row.rankings == 600 and row.direct.pairs == 600


def test_few_rankings_give_no_evidence_yet() -> None:
    rankings = two_version_world(np.random.default_rng(7), 8)
    boot = bootstrap_strengths(rankings, anchor=1, samples=1000, seed=0)
    interval = win_rate_interval(boot, 2, 1)
    assert interval[0] < 0.5 < interval[1]
    assert verdict(interval, min_pairs=0, pairs=8) == NO_EVIDENCE
    row = {r.version: r for r in version_results(rankings, anchor=1)}[2]
    assert row.verdict == NO_EVIDENCE and row.pairs == 8


def test_ties_only_give_a_win_rate_of_one_half() -> None:
    rankings = [[(0, 1), (1, 1), (2, 1)]] * 20
    boot = bootstrap_strengths(rankings, anchor=0, samples=200, seed=0)
    assert math.isfinite(boot.point.log_nu) and boot.point.log_nu > 3
    for version in (1, 2):
        assert win_rate(boot.point.strengths[version], 0.0, boot.point.log_nu) == pytest.approx(
            0.5, abs=1e-9
        )
        assert win_rate_interval(boot, version, 0) == pytest.approx((0.5, 0.5), abs=1e-9)


def test_a_version_that_always_wins_stays_finite() -> None:
    rankings = pairs_of(40, 0, 0) + [[(2, 1), (0, 2)], [(2, 2), (0, 1)], [(2, 1), (0, 1)]] * 10
    boot = bootstrap_strengths(rankings, anchor=0, samples=200, seed=0)
    strength = boot.point.strengths[1]
    assert math.isfinite(strength) and strength > boot.point.strengths[2] + 3
    assert all(math.isfinite(x) for x in boot.intervals[1])
    assert math.isfinite(boot.point.log_nu)
    assert 0.95 < win_rate(strength, 0.0, boot.point.log_nu) < 1.0


def test_versions_without_pairs_are_reported_without_evidence() -> None:
    rankings = [
        *pairs_of(10, 5, 10),
        [(5, 1)],  # shown alone
        [(6, 1), (6, 2)],  # only against itself
        [(7, 1), (8, 2)],  # 7 and 8 met, but nothing links them to the base
    ]
    fit = fit_strengths(rankings, anchor=0)
    assert [fit.strengths[v] for v in (5, 6, 7, 8)] == [None] * 4
    assert fit.strengths[1] is not None
    rows = {r.version: r for r in version_results(rankings, anchor=0, samples=100)}
    for version in (5, 6, 7, 8):
        row = rows[version]
        assert row.strength is None and row.interval is None
        assert row.win_rate is None and row.win_rate_interval is None
        assert row.verdict == NO_EVIDENCE
    assert (rows[5].pairs, rows[6].pairs, rows[7].pairs) == (0, 0, 1)
    assert rows[0].verdict == REFERENCE and rows[0].direct is None


def test_no_rankings_at_all() -> None:
    assert fit_strengths([], anchor=0).strengths == {0: None}
    [row] = version_results([], anchor=0, samples=10)
    assert row.strength is None and row.pairs == 0


def test_direct_comparisons_count_only_cross_version_pairs() -> None:
    rankings = [
        [(1, 1), (1, 2), (2, 1), (2, 3)],  # 1 vs 2: tie, win, loss, win; 1 vs 1 is no evidence
        [(1, 1), (3, 2)],  # no version 2
    ]
    assert direct_comparisons(rankings, 1, 2) == DirectCounts(2, 1, 1, 1)
    assert direct_comparisons(rankings, 2, 1) == DirectCounts(1, 1, 2, 1)
    boot = bootstrap_strengths(rankings, anchor=1, samples=10)
    assert boot.evidence[1] == (5, 2) and boot.evidence[2] == (4, 1)
    with pytest.raises(ValueError):
        direct_comparisons(rankings, 1, 1)


def test_verdict_needs_an_interval_clear_of_one_half_and_enough_pairs() -> None:
    assert verdict((0.55, 0.7), min_pairs=20, pairs=40) == BETTER
    assert verdict((0.3, 0.45), min_pairs=20, pairs=40) == WORSE
    assert verdict((0.45, 0.7), min_pairs=20, pairs=40) == NO_EVIDENCE
    assert verdict((0.55, 0.7), min_pairs=20, pairs=19) == NO_EVIDENCE
    assert verdict(None, min_pairs=0, pairs=40) == NO_EVIDENCE


@pytest.mark.slow
def test_bootstrap_of_1000_resamples_10_versions_2000_rankings_is_fast() -> None:
    rankings = random_world(np.random.default_rng(1), 2000, 10)
    start = time.perf_counter()
    boot = bootstrap_strengths(rankings, anchor=0, samples=1000, seed=0)
    assert time.perf_counter() - start < 2.0
    assert boot.samples.shape == (1000, 10)


# --- reward-model accuracy ----------------------------------------------------------------------


def test_accuracy_bootstrap_equals_a_loop() -> None:
    rng = np.random.default_rng(2)
    totals = rng.integers(0, 6, 50)
    per_ranking = [(float(rng.integers(0, t + 1)) - 0.5 * (t > 0), int(t)) for t in totals]
    evidence = accuracy_interval(per_ranking, samples=300, seed=4)
    informative = [(c, t) for c, t in per_ranking if t > 0]
    ratios = [
        sum(informative[i][0] for i in row) / sum(informative[i][1] for i in row)
        for row in resample_indices(len(informative), 300, 4)
    ]
    assert evidence.interval == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])), abs=1e-12)
    assert evidence.pairs == int(totals.sum()) and evidence.rankings == len(informative)
    assert evidence.accuracy == pytest.approx(
        sum(c for c, _ in informative) / sum(t for _, t in informative)
    )


def test_297_of_297_correct_clears_the_gate_with_a_high_lower_bound() -> None:
    evidence = accuracy_interval([(3, 3)] * 99)
    assert evidence.accuracy == 1.0 and evidence.pairs == 297 and evidence.rankings == 99
    assert evidence.interval[0] > 0.95 and evidence.lower_bound > 0.95
    assert passes_gate(evidence.lower_bound) and enough_evidence(evidence)


def test_19_pairs_at_037_contain_chance_and_are_too_few() -> None:
    evidence = accuracy_interval([(1, 3), (2, 3), (0, 3), (1, 3), (1, 3), (2, 4)])
    assert evidence.pairs == 19 and evidence.accuracy == pytest.approx(7 / 19)
    assert evidence.interval[0] < 0.5 < evidence.interval[1]
    assert evidence.interval[0] <= evidence.lower_bound < 0.5
    assert not passes_gate(evidence.lower_bound)
    assert not enough_evidence(evidence)


def test_a_wide_interval_is_not_enough_evidence_even_with_many_pairs() -> None:
    evidence = accuracy_interval([(2, 10), (9, 10), (3, 10), (10, 10)])
    assert evidence.pairs == 40
    assert evidence.interval[1] - evidence.interval[0] > 0.3
    assert not enough_evidence(evidence)


def test_no_pairs_give_no_figures() -> None:
    evidence = accuracy_interval([(0, 0), (0, 0)])
    assert evidence == AccuracyEvidence(None, None, 0, 0)
    assert not passes_gate(evidence.lower_bound) and not enough_evidence(evidence)


def test_rankings_needed_scales_the_measured_interval() -> None:
    # lower bound 0.45, 0.15 under 0.6, on 20 held-out rankings: 20·(0.15/0.1)² = 45 held-out,
    # 225 rankings at 20% held out, 125 more than the 100 there are
    assert rankings_needed(0.6, 0.45, 20, 0.2, existing_rankings=100) == 125
    assert rankings_needed(0.6, 0.45, 20, 0.2, existing_rankings=500) == 1  # never "0"
    assert rankings_needed(0.8, 0.45, 20, 0.2, 0) < rankings_needed(0.6, 0.45, 20, 0.2, 0)
    assert rankings_needed(0.5, 0.4, 20, 0.2, 0) is None
    assert rankings_needed(0.4, 0.3, 20, 0.2, 0) is None
    assert rankings_needed(None, 0.4, 20, 0.2, 0) is None
    with pytest.raises(ValueError):
        rankings_needed(0.7, 0.4, 20, 0.0, 0)


def test_rankings_needed_is_enough_most_of_the_time() -> None:
    """Measured on simulated held-out rankings (3 pairs each, true accuracy 0.65, pairs of one
    ranking correlated): after collecting the estimate, the gate passes in most trials."""
    rng = random.Random(0)

    def held_out(n: int) -> list[tuple[float, int]]:
        rows = []
        for _ in range(n):
            easy = rng.random() < 0.65  # a ranking's pairs tend to be all right or all wrong
            rows.append((float(sum(rng.random() < (0.85 if easy else 0.28) for _ in range(3))), 3))
        return rows

    estimated = passed = 0
    for trial in range(40):
        first = accuracy_interval(held_out(12), samples=500, seed=trial)
        if first.accuracy is None or first.accuracy <= 0.5 or passes_gate(first.lower_bound):
            continue  # nothing to estimate in this trial
        estimated += 1
        needed = rankings_needed(first.accuracy, first.lower_bound, 12, 0.2, 60)
        later = accuracy_interval(held_out(round((60 + needed) * 0.2)), samples=500, seed=trial)
        passed += passes_gate(later.lower_bound)
    assert estimated >= 10 and passed >= 0.6 * estimated  # measured: 12 of 16


# --- degeneration -------------------------------------------------------------------------------


def test_repeated_ngram_share_counts_repeats_of_earlier_ngrams() -> None:
    assert repeated_ngram_share(["one two three four five"]) == 0.0
    # trigrams: the-cat-the, cat-the-cat, then both again: 2 of 4 repeat
    assert repeated_ngram_share(["The cat the CAT the cat"]) == pytest.approx(0.5)
    assert repeated_ngram_share(["too short", "the cat the cat the cat", "a b c d"]) == 0.25
    assert repeated_ngram_share(["a a a"], n=1) == pytest.approx(2 / 3)
    assert repeated_ngram_share(["too short", ""]) is None


def test_length_correlation_is_spearman_or_none() -> None:
    assert length_correlation([0.1, 0.5, 0.2, 0.9], [10, 200, 30, 1000]) == pytest.approx(1.0)
    assert length_correlation([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert length_correlation([0.1, 0.2], [1, 2]) is None
    assert length_correlation([0.5, 0.5, 0.5], [1, 2, 3]) is None
    with pytest.raises(ValueError):
        length_correlation([1, 2, 3], [1, 2])


def rising_scores(win_rates: list[float], interval_width: float = 0.1) -> list[VersionSignal]:
    return [
        VersionSignal(v, 0.2 * v, w, (w - interval_width, w + interval_width))
        for v, w in enumerate(win_rates, start=1)
    ]


def test_overoptimisation_warns_when_scores_rise_and_humans_do_not() -> None:
    warning = overoptimisation_warning(rising_scores([0.5, 0.56, 0.58, 0.57]))
    assert warning is not None
    assert "version 2 to 4" in warning and "+0.400" in warning and "0.56 to 0.57" in warning


def test_overoptimisation_is_silent_when_humans_agree_or_evidence_is_missing() -> None:
    assert overoptimisation_warning(rising_scores([0.5, 0.55, 0.65, 0.75])) is None
    flat = [VersionSignal(v, 1.0, 0.5, (0.4, 0.6)) for v in range(4)]
    assert overoptimisation_warning(flat) is None
    assert overoptimisation_warning(rising_scores([0.5, 0.5])) is None
    missing = rising_scores([0.5, 0.56, 0.58])
    missing[-1] = VersionSignal(3, 5.0, None, None)
    assert overoptimisation_warning(missing) is None


def test_proxy_disagreement_needs_a_proxy_gain_and_people_preferring_the_parent() -> None:
    assert proxy_disagreement(3, 0.5, 2, (0.2, 0.4)) is not None
    assert proxy_disagreement(3, 0.05, 2, (0.2, 0.4)) is None  # the proxy barely moved
    assert proxy_disagreement(3, 0.5, 2, (0.4, 0.6)) is None  # people have not decided
    assert proxy_disagreement(3, 0.5, 2, None) is None  # no blind evidence: silent
    assert proxy_disagreement(3, None, 2, (0.2, 0.4)) is None
