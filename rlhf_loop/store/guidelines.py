"""The operators' word to annotators: guidelines shown beside every item, and a daily target.

Kept in the database, not in the settings file, because operators edit them on the Settings page
while annotators rank, and because each edit is a new row: what annotators were told when they
gave a ranking can be read back later.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event

MAX_GUIDELINES_CHARS = 20_000
MAX_DAILY_TARGET = 10_000


class GuidelinesError(ValueError):
    """The guidelines cannot be saved as they are; the message says why."""


@dataclass(frozen=True)
class Guidelines:
    """Markdown text (shown without HTML) and answers per annotator per day; 0 means none."""

    text: str = ""
    daily_target: int = 0
    author: str | None = None
    created_at: float | None = None


def current_guidelines(db: sqlite_utils.Database) -> Guidelines:
    """The newest edit, or empty guidelines with no target when no operator wrote any."""
    rows = db["guidelines"].rows_where(order_by="id DESC", limit=1)
    row = next(iter(rows), None)
    if row is None:
        return Guidelines()
    return Guidelines(row["text"], row["daily_target"], row["author"], row["created_at"])


def set_guidelines(
    db: sqlite_utils.Database, text: str, daily_target: int, author: str
) -> Guidelines:
    """Store a new edit (the earlier ones stay) and log who made it."""
    text = text.strip()
    if len(text) > MAX_GUIDELINES_CHARS:
        raise GuidelinesError(f"guidelines have at most {MAX_GUIDELINES_CHARS} characters")
    if isinstance(daily_target, bool) or not isinstance(daily_target, int):
        raise GuidelinesError("the daily target is a whole number")
    if not 0 <= daily_target <= MAX_DAILY_TARGET:
        raise GuidelinesError(f"the daily target is between 0 (none) and {MAX_DAILY_TARGET}")
    edit = Guidelines(text, daily_target, author, now())
    with write_txn(db):
        db["guidelines"].insert(
            {
                "text": edit.text,
                "daily_target": edit.daily_target,
                "author": author,
                "created_at": edit.created_at,
            }
        )
        log_event(
            db, "guidelines_edited", author=author, chars=len(text), daily_target=daily_target
        )
    return edit
