"""Backup and restore of the whole database, safe while the app and the worker keep it open.

Both directions use SQLite's online backup API with every page copied in one step (pages=-1):
that step holds one read snapshot of the source and, on the destination, one write transaction,
so a download is a consistent point in time however busy the writers are, and a restore lands
all at once: the app's sessions and the worker see either the old database or the restored one
on their next read, never a mixture. Replacing the file on disk instead would break every open
WAL connection (they keep the old inode and its -wal/-shm).

A restore is checked on a private copy of the upload before the live database is touched, and
it is migrated there too, so the live database never holds an old schema that running code
cannot read. Before replacing anything it saves the current database as a safety snapshot so
the operator can undo the restore by restoring that file. The snapshot is taken while the copy
holds the live write lock: the copy runs in two steps, and the destination's write lock, taken
by the first, is held until the last one commits; between them the snapshot is read (WAL readers
see the last commit, the copy's pages are not yet visible) and the restore is logged in the
copy. So every commit acknowledged before the restore is in the safety snapshot, and none can
land between the snapshot and the copy (a lock released and taken again would leave that gap:
the backup API takes the destination's lock itself and refuses a connection already in a
transaction). Writers that waited for the lock write into the restored database; a page's answer
to an item shown before the restore is refused (``store.submissions.ItemReplaced``).

Python's ``Connection.backup`` retries SQLITE_BUSY forever; every copy here goes through
``_copy``, whose progress callback turns a lock held past the busy timeout into an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from rlhf_loop.store.db import (
    BUSY_TIMEOUT_S,
    DiskError,
    StoreError,
    disk_error,
    open_db,
    write_txn,
)
from rlhf_loop.store.events import log_event
from rlhf_loop.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from rlhf_loop.store.submissions import RESTORED_EVENT

SQLITE_MAGIC = b"SQLite format 3\x00"
# Shown before/after a restore so the operator sees at a glance what it did.
COUNTED_TABLES = ("prompts", "comparisons", "rankings", "annotators")


class RestoreError(ValueError):
    """The upload cannot be restored, or the restore could not run; nothing was changed."""


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did, for the operator: row counts either side and how to undo it.

    ``before``/``after`` map each of COUNTED_TABLES to its row count (all rows, retracted
    rankings and skips included). ``safety_snapshot`` is the database as it was just before;
    restoring that file undoes this restore.
    """

    safety_snapshot: Path
    before: dict[str, int]
    after: dict[str, int]
    upload_schema_version: int
    schema_version: int
    upload_bytes: int
    upload_sha256: str

    @property
    def migrated(self) -> bool:
        return self.upload_schema_version < self.schema_version

    def summary(self) -> str:
        """One plain sentence for a success message."""
        change = ", ".join(f"{t} {self.before[t]} → {self.after[t]}" for t in self.after)
        migrated = (
            f" The backup was at schema v{self.upload_schema_version} and was brought up to "
            f"v{self.schema_version}."
            if self.migrated
            else ""
        )
        return (
            f"Database restored ({change}).{migrated} The previous database was saved as "
            f"{self.safety_snapshot}; restore that file to undo."
        )


class _Busy(Exception):
    """Raised from the backup progress callback to stop Python's endless busy retry."""


def snapshot_name(prefix: str = "rlhf-loop", at: dt.datetime | None = None) -> str:
    """A sortable, filesystem-safe file name for a snapshot taken now (or ``at``)."""
    at = at or dt.datetime.now()
    return f"{prefix}-{at:%Y%m%d-%H%M%S}.db"


def snapshot_to(
    db_path: str | Path, dest_path: str | Path, busy_timeout_s: float | None = None
) -> Path:
    """Write a consistent, self-contained copy of the database at ``db_path`` to ``dest_path``.

    Opens its own read-only connection, so it is safe from any thread (Streamlit's download
    callback runs outside the session's thread) and never writes to the live database. The copy
    is written beside ``dest_path`` and renamed into place only once it passed integrity_check,
    so a failure never leaves a half file under that name. Raises StoreError.
    """
    db_path = Path(db_path).expanduser().resolve()
    if not db_path.is_file():
        raise StoreError(f"there is no database at {db_path} to back up")
    timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
    try:
        src = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the database {db_path} to back it up: {exc}") from None
    try:
        return _snapshot_from(src, Path(dest_path), timeout)
    finally:
        src.close()


def snapshot_bytes(db_path: str | Path, busy_timeout_s: float | None = None) -> bytes:
    """The bytes of a consistent snapshot (see snapshot_to), e.g. for a download button."""
    with tempfile.TemporaryDirectory(prefix="rlhf-snapshot-") as tmp:
        return snapshot_to(db_path, Path(tmp) / "snapshot.db", busy_timeout_s).read_bytes()


def _snapshot_from(src: sqlite3.Connection, dest: Path, timeout_s: float) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(partial, isolation_level=None)) as dst:
            try:
                _copy(src, dst, timeout_s)
            except _Busy:
                raise StoreError(
                    f"the database stayed locked for over {timeout_s:g} s; no snapshot was "
                    "taken, try again"
                ) from None
            # The copied header says WAL (the source's mode): a file opened in WAL mode relies
            # on a -wal beside it. DELETE mode makes the one file the whole database.
            dst.execute("PRAGMA journal_mode=DELETE")
            problems = _integrity_problems(dst)
        if problems:
            raise StoreError(f"the snapshot failed its integrity check: {problems}")
        os.replace(partial, dest)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot write the snapshot {dest}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot write the snapshot {dest}: {exc}") from None
    finally:
        for leftover in (partial, partial.with_name(partial.name + "-journal")):
            leftover.unlink(missing_ok=True)
    return dest


def _copy(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    timeout_s: float,
    under_lock: Callable[[], None] | None = None,
) -> None:
    """Copy every page; raises _Busy instead of retrying a lock past ``timeout_s``.

    Without ``under_lock``, in one step: it reads the source under one read snapshot, so commits
    by other processes never restart it (a copy in several steps starts over after each one and
    may never finish under a busy writer). With it, in two: ``under_lock`` runs after the first,
    while the destination's write lock is held (the source must then be private to the caller,
    which may write to it through ``src``: SQLite carries such changes into the copy). Either
    way the destination's write lock is held from the first page to the commit, so other
    connections see the old database or the whole new one. The destination's busy handler has
    already waited its timeout when a step reports BUSY (the source's handler likewise for its
    read lock), so BUSY stops the copy at once.
    """
    deadline = time.monotonic() + timeout_s
    pages = -1
    if under_lock is not None:
        # All but one page first: the copy cannot be done (committed) after the first step.
        pages = src.execute("PRAGMA page_count").fetchone()[0] - 1
        if pages < 1:
            raise ValueError("a copy in two steps needs a source of two pages or more")
    pending = [under_lock] if under_lock is not None else []

    def progress(status: int, remaining: int, total: int) -> None:
        # BUSY comes only after a busy handler waited its timeout; LOCKED (a lock inside this
        # process) has no handler, so it gets the same time here.
        if status == sqlite3.SQLITE_BUSY or (
            status == sqlite3.SQLITE_LOCKED and time.monotonic() >= deadline
        ):
            raise _Busy
        if status == sqlite3.SQLITE_OK and pending:
            pending.pop()()

    src.backup(dst, pages=pages, progress=progress, sleep=0.05)


def _integrity_problems(conn: sqlite3.Connection) -> str:
    """'' when integrity_check passes, else its first few findings."""
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check(5)").fetchall()]
    return "" if rows == ["ok"] else "; ".join(rows)


def _db_path(db_or_path: str | Path | sqlite_utils.Database) -> Path:
    if not isinstance(db_or_path, sqlite_utils.Database):
        return Path(db_or_path).expanduser().resolve()
    for _, name, file in db_or_path.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file)
    raise RestoreError("this database lives in memory; only a database file can be restored")


def _counts(db: sqlite_utils.Database) -> dict[str, int]:
    return {t: db[t].count for t in COUNTED_TABLES}


def _tables_at(version: int) -> set[str]:
    """The tables a database at schema ``version`` has: build one in memory and look."""
    reference = sqlite_utils.Database(memory=True)
    for migration in MIGRATIONS[:version]:
        migration(reference)
    return set(reference.table_names())


def _check_header(data: bytes) -> None:
    if not data:
        raise RestoreError("the uploaded file is empty")
    if len(data) < 100 or not data.startswith(SQLITE_MAGIC):
        raise RestoreError(
            "the uploaded file is not an SQLite database; upload a .db file downloaded from "
            "this app's backup button"
        )
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise RestoreError("the uploaded file's SQLite header is damaged; it cannot be restored")
    # The header's page count is only trusted when its change counter matches (offsets 24, 92).
    pages = int.from_bytes(data[28:32], "big") if data[24:28] == data[92:96] else 0
    if len(data) % page_size or len(data) < pages * page_size:
        expected = f"{pages * page_size} bytes" if pages else "a whole number of pages"
        raise RestoreError(
            f"the uploaded file is truncated ({len(data)} bytes, a complete one has {expected}); "
            "download the backup again"
        )


def _prepare(data: bytes, work: Path, page_size: int) -> tuple[Path, int]:
    """Write, check and migrate the upload in ``work``; returns its path and its original
    schema version. Raises RestoreError; never touches the live database."""
    _check_header(data)
    path = work / "upload.db"
    path.write_bytes(data)
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            # A header copied from a WAL database makes this connection WAL; DELETE keeps the
            # checked copy one file and allows the page size change below.
            conn.execute("PRAGMA journal_mode=DELETE")
            problems = _integrity_problems(conn)
            if problems:
                raise RestoreError(
                    f"the uploaded database is damaged ({problems}); it was not restored"
                )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RestoreError(
                    f"the backup was made by a newer rlhf-loop (schema v{version}, this app "
                    f"knows up to v{SCHEMA_VERSION}); upgrade the app, then restore it"
                )
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            # open_db creates and versions the tables in one transaction: version 0 is never ours.
            missing = _tables_at(max(version, 1)) - tables
            if version < 1 or missing:
                lacks = (
                    f"the tables {', '.join(sorted(missing))}" if missing else "a schema version"
                )
                raise RestoreError(
                    f"the uploaded file is an SQLite database but not an rlhf-loop one: it lacks "
                    f"{lacks}"
                )
            # Backing up into a WAL database needs equal page sizes (else SQLITE_READONLY).
            if conn.execute("PRAGMA page_size").fetchone()[0] != page_size:
                conn.execute(f"PRAGMA page_size = {int(page_size)}")
                conn.execute("VACUUM")
        upload = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
        try:
            migrate(upload, write_txn)
        finally:
            upload.conn.close()
    except sqlite3.DatabaseError as exc:
        disk = disk_error(exc)
        raise RestoreError(
            f"{disk}; nothing was restored"
            if disk
            else f"the uploaded file is damaged and cannot be read as a database ({exc}); "
            "it was not restored"
        ) from None
    except DiskError as exc:  # from the migration's write_txn
        raise RestoreError(f"{exc}; nothing was restored") from None
    return path, version


def _free_name(directory: Path, name: str) -> Path:
    candidate = directory / name
    n = 2
    while candidate.exists():
        candidate = directory / f"{Path(name).stem}-{n}.db"
        n += 1
    return candidate


def restore(
    db_or_path: str | Path | sqlite_utils.Database,
    uploaded: bytes,
    backups_dir: str | Path,
    busy_timeout_s: float | None = None,
) -> RestoreReport:
    """Replace the live database's contents with ``uploaded`` (a snapshot file's bytes).

    ``db_or_path`` names the live database: its path, or any connection to it (only its path is
    used; the restore opens its own connections). Raises RestoreError, with the live database
    unchanged, when the upload is not a sound rlhf-loop database of this or an older schema, or
    when the write lock stays taken past the busy timeout. Open connections elsewhere (app
    sessions, the worker) see the restored data on their next read.
    """
    live_path = _db_path(db_or_path)
    backups_dir = Path(backups_dir).expanduser().resolve()
    timeout = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
    try:
        backups_dir.mkdir(parents=True, exist_ok=True)
        live = open_db(live_path, busy_timeout_s=timeout)
    except (OSError, StoreError) as exc:
        raise RestoreError(f"cannot open the database to restore into: {exc}") from None
    try:
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=backups_dir) as tmp:
            page_size = live.execute("PRAGMA page_size").fetchone()[0]
            upload_path, upload_version = _prepare(uploaded, Path(tmp), page_size)
            with contextlib.closing(sqlite3.connect(upload_path, isolation_level=None)) as src:
                return _replace(
                    live, live_path, src, upload_version, uploaded, backups_dir, timeout
                )
    except OSError as exc:  # the checked copy of the upload is written beside the backups
        raise RestoreError(
            f"cannot write the upload to {backups_dir} to check it ({exc.strerror or exc}); "
            "nothing was restored"
        ) from None
    finally:
        live.conn.close()


def _replace(
    live: sqlite_utils.Database,
    live_path: Path,
    src: sqlite3.Connection,
    upload_version: int,
    uploaded: bytes,
    backups_dir: Path,
    timeout_s: float,
) -> RestoreReport:
    upload_db = sqlite_utils.Database(src)
    safety = _free_name(backups_dir, snapshot_name("before-restore"))
    after = _counts(upload_db)
    before: dict[str, int] = {}
    sha256 = hashlib.sha256(uploaded).hexdigest()

    def save_the_live_database() -> None:
        """Runs while the copy holds the live write lock, before anything of it is visible."""
        try:
            snapshot_to(live_path, safety, timeout_s)
        except StoreError as exc:
            raise RestoreError(
                f"no safety snapshot could be saved, so nothing was restored: {exc}"
            ) from None
        with contextlib.closing(sqlite3.connect(safety)) as saved:
            before.update(_counts(sqlite_utils.Database(saved)))
        # Logged in the copy, so the restored database carries its own record of the restore.
        with write_txn(upload_db):
            log_event(
                upload_db,
                RESTORED_EVENT,
                safety_snapshot=str(safety),
                upload_schema_version=upload_version,
                upload_bytes=len(uploaded),
                upload_sha256=sha256,
                before=before,
                after=after,
            )

    try:
        _copy(src, live.conn, timeout_s, under_lock=save_the_live_database)
    except (_Busy, sqlite3.DatabaseError, StoreError) as exc:
        safety.unlink(missing_ok=True)
        why = (
            f"the database is busy: another process held its write lock for over {timeout_s:g} s"
            if isinstance(exc, _Busy)
            else str(exc)
        )
        raise RestoreError(f"the restore could not run ({why}); nothing was changed") from None
    migrate(live, write_txn)  # a no-op (the copy was migrated), kept as the documented guarantee
    return RestoreReport(
        safety_snapshot=safety,
        before=before,
        after=after,
        upload_schema_version=upload_version,
        schema_version=SCHEMA_VERSION,
        upload_bytes=len(uploaded),
        upload_sha256=sha256,
    )
