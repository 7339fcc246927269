"""Rollout: sample responses from the policy (adapter on) as tensors PPO can reuse.

Queries are left-padded and responses right-padded, so ``cat(query, response)`` is one
left-padded batch whose response logits sit at ``[P - 1 : P - 1 + T]`` for every row.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from rlhf_loop.ppo.policy import Policy, merged_adapter
from rlhf_loop.ppo.rollout_sampling import SampleConfig
from rlhf_loop.sampler import draw_responses


def prompt_index(prompts: list[str]) -> torch.Tensor:
    """[B] one number per distinct prompt, in order of first appearance: what packing groups
    by (a prompt's samples read it once)."""
    first: dict[str, int] = {}
    return torch.tensor([first.setdefault(p, len(first)) for p in prompts])


@dataclass
class Rollout:
    prompts: list[str]  # one per row (a prompt repeats once per sample)
    query_ids: torch.Tensor  # [B, P] left-padded
    query_mask: torch.Tensor
    response_ids: torch.Tensor  # [B, T] right-padded
    response_mask: torch.Tensor  # 1 up to and including the end token
    eos_found: torch.Tensor  # [B] bool
    texts: list[str]
    # [B, T] each token's log-probability under the distribution that drew it (truncation
    # included), and that distribution's temperature: PPO's log-probs use the same temperature
    sample_logprobs: torch.Tensor
    temperature: float = 1.0
    # [B, T] the policy's log-probs (untruncated, at ``temperature``) and values, as the
    # sampler's decode computed them; None where they must come from a forward pass
    policy_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def select(self, keep: torch.Tensor) -> Rollout:
        """The rows where ``keep`` is true (e.g. those the reward model could score)."""
        rows = keep.nonzero().squeeze(-1).tolist()

        def kept(value: Any) -> Any:
            if isinstance(value, list):
                return [value[i] for i in rows]
            return value[rows] if isinstance(value, torch.Tensor) else value

        return Rollout(**{f.name: kept(getattr(self, f.name)) for f in fields(self)})

    def prompt_index(self) -> torch.Tensor:
        """[B] the same number for the rows that answer the same prompt."""
        return prompt_index(self.prompts)

    def response_slice(self, per_position: torch.Tensor) -> torch.Tensor:
        """The positions whose outputs predict (or value) the response tokens."""
        start = self.query_ids.shape[1] - 1
        return per_position[:, start : start + self.response_ids.shape[1]]


@torch.no_grad()
def rollout(
    policy: Policy,
    prompts: list[str],
    samples_per_prompt: int,
    config: SampleConfig,
    generator: torch.Generator | None = None,
) -> Rollout:
    """``samples_per_prompt`` responses to each prompt, drawn with the adapter merged in.

    No dropout (eval mode), so the sampler's decode is the policy's forward pass, and on a
    float32 base its log-probs and values are kept for PPO's step instead of a second forward
    pass over the batch (they match one to ~1e-5; on a bfloat16 base the decode's rounding
    differs from the batched pass's, so the step recomputes them).
    """
    policy.model.eval()  # no dropout: the rollout's distribution is the one PPO's ratio starts at
    exact = policy.float32_base
    with merged_adapter(policy):
        drawn = draw_responses(
            policy.model,
            policy.tokenizer,
            prompts,
            samples_per_prompt,
            config,
            generator,
            policy.values if exact else None,
        )
    tokens = drawn.tokens
    return Rollout(
        drawn.prompts,
        drawn.query_ids,
        drawn.query_mask,
        tokens.response_ids,
        tokens.response_mask,
        tokens.eos_found,
        drawn.texts,
        tokens.logprobs,
        1.0 if config.greedy else config.temperature,
        tokens.policy_logprobs if exact else None,
        tokens.values,
    )
