"""The whole online loop driven by a simulated annotator, for the learning test and benchmark.

Each iteration: the live policy samples ranking tasks, the simulated annotator ranks them
through the Rank page's store calls, then the worker's two jobs run in turn: a reward-model
retrain on all rankings so far and a PPO round. After each iteration the oracle (the hidden
preference) scores the live policy's samples on held-out prompts, which the loop never trained
on; the KL to the reference comes from the round's own held-out evaluation.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils
import torch

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext
from rlhf_loop.ppo.round import run_ppo_round, split_prompts
from rlhf_loop.reward.job import run_train_reward
from rlhf_loop.sampler import LivePolicy, SamplingParams, sample_responses
from rlhf_loop.simulate import Oracle, SimulatedAnnotator, annotate
from rlhf_loop.store import jobs
from rlhf_loop.store.generations import add_comparisons, prompts_to_sample
from rlhf_loop.store.versions import live_policy

SCORING_SAMPLES = 4  # per held-out prompt, for the oracle's score
# Settings under which the demo model learns within a minute or two on a laptop CPU.
DEMO_LOOP_SETTINGS = {
    "device": "cpu",
    "k": 4,
    "max_new_tokens": 24,
    "reward_epochs": 3,
    "reward_lr": 1e-3,
    "reward_max_length": 64,
    "reward_heldout_fraction": 0.15,
    "ppo_after_reward": False,
    "ppo_steps": 10,
    "ppo_batch_prompts": 16,
    "ppo_samples_per_prompt": 2,
    "ppo_minibatch": 16,
    "ppo_lr": 2e-3,
    "ppo_eval_prompts": 24,
    "ppo_kl_coef": 0.15,
    "policy_adoption": "immediate",
}


@dataclass
class LoopCurve:
    oracle_scores: list[float] = field(default_factory=list)  # before, then after each iteration
    kl: list[float] = field(default_factory=list)  # per iteration, to the reference
    rankings: list[int] = field(default_factory=list)


class _Quiet:
    def report(self, status: str, progress: float | None = None) -> None:
        pass


def oracle_score(
    policy: LivePolicy,
    db: sqlite_utils.Database,
    settings: Settings,
    oracle: Oracle,
    prompts: list[str],
) -> float:
    """Mean hidden-preference score of the live policy's samples (a fixed seed)."""
    model, tokenizer, _ = policy.current(live_policy(db, settings.model))
    torch.manual_seed(1234)
    params = SamplingParams(SCORING_SAMPLES, 1.0, 1.0, 0, settings.max_new_tokens)
    groups = sample_responses(model, tokenizer, prompts, params)
    return statistics.fmean(
        oracle.score(p, s.text) for p, g in zip(prompts, groups, strict=True) for s in g
    )


def _run_job(db, settings: Settings, kind: str, run: Callable, policy_path: str) -> dict:
    jobs.enqueue(db, kind, {"reason": "simulated loop"})
    job = jobs.claim(db, "simulated-loop", settings.lease_timeout_s)
    return run(JobContext(db, settings, job, _Quiet(), policy_path))  # ends the job as done


def run_loop(
    db: sqlite_utils.Database,
    settings: Settings,
    policy_path: str,
    annotator: SimulatedAnnotator,
    iterations: int,
    rankings_per_iteration: int,
    on_iteration: Callable[[int, LoopCurve], None] | None = None,
) -> LoopCurve:
    """Rank -> reward model -> PPO, ``iterations`` times, on the prompts already in ``db``."""
    _, held_out = split_prompts(db, settings)
    policy = LivePolicy(policy_path, settings.device, settings.dtype)
    params = SamplingParams.from_settings(settings)
    curve = LoopCurve(
        oracle_scores=[oracle_score(policy, db, settings, annotator.oracle, held_out)]
    )
    for iteration in range(1, iterations + 1):
        model, tokenizer, version = policy.current(live_policy(db, settings.model))
        batch = prompts_to_sample(db, version, rankings_per_iteration)
        samples = sample_responses(model, tokenizer, [text for _, text in batch], params)
        add_comparisons(db, version, [i for i, _ in batch], samples, params.record(settings.model))
        annotate(db, "simulated", annotator, rankings_per_iteration)
        _run_job(db, settings, "train_reward", run_train_reward, policy_path)
        result = _run_job(db, settings, "ppo_round", run_ppo_round, policy_path)
        curve.kl.append(result["kl_after"])
        curve.rankings.append(db["rankings"].count)
        curve.oracle_scores.append(oracle_score(policy, db, settings, annotator.oracle, held_out))
        if on_iteration:
            on_iteration(iteration, curve)
    return curve
