"""Active selection: serve first the comparisons a human ranking would teach the model most.

Two signals from the newest reward model, both cheap (one scoring pass per new comparison):
- uncertainty: how unsure the model is of the order of the comparison's responses, averaged
  over all pairs (the entropy of each pair's Bradley-Terry probability). Measured on demo data,
  the quarter of items it ranks first holds more of the model's ordering errors than the rest,
  which the smallest single gap did not: it favoured near-duplicates, whose truth is a tie.
- middle difficulty: prompts whose mean reward sits far in either tail are ones the policy
  already does very well or very badly on; their rankings say little about the boundary.
"""

from __future__ import annotations

import itertools
import math
import statistics

import sqlite_utils
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.reward.data import reward_inputs
from rlhf_loop.reward.model import flat_rewards, load_reward_model
from rlhf_loop.store.db import write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.generations import comparison_generations
from rlhf_loop.store.versions import latest_version

DIFFICULTY_WEIGHT = 0.1  # nats of pair entropy given up per standard deviation off-centre


def _pair_entropy(gap: float) -> float:
    """Entropy (nats) of the Bradley-Terry order of two responses with this reward gap."""
    p = 1.0 / (1.0 + math.exp(-abs(gap)))
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p)) if p < 1.0 else 0.0


def selection_priority(rewards: list[list[float]]) -> list[float]:
    """Higher = serve sooner: the mean uncertainty of the model's order over all pairs of a
    comparison (its own probabilities, so the reward scale counts), less a penalty for prompts
    in the tails of difficulty, scaled by the spread of all rewards."""
    flat = [r for group in rewards for r in group]
    spread = statistics.pstdev(flat) or 1.0
    means = [statistics.fmean(group) for group in rewards]
    centre = statistics.median(means)
    return [
        statistics.fmean(_pair_entropy(a - b) for a, b in itertools.combinations(group, 2))
        - DIFFICULTY_WEIGHT * abs(mean - centre) / spread
        for group, mean in zip(rewards, means, strict=True)
    ]


@torch.inference_mode()
def score_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    responses: list[str],
    max_length: int,
) -> list[float]:
    inputs = reward_inputs(tokenizer, [prompt] * len(responses), responses, max_length)
    return flat_rewards(model, inputs).tolist()


def reprioritise(
    db: sqlite_utils.Database,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    comparison_ids: list[int] | None = None,
) -> int:
    """Score comparisons nobody has been served yet (or the given ones); returns how many.
    Gold items are served on their own schedule, so they are never scored."""
    where = "gold_ranks IS NULL AND id NOT IN (SELECT comparison_id FROM assignments)"
    if comparison_ids is not None:
        where = f"id IN ({','.join(map(str, comparison_ids))})"
    comparisons = list(db["comparisons"].rows_where(where))
    if not comparisons:
        return 0
    rewards = []
    for comparison in comparisons:
        texts = [g["text"] for g in comparison_generations(db, comparison["generation_ids"])]
        prompt = db["prompts"].get(comparison["prompt_id"])["text"]
        rewards.append(score_responses(model, tokenizer, prompt, texts, max_length))
    with write_txn(db):
        for comparison, priority in zip(comparisons, selection_priority(rewards), strict=True):
            db["comparisons"].update(comparison["id"], {"priority": priority})
    return len(comparisons)


class ActiveSelector:
    """Keeps the newest reward model loaded in the worker and re-scores the unserved queue.

    A version whose files are missing or unreadable is reported once and skipped: the queue
    then stays in arrival order, which is what it would be without a reward model.
    """

    def __init__(self, device: str, max_length: int, dtype: str = "auto") -> None:
        self.device, self.max_length, self.dtype = device, max_length, dtype
        self.version: int | None = None
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def refresh(self, db: sqlite_utils.Database) -> int:
        """Re-score every unserved comparison with the newest usable reward model."""
        latest = latest_version(db, "reward")
        if latest is None:
            return 0
        if latest["version"] != self.version:
            self.version = latest["version"]
            try:
                self.model, self.tokenizer, _ = load_reward_model(
                    latest["path"], self.device, self.dtype
                )
            except ModelLoadError as exc:
                self.model = self.tokenizer = None
                log_event(db, "reward_model_unusable", version=self.version, error=str(exc))
        if self.model is None or self.tokenizer is None:
            return 0
        return reprioritise(db, self.model, self.tokenizer, self.max_length)
