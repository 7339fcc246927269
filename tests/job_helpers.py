"""Running a worker job in the test's own process: a context with small settings."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext
from rlhf_loop.store import jobs


class Progress:
    """Keeps what the job reported, where the worker's heartbeat would show it."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, float | None]] = []

    def report(self, status: str, progress: float | None = None) -> None:
        self.reports.append((status, progress))


def job_context(
    db: sqlite_utils.Database, tmp_path: Path, model_path: Path, kind: str, **overrides
) -> JobContext:
    """A claimed ``kind`` job with settings small enough for the demo model on a CPU; a PPO
    round's version goes live at once unless ``policy_adoption`` says otherwise."""
    settings = Settings(
        data_dir=str(tmp_path),
        device="cpu",
        max_new_tokens=16,
        reward_epochs=2,
        reward_lr=1e-3,
        reward_max_length=64,
        ppo_after_reward=False,
        ppo_steps=2,
        ppo_batch_prompts=8,
        ppo_samples_per_prompt=2,
        ppo_minibatch=8,
        ppo_eval_prompts=6,
        policy_adoption="immediate",
    ).replace(**overrides)
    jobs.enqueue(db, kind)
    return JobContext(db, settings, jobs.claim(db, "test", 30), Progress(), str(model_path))
