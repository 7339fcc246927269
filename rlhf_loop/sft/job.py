"""The "sft_round" worker job: the live policy fine-tuned on people's demonstrations.

It trains on the live demonstrations (not undone, prompt not retired) whose prompt is not held
out, and measures the held-out ones' NLL before and after: the reward model's held-out share
(``reward.data.is_held_out``), so no stage of the loop trains on what another is judged by. The
result is published as a PPO round's is (``ppo.publish``): a new version, live or a candidate,
registered with the job's end in one transaction, so a killed round registers nothing and is
retried, and the operator can roll back to the parent.
"""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

from rlhf_loop.config import Settings
from rlhf_loop.export_sft import sft_record_count
from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.ppo.publish import load_live_policy, publish_policy
from rlhf_loop.sft.data import live_demonstrations, split_demonstrations
from rlhf_loop.sft.evaluate import demonstration_nll
from rlhf_loop.sft.train import SFTConfig, train_sft
from rlhf_loop.store.versions import latest_policy_trained_by, live_policy

JOB_KIND = "sft_round"
TRAINED_BY = "sft"
LOSS_METRIC = "sft_loss"


def sft_due(db: sqlite_utils.Database, settings: Settings) -> dict[str, Any] | None:
    """The parameters of an automatic round when one is due, else None: every
    ``sft_retrain_every`` demonstrations since the last SFT version (counted as training counts
    them). Not again on the same count after an automatic round failed (all demonstrations
    held out, say): the worker would otherwise queue the same failing round on every loop."""
    if settings.sft_retrain_every <= 0:
        return None
    count = sft_record_count(db)
    latest = latest_policy_trained_by(db, TRAINED_BY)
    used = latest["metrics"].get("demonstrations_used", 0) if latest else 0
    if count - used < settings.sft_retrain_every:
        return None
    rows = db["jobs"].rows_where("kind = ?", [JOB_KIND], order_by="id DESC", limit=1)
    last = next(iter(rows), None)
    if last and last["status"] == "failed" and json.loads(last["params"]).get("count") == count:
        return None
    return {"reason": "new demonstrations", "count": count}


def run_sft_round(ctx: JobContext) -> dict[str, Any]:
    settings, db = ctx.settings, ctx.db
    pairs = live_demonstrations(db)
    if not pairs:
        raise JobError(
            "no demonstrations to train on: write some on the Rank page (Write a better answer) "
            "or import a .jsonl file of them on the Data page"
        )
    train, held = split_demonstrations(pairs, settings.reward_heldout_fraction)
    if not train:
        raise JobError(
            f"all {len(pairs)} demonstration(s) are on held-out prompts (reward_heldout_fraction "
            f"= {settings.reward_heldout_fraction}), kept to measure rounds: write or import "
            "demonstrations on more prompts"
        )
    live = live_policy(db, settings.model)
    ctx.progress(0.0, f"loading policy v{live['version']}")
    policy = load_live_policy(ctx, live, settings.device)
    config = SFTConfig(
        settings.sft_epochs, settings.sft_batch, settings.sft_lr, settings.reward_max_length
    )

    def held_out_nll(label: str) -> float | None:
        ctx.progress(0.0 if label == "live" else 1.0, f"held-out NLL of the {label} policy")
        prompts, answers = [p for p, _ in held], [a for _, a in held]
        return demonstration_nll(
            policy.model, policy.tokenizer, prompts, answers, config.max_length, config.batch
        )

    def on_step(step: int, total: int, loss: float) -> None:
        ctx.metrics(step, {LOSS_METRIC: loss})
        ctx.progress(step / total, f"step {step}/{total}: loss {loss:.3f}")

    before = held_out_nll("live")
    losses = train_sft(policy, train, config, ctx.job.id, on_step)
    metrics = {
        "parent_version": live["version"],
        "demonstrations_used": len(pairs),
        "train_demonstrations": len(train),
        "heldout_demonstrations": len(held),
        "nll_before": before,
        "nll_after": held_out_nll("new"),
        "steps": len(losses),
        "final_loss": losses[-1],
    }
    return publish_policy(ctx, policy, live, TRAINED_BY, metrics)
