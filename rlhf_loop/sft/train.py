"""Supervised fine-tuning of a policy on demonstrations: the optimisation loop, on any ``Policy``
(the job decides which demonstrations and which version; ``sft.evaluate`` measures them).

Through ``ppo.policy.forward``, so SFT sees the policy exactly as PPO does (no dropout, the same
positions under left padding), and it trains what PPO trains: the LoRA adapter, and the final
norm when the policy has it trainable.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from rlhf_loop.ppo.policy import Policy, forward
from rlhf_loop.sft.data import Demonstration, sft_inputs
from rlhf_loop.sft.loss import mean_response_nll


@dataclass(frozen=True)
class SFTConfig:
    epochs: int
    batch: int
    lr: float
    max_length: int


def _chunks(pairs: list[Demonstration], size: int) -> Iterator[list[Demonstration]]:
    for start in range(0, len(pairs), size):
        yield pairs[start : start + size]


def _logits_and_inputs(
    policy: Policy, pairs: list[Demonstration], max_length: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    prompts = [p for p, _ in pairs]
    answers = [a for _, a in pairs]
    inputs = {
        name: tensor.to(policy.device)
        for name, tensor in sft_inputs(policy.tokenizer, prompts, answers, max_length).items()
    }
    logits, _ = forward(policy, inputs["input_ids"], inputs["attention_mask"], with_values=False)
    return logits, inputs


def train_sft(
    policy: Policy,
    pairs: list[Demonstration],
    config: SFTConfig,
    seed: int,
    on_step: Callable[[int, int, float], None],
) -> list[float]:
    """``config.epochs`` shuffled passes over ``pairs`` with AdamW; the loss of every step.

    ``on_step(step, total, loss)`` after each step: the job's progress and metrics. The value
    head is in the optimiser's groups but gets no gradient here, so AdamW leaves it alone.
    """
    optimiser = torch.optim.AdamW(
        policy.optimiser_groups(config.lr, config.lr), lr=config.lr, weight_decay=0.0
    )
    rng = random.Random(seed)
    total = config.epochs * -(-len(pairs) // config.batch)
    losses: list[float] = []
    for _ in range(config.epochs):
        order = list(pairs)
        rng.shuffle(order)
        for chunk in _chunks(order, config.batch):
            logits, inputs = _logits_and_inputs(policy, chunk, config.max_length)
            loss = mean_response_nll(logits, inputs["input_ids"], inputs["response_mask"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            on_step(len(losses), total, losses[-1])
    return losses
