"""Operator views of training state, shaped as plain rows and columns for tables and charts."""

from __future__ import annotations

import datetime as dt
import math
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
            "tie ν": None
            if v["metrics"].get("log_nu") is None
            else 2.718281828 ** v["metrics"]["log_nu"],
            "path": v["path"],
        }
        for v in list_versions(db, "reward")
    ]
