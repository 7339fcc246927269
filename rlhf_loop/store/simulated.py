"""Simulated rankings beside people's: the operator's opt-in, their counts, and their removal.

A ranking is simulated when its annotator has the role 'simulated' (``store.annotators``).
Such rankings never enter the agreement figures (``store.quality``); they train the reward model
and count in people's verdict on versions only while the operator has opted in
(``store.training_rankings.TRAINS`` reads the newest choice here). The choice is stored in the
database rather than in the settings file because it is made on a page at run time, and every
process (app, worker, export) must see the same value at once without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.store.annotators import SIMULATED
from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.simulation_runs import live_runs

REMOVED_EVENT = "simulated_rankings_removed"


class SimulationRunning(RuntimeError):
    """Simulated rankings cannot be removed while a simulation may still add some."""


def simulated_included(db: sqlite_utils.Database) -> bool:
    """Whether simulated rankings train and judge versions now (off until an operator says)."""
    rows = db["simulated_opt_in"].rows_where(order_by="id DESC", limit=1)
    row = next(iter(rows), None)
    return bool(row and row["included"])


def set_simulated_included(db: sqlite_utils.Database, included: bool, author: str) -> None:
    """Record the operator's choice (a new row: who chose what, and when, stays readable)."""
    with write_txn(db):
        if simulated_included(db) == included:
            return
        db["simulated_opt_in"].insert(
            {"included": int(included), "author": author, "created_at": now()}
        )
        log_event(db, "simulated_opt_in_changed", included=included, author=author)


@dataclass(frozen=True)
class RankingCounts:
    """Live rankings (status 'ranked', not undone), people's and simulated apart."""

    human: int
    simulated: int
    simulated_included: bool


def ranking_counts(db: sqlite_utils.Database) -> RankingCounts:
    # Counted per annotator in the index of live answers, then split by role: a join per
    # ranking read every row (0.7 s at 10^6 rankings).
    human, simulated = db.execute(
        """
        SELECT coalesce(sum(CASE WHEN a.role != :sim THEN s.n END), 0),
               coalesce(sum(CASE WHEN a.role = :sim THEN s.n END), 0)
        FROM annotators a JOIN (
            SELECT annotator_id, count(*) AS n FROM rankings
            WHERE retracted_at IS NULL AND status = 'ranked' GROUP BY annotator_id
        ) s ON s.annotator_id = a.id
        """,
        {"sim": SIMULATED},
    ).fetchone()
    return RankingCounts(human, simulated, simulated_included(db))


def simulated_annotators(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every simulated annotator with its run and its live rankings, by run then name."""
    rows = db.execute(
        """
        SELECT a.name AS annotator, a.simulation_run AS run,
               count(r.id) AS ranked
        FROM annotators a
        LEFT JOIN rankings r
          ON r.annotator_id = a.id AND r.retracted_at IS NULL AND r.status = 'ranked'
        WHERE a.role = ?
        GROUP BY a.id ORDER BY a.simulation_run, a.name
        """,
        [SIMULATED],
    )
    return [dict(zip(("annotator", "run", "ranked"), row, strict=True)) for row in rows]


def ranked_per_run(db: sqlite_utils.Database) -> dict[int, int]:
    """Live rankings of each run's annotators, by run id."""
    counts: dict[int, int] = {}
    for row in simulated_annotators(db):
        counts[row["run"]] = counts.get(row["run"], 0) + row["ranked"]
    return counts


def remove_simulated(db: sqlite_utils.Database, by: str, timeout_s: float) -> int:
    """Take every simulated answer out of training, exports and verdicts in one transaction;
    returns how many were removed.

    The answers are retracted, as an undo does, not deleted: the rows stay for the audit log,
    and their items return to the queue for people. The removal is not undone from the app
    (the event records its time, which is every removed row's ``retracted_at``). Items still
    held by a simulated annotator (a killed run's) are given back. Refused while a run is live
    (``timeout_s`` is its heartbeat timeout): it could add a ranking right after the removal,
    which would then not have removed everything.
    """
    with write_txn(db):
        running = live_runs(db, timeout_s)
        if running:
            ids = ", ".join(str(r["id"]) for r in running)
            raise SimulationRunning(
                f"a simulation is still running (run {ids}); stop it first, then remove"
            )
        simulated = f"annotator_id IN (SELECT id FROM annotators WHERE role = '{SIMULATED}')"
        at = now()
        removed = db["rankings"].count_where(f"retracted_at IS NULL AND {simulated}")
        if removed:
            db.execute(
                f"UPDATE rankings SET retracted_at = ? WHERE retracted_at IS NULL AND {simulated}",
                [at],
            )
        db["assignments"].delete_where(f"closed_at IS NULL AND {simulated}")
        log_event(db, REMOVED_EVENT, removed=removed, by=by, retracted_at=at)
    return removed
