"""Operator views of training state, shaped as plain rows and columns for tables and charts."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import sqlite_utils

from rlhf_loop.store.jobs import job_metrics, recent_jobs
from rlhf_loop.store.versions import list_versions


def _when(timestamp: float | None) -> str:
    return (
        "" if timestamp is None else dt.datetime.fromtimestamp(timestamp).strftime("%m-%d %H:%M:%S")
    )


def jobs_table(db: sqlite_utils.Database, limit: int = 20) -> list[dict[str, Any]]:
    return [
        {
            "job": j["id"],
            "kind": j["kind"],
            "status": j["status"],
            "attempts": j["attempts"],
            "progress": j["progress"],
            "message": j["error"] or j["message"] or "",
            "queued": _when(j["created_at"]),
            "finished": _when(j["finished_at"]),
        }
        for j in recent_jobs(db, limit)
    ]


def running_job(db: sqlite_utils.Database) -> dict[str, Any] | None:
    return next(
        iter(db["jobs"].rows_where("status = 'running'", order_by="id DESC", limit=1)), None
    )


def metric_columns(db: sqlite_utils.Database, job_id: int, names: list[str]) -> dict[str, list]:
    """{"step": [...], name: [...]} for a line chart; steps where a metric is absent are None."""
    by_step: dict[int, dict[str, float]] = {}
    for m in job_metrics(db, job_id):
        if m["name"] in names:
            by_step.setdefault(m["step"], {})[m["name"]] = m["value"]
    steps = sorted(by_step)
    return {"step": steps} | {n: [by_step[s].get(n) for s in steps] for n in names}


def _nu(log_nu: float | None) -> float | None:
    return None if log_nu is None else math.exp(log_nu)


def reward_versions_table(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [
        {
            "version": v["version"],
            "created": _when(v["created_at"]),
            "rankings used": v["metrics"].get("rankings_used"),
            "held-out rankings": v["metrics"].get("heldout_rankings"),
            "pairwise accuracy": v["metrics"].get("pairwise_accuracy"),
            "3-way accuracy": v["metrics"].get("three_way_accuracy"),
            "held-out NLL": v["metrics"].get("heldout_nll"),
            "tie ν": _nu(v["metrics"].get("log_nu")),
            "path": v["path"],
        }
        for v in list_versions(db, "reward")
    ]


PPO_CURVES = ["reward", "kl", "entropy", "clip_frac", "value_loss", "response_length"]


def policy_versions_table(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [
        {
            "version": v["version"],
            "live": bool(v["live"]),
            "parent": v["metrics"].get("parent_version"),
            "reward model": v["metrics"].get("reward_version"),
            "held-out reward before": v["metrics"].get("reward_before"),
            "held-out reward after": v["metrics"].get("reward_after"),
            "KL to reference": v["metrics"].get("kl_after"),
            "created": _when(v["created_at"]),
            "files": v["path"] or "(the base model)",
        }
        for v in list_versions(db, "policy")
    ]


def policy_samples(db: sqlite_utils.Database) -> dict[int, dict[str, str]]:
    """Held-out samples per policy version, prompt -> response: a round stores its new version's
    samples and, as "before", its parent's, on the same prompts with the same seed."""
    samples: dict[int, dict[str, str]] = {}
    for version in sorted(list_versions(db, "policy"), key=lambda v: v["version"]):
        meta = _policy_meta(version["path"])
        if meta is None:
            continue
        parent = meta["metrics"].get("parent_version")
        if parent is not None:
            samples.setdefault(parent, {s["prompt"]: s["response"] for s in meta["samples_before"]})
        samples[version["version"]] = {s["prompt"]: s["response"] for s in meta["samples_after"]}
    return samples


def _policy_meta(path: str | None) -> dict[str, Any] | None:
    from rlhf_loop.ppo.policy import META_FILE

    if path is None or not (Path(path) / META_FILE).is_file():
        return None
    return json.loads((Path(path) / META_FILE).read_text())
