"""Running one claimed job inside the worker: dispatch by kind, progress, and failure capture.

A job that raises is marked failed with a one-line reason for the Training page (the traceback
goes to the worker log); the worker itself keeps serving. A job that registers something ends
in the same transaction (``JobContext.finishing``), so a retry never registers it twice.
"""

from __future__ import annotations

import contextlib
import importlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import sqlite_utils

from rlhf_loop.config import Settings
from rlhf_loop.faults import fault_point
from rlhf_loop.store import jobs
from rlhf_loop.store.db import write_txn

# Job kind -> "module:function"; imported when first run, so the worker starts light.
HANDLERS = {
    "train_reward": "rlhf_loop.reward.job:run_train_reward",
    "ppo_round": "rlhf_loop.ppo.round:run_ppo_round",
    "sft_round": "rlhf_loop.sft.job:run_sft_round",
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
    finished: bool = False  # the job's row says done: ``finishing`` closed it

    def progress(self, fraction: float, message: str) -> None:
        """Shown live on the Training page; the heartbeat thread writes it."""
        self.reporter.report(message, fraction)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        jobs.record_metrics(self.db, self.job.id, step, values)

    @contextlib.contextmanager
    def finishing(self, result: dict[str, Any]) -> Iterator[None]:
        """One transaction for what the job registers (a model version, a follow-up job) and its
        end as done with ``result``. Killed before the commit, nothing is registered and the job
        is retried; after it, the job is done and never runs again. In two transactions, a worker
        killed between them would leave a registered version under a job still running, and the
        retry would register a second one (a second, unasked PPO round on top of the first)."""
        fault_point("before_finish")
        with write_txn(self.db):
            yield
            jobs.finish(self.db, self.job.id, result)
        self.finished = True
        fault_point("after_finish")


def _handler(kind: str) -> Callable[[JobContext], dict[str, Any]]:
    if kind not in HANDLERS:
        raise JobError(f"unknown job kind {kind!r}")
    module, name = HANDLERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def run_job(
    context: JobContext, handler: Callable[[JobContext], dict[str, Any]] | None = None
) -> bool:
    """Run the job to done or failed; True when it succeeded. ``handler`` stands in for the
    kind's own (the command line's PPO round, bound to its processes), with the same failures."""
    job = context.job
    try:
        result = (handler or _handler(job.kind))(context)
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
    if not context.finished:  # a job that registered nothing ends here
        jobs.finish(context.db, job.id, result)
    return True
