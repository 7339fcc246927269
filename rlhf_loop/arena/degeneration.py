"""Cheap over-optimisation signals for a policy version's responses.

PPO maximises the reward model's score, not human preference; once it finds what the reward model
over-rates it climbs the score while humans stop seeing gains (Gao et al. 2022, "Scaling Laws
for Reward Model Overoptimization"). Typical symptoms are cheap to measure without a human:
looping text (repeated n-grams), and rewards that track length rather than content. Neither
proves anything alone; ``overoptimisation_warning`` puts the reward model's trend beside the
blind human win rate, the one figure a policy cannot game.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import spearmanr

WINDOW = 3
# In the reward model's raw score units; scores drift in scale between reward-model versions, so
# compare a history scored by one reward model and pass a margin that suits its scale.
SCORE_MARGIN = 0.1


class VersionSignal(NamedTuple):
    """One policy version in lineage order: the reward model's mean score and the human figures."""

    version: int
    reward_score: float
    win_rate: float | None  # blind human win rate against the base
    interval: tuple[float, float] | None  # its bootstrap interval


def _repeat_share(words: Sequence[str], n: int) -> float:
    """Share of a response's n-grams that repeat an earlier n-gram of the same response."""
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def repeated_ngram_share(texts: Sequence[str], n: int = 3) -> float | None:
    """Mean over responses of the share of word n-grams already seen earlier in that response.

    0 for text that never repeats a phrase, towards 1 for a loop ("the cat the cat the cat ...").
    Only *earlier* occurrences count, so the first use of a phrase is free and a response's
    share does not double-count. Repeats count within one response only: a policy reusing a
    stock phrase across responses is a different failure. Words are lower-cased and split
    on whitespace; responses with fewer than n words have no n-gram and are skipped. Averaged per
    response so one long ramble cannot outweigh many short answers. None without any eligible
    response.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shares = [_repeat_share(words, n) for t in texts if len(words := t.lower().split()) >= n]
    return float(np.mean(shares)) if shares else None


def length_correlation(scores: Sequence[float], lengths: Sequence[float]) -> float | None:
    """Spearman correlation of reward-model scores with response lengths.

    Near 1 suggests the reward model pays for length and PPO will learn to ramble. Rank-based
    so one extreme length does not dominate. None with fewer than 3 points or a constant side,
    where the correlation is undefined (scipy gives NaN), never reported as 0.
    """
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    if len(scores) < 3 or len(set(scores)) < 2 or len(set(lengths)) < 2:
        return None
    rho = float(spearmanr(scores, lengths).statistic)
    return None if math.isnan(rho) else rho


def overoptimisation_warning(
    history: Sequence[VersionSignal], window: int = WINDOW, margin: float = SCORE_MARGIN
) -> str | None:
    """Warning text when the reward model's score climbed but humans saw no gain, else None.

    Over the last ``window`` versions: the newest's score exceeds the oldest's by more than
    ``margin``, while the newest's human win rate is not measurably higher: its interval's low end
    is not above the oldest's point estimate. Silent (None) with fewer versions or without the
    human figures to compare: missing evidence is shown as such elsewhere, not as a warning.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if len(history) < window:
        return None
    oldest, newest = history[-window], history[-1]
    if oldest.win_rate is None or newest.win_rate is None or newest.interval is None:
        return None
    # step 1: did the reward model's score rise by more than the margin?
    score_rise = newest.reward_score - oldest.reward_score
    if score_rise <= margin:
        return None
    # step 2: did humans measurably prefer the newest more than the oldest?
    if newest.interval[0] > oldest.win_rate:
        return None
    low, high = newest.interval
    return (
        f"Possible reward over-optimisation: from version {oldest.version} to "
        f"{newest.version} the reward model's score rose by {score_rise:+.3f} "
        f"({oldest.reward_score:.3f} → {newest.reward_score:.3f}), while the blind human win rate "
        f"against the base went from {oldest.win_rate:.2f} to {newest.win_rate:.2f} "
        f"(95% interval {low:.2f}–{high:.2f}), no measurable gain."
    )


def round_proxy_gain(metrics: dict[str, Any]) -> float | None:
    """A round's reward-model score of its new version minus that of the version it started
    from (``reward_after - reward_before`` in the version's metrics): one model, one scale."""
    before, after = metrics.get("reward_before"), metrics.get("reward_after")
    return None if before is None or after is None else after - before


def proxy_disagreement(
    version: int,
    proxy_gain: float | None,
    parent: int | None,
    interval: tuple[float, float] | None,
    margin: float = SCORE_MARGIN,
) -> str | None:
    """Warning text when one round's reward model scored its version above the parent while
    people prefer the parent, else None.

    The gain is ``reward_after - reward_before`` of the round: the same reward model on the same
    held-out prompts, so unlike scores across rounds it is on one scale. A proxy that says
    "better" where blind people say "worse" (their win-rate interval against the parent wholly
    below 0.5) is the signature of a reward model being exploited, even one version deep.
    """
    if proxy_gain is None or interval is None or parent is None:
        return None
    if proxy_gain <= margin or interval[1] >= 0.5:
        return None
    return (
        f"Reward model and people disagree on version {version}: its round's reward model "
        f"scored it {proxy_gain:+.3f} above version {parent}, while people prefer version "
        f"{parent} (win rate interval {interval[0]:.2f}–{interval[1]:.2f}). The reward model is "
        "likely being exploited: rank more items like these before the next round."
    )
