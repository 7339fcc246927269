"""The "train_reward" worker job: live rankings -> a new registered reward-model version, trained
in full or incrementally from the newest one (``reward.incremental``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlite_utils

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.reward.data import heldout_sample, load_rankings, split_held_out
from rlhf_loop.reward.gate import ppo_gate
from rlhf_loop.reward.incremental import model_settings, plan_retrain
from rlhf_loop.reward.model import (
    load_backbone,
    resolve_backbone,
    resume_backbone,
    save_reward_model,
)
from rlhf_loop.reward.train import RewardTrainConfig, evaluate, train_reward_model
from rlhf_loop.store import jobs
from rlhf_loop.store.events import log_event
from rlhf_loop.store.training_rankings import training_ranking_count
from rlhf_loop.store.versions import latest_version, next_version, register_version

KIND = "reward"


def train_config(settings: Settings) -> RewardTrainConfig:
    return RewardTrainConfig(
        epochs=settings.reward_epochs,
        lr=settings.reward_lr,
        batch_rankings=settings.reward_batch_rankings,
        max_length=settings.reward_max_length,
        learn_ties=settings.reward_learn_ties,
        prompt_aware=settings.reward_prompt_aware,
    )


def retrain_due(db: sqlite_utils.Database, settings: Settings) -> bool:
    """The automatic policy: every ``reward_retrain_every`` rankings since the last version.

    Counted as training counts them (``rankings_used``): gold answers or rankings of a retired
    prompt in the count would make every version look short of data and retrain without end.
    """
    if settings.reward_retrain_every <= 0:
        return False
    latest = latest_version(db, KIND)
    used = latest["metrics"].get("rankings_used", 0) if latest else 0
    return training_ranking_count(db) - used >= settings.reward_retrain_every


def run_train_reward(ctx: JobContext) -> dict[str, Any]:
    settings = ctx.settings
    examples = load_rankings(ctx.db)
    if not examples:
        raise JobError("no rankings to train on yet: rank some items first")
    train, held_out = split_held_out(examples, settings.reward_heldout_fraction)
    if not train:
        raise JobError(
            f"all {len(examples)} rankings fell in the held-out share; rank more prompts"
        )
    backbone = (
        ctx.policy_path
        if settings.reward_backbone == "policy"
        else resolve_backbone(settings.reward_backbone)
    )
    version = next_version(ctx.db, KIND)
    plan = plan_retrain(latest_version(ctx.db, KIND), train, settings, backbone, version)
    ctx.progress(0.0, f"{plan.kind} retrain on {len(plan.rows)} training rankings: {plan.reason}")
    if plan.start_path is None:
        model, tokenizer = load_backbone(
            backbone,
            settings.device,
            settings.reward_lora_r,
            settings.dtype,
            settings.reward_likelihood_prior,
        )
    else:
        model, tokenizer = resume_backbone(
            plan.start_path, settings.device, settings.reward_lora_r, settings.dtype
        )
    config = train_config(settings)

    def on_step(step: int, total: int, point: dict[str, float]) -> None:
        ctx.progress(step / total, f"step {step}/{total}, loss {point['loss']:.4f}")
        ctx.metrics(step, point)

    outcome = train_reward_model(model, tokenizer, plan.rows, config, on_step, plan.start_log_nu)
    ctx.progress(1.0, "evaluating on held-out rankings")
    scored = heldout_sample(held_out, settings.reward_eval_max_rankings)
    metrics = evaluate(model, tokenizer, scored, outcome.log_nu, config) | {
        "heldout_rankings_all": len(held_out),
        "rankings_used": len(examples),
        "train_rankings": len(plan.rows),
        "final_loss": outcome.history[-1]["loss"],
        "log_nu": outcome.log_nu,
        "retrain": plan.record(),
    }
    metrics["ppo_gate"] = ppo_gate(ctx.db, settings, metrics, len(examples))
    ctx.metrics(outcome.steps, {k: v for k, v in metrics.items() if isinstance(v, float)})
    meta = {
        "backbone": backbone,
        "config": dataclasses.asdict(config),
        "metrics": metrics,
        "model_settings": model_settings(settings, backbone),
        "rankings_seen": plan.seen,
    }
    path = save_reward_model(model, tokenizer, meta, settings.runs_dir / KIND / f"v{version}")
    result = {"version": version, **metrics}
    with ctx.finishing(result):
        register_version(ctx.db, KIND, version, path, backbone, metrics)
        if settings.ppo_after_reward and metrics["ppo_gate"]["passed"]:
            jobs.enqueue(ctx.db, "ppo_round", {"reason": f"after reward model v{version}"})
        elif settings.ppo_after_reward:
            log_event(ctx.db, "ppo_gated", reward_version=version, **metrics["ppo_gate"])
    return result
