"""Rollout: sample responses from the policy (adapter on) as tensors PPO can reuse.

Queries are left-padded and responses right-padded, so ``cat(query, response)`` is one
left-padded batch whose response logits sit at ``[P - 1 : P - 1 + T]`` for every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_loop.model.prompting import format_prompt
from rlhf_loop.ppo.policy import Policy
from rlhf_loop.ppo.rollout_sampling import SampleConfig, sample_tokens
from rlhf_loop.sampler import prompt_budget


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

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def select(self, keep: torch.Tensor) -> Rollout:
        """The rows where ``keep`` is true (e.g. those the reward model could score)."""
        rows = keep.nonzero().squeeze(-1).tolist()
        return Rollout(
            [self.prompts[i] for i in rows],
            self.query_ids[rows],
            self.query_mask[rows],
            self.response_ids[rows],
            self.response_mask[rows],
            self.eos_found[rows],
            [self.texts[i] for i in rows],
            self.sample_logprobs[rows],
            self.temperature,
        )

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
    tokenizer = policy.tokenizer
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    budget = prompt_budget(policy.model, config.max_new_tokens)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    query = tokenizer(
        [format_prompt(tokenizer, p) for p in rows],
        return_tensors="pt",
        padding=True,
        truncation=budget is not None,
        max_length=budget,
        add_special_tokens=False,
    ).to(policy.device)
    policy.model.eval()  # no dropout: the rollout's distribution is the one PPO's ratio starts at
    tokens = sample_tokens(
        policy.model,
        query["input_ids"],
        query["attention_mask"],
        config,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        generator=generator,
    )
    texts = [
        tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).strip()
        for ids, mask in zip(tokens.response_ids, tokens.response_mask, strict=True)
    ]
    return Rollout(
        rows,
        query["input_ids"],
        query["attention_mask"],
        tokens.response_ids,
        tokens.response_mask,
        tokens.eos_found,
        texts,
        tokens.logprobs,
        1.0 if config.greedy else config.temperature,
    )
