"""The reward model's held-out accuracy as evidence: an interval and a count, not a bare number.

Accuracy is pairwise over strict pairs (ties excluded), as ``losses.pairwise_accuracy`` counts it
per held-out ranking: ``(correct, total)``, correct possibly holding half credits. 0.78 on 19 pairs
and 0.78 on 900 pairs are different claims; the interval says which one was made.

The interval is a percentile bootstrap over held-out *rankings* (``rlhf_loop.arena.resample``),
each resample's accuracy the ratio of its summed correct over its summed pairs, so a ranking with
many pairs weighs as much as its pairs and the pairs of one ranking move together. Rankings with
no strict pair (a single response, or all ties) carry no information about accuracy and are left
out before resampling, so every resample has pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlhf_loop.arena.resample import percentile_interval, resample_indices

# "Too few to mean anything": under 30 pairs the bootstrap interval itself is unreliable (too few
# distinct resamples, and the percentile method is too narrow on small samples), and an interval
# wider than 0.3 cannot tell a useful model (~0.7) from chance (0.5) whatever its centre.
MIN_PAIRS = 30
MAX_WIDTH = 0.3
# "Above chance" is a one-sided claim: its 95% bound is the 5th percentile. The two-sided
# interval's lower end (2.5th) would test at 97.5% and hold rounds back for nothing: on the
# demo it kept a reward model at 0.64 on 73 pairs (0.89 on correct-vs-wrong answers) waiting
# a whole iteration.
ONE_SIDED_PERCENTILE = 5.0


@dataclass(frozen=True)
class AccuracyEvidence:
    """Held-out pairwise accuracy with the evidence under it; figures None without pairs."""

    accuracy: float | None
    interval: tuple[float, float] | None
    pairs: int  # strict (informative) pairs
    rankings: int  # held-out rankings holding at least one strict pair
    lower_bound: float | None = None  # one-sided 95%: the 5th percentile of the resamples


def accuracy_interval(
    per_ranking: Sequence[tuple[float, int]], samples: int = 2000, seed: int = 0
) -> AccuracyEvidence:
    """Pairwise accuracy over held-out rankings with a 95% percentile bootstrap interval."""
    # step 1: keep the rankings that have a strict pair; the others say nothing about accuracy
    informative = [(c, t) for c, t in per_ranking if t > 0]
    if not informative:
        return AccuracyEvidence(None, None, 0, 0)
    correct, total = np.array(informative, dtype=np.float64).T
    # step 2: resample rankings with replacement; each resample's accuracy is a ratio of sums
    indices = resample_indices(len(informative), samples, seed)
    resampled = correct[indices].sum(axis=1) / total[indices].sum(axis=1)
    # step 3: the point estimate is the same ratio on all held-out rankings
    return AccuracyEvidence(
        accuracy=float(correct.sum() / total.sum()),
        interval=percentile_interval(resampled),
        pairs=int(total.sum()),
        rankings=len(informative),
        lower_bound=float(np.percentile(resampled, ONE_SIDED_PERCENTILE)),
    )


def enough_evidence(
    evidence: AccuracyEvidence, min_pairs: int = MIN_PAIRS, max_width: float = MAX_WIDTH
) -> bool:
    """False means "too few to mean anything": show the figure greyed, never as a result."""
    if evidence.interval is None or evidence.pairs < min_pairs:
        return False
    low, high = evidence.interval
    return high - low <= max_width


def passes_gate(lower_bound: float | None) -> bool:
    """The model beats chance on held-out rankings: its one-sided 95% lower bound is above
    0.5."""
    return lower_bound is not None and lower_bound > 0.5


def rankings_needed(
    accuracy: float | None,
    lower_bound: float,
    heldout_rankings: int,
    heldout_fraction: float,
    existing_rankings: int,
) -> int | None:
    """How many more rankings (all, not only held-out) would likely lift the lower bound over 0.5.

    Scaled from the bound measured, which already holds what a formula over pairs would miss
    (the pairs of one ranking move together, so 78 pairs can be worth far fewer): its distance
    below the accuracy shrinks as 1/sqrt(held-out rankings), so it falls under the margin over
    chance at n·(distance / margin)² held-out rankings. "Likely": a floor rather than a promise; at
    least 1, as it is asked only when the gate has not passed. None when the accuracy is at or
    below chance (or unknown): such a model gets past the gate with a better model, not more
    data of the same kind.
    """
    if accuracy is None or accuracy <= 0.5:
        return None
    if heldout_rankings <= 0 or not 0 < heldout_fraction <= 1:
        raise ValueError("heldout_rankings must be > 0 and heldout_fraction in (0, 1]")
    # step 1: held-out rankings at which the lower half-width equals the margin over chance
    half_width = max(accuracy - lower_bound, 0.0)
    heldout = heldout_rankings * (half_width / (accuracy - 0.5)) ** 2
    # step 2: all rankings that hold that many held-out ones, minus what exists already
    return max(1, math.ceil(heldout / heldout_fraction) - existing_rankings)
