"""Writing an annotator's answer to a task: a ranking, a skip, a flag or a written answer
(``store.demonstrations``), and undoing the last one.

A ranking row is never edited. Undo marks it retracted and reopens the task; the redo is a new
row that names the one it supersedes, so the history of every judgement stays readable. Reopening
an older answer for correction (from the annotator's recent answers) follows the same rule.

A page names the item it shows by its comparison id and the time it was served. After an
operator restores a snapshot, ids are reused (the worker samples new items into ids the restored
database never had) and an annotator's id may belong to someone who joined since, so the id
alone could land a ranking of the item on screen on another item. Its serving time tells: the
answer is taken when the assignment served then is still there (a snapshot taken after it keeps
it), and refused with ``ItemReplaced`` when a restore came since. Undo and reopen act on ids the
page read (its annotator's, its listed answers'), which a restore may have given to someone else:
the page hands back the ``restore_mark`` it read before them, and they are refused with
``RestoredSince`` when it changed.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from typing import Literal

import sqlite_utils

from rlhf_loop.ranking import RankingError, validate_ranks
from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import last_event, log_event

# 'demonstrated': the annotator wrote a better answer without ranking the K responses; the text
# is in ``demonstrations`` (a written answer with a ranking is stored as 'ranked').
Status = Literal["ranked", "skipped", "flagged", "demonstrated"]
MAX_REASON_CHARS = 2000
MAX_COMMENT_CHARS = 2000
# A pause longer than this between two answers ends a sitting (and its streak).
STREAK_BREAK_S = 600.0


# Logged by ``store.backup.restore`` inside the restored database (here to spare an import of
# the backup machinery on every submit).
RESTORED_EVENT = "database_restored"


class DuplicateSubmission(RankingError):
    """This annotator already answered this task; the first answer stands."""


class RestoredSince(RankingError):
    """The database was restored since the page read the ids it acts on: they may name someone
    else's annotator or answers there, so nothing was changed."""


class ItemReplaced(RestoredSince):
    """The database was restored since the page showed the item: the answer was not stored, and
    the item on screen may not exist any more or be another one under the same id."""


def restore_mark(db: sqlite_utils.Database) -> float:
    """When the database was last restored (its restore event's time), 0.0 if never.

    A page reads it before the ids it shows and hands it back with an undo or a reopen: another
    value then means a restore came since. A mark read before the ids, not the time of reading
    them: reads are not blocked by a restore's write lock, so a page may still read the old
    database after the restore logged its time (in the copy, before its commit).
    """
    last = last_restore(db)
    return last[1] if last else 0.0


def last_restore(db: sqlite_utils.Database) -> tuple[int, float] | None:
    """The newest restore event's (id, time), None if the database was never restored."""
    # The kind written out, not bound: only then does SQLite use the partial index of restores.
    row = db.execute(
        f"SELECT id, at FROM events WHERE kind = '{RESTORED_EVENT}' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return tuple(row) if row else None


def _restored_at(at: float) -> str:
    return f"The database was restored by an operator at {dt.datetime.fromtimestamp(at):%H:%M}"


def _not_restored_since(db: sqlite_utils.Database, seen: float | None, undone: str) -> None:
    """Raise RestoredSince when the page's ``restore_mark`` (``seen``) is not the current one."""
    if seen is None:
        return
    mark = restore_mark(db)
    if mark != seen:
        raise RestoredSince(
            f"{_restored_at(mark)}, after this page was shown to you; the answers it knew may be "
            f"someone else's there, so nothing was {undone}. The page now shows the restored "
            "database."
        )


def submit(
    db: sqlite_utils.Database,
    annotator: int,
    comparison_id: int,
    status: Status,
    ranks: list[int | None] | None = None,
    reason: str = "",
    comment: str = "",
    served_at: float | None = None,
) -> int:
    """Store one answer and close the task's assignment; returns the ranking id.

    A ranking needs a rank for every shown response; a flag may carry a ranking or none
    (the responses may be unrankable); a skip carries none. ``comment`` is the annotator's free
    note on the item, kept with the answer whatever its status. ``served_at`` is the Task's, as
    the page showed it: given, an answer to an item from before a restore is refused.
    """
    reason = reason.strip()[:MAX_REASON_CHARS]
    comment = comment.strip()[:MAX_COMMENT_CHARS]
    if status == "flagged" and not reason:
        raise RankingError("say why you flag this item")
    with write_txn(db):
        assignment = served_assignment(db, annotator, comparison_id, served_at)
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
                        "comment": comment or None,
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


def served_assignment(
    db: sqlite_utils.Database, annotator: int, comparison_id: int, served_at: float | None
) -> dict:
    """The assignment an answer closes; raises when the page's item is not this one.

    The serving time is compared only when it differs: an undo in another tab serves the same
    item again, later, and without a restore since the item is the same one."""
    assignment = next(
        iter(
            db["assignments"].rows_where(
                "comparison_id = ? AND annotator_id = ?", [comparison_id, annotator]
            )
        ),
        None,
    )
    if served_at is not None and (assignment is None or assignment["served_at"] != served_at):
        restored = last_event(db, RESTORED_EVENT, served_at)
        if restored is not None:
            raise ItemReplaced(
                f"{_restored_at(restored['at'])}, after this item was shown to you; it is not "
                "there as you saw it, so your answer was NOT saved. Here is your next item."
            )
    if assignment is None:
        raise RankingError("this item was not served to you; reload the page for your next one")
    return assignment


def _checked_ranks(status: Status, ranks: list[int | None] | None, k: int) -> list[int] | None:
    if status in ("skipped", "demonstrated"):
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


@dataclass(frozen=True)
class StoredAnswer:
    """One of an annotator's answers as stored: what a page needs to show it or refill it."""

    ranking_id: int
    comparison_id: int
    status: Status
    ranks: list[int] | None
    reason: str | None
    comment: str | None


@dataclass(frozen=True)
class Reopened(StoredAnswer):
    """A retracted answer whose task is served again, with what it said, so the page can put
    the old ranking and comment back in the box for correction."""


def undo_last(db: sqlite_utils.Database, annotator: int) -> int | None:
    """Retract this annotator's latest live answer and serve its task again; None if none."""
    reopened = reopen_last(db, annotator)
    return reopened.comparison_id if reopened else None


def reopen_last(
    db: sqlite_utils.Database, annotator: int, seen_restore: float | None = None
) -> Reopened | None:
    """Undo: retract this annotator's latest live answer and serve its task again.

    ``seen_restore`` is the ``restore_mark`` the page read before the annotator's id: given, an
    undo from a page shown before a restore is refused (RestoredSince), as the id may be
    someone else's now."""
    with write_txn(db):
        _not_restored_since(db, seen_restore, "undone")
        rows = db["rankings"].rows_where(
            "annotator_id = ? AND retracted_at IS NULL", [annotator], order_by="id DESC", limit=1
        )
        last = next(iter(rows), None)
        if last is None:
            return None
        return _retract_and_serve(db, annotator, last, "ranking_undone")


def reopen(
    db: sqlite_utils.Database,
    annotator: int,
    ranking_id: int,
    seen_restore: float | None = None,
) -> Reopened:
    """Retract one of this annotator's live answers, any one of them, and serve its task again
    (next, before the item that was on screen, which stays theirs); the corrected answer is a new
    row that supersedes it, as after an undo. ``seen_restore``: as for ``reopen_last`` (ranking
    ids are reused after a restore too)."""
    with write_txn(db):
        _not_restored_since(db, seen_restore, "reopened")
        rows = db["rankings"].rows_where(
            "id = ? AND annotator_id = ? AND retracted_at IS NULL", [ranking_id, annotator]
        )
        row = next(iter(rows), None)
        if row is None:
            raise RankingError("that answer was already reopened or is not yours")
        return _retract_and_serve(db, annotator, row, "ranking_reopened")


def _retract_and_serve(
    db: sqlite_utils.Database, annotator: int, row: dict, event: str
) -> Reopened:
    at = now()
    db["rankings"].update(row["id"], {"retracted_at": at})
    assignment = next(
        iter(
            db["assignments"].rows_where(
                "comparison_id = ? AND annotator_id = ?", [row["comparison_id"], annotator]
            )
        )
    )
    # served_at = now: the reopened task is the newest open one, so it is served next.
    db["assignments"].update(assignment["id"], {"closed_at": None, "served_at": at})
    log_event(db, event, annotator, ranking_id=row["id"])
    return Reopened(
        ranking_id=row["id"],
        comparison_id=row["comparison_id"],
        status=row["status"],
        ranks=json.loads(row["ranks"]) if row["ranks"] else None,
        reason=row["reason"],
        comment=row["comment"],
    )


@dataclass(frozen=True)
class Answer(StoredAnswer):
    """One of an annotator's own live answers, as their recent-answers list shows it."""

    created_at: float
    prompt: str


def recent_answers(db: sqlite_utils.Database, annotator: int, limit: int = 5) -> list[Answer]:
    """This annotator's latest live answers, newest first, with the prompt each was about."""
    rows = db.execute(
        """
        SELECT r.id, r.comparison_id, r.status, r.ranks, r.reason, r.comment, r.created_at,
               p.text
        FROM rankings r
        JOIN comparisons c ON c.id = r.comparison_id
        JOIN prompts p ON p.id = c.prompt_id
        WHERE r.annotator_id = ? AND r.retracted_at IS NULL
        ORDER BY r.id DESC LIMIT ?
        """,
        [annotator, limit],
    ).fetchall()
    return [
        Answer(rid, cid, status, json.loads(ranks) if ranks else None, *rest)
        for rid, cid, status, ranks, *rest in rows
    ]


def done_today(db: sqlite_utils.Database, annotator: int) -> int:
    """Live answers (rankings and flags, not skips) since local midnight."""
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    return db["rankings"].count_where(
        "annotator_id = ? AND retracted_at IS NULL AND status != 'skipped' AND created_at >= ?",
        [annotator, midnight],
    )


@dataclass(frozen=True)
class Progress:
    """The figures an annotator sees over the item: answers today and in this sitting."""

    done_today: int
    streak: int


def progress(db: sqlite_utils.Database, annotator: int, at: float | None = None) -> Progress:
    """Answers today (as ``done_today``) and the current streak: live answers (not skips) since
    the last pause of more than STREAK_BREAK_S, counting a pause that is still going on. Skips
    neither count nor break a streak."""
    at = now() if at is None else at
    answers = db.execute(
        """
        SELECT created_at, status FROM rankings
        WHERE annotator_id = ? AND retracted_at IS NULL AND created_at >= ?
        ORDER BY created_at DESC
        """,
        [annotator, at - 86400.0],
    )
    streak, previous = 0, at
    for created, status in answers:
        if previous - created > STREAK_BREAK_S:
            break
        streak += status != "skipped"
        previous = created
    return Progress(done_today(db, annotator), streak)
