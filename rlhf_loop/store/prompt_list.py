"""The prompts as an operator browses them: searched, a page at a time, with how far each got
(sampled into items, ranked) and whether it is retired; and retiring or restoring them.

Retiring is what the flag review's "retire the prompt" does (``retired_at`` set: no longer
sampled, served or trained on, its rows kept); restoring clears it, so a prompt retired by
mistake comes back with its rankings training again. Either is an event naming who did it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.training_rankings import LIVE_RANKING

PAGE_SIZE = 25

Shown = Literal["all", "in use", "retired"]
SHOWN: tuple[Shown, ...] = ("all", "in use", "retired")


@dataclass(frozen=True)
class PromptPage:
    """One page of the prompts that match, and where it lies among them."""

    rows: list[dict[str, Any]]
    matching: int  # prompts matching the search and filter, all pages
    page: int  # 1-based, clamped to the pages there are
    pages: int

    @property
    def ids(self) -> list[int]:
        return [row["id"] for row in self.rows]


def _like_pattern(search: str) -> str:
    """A LIKE pattern matching ``search`` anywhere, its own % and _ taken literally."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def prompt_page(
    db: sqlite_utils.Database,
    search: str = "",
    shown: Shown = "all",
    page: int = 1,
    page_size: int = PAGE_SIZE,
) -> PromptPage:
    """Prompts whose text contains ``search`` (case-insensitive for ASCII letters), oldest first.

    Per prompt: ``times sampled`` (items made from it for ranking; gold items are not sampled),
    ``times ranked`` (live rankings of those items and of its gold item), ``gold`` and
    ``retired``. Counts are read for the page's prompts only, so a large table pages fast.
    """
    if shown not in SHOWN:
        raise ValueError(f"unknown filter {shown!r}")
    where = ["p.text LIKE ? ESCAPE '\\'"]
    params: list[Any] = [_like_pattern(search.strip())]
    if shown == "in use":
        where.append("p.retired_at IS NULL")
    elif shown == "retired":
        where.append("p.retired_at IS NOT NULL")
    condition = " AND ".join(where)
    matching = db.execute(f"SELECT count(*) FROM prompts p WHERE {condition}", params).fetchone()[0]
    pages = max(1, math.ceil(matching / page_size))
    page = min(max(1, page), pages)
    rows = db.execute(
        f"""
        SELECT p.id, p.text, p.label, p.retired_at,
          (SELECT count(*) FROM comparisons c
           WHERE c.prompt_id = p.id AND c.gold_ranks IS NULL) AS sampled,
          (SELECT count(*) FROM comparisons c
           WHERE c.prompt_id = p.id AND c.gold_ranks IS NOT NULL) AS gold,
          (SELECT count(*) FROM rankings r JOIN comparisons c ON c.id = r.comparison_id
           WHERE c.prompt_id = p.id AND {LIVE_RANKING}) AS ranked
        FROM prompts p WHERE {condition}
        ORDER BY p.id LIMIT ? OFFSET ?
        """,
        [*params, page_size, (page - 1) * page_size],
    ).fetchall()
    return PromptPage(
        rows=[
            {
                "id": pid,
                "prompt": text,
                "label": label or "",
                "times sampled": sampled,
                "times ranked": ranked,
                "gold": bool(gold),
                "retired": retired_at is not None,
            }
            for pid, text, label, retired_at, sampled, gold, ranked in rows
        ],
        matching=matching,
        page=page,
        pages=pages,
    )


def prompt_text(db: sqlite_utils.Database, prompt_id: int) -> str | None:
    row = db.execute("SELECT text FROM prompts WHERE id = ?", [prompt_id]).fetchone()
    return None if row is None else row[0]


def retire_prompts(db: sqlite_utils.Database, prompt_ids: Sequence[int], by: str) -> list[int]:
    """Retire those not retired yet; returns the ids this call retired."""
    return _set_retired(db, prompt_ids, by, retire=True)


def restore_prompts(db: sqlite_utils.Database, prompt_ids: Sequence[int], by: str) -> list[int]:
    """Put retired prompts back in use; returns the ids this call restored."""
    return _set_retired(db, prompt_ids, by, retire=False)


def _set_retired(
    db: sqlite_utils.Database, prompt_ids: Sequence[int], by: str, *, retire: bool
) -> list[int]:
    """One transaction: the rows that change and their event, or nothing. Prompts already in the
    asked state (another operator was quicker) are left as they are and not reported."""
    ids = sorted(set(prompt_ids))
    if not ids:
        return []
    marks = ", ".join("?" * len(ids))
    state = "IS NULL" if retire else "IS NOT NULL"
    with write_txn(db):
        changing = [
            r[0]
            for r in db.execute(
                f"SELECT id FROM prompts WHERE id IN ({marks}) AND retired_at {state}", ids
            ).fetchall()
        ]
        if changing:
            marks = ", ".join("?" * len(changing))
            db.execute(
                f"UPDATE prompts SET retired_at = ? WHERE id IN ({marks})",
                [now() if retire else None, *changing],
            )
            kind = "prompts_retired" if retire else "prompts_restored"
            log_event(db, kind, prompt_ids=changing, by=by)
    return changing
