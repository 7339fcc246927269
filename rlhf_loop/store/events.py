"""The audit log: one row per thing that happened, for operators and for debugging a lost item."""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

from rlhf_loop.store.db import now


def log_event(
    db: sqlite_utils.Database, kind: str, annotator_id: int | None = None, **payload: Any
) -> None:
    db["events"].insert(
        {
            "at": now(),
            "kind": kind,
            "annotator_id": annotator_id,
            "payload": json.dumps(payload, sort_keys=True),
        }
    )


def last_event(db: sqlite_utils.Database, kind: str, since: float) -> dict[str, Any] | None:
    """The newest event of ``kind`` at or after ``since``, payload decoded."""
    rows = db["events"].rows_where(
        "kind = ? AND at >= ?", [kind, since], order_by="id DESC", limit=1
    )
    row = next(iter(rows), None)
    return {**row, "payload": json.loads(row["payload"])} if row else None
