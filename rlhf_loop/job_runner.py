"""Running one claimed job inside the worker: dispatch by kind, progress, and failure capture.

A job that raises is marked failed with a one-line reason for the Training page (the traceback
goes to the worker log); the worker itself keeps serving.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlite_utils

from rlhf_loop.config import Settings
from rlhf_loop.store import jobs

# Job kind -> "module:function"; imported when first run, so the worker starts light.
HANDLERS = {
    "train_reward": "rlhf_loop.reward.job:run_train_reward",
    "ppo_round": "rlhf_loop.ppo.round:run_ppo_round",
}


class JobError(RuntimeError):
    """A job cannot proceed for a reason the operator can act on; the message says which."""


class Reporter(Protocol):
    def report(self, status: str, progress: float | None = None) -> None: ...


@dataclass
class JobContext:
    db: sqlite_utils.Database
    settings: Settings
    job: jobs.Job
    reporter: Reporter
    policy_path: str

    def progress(self, fraction: float, message: str) -> None:
        """Shown live on the Training page; the heartbeat thread writes it."""
        self.reporter.report(message, fraction)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        jobs.record_metrics(self.db, self.job.id, step, values)


def _handler(kind: str) -> Callable[[JobContext], dict[str, Any]]:
    if kind not in HANDLERS:
        raise JobError(f"unknown job kind {kind!r}")
    module, name = HANDLERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def run_job(context: JobContext) -> bool:
    """Run the job to done or failed; True when it succeeded."""
    job = context.job
    try:
        result = _handler(job.kind)(context)
    except JobError as exc:
        jobs.fail(context.db, job.id, str(exc))
        return False
    except OSError as exc:  # a full or read-only disk: what the operator must fix, in words
        traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        jobs.fail(
            context.db,
            job.id,
            f"file system error: {exc.strerror or exc}{where}; nothing was registered and the "
            "live models are unchanged. Fix the disk (space, permissions, a read-only mount), "
            "then run the job again.",
        )
        return False
    except Exception as exc:  # any failure of a job must not stop the worker
        traceback.print_exc()
        jobs.fail(context.db, job.id, f"{type(exc).__name__}: {exc}")
        return False
    jobs.finish(context.db, job.id, result)
    return True
