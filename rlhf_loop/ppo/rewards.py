"""What a PPO sample is worth: the reward model's score, the reward functions' values, or both.

InstructGPT-style rounds score with the reward model alone; RLVR rounds with programs that check
the answer (``rlhf_loop.verifiers``); a mixed round adds them, so a verifiable part of the task
is learnt from the check while the reward model carries what only people can judge. The mix is
plain: ``reward_model_weight`` times the model's score plus each applicable function's weight
times its value, normalised together by the PPO step's running moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_loop.ppo.scoring import score
from rlhf_loop.verifiers import RewardFunction, function_values


@dataclass(frozen=True)
class SampleRewards:
    """``model`` is (model, tokenizer, meta) of the reward model, or None for functions only."""

    model: tuple[Any, Any, dict[str, Any]] | None
    model_weight: float
    functions: Sequence[RewardFunction]
    max_length: int

    def __call__(
        self, prompts: list[str], responses: list[str]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One reward per sample (NaN where the reward model gave none, for ``usable`` to
        judge), and per function its mean value on the samples it applied to.
        Raises ``VerifierFailed`` when a function raises or returns a non-finite value."""
        total = torch.zeros(len(prompts))
        stats: dict[str, float] = {}
        if self.model is not None:
            total += self.model_weight * score(*self.model, prompts, responses, self.max_length)
        if self.functions:
            values, means = function_values(self.functions, prompts, responses)
            total += torch.tensor(values)
            stats = {name: mean for name, mean in means.items() if mean is not None}
        return total, stats
