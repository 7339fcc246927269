"""Flag review: operators read what annotators flagged and decide, once per flag.

A flag is an annotator's "this item cannot be ranked as it is". The decisions: dismiss (the item
was fine) or retire the prompt (it is broken or harmful: no longer sampled, served or trained
on). Either way the flag row stays; the review is its own row, so the audit trail is whole.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.generations import comparison_generations

Decision = Literal["dismissed", "retired_prompt"]
DECISIONS: tuple[Decision, ...] = ("dismissed", "retired_prompt")


class ReviewError(ValueError):
    """The review cannot be recorded; the message says why."""


def open_flags(db: sqlite_utils.Database, limit: int = 50) -> list[dict[str, Any]]:
    """Live flags nobody has reviewed yet, oldest first, with what the annotator saw."""
    rows = db.query(
        """
        SELECT r.id AS ranking_id, r.reason, r.created_at, a.name AS annotator,
               c.id AS comparison_id, c.generation_ids, p.id AS prompt_id, p.text AS prompt
        FROM rankings r
        JOIN annotators a ON a.id = r.annotator_id
        JOIN comparisons c ON c.id = r.comparison_id
        JOIN prompts p ON p.id = c.prompt_id
        WHERE r.status = 'flagged' AND r.retracted_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM flag_reviews f WHERE f.ranking_id = r.id)
        ORDER BY r.id LIMIT ?
        """,
        [limit],
    )
    flags = []
    for row in rows:
        generations = comparison_generations(db, row.pop("generation_ids"))
        flags.append({**row, "responses": [g["text"] for g in generations]})
    return flags


def review_flag(
    db: sqlite_utils.Database, ranking_id: int, decision: Decision, reviewer: str, note: str = ""
) -> None:
    """Record the decision; retiring takes the prompt out of sampling, serving and training."""
    if decision not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}")
    with write_txn(db):
        flag = next(
            iter(db["rankings"].rows_where("id = ? AND status = 'flagged'", [ranking_id])), None
        )
        if flag is None:
            raise ReviewError(f"there is no flag {ranking_id}")
        try:
            db["flag_reviews"].insert(
                {
                    "ranking_id": ranking_id,
                    "decision": decision,
                    "note": note.strip()[:2000] or None,
                    "reviewer": reviewer,
                    "at": now(),
                }
            )
        except sqlite3.IntegrityError:
            raise ReviewError("this flag was already reviewed (perhaps in another tab)") from None
        if decision == "retired_prompt":
            prompt_id = db["comparisons"].get(flag["comparison_id"])["prompt_id"]
            db["prompts"].update(prompt_id, {"retired_at": now()})
        log_event(db, "flag_reviewed", ranking_id=ranking_id, decision=decision, reviewer=reviewer)


def flag_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Open and reviewed flags, for the dashboard's headline."""
    # Through the flags' own index: left to choose, the planner counted them by going over every
    # live answer (the index by annotator, status and seconds covers the query too).
    open_ = db.execute(
        "SELECT count(*) FROM rankings INDEXED BY idx_rankings_flagged"
        " WHERE status = 'flagged' AND retracted_at IS NULL"
        " AND id NOT IN (SELECT ranking_id FROM flag_reviews)"
    ).fetchone()[0]
    return {"open": open_, "reviewed": db["flag_reviews"].count}
