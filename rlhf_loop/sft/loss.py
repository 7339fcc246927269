"""The supervised loss on demonstrations: negative log-likelihood of the response tokens only.

The prompt is context, not a target (the policy never writes it), and the end token is a
target: a demonstration teaches where an answer stops as much as what it says. Pure tensor
functions, so the math is tested without a model.
"""

from __future__ import annotations

import torch


def response_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the summed NLL of its response tokens and how many there are.

    ``logits`` [B, T, V] from a causal LM over ``input_ids`` [B, T]; ``response_mask`` [B, T]
    marks the tokens to predict. Position t's logits predict token t + 1.
    """
    # step 1: align each prediction with the token it predicts
    predicted = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = response_mask[:, 1:].to(predicted.dtype)
    # step 2: -log p(target) at every position, kept only on response tokens
    token_nll = torch.nn.functional.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    return (token_nll * mask).sum(-1), mask.sum(-1)


def mean_response_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """NLL per response token over the whole batch (a long answer weighs by its tokens, as
    the pretraining loss does); 0 for a batch without response tokens."""
    total, tokens = response_nll(logits, input_ids, response_mask)
    return total.sum() / tokens.sum().clamp(min=1)
