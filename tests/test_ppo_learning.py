"""The online loop learns: rank -> reward model -> PPO -> new samples, twice, on the demo model.

A simulated annotator with a hidden preference (answers near five words) ranks the live policy's
samples through the store; each iteration retrains the reward model and runs a PPO round. The
oracle's mean score on held-out prompts must rise while the KL to the base model stays bounded.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from store_helpers import fresh_db

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext
from rlhf_loop.model.demo_corpus import demo_prompts
from rlhf_loop.ppo.round import run_ppo_round, split_prompts
from rlhf_loop.prompt_import import ParsedPrompts, PromptRow
from rlhf_loop.reward.job import run_train_reward
from rlhf_loop.sampler import LivePolicy, SamplingParams, sample_responses
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator, annotate
from rlhf_loop.store import jobs
from rlhf_loop.store.generations import add_comparisons, prompts_to_sample
from rlhf_loop.store.prompts import add_prompts
from rlhf_loop.store.versions import live_policy

ITERATIONS = 2
RANKINGS_PER_ITERATION = 64
ORACLE = LengthOracle(target_words=5)


class Progress:
    def report(self, status: str, progress: float | None = None) -> None:
        pass


def oracle_score(policy: LivePolicy, db, settings: Settings, prompts: list[str]) -> float:
    """Mean hidden-preference score of the live policy's samples on held-out prompts."""
    model, tokenizer, _ = policy.current(live_policy(db, settings.model))
    torch.manual_seed(1234)
    params = SamplingParams(
        k=4, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=settings.max_new_tokens
    )
    groups = sample_responses(model, tokenizer, prompts, params)
    return statistics.fmean(
        ORACLE.score(p, s.text) for p, g in zip(prompts, groups, strict=True) for s in g
    )


def test_loop_raises_the_oracle_score_with_bounded_kl(
    tmp_path: Path, demo_model_path: Path
) -> None:
    torch.manual_seed(0)
    settings = Settings(
        data_dir=str(tmp_path),
        device="cpu",
        k=4,
        max_new_tokens=24,
        reward_epochs=3,
        reward_lr=1e-3,
        reward_max_length=64,
        reward_heldout_fraction=0.15,
        ppo_after_reward=False,
        ppo_steps=10,
        ppo_batch_prompts=16,
        ppo_samples_per_prompt=2,
        ppo_minibatch=16,
        ppo_lr=2e-3,
        ppo_eval_prompts=24,
    )
    db = fresh_db(tmp_path)
    rows = [PromptRow(text=p, line=i + 1) for i, p in enumerate(demo_prompts(200))]
    add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "demo")
    _, held_out = split_prompts(db, settings)
    sampler = LivePolicy(str(demo_model_path), "cpu")
    annotator = SimulatedAnnotator(ORACLE, noise=0.3, tie_threshold=0.5, seed=0)
    params = SamplingParams.from_settings(settings)
    scores = [oracle_score(sampler, db, settings, held_out)]
    kls = []
    for _ in range(ITERATIONS):
        # rank: the live policy's samples, through the Rank page's store calls
        model, tokenizer, version = sampler.current(live_policy(db, settings.model))
        batch = prompts_to_sample(db, version, RANKINGS_PER_ITERATION)
        samples = sample_responses(model, tokenizer, [t for _, t in batch], params)
        add_comparisons(db, version, [i for i, _ in batch], samples, params.record("demo"))
        annotate(db, "simulated", annotator, RANKINGS_PER_ITERATION)
        # reward model, then a PPO round, as the worker's jobs
        for kind, run in (("train_reward", run_train_reward), ("ppo_round", run_ppo_round)):
            jobs.enqueue(db, kind)
            job = jobs.claim(db, "test", 30)
            result = run(JobContext(db, settings, job, Progress(), str(demo_model_path)))
            jobs.finish(db, job.id, result)
        kls.append(result["kl_after"])
        scores.append(oracle_score(sampler, db, settings, held_out))
    print(f"oracle score on {len(held_out)} held-out prompts per iteration: {scores}; KL: {kls}")
    assert scores[-1] > scores[0] + 0.5, scores  # e.g. one word closer to the preferred length
    assert all(kl < 10.0 for kl in kls), kls  # nats per response, against the base model
