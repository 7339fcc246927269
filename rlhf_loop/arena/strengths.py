"""Strength of each policy version from blind human rankings: Chatbot-Arena style, tie-aware.

An arena ranking shows K responses to one prompt, each written by some policy version that the
annotator is not told, and ranks them with ties (rank 1 = best, equal ranks = a tie). Here a
ranking is a sequence of ``(version, rank)``, one per response; several may share a version.
Strengths are Davidson log-strengths with the base version (the anchor) at 0 and a learnt tie
parameter ν (the model, its tiny prior and the fit are in ``rlhf_loop.arena.fit``). A version no
chain of cross-version pairs links to the anchor is reported as None (no evidence), never as 0.

What an operator reads is a win rate, P(beats the reference) + ½·P(tie), with a bootstrap interval
and the pairs it rests on. The bootstrap resamples whole rankings (``rlhf_loop.arena.resample``)
and refits strengths and ν on every resample, all resamples as one batch: resample s weighs
ranking r by how often it was drawn, the same likelihood as fitting the drawn list, so the batch
equals a loop of ``fit_strengths`` over the same draws. Win-rate intervals come from the same
resamples, so a strength and a win rate never disagree about the data they saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_loop.arena.fit import (
    Ranking,
    batched_log_probs,
    count_pairs,
    davidson_outcomes,
    evidence,
    fit_weighted,
    project_log_probs,
)
from rlhf_loop.arena.resample import percentile_interval, resample_counts, resample_indices

BETTER, WORSE, NO_EVIDENCE = "better", "worse", "no evidence yet"
REFERENCE = "reference"  # the reference's own row: it is not compared with itself
# The percentile bootstrap is too narrow on small samples (a handful of pairs that all went one
# way gives a zero-width interval), so no verdict is read from fewer pairs than this.
MIN_PAIRS = 20
_ROUNDING = 1e-9


@dataclass(frozen=True)
class StrengthFit:
    """Maximum-likelihood (plus tiny prior) strengths; None marks a version without evidence."""

    strengths: dict[int, float | None]
    log_nu: float


@dataclass(frozen=True)
class BootstrapStrengths:
    """Point fit, percentile intervals and every resample's fit (to interval-estimate win rates)."""

    point: StrengthFit
    intervals: dict[int, tuple[float, float] | None]
    versions: tuple[int, ...]  # column order of ``samples``
    samples: np.ndarray  # [resamples, versions]; NaN where a resample links a version to nothing
    log_nu: np.ndarray  # [resamples]
    evidence: dict[int, tuple[int, int]]  # version -> (cross-version pairs, rankings holding one)


@dataclass(frozen=True)
class DirectCounts:
    """Pairs in which a met b directly, from a's side, and how many rankings held them."""

    wins: int
    ties: int
    losses: int
    rankings: int

    @property
    def pairs(self) -> int:
        return self.wins + self.ties + self.losses


@dataclass(frozen=True)
class VersionResult:
    """One row of the arena table: a figure never comes without the evidence under it."""

    version: int
    strength: float | None  # log-strength against the anchor; None: no evidence
    interval: tuple[float, float] | None
    win_rate: float | None  # against the reference: P(win) + ½·P(tie)
    win_rate_interval: tuple[float, float] | None
    pairs: int  # cross-version pairs this version took part in, against any version
    rankings: int  # rankings holding at least one of those pairs
    direct: DirectCounts | None  # pairs against the reference itself; None on its own row
    verdict: str  # BETTER, WORSE or NO_EVIDENCE; REFERENCE on the reference's own row


def fit_strengths(rankings: Sequence[Ranking], anchor: int) -> StrengthFit:
    """Log-strength per version (anchor 0) and log ν, by maximum likelihood plus the tiny prior."""
    pairs = count_pairs(rankings, anchor)
    theta, log_nu = fit_weighted(pairs, np.ones((1, len(rankings))), project_log_probs)
    fitted = zip(pairs.versions, theta[0], strict=True)
    strengths = {v: None if np.isnan(t) else float(t) for v, t in fitted}
    return StrengthFit(strengths, float(log_nu[0]))


def bootstrap_strengths(
    rankings: Sequence[Ranking], anchor: int, samples: int = 1000, seed: int = 0
) -> BootstrapStrengths:
    """Point fit plus percentile intervals from refitting ``samples`` resamples of the rankings.

    A version without evidence in the full data gets no interval; one that loses its link to the
    anchor in some resamples is NaN there and its interval reads the other resamples.
    """
    pairs = count_pairs(rankings, anchor)
    weights = resample_counts(resample_indices(len(rankings), samples, seed), len(rankings))
    theta, log_nu = fit_weighted(pairs, weights, batched_log_probs)
    point = fit_strengths(rankings, anchor)
    intervals = {
        v: None if point.strengths[v] is None else percentile_interval(theta[:, i])
        for i, v in enumerate(pairs.versions)
    }
    return BootstrapStrengths(point, intervals, pairs.versions, theta, log_nu, evidence(pairs))


def win_rate(
    a: float | np.ndarray, b: float | np.ndarray, log_nu: float | np.ndarray
) -> float | np.ndarray:
    """P(a beats b) + ½·P(tie) under Davidson: the share of pairs a would take, a tie split.

    A share on the scale annotators see, 0.5 = as good as b, where a strength gap means little
    to them. It depends on ν as well (more ties pull it towards 0.5), so resamples use their own
    ν. Arrays broadcast: one value per resample.
    """
    gap = torch.as_tensor(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    log_win, _, log_tie = davidson_outcomes(gap, torch.as_tensor(np.asarray(log_nu, np.float64)))
    rate = (log_win.exp() + 0.5 * log_tie.exp()).numpy()
    return float(rate) if rate.ndim == 0 else rate


def win_rate_interval(boot: BootstrapStrengths, a: int, b: int) -> tuple[float, float] | None:
    """Percentile interval of a's win rate over b from the same resamples as the strengths."""
    ia, ib = boot.versions.index(a), boot.versions.index(b)
    rates = win_rate(boot.samples[:, ia], boot.samples[:, ib], boot.log_nu)
    return percentile_interval(np.asarray(rates))


def direct_comparisons(rankings: Sequence[Ranking], a: int, b: int) -> DirectCounts:
    """Pairs where a response of a met one of b in the same ranking, counted from a's side."""
    if a == b:
        raise ValueError(f"version {a} cannot be compared with itself")
    wins = ties = losses = involved = 0
    for ranking in rankings:
        outcomes = [
            (rank_a > rank_b) - (rank_a < rank_b)  # -1: a ranked better, 0 tie, 1 a worse
            for va, rank_a in ranking
            if va == a
            for vb, rank_b in ranking
            if vb == b
        ]
        wins, ties, losses = (
            wins + outcomes.count(-1),
            ties + outcomes.count(0),
            losses + outcomes.count(1),
        )
        involved += bool(outcomes)
    return DirectCounts(wins, ties, losses, involved)


def verdict(interval: tuple[float, float] | None, min_pairs: int, pairs: int) -> str:
    """Say "better" or "worse" only when the win-rate interval excludes 0.5 on enough pairs.

    ``min_pairs`` guards the bootstrap itself: with a handful of pairs that all went one way every
    resample agrees, and the interval collapses to a point that proves nothing.
    """
    if interval is None or pairs < min_pairs:
        return NO_EVIDENCE
    # rounding: all-tie data fits a win rate of 0.5 to within 1e-12, either side of it
    if interval[0] > 0.5 + _ROUNDING:
        return BETTER
    if interval[1] < 0.5 - _ROUNDING:
        return WORSE
    return NO_EVIDENCE


def _row(
    boot: BootstrapStrengths,
    rankings: Sequence[Ranking],
    version: int,
    reference: int,
    min_pairs: int,
) -> VersionResult:
    """One version's row; the reference's own row has no win rate and no direct count."""
    strength, ref_strength = boot.point.strengths[version], boot.point.strengths.get(reference)
    pairs, involved = boot.evidence[version]
    is_reference = version == reference
    rate = interval = None
    if not is_reference and strength is not None and ref_strength is not None:
        rate = win_rate(strength, ref_strength, boot.point.log_nu)
        interval = win_rate_interval(boot, version, reference)
    return VersionResult(
        version=version,
        strength=strength,
        interval=boot.intervals[version],
        win_rate=rate,
        win_rate_interval=interval,
        pairs=pairs,
        rankings=involved,
        direct=None if is_reference else direct_comparisons(rankings, version, reference),
        verdict=REFERENCE if is_reference else verdict(interval, min_pairs, pairs),
    )


def version_results(
    rankings: Sequence[Ranking],
    anchor: int,
    reference: int | None = None,
    min_pairs: int = MIN_PAIRS,
    samples: int = 1000,
    seed: int = 0,
) -> list[VersionResult]:
    """One row per version seen, in version order, win rates against ``reference`` (the anchor).

    The verdict counts all of a version's cross-version pairs, not only those against the
    reference: the model links the two through every version they met, and the interval already
    widens when that link is thin.
    """
    reference = anchor if reference is None else reference
    boot = bootstrap_strengths(rankings, anchor, samples, seed)
    return [_row(boot, rankings, version, reference, min_pairs) for version in boot.versions]
