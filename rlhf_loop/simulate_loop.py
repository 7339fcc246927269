"""The whole online loop driven by a simulated annotator, for the learning test and benchmarks.

Each iteration does what the worker and the annotators do: the live policy samples ranking tasks
(some of them blind items mixing two versions, at ``eval_share``), the simulated annotator ranks
them through the Rank page's store calls, people's verdict promotes or rejects a candidate (or
rolls a live version back), the reward model retrains on all rankings so far and, when it passes
its gate, a PPO round makes the next version (a candidate, or live at once under immediate
adoption). The oracle (the hidden preference) scores every version on held-out prompts the loop
never trained on; the KL to the reference comes from each round's own held-out evaluation.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils
import torch

from rlhf_loop.blind_items import add_blind_items, blind_count, blind_params
from rlhf_loop.config import Settings
from rlhf_loop.human_verdicts import decide, standings, undecided, verdict_figures
from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.ppo.round import run_ppo_round, split_prompts
from rlhf_loop.reward.job import run_train_reward
from rlhf_loop.sampler import LivePolicy, SamplingParams, sample_responses
from rlhf_loop.simulate import Oracle, SimulatedAnnotator, annotate
from rlhf_loop.store import jobs
from rlhf_loop.store.adoption import blind_pair, pending_candidate, reject
from rlhf_loop.store.generations import add_comparisons, prompts_to_sample
from rlhf_loop.store.versions import list_versions, live_policy
from rlhf_loop.verifiers import for_people

SCORING_SAMPLES = 4  # per held-out prompt, for the oracle's score
# Settings under which the demo model learns within minutes on a laptop CPU. A held-out share
# of 0.3 gives the gate enough pairs to judge a reward model after 128 rankings; 120 steps of
# 4 samples per prompt make a round's gain large enough for people to see in one iteration of
# blind items (bench/out/demo_arithmetic_seed*.json).
DEMO_LOOP_SETTINGS = {
    "device": "cpu",
    "k": 4,
    "max_new_tokens": 24,
    "reward_epochs": 3,
    "reward_max_length": 64,
    "reward_heldout_fraction": 0.3,
    "ppo_after_reward": False,
    "ppo_steps": 120,
    "ppo_batch_prompts": 16,
    "ppo_samples_per_prompt": 4,
    "ppo_minibatch": 32,
    "ppo_lr": 2e-3,
    "ppo_eval_prompts": 24,
    "ppo_kl_coef": 0.15,
    "policy_adoption": "immediate",
}


@dataclass
class LoopCurve:
    oracle_scores: list[float] = field(default_factory=list)  # live: before, then per iteration
    kl: list[float] = field(default_factory=list)  # per round run, to the reference
    rankings: list[int] = field(default_factory=list)
    live_versions: list[int] = field(default_factory=list)  # before, then per iteration
    # every version the loop made or served: its oracle mean and standard error, held-out
    version_scores: dict[int, tuple[float, float]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # verdicts, gated rounds, in order


class _Quiet:
    def report(self, status: str, progress: float | None = None) -> None:
        pass


def oracle_scores(
    model, tokenizer, oracle: Oracle, prompts: list[str], max_new_tokens: int
) -> list[float]:
    """The hidden preference's score of each of a model's samples (a fixed seed), held-out.
    The seed is set on a forked stream: scoring a version must not reseed the loop's own
    sampling and training (it did, and made runs of different seeds alike after the first
    score)."""
    params = SamplingParams(SCORING_SAMPLES, 1.0, 1.0, 0, max_new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        groups = sample_responses(model, tokenizer, prompts, params)
    return [oracle.score(p, s.text) for p, g in zip(prompts, groups, strict=True) for s in g]


def _score_version(
    curve: LoopCurve, policy: LivePolicy, db, settings: Settings, oracle: Oracle, prompts, row
) -> float:
    live_model, tokenizer, served = policy.current(live_policy(db, settings.model))
    model = live_model if row["version"] == served else policy.other(row)
    scores = oracle_scores(model, tokenizer, oracle, prompts, settings.max_new_tokens)
    mean = statistics.fmean(scores)
    curve.version_scores[row["version"]] = (mean, statistics.stdev(scores) / len(scores) ** 0.5)
    return mean


def run_job(db, settings: Settings, kind: str, run: Callable, policy_path: str) -> dict:
    """The job's result; a job that refuses (``JobError``, e.g. a live policy already past the
    KL budget) fails as the worker would fail it, and its result says why."""
    jobs.enqueue(db, kind, {"reason": "simulated loop"})
    job = jobs.claim(db, "simulated-loop", settings.lease_timeout_s)
    try:
        return run(JobContext(db, settings, job, _Quiet(), policy_path))  # ends the job as done
    except JobError as exc:
        jobs.fail(db, job.id, str(exc))
        return {"refused": str(exc)}


def _sample_items(db, settings: Settings, policy: LivePolicy, params, n: int, seed: int) -> None:
    """n new items from the live policy, ``eval_share`` of them blind when two versions exist:
    what the worker's queue top-up does."""
    live = live_policy(db, settings.model)
    model, tokenizer, version = policy.current(live)
    batch = prompts_to_sample(db, version, n, for_people(settings))
    pair = blind_pair(db, settings.model) if settings.eval_share > 0 else None
    if pair is not None:
        count = blind_count(db, (pair[0]["version"], pair[1]["version"]), n, settings.eval_share)
        blind = blind_params(params, settings.eval_k)
        add_blind_items(db, policy, live, pair, batch[:count], blind, random.Random(seed))
        batch = batch[count:]
    samples = sample_responses(model, tokenizer, [text for _, text in batch], params)
    add_comparisons(db, version, [i for i, _ in batch], samples, params.record(settings.model))


def _reject_undecided(db, settings: Settings) -> list[str]:
    candidate = pending_candidate(db, settings.model)
    if candidate is None:
        return []
    [standing] = [
        s
        for s in standings(db, settings.model, settings.eval_max_comparisons)
        if s.version == candidate["version"]
    ]
    if not undecided(standing, settings):
        return []
    reject(db, standing.version, "operator (simulated)", verdict_figures(standing))
    return [f"v{standing.version} rejected by the operator: no verdict within the budget"]


def run_loop(
    db: sqlite_utils.Database,
    settings: Settings,
    policy_path: str,
    annotator: SimulatedAnnotator,
    iterations: int,
    rankings_per_iteration: int,
    on_iteration: Callable[[int, LoopCurve], None] | None = None,
    force_rounds: bool = False,
    annotate_items: Callable[[sqlite_utils.Database, int], object] | None = None,
    reject_undecided: bool = False,
) -> LoopCurve:
    """Rank -> people's verdict -> reward model -> PPO, ``iterations`` times, on the prompts
    already in ``db``, as the worker would run it. A round runs when the reward model passes
    its gate, or always with ``force_rounds`` (an operator pressing the button).
    ``annotate_items(db, n)`` replaces the default annotator (e.g. one who judges blind items
    by another preference than ordinary ones). ``reject_undecided`` plays the operator who
    rejects a candidate people could not tell apart within ``eval_max_comparisons``, so the
    loop moves on instead of waiting."""
    _, held_out = split_prompts(db, settings)
    policy = LivePolicy(policy_path, settings.device, settings.dtype)
    params = SamplingParams.from_settings(settings)
    oracle = annotator.oracle
    curve = LoopCurve()
    live = live_policy(db, settings.model)
    curve.oracle_scores.append(_score_version(curve, policy, db, settings, oracle, held_out, live))
    curve.live_versions.append(live["version"])
    rank = annotate_items or (lambda db, n: annotate(db, "simulated", annotator, n))
    for iteration in range(1, iterations + 1):
        _sample_items(db, settings, policy, params, rankings_per_iteration, iteration)
        rank(db, rankings_per_iteration)
        curve.events += decide(db, settings)
        if reject_undecided:
            curve.events += _reject_undecided(db, settings)
        reward = run_job(db, settings, "train_reward", run_train_reward, policy_path)
        gate = reward.get("ppo_gate") or {"passed": False, "reason": reward["refused"]}
        result = (
            run_job(db, settings, "ppo_round", run_ppo_round, policy_path)
            if gate["passed"] or force_rounds
            else {"refused": gate["reason"]}
        )
        if "refused" not in result:
            curve.kl.append(result["kl_after"])
            made = next(r for r in list_versions(db, "policy") if r["version"] == result["version"])
            _score_version(curve, policy, db, settings, oracle, held_out, made)
        else:
            curve.events.append(f"no round: {result['refused']}")
        curve.rankings.append(db["rankings"].count)
        live = live_policy(db, settings.model)
        curve.live_versions.append(live["version"])
        curve.oracle_scores.append(
            _score_version(curve, policy, db, settings, oracle, held_out, live)
        )
        if on_iteration:
            on_iteration(iteration, curve)
    return curve
