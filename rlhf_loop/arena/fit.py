"""The Davidson fit behind the arena strengths: pair tallies, the objective, batched Newton.

Model. Version v has a log-strength θ_v, the anchor (the base policy) fixed at θ = 0 so the others
read as "this much stronger than the base". Every pair of responses of *different* versions inside
one ranking is one Davidson (1970) comparison, the project's own tie model
(``rlhf_loop.reward.losses``), with one tie parameter ν learnt alongside the strengths. Pairs of
one version say nothing about versions and are skipped.

Fit. Maximum likelihood minus a tiny L2 prior, 1e-4·(Σθ² + (log ν)²), on the *summed*
log-likelihood (1e-4 of one pair's weight): without it a version that always wins goes to
θ = +∞, and data without ties (or only ties) send log ν to -∞ (+∞); with it they stay finite.
Each outcome's log probability is an affine logit minus a logsumexp of affine logits, so the
objective is convex in (θ, log ν), and with the prior strictly so: Newton's method with
backtracking from zero finds the one optimum, deterministically, in float64. Many weightings of
the same rankings (bootstrap resamples) are fitted as one batch, one row each.

Evidence. A strength is identified only when a chain of cross-version pairs links the version to
the anchor; any other version comes back NaN, for the caller to report as "no evidence".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import Tensor

from rlhf_loop.reward.losses import davidson_log_probs

Ranking = Sequence[tuple[int, int]]  # (version, rank) per response shown
PRIOR = 1e-4
_MAX_ITER = 200
_CONVERGED = 1e-16  # Newton decrement g·H⁻¹g (twice the predicted gain) below which a fit is done
_FULL_STEP = 1e-8  # decrement below which the full Newton step is taken unchecked
# (gap θ_first - θ_second [S, P], log ν [S]) -> log P(first wins), log P(second wins), log P(tie)
LogProbs = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class PairCounts:
    """Cross-version outcomes per ranking: all the evidence the fit sees.

    Only version pairs that met at least once get a column (a pair never seen adds nothing to the
    likelihood), and the tallies are sparse: a long lineage may hold many versions and many
    rankings, each ranking touching a few pairs.
    """

    versions: tuple[int, ...]  # anchor first, then the others sorted
    first: np.ndarray  # [P] index into versions of each pair's first (lower) version
    second: np.ndarray  # [P]
    counts: csr_matrix  # [R, 3P]: column 3p first wins, 3p + 1 second wins, 3p + 2 tie


def count_pairs(rankings: Sequence[Ranking], anchor: int) -> PairCounts:
    """Tally each ranking's cross-version pairs by outcome; same-version pairs are skipped."""
    others = sorted({v for ranking in rankings for v, _ in ranking} - {anchor})
    versions = (anchor, *others)
    column = {v: i for i, v in enumerate(versions)}
    # step 1: every cross-version pair as (ranking, lower index, higher index, outcome)
    seen = []
    for r, ranking in enumerate(rankings):
        shown = [(column[v], rank) for v, rank in ranking]
        for x, (i, rank_i) in enumerate(shown):
            for j, rank_j in shown[x + 1 :]:
                if i != j:
                    (lo, rank_lo), (hi, rank_hi) = sorted([(i, rank_i), (j, rank_j)])
                    outcome = 0 if rank_lo < rank_hi else 1 if rank_lo > rank_hi else 2
                    seen.append((r, lo, hi, outcome))
    # step 2: one column per outcome of each pair that met; repeated cells are summed
    met = sorted({(lo, hi) for _, lo, hi, _ in seen})
    pair_index = {pair: p for p, pair in enumerate(met)}
    rows = [r for r, _, _, _ in seen]
    cols = [3 * pair_index[lo, hi] + outcome for _, lo, hi, outcome in seen]
    counts = csr_matrix((np.ones(len(seen)), (rows, cols)), shape=(len(rankings), 3 * len(met)))
    first = np.array([lo for lo, _ in met], dtype=np.int64)
    second = np.array([hi for _, hi in met], dtype=np.int64)
    return PairCounts(versions, first, second, counts)


def project_log_probs(gap: Tensor, log_nu: Tensor) -> tuple[Tensor, ...]:
    """One fit through the project's ``davidson_log_probs`` (it takes a single ν)."""
    zero = torch.zeros_like(gap)
    log_win, log_tie = davidson_log_probs(gap, zero, log_nu[0])
    log_loss, _ = davidson_log_probs(zero, gap, log_nu[0])
    return log_win, log_loss, log_tie


def davidson_outcomes(gap: Tensor, log_nu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log P(win), P(loss), P(tie) for a gap d and a ν per element, both broadcast.

    The same three logits as ``davidson_log_probs``, (0, -d, log ν - d/2) over their logsumexp
    (a test pins the two together); that function reads ν as one Python float to spot ν = 0, so
    a batch of resamples, each with its own ν, needs this broadcast form.
    """
    # step 1: the tie's logit after dividing every outcome by π_first
    tie_logit = log_nu - 0.5 * gap
    # step 2: the shared log denominator log(1 + e^-d + ν e^-d/2)
    logits = torch.stack(torch.broadcast_tensors(torch.zeros_like(gap), -gap, tie_logit))
    log_denominator = torch.logsumexp(logits, dim=0)
    # step 3: each outcome's logit minus the denominator
    return -log_denominator, -gap - log_denominator, tie_logit - log_denominator


def batched_log_probs(gap: Tensor, log_nu: Tensor) -> tuple[Tensor, ...]:
    """Many fits at once, one ν per row."""
    return davidson_outcomes(gap, log_nu[:, None])


@dataclass(frozen=True)
class _Problem:
    """The penalised negative log-likelihood over x = (θ of all but the anchor, log ν), per row."""

    log_probs: LogProbs
    first: Tensor  # [P] long
    second: Tensor  # [P] long
    n_versions: int

    def gaps(self, x: Tensor) -> Tensor:
        """θ_first - θ_second per pair, the anchor's θ fixed at 0 (column 0)."""
        theta = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        return theta[:, self.first] - theta[:, self.second]

    def pair_nll(self, gap: Tensor, log_nu: Tensor, counts: Tensor) -> Tensor:
        """Each pair's term, [S, P]: the outcomes' log probabilities weighed by how often seen."""
        outcomes = torch.stack(self.log_probs(gap, log_nu), dim=-1)
        return -(counts * outcomes).sum(dim=-1)

    def objective(self, x: Tensor, counts: Tensor) -> Tensor:
        """Summed pair terms plus the tiny prior that keeps θ and log ν finite, [S]."""
        nll = self.pair_nll(self.gaps(x), x[:, -1], counts).sum(dim=1)
        return nll + PRIOR * (x**2).sum(dim=1)

    def derivatives(self, x: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Gradient ``[S, D]`` and Hessian ``[S, D, D]`` of the objective at x (D = V).

        A pair's term depends on its own gap and on log ν only, so autograd is asked for the
        curvature in (gap, log ν): two backward passes whatever the number of versions (a
        Hessian in θ straight from autograd costs one per version). The chain rule through
        gap = θ_first - θ_second then scatters it onto the versions.
        """
        v, first, second = self.n_versions, self.first, self.second
        gap = self.gaps(x).detach().requires_grad_()
        log_nu = x[:, -1].detach().requires_grad_()
        # step 1: first derivatives in every gap and in log ν
        total = self.pair_nll(gap, log_nu, counts).sum()
        d_gap, d_nu = torch.autograd.grad(total, (gap, log_nu), create_graph=True)
        # step 2: second derivatives; pair terms are separable, so the derivative of Σ_p d_gap[p]
        #         in gap[p] is pair p's own curvature
        (dd_gap,) = torch.autograd.grad(d_gap.sum(), gap, retain_graph=True)
        dd_gap_nu, dd_nu = torch.autograd.grad(d_nu.sum(), (gap, log_nu))
        # step 3: chain rule onto θ, ∂gap/∂θ = +1 at the first version and -1 at the second:
        #         gradient and cross terms at (first) - (second), curvature at the four cells
        grad_theta = _scatter(d_gap.detach(), first, second, v)
        theta_nu = _scatter(dd_gap_nu, first, second, v)
        same = torch.cat([first * v + first, second * v + second])
        across = torch.cat([first * v + second, second * v + first])
        theta_theta = _scatter(dd_gap.repeat(1, 2), same, across, v * v).view(-1, v, v)
        # step 4: assemble over x = (θ without the anchor's, log ν), plus the prior's 2·PRIOR
        grad = torch.cat([grad_theta[:, 1:], d_nu.detach()[:, None]], dim=1)
        hessian = torch.zeros_like(theta_theta)
        hessian[:, :-1, :-1] = theta_theta[:, 1:, 1:]
        hessian[:, :-1, -1] = hessian[:, -1, :-1] = theta_nu[:, 1:]
        hessian[:, -1, -1] = dd_nu
        return grad + 2 * PRIOR * x, hessian + 2 * PRIOR * torch.eye(v, dtype=x.dtype)


def _scatter(values: Tensor, plus: Tensor, minus: Tensor, size: int) -> Tensor:
    """Per-pair values ``[S, P]`` added at ``plus``, subtracted at ``minus``: ``[S, size]``."""
    out = values.new_zeros(values.shape[0], size)
    return out.index_add_(1, plus, values).index_add_(1, minus, -values)


def _backtrack(
    problem: _Problem, x: Tensor, counts: Tensor, step: Tensor, value: Tensor, decrement: Tensor
) -> Tensor:
    """Armijo step sizes per row: far from the optimum a full Newton step can overshoot."""
    size = torch.ones_like(value)
    with torch.no_grad():
        for _ in range(60):
            trial = problem.objective(x + size[:, None] * step, counts)
            # keep a size once the drop is a quarter of what the quadratic model predicts
            ok = (trial <= value - 0.25 * size * decrement) | (decrement < _FULL_STEP)
            if bool(ok.all()):
                break
            size = torch.where(ok, size, size / 2)
    return size


def _newton(problem: _Problem, counts: Tensor) -> Tensor:
    """Minimise every row's objective from zero; converged rows drop out of later iterations."""
    x = torch.zeros(counts.shape[0], problem.n_versions, dtype=torch.float64)
    active = torch.arange(counts.shape[0])
    for _ in range(_MAX_ITER):
        start, active_counts = x[active], counts[active]
        grad, hessian = problem.derivatives(start, active_counts)
        with torch.no_grad():
            value = problem.objective(start, active_counts)
        step = -torch.linalg.solve(hessian, grad)
        decrement = -(grad * step).sum(dim=1)
        size = _backtrack(problem, start, active_counts, step, value, decrement)
        x[active] = start + size[:, None] * step
        active = active[decrement > _CONVERGED]
        if active.numel() == 0:
            return x
    raise RuntimeError(f"strength fit did not converge in {_MAX_ITER} Newton steps")


def _linked_to_anchor(totals: np.ndarray, pairs: PairCounts) -> np.ndarray:
    """``[S, V]``: which versions a chain of cross-version pairs links to the anchor (column 0)."""
    samples, n_versions = totals.shape[0], len(pairs.versions)
    met = np.zeros((samples, n_versions, n_versions), dtype=np.int64)
    met[:, pairs.first, pairs.second] = totals > 0
    met |= met.transpose(0, 2, 1)
    # step 1: the anchor counts only if it met anyone; step 2: spread along pairs, V-1 hops at most
    reached = np.zeros((samples, n_versions), dtype=np.int64)
    reached[:, 0] = met[:, 0].any(axis=1)
    for _ in range(n_versions - 1):
        reached = reached | ((reached[:, None, :] @ met)[:, 0] > 0)
    return reached.astype(bool)


def fit_weighted(
    pairs: PairCounts, weights: np.ndarray, log_probs: LogProbs
) -> tuple[np.ndarray, ...]:
    """Fit one row per weighting of the rankings: θ ``[S, V]`` (NaN without evidence), log ν [S]."""
    n_pairs = len(pairs.first)
    # step 1: each row's outcome counts are its ranking weights times the per-ranking tallies
    counts = (pairs.counts.T @ weights.T).T.reshape(len(weights), n_pairs, 3)
    first, second = torch.from_numpy(pairs.first), torch.from_numpy(pairs.second)
    problem = _Problem(log_probs, first, second, len(pairs.versions))
    # step 2: Newton on (θ of every version but the anchor, log ν)
    x = _newton(problem, torch.from_numpy(counts)).numpy()
    theta = np.concatenate([np.zeros((len(x), 1)), x[:, :-1]], axis=1)
    # step 3: strengths not linked to the anchor are the prior's, not the data's: NaN
    linked = _linked_to_anchor(counts.sum(axis=2), pairs)
    return np.where(linked, theta, np.nan), x[:, -1]


def evidence(pairs: PairCounts) -> dict[int, tuple[int, int]]:
    """Per version: the cross-version pairs it took part in, and the rankings holding one."""
    result = {}
    for i, version in enumerate(pairs.versions):
        mine = np.flatnonzero((pairs.first == i) | (pairs.second == i))
        columns = (3 * mine[:, None] + np.arange(3)).ravel()
        per_ranking = np.asarray(pairs.counts[:, columns].sum(axis=1)).ravel()
        result[version] = (int(per_ranking.sum()), int((per_ranking > 0).sum()))
    return result
