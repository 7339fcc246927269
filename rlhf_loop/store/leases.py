"""Leases: which process runs a singleton role (the worker), proven alive by its heartbeat.

A lease whose heartbeat is older than the timeout is free to take, so a killed worker is
replaced by the next one started, and two started at once cannot both win: the claim is one
write transaction.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from rlhf_loop.store.db import now, write_txn


def acquire(db: sqlite_utils.Database, name: str, holder: str, pid: int, timeout_s: float) -> bool:
    """Take the lease if it is free, stale, or already ours."""
    with write_txn(db):
        current = live_holder(db, name, timeout_s)
        if current is not None and current["holder"] != holder:
            return False
        at = now()
        db["leases"].upsert(
            {
                "name": name,
                "holder": holder,
                "pid": pid,
                "acquired_at": at,
                "heartbeat_at": at,
                "status": "starting",
                "progress": None,
            },
            pk="name",
        )
        return True


def heartbeat(
    db: sqlite_utils.Database,
    name: str,
    holder: str,
    status: str | None = None,
    progress: float | None = None,
) -> bool:
    """Refresh the lease (and optionally the status shown to users); False once it was lost."""
    changes: dict[str, Any] = {"heartbeat_at": now()}
    if status is not None:
        changes["status"] = status
        changes["progress"] = progress
    with write_txn(db):
        if not db["leases"].count_where("name = ? AND holder = ?", [name, holder]):
            return False
        db["leases"].update(name, changes)
    return True


def release(db: sqlite_utils.Database, name: str, holder: str) -> None:
    with write_txn(db):
        db["leases"].delete_where("name = ? AND holder = ?", [name, holder])


def live_holder(db: sqlite_utils.Database, name: str, timeout_s: float) -> dict[str, Any] | None:
    """The lease row if its heartbeat is fresh, else None."""
    rows = db["leases"].rows_where(
        "name = ? AND heartbeat_at > ?", [name, now() - timeout_s], limit=1
    )
    return next(iter(rows), None)
