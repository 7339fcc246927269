"""The PPO round job on the demo model: a new live version with its metrics, and the bad inputs
(no reward model, a reward model returning NaN, no prompts, responses that never end)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from job_helpers import job_context
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.job_runner import JobError
from rlhf_loop.ppo import rewards as ppo_rewards
from rlhf_loop.ppo import round as ppo_round
from rlhf_loop.ppo.policy import REFERENCE, Policy
from rlhf_loop.reward.job import run_train_reward
from rlhf_loop.sampler import LivePolicy
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import live_policy


def test_round_makes_a_new_live_version_with_metrics(
    trained, tmp_path: Path, demo_model_path: Path
) -> None:
    base = live_policy(trained, "demo")
    assert base["path"] is None  # the bare base model
    ctx = job_context(trained, tmp_path, demo_model_path, "ppo_round")
    result = ppo_round.run_ppo_round(ctx)
    live = live_policy(trained, "demo")
    assert live["version"] == result["version"] > base["version"] and Path(live["path"]).is_dir()
    assert live["metrics"]["parent_version"] == base["version"]
    assert live["metrics"]["reward_version"] == 1
    assert live["metrics"]["eval_prompts"] > 0 and live["metrics"]["kl_after"] is not None
    logged = {m["name"] for m in jobs.job_metrics(trained, ctx.job.id)}
    assert {"reward", "kl", "entropy", "clip_frac", "value_loss", "response_length"} <= logged
    assert ctx.reporter.reports[-1] == ("evaluating the new policy on held-out prompts", 1.0)
    sampler = LivePolicy(str(demo_model_path), "cpu")
    assert sampler.current(live)[2] == live["version"]  # the sampler switches to it


def test_round_without_a_reward_model_or_prompts_says_why(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    with pytest.raises(JobError, match="no reward model yet"):
        ppo_round.run_ppo_round(job_context(db, tmp_path, demo_model_path, "ppo_round"))


def test_round_with_only_held_out_prompts_says_why(
    trained, tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ppo_round, "is_held_out", lambda prompt, fraction: True)
    before = live_policy(trained, "demo")["version"]
    with pytest.raises(JobError, match="no prompts to train on"):
        ppo_round.run_ppo_round(job_context(trained, tmp_path, demo_model_path, "ppo_round"))
    assert live_policy(trained, "demo")["version"] == before


def test_a_reward_model_returning_nan_stops_the_round_and_keeps_the_live_policy(
    trained, tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_score = ppo_rewards.score

    def broken(*args, **kwargs):
        scores = real_score(*args, **kwargs)
        return torch.full_like(scores, float("nan"))

    monkeypatch.setattr(ppo_rewards, "score", broken)
    before = live_policy(trained, "demo")["version"]
    with pytest.raises(JobError, match="no finite score"):
        ppo_round.run_ppo_round(job_context(trained, tmp_path, demo_model_path, "ppo_round"))
    assert live_policy(trained, "demo")["version"] == before


def test_some_nan_scores_are_left_out_and_endless_responses_are_penalised(
    trained, tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_score = ppo_rewards.score

    def one_nan(*args, **kwargs):
        scores = real_score(*args, **kwargs).clone()
        scores[0] = float("nan")
        return scores

    monkeypatch.setattr(ppo_rewards, "score", one_nan)
    # 2 new tokens: almost no response can end, so the missing-end penalty applies
    ctx = job_context(trained, tmp_path, demo_model_path, "ppo_round", max_new_tokens=2)
    ppo_round.run_ppo_round(ctx)
    metrics = {(m["name"], m["step"]): m["value"] for m in jobs.job_metrics(trained, ctx.job.id)}
    assert metrics[("unscorable", 1)] == 1.0
    assert metrics[("ended", 1)] < 0.5
    assert live_policy(trained, "demo")["path"] is not None  # the round still completed


def test_round_with_an_ema_reference_trains_and_moves_the_reference(
    trained, tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[tuple[Policy, list[torch.Tensor]]] = []
    load = ppo_round.load_live_policy

    def keep(*args):
        policy = load(*args)
        loaded.append((policy, [p.detach().clone() for p in policy.adapter_parameters(REFERENCE)]))
        return policy

    monkeypatch.setattr(ppo_round, "load_live_policy", keep)
    ctx = job_context(trained, tmp_path, demo_model_path, "ppo_round", ppo_ema_reference=0.9)
    result = ppo_round.run_ppo_round(ctx)
    assert result["kl_after"] is not None
    assert live_policy(trained, "demo")["version"] == result["version"]
    ((policy, before),) = loaded
    after = policy.adapter_parameters(REFERENCE)
    trained_adapter = policy.adapter_parameters("default")
    assert before and any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    # It trails the trained adapter: moved towards it, not copied.
    assert any(not torch.equal(a, t) for a, t in zip(after, trained_adapter, strict=True))


def test_a_retrain_queues_a_ppo_round_when_asked(tmp_path: Path, demo_model_path: Path) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 30)
    run_train_reward(
        job_context(db, tmp_path, demo_model_path, "train_reward", ppo_after_reward=True)
    )
    queued = [j for j in db["jobs"].rows if j["kind"] == "ppo_round"]
    assert [j["status"] for j in queued] == ["queued"] and "after reward model v1" in queued[0][
        "params"
    ]
