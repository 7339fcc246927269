"""Starting a worker from the app when none holds the lease.

The app claims the lease itself, under a fresh token, before it spawns the process, and hands
the token over: so two pages opened at once start one worker, not two, and the page does not
start another while the first is still importing torch. It hands over its own identity too,
so the worker stops once the app has exited (``rlhf_loop.parent_watch``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import sqlite_utils

from rlhf_loop import parent_watch
from rlhf_loop.config import ENV_PREFIX, Settings
from rlhf_loop.store import leases
from rlhf_loop.store.db import now
from rlhf_loop.store.events import last_event
from rlhf_loop.worker import FAILED_EVENT, LEASE, TOKEN_ENV, new_holder

RESPAWN_PAUSE_S = 30.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as RLHF_LOOP_* variables, so a child process sees exactly these values."""
    return {
        ENV_PREFIX + f.name.upper(): str(getattr(settings, f.name))
        for f in dataclasses.fields(settings)
    } | {
        ENV_PREFIX + "DATA_DIR": str(settings.resolved_data_dir),
        ENV_PREFIX + "DB_PATH": str(settings.resolved_db_path),
        ENV_PREFIX + "MODEL_CACHE_DIR": str(settings.resolved_model_cache_dir),
    }


def spawn_child(
    module_args: list[str], settings: Settings, log_name: str, extra_env: dict[str, str]
) -> subprocess.Popen:
    """``python -m <module_args>`` with the app's settings and identity, logging to
    ``<data_dir>/<log_name>``. Its own session: Ctrl-C on `streamlit run` does not interrupt
    it mid-step; it notices the app has gone (``parent_watch``) and stops at a safe point."""
    log_path = settings.resolved_data_dir / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | settings_env(settings) | extra_env
    env |= {parent_watch.PARENT_ENV: parent_watch.identity(os.getpid())}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *module_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path.cwd(),
        )


def recent_failure(db: sqlite_utils.Database) -> str | None:
    """The error of a worker that died in the last RESPAWN_PAUSE_S seconds, if one did."""
    event = last_event(db, FAILED_EVENT, now() - RESPAWN_PAUSE_S)
    return event["payload"]["error"] if event else None


def ensure_worker(db: sqlite_utils.Database, settings: Settings) -> int | None:
    """Spawn a worker if the lease is free; returns its pid, or None if one is alive already."""
    if leases.live_holder(db, LEASE, settings.lease_timeout_s):
        return None  # the common case, answered by a read: no write lock on every page run
    if recent_failure(db):
        return None  # a worker that fails at start would otherwise be respawned every rerun
    token = new_holder()
    if not leases.acquire(db, LEASE, token, os.getpid(), settings.lease_timeout_s):
        return None
    process = spawn_child(["rlhf_loop", "worker"], settings, "worker.log", {TOKEN_ENV: token})
    return process.pid
