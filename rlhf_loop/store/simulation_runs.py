"""Simulation runs: one row per background process of simulated annotators, its plan and state.

Why a row: the page that starts a run is gone by the next rerun, and the process lives in its own
session (``rlhf_loop.simulate_launch``), so the database is where the two meet. The page writes
the plan and a stop request; the process writes its state and a heartbeat, and reads the stop
request on each beat. A run whose heartbeat is older than the lease timeout is taken for dead
(killed, or its machine rebooted) whatever its state says, as a worker's lease is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event

STARTING, RUNNING, STOPPED, FAILED = "starting", "running", "stopped", "failed"
MAX_ANNOTATORS = 20
MIN_PACE_S = 0.1  # a faster pace only contends for the write lock with people
MAX_TIE_THRESHOLD = MAX_NOISE = 10.0


class PlanError(ValueError):
    """A simulation cannot run as asked; the message says why."""


@dataclass(frozen=True)
class SimulationPlan:
    """What an operator asks for: ``annotators`` simulated annotators with one oracle's
    preference, each ranking one item every ``pace_s`` seconds (so the run gives about
    annotators / pace_s rankings a second while items are queued)."""

    oracle: str
    annotators: int = 3
    noise: float = 0.3
    tie_threshold: float = 0.5
    pace_s: float = 5.0
    seed: int = 0

    def checked(self, oracles: set[str] | frozenset[str]) -> SimulationPlan:
        if self.oracle not in oracles:
            raise PlanError(f"unknown oracle {self.oracle!r}; one of {', '.join(sorted(oracles))}")
        if not 1 <= self.annotators <= MAX_ANNOTATORS:
            raise PlanError(f"start between 1 and {MAX_ANNOTATORS} simulated annotators")
        if not 0 <= self.noise <= MAX_NOISE or not 0 <= self.tie_threshold <= MAX_TIE_THRESHOLD:
            raise PlanError(f"noise and tie threshold must be between 0 and {MAX_NOISE:g}")
        if not self.pace_s >= MIN_PACE_S:
            raise PlanError(f"the pace must be at least {MIN_PACE_S:g} s per ranking")
        return self


def create_run(db: sqlite_utils.Database, plan: SimulationPlan, started_by: str) -> int:
    """The run's row, 'starting', its heartbeat now: it counts as live (so a removal waits for
    it) from before its process exists until it has beaten or the timeout has passed."""
    with write_txn(db):
        at = now()
        run = (
            db["simulation_runs"]
            .insert(
                asdict(plan)
                | {"state": STARTING, "started_by": started_by, "created_at": at}
                | {"heartbeat_at": at}
            )
            .last_pk
        )
        log_event(db, "simulation_started", run=run, started_by=started_by, **asdict(plan))
    return run


def plan_of(run: dict[str, Any]) -> SimulationPlan:
    return SimulationPlan(
        run["oracle"],
        run["annotators"],
        run["noise"],
        run["tie_threshold"],
        run["pace_s"],
        run["seed"],
    )


def claim(db: sqlite_utils.Database, run: int, pid: int) -> dict[str, Any] | None:
    """The process takes its row: 'running', with its pid. None when the row is not a starting
    run (unknown, already claimed, or stopped before its process came up)."""
    with write_txn(db):
        row = get_run(db, run)
        if row is None or row["state"] != STARTING or row["stop_requested_at"] is not None:
            if row is not None and row["state"] == STARTING:
                finish(db, run, STOPPED, "stopped before it started")
            return None
        db["simulation_runs"].update(run, {"state": RUNNING, "pid": pid, "heartbeat_at": now()})
        return get_run(db, run)


def beat(db: sqlite_utils.Database, run: int, message: str) -> bool:
    """Refresh the heartbeat and the line the page shows; True when a stop was requested, or
    when the row is gone (a restored backup that predates the run)."""
    with write_txn(db):
        row = get_run(db, run)
        if row is None:
            return True
        db["simulation_runs"].update(run, {"heartbeat_at": now(), "message": message})
        return row["stop_requested_at"] is not None


def request_stop(db: sqlite_utils.Database, run: int, by: str) -> bool:
    """Ask a run to stop after its current ranking; False when it had already ended."""
    with write_txn(db):
        row = get_run(db, run)
        if row is None or row["state"] not in (STARTING, RUNNING):
            return False
        if row["stop_requested_at"] is None:
            db["simulation_runs"].update(run, {"stop_requested_at": now()})
            log_event(db, "simulation_stop_requested", run=run, by=by)
        return True


def finish(db: sqlite_utils.Database, run: int, state: str, message: str) -> None:
    """The run has ended: 'stopped' or 'failed', and why."""
    with write_txn(db):
        at = now()
        if get_run(db, run) is not None:
            db["simulation_runs"].update(
                run, {"state": state, "message": message, "ended_at": at, "heartbeat_at": at}
            )
        log_event(db, f"simulation_{state}", run=run, message=message)


def get_run(db: sqlite_utils.Database, run: int) -> dict[str, Any] | None:
    return next(iter(db["simulation_runs"].rows_where("id = ?", [run])), None)


def is_live(row: dict[str, Any], timeout_s: float, at: float | None = None) -> bool:
    """Starting or running, with a heartbeat fresher than ``timeout_s``."""
    at = now() if at is None else at
    return row["state"] in (STARTING, RUNNING) and row["heartbeat_at"] > at - timeout_s


def live_runs(db: sqlite_utils.Database, timeout_s: float) -> list[dict[str, Any]]:
    return list(
        db["simulation_runs"].rows_where(
            "state IN (?, ?) AND heartbeat_at > ?",
            [STARTING, RUNNING, now() - timeout_s],
            order_by="id",
        )
    )


def shown_state(row: dict[str, Any], timeout_s: float, at: float | None = None) -> str:
    """The state in words: a live run asked to stop is 'stopping'; a starting or running one
    without a recent heartbeat is 'lost' (its process died without saying so)."""
    if row["state"] not in (STARTING, RUNNING):
        return row["state"]
    if not is_live(row, timeout_s, at):
        return "lost"
    return "stopping" if row["stop_requested_at"] is not None else row["state"]


def recent_runs(db: sqlite_utils.Database, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs first, live or not."""
    return list(db["simulation_runs"].rows_where(order_by="id DESC", limit=limit))
