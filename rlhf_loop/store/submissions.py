"""Writing an annotator's answer to a task: a ranking, a skip or a flag, and undoing the last one.

A ranking row is never edited. Undo marks it retracted and reopens the task; the redo is a new
row that names the one it supersedes, so the history of every judgement stays readable.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Literal

import sqlite_utils

from rlhf_loop.ranking import RankingError, validate_ranks
from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event

Status = Literal["ranked", "skipped", "flagged"]
MAX_REASON_CHARS = 2000


class DuplicateSubmission(RankingError):
    """This annotator already answered this task; the first answer stands."""


def submit(
    db: sqlite_utils.Database,
    annotator: int,
    comparison_id: int,
    status: Status,
    ranks: list[int | None] | None = None,
    reason: str = "",
) -> int:
    """Store one answer and close the task's assignment; returns the ranking id.

    A ranking needs a rank for every shown response; a flag may carry a ranking or none
    (the responses may be unrankable); a skip carries none.
    """
    reason = reason.strip()[:MAX_REASON_CHARS]
    if status == "flagged" and not reason:
        raise RankingError("say why you flag this item")
    with write_txn(db):
        assignment = next(
            iter(
                db["assignments"].rows_where(
                    "comparison_id = ? AND annotator_id = ?", [comparison_id, annotator]
                )
            ),
            None,
        )
        if assignment is None:
            raise RankingError("this item was not served to you; reload the page for your next one")
        k = db["comparisons"].get(comparison_id)["k"]
        stored = _checked_ranks(status, ranks, k)
        submitted_at = now()
        superseded = _last_retracted(db, annotator, comparison_id)
        try:
            ranking_id = (
                db["rankings"]
                .insert(
                    {
                        "comparison_id": comparison_id,
                        "annotator_id": annotator,
                        "status": status,
                        "ranks": json.dumps(stored) if stored else None,
                        "reason": reason or None,
                        "seconds": max(0.0, submitted_at - assignment["served_at"]),
                        "created_at": submitted_at,
                        "supersedes": superseded,
                    }
                )
                .last_pk
            )
        except sqlite3.IntegrityError:
            raise DuplicateSubmission(
                "you already submitted this item; your first answer was kept"
            ) from None
        db["assignments"].update(assignment["id"], {"closed_at": submitted_at})
        log_event(db, f"ranking_{status}", annotator, ranking_id=ranking_id)
        return ranking_id


def _checked_ranks(status: Status, ranks: list[int | None] | None, k: int) -> list[int] | None:
    if status == "skipped":
        return None
    if status == "flagged" and (ranks is None or all(r is None for r in ranks)):
        return None
    if ranks is None:
        raise RankingError("rank the responses before submitting")
    return validate_ranks(ranks, k)


def _last_retracted(db: sqlite_utils.Database, annotator: int, comparison_id: int) -> int | None:
    rows = db["rankings"].rows_where(
        "comparison_id = ? AND annotator_id = ? AND retracted_at IS NOT NULL",
        [comparison_id, annotator],
        order_by="id DESC",
        limit=1,
    )
    row = next(iter(rows), None)
    return row["id"] if row else None


def undo_last(db: sqlite_utils.Database, annotator: int) -> int | None:
    """Retract this annotator's latest live answer and serve its task again; None if none."""
    with write_txn(db):
        rows = db["rankings"].rows_where(
            "annotator_id = ? AND retracted_at IS NULL", [annotator], order_by="id DESC", limit=1
        )
        last = next(iter(rows), None)
        if last is None:
            return None
        at = now()
        db["rankings"].update(last["id"], {"retracted_at": at})
        assignment = next(
            iter(
                db["assignments"].rows_where(
                    "comparison_id = ? AND annotator_id = ?",
                    [last["comparison_id"], annotator],
                )
            )
        )
        db["assignments"].update(assignment["id"], {"closed_at": None, "served_at": at})
        log_event(db, "ranking_undone", annotator, ranking_id=last["id"])
        return last["comparison_id"]


def done_today(db: sqlite_utils.Database, annotator: int) -> int:
    """Live answers (rankings and flags, not skips) since local midnight."""
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    return db["rankings"].count_where(
        "annotator_id = ? AND retracted_at IS NULL AND status != 'skipped' AND created_at >= ?",
        [annotator, midnight],
    )
