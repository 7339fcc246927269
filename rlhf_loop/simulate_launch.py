"""Starting a simulation run from the app (it is stopped through its row: ``request_stop``).

As for the worker (``worker_launch``): the run's row is written before its process is spawned,
so the page shows it at once and a removal of simulated rankings waits for it; the process gets
the app's settings as environment variables and the app's identity, so it stops once the app has
exited (``parent_watch``); and it runs in a session of its own, so Ctrl-C on ``streamlit run``
does not cut it off between taking an item and answering it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.config import Settings
from rlhf_loop.simulate import BUILT_IN_ORACLES
from rlhf_loop.store.simulation_runs import FAILED, SimulationPlan, create_run, finish
from rlhf_loop.worker_launch import spawn_child

LOG_FILE = "simulate.log"


@dataclass(frozen=True)
class Started:
    run: int
    process: subprocess.Popen


def start_simulation(
    db: sqlite_utils.Database, settings: Settings, plan: SimulationPlan, started_by: str
) -> Started:
    """Record the run and spawn its process; raises ``PlanError`` for a plan that cannot run
    (nothing recorded) and ``OSError`` when the process cannot start (the run is 'failed')."""
    plan = plan.checked(frozenset(BUILT_IN_ORACLES))
    run = create_run(db, plan, started_by)
    try:
        process = spawn_child(
            ["rlhf_loop.simulate_process", "--run", str(run)], settings, LOG_FILE, {}
        )
    except OSError as exc:
        finish(db, run, FAILED, f"could not start: {exc}")
        raise
    return Started(run, process)
