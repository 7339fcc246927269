"""A worker the app started stops when the app is gone; one started by hand keeps running.

Real processes: a stand-in for the app (a Python process that calls ``ensure_worker``, as a
page does, then waits) is SIGKILLed, as an app killed or interrupted would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from store_helpers import fresh_db, oracle_rankings
from worker_helpers import REPO, wait_for, worker_env

from rlhf_loop import parent_watch
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import latest_version
from rlhf_loop.worker import LEASE

LEASE_S = 5.0  # heartbeat (and parent check) every second

APP = """
import time
from rlhf_loop.config import load_settings
from rlhf_loop.store.db import open_db
from rlhf_loop.worker_launch import ensure_worker
settings = load_settings()
print(ensure_worker(open_db(settings.resolved_db_path), settings), flush=True)
time.sleep(600)
"""
# Starts a worker as a person would from a shell, then exits: the worker has no parent to watch.
BY_HAND = """
import subprocess, sys
worker = subprocess.Popen(
    [sys.executable, "-m", "rlhf_loop", "worker"], stdout=subprocess.DEVNULL, start_new_session=True
)
print(worker.pid, flush=True)
"""


def _lease(db) -> dict:
    return next(iter(db["leases"].rows_where("name = ?", [LEASE])), {})


def _start(script: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Run ``script``, which prints the worker's pid; returns the process and the worker's
    identity."""
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    worker_pid = int(process.stdout.readline())
    return process, parent_watch.identity(worker_pid)


def _kill_the_app_once(env: dict[str, str], ready: Callable[[], bool], what: str) -> None:
    """Start the app stand-in, SIGKILL it once ``ready()``, and wait for its worker to exit by
    itself (killing the app, even on a failed wait, is also how the worker is cleaned up)."""
    app, worker = _start(APP, env)
    try:
        wait_for(ready, 120, what)
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait()
    wait_for(lambda: not parent_watch.is_running(worker), 60, "the worker to exit")
    log = Path(env["RLHF_LOOP_DATA_DIR"], "worker.log").read_text()
    assert "the app that started this worker has exited; exiting" in log


def test_an_idle_worker_stops_when_its_app_is_killed(tmp_path: Path, demo_model_path: Path) -> None:
    env = worker_env(tmp_path, demo_model_path, lease_timeout_s=LEASE_S)
    db = fresh_db(tmp_path)  # no prompts: the worker idles between jobs
    idle = "no prompts for people to rank"
    _kill_the_app_once(env, lambda: _lease(db).get("status", "").startswith(idle), "idling")
    assert _lease(db) == {}  # released, not left to go stale


def test_a_worker_in_a_job_puts_it_back_and_stops_when_its_app_is_killed(
    tmp_path: Path, demo_model_path: Path
) -> None:
    # Enough epochs that the retrain is still running when the app goes.
    env = worker_env(tmp_path, demo_model_path, lease_timeout_s=LEASE_S, reward_epochs=500)
    db = fresh_db(tmp_path)
    oracle_rankings(db, 24)
    job_id = jobs.enqueue(db, "train_reward")
    _kill_the_app_once(env, lambda: (db["jobs"].get(job_id)["progress"] or 0) > 0, "a step")
    row = db["jobs"].get(job_id)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)
    assert latest_version(db, "reward") is None  # nothing half-trained was registered
    assert _lease(db) == {}


def test_a_worker_started_by_hand_outlives_the_process_that_started_it(
    tmp_path: Path, demo_model_path: Path
) -> None:
    env = worker_env(tmp_path, demo_model_path, lease_timeout_s=LEASE_S)
    env.pop(parent_watch.PARENT_ENV, None)
    db = fresh_db(tmp_path)
    launcher, worker = _start(BY_HAND, env)
    launcher.wait()
    pid = int(worker.partition(":")[0])
    try:
        wait_for(lambda: _lease(db).get("pid") == pid, 120, "the worker to take the lease")
        # Its heartbeat thread checks for a parent before every beat: three more beats after
        # the launcher exited, and it is still serving.
        first = _lease(db)["heartbeat_at"]
        wait_for(lambda: _lease(db).get("heartbeat_at", 0) > first + 3, 30, "three more beats")
        assert parent_watch.is_running(worker)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not parent_watch.is_running(worker), 30, "the worker to exit")
