"""Demonstrations as model inputs: the exchange the policy would see and write, end token included.

The same tokenisation as the reward model's (``reward.data.reward_inputs``: the prompt frame the
sampler uses, long prompts losing their start) with the end-of-text token appended as part of the
response, so SFT teaches exactly the text PPO later samples.
"""

from __future__ import annotations

import sqlite_utils
import torch
from transformers import PreTrainedTokenizerBase

from rlhf_loop.export_sft import sft_records
from rlhf_loop.reward.data import is_held_out, reward_inputs
from rlhf_loop.reward.likelihood import with_end_token

Demonstration = tuple[str, str]  # (prompt, answer)


def live_demonstrations(db: sqlite_utils.Database) -> list[Demonstration]:
    """What the SFT export holds: live demonstrations on prompts in use, oldest first."""
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in sft_records(db)]


def split_demonstrations(
    pairs: list[Demonstration], heldout_fraction: float
) -> tuple[list[Demonstration], list[Demonstration]]:
    """(training, held-out) by prompt, as the reward model and PPO split prompts: no stage of
    the loop trains on what another is judged by."""
    train: list[Demonstration] = []
    held: list[Demonstration] = []
    for pair in pairs:
        (held if is_held_out(pair[0], heldout_fraction) else train).append(pair)
    return train, held


def sft_inputs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_length: int
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``response_mask`` (response tokens and the end)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text token to end a demonstration with")
    inputs = reward_inputs(tokenizer, prompts, responses, max_length)
    ids, attention, response = with_end_token(
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["response_mask"],
        tokenizer.eos_token_id,
    )
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def text_inputs(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Plain passages (a pretraining file's lines) as targets whole, end token included: no
    prompt frame, every token is learnt."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text token to end a passage with")
    tokenizer.truncation_side = "right"
    encoded = tokenizer(
        texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length
    )
    ids, attention, response = with_end_token(
        encoded["input_ids"],
        encoded["attention_mask"],
        encoded["attention_mask"].bool(),
        tokenizer.eos_token_id,
    )
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}
