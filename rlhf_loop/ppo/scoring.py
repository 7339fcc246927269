"""Scoring rollouts with the frozen reward model, and what to do when it misbehaves.

A reward model can return NaN or infinity (a broken version, an overflow in half precision).
Such responses are left out of the update rather than given an invented score; a round where
too many are unscorable stops with the reason instead of training on noise.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_loop.ppo.rollout import prompt_index
from rlhf_loop.reward.data import reward_inputs
from rlhf_loop.reward.likelihood import LikelihoodReward
from rlhf_loop.reward.model import flat_rewards, rewards_as_trained
from rlhf_loop.reward.shared_prefix import pack_rankings, shares_prefixes

MAX_UNSCORABLE_SHARE = 0.5


class UnscorableBatch(RuntimeError):
    """Too many responses got no finite reward; the message says how many."""


@torch.inference_mode()
def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    meta: dict[str, Any],
    prompts: list[str],
    responses: list[str],
    max_length: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """One reward per (prompt, response), on the CPU, on the scale the version's loss shaped
    (``meta`` is the version's metadata, which says how it was trained)."""
    scores = []
    packed = shares_prefixes(model)
    end_id = model.end_id if isinstance(model, LikelihoodReward) else None
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        inputs = reward_inputs(tokenizer, chunk, responses[start : start + batch_size], max_length)
        if packed:  # the samples of one prompt read it once (``reward.shared_prefix``)
            owner = prompt_index(chunk)
            inputs = pack_rankings(inputs, owner, tokenizer.pad_token_id, end_id)
        scores.append(flat_rewards(model, inputs).cpu())
    return rewards_as_trained(torch.cat(scores), meta)


def usable(scores: torch.Tensor) -> torch.Tensor:
    """Mask of finite scores; raises when too few are, so a broken model cannot steer a round."""
    finite = torch.isfinite(scores)
    bad = int((~finite).sum())
    if bad > MAX_UNSCORABLE_SHARE * len(scores):
        raise UnscorableBatch(
            f"the reward model returned no finite score for {bad} of {len(scores)} responses"
        )
    return finite
