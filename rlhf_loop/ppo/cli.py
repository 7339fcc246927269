"""``python -m rlhf_loop ppo-round``: one PPO round from the command line, on one process or
many (``accelerate launch -m rlhf_loop ppo-round`` / ``torchrun -m rlhf_loop ppo-round``).

The round is the worker's own job code, run and recorded as a job row by the worker's own job
runner, so the Training page shows its progress, curves and, on a failure, the worker's message
(a full or read-only disk says so); rank 0 owns the row and keeps its heartbeat fresh, and the
other ranks never write to the database.
"""

from __future__ import annotations

import functools
import json
import os
import threading

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext, JobError, run_job
from rlhf_loop.model.loader import resolve_model_path
from rlhf_loop.ppo.distributed import join_world
from rlhf_loop.ppo.round import run_ppo_round
from rlhf_loop.store import jobs
from rlhf_loop.store.db import open_db
from rlhf_loop.store.versions import live_policy


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
    holder = f"command-line:{os.getpid()}"
    job = None
    if world.is_main:
        live_policy(db, settings.model)  # registered here if new, so no other rank writes it
        job_id = jobs.enqueue(
            db, "ppo_round", {"reason": f"command line, {world.size} process(es)"}
        )
        job = jobs.claim(db, holder, settings.lease_timeout_s, job_id=job_id)
    job = world.broadcast(job)
    if job is None:
        print("a PPO round is already running; not starting another", flush=True)
        return 1
    beat = JobBeat(settings, job.id, holder)
    context = JobContext(db, settings, job, beat, policy_path)
    ppo_round = functools.partial(run_ppo_round, world=world)
    if not world.is_main:  # computes its share; rank 0 records the outcome
        try:
            ppo_round(context)
        except JobError as exc:
            print(f"PPO round failed: {exc}", flush=True)
            return 1
        return 0
    threading.Thread(target=beat.run, daemon=True).start()
    try:
        done = run_job(context, ppo_round)  # the worker's own failure messages
    finally:
        beat.stopped.set()
    row = db["jobs"].get(job.id)
    if not done:
        print(f"PPO round failed: {row['error']}", flush=True)
        return 1
    print(f"policy v{json.loads(row['result'])['version']} is live: {row['result']}", flush=True)
    return 0
