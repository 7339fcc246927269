"""Worker jobs as rows: queued -> running -> done | failed, claimed atomically.

A running job carries the heartbeat of the worker that claimed it. When that worker dies
(SIGKILL, power loss) the heartbeat goes stale and the next worker claims the job again, up to
``max_attempts`` times, after which it is failed with the reason: retried, never lost, never run
by two workers at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    params: dict[str, Any]
    attempts: int


def enqueue(db: sqlite_utils.Database, kind: str, params: dict[str, Any] | None = None) -> int:
    """Queue a job, or return the one of this kind already queued or running (no pile-ups)."""
    with write_txn(db):
        pending = next(
            iter(db["jobs"].rows_where("kind = ? AND status IN (?, ?)", [kind, *ACTIVE], limit=1)),
            None,
        )
        if pending:
            return pending["id"]
        job_id = (
            db["jobs"]
            .insert(
                {
                    "kind": kind,
                    "status": "queued",
                    "params": json.dumps(params or {}, sort_keys=True),
                    "attempts": 0,
                    "created_at": now(),
                }
            )
            .last_pk
        )
        log_event(db, "job_queued", job_id=job_id, job_kind=kind)
        return job_id


def claim(
    db: sqlite_utils.Database,
    holder: str,
    stale_after_s: float,
    max_attempts: int = 3,
    job_id: int | None = None,
) -> Job | None:
    """The oldest runnable job (or job ``job_id``), now running under ``holder``; None when
    there is none."""
    at = now()
    orphaned = "status = 'running' AND heartbeat_at < ?"
    only = "" if job_id is None else f" AND id = {int(job_id)}"
    with write_txn(db):
        for row in db["jobs"].rows_where(
            f"{orphaned} AND attempts >= ?", [at - stale_after_s, max_attempts]
        ):
            _close(
                db,
                row["id"],
                "failed",
                error=f"the worker died during all {row['attempts']} attempts",
            )
        row = next(
            iter(
                db["jobs"].rows_where(
                    f"(status = 'queued' OR ({orphaned})){only}",
                    [at - stale_after_s],
                    order_by="id",
                    limit=1,
                )
            ),
            None,
        )
        if row is None:
            return None
        attempts = row["attempts"] + 1
        db["jobs"].update(
            row["id"],
            {
                "status": "running",
                "claimed_by": holder,
                "attempts": attempts,
                "started_at": at,
                "heartbeat_at": at,
                "progress": 0.0,
                "message": "starting",
            },
        )
        log_event(db, "job_claimed", job_id=row["id"], attempt=attempts, holder=holder)
        return Job(row["id"], row["kind"], json.loads(row["params"]), attempts)


def beat(
    db: sqlite_utils.Database,
    job_id: int,
    holder: str,
    progress: float | None = None,
    message: str | None = None,
) -> bool:
    """Refresh a running job's heartbeat (and progress); False if it is no longer ours."""
    changes: dict[str, Any] = {"heartbeat_at": now()}
    if progress is not None:
        changes["progress"] = progress
    if message is not None:
        changes["message"] = message
    with write_txn(db):
        if not db["jobs"].count_where(
            "id = ? AND claimed_by = ? AND status = 'running'", [job_id, holder]
        ):
            return False
        db["jobs"].update(job_id, changes)
    return True


def requeue(db: sqlite_utils.Database, job_id: int, holder: str) -> bool:
    """Put a running job back in the queue as if never claimed: its worker stops on purpose
    (the app that started it exited) and the next worker runs it afresh. Not a failed attempt,
    so the attempt is not counted, and the partial attempt's curves go. False if the job is
    no longer running under ``holder`` (it finished first)."""
    mine = "id = ? AND claimed_by = ? AND status = 'running'"
    with write_txn(db):
        row = next(iter(db["jobs"].rows_where(mine, [job_id, holder], limit=1)), None)
        if row is None:
            return False
        db["jobs"].update(
            job_id,
            {
                "status": "queued",
                "attempts": row["attempts"] - 1,
                "claimed_by": None,
                "started_at": None,
                "heartbeat_at": None,
                "progress": None,
                "message": "back in the queue: its worker stopped",
            },
        )
        db["job_metrics"].delete_where("job_id = ?", [job_id])
        log_event(db, "job_requeued", job_id=job_id, holder=holder)
    return True


def record_metrics(
    db: sqlite_utils.Database, job_id: int, step: int, metrics: dict[str, float]
) -> None:
    at = now()
    with write_txn(db):  # a full disk is a DiskError, and never a half-written step
        db["job_metrics"].insert_all(
            {"job_id": job_id, "step": step, "name": k, "value": float(v), "at": at}
            for k, v in metrics.items()
        )


def finish(db: sqlite_utils.Database, job_id: int, result: dict[str, Any]) -> None:
    with write_txn(db):
        _close(
            db,
            job_id,
            "done",
            result=json.dumps(result, sort_keys=True),
            progress=1.0,
            message="done",
        )


def fail(db: sqlite_utils.Database, job_id: int, error: str) -> None:
    with write_txn(db):
        _close(db, job_id, "failed", error=error)


def _close(db: sqlite_utils.Database, job_id: int, status: str, **fields: Any) -> None:
    db["jobs"].update(job_id, {"status": status, "finished_at": now(), **fields})
    log_event(
        db, f"job_{status}", job_id=job_id, **{k: v for k, v in fields.items() if k == "error"}
    )


def recent_jobs(db: sqlite_utils.Database, limit: int = 20) -> list[dict[str, Any]]:
    return list(db["jobs"].rows_where(order_by="id DESC", limit=limit))


def job_metrics(db: sqlite_utils.Database, job_id: int) -> list[dict[str, Any]]:
    return list(db["job_metrics"].rows_where("job_id = ?", [job_id], order_by="step"))
