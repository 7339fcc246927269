"""Reward losses on whole rankings with ties: Davidson NLL, accuracy helpers, prompt-aware utility.

Every check here is on small tensors; the two learning checks fit free parameters (no model) so
that they show what the losses drive rewards towards, not what a network can represent.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_loop.reward.losses import (
    PerRankingLoss,
    davidson_log_probs,
    openness_to_utility,
    pair_structure,
    pairwise_accuracy,
    prompt_aware_loss,
    ranking_nll,
    rewards_from_scores,
    three_way_accuracy,
    tie_margin_from_nu,
    utility,
)

# Tiny tensors: thread start-up, not arithmetic, dominates on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- data helpers -------------------------------------------------------------------------------


def dense_ranks_with_ties(values: list[float], tie_width: float | None) -> list[int]:
    """Rank by value (1 = highest); values in the same bin of width tie_width tie."""
    keys = [math.floor(v / tie_width) if tie_width else v for v in values]
    order = {key: i + 1 for i, key in enumerate(sorted(set(keys), reverse=True))}
    return [order[key] for key in keys]


def random_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed K (1 to 6) padded to 6, ties from coarse integer ranks, one all-tie ranking."""
    kmax, rows = 6, []
    for k in (6, 5, 4, 3, 2, 1, 4):
        ranks = torch.randint(1, 4, (k,), generator=generator).tolist()
        rows.append(ranks + [0] * (kmax - k))
    rows.append([2, 2, 2, 0, 0, 0])  # every response tied
    rewards = torch.randn(len(rows), kmax, generator=generator, dtype=torch.float64)
    return rewards, torch.tensor(rows)


def brute_force_nll(rewards: torch.Tensor, ranks: torch.Tensor, nu: float) -> list[float]:
    """Davidson NLL per ranking with plain floats and math.exp, one pair at a time."""
    losses = []
    for r_row, k_row in zip(rewards.tolist(), ranks.tolist(), strict=True):
        present = [i for i, rank in enumerate(k_row) if rank > 0]
        terms = []
        for a, i in enumerate(present):
            for j in present[a + 1 :]:
                pi_i, pi_j = math.exp(r_row[i]), math.exp(r_row[j])
                denominator = pi_i + pi_j + nu * math.sqrt(pi_i * pi_j)
                if k_row[i] == k_row[j]:
                    terms.append(-math.log(nu * math.sqrt(pi_i * pi_j) / denominator))
                else:
                    winner = pi_i if k_row[i] < k_row[j] else pi_j
                    terms.append(-math.log(winner / denominator))
        losses.append(sum(terms) / len(terms) if terms else 0.0)
    return losses


def bradley_terry_nll(rewards: torch.Tensor, ranks: torch.Tensor) -> list[float]:
    """-log sigmoid(r_better - r_worse), mean over strict pairs; ties and padding skipped."""
    losses = []
    for r_row, k_row in zip(rewards.tolist(), ranks.tolist(), strict=True):
        terms = [
            -math.log(1.0 / (1.0 + math.exp(-(r_row[i] - r_row[j]))))
            for i, rank_i in enumerate(k_row)
            for j, rank_j in enumerate(k_row)
            if rank_i > 0 and rank_j > 0 and rank_i < rank_j
        ]
        losses.append(sum(terms) / len(terms) if terms else 0.0)
    return losses


# -- pair structure -----------------------------------------------------------------------------


def test_pair_structure_counts_each_pair_once_and_skips_padding() -> None:
    better, tie = pair_structure(torch.tensor([[2, 1, 2, 0]]))
    assert better[0].nonzero().tolist() == [[1, 0], [1, 2]]
    assert tie[0].nonzero().tolist() == [[0, 2]]


def test_pair_structure_rejects_negative_ranks() -> None:
    with pytest.raises(ValueError):
        pair_structure(torch.tensor([[1, -1]]))


# -- Davidson probabilities ---------------------------------------------------------------------


def test_davidson_outcomes_sum_to_one() -> None:
    r_i = torch.tensor([0.0, 2.0, -3.0, 10.0], dtype=torch.float64)
    r_j = torch.tensor([0.0, -1.0, 1.5, 9.0], dtype=torch.float64)
    for log_nu in (-2.0, 0.0, 1.5):
        win, tie = davidson_log_probs(r_i, r_j, torch.tensor(log_nu))
        loss, tie_back = davidson_log_probs(r_j, r_i, torch.tensor(log_nu))
        torch.testing.assert_close(win.exp() + loss.exp() + tie.exp(), torch.ones_like(r_i))
        torch.testing.assert_close(tie, tie_back)


def test_tie_probability_at_equal_rewards_is_nu_over_two_plus_nu() -> None:
    nu = 3.0
    _, log_p_tie = davidson_log_probs(torch.tensor(0.7), torch.tensor(0.7), math.log(nu))
    assert log_p_tie.exp().item() == pytest.approx(nu / (2 + nu))


# -- ranking NLL --------------------------------------------------------------------------------


def test_ranking_nll_matches_brute_force_pair_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    rewards, ranks = random_batch(generator)
    for nu in (0.3, 1.0, 4.0):
        result = ranking_nll(rewards, ranks, torch.tensor(math.log(nu), dtype=torch.float64))
        expected = brute_force_nll(rewards, ranks, nu)
        torch.testing.assert_close(result.loss, torch.tensor(expected, dtype=torch.float64))
        k_per_ranking = (ranks > 0).sum(dim=1)
        assert result.has_pairs.tolist() == (k_per_ranking >= 2).tolist()


def test_nu_zero_is_exactly_bradley_terry_on_strict_pairs() -> None:
    generator = torch.Generator().manual_seed(1)
    rewards, ranks = random_batch(generator)
    expected = torch.tensor(bradley_terry_nll(rewards, ranks), dtype=torch.float64)
    for log_nu in (None, torch.tensor(-math.inf, dtype=torch.float64)):
        result = ranking_nll(rewards, ranks, log_nu)
        torch.testing.assert_close(result.loss, expected)
    # the all-tie ranking has no strict pair left: excluded, not a zero pulling the mean down
    all_tie = ranking_nll(rewards, ranks, None).has_pairs[-1]
    assert not all_tie


def test_batch_mean_averages_only_rankings_with_pairs() -> None:
    result = PerRankingLoss(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([True, False, True]))
    assert result.batch_mean().item() == pytest.approx(2.0)
    nothing = PerRankingLoss(torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    assert nothing.batch_mean().item() == 0.0


def test_padding_values_never_reach_loss_or_gradient() -> None:
    rewards = torch.tensor([[0.5, -0.2, math.nan, math.inf]], requires_grad=True)
    ranks = torch.tensor([[1, 2, 0, 0]])
    loss = ranking_nll(rewards, ranks, torch.tensor(0.0)).batch_mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert rewards.grad is not None
    assert rewards.grad[0, 2:].tolist() == [0.0, 0.0]


def reward_grad(rewards: list[float], ranks: list[int], log_nu: float | None) -> torch.Tensor:
    r = torch.tensor([rewards], requires_grad=True)
    nu = None if log_nu is None else torch.tensor(log_nu)
    ranking_nll(r, torch.tensor([ranks]), nu).batch_mean().backward()
    assert r.grad is not None
    return r.grad[0]


def test_strict_pair_pushes_better_up_and_worse_down() -> None:
    for log_nu in (None, 0.0, 2.0):
        grad = reward_grad([0.3, 0.1], [1, 2], log_nu)
        assert grad[0] < 0 < grad[1]  # descent raises r_better, lowers r_worse


def test_tie_pulls_unequal_rewards_together() -> None:
    grad = reward_grad([1.0, -1.0], [1, 1], 0.0)
    assert grad[0] > 0 > grad[1]
    # and at equal rewards a tie is at its optimum
    assert reward_grad([0.4, 0.4], [1, 1], 0.0).abs().max() < 1e-7


def test_all_tie_ranking_is_finite_with_finite_gradients() -> None:
    rewards = torch.tensor([[0.2, 0.2, -0.5, 3.0]], requires_grad=True)
    log_nu = torch.tensor(-1.0, requires_grad=True)
    result = ranking_nll(rewards, torch.tensor([[1, 1, 1, 1]]), log_nu)
    result.batch_mean().backward()
    assert result.has_pairs.item()
    assert torch.isfinite(result.loss).all()
    assert rewards.grad is not None and torch.isfinite(rewards.grad).all()
    assert log_nu.grad is not None and torch.isfinite(log_nu.grad)


def test_huge_rewards_stay_finite() -> None:
    rewards = torch.tensor([[1e4, -1e4, 1e4, 1e4 - 0.5]], requires_grad=True)
    ranks = torch.tensor([[2, 1, 3, 3]])  # wrong order by 2e4, and a near tie at 1e4
    for log_nu in (None, torch.tensor(0.0)):
        loss = ranking_nll(rewards, ranks, log_nu).batch_mean()
        loss.backward()
        assert torch.isfinite(loss) and loss.item() > 1e3
        assert rewards.grad is not None and torch.isfinite(rewards.grad).all()
        rewards.grad = None


# -- learning checks ----------------------------------------------------------------------------

TRUE_REWARDS = [2.0, 1.0, 0.0, -1.0, -2.0]


def sampled_rankings(seed: int, tie_width: float | None, n: int = 48) -> torch.Tensor:
    """Annotators see 3 to 5 of the 5 items, judge noisy rewards; close ones tie if tie_width."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k = int(torch.randint(3, 6, (1,), generator=generator))
        shown = torch.randperm(5, generator=generator)[:k].tolist()
        noisy = {
            i: TRUE_REWARDS[i] + 0.7 * float(torch.randn(1, generator=generator)) for i in shown
        }
        ranks = dense_ranks_with_ties(list(noisy.values()), tie_width)
        row = [0] * 5
        for item, rank in zip(noisy, ranks, strict=True):
            row[item] = rank
        rows.append(row)
    return torch.tensor(rows)


def fit_items(ranks: torch.Tensor, steps: int = 300) -> tuple[torch.Tensor, float, list[float]]:
    """One free reward per item (shared by every ranking) and a learned log ν."""
    theta = torch.zeros(5, requires_grad=True)
    log_nu = torch.tensor(0.0, requires_grad=True)
    optimizer = torch.optim.Adam([theta, log_nu], lr=0.05)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ranking_nll(theta.expand(len(ranks), 5), ranks, log_nu).batch_mean()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return theta.detach(), log_nu.item(), history


def test_learning_recovers_order_and_ties_raise_nu() -> None:
    torch.manual_seed(0)
    with_ties = sampled_rankings(seed=3, tie_width=1.0)
    without_ties = sampled_rankings(seed=3, tie_width=None)
    assert (pair_structure(with_ties)[1].sum() > 20).item()
    theta, log_nu_ties, history = fit_items(with_ties)
    assert torch.argsort(theta, descending=True).tolist() == [0, 1, 2, 3, 4]
    assert history[-1] < 0.8 * history[0]
    _, log_nu_strict, _ = fit_items(without_ties)
    assert log_nu_ties > log_nu_strict + 2.0  # ν at least e² ≈ 7 times larger
    assert log_nu_ties > -1.0  # a real tie rate, not ν → 0


# -- accuracy helpers ---------------------------------------------------------------------------

ACC_REWARDS = torch.tensor([[3.0, 1.0, 2.0, 9.0], [0.5, 0.5, 0.0, 0.0]])
ACC_RANKS = torch.tensor([[1, 2, 2, 0], [1, 2, 0, 0]])


def test_pairwise_accuracy_excludes_ties_and_half_credits_equal_rewards() -> None:
    correct, total = pairwise_accuracy(ACC_REWARDS, ACC_RANKS)
    assert (correct.item(), total.item()) == (2.5, 3)
    wrong = torch.tensor([[1.0, 2.0]])
    assert pairwise_accuracy(wrong, torch.tensor([[1, 2]]))[0].item() == 0.0


@pytest.mark.parametrize(("margin", "expected"), [(0.0, 2), (0.5, 2), (1.5, 2), (2.5, 1)])
def test_three_way_accuracy_needs_the_right_outcome(margin: float, expected: int) -> None:
    # pairs: (0,1) gap 2 and (0,2) gap 1 are wins, (1,2) gap 1 a tie, second ranking a win at gap 0.
    # margin 0 and 0.5: both wins right, the tie and the gap-0 win wrong; 1.5: (0,2) is now called a
    # tie (wrong) and the tie right; 2.5: only the tie right
    correct, total = three_way_accuracy(ACC_REWARDS, ACC_RANKS, margin)
    assert (correct.item(), total.item()) == (expected, 4)


def test_tie_margin_is_where_tie_and_win_are_equally_likely() -> None:
    for nu in (1.5, 3.0, 20.0):
        log_nu = torch.tensor(math.log(nu), dtype=torch.float64)
        margin = tie_margin_from_nu(log_nu)
        assert margin == pytest.approx(2 * math.log(nu))
        gaps = torch.tensor([margin - 1e-3, margin, margin + 1e-3], dtype=torch.float64)
        win, tie = davidson_log_probs(gaps, torch.zeros_like(gaps), log_nu)
        loss, _ = davidson_log_probs(torch.zeros_like(gaps), gaps, log_nu)
        assert tie[0] > win[0] and tie[0] > loss[0]  # inside: a tie is the most likely outcome
        assert tie[1].item() == pytest.approx(win[1].item())
        assert win[2] > tie[2]
    for log_nu in (None, -math.inf, -0.5, 0.0):
        assert tie_margin_from_nu(log_nu) == 0.0
    # ν = 1: at equal rewards all three outcomes are 1/3, so a tie is never strictly the argmax
    win, tie = davidson_log_probs(torch.tensor(0.0), torch.tensor(0.0), 0.0)
    assert win.exp().item() == pytest.approx(1 / 3) and tie.exp().item() == pytest.approx(1 / 3)


# -- utilities ----------------------------------------------------------------------------------

KINDS = [("linear", 1.0), ("power", 0.5), ("neg_power", 1.0), ("neg_power", 2.0), ("log", 0.0)]


@pytest.mark.parametrize(("kind", "gamma"), KINDS)
def test_utility_is_finite_increasing_concave_on_minus_one_to_one(kind: str, gamma: float) -> None:
    x = torch.linspace(-0.999, 0.999, 2001, dtype=torch.float64, requires_grad=True)
    u = utility(x, kind, gamma)
    (slope,) = torch.autograd.grad(u.sum(), x)
    assert torch.isfinite(u).all() and torch.isfinite(slope).all()
    assert utility(torch.zeros(1, dtype=torch.float64), kind, gamma).item() == 0.0
    assert (slope > 0).all()
    assert (slope.diff() <= 1e-9).all()  # slope never rises: concave, C¹ through 0


def test_utility_shifted_forms_and_inverse_alias() -> None:
    x = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)
    eps = 0.1
    torch.testing.assert_close(utility(x, "linear"), x)
    torch.testing.assert_close(utility(x, "power", 0.5, eps), (x + eps) ** 0.5 - eps**0.5)
    torch.testing.assert_close(utility(x, "neg_power", 1.0, eps), 1 / eps - 1 / (x + eps))
    torch.testing.assert_close(utility(x, "log", 0.0, eps), torch.log(x + eps) - math.log(eps))
    torch.testing.assert_close(utility(-x, "inverse"), utility(-x, "neg_power", 1.0))
    with pytest.raises(ValueError):
        utility(x, "power", 1.5)
    with pytest.raises(ValueError):
        utility(x, "cubic")


def test_openness_maps_closed_to_linear_and_open_to_inverse() -> None:
    assert openness_to_utility("closed") == ("linear", 1.0)
    assert openness_to_utility("Open") == ("neg_power", 1.0)
    assert openness_to_utility(0.25) == ("power", 0.5)
    assert openness_to_utility(0.5) == ("log", 0.0)
    assert openness_to_utility(0.75) == ("neg_power", 0.5)
    with pytest.raises(ValueError):
        openness_to_utility(1.5)
    with pytest.raises(ValueError):
        openness_to_utility("vague")


# -- prompt-aware loss --------------------------------------------------------------------------


def test_prompt_aware_loss_per_ranking_kinds_match_single_kind_batches() -> None:
    generator = torch.Generator().manual_seed(5)
    scores = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    ranks = torch.tensor([[1, 2, 3, 4], [2, 1, 1, 0], [1, 1, 2, 3]])
    kinds, gammas = ["linear", "neg_power", "power"], [1.0, 2.0, 0.5]
    mixed = prompt_aware_loss(scores, ranks, kinds, gammas)
    for b, (kind, gamma) in enumerate(zip(kinds, gammas, strict=True)):
        alone = prompt_aware_loss(scores[b : b + 1], ranks[b : b + 1], [kind], [gamma])
        torch.testing.assert_close(mixed.loss[b : b + 1], alone.loss)
    assert mixed.has_pairs.all()


def test_prompt_aware_tie_pulls_scores_together_and_strict_pair_apart() -> None:
    for kind, gamma in KINDS:
        scores = torch.tensor([[1.0, -1.0]], requires_grad=True)
        prompt_aware_loss(scores, torch.tensor([[1, 1]]), [kind], [gamma]).batch_mean().backward()
        assert scores.grad is not None and scores.grad[0, 0] > 0 > scores.grad[0, 1]
        scores.grad = None
        prompt_aware_loss(scores, torch.tensor([[2, 1]]), [kind], [gamma]).batch_mean().backward()
        assert scores.grad[0, 0] > 0 > scores.grad[0, 1]  # mis-ordered: swap them


N_PER_TYPE, K = 40, 5


def synthetic_prompt_rankings(seed: int) -> torch.Tensor:
    """Closed prompts' true qualities are right/wrong (bimodal), open prompts' spread evenly; the
    annotators' rankings keep only the order, so both types look alike to a ranking loss."""
    generator = torch.Generator().manual_seed(seed)
    closed = (torch.rand(N_PER_TYPE, K, generator=generator) < 0.5).double()
    closed = closed + 0.05 * torch.rand(N_PER_TYPE, K, generator=generator)
    open_ended = torch.rand(N_PER_TYPE, K, generator=generator)
    quality = torch.cat([closed, open_ended])
    return quality.argsort(dim=1, descending=True).argsort(dim=1) + 1


def fit_scores(ranks: torch.Tensor, kinds: list[str], steps: int = 200) -> torch.Tensor:
    """Free scores per response, optimised under the given utilities; returns bounded rewards."""
    scores = (0.1 * torch.randn(ranks.shape)).requires_grad_()
    optimizer = torch.optim.Adam([scores], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        prompt_aware_loss(scores, ranks, kinds, [1.0] * len(kinds)).batch_mean().backward()
        optimizer.step()
    return rewards_from_scores(scores.detach())


def near_extremes(rewards: torch.Tensor) -> float:
    return ((rewards < 0.1) | (rewards > 0.9)).double().mean().item()


def gap_unevenness(rewards: torch.Tensor) -> float:
    """Std of the gaps between consecutive sorted rewards of a prompt, averaged over prompts."""
    return rewards.sort(dim=1).values.diff(dim=1).std(dim=1).mean().item()


def test_prompt_aware_utility_avoids_reward_collapse() -> None:
    torch.manual_seed(0)
    ranks = synthetic_prompt_rankings(seed=7)
    closed, open_ = slice(0, N_PER_TYPE), slice(N_PER_TYPE, 2 * N_PER_TYPE)

    aware = fit_scores(ranks, ["linear"] * N_PER_TYPE + ["neg_power"] * N_PER_TYPE)
    # closed prompts go to the two ends (4 of 5; the median response has no pull under U = x),
    # open prompts keep their three middle responses spread with near-even gaps
    assert near_extremes(aware[closed]) > 0.75
    assert near_extremes(aware[open_]) < 0.45
    assert gap_unevenness(aware[open_]) < 0.08 < 0.2 < gap_unevenness(aware[closed])
    mid = aware[open_].sort(dim=1).values[:, 1:4].mean(dim=0)
    torch.testing.assert_close(mid, torch.tensor([0.25, 0.5, 0.75]), atol=0.06, rtol=0)

    # one utility for every prompt: the order is all it sees, so both types get the same shape
    for kind in ("log", "linear"):
        same = fit_scores(ranks, [kind] * (2 * N_PER_TYPE))
        shape_closed = same[closed].sort(dim=1).values.mean(dim=0)
        shape_open = same[open_].sort(dim=1).values.mean(dim=0)
        torch.testing.assert_close(shape_closed, shape_open, atol=0.03, rtol=0)
        assert abs(near_extremes(same[closed]) - near_extremes(same[open_])) < 0.1
