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
from rlhf_loop.verifiers import FUNCTION_METRIC


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


def interval_text(interval: list[float] | tuple[float, float] | None) -> str:
    """Like "0.55–0.69", or "none" where there was nothing to resample."""
    return "none" if interval is None else f"{interval[0]:.2f}–{interval[1]:.2f}"


def accuracy_evidence(metrics: dict[str, Any]) -> str:
    """Whether a held-out accuracy means anything; versions from before the interval was
    measured say so rather than passing for evidence."""
    enough = metrics.get("accuracy_evidence_enough")
    if enough is None:
        return "not measured"
    return "enough" if enough else "too few to mean anything"


def gate_text(metrics: dict[str, Any]) -> str:
    """The PPO gate's outcome: "passed", or why an automatic round did not follow (and how many
    more rankings would likely get it through)."""
    gate = metrics.get("ppo_gate")
    if gate is None:
        return "not recorded"
    if gate.get("passed"):
        return "passed"
    needed = gate.get("rankings_needed")
    reason = f"gated: {gate.get('reason', '')}"
    if needed and str(needed) not in reason:
        reason += f" (about {needed} more rankings)"
    return reason


def retrain_text(metrics: dict[str, Any]) -> str:
    """How a reward version was trained and why (``reward.incremental``): in full from the
    backbone, or from an older version on its new rankings plus a replay sample."""
    retrain = metrics.get("retrain")
    if retrain is None:
        return "full" if metrics else "not recorded"
    if retrain["kind"] == "incremental":
        return (
            f"incremental from v{retrain['started_from']}: {retrain['new_rankings']} new + "
            f"{retrain['replay_rankings']} replayed"
        )
    return f"{retrain['kind']}: {retrain['reason']}"


def reward_versions_table(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Accuracy always beside its interval, the held-out pairs under it and whether they are
    enough to mean anything: 0.78 on 19 pairs and 0.78 on 900 are different claims."""
    return [
        {
            "version": v["version"],
            "created": _when(v["created_at"]),
            "rankings used": v["metrics"].get("rankings_used"),
            "held-out rankings": v["metrics"].get("heldout_rankings"),
            "held-out pairs": v["metrics"].get("heldout_pairs"),
            "pairwise accuracy": v["metrics"].get("pairwise_accuracy"),
            "accuracy 95% interval": interval_text(v["metrics"].get("accuracy_interval")),
            "evidence": accuracy_evidence(v["metrics"]),
            "PPO gate": gate_text(v["metrics"]),
            "retrain": retrain_text(v["metrics"]),
            "3-way accuracy": v["metrics"].get("three_way_accuracy"),
            "held-out NLL": v["metrics"].get("heldout_nll"),
            "tie ν": _nu(v["metrics"].get("log_nu")),
            "path": v["path"],
        }
        for v in list_versions(db, "reward")
    ]


def reward_accuracy_points(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Per reward-model version, oldest first: held-out pairwise accuracy, its interval and
    pairs, numbers or None, for a chart with error bars."""
    points = []
    for v in reversed(list_versions(db, "reward")):
        interval = v["metrics"].get("accuracy_interval")
        points.append(
            {
                "version": v["version"],
                "accuracy": v["metrics"].get("pairwise_accuracy"),
                "low": None if interval is None else interval[0],
                "high": None if interval is None else interval[1],
                "pairs": v["metrics"].get("heldout_pairs"),
            }
        )
    return points


PPO_CURVES = ["reward", "kl", "entropy", "clip_frac", "value_loss", "response_length", "ptx_loss"]


def ppo_curves(db: sqlite_utils.Database, job_id: int) -> list[str]:
    """A round's curves: each reward function's mean value per step beside the total reward."""
    names = {m["name"] for m in job_metrics(db, job_id)}
    functions = sorted(n for n in names if n.startswith(FUNCTION_METRIC))
    return PPO_CURVES[:1] + functions + PPO_CURVES[1:]


SFT_CURVES = ["sft_loss"]
REWARD_CURVES = ["loss", "nu"]


def job_curves(db: sqlite_utils.Database, job_id: int, kind: str) -> list[str]:
    """The metric names a job of ``kind`` logs per step, for its curve grid."""
    if kind == "ppo_round":
        return ppo_curves(db, job_id)
    return SFT_CURVES if kind == "sft_round" else REWARD_CURVES


def trained_by(metrics: dict[str, Any], path: str | None) -> str:
    """How a version was trained, "sft" or "ppo"; versions from before that mark were all PPO
    rounds (the base has no files)."""
    return metrics.get("trained_by") or ("ppo" if path else "")


def nll_text(metrics: dict[str, Any]) -> str:
    """An SFT version's held-out demonstration NLL, before -> after, with how many it averages
    over; empty for other versions."""
    if metrics.get("trained_by") != "sft":
        return ""
    if metrics.get("nll_before") is None:
        return "no held-out demonstrations"
    return (
        f"{metrics['nll_before']:.3f} -> {metrics['nll_after']:.3f} "
        f"({metrics.get('heldout_demonstrations')} held out)"
    )


def stopped_early_text(stopped: dict[str, Any] | None) -> str:
    """A round cut short at the KL budget keeps the weights before the step that passed it."""
    if not stopped:
        return ""
    return (
        f"at step {stopped.get('step')}: KL {stopped.get('kl', float('nan')):.2f} passed the "
        f"budget {stopped.get('budget', float('nan')):.2f}; kept {stopped.get('updates_kept')} "
        "updates"
    )


def policy_versions_table(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Held-out rewards come with the number of held-out prompts they average over."""
    return [
        {
            "version": v["version"],
            "live": bool(v["live"]),
            "adoption": v["adoption"] or "",
            "trained by": trained_by(v["metrics"], v["path"]),
            "parent": v["metrics"].get("parent_version"),
            "held-out demonstration NLL": nll_text(v["metrics"]),
            "reward model": v["metrics"].get("reward_version"),
            "held-out prompts": v["metrics"].get("eval_prompts"),
            "held-out reward before": v["metrics"].get("reward_before"),
            "held-out reward after": v["metrics"].get("reward_after"),
            "KL to reference": v["metrics"].get("kl_after"),
            "stopped early": stopped_early_text(v["metrics"].get("stopped_early")),
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
        if meta is None or meta["metrics"].get("trained_by") == "sft":  # SFT samples nothing
            continue
        parent = meta["metrics"].get("parent_version")
        if parent is not None:
            samples.setdefault(parent, {s["prompt"]: s["response"] for s in meta["samples_before"]})
        samples[version["version"]] = {s["prompt"]: s["response"] for s in meta["samples_after"]}
    return samples


# rlhf_loop.ppo.policy.META_FILE, named here rather than imported: importing that module loads
# transformers and peft into the page's thread, where it raced an export's download thread
# importing them too ("cannot import name 'AutoModelForCausalLM'"), and the export was lost.
POLICY_META_FILE = "policy_meta.json"


def _policy_meta(path: str | None) -> dict[str, Any] | None:
    if path is None or not (Path(path) / POLICY_META_FILE).is_file():
        return None
    return json.loads((Path(path) / POLICY_META_FILE).read_text())
