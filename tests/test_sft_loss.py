"""The supervised loss on demonstrations, on tensors alone, and the inputs it reads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlhf_loop.model.loader import load_causal_lm
from rlhf_loop.sft.data import sft_inputs
from rlhf_loop.sft.loss import mean_response_nll, response_nll


def test_only_response_tokens_are_targets_each_predicted_by_the_position_before() -> None:
    vocab = 4
    input_ids = torch.tensor([[0, 1, 2, 3]])
    response_mask = torch.tensor([[False, False, True, True]])  # tokens 2 and 3 are the answer
    logits = torch.zeros(1, 4, vocab)
    logits[0, 1, 2] = math.log(3.0)  # position 1 gives token 2 probability 3 / (3 + 3) = 1/2
    logits[0, 2, 3] = math.log(7.0)  # position 2 gives token 3 probability 7 / 10
    logits[0, 0, 1] = 50.0  # the prompt's own prediction is no target, however good or bad
    total, tokens = response_nll(logits, input_ids, response_mask)
    assert tokens.tolist() == [2.0]
    assert total.item() == pytest.approx(-math.log(0.5) - math.log(0.7), rel=1e-5)
    assert mean_response_nll(logits, input_ids, response_mask).item() == pytest.approx(
        (-math.log(0.5) - math.log(0.7)) / 2, rel=1e-5
    )


def test_long_answers_weigh_by_their_tokens_and_an_empty_batch_is_zero() -> None:
    logits = torch.zeros(2, 3, 5)  # uniform: every target costs log 5
    ids = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[False, True, True], [False, False, True]])
    assert mean_response_nll(logits, ids, mask).item() == pytest.approx(math.log(5))
    assert mean_response_nll(logits, ids, torch.zeros_like(mask)).item() == 0.0


def test_inputs_end_each_demonstration_with_the_end_token(demo_model_path: Path) -> None:
    _, tokenizer = load_causal_lm(str(demo_model_path), "cpu", "float32")
    inputs = sft_inputs(tokenizer, ["What is 2 + 2?", "Hi"], ["4.", "Hello there, friend."], 64)
    for row, answer in enumerate(["4.", "Hello there, friend."]):
        targets = inputs["input_ids"][row][inputs["response_mask"][row]]
        assert targets[-1].item() == tokenizer.eos_token_id
        assert tokenizer.decode(targets[:-1]).strip() == answer
