"""How well a model knows a set of demonstrations: mean NLL per response token.

The measure behind an SFT round's before/after and PPO-ptx's promise (the demonstrations are not
forgotten while the reward is chased). Lower is better; a change of 0.1 nats per token is about
a 10% change in each token's probability.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_loop.sft.data import sft_inputs
from rlhf_loop.sft.loss import response_nll


@torch.inference_mode()
def demonstration_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list[str],
    max_length: int,
    batch_size: int = 16,
) -> float | None:
    """Mean NLL per response token (end token included) over all demonstrations; None for
    none. Without dropout, whatever mode the model was in (a policy mid-round)."""
    training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    for start in range(0, len(prompts), batch_size):
        inputs = sft_inputs(
            tokenizer,
            prompts[start : start + batch_size],
            answers[start : start + batch_size],
            max_length,
        )
        inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
        positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=positions,
        ).logits
        row_total, row_tokens = response_nll(logits, inputs["input_ids"], inputs["response_mask"])
        total += row_total.sum().item()
        tokens += row_tokens.sum().item()
    model.train(training)
    return total / tokens if tokens else None
