"""The PPO math as pure functions on tensors: no models, no I/O, no global state.

Layout: a rollout batch holds B responses of up to T tokens, right-padded. ``mask[B, T]`` is 1 (or
True) for the real response tokens, up to and including the end token, and 0 after it. Every
function here ignores what sits under ``mask == 0``, even NaN or inf, so a caller never needs to
clean padding first.

One PPO step, in order (the layout of TRL's PPOTrainer, Ziegler et al. 2019, Ouyang et al. 2022):

1. Rollout. Sample responses from the policy; keep per token ``logp_old`` (policy),
   ``ref_logp`` (reference: the same backbone with the LoRA adapter disabled, or an EMA of the
   adapter, see ``ema_update``) and ``values_old`` (value head), all without gradients.
2. Score. The frozen reward model scores each whole response once: ``score[B]``.
   ``normalise_scores`` rescales it by a running std, so that ``kl_coef`` and
   ``missing_eos_penalty`` mean the same thing whatever the scale of the reward-model version.
3. KL-penalised token rewards (``kl_per_token``, ``token_rewards``). Every token pays
   ``-kl_coef * kl``; the score is added at the last real token, minus ``missing_eos_penalty`` for
   a response that never ended. The KL is a *reward*, not a loss term: it enters the returns, so
   the value head learns it and the policy trades it against the score token by token.
4. GAE (``gae``) backwards over each response, bootstrapping 0 after the last real token: a
   response is a whole episode, the tokens after its end are not part of it.
5. Whiten the advantages (``masked_whiten``) over the *whole rollout batch*, once, before any
   update: per-minibatch whitening would rescale the same token differently from minibatch to
   minibatch and epoch to epoch, and a small minibatch gives a noisy std. Returns are not
   whitened: they are the value head's regression targets, in reward units.
6. Several epochs over shuffled minibatches (``minibatch_indices``): recompute log-probs and values
   with gradients, then the clipped surrogate (``policy_loss``) plus ``vf_coef`` times the clipped
   value loss (``value_loss``). The clipping keeps the reuse of one rollout for several epochs
   close to on-policy.
7. After the round, update the KL coefficient (``FixedKL`` / ``AdaptiveKL``) with the measured
   KL per response.

Averaging: losses are means over real tokens of the minibatch (TRL's choice), so every token of
every response weighs alike. Padding contributes neither to the loss nor to its gradient: its
values, log-probs and advantages are replaced (not multiplied) by zeros, so even a NaN under the
mask cannot leak into the gradient.

Where this differs from TRL 0.x/1.12's PPOTrainer: TRL adds the score one position *after* the end
token and keeps that position's value (its ``padding_mask_p1``); here the score lands on the last
real token (the end token itself, or the last token of a truncated response) and every value after
it is 0, so nothing depends on a padding position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3", "abs"]
KL_KINDS: tuple[KLKind, ...] = ("k1", "k2", "k3", "abs")
Stats = dict[str, Tensor]

# Logits are processed in chunks of about this many elements (16 MiB in float32), so the float32
# working copy of bf16 logits never exists for the whole [B, T, V] tensor at once. On CPU this size
# also ran as fast as a plain log_softmax + gather (8 × 64 × 50257 logits, forward + backward).
_CHUNK_ELEMENTS = 1 << 22
_WHITEN_EPS = 1e-8


# -- masked statistics --------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over the positions where ``mask`` is set.

    An empty mask gives 0 rather than NaN: an empty minibatch then contributes a zero loss with
    zero gradient instead of poisoning the optimiser state.
    """
    keep = mask.bool()
    total = torch.where(keep, x, 0).sum(dim=dim)
    count = keep.sum(dim=dim).clamp(min=1).to(total.dtype)
    return total / count


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over the masked positions (all dimensions).

    With one element the Bessel factor n / (n - 1) is undefined; the variance is 0 then (as it is
    for no element) instead of TRL's division by zero, so whitening a single token gives 0.
    """
    keep = mask.bool()
    centred = torch.where(keep, x - masked_mean(x, keep), 0)
    count = keep.sum()
    denominator = (count - 1 if unbiased else count).clamp(min=1).to(centred.dtype)
    return centred.square().sum() / denominator


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Scale to unit variance over the masked positions; centre too unless ``shift_mean=False``.

    ``shift_mean=False`` keeps the mean (TRL's option for whitening rewards, whose sign carries
    meaning). Padding comes back as 0, which is what every caller filled it with afterwards.
    """
    keep = mask.bool()
    x = torch.where(keep, x, 0)  # padding must not reach the gradient of mean and var
    mean, var = masked_mean(x, keep), masked_var(x, keep)
    whitened = (x - mean) * torch.rsqrt(var + _WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, 0)


# -- log-probabilities and entropy --------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 logits are reduced in float32; float64 stays float64 (for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _as_3d(logits: Tensor) -> Tensor:
    """[B, T, V] as is (a view even when sliced out of longer logits), [T, V] as [1, T, V]."""
    if logits.ndim < 2:
        raise ValueError(f"logits need a vocabulary axis and a position axis, got {logits.ndim}-D")
    return logits.reshape(-1, *logits.shape[-2:])


def _scaled(chunk: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    """One chunk in the compute dtype, divided by the temperature; no copy when neither applies."""
    chunk = chunk.to(dtype)
    return chunk if temperature == 1.0 else chunk / temperature


def _chunks(shape: torch.Size, chunk_rows: int | None) -> list[tuple[slice, slice]]:
    """(batch slice, position slice) pairs of about ``chunk_rows`` positions each.

    Chunks are slices of the [B, T, V] view, never of a flattened copy: the policy's logits are
    usually a slice ``logits[:, prompt_len - 1 : -1]``, which ``reshape(-1, V)`` would copy whole.
    """
    batch, length, vocab = shape
    if batch == 0 or length == 0:
        return []
    rows = chunk_rows or max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    if rows >= length:
        step = rows // length
        return [(slice(b, b + step), slice(0, length)) for b in range(0, batch, step)]
    return [
        (slice(b, b + 1), slice(t, t + rows)) for b in range(batch) for t in range(0, length, rows)
    ]


class _TokenLogProb(torch.autograd.Function):
    """log_softmax(logits / temperature) gathered at ``tokens``, chunk by chunk.

    Autograd through ``log_softmax(...).gather`` would keep a full [B, T, V] log-softmax (in float32
    for bf16 input) alive until backward. This keeps only the input logits and one float32
    logsumexp per position, and rebuilds the softmax chunk by chunk in backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, tokens: Tensor, temperature: float, chunk_rows: int | None
    ) -> Tensor:
        view = _as_3d(logits)
        index = tokens.reshape(view.shape[:2]).long().unsqueeze(-1)
        dtype = _compute_dtype(logits.dtype)
        logprobs = torch.empty(view.shape[:2], dtype=dtype, device=logits.device)
        lse = torch.empty_like(logprobs)
        for rows, cols in _chunks(view.shape, chunk_rows):
            scaled = _scaled(view[rows, cols], dtype, temperature)
            lse[rows, cols] = torch.logsumexp(scaled, dim=-1)
            picked = scaled.gather(-1, index[rows, cols]).squeeze(-1)
            logprobs[rows, cols] = picked - lse[rows, cols]
        ctx.save_for_backward(logits, index, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return logprobs.view(tokens.shape)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        logits, index, lse = ctx.saved_tensors
        view = _as_3d(logits)
        upstream = grad_out.reshape(lse.shape).to(lse.dtype).unsqueeze(-1)
        grad = torch.empty(view.shape, dtype=logits.dtype, device=logits.device)
        for rows, cols in _chunks(view.shape, ctx.chunk_rows):
            # d logp_k / d z_j = (1[j = k] - p_j) / temperature, built in place in one buffer
            chunk_grad = torch.softmax(_scaled(view[rows, cols], lse.dtype, ctx.temperature), -1)
            chunk_grad.mul_(-upstream[rows, cols])
            chunk_grad.scatter_add_(-1, index[rows, cols], upstream[rows, cols])
            if ctx.temperature != 1.0:
                chunk_grad.div_(ctx.temperature)
            grad[rows, cols] = chunk_grad
        return grad.view(logits.shape), None, None, None


def _plogp(logp: Tensor, shift: Tensor | float = 0.0) -> Tensor:
    """p·(log p + shift), with 0 where p = 0: a -inf logit (a banned token) must not give NaN."""
    return torch.where(logp > -torch.inf, logp.exp() * (logp + shift), 0)


class _Entropy(torch.autograd.Function):
    """Entropy of softmax(logits / temperature) per position, chunked like ``_TokenLogProb``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, temperature: float, chunk_rows: int | None
    ) -> Tensor:
        view = _as_3d(logits)
        dtype = _compute_dtype(logits.dtype)
        entropy = torch.empty(view.shape[:2], dtype=dtype, device=logits.device)
        lse = torch.empty_like(entropy)
        for rows, cols in _chunks(view.shape, chunk_rows):
            scaled = _scaled(view[rows, cols], dtype, temperature)
            lse[rows, cols] = torch.logsumexp(scaled, dim=-1)
            logp = scaled - lse[rows, cols].unsqueeze(-1)
            entropy[rows, cols] = -_plogp(logp).sum(-1)
        ctx.save_for_backward(logits, lse, entropy)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return entropy.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        logits, lse, entropy = ctx.saved_tensors
        view = _as_3d(logits)
        upstream = grad_out.reshape(lse.shape).to(lse.dtype).unsqueeze(-1)
        grad = torch.empty(view.shape, dtype=logits.dtype, device=logits.device)
        for rows, cols in _chunks(view.shape, ctx.chunk_rows):
            scaled = _scaled(view[rows, cols], lse.dtype, ctx.temperature)
            logp = scaled - lse[rows, cols].unsqueeze(-1)
            # dH / dz_j = -p_j (log p_j + H) / temperature
            shift = entropy[rows, cols].unsqueeze(-1)
            grad[rows, cols] = -upstream[rows, cols] * _plogp(logp, shift) / ctx.temperature
        return grad.view(logits.shape), None, None


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def logprobs_from_logits(
    logits: Tensor, tokens: Tensor, *, temperature: float = 1.0, chunk_rows: int | None = None
) -> Tensor:
    """log p(token) per position: ``logits[B, T, V]``, ``tokens[B, T]`` -> ``[B, T]``.

    Memory: neither the forward nor the backward pass materialises a [B, T, V] log-softmax; bf16
    logits are reduced in float32 one chunk of rows at a time (TRL falls back to a bf16
    log_softmax per row because a bf16 logsumexp is too coarse; a float32 one per chunk is as
    precise as a float32 log_softmax, and small). The result is float32 for half-precision
    logits. ``temperature`` divides the logits inside the chunks, sparing a scaled copy; it must
    match the sampling temperature, or the ratio to the rollout's log-probs is off from the first
    step. Padding positions need any valid token id (the caller masks their log-probs).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    _check_temperature(temperature)
    return _TokenLogProb.apply(logits, tokens, temperature, chunk_rows)


def entropy_from_logits(
    logits: Tensor, *, temperature: float = 1.0, chunk_rows: int | None = None
) -> Tensor:
    """Entropy (nats) of the next-token distribution per position: ``[B, T, V]`` -> ``[B, T]``.

    Chunked like ``logprobs_from_logits`` and differentiable without a full float32 copy, so it
    can serve as an entropy bonus as well as a logged statistic.
    """
    _check_temperature(temperature)
    return _Entropy.apply(logits, temperature, chunk_rows)


# -- KL penalty and token rewards ---------------------------------------------------------------


def kl_per_token(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    With log r = ref_logp - logp (Schulman, "Approximating KL divergence", 2020):

    * ``k1`` = -log r: unbiased (the expected sum over a response is that response's exact KL),
      but negative on many tokens and high-variance. TRL's default.
    * ``k2`` = ½ (log r)²: always >= 0, low variance, biased (exact to second order).
    * ``k3`` = (r - 1) - log r: unbiased and always >= 0 (log x <= x - 1), low variance while the
      policy stays near the reference; written with expm1 to keep precision for small log r.
    * ``abs`` = |log r|: >= 0, biased upwards; grows linearly, not exponentially like k3, when
      the policy drifts far from the reference.
    """
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def _check_right_padded(mask: Tensor) -> Tensor:
    """Return the mask as bool after checking each row is ones then zeros, with at least one 1.

    GAE's bootstrap and 'the score at the last real token' both rely on it; a hole in a row
    would silently cut the episode short, so it is an error rather than a guess.
    """
    keep = mask.bool()
    if keep.ndim != 2:
        raise ValueError(f"mask must be [B, T], got {tuple(keep.shape)}")
    if (keep[:, 1:] & ~keep[:, :-1]).any():
        raise ValueError("mask must be right-padded: ones, then zeros, in every row")
    if not keep[:, 0].all():
        raise ValueError("every response needs at least one real token")
    return keep


def token_rewards(
    score: Tensor,
    kl: Tensor,
    mask: Tensor,
    kl_coef: float,
    *,
    eos_found: Tensor,
    missing_eos_penalty: float | None = None,
) -> Tensor:
    """Per-token rewards ``[B, T]``: -kl_coef·kl everywhere, plus the score at the last real token.

    The score rewards the whole response, so it arrives when the response is complete; GAE then
    carries it back. A response that never produced its end token (cut at the length limit) has
    ``missing_eos_penalty`` subtracted from its score, as TRL does, so the policy does not learn
    that rambling to the limit is as good as finishing; the penalty is in the units of ``score``
    (after ``normalise_scores``, in running standard deviations). Padding gets 0.
    """
    keep = _check_right_padded(mask)
    if kl.shape != keep.shape or score.shape != keep.shape[:1] or eos_found.shape != score.shape:
        raise ValueError("expected score[B], kl[B, T], mask[B, T], eos_found[B]")
    rewards = torch.where(keep, -kl_coef * kl, 0)
    final = score.to(rewards.dtype)
    if missing_eos_penalty is not None:
        final = final - missing_eos_penalty * (~eos_found.bool()).to(rewards.dtype)
    last = keep.sum(dim=1) - 1
    rows = torch.arange(keep.shape[0], device=keep.device)
    return rewards.index_put((rows, last), final, accumulate=True)


# -- reward normalisation -----------------------------------------------------------------------


@dataclass
class RunningMoments:
    """Running mean and variance of every score seen, merged batch by batch.

    Chan et al.'s parallel form of Welford's update (as TRL's RunningMoments): exact for any batch
    sizes, and in Python floats (float64) so that thousands of rounds do not drift. Plain floats
    also make it trivially saveable with the policy version (``dataclasses.asdict``).
    """

    mean: float = 0.0
    var: float = 0.0  # population variance (divided by count)
    count: int = 0

    @property
    def std(self) -> float:
        """Sample standard deviation; 1 until two scores are seen, so that scaling is a no-op."""
        if self.count < 2:
            return 1.0
        return math.sqrt(self.var * self.count / (self.count - 1))

    def update(self, xs: Tensor) -> None:
        """Merge a batch of scores into the moments."""
        values = xs.detach().to(torch.float64).flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_var = values.var(correction=0).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total


def normalise_scores(
    scores: Tensor,
    running: RunningMoments | None,
    *,
    centre: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """Scores divided by the std of every score so far (``running``) or of this batch (None).

    Why: the spread of a Bradley-Terry-style reward model's scores changes between versions (with
    the data and the length of training), so raw scores would make ``kl_coef`` and
    ``missing_eos_penalty`` mean different things in every round. ``running`` is updated with
    this batch first (TRL's order), so the first batch is already scaled by its own spread.

    Why not centre by default: the running mean keeps moving as the policy improves, so centring
    would lower the reward of the same response from round to round and hand the value head a
    moving target; the advantages are whitened anyway, so the policy gradient does not need it.
    Not centring also keeps score 0 meaning what the reward model meant by it. ``centre=True``
    gives Ziegler et al.'s mean 0 / std 1 normalisation.
    """
    if running is None:
        moments = RunningMoments()
        moments.update(scores)
    else:
        running.update(scores)
        moments = running
    shifted = scores - moments.mean if centre else scores
    return shifted / (moments.std + eps)


# -- advantages ---------------------------------------------------------------------------------


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016): ``(advantages, returns)``, [B, T].

    δ_t = r_t + γ V_{t+1} - V_t and A_t = δ_t + γλ A_{t+1}, backwards over T for all B at once.
    Rewards and values under the mask are replaced by 0, so after each response's last real token
    the next value is 0 (the episode has ended; no bootstrap) and A stays 0 through the padding,
    whatever the response's length. returns = A + V are the value head's targets (the λ-return).
    No gradient: both are constants during the PPO epochs.
    """
    keep = _check_right_padded(mask)
    if rewards.shape != keep.shape or values.shape != keep.shape:
        raise ValueError("rewards, values and mask must all be [B, T]")
    rewards = torch.where(keep, rewards, 0)
    values = torch.where(keep, values, 0).to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(running)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, advantages + values


# -- losses -------------------------------------------------------------------------------------


def policy_loss(
    logp_new: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Stats]:
    """PPO-clip surrogate (Schulman et al. 2017), a mean over real tokens.

    loss = mean(max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε))) with ρ = exp(logp_new - logp_old). The max is a
    pessimistic bound: once ρ has moved past the range *in the direction the advantage rewards*,
    the token's gradient is zero; moving back is never clipped.

    Stats (detached): ``clip_frac``, the fraction of real tokens where the clipped term is the
    active one (ratio out of range in the advantage's direction); ``approx_kl``, the mean k3
    estimate (ρ - 1) - log ρ of KL(old || new): unbiased under the rollout's samples and never
    negative, where TRL logs ½(log ρ)²; ``ratio_mean`` and ``ratio_max`` over real tokens.
    """
    keep = mask.bool()
    # Padding becomes 0 *before* any arithmetic: a NaN or inf there would otherwise turn the
    # zero gradient of the masked mean into 0·NaN = NaN.
    log_ratio = torch.where(keep, logp_new - logp_old, 0)
    advantages = torch.where(keep, advantages, 0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), keep),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, keep),
            "ratio_mean": masked_mean(ratio, keep),
            "ratio_max": torch.where(keep, ratio, 0).max(),
        }
    return loss, stats


def explained_variance(predicted: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(targets - predicted) / Var(targets) over real tokens; NaN when targets are constant.

    1 is a perfect value head, 0 one no better than a constant, below 0 worse than a constant.
    """
    keep = mask.bool()
    target_var = masked_var(targets, keep, unbiased=False)
    residual_var = masked_var(targets - predicted, keep, unbiased=False)
    return torch.where(target_var > 0, 1 - residual_var / target_var, torch.nan)


def value_loss(
    values_new: Tensor,
    values_old: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float,
) -> tuple[Tensor, Stats]:
    """Clipped value loss ½·max((v - R)², (clip(v, v_old ± ε_v) - R)²), a mean over real tokens.

    The clip limits how far one rollout can drag the value head, like the policy clip; taking the
    max keeps it pessimistic, so clipping never lowers the loss. Stats (detached):
    ``value_clip_frac`` (tokens where the clipped error is the larger, hence active, one) and
    ``explained_variance`` of the returns by the new values.
    """
    keep = mask.bool()
    values_new = torch.where(keep, values_new, 0)
    values_old = torch.where(keep, values_old, 0).to(values_new.dtype)
    returns = torch.where(keep, returns, 0).to(values_new.dtype)
    clipped_values = values_old + torch.clamp(
        values_new - values_old, -clip_range_value, clip_range_value
    )
    unclipped_error = (values_new - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), keep)
    with torch.no_grad():
        stats = {
            "value_clip_frac": masked_mean((clipped_error > unclipped_error).to(loss.dtype), keep),
            "explained_variance": explained_variance(values_new, returns, keep),
        }
    return loss, stats


# -- KL coefficient controllers -----------------------------------------------------------------


class FixedKL:
    """A constant KL coefficient: the simplest choice, and the right one to compare runs."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        self.value = coef

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Nothing to adapt; present so that both controllers are interchangeable."""

    def __repr__(self) -> str:
        return f"FixedKL(coef={self.value})"


class AdaptiveKL:
    """KL coefficient steered towards a target KL per response (Ziegler et al. 2019).

    A proportional controller, as TRL's AdaptiveKLController: error = clip(KL / target - 1, ±0.2),
    coef *= 1 + error · n_steps / horizon. The clip bounds each update to a factor within
    1 ± 0.2 · n_steps / horizon, so one noisy round cannot swing the coefficient; ``horizon`` (in
    samples, like ``n_steps``) sets how fast it follows.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef <= 0 or target <= 0 or horizon <= 0:
            raise ValueError("init_coef, target and horizon must be positive")
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Raise the coefficient when the KL is above target, lower it when below."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def __repr__(self) -> str:
        return f"AdaptiveKL(coef={self.value}, target={self.target}, horizon={self.horizon})"


# -- reference EMA and minibatches --------------------------------------------------------------


@torch.no_grad()
def ema_update(
    target_params: Iterable[Tensor], source_params: Iterable[Tensor], decay: float
) -> None:
    """target ← decay·target + (1 - decay)·source, in place.

    For a KL reference that trails the trained adapter instead of staying at the base model: the
    penalty then limits how fast the policy moves per round, not how far it may ever go.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for target, source in zip(target_params, source_params, strict=True):
        target.lerp_(source.to(device=target.device, dtype=target.dtype), 1.0 - decay)


def minibatch_indices(
    n: int,
    minibatch_size: int,
    generator: torch.Generator | None = None,
    groups: Tensor | None = None,
) -> list[Tensor]:
    """One epoch's shuffled minibatches: every index in [0, n) exactly once.

    Call once per PPO epoch for a fresh order. The last minibatch is smaller when
    ``minibatch_size`` does not divide n; losses are token means, so it is not over-weighted per
    token, and no sample of the rollout is wasted. With ``groups`` (a label per index, e.g. its
    prompt) the groups are shuffled and each group's indices stay next to each other, so a
    minibatch holds whole groups (but where a group straddles two): a packed forward pass reads
    each group's prompt once for all its samples (``ppo.packing``).
    """
    if n < 0 or minibatch_size < 1:
        raise ValueError("need n >= 0 and minibatch_size >= 1")
    if n == 0:
        return []
    # Drawn where the generator lives (the rollout's CUDA generator works too), returned on the CPU,
    # which indexes tensors on either device.
    device = generator.device if generator is not None else None
    if groups is None:
        order = torch.randperm(n, generator=generator, device=device).cpu()
    else:
        group = torch.unique(groups.cpu(), return_inverse=True)[1]
        place = torch.randperm(int(group.max()) + 1, generator=generator, device=device).cpu()
        order = torch.sort(place[group], stable=True).indices
    return list(order.split(minibatch_size))
