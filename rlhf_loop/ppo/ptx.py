"""PPO-ptx (InstructGPT, Ouyang et al. 2022): the supervised loss mixed into every PPO update.

Chasing a reward moves the policy away from what it was taught; InstructGPT added the pretraining
log-likelihood to the PPO objective, weighted by γ, so public-task performance did not regress.
Here the mixed-in data are the demonstrations people wrote or imported (on training prompts only,
so held-out demonstrations still measure what was kept), or the lines of ``ppo_ptx_file``. Each
update draws ``ppo_ptx_batch`` of them at random and adds ``ppo_ptx_coef`` times their mean
response NLL to the PPO loss (``ppo.step``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
import torch
from transformers import PreTrainedTokenizerBase

from rlhf_loop.config import Settings
from rlhf_loop.sft.data import live_demonstrations, sft_inputs, split_demonstrations, text_inputs


class PtxUnavailable(ValueError):
    """PPO-ptx is on but there is nothing to mix in; the message says what to provide."""


@dataclass
class PtxSource:
    """Demonstrations (prompt, answer) or passages (prompt None), drawn with replacement."""

    prompts: list[str] | None
    texts: list[str]
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    batch: int
    rng: random.Random

    def next(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        picks = [self.rng.randrange(len(self.texts)) for _ in range(self.batch)]
        texts = [self.texts[i] for i in picks]
        if self.prompts is None:
            inputs = text_inputs(self.tokenizer, texts, self.max_length)
        else:
            prompts = [self.prompts[i] for i in picks]
            inputs = sft_inputs(self.tokenizer, prompts, texts, self.max_length)
        return {name: tensor.to(device) for name, tensor in inputs.items()}


def training_demonstrations(
    db: sqlite_utils.Database, heldout_fraction: float
) -> tuple[list[str], list[str]]:
    """Live demonstrations on prompts PPO trains on: (prompts, answers)."""
    train, _ = split_demonstrations(live_demonstrations(db), heldout_fraction)
    return [p for p, _ in train], [a for _, a in train]


def ptx_source(
    db: sqlite_utils.Database,
    settings: Settings,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
) -> PtxSource | None:
    """What this round mixes in, or None with ``ppo_ptx_coef = 0``."""
    if settings.ppo_ptx_coef == 0:
        return None
    common = {
        "tokenizer": tokenizer,
        "max_length": settings.reward_max_length,
        "batch": settings.ppo_ptx_batch,
        "rng": random.Random(seed),
    }
    if settings.ppo_ptx_file:
        path = Path(settings.ppo_ptx_file).expanduser()
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise PtxUnavailable(f"ppo_ptx_file {path}: {exc}") from None
        passages = [line for line in lines if line]
        if not passages:
            raise PtxUnavailable(f"ppo_ptx_file {path} holds no text")
        return PtxSource(None, passages, **common)
    prompts, answers = training_demonstrations(db, settings.reward_heldout_fraction)
    if not answers:
        raise PtxUnavailable(
            "ppo_ptx_coef > 0 but there are no demonstrations on training prompts: write some on "
            "the Rank page or import them on the Data page, name a ppo_ptx_file, or set "
            "ppo_ptx_coef = 0"
        )
    return PtxSource(prompts, answers, **common)
