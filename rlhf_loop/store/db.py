"""Opening the SQLite file: WAL mode, a busy timeout, foreign keys, and write transactions.

Why BEGIN IMMEDIATE: a deferred transaction that reads, then writes, can fail with SQLITE_BUSY
at the upgrade when another process wrote meanwhile, and the busy timeout does not help there.
Taking the write lock up front makes concurrent writers (annotators, the worker) simply queue.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from rlhf_loop.store.schema import migrate

BUSY_TIMEOUT_S = 30.0


class StoreError(RuntimeError):
    """The database cannot be used as asked; the message says why in plain words."""


def now() -> float:
    """Wall-clock seconds: the one timestamp format of every table."""
    return time.time()


def open_db(path: str | Path, busy_timeout_s: float | None = None) -> sqlite_utils.Database:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date.

    A writer waits up to ``busy_timeout_s`` (default BUSY_TIMEOUT_S) for another one's lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from None
    db = sqlite_utils.Database(conn)
    migrate(db, write_txn)
    return db


@contextlib.contextmanager
def write_txn(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One atomic write: all of it lands or none. Nested calls join the outer transaction."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    try:
        db.conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise StoreError(
            f"the database is busy: another process held its write lock too long ({exc}); "
            "nothing was written, try again"
        ) from None
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")
