"""The background worker: one process per database, holding the "worker" lease.

It keeps the ranking queue full so the Rank page never waits on a model: whenever fewer than
``queue_depth`` slots are free it samples another batch from the live policy. A heartbeat
thread keeps the lease fresh during long model calls and carries the status line (and the
first-start build progress) that the pages show.

A worker the app started stops when that app has exited (``parent_watch``): between jobs at
once, during a job at its next progress report, putting the job back in the queue (jobs are
safe to abandon: nothing half-written is registered) and releasing the lease. Stopping there
rather than finishing the job keeps a PPO round from running on for minutes with no app to see
it; the next worker runs the job afresh. A worker started by hand has no parent to watch.

A full disk does not stop it: a pass that cannot write (``DiskError``, or its log file out of
space) is given up whole, its transactions rolled back, and tried again after a pause, by the
same process, which keeps its lease (the heartbeat thread likewise skips the beats it cannot
write). Were it to exit instead, the app would start another only once the lease went stale, and
a new worker spends its first seconds loading the model.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field

from rlhf_loop import parent_watch
from rlhf_loop.config import Settings
from rlhf_loop.store import jobs, leases
from rlhf_loop.store.db import DiskError, StoreError, open_db, write_txn
from rlhf_loop.store.events import log_event

LEASE = "worker"
FAILED_EVENT = "worker_failed"
TOKEN_ENV = "RLHF_LOOP_WORKER_TOKEN"
IDLE_POLL_S = 0.5
DISK_FULL_PAUSE_S = 1.0  # between attempts while the disk is full
# Between the idle worker's updates of the Dashboard's saved agreement tally (agreement_cache):
# it is there, built, before anyone opens the Dashboard, and at most this stale.
AGREEMENT_REFRESH_S = 300.0


class AppExited(BaseException):
    """Raised where the worker may stop safely once the app that started it is gone. A
    BaseException, so a job's ``except Exception`` does not record it as the job failing."""


@dataclass
class Heartbeat:
    """Refreshes the lease from its own thread and connection; ``lost`` is set if it is taken."""

    settings: Settings
    holder: str
    status: str = "starting"
    progress: float | None = None
    lost: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    parent: str | None = None  # parent_watch identity of the app that started this worker
    orphaned: threading.Event = field(default_factory=threading.Event)

    def report(self, status: str, progress: float | None = None) -> None:
        self.stop_if_orphaned()
        self.status, self.progress = status, progress

    def stop_if_orphaned(self) -> None:
        """Called between jobs and by every progress report: the points where stopping is safe."""
        if self.orphaned.is_set():
            raise AppExited("the app that started this worker has exited")

    job_id: int | None = None  # the running job, whose row carries the same heartbeat

    def run(self) -> None:
        db = open_db(self.settings.resolved_db_path)
        interval = min(1.0, self.settings.lease_timeout_s / 5)
        while not self.stopped.wait(interval):
            if self.parent is not None and not parent_watch.is_running(self.parent):
                self.orphaned.set()
            try:
                if not leases.heartbeat(db, LEASE, self.holder, self.status, self.progress):
                    self.lost.set()
                    return
                if self.job_id is not None:
                    jobs.beat(db, self.job_id, self.holder, self.progress, self.status)
            except StoreError:  # a full disk, or the lock held long: the next beat tries again
                continue


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_worker(settings: Settings, idle_exit_s: float | None = None) -> int:
    """Serve until the lease is lost (or idle for ``idle_exit_s``); returns an exit status."""
    db = open_db(settings.resolved_db_path)
    holder = os.environ.get(TOKEN_ENV) or new_holder()
    if not leases.acquire(db, LEASE, holder, os.getpid(), settings.lease_timeout_s):
        print("another worker holds the lease; exiting", flush=True)
        return 0
    beat = Heartbeat(settings, holder, parent=os.environ.get(parent_watch.PARENT_ENV))
    threading.Thread(target=beat.run, daemon=True, name="heartbeat").start()
    try:
        _serve(db, settings, beat, idle_exit_s)
    except AppExited as stop:
        print(f"{stop}; exiting", flush=True)
    except Exception as exc:
        # Not written on a full disk: the error itself still goes to the log.
        with contextlib.suppress(StoreError), write_txn(db):
            log_event(db, FAILED_EVENT, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        beat.stopped.set()
        if not beat.lost.is_set():
            with contextlib.suppress(StoreError):  # else the lease goes stale, as on a kill
                leases.release(db, LEASE, holder)
    return 0


def _serve(db, settings: Settings, beat: Heartbeat, idle_exit_s: float | None) -> None:
    # Heavy imports after the lease: a worker that loses the race exits without loading torch.
    from rlhf_loop.model.loader import resolve_model_path
    from rlhf_loop.sampler import LivePolicy, SamplingParams
    from rlhf_loop.store.agreement_cache import training_agreement
    from rlhf_loop.store.versions import live_policy

    if settings.seed_demo_prompts:
        from rlhf_loop.seed import seed_demo_prompts

        seed_demo_prompts(db)
    beat.report("loading the policy model")
    path = resolve_model_path(
        settings,
        on_progress=lambda stage, f: beat.report(
            f"building the demo model (first start only): {stage}", f
        ),
    )
    policy = LivePolicy(path, settings.device, settings.dtype)
    policy.current(live_policy(db, settings.model))
    params = SamplingParams.from_settings(settings)
    selector = _selector(settings)
    verdicts = HumanVerdicts(settings)
    idle_since = agreement_due = time.monotonic()
    while not beat.lost.is_set():
        beat.stop_if_orphaned()
        try:
            verdicts.refresh(db, beat)
            worked = _run_one_job(db, settings, beat, path) or _top_up_queue(
                db, settings, beat, policy, params
            )
            if worked and selector:
                beat.report("ordering the queue by reward-model uncertainty")
                selector.refresh(db)
        except (DiskError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            beat.report(f"waiting for disk space, nothing is lost: {exc}")
            time.sleep(DISK_FULL_PAUSE_S)
            continue
        if worked:
            idle_since = time.monotonic()
            continue
        if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
            return
        if time.monotonic() >= agreement_due:
            beat.report("bringing the Dashboard's agreement figures up to date")
            try:
                training_agreement(db)
            except (StoreError, sqlite3.Error, OSError) as exc:  # only a head start: never fatal
                beat.report(f"agreement figures not brought up to date: {exc}")
            agreement_due = time.monotonic() + AGREEMENT_REFRESH_S
        time.sleep(IDLE_POLL_S)


@dataclass
class HumanVerdicts:
    """Applies people's verdicts (promote, reject, roll back) when new blind rankings arrive:
    the bootstrap behind them is refitted only then, not on every loop."""

    settings: Settings
    seen: int = -1

    def refresh(self, db, beat: Heartbeat) -> None:
        from rlhf_loop.human_verdicts import blind_ranking_count, decide

        count = blind_ranking_count(db)
        if count == self.seen:
            return
        beat.report(f"reading people's verdict from {count} blind rankings")
        for line in decide(db, self.settings):
            print(line, flush=True)
        self.seen = count


def _selector(settings: Settings):
    if not settings.active_selection:
        return None
    from rlhf_loop.reward.active import ActiveSelector

    return ActiveSelector(settings.device, settings.reward_max_length, settings.dtype)


def _run_one_job(db, settings: Settings, beat: Heartbeat, policy_path: str) -> bool:
    """Claim and run the next job (enqueueing a due retrain or SFT round first); False when none
    ran."""
    from rlhf_loop.job_runner import JobContext, run_job
    from rlhf_loop.reward.job import retrain_due
    from rlhf_loop.sft.job import JOB_KIND, sft_due

    if retrain_due(db, settings):
        jobs.enqueue(db, "train_reward", {"reason": "new rankings"})
    sft_params = sft_due(db, settings)
    if sft_params is not None:
        jobs.enqueue(db, JOB_KIND, sft_params)
    job = jobs.claim(db, beat.holder, settings.lease_timeout_s, settings.job_max_attempts)
    if job is None:
        return False
    beat.job_id = job.id
    beat.report(f"job {job.id}: {job.kind} (attempt {job.attempts})", 0.0)
    try:
        run_job(JobContext(db, settings, job, beat, policy_path))
    except AppExited:
        jobs.requeue(db, job.id, beat.holder)
        raise
    finally:
        beat.job_id = None
    return True


def _top_up_queue(db, settings: Settings, beat: Heartbeat, policy, params) -> bool:
    """Sample one batch if fewer than ``queue_depth`` slots are free; False when none was due."""
    from rlhf_loop.blind_items import add_blind_items, blind_params
    from rlhf_loop.config import ConfigError
    from rlhf_loop.model.loader import ModelLoadError
    from rlhf_loop.sampler import sample_responses
    from rlhf_loop.store.generations import add_comparisons, prompts_to_sample
    from rlhf_loop.store.gold import recount_gold_tokens
    from rlhf_loop.store.tasks import free_slots
    from rlhf_loop.store.versions import live_policy
    from rlhf_loop.verifiers import for_people

    live = live_policy(db, settings.model)
    model, tokenizer, version = policy.current(live)
    recount_gold_tokens(db, lambda text: len(tokenizer(text)["input_ids"]))
    free = free_slots(db, settings.overlap, settings.assignment_timeout_s)
    wanted = math.ceil((settings.queue_depth - free) / settings.overlap)
    try:
        to_people = for_people(settings)
    except ConfigError as exc:  # a PPO round refuses it by name; the queue still fills
        beat.report(f"{exc}: every prompt goes to people")
        to_people = None
    batch = (
        prompts_to_sample(db, version, min(wanted, settings.sample_batch_prompts), to_people)
        if wanted > 0
        else []
    )
    if not batch:
        beat.report(
            "queue full"
            if wanted <= 0
            else "no prompts for people to rank: import some"
            + ("" if to_people is None else " (reward functions check the others)")
        )
        return False
    beat.report(
        f"sampling {len(batch)} prompt(s) with policy v{version}",
        free / max(1, settings.queue_depth),
    )
    blind = _blind_pair(db, settings, len(batch))
    if blind is not None:
        pair, count = blind
        try:
            add_blind_items(
                db,
                policy,
                live,
                pair,
                batch[:count],
                blind_params(params, settings.eval_k),
                random.Random(time.time_ns()),
            )
            batch = batch[count:]
        except (ModelLoadError, OSError, ValueError) as exc:
            # a version whose files are gone must not stop the queue: ordinary items only
            _note_once(db, "blind_items_unavailable", [r["version"] for r in pair], str(exc))
    if batch:
        samples = sample_responses(model, tokenizer, [text for _, text in batch], params)
        add_comparisons(
            db, version, [pid for pid, _ in batch], samples, params.record(settings.model)
        )
    return True


def _note_once(db, kind: str, versions: list[int], error: str) -> None:
    """One event per pair of versions, not one per batch the worker samples."""
    with write_txn(db):
        if not db["events"].count_where(
            "kind = ? AND json_extract(payload, '$.versions') = json(?)", [kind, str(versions)]
        ):
            log_event(db, kind, versions=versions, error=error)


def _blind_pair(db, settings: Settings, batch: int) -> tuple[tuple[dict, dict], int] | None:
    """The two versions to mix and how many of this batch's prompts get a blind item."""
    from rlhf_loop.blind_items import blind_count
    from rlhf_loop.store.adoption import blind_pair

    pair = blind_pair(db, settings.model) if settings.eval_share > 0 else None
    if pair is None:
        return None
    count = blind_count(db, (pair[0]["version"], pair[1]["version"]), batch, settings.eval_share)
    return (pair, count) if count else None
