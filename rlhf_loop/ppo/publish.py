"""Where a policy job starts and ends: from the live version, to the next registered one.

A PPO round and an SFT round both continue the live policy and both publish their result the
same way (temporary directory then rename, then registered live, or as a candidate under
``policy_adoption = "human"``, in the job's closing transaction), so a killed round of either
kind registers nothing and is retried. One copy of that here keeps them from drifting apart.
"""

from __future__ import annotations

from typing import Any

from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.ppo.policy import Policy, load_policy, new_policy, save_policy
from rlhf_loop.store.adoption import ADOPTED, CANDIDATE, supersede_candidates
from rlhf_loop.store.versions import next_version, register_version

KIND = "policy"
TRAINED_BY = "trained_by"  # metrics key: "ppo" or "sft", so pages can tell versions apart


def load_live_policy(ctx: JobContext, live: dict[str, Any], device: str) -> Policy:
    """The live version, trainable (a fresh adapter on the bare base for version 0)."""
    settings = ctx.settings
    ema = settings.ppo_ema_reference > 0
    if live["path"] is None:
        return new_policy(
            ctx.policy_path,
            device,
            settings.ppo_lora_r,
            ema,
            settings.dtype,
            train_norm=settings.ppo_norm_lr > 0,
        )
    try:
        return load_policy(ctx.policy_path, live["path"], device, ema, settings.dtype)
    except ModelLoadError as exc:
        raise JobError(
            f"live policy v{live['version']}: {exc}; roll back to a version whose files exist"
        ) from None


def publish_policy(
    ctx: JobContext,
    policy: Policy,
    live: dict[str, Any],
    trained_by: str,
    metrics: dict[str, Any],
    samples: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], []),
) -> dict[str, Any]:
    """Save the adapter as the next version, then register it (live, or a candidate for blind
    comparison) and end the job as done in one transaction. ``samples``: held-out samples of
    the parent and of the new version, for the Training page's side-by-side view."""
    settings, db = ctx.settings, ctx.db
    version = next_version(db, KIND)
    metrics = {TRAINED_BY: trained_by, **metrics}
    path = save_policy(
        policy,
        settings.runs_dir / KIND / f"v{version}",
        {
            "lora_r": settings.ppo_lora_r,
            "base_model": settings.model,
            "metrics": metrics,
            "samples_before": samples[0],
            "samples_after": samples[1],
        },
    )
    immediate = settings.policy_adoption == "immediate"
    result = {"version": version, "adoption": ADOPTED if immediate else CANDIDATE, **metrics}
    with ctx.finishing(result):
        register_version(
            db,
            KIND,
            version,
            path,
            settings.model,
            metrics,
            live["id"],
            live=immediate,
            adoption=result["adoption"],
        )
        if not immediate:
            supersede_candidates(db, settings.model, version)
    return result
