"""Rankings as reward-model training data: one example per ranking, K texts each.

The split into training and held-out sets is by prompt (a hash of its text), so a held-out
ranking never shares a prompt with a training one and the held-out accuracy measures
generalisation to new prompts, not memorised ones. The split is stable as data grows: a prompt
never moves from held-out to training between versions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlite_utils
import torch
from transformers import PreTrainedTokenizerBase

from rlhf_loop.export import ranking_records
from rlhf_loop.model.prompting import format_prompt
from rlhf_loop.reward.shared_prefix import PackedRankings, pack_rankings


@dataclass(frozen=True)
class RankingExample:
    prompt: str
    responses: list[str]
    ranks: list[int]
    prompt_label: str | None = None
    ranking_id: int | None = None  # the store's, for rankings loaded from it


def load_rankings(db: sqlite_utils.Database) -> list[RankingExample]:
    """Every ranking that trains (``store.training_rankings``: no undone, skipped or flagged
    answers, no gold items, no retired prompts)."""
    return [
        RankingExample(
            prompt=r["prompt"],
            responses=[x["text"] for x in r["responses"]],
            ranks=[x["rank"] for x in r["responses"]],
            prompt_label=r["prompt_label"],
            ranking_id=r["ranking_id"],
        )
        for r in ranking_records(db)
    ]


def _unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by ``text``: the same on every machine and every run."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(prompt: str, fraction: float) -> bool:
    return _unit_hash(prompt) < fraction


def split_held_out(
    examples: list[RankingExample], fraction: float
) -> tuple[list[RankingExample], list[RankingExample]]:
    train = [e for e in examples if not is_held_out(e.prompt, fraction)]
    held_out = [e for e in examples if is_held_out(e.prompt, fraction)]
    return train, held_out


def heldout_sample(examples: list[RankingExample], most: int) -> list[RankingExample]:
    """At most ``most`` of the held-out rankings (0: all), chosen by a hash of their ids, so the
    sample is the same from one version to the next and a ranking added later joins it only in
    place of one it outranks: versions are compared on (mostly) the same rankings."""
    if not most or len(examples) <= most:
        return examples
    return sorted(examples, key=lambda e: _unit_hash(f"ranking {e.ranking_id}"))[:most]


def exchange_text(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> str:
    """Prompt and response as the policy saw and wrote them: what the reward model judges."""
    return f"{format_prompt(tokenizer, prompt)} {response}"


def reward_inputs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and ``response_mask`` (1 on tokens that hold response text)
    for each exchange: the one tokenisation every reward-model pass uses. Long prompts lose
    their start. The mask comes from character offsets, so a token that merges the separating
    space with the response's first characters counts as response."""
    texts = [exchange_text(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    starts = [len(t) - len(r) for t, r in zip(texts, responses, strict=True)]
    tokenizer.truncation_side = "left"
    encode = {"return_tensors": "pt", "padding": True, "truncation": True, "max_length": max_length}
    if not tokenizer.is_fast:  # no character offsets
        inputs = dict(tokenizer(texts, **encode))
        inputs["response_mask"] = tail_mask(tokenizer, responses, inputs["attention_mask"])
        return inputs
    inputs = dict(tokenizer(texts, return_offsets_mapping=True, **encode))
    ends = inputs.pop("offset_mapping")[:, :, 1]
    inputs["response_mask"] = (ends > torch.tensor(starts)[:, None]) & inputs[
        "attention_mask"
    ].bool()
    return inputs


def tail_mask(
    tokenizer: PreTrainedTokenizerBase, responses: list[str], attention_mask: torch.Tensor
) -> torch.Tensor:
    """For tokenizers without offsets: the last real tokens of each row, as many as the
    response has on its own (with its separating space)."""
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    for row, response in enumerate(responses):
        n = len(tokenizer(f" {response}", add_special_tokens=False)["input_ids"])
        real = attention_mask[row].nonzero().squeeze(-1)
        mask[row, real[len(real) - min(n, len(real)) :]] = True
    return mask


@dataclass(frozen=True)
class RankingBatch:
    """B rankings flattened to one forward pass over all their responses (``inputs``: one row
    per response, or one row per ranking, its prompt read once: ``shared_prefix``).

    ``rank_grid`` is [B, Kmax] with 0 where a ranking has fewer than Kmax responses, and
    ``slots`` says where each flattened row's reward goes in that grid.
    """

    inputs: dict[str, torch.Tensor] | PackedRankings
    rank_grid: torch.Tensor
    slots: tuple[torch.Tensor, torch.Tensor]

    def reward_grid(self, flat_rewards: torch.Tensor) -> torch.Tensor:
        grid = flat_rewards.new_zeros(self.rank_grid.shape)
        return grid.index_put(self.slots, flat_rewards)


def collate(
    examples: list[RankingExample],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    packed: bool = False,
    end_id: int | None = None,
) -> RankingBatch:
    """Tokenise every response of every ranking once (``reward_inputs``); ``packed``: one row
    per ranking, its prompt read once (``shared_prefix``; ``end_id`` for a likelihood reward)."""
    prompts, responses, rows, cols = [], [], [], []
    k_max = max(len(e.responses) for e in examples)
    rank_grid = torch.zeros(len(examples), k_max, dtype=torch.long)
    for b, example in enumerate(examples):
        for j, (response, rank) in enumerate(zip(example.responses, example.ranks, strict=True)):
            prompts.append(example.prompt)
            responses.append(response)
            rows.append(b)
            cols.append(j)
            rank_grid[b, j] = rank
    inputs = reward_inputs(tokenizer, prompts, responses, max_length)
    owner = torch.tensor(rows)
    if packed:
        inputs = pack_rankings(inputs, owner, tokenizer.pad_token_id, end_id)
    return RankingBatch(inputs, rank_grid, (owner, torch.tensor(cols)))
