"""Losses for training a reward model on whole rankings with ties (tensors in, tensors out).

A batch holds B rankings padded to Kmax responses: ``rewards[B, Kmax]`` is the model's scalar per
response and ``ranks[B, Kmax]`` the annotator's rank (1 = best, equal = tie, 0 = padding, so K may
differ within a batch). Every ranking contributes all C(K, 2) unordered pairs at once, as
InstructGPT did: K forward passes per ranking instead of two per pair, and all pairs of one ranking
in one loss term so that a ranking cannot be over-fitted pair by pair.

Why Davidson (1970) for ties, not Rao-Kupper (1967):

* Ties are a pure add-on. Davidson's P(i ≻ j | not a tie) is exactly Bradley-Terry's
  sigmoid(r_i - r_j), so strict pairs carry the same signal as in BT whatever ν is, and ν = 0 *is*
  BT. Rao-Kupper's threshold θ also shifts the win curve itself (P(i ≻ j) = sigmoid(d - log θ)).
* P(tie) peaks when rewards are equal and depends only on d = r_i - r_j; its odds against a win are
  log-linear, P(i ≻ j) / P(i ~ j) = exp(d / 2) / ν, which gives the tie margin in closed form.
* Closed form in log space: all three outcomes share one denominator, a logsumexp of three logits
  (0, -d, log ν - d/2). Rao-Kupper's tie probability is a difference of sigmoids, whose log
  cancels catastrophically for small θ.
* One readable parameter: P(tie | equal rewards) = ν / (2 + ν); ν = 1 gives one in three.

Averaging: each ranking's loss is the mean over *its* pairs, so rankings with different K weigh
alike; a ranking with no usable pair (K < 2, or only ties when ties are ignored) has loss 0 and
``has_pairs`` False. Losses therefore come back as a ``PerRankingLoss`` whose ``batch_mean()``
averages over the rankings that have pairs.

Prompt-aware utility (Song et al. 2023, arXiv:2305.17608, "Reward Collapse in Aligning Large
Language Models"): the ranking objective maximises sum over ordered pairs (i better than j) of
U(r_i - r_j) with bounded rewards r = sigmoid(score) in (0, 1) and U increasing and concave. With
one U for every prompt the optimum depends on the order only, so every prompt ends with the same
reward distribution ("reward collapse"). Choosing U per prompt fixes that: U(x) = x drives the
rewards of a closed-ended prompt to the two ends, U(x) = -1/x spreads an open-ended prompt's
rewards evenly, x^γ and -x^(-γ) lie in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

UTILITY_KINDS = ("linear", "power", "neg_power", "inverse", "log")
# The authors' code shifts utilities by 0.1 (U(x + 0.1) - U(0.1)) so that -1/x and log x stay finite
# at a zero gap; same default here.
DEFAULT_UTILITY_EPS = 0.1
OPENNESS_LABELS = {"closed": 0.0, "open": 1.0}


class PerRankingLoss(NamedTuple):
    """Loss per ranking plus which rankings had pairs: a plain mean over B would be diluted."""

    loss: Tensor  # [B], 0 where has_pairs is False
    has_pairs: Tensor  # [B] bool

    def batch_mean(self) -> Tensor:
        """Mean over rankings that have pairs; 0 (still in the graph) when none has."""
        weight = self.has_pairs.to(self.loss.dtype)
        return (self.loss * weight).sum() / weight.sum().clamp(min=1.0)


def pair_structure(ranks: Tensor) -> tuple[Tensor, Tensor]:
    """Which pairs of each ranking are strict wins and which are ties, as ``[B, Kmax, Kmax]``.

    better_mask[b, i, j]: i strictly beats j, both present. tie_mask[b, i, j]: tie with i < j only,
    so each tie is counted once like each strict pair is (a strict pair appears once, as i ≻ j).
    """
    if ranks.dim() != 2:
        raise ValueError(f"ranks must be [B, Kmax], got shape {tuple(ranks.shape)}")
    if bool((ranks < 0).any()):
        raise ValueError("ranks must be >= 0 (0 = padding)")
    present = ranks > 0
    both_present = present[:, :, None] & present[:, None, :]
    rank_i, rank_j = ranks[:, :, None], ranks[:, None, :]
    better_mask = both_present & (rank_i < rank_j)
    kmax = ranks.shape[1]
    upper = torch.ones(kmax, kmax, dtype=torch.bool, device=ranks.device).triu(diagonal=1)
    tie_mask = both_present & (rank_i == rank_j) & upper
    return better_mask, tie_mask


def _ties_ignored(log_nu: Tensor | float | None) -> bool:
    """ν = 0 (None or -inf): Davidson has no tie outcome left; ties must be skipped, not scored."""
    if log_nu is None:
        return True
    value = float(log_nu.detach()) if isinstance(log_nu, Tensor) else float(log_nu)
    if math.isnan(value) or value == math.inf:
        raise ValueError(f"log_nu must be finite or -inf, got {value}")
    return value == -math.inf


def davidson_log_probs(
    r_i: Tensor, r_j: Tensor, log_nu: Tensor | float | None
) -> tuple[Tensor, Tensor]:
    """log P(i ≻ j) and log P(i ~ j) under Davidson's model, elementwise and broadcast.

    Written in d = r_i - r_j rather than r_i, r_j: dividing numerator and denominator by π_i keeps
    two huge but close rewards (1e4 and 1e4 + 0.1) from losing their difference to rounding.
    ``log_nu`` None or -inf gives Bradley-Terry exactly, and log P(tie) = -inf.
    """
    # step 1: the reward gap, the only thing either probability depends on
    gap = r_i - r_j
    if _ties_ignored(log_nu):
        # ν = 0: P(i ≻ j) = π_i / (π_i + π_j) = sigmoid(d), plain Bradley-Terry
        log_p_win = F.logsigmoid(gap)
        return log_p_win, torch.full_like(log_p_win, -math.inf)
    log_nu = torch.as_tensor(log_nu, dtype=gap.dtype, device=gap.device)
    # step 2: the three outcomes' logits after dividing by π_i: win 0, loss -d, tie log ν - d/2
    #         (ν·sqrt(π_i π_j) / π_i = ν·exp(-d/2))
    tie_logit = log_nu - 0.5 * gap
    logits = torch.stack(torch.broadcast_tensors(torch.zeros_like(gap), -gap, tie_logit))
    # step 3: the shared denominator log(1 + e^-d + ν e^-d/2) without exponentiating rewards
    log_denominator = torch.logsumexp(logits, dim=0)
    # step 4: each outcome's log probability is its logit minus the log denominator
    return -log_denominator, tie_logit - log_denominator


def _mean_over_pairs(pair_terms: Tensor, n_pairs: Tensor) -> PerRankingLoss:
    """Divide each ranking's summed pair terms by its own pair count (InstructGPT's 1/C(K, 2))."""
    has_pairs = n_pairs > 0
    loss = pair_terms / n_pairs.clamp(min=1).to(pair_terms.dtype)
    return PerRankingLoss(loss=loss, has_pairs=has_pairs)


def _zero_padding(values: Tensor, ranks: Tensor) -> Tensor:
    """Padding may hold anything (nan from a masked head); keep it out of values and gradients."""
    return torch.where(ranks > 0, values, torch.zeros_like(values))


def ranking_nll(
    rewards: Tensor, ranks: Tensor, log_nu: Tensor | float | None = None
) -> PerRankingLoss:
    """Davidson negative log-likelihood of each ranking, averaged over that ranking's pairs.

    ``log_nu`` is a scalar (a learnable parameter or a fixed value). With ``log_nu`` None or -inf
    this is exactly Bradley-Terry over the strict pairs, ties ignored (not counted in the mean
    either): ν = 0 gives a tie probability 0, so scoring a tie would be an infinite loss. A ranking
    whose responses all tie then has no pairs; with ν > 0 it is a finite loss that pulls its
    rewards together.
    """
    better_mask, tie_mask = pair_structure(ranks)
    rewards = _zero_padding(rewards, ranks)
    # step 1: pairwise grid, r_i down the rows and r_j across the columns
    r_i, r_j = rewards[:, :, None], rewards[:, None, :]
    # step 2: log probabilities of "i wins" and "i ties j" for every pair at once
    log_p_win, log_p_tie = davidson_log_probs(r_i, r_j, log_nu)
    # step 3: strict pairs are scored by -log P(better ≻ worse)
    nll = torch.where(better_mask, -log_p_win, 0.0).sum(dim=(1, 2))
    n_pairs = better_mask.sum(dim=(1, 2))
    # step 4: ties by -log P(tie), unless ν = 0 and ties are ignored
    if not _ties_ignored(log_nu):
        nll = nll + torch.where(tie_mask, -log_p_tie, 0.0).sum(dim=(1, 2))
        n_pairs = n_pairs + tie_mask.sum(dim=(1, 2))
    # step 5: mean over the ranking's own pairs so rankings of different K weigh alike
    return _mean_over_pairs(nll, n_pairs)


def pairwise_accuracy(rewards: Tensor, ranks: Tensor) -> tuple[Tensor, Tensor]:
    """(correct, total) over strict pairs, ties excluded: the usual reward-model accuracy.

    Equal rewards on a strict pair earn half credit, so a constant model scores chance (0.5)
    rather than 0 or 1 depending on a tie-break. Sums over the batch, so holdout batches add up.
    """
    better_mask, _ = pair_structure(ranks)
    gap = rewards[:, :, None] - rewards[:, None, :]
    credit = (gap > 0).to(rewards.dtype) + 0.5 * (gap == 0).to(rewards.dtype)
    correct = torch.where(better_mask, credit, 0.0).sum()
    return correct, better_mask.sum()


def three_way_accuracy(
    rewards: Tensor, ranks: Tensor, tie_margin: float | Tensor
) -> tuple[Tensor, Tensor]:
    """(correct, total) over all pairs, predicting a tie when |r_i - r_j| < tie_margin.

    A strict pair counts only if the model predicts that same winner outside the margin; a tie
    only if the gap is inside it. Use ``tie_margin_from_nu`` to read the margin off the trained ν.
    """
    better_mask, tie_mask = pair_structure(ranks)
    gap = rewards[:, :, None] - rewards[:, None, :]
    predicted_tie = gap.abs() < tie_margin
    correct_strict = better_mask & ~predicted_tie & (gap > 0)
    correct_tie = tie_mask & predicted_tie
    correct = (correct_strict.sum() + correct_tie.sum()).to(rewards.dtype)
    return correct, better_mask.sum() + tie_mask.sum()


def tie_margin_from_nu(log_nu: Tensor | float | None) -> float:
    """Reward gap below which Davidson's most likely outcome is a tie: 2·log ν, or 0 if ν ≤ 1.

    Derivation, d = r_i - r_j >= 0: P(i ≻ j) / P(i ~ j) = π_i / (ν sqrt(π_i π_j)) = exp(d/2) / ν,
    so the tie beats the win iff d < 2 log ν; against the loss, P(j ≻ i) / P(i ~ j) = exp(-d/2)/ν
    < 1 holds already for every d >= 0 once ν > 1. At the margin P(tie) = P(win). With ν <= 1
    even equal rewards give P(tie) = ν/(2+ν) <= 1/(2+ν) = P(win), so a tie is never the argmax.
    """
    if log_nu is None:
        return 0.0
    value = float(log_nu.detach()) if isinstance(log_nu, Tensor) else float(log_nu)
    return 2.0 * max(value, 0.0)


def rewards_from_scores(scores: Tensor) -> Tensor:
    """Bounded rewards in (0, 1): the paper's utilities act on gaps in (-1, 1), not raw scores."""
    return torch.sigmoid(scores)


def _canonical_utility(kind: str, gamma: Tensor) -> tuple[str, Tensor]:
    """'inverse' is neg_power with γ = 1; check γ where the kind uses it."""
    if kind not in UTILITY_KINDS:
        raise ValueError(f"unknown utility kind {kind!r}; expected one of {UTILITY_KINDS}")
    if kind == "inverse":
        return "neg_power", torch.ones_like(gamma)
    if kind == "power" and not bool(((gamma > 0) & (gamma <= 1)).all()):
        raise ValueError("power utility needs 0 < gamma <= 1 (concave)")
    if kind == "neg_power" and not bool((gamma > 0).all()):
        raise ValueError("neg_power utility needs gamma > 0")
    return kind, gamma


def _shifted_utility(x: Tensor, kind: str, gamma: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """U(x + eps) - U(eps) for x >= 0, and its slope U'(eps) at x = 0."""
    if kind == "linear":
        return x, torch.ones_like(gamma)
    if kind == "power":
        return (x + eps) ** gamma - eps**gamma, gamma * eps ** (gamma - 1)
    if kind == "neg_power":
        return eps**-gamma - (x + eps) ** -gamma, gamma * eps ** (-gamma - 1)
    return torch.log1p(x / eps), torch.ones_like(gamma) / eps  # log


def utility(
    x: Tensor, kind: str, gamma: float | Tensor = 1.0, eps: float = DEFAULT_UTILITY_EPS
) -> Tensor:
    """Concave increasing utility of a reward gap x in (-1, 1), finite for every x.

    Kinds: "linear" x; "power" x^γ (0 < γ <= 1); "neg_power" -x^(-γ) (γ > 0; "inverse" is γ = 1);
    "log" log x (close to Bradley-Terry's log sigmoid). The pure forms blow up or are undefined at
    x <= 0, and gaps are negative whenever the model still mis-orders a pair. As in the paper's
    code (extended_log / extended_inv), U is shifted, U(x + eps) - U(eps), so U(0) = 0, and for
    x <= 0 continued by its tangent at 0, slope U'(eps): still increasing and concave, C¹, and
    a mis-ordered pair is pushed back at the steepest rate the utility has. ``gamma`` may be a
    tensor broadcasting against ``x`` (one γ per ranking).
    """
    gamma = torch.as_tensor(gamma, dtype=x.dtype, device=x.device)
    kind, gamma = _canonical_utility(kind, gamma)
    # where, not clamp: clamp passes the gradient on both sides at exactly 0, doubling the slope
    positive = torch.where(x > 0, x, 0.0)
    negative = torch.where(x > 0, 0.0, x)
    curve, slope = _shifted_utility(positive, kind, gamma, eps)
    return curve + slope * negative


def _utility_per_ranking(gap: Tensor, kinds: Sequence[str], gammas: Tensor, eps: float) -> Tensor:
    """Apply each ranking's own utility to its [Kmax, Kmax] gaps, one kind at a time."""
    out = torch.zeros_like(gap)
    for kind in sorted(set(kinds)):
        rows = torch.tensor([b for b, k in enumerate(kinds) if k == kind], device=gap.device)
        values = utility(gap[rows], kind, gammas[rows].view(-1, 1, 1), eps)
        out = out.index_put((rows,), values)
    return out


def prompt_aware_loss(
    scores: Tensor,
    ranks: Tensor,
    utility_kind_per_ranking: Sequence[str],
    gamma_per_ranking: Sequence[float] | Tensor,
    *,
    eps: float = DEFAULT_UTILITY_EPS,
    tie_weight: float = 1.0,
) -> PerRankingLoss:
    """Negative mean utility of each ranking's reward gaps, with a utility chosen per prompt.

    Scores (unbounded model outputs) become rewards sigmoid(score); the reward to use downstream is
    ``rewards_from_scores(scores)``. Strict pairs add U(r_better - r_worse). The paper has no ties;
    here a tie adds tie_weight · U(-|r_i - r_j|): its right gap is 0, so any gap is charged like a
    mis-ordered pair, at the utility's own slope U'(eps); tie_weight = 0 ignores ties. Utilities
    have different scales (-1/x is far steeper than x), so in a mixed batch open-ended prompts
    dominate the gradient, as in the paper's code.
    """
    batch = scores.shape[0]
    if len(utility_kind_per_ranking) != batch:
        raise ValueError(
            f"need one utility kind per ranking ({batch}), got {len(utility_kind_per_ranking)}"
        )
    better_mask, tie_mask = pair_structure(ranks)
    # step 1: bounded rewards, so the utility's optimum is a distribution on (0, 1)
    rewards = rewards_from_scores(_zero_padding(scores, ranks))
    # step 2: reward gap r_i - r_j for every pair
    gap = rewards[:, :, None] - rewards[:, None, :]
    gammas = torch.as_tensor(gamma_per_ranking, dtype=gap.dtype, device=gap.device).reshape(batch)
    # step 3: strict pairs, utility of the gap of better over worse
    utilities = _utility_per_ranking(gap, utility_kind_per_ranking, gammas, eps)
    objective = torch.where(better_mask, utilities, 0.0).sum(dim=(1, 2))
    n_pairs = better_mask.sum(dim=(1, 2))
    # step 4: ties, the same utility of the negated absolute gap
    if tie_weight > 0:
        tie_utilities = _utility_per_ranking(-gap.abs(), utility_kind_per_ranking, gammas, eps)
        objective = objective + tie_weight * torch.where(tie_mask, tie_utilities, 0.0).sum((1, 2))
        n_pairs = n_pairs + tie_mask.sum(dim=(1, 2))
    # step 5: maximise mean utility = minimise its negative, per ranking
    return _mean_over_pairs(-objective, n_pairs)


def openness_to_utility(openness: float | str) -> tuple[str, float]:
    """Map a prompt's openness (0 = closed, 1 = open, or those labels) to (utility kind, γ).

    One path through the family (x^γ - 1)/γ, whose γ -> 0 limit from either side is log x:
    0 -> linear (two-point rewards), (0, 0.5) -> power with γ = 1 - 2t, 0.5 -> log, (0.5, 1] ->
    neg_power with γ = 2t - 1, so 1 -> -1/x (even spread). Scaling U by 1/γ does not move the
    optimum, so the reward shape changes continuously along t; the loss scale does not (power
    gradients shrink as γ -> 0), which is why t near 0.5 trains slowly.
    """
    if isinstance(openness, str):
        label = openness.strip().lower()
        if label not in OPENNESS_LABELS:
            raise ValueError(f"openness label must be one of {sorted(OPENNESS_LABELS)}")
        openness = OPENNESS_LABELS[label]
    t = float(openness)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"openness must be in [0, 1], got {t}")
    if t == 0.0:
        return "linear", 1.0
    if t < 0.5:
        return "power", 1.0 - 2.0 * t
    if t == 0.5:
        return "log", 0.0
    return "neg_power", 2.0 * t - 1.0
