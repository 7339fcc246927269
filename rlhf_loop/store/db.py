"""Opening the SQLite file: WAL mode, a busy timeout, foreign keys, and write transactions.

Why BEGIN IMMEDIATE: a deferred transaction that reads, then writes, can fail with SQLITE_BUSY
at the upgrade when another process wrote meanwhile, and the busy timeout does not help there.
Taking the write lock up front makes concurrent writers (annotators, the worker) simply queue.

A full disk (SQLITE_FULL) or a failing one (SQLITE_IOERR) can strike any statement of a write,
its COMMIT included (in WAL mode, mostly there). SQLite may or may not roll the transaction back
itself; ``write_txn`` makes sure it is, so the connection is never left holding the write lock
(every later write on it would join a transaction that never commits, and report success), and
raises ``DiskError``: nothing of that write is stored, and the same call succeeds once space is
back, on the same connection, without a restart.
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


class DiskError(StoreError):
    """The disk under the database is full or failing: the write was rolled back whole."""


# Primary result codes (the low byte of an extended one) that mean the disk, not the query.
_DISK_CODES = {sqlite3.SQLITE_FULL: "full", sqlite3.SQLITE_IOERR: "failing"}


def disk_error(exc: sqlite3.Error) -> DiskError | None:
    """The DiskError that ``exc`` stands for, or None when it is about something else: the one
    place that turns SQLite's "database or disk is full" and "disk I/O error" into words."""
    code = getattr(exc, "sqlite_errorcode", None)
    state = _DISK_CODES.get(code & 0xFF) if code is not None else None
    if state is None:
        return None
    return DiskError(
        f"the server's disk is {state} ({exc}): nothing was saved; an operator must free space "
        "on it (or fix it), then try again"
    )


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
        db.conn.execute("COMMIT")
    except BaseException as exc:
        if db.conn.in_transaction:  # SQLite may have rolled back itself (a full disk does)
            with contextlib.suppress(sqlite3.Error):
                db.conn.execute("ROLLBACK")
        disk = disk_error(exc) if isinstance(exc, sqlite3.Error) else None
        if disk is not None:
            raise disk from None
        raise


@contextlib.contextmanager
def read_snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Several reads that see one state of the database, whatever commits meanwhile (WAL keeps
    the snapshot of a read transaction's first read); inside a transaction, that one's state."""
    if db.conn.in_transaction:
        yield db
        return
    db.conn.execute("BEGIN")
    try:
        yield db
    finally:
        if db.conn.in_transaction:
            db.conn.execute("COMMIT")
