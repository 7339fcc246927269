"""The PPO math on small tensors: hand values, brute-force references, gradients, a bandit.

References here are written differently from the code under test (a double sum instead of the
backward recursion for GAE, torch.distributions for log-probs, numpy for statistics), so that a
shared mistake is unlikely to pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from rlhf_loop.ppo.math import (
    KL_KINDS,
    AdaptiveKL,
    FixedKL,
    RunningMoments,
    ema_update,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    minibatch_indices,
    normalise_scores,
    policy_loss,
    token_rewards,
    value_loss,
)

# Tiny tensors: thread start-up, not arithmetic, dominates on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- helpers ------------------------------------------------------------------------------------


def right_padded_mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def random_lengths(generator: torch.Generator, batch: int, length: int) -> list[int]:
    """Variable lengths including the extremes 1 and T."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator).tolist()
    lengths[0], lengths[-1] = 1, length
    return lengths


def with_garbage(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padding filled with NaN and inf: every function must ignore it."""
    garbage = torch.tensor([math.nan, math.inf, -math.inf], dtype=x.dtype).repeat(x.numel())
    return torch.where(mask, x, garbage[: x.numel()].view_as(x))


# -- masked statistics --------------------------------------------------------------------------


def test_masked_mean_and_var_match_numpy() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    mask = right_padded_mask([7, 3, 1, 5, 2], 7)
    picked = x[mask].numpy()
    dirty = with_garbage(x, mask)
    assert masked_mean(dirty, mask).item() == pytest.approx(picked.mean())
    assert masked_var(dirty, mask).item() == pytest.approx(picked.var(ddof=1))
    assert masked_var(dirty, mask, unbiased=False).item() == pytest.approx(picked.var())
    rows = masked_mean(dirty, mask, dim=1)
    expected = [x[i, : int(mask[i].sum())].mean().item() for i in range(5)]
    torch.testing.assert_close(rows, torch.tensor(expected, dtype=torch.float64))
    # A float 0/1 mask means the same as a bool one.
    assert masked_mean(dirty, mask.double()).item() == pytest.approx(picked.mean())


def test_masked_stats_with_one_or_no_element_are_finite() -> None:
    x = torch.tensor([[3.0, math.nan, 7.0]])
    one = torch.tensor([[True, False, False]])
    none = torch.zeros_like(one)
    assert masked_mean(x, one).item() == 3.0
    assert masked_var(x, one).item() == 0.0  # Bessel factor 1/0 avoided
    assert masked_var(x, one, unbiased=False).item() == 0.0
    assert masked_whiten(x, one).tolist() == [[0.0, 0.0, 0.0]]
    assert masked_whiten(x, one, shift_mean=False).tolist() == [[3.0, 0.0, 0.0]]
    assert masked_mean(x, none).item() == 0.0
    assert masked_var(x, none).item() == 0.0


def test_masked_whiten_gives_unit_variance_over_real_tokens_only() -> None:
    generator = torch.Generator().manual_seed(1)
    x = 5 + 3 * torch.randn(6, 9, generator=generator, dtype=torch.float64)
    mask = right_padded_mask([9, 4, 1, 6, 2, 8], 9)
    whitened = masked_whiten(with_garbage(x, mask), mask)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, rel=1e-6)
    assert (whitened[~mask] == 0).all()
    kept = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(x, mask).item())
    assert masked_var(kept, mask).item() == pytest.approx(1.0, rel=1e-6)


def test_masked_whiten_gradient_ignores_nan_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 4.0, math.nan]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0]])
    masked_whiten(x, mask)[0, 0].backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 3] == 0


# -- log-probabilities and entropy --------------------------------------------------------------


def test_logprobs_and_entropy_match_categorical() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(4, 6, 13, generator=generator, dtype=torch.float64)
    tokens = torch.randint(0, 13, (4, 6), generator=generator)
    dist = Categorical(logits=logits)
    for chunk_rows in (None, 1, 5, 6, 7, 100):
        got = logprobs_from_logits(logits, tokens, chunk_rows=chunk_rows)
        torch.testing.assert_close(got, dist.log_prob(tokens))
        torch.testing.assert_close(
            entropy_from_logits(logits, chunk_rows=chunk_rows), dist.entropy()
        )
    cooled = Categorical(logits=logits / 0.7)
    got = logprobs_from_logits(logits, tokens, temperature=0.7)
    torch.testing.assert_close(got, cooled.log_prob(tokens))
    torch.testing.assert_close(entropy_from_logits(logits, temperature=0.7), cooled.entropy())


def test_logprobs_of_sliced_logits_and_of_two_dimensional_input() -> None:
    """The trainer passes logits[:, prompt_len - 1 : -1], a non-contiguous view."""
    generator = torch.Generator().manual_seed(3)
    full = torch.randn(3, 10, 11, generator=generator)
    sliced = full[:, 3:-1]
    tokens = torch.randint(0, 11, (3, 6), generator=generator)
    expected = Categorical(logits=sliced).log_prob(tokens)
    torch.testing.assert_close(logprobs_from_logits(sliced, tokens, chunk_rows=4), expected)
    torch.testing.assert_close(logprobs_from_logits(sliced[0], tokens[0]), expected[0])


def test_logprob_and_entropy_gradients_pass_gradcheck() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 5), generator=generator)
    for chunk_rows in (None, 3):
        assert torch.autograd.gradcheck(
            lambda z, c=chunk_rows: logprobs_from_logits(z, tokens, temperature=0.8, chunk_rows=c),
            (logits,),
        )
        assert torch.autograd.gradcheck(
            lambda z, c=chunk_rows: entropy_from_logits(z, temperature=0.8, chunk_rows=c),
            (logits,),
        )


def test_bf16_logits_are_reduced_in_float32_without_a_full_float32_copy() -> None:
    generator = torch.Generator().manual_seed(5)
    batch, length, vocab = 4, 8, 512
    logits = (4 * torch.randn(batch, length, vocab, generator=generator)).bfloat16()
    logits.requires_grad_(True)
    tokens = torch.randint(0, vocab, (batch, length), generator=generator)
    reference_logits = logits.detach().float().requires_grad_(True)
    reference = Categorical(logits=reference_logits).log_prob(tokens)

    saved: list[tuple[torch.dtype, int]] = []

    def record(tensor: torch.Tensor) -> torch.Tensor:
        saved.append((tensor.dtype, tensor.numel()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        got = logprobs_from_logits(logits, tokens, chunk_rows=8)
        entropy = entropy_from_logits(logits, chunk_rows=8)
    assert got.dtype == torch.float32 and entropy.dtype == torch.float32
    torch.testing.assert_close(got, reference.detach(), atol=1e-5, rtol=1e-5)
    full = batch * length * vocab
    assert not [item for item in saved if item[0] == torch.float32 and item[1] >= full]

    got.sum().backward()
    reference.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), reference_logits.grad, atol=1e-2, rtol=1e-2)


def test_entropy_with_a_banned_token_is_finite() -> None:
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    assert entropy.item() == pytest.approx(math.log(2))
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()


# -- KL estimators ------------------------------------------------------------------------------


def test_kl_estimators_on_hand_values() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    log2 = math.log(2)
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(log2)
    assert kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5 * log2**2)
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx((0.5 - 1) + log2)
    assert kl_per_token(ref, logp, "k3").item() == pytest.approx((2 - 1) - log2)
    assert kl_per_token(ref, logp, "abs").item() == pytest.approx(log2)
    assert kl_per_token(ref, logp, "k1").item() == pytest.approx(-log2)  # k1 can be negative
    for kind in KL_KINDS:
        assert kl_per_token(logp, logp, kind).item() == 0.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_per_token(logp, ref, "k4")  # type: ignore[arg-type]


def test_k3_is_non_negative_and_k1_k3_are_unbiased() -> None:
    generator = torch.Generator().manual_seed(6)
    logp = torch.randn(1000, generator=generator, dtype=torch.float64) * 3
    ref = torch.randn(1000, generator=generator, dtype=torch.float64) * 3
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    assert (kl_per_token(logp, ref, "k2") >= 0).all()
    # Expectation under the policy, summed exactly over a small vocabulary: the true KL.
    policy = torch.log_softmax(torch.randn(6, generator=generator, dtype=torch.float64), 0)
    reference = torch.log_softmax(torch.randn(6, generator=generator, dtype=torch.float64), 0)
    exact = (policy.exp() * (policy - reference)).sum()
    for kind in ("k1", "k3"):
        expected = (policy.exp() * kl_per_token(policy, reference, kind)).sum()
        assert expected.item() == pytest.approx(exact.item())


# -- token rewards ------------------------------------------------------------------------------


def test_token_rewards_put_the_score_at_the_last_real_token() -> None:
    lengths = [4, 1, 3, 2]
    mask = right_padded_mask(lengths, 4)
    score = torch.tensor([1.0, 2.0, 3.0, 4.0])
    kl = with_garbage(torch.full((4, 4), 0.5), mask)
    rewards = token_rewards(score, kl, mask, 0.1, eos_found=torch.ones(4, dtype=torch.bool))
    expected = torch.tensor(
        [
            [-0.05, -0.05, -0.05, 1.0 - 0.05],
            [2.0 - 0.05, 0.0, 0.0, 0.0],
            [-0.05, -0.05, 3.0 - 0.05, 0.0],
            [-0.05, 4.0 - 0.05, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(rewards, expected)


def test_missing_eos_penalty_applies_only_without_an_end_token() -> None:
    mask = right_padded_mask([3, 3, 2], 3)
    score, kl = torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3, 3)
    eos_found = torch.tensor([True, False, False])
    rewards = token_rewards(score, kl, mask, 0.2, eos_found=eos_found, missing_eos_penalty=1.5)
    assert rewards.sum(dim=1).tolist() == pytest.approx([1.0, -0.5, -0.5])
    assert rewards[2, 1].item() == pytest.approx(-0.5)
    unpenalised = token_rewards(score, kl, mask, 0.2, eos_found=eos_found)
    assert unpenalised.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_token_rewards_reject_masks_that_are_not_right_padded() -> None:
    ones = torch.ones(1, dtype=torch.bool)
    for bad in ([[1, 0, 1]], [[0, 1, 1]], [[0, 0, 0]]):
        with pytest.raises(ValueError):
            token_rewards(torch.zeros(1), torch.zeros(1, 3), torch.tensor(bad), 0.1, eos_found=ones)


# -- reward normalisation -----------------------------------------------------------------------


def test_running_moments_match_numpy_over_several_batches() -> None:
    generator = torch.Generator().manual_seed(7)
    moments, seen = RunningMoments(), []
    assert moments.std == 1.0
    for size in (1, 5, 17, 2, 64):
        batch = 10 + 4 * torch.randn(size, generator=generator)
        moments.update(batch)
        seen.extend(batch.tolist())
        assert moments.count == len(seen)
        assert moments.mean == pytest.approx(np.mean(seen), rel=1e-9)
        assert moments.var == pytest.approx(np.var(seen), rel=1e-9)
        if len(seen) > 1:
            assert moments.std == pytest.approx(np.std(seen, ddof=1), rel=1e-9)
    moments.update(torch.empty(0))
    assert moments.count == len(seen)


def test_normalise_scores_scales_by_running_std_and_centres_on_request() -> None:
    generator = torch.Generator().manual_seed(8)
    first = 3 + 2 * torch.randn(50, generator=generator, dtype=torch.float64)
    second = 3 + 2 * torch.randn(30, generator=generator, dtype=torch.float64)
    running = RunningMoments()
    normalise_scores(first, running)
    scaled = normalise_scores(second, running)
    both = torch.cat([first, second]).numpy()
    torch.testing.assert_close(scaled, second / np.std(both, ddof=1), rtol=1e-6, atol=0)
    centred = normalise_scores(first, None, centre=True)
    assert centred.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert centred.std().item() == pytest.approx(1.0, rel=1e-6)
    assert normalise_scores(torch.tensor([2.5]), None).item() == pytest.approx(2.5)


# -- GAE ----------------------------------------------------------------------------------------


def gae_reference(
    rewards: torch.Tensor, values: torch.Tensor, lengths: list[int], gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = sum_k (γλ)^k δ_{t+k} over each response, V = 0 after its last token."""
    advantages = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        for t in range(length):
            total = 0.0
            for k in range(t, length):
                next_value = values[b, k + 1].item() if k + 1 < length else 0.0
                delta = rewards[b, k].item() + gamma * next_value - values[b, k].item()
                total += (gamma * lam) ** (k - t) * delta
            advantages[b, t] = total
    mask = right_padded_mask(lengths, rewards.shape[1])
    return advantages, torch.where(mask, advantages + values, 0)


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (1.0, 0.95), (0.99, 0.9), (0.5, 0.0)])
def test_gae_matches_a_double_loop_on_variable_lengths(gamma: float, lam: float) -> None:
    generator = torch.Generator().manual_seed(9)
    batch, length = 7, 9
    lengths = random_lengths(generator, batch, length)
    mask = right_padded_mask(lengths, length)
    rewards = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    values = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    expected_adv, expected_ret = gae_reference(rewards, values, lengths, gamma, lam)
    advantages, returns = gae(
        with_garbage(rewards, mask), with_garbage(values, mask), mask, gamma, lam
    )
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value() -> None:
    generator = torch.Generator().manual_seed(10)
    lengths = [5, 2, 1, 4]
    mask = right_padded_mask(lengths, 5)
    rewards = torch.where(mask, torch.randn(4, 5, generator=generator, dtype=torch.float64), 0)
    values = torch.where(mask, torch.randn(4, 5, generator=generator, dtype=torch.float64), 0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1)
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(advantages, torch.where(mask, reward_to_go - values, 0))
    torch.testing.assert_close(returns, reward_to_go)


def test_gae_carries_no_gradient() -> None:
    values = torch.zeros(2, 3, requires_grad=True)
    advantages, returns = gae(torch.ones(2, 3), values, torch.ones(2, 3), 1.0, 0.9)
    assert not advantages.requires_grad and not returns.requires_grad


# -- policy loss --------------------------------------------------------------------------------


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage() -> None:
    generator = torch.Generator().manual_seed(11)
    mask = right_padded_mask([4, 2, 3], 4)
    logp = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    advantages = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    loss, stats = policy_loss(logp, logp, with_garbage(advantages, mask), mask, 0.2)
    assert loss.item() == pytest.approx(-advantages[mask].mean().item())
    assert stats["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0 and stats["ratio_max"].item() == 1.0


def test_policy_loss_clips_only_beyond_the_range_in_the_advantages_direction() -> None:
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, math.nan]])
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.5, 1.5, 0.9, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    logp_old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0, -0.2, math.inf]])
    logp_new = (logp_old + ratios.log()).requires_grad_(True)
    loss, stats = policy_loss(logp_new, logp_old, advantages, mask, clip_range=0.2)
    loss.backward()
    grad = logp_new.grad[0] * 6  # d loss / d logp = -A·ρ / n_tokens where not clipped
    # Clipped: A > 0 with ρ > 1 + ε, and A < 0 with ρ < 1 - ε. Never the other way round.
    expected = [0.0, -0.5, -1.1, 0.0, 1.5, 0.9, 0.0]
    torch.testing.assert_close(grad, torch.tensor(expected))
    per_token = [-1.2, -0.5, -1.1, 0.8, 1.5, 0.9]  # pessimistic bound per real token
    assert loss.item() == pytest.approx(sum(per_token) / 6)
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["ratio_mean"].item() == pytest.approx(sum([1.5, 0.5, 1.1, 0.5, 1.5, 0.9]) / 6)
    k3 = [r - 1 - math.log(r) for r in (1.5, 0.5, 1.1, 0.5, 1.5, 0.9)]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 6, rel=1e-5)
    assert not any(value.requires_grad for value in stats.values())


# -- value loss ---------------------------------------------------------------------------------


def test_value_loss_clips_moves_beyond_the_range() -> None:
    values_old = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0, 1.0, math.nan]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    values_new = torch.tensor([[0.1, 0.5, -0.5, 1.5, math.inf]], requires_grad=True)
    loss, stats = value_loss(values_new, values_old, returns, mask, clip_range_value=0.2)
    # Errors (unclipped, clipped): (0.81, 0.81), (0.25, 0.64), (2.25, 1.44), (0.25, 0.64).
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.64 + 2.25 + 0.64) / 4)
    assert stats["value_clip_frac"].item() == pytest.approx(2 / 4)
    loss.backward()
    # Where the clipped error is larger the clamp is saturated: no gradient.
    expected = [0.5 * 2 * (0.1 - 1) / 4, 0.0, 0.5 * 2 * (-0.5 - 1) / 4, 0.0, 0.0]
    torch.testing.assert_close(values_new.grad[0], torch.tensor(expected))


def test_value_loss_within_the_range_is_half_the_mean_squared_error() -> None:
    generator = torch.Generator().manual_seed(12)
    mask = right_padded_mask([3, 1, 4], 4)
    values_old = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    values_new = values_old + 0.05 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    returns = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    loss, stats = value_loss(values_new, values_old, returns, mask, clip_range_value=0.2)
    mse = (values_new - returns)[mask].square().mean()
    assert loss.item() == pytest.approx(0.5 * mse.item())
    assert stats["value_clip_frac"].item() == 0.0


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, math.nan]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask).item() == 0.0
    assert explained_variance(-returns, returns, mask).item() < 0
    assert math.isnan(explained_variance(returns, torch.ones(1, 5), mask).item())


# -- KL controllers -----------------------------------------------------------------------------


def test_adaptive_kl_moves_towards_the_target_by_a_bounded_step() -> None:
    controller = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
    controller.update(7.0, n_steps=256)  # above target by 1/6: proportional
    assert controller.value == pytest.approx(0.1 * (1 + (7 / 6 - 1) * 256 / 10_000))
    before = controller.value
    controller.update(600.0, n_steps=256)  # far above: error clipped to +0.2
    assert controller.value == pytest.approx(before * (1 + 0.2 * 256 / 10_000))
    before = controller.value
    controller.update(0.0, n_steps=256)  # far below: error clipped to -0.2
    assert controller.value == pytest.approx(before * (1 - 0.2 * 256 / 10_000))
    before = controller.value
    controller.update(torch.tensor(6.0), n_steps=256)
    assert controller.value == pytest.approx(before)
    with pytest.raises(ValueError):
        AdaptiveKL(init_coef=0.1, target=0.0, horizon=10)


def test_fixed_kl_never_changes() -> None:
    controller = FixedKL(0.05)
    for kl in (0.0, 100.0):
        controller.update(kl, n_steps=64)
    assert controller.value == 0.05


# -- EMA and minibatches ------------------------------------------------------------------------


def test_ema_moves_the_target_towards_the_source_by_one_minus_decay() -> None:
    target = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))]
    source = [torch.full((3,), 10.0), torch.full((2, 2), 3.0, dtype=torch.float64)]
    ema_update(target, source, decay=0.9)
    torch.testing.assert_close(target[0].data, torch.full((3,), 1.0))
    torch.testing.assert_close(target[1].data, torch.full((2, 2), 1.2))
    assert target[0].grad is None and target[1].dtype == torch.float32
    ema_update(target, source, decay=1.0)
    torch.testing.assert_close(target[0].data, torch.full((3,), 1.0))
    ema_update(target, source, decay=0.0)
    torch.testing.assert_close(target[0].data, source[0])
    with pytest.raises(ValueError):
        ema_update(target, source[:1], decay=0.5)
    with pytest.raises(ValueError):
        ema_update(target, source, decay=1.5)


def test_minibatch_indices_cover_every_index_once_per_epoch() -> None:
    generator = torch.Generator().manual_seed(13)
    orders = []
    for _ in range(3):
        batches = minibatch_indices(10, 4, generator)
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(torch.cat(batches).tolist()) == list(range(10))
        orders.append(torch.cat(batches).tolist())
    assert len({tuple(order) for order in orders}) > 1  # reshuffled per epoch
    again = minibatch_indices(10, 4, torch.Generator().manual_seed(13))
    assert torch.cat(again).tolist() == orders[0]
    assert minibatch_indices(0, 4) == []


# -- learning check: a 3-armed bandit -----------------------------------------------------------

ARM_REWARD = torch.tensor([0.0, 0.5, 1.0])


def train_bandit(kl_coef: float, steps: int = 60, batch: int = 64) -> torch.Tensor:
    """PPO on a length-1 'response' (the arm), KL-penalised against a uniform reference."""
    generator = torch.Generator().manual_seed(14)
    torch.manual_seed(14)
    logits = torch.zeros(3, requires_grad=True)
    value = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.Adam([logits, value], lr=0.05)
    reference = torch.full((3,), -math.log(3))
    mask = torch.ones(batch, 1, dtype=torch.bool)
    for _ in range(steps):
        with torch.no_grad():  # rollout
            arms = torch.multinomial(logits.softmax(0), batch, True, generator=generator)[:, None]
            logp_old = logprobs_from_logits(logits.expand(batch, 1, 3), arms)
            kl = kl_per_token(logp_old, reference[arms], "k1")
            noise = 0.1 * torch.randn(batch, generator=generator)
            score = ARM_REWARD[arms[:, 0]] + noise
            rewards = token_rewards(score, kl, mask, kl_coef, eos_found=mask[:, 0])
            values_old = value.expand(batch, 1).clone()
            advantages, returns = gae(rewards, values_old, mask, gamma=1.0, lam=0.95)
            advantages = masked_whiten(advantages, mask)
        for _epoch in range(4):
            for idx in minibatch_indices(batch, 16, generator):
                logp_new = logprobs_from_logits(logits.expand(len(idx), 1, 3), arms[idx])
                pg, _ = policy_loss(logp_new, logp_old[idx], advantages[idx], mask[idx], 0.2)
                vf, _ = value_loss(
                    value.expand(len(idx), 1), values_old[idx], returns[idx], mask[idx], 0.2
                )
                optimiser.zero_grad()
                (pg + 0.5 * vf).backward()
                optimiser.step()
    return logits.detach().softmax(0)


def kl_to_uniform(probs: torch.Tensor) -> float:
    return float((probs * (probs * 3).log()).sum())


def test_bandit_ppo_learns_the_best_arm_with_bounded_kl() -> None:
    probs = train_bandit(kl_coef=0.5)
    # Optimum of E[reward] - β·KL(π || uniform): π ∝ exp(reward / β), here p(best) ≈ 0.665.
    optimum = torch.softmax(ARM_REWARD / 0.5, 0)
    assert probs.argmax().item() == 2
    assert probs[2].item() > 0.5  # from 1/3
    assert probs[2].item() == pytest.approx(optimum[2].item(), abs=0.1)
    assert kl_to_uniform(probs) < 0.45  # optimum's KL ≈ 0.27; log 3 ≈ 1.1 is the ceiling
    # A weak penalty lets the policy move much further from the reference.
    loose = train_bandit(kl_coef=0.05)
    assert kl_to_uniform(loose) > kl_to_uniform(probs) + 0.2
