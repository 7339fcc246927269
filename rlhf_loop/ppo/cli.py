"""``python -m rlhf_loop ppo-round``: one PPO round from the command line, on one process or
many (``accelerate launch -m rlhf_loop ppo-round`` / ``torchrun -m rlhf_loop ppo-round``).

The round is the worker's own job code, recorded as a job row like any other, so the Training
page shows its progress and curves; rank 0 owns the row and keeps its heartbeat fresh.
"""

from __future__ import annotations

import os
import threading

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.model.loader import resolve_model_path
from rlhf_loop.ppo.distributed import join_world
from rlhf_loop.ppo.round import run_ppo_round
from rlhf_loop.store import jobs
from rlhf_loop.store.db import open_db


class JobBeat:
    """Keeps the job's heartbeat and progress fresh from a thread with its own connection."""

    def __init__(self, settings: Settings, job_id: int, holder: str) -> None:
        self.settings, self.job_id, self.holder = settings, job_id, holder
        self.status, self.progress = "starting", 0.0
        self.stopped = threading.Event()

    def report(self, status: str, progress: float | None = None) -> None:
        self.status, self.progress = status, progress if progress is not None else self.progress

    def run(self) -> None:
        db = open_db(self.settings.resolved_db_path)
        while not self.stopped.wait(min(1.0, self.settings.lease_timeout_s / 5)):
            jobs.beat(db, self.job_id, self.holder, self.progress, self.status)


def run_round_command(settings: Settings) -> int:
    world = join_world()
    db = open_db(settings.resolved_db_path)
    policy_path = resolve_model_path(settings)
    job = None
    if world.is_main:
        holder = f"command-line:{os.getpid()}"
        job_id = jobs.enqueue(
            db, "ppo_round", {"reason": f"command line, {world.size} process(es)"}
        )
        job = jobs.claim(db, holder, settings.lease_timeout_s, job_id=job_id)
    job = world.broadcast(job)
    if job is None:
        print("a PPO round is already running; not starting another", flush=True)
        return 1
    beat = JobBeat(settings, job.id, f"command-line:{os.getpid()}")
    if world.is_main:
        threading.Thread(target=beat.run, daemon=True).start()
    try:
        result = run_ppo_round(JobContext(db, settings, job, beat, policy_path), world)
    except JobError as exc:
        if world.is_main:
            jobs.fail(db, job.id, str(exc))
        print(f"PPO round failed: {exc}", flush=True)
        return 1
    finally:
        beat.stopped.set()
    if world.is_main:
        jobs.finish(db, job.id, result)
        print(f"policy v{result['version']} is live: {result}", flush=True)
    return 0
