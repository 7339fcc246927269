"""The background process of a simulation run: ``python -m rlhf_loop.simulate_process --run ID``.

It holds the run's simulated annotators (role 'simulated', named ``sim-<oracle>-run<id>-<i>``)
and lets each answer its next queued item every ``pace_s`` seconds through the Rank page's own
store calls (``simulate.answer_next``), staggered so that they do not all submit at once. It
needs no model: it only reads the items the worker queued. With nothing queued it waits, asking
with a read (no write lock) once a second per annotator, rather than exiting.

Stopping: on the operator's request (read with every heartbeat), when the app that started it
has exited (``parent_watch``, as the worker does), or on SIGTERM/SIGINT. It only stops between
two answers, and nothing is held between them (an item is taken and answered in one go), so it
never leaves an item assigned; any that an error left open are given back on the way out.

Started by hand with a plan instead of ``--run``, it records its own run and has no app to watch.
Why a module of its own rather than a ``python -m rlhf_loop`` subcommand: that command line
imports torch for its ``demo`` arguments, seconds of start and hundreds of MB for a process that
needs neither.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass

import sqlite_utils

from rlhf_loop import parent_watch
from rlhf_loop.config import ConfigError, Settings, load_settings
from rlhf_loop.simulate import BUILT_IN_ORACLES, SimulatedAnnotator, answer_next
from rlhf_loop.store.annotators import SIMULATED, annotator_id
from rlhf_loop.store.db import open_db, write_txn
from rlhf_loop.store.simulation_runs import (
    FAILED,
    STOPPED,
    PlanError,
    SimulationPlan,
    beat,
    claim,
    create_run,
    finish,
    plan_of,
)
from rlhf_loop.store.tasks import tasks_left_for

BEAT_S = 1.0  # heartbeat, stop request and parent check
IDLE_RETRY_S = 1.0  # an annotator with nothing queued looks again after this
MAX_SLEEP_S = 0.25  # so a signal is acted on within this


def annotator_name(oracle: str, run: int, index: int) -> str:
    """Says what it is wherever a name is shown: ``sim-arithmetic-run3-1``."""
    return f"sim-{oracle}-run{run}-{index}"


@dataclass
class _Seat:
    who: int
    annotator: SimulatedAnnotator
    due: float  # time.monotonic() of its next answer
    waiting: bool = False  # found nothing queued for it at its last turn


def run_simulation(settings: Settings, run: int, parent: str | None = None) -> int:
    """Serve run ``run`` until asked to stop; returns an exit status."""
    db = open_db(settings.resolved_db_path)
    row = claim(db, run, os.getpid())
    if row is None:
        print(f"simulation run {run} is not waiting to start; exiting", flush=True)
        return 0
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    state, message, status = STOPPED, "", 0
    try:
        message = _serve(db, settings, row, parent, stopping)
    except Exception as exc:
        state, message, status = FAILED, f"{type(exc).__name__}: {exc}", 1
        raise
    finally:
        _give_back_items(db, run)
        finish(db, run, state, message)
        print(f"simulation run {run} {state}: {message}", flush=True)
    return status


def _serve(
    db: sqlite_utils.Database,
    settings: Settings,
    row: dict,
    parent: str | None,
    stopping: threading.Event,
) -> str:
    """Answer at the plan's pace until a reason to stop; returns that reason."""
    run = row["id"]
    plan = plan_of(row)
    oracle = BUILT_IN_ORACLES[plan.oracle]()
    start = time.monotonic()
    seats = [
        _Seat(
            annotator_id(db, annotator_name(plan.oracle, run, i), SIMULATED, run),
            SimulatedAnnotator(oracle, plan.noise, plan.tie_threshold, _seed(plan.seed, run, i)),
            start + (i - 1) * plan.pace_s / plan.annotators,
        )
        for i in range(1, plan.annotators + 1)
    ]
    answered, last_beat = 0, float("-inf")
    while True:
        at = time.monotonic()
        if at - last_beat >= BEAT_S:
            if parent is not None and not parent_watch.is_running(parent):
                return "the app that started it has exited"
            waiting = sum(s.waiting for s in seats)
            line = f"{answered} answered" + (f"; {waiting} waiting for items" if waiting else "")
            if beat(db, run, line):
                return "stopped on request"
            last_beat = at
        if stopping.is_set():
            return "stopped by a signal"
        seat = min(seats, key=lambda s: s.due)
        if seat.due > at:
            time.sleep(min(seat.due - at, MAX_SLEEP_S))
            continue
        if not tasks_left_for(db, seat.who, settings.overlap, settings.assignment_timeout_s):
            seat.due, seat.waiting = at + IDLE_RETRY_S, True  # asked by a read: no write lock
            continue
        judged = answer_next(
            db, seat.who, seat.annotator, settings.overlap, settings.assignment_timeout_s
        )
        if judged is None:  # taken by someone else between the read and the claim
            seat.due, seat.waiting = at + IDLE_RETRY_S, True
            continue
        answered += 1
        seat.waiting = False
        seat.due = max(seat.due + plan.pace_s, at)  # behind after a wait: no burst to catch up


def _seed(seed: int, run: int, index: int) -> int:
    """One annotator's seed: reproducible from the plan, different across runs and seats."""
    return zlib.crc32(f"{seed}:{run}:{index}".encode())


def _give_back_items(db: sqlite_utils.Database, run: int) -> None:
    """Delete the run's open assignments (an error between taking and answering an item), so
    the item returns to the pool now rather than after the assignment timeout."""
    with write_txn(db):
        db["assignments"].delete_where(
            "closed_at IS NULL AND annotator_id IN "
            "(SELECT id FROM annotators WHERE simulation_run = ?)",
            [run],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_loop.simulate_process",
        description="Simulated annotators ranking the queued items (see the module docstring).",
    )
    parser.add_argument("--run", type=int, help="serve this run, recorded by the app")
    parser.add_argument("--oracle", choices=sorted(BUILT_IN_ORACLES), default="arithmetic")
    parser.add_argument("--annotators", type=int, default=SimulationPlan.annotators)
    parser.add_argument("--noise", type=float, default=SimulationPlan.noise)
    parser.add_argument("--tie-threshold", type=float, default=SimulationPlan.tie_threshold)
    parser.add_argument("--pace", type=float, default=SimulationPlan.pace_s, help="s per ranking")
    parser.add_argument("--seed", type=int, default=SimulationPlan.seed)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    run = args.run
    if run is None:
        plan = SimulationPlan(
            args.oracle, args.annotators, args.noise, args.tie_threshold, args.pace, args.seed
        )
        try:
            plan.checked(frozenset(BUILT_IN_ORACLES))
        except PlanError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        run = create_run(open_db(settings.resolved_db_path), plan, "command line")
        print(f"simulation run {run} started; stop it with Ctrl-C or on the app's page", flush=True)
    return run_simulation(settings, run, os.environ.get(parent_watch.PARENT_ENV))


if __name__ == "__main__":
    sys.exit(main())
