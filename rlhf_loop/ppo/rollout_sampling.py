"""Rollout sampling: a lean decode loop that does what ``model.generate`` does, with less per step.

Rollouts take most of an RLHF step. With a small policy on a CPU a decode step is a few
milliseconds of small ops, so what ``generate`` does around the forward pass is not noise: its
top-p warper sorts the whole vocabulary every step, ``torch.multinomial`` draws one exponential
variate per vocabulary entry, and every row is decoded until the longest has ended. Here each
distinct prompt is prefilled once (last-position logits only) and its cache copied to the rows
that sample it (a rollout draws K responses per prompt: the prefill was 40% of a batch's time
with K=4), then each step feeds only the new token with the cache; mask and positions are built
once and sliced, tokens go into a preallocated buffer, top-p looks only at the tokens that can be
in a nucleus, a token is drawn by inverse CDF with one uniform per row, and rows that have ended
are cut from the batch.

Besides the tokens it returns what PPO would otherwise need a second forward pass over the batch
for: each token's log-probability under the untruncated distribution at the sampling temperature
(the one PPO optimises) and, given the value head, each position's value.

The model is only ever called as ``model(...)``, so any Hugging Face causal LM works, peft-wrapped
or not. The cache is whatever the model builds itself when asked for one (a ``DynamicCache`` for
GPT-2, Llama, Qwen): a ``StaticCache`` was measured too and was slower on CPU (it attends over the
full preallocated length every step, and the growing cache's ``torch.cat`` costs little here).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# A GPU runs ahead of Python; asking whether every row has finished makes it wait. Asking every
# few steps costs at most that many steps of padding (trimmed away), which is cheaper than a sync
# per step. On a CPU the check is free.
_GPU_STOP_CHECK_EVERY = 8
# Cut ended rows from the batch once this share of the live rows has ended (see _LiveRows);
# 0 to 1/2 measured alike on the demo model, so a small share that amortises the copy.
_CUT_MIN_SHARE = 0.125

# last-position logits [B, V] -> (token [B], its log-probability [B] under the distribution it
# was drawn from, and under the untruncated one at the sampling temperature [B])
Picker = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# the last hidden state at one position [B, H] -> a value per row [B] (PPO's value head)
ValueHead = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SampleConfig:
    """How responses are drawn; ``top_k=0`` and ``top_p=1`` mean no truncation, as in HF."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be non-negative, got {self.top_k}")


@dataclass(frozen=True)
class RolloutTokens:
    """Responses right-padded to the longest one, so ``cat(query, response)`` is one batch.

    ``response_mask`` is 1 up to and including the end token, so the end token is trained on
    and the padding after it is not; ``eos_found`` is false where the length limit cut a response.
    """

    response_ids: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] long
    eos_found: torch.Tensor  # [B] bool
    # [B, T] float32: each token's log-probability under the distribution it was drawn from
    # (temperature, top-k, top-p applied); 0 on padding
    logprobs: torch.Tensor
    # [B, T] float32: the same under the untruncated softmax at the sampling temperature (1 when
    # greedy), which is what PPO's ratio and KL are taken under; 0 on padding
    policy_logprobs: torch.Tensor
    # [B, T] float32: the value head at each position that predicts a response token, when one
    # was given; 0 on padding
    values: torch.Tensor | None = None


def sample_tokens(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: SampleConfig,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    value_head: ValueHead | None = None,
) -> RolloutTokens:
    """Responses to a left-padded batch of prompts; greedy gives ``generate``'s tokens exactly.

    Rows with the same prompt (same ids and mask) share one prefill. ``generator`` (on the
    model's device) makes sampling reproducible without touching the global RNG. The returned
    tensors are ordinary tensors, not inference tensors, because PPO multiplies the mask into
    losses that autograd must save it for.
    """
    eos_ids = _eos_ids(eos_token_id, input_ids.device)
    with torch.inference_mode():
        tokens, per_token, produced = _decode(
            model, input_ids, attention_mask, config, eos_ids, pad_token_id, generator, value_head
        )
    return _trim(tokens[:, :produced], [t[:, :produced] for t in per_token], eos_ids, pad_token_id)


def _eos_ids(eos_token_id: int | Sequence[int], device: torch.device) -> torch.Tensor:
    """Chat models may end on any of several tokens (Llama 3, Qwen), so an id list is accepted."""
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


def _decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: SampleConfig,
    eos_ids: torch.Tensor,
    pad_token_id: int,
    generator: torch.Generator | None,
    value_head: ValueHead | None,
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Tokens [B, max_new_tokens] (pad after each row's end); their sampler's and policy's
    log-probabilities (and values, given a value head) in that shape; how many steps were run."""
    batch, prompt_len = input_ids.shape
    steps = config.max_new_tokens
    device = input_ids.device
    pick = token_picker(config, generator)
    hidden = value_head is not None
    logits, last_hidden, cache = _prefill(model, input_ids, attention_mask, hidden)
    live = _LiveRows.start(attention_mask, steps, cache)
    tokens = torch.full((batch, steps), pad_token_id, dtype=torch.long, device=device)
    per_token = [
        torch.zeros((batch, steps), dtype=torch.float32, device=device)
        for _ in range(3 if hidden else 2)
    ]
    check_every = 1 if device.type == "cpu" else _GPU_STOP_CHECK_EVERY
    for t in range(steps):
        new, *logps = pick(logits)
        new = new.masked_fill_(live.finished, pad_token_id)
        tokens[live.rows, t] = new
        if hidden:
            logps.append(value_head(last_hidden).float())
        for buffer, value in zip(per_token, logps, strict=True):
            buffer[live.rows, t] = value.masked_fill_(live.finished, 0.0)
        live.finished |= torch.isin(new, eos_ids)
        if t + 1 == steps:
            break
        if (t + 1) % check_every == 0:
            kept = live.cut_finished(new)
            if kept is None:
                break
            new = kept
        out = model(
            input_ids=new[:, None],
            attention_mask=live.mask[:, : prompt_len + t + 1],
            position_ids=live.positions[:, t : t + 1],
            cache=live.cache,
            use_cache=True,
            output_hidden_states=hidden,
        )
        logits = out.logits[:, -1]
        last_hidden = out.hidden_states[-1][:, -1] if hidden else None
    return tokens, per_token, t + 1


def _prefill(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    hidden: bool,
    share: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """Last-position logits [B, V] (and last hidden state [B, H]) and the cache, for every row,
    from one prefill per distinct prompt: its cache is copied to the rows that repeat it."""
    groups = prompt_groups(input_ids, attention_mask) if share else None
    rows = slice(None) if groups is None else groups[0]
    out = model(
        input_ids=input_ids[rows],
        attention_mask=attention_mask[rows],
        position_ids=(attention_mask[rows].cumsum(-1) - 1).clamp_(min=0),
        use_cache=True,
        output_hidden_states=hidden,
        **last_logits_only(model),
    )
    logits = out.logits[:, -1]
    last_hidden = out.hidden_states[-1][:, -1] if hidden else None
    if groups is None:
        return logits, last_hidden, out.cache
    if not hasattr(out.cache, "reorder_cache"):  # no way to copy it: prefill every row
        return _prefill(model, input_ids, attention_mask, hidden, share=False)
    inverse = groups[1]
    out.cache.reorder_cache(inverse)
    return logits[inverse], None if last_hidden is None else last_hidden[inverse], out.cache


def prompt_groups(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the first row of each distinct prompt [U], each row's distinct prompt [B]), or None when
    no two rows are alike. A prompt is its ids and its mask (a pad id may also be a real token)."""
    keys = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if len(distinct) == len(keys):
        return None
    rows = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(distinct),), len(keys), device=keys.device)
    return first.scatter_reduce_(0, inverse, rows, "amin"), inverse


@dataclass
class _LiveRows:
    """The rows still being decoded, and the per-row state that must shrink with them.

    A step costs nearly in proportion to its rows for a small model (B=64: 5.6 ms, B=8: 1.8 ms
    on 2 CPU cores), and sampled lengths spread widely, so rows that have ended are cut from
    the cache, mask and positions instead of being decoded as padding until the longest ends.
    """

    rows: torch.Tensor  # [R] index of each live row in the batch
    finished: torch.Tensor  # [R] bool: ended, not yet cut
    mask: torch.Tensor  # [R, P + max_new_tokens] attention mask, response slots already 1
    positions: torch.Tensor  # [R, max_new_tokens] position of each response token
    cache: Any  # the model's own cache object

    @classmethod
    def start(cls, attention_mask: torch.Tensor, steps: int, cache: Any) -> _LiveRows:
        """Mask and positions are built once, so a step slices views instead of using cat.

        Response slots are attended from the start: a step only sees the slots before it.
        """
        batch, prompt_len = attention_mask.shape
        device = attention_mask.device
        mask = attention_mask.new_ones(batch, prompt_len + steps)
        mask[:, :prompt_len] = attention_mask
        first = attention_mask.sum(-1, keepdim=True)  # left padding: real prompt tokens per row
        positions = first + torch.arange(steps, device=device)
        rows = torch.arange(batch, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(rows, finished, mask, positions, cache)

    def cut_finished(self, new: torch.Tensor) -> torch.Tensor | None:
        """``new`` [R] for the rows kept, or None once every row has ended.

        Rows are cut only once enough have ended to pay for copying the cache; a cache without
        ``reorder_cache`` (the beam-search hook every transformers cache has) keeps them.
        """
        done = int(self.finished.sum())
        if done == len(self.rows):
            return None
        if done < _CUT_MIN_SHARE * len(self.rows) or not hasattr(self.cache, "reorder_cache"):
            return new
        keep = (~self.finished).nonzero().squeeze(-1)
        self.cache.reorder_cache(keep)
        self.rows, self.finished = self.rows[keep], self.finished[keep]
        self.mask, self.positions = self.mask[keep], self.positions[keep]
        return new[keep]


def last_logits_only(model: torch.nn.Module) -> dict[str, int]:
    """The prefill needs only the last position's logits; models that can skip the rest
    (``logits_to_keep``, most of transformers) save a [B, P, vocab] projection."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepts = "logits_to_keep" in inspect.signature(base.forward).parameters
    return {"logits_to_keep": 1} if accepts else {}


def _trim(
    tokens: torch.Tensor, per_token: list[torch.Tensor], eos_ids: torch.Tensor, pad_token_id: int
) -> RolloutTokens:
    """Cut to the longest response; the mask covers each row up to and including its first end
    token (counted so, it stays right when pad and eos are the same id)."""
    is_end = torch.isin(tokens, eos_ids)
    mask = (is_end.cumsum(1) - is_end.long() == 0).long()
    length = int(mask.sum(1).max())
    mask = mask[:, :length].contiguous()
    response = tokens[:, :length].masked_fill(mask == 0, pad_token_id)
    kept = [t[:, :length].masked_fill(mask == 0, 0.0) for t in per_token]
    return RolloutTokens(response, mask, is_end.any(1), *kept)


def token_picker(config: SampleConfig, generator: torch.Generator | None = None) -> Picker:
    """The next token [B] from last-position logits [B, V], with its log-probability under the
    distribution it was drawn from (the sampler's own) and under the untruncated softmax at the
    sampling temperature (the policy's, which PPO's first ratio must reproduce), the branches
    settled up front.

    Same distribution as HF's warpers in their order: temperature, then top-k, then top-p on
    what top-k kept, renormalised. Greedy is a point mass (log-probability 0) and its policy
    log-probabilities are at temperature 1.
    """
    temperature = 1.0 if config.greedy else config.temperature
    chosen = _truncated_draw(config, generator)

    def pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scaled = logits.float()
        return chosen(scaled if temperature == 1.0 else scaled / temperature)

    return pick


def _truncated_draw(config: SampleConfig, generator: torch.Generator | None) -> Picker:
    """Each branch gets the policy's log-probability the cheapest way its own work allows."""
    if config.greedy:
        return _greedy
    if config.top_k:
        return _top_k_draw(config.top_k, config.top_p, generator)
    if config.top_p < 1.0:
        return _top_p_draw(config.top_p, generator)

    def full(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logp = torch.log_softmax(scaled, -1)
        token = draw(logp.exp(), generator)
        token_logp = logp.gather(-1, token[:, None]).squeeze(-1)
        return token, token_logp, token_logp

    return full


def _greedy(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    token = scaled.argmax(-1)
    return token, torch.zeros_like(scaled[:, 0]), _policy_logp(scaled, token)


def _policy_logp(scaled: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """The untruncated log-softmax at ``token`` [B], without a [B, V] log-softmax."""
    return scaled.gather(-1, token[:, None]).squeeze(-1) - scaled.logsumexp(-1)


def _drawn(
    weights: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A token from candidate ``index`` [B, C] with unnormalised ``weights`` [B, C]: the token,
    its log-probability after renormalising over the candidates, and its log-weight."""
    choice = draw(weights, generator)[:, None]
    log_weight = weights.gather(-1, choice).log()
    logp = log_weight - weights.sum(-1, keepdim=True).log()
    return index.gather(-1, choice).squeeze(-1), logp.squeeze(-1), log_weight.squeeze(-1)


def _top_k_draw(top_k: int, top_p: float, generator: torch.Generator | None) -> Picker:
    def top_k_draw(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values, index = scaled.topk(min(top_k, scaled.shape[-1]))  # sorted, descending
        probs = torch.softmax(values, -1)
        if top_p < 1.0:
            probs = _nucleus(probs, top_p)
        token, logp, _ = _drawn(probs, index, generator)
        return token, logp, _policy_logp(scaled, token)

    return top_k_draw


def _top_p_draw(top_p: float, generator: torch.Generator | None) -> Picker:
    def top_p_draw(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values, index = _nucleus_candidates(torch.softmax(scaled, -1), top_p)
        # the candidates' weights are the full softmax's: a token's log-weight is its policy
        # log-probability, with no second pass over the vocabulary
        return _drawn(_nucleus(values, top_p), index, generator)

    return top_p_draw


def _nucleus_candidates(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top tokens of every row, sorted descending, at least every row's nucleus.

    A full sort of the vocabulary is the costliest op of a small model's step on a CPU, yet a
    nucleus is a few dozen tokens. Only tokens above (1 - top_p) / V can be in one (those at or
    below it hold at most 1 - top_p together, so the nucleus is complete before them), so a
    top-k over the largest such count in the batch is exact. On a GPU the sort is cheap and the
    count would be a sync, so it sorts.
    """
    if probs.device.type != "cpu":
        return probs.sort(-1, descending=True)
    floor = (1.0 - top_p) / probs.shape[-1]
    return probs.topk(int((probs > floor).sum(-1).max()))


def _nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the nucleus: the smallest prefix (descending) whose mass reaches
    ``top_p``; the top token always stays. Same rule as HF's ``TopPLogitsWarper``."""
    before = sorted_probs.cumsum(-1) - sorted_probs
    return sorted_probs.masked_fill(before >= top_p, 0.0)


def draw(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row, with probability proportional to ``weights`` [B, V] (need not sum to 1).

    Inverse CDF: one uniform per row and a binary search, where ``torch.multinomial`` draws an
    exponential variate per vocabulary entry (ten times slower at B=64, V=752 on a CPU). The CDF
    is in float64 so rounding does not shift mass between tokens for large vocabularies; the
    target is kept strictly below the total so a zero-weight tail is never picked.
    """
    dtype = torch.float32 if weights.device.type == "mps" else torch.float64  # mps has no f64
    cdf = weights.cumsum(-1, dtype=dtype)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=dtype, device=cdf.device, generator=generator)
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)
