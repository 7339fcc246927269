"""Backup and restore: consistent snapshots under concurrent writes, safe and undoable restores."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import random
import sqlite3
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest
import sqlite_utils
from store_helpers import add_texts, fresh_db, make_comparisons, old_schema

from rlhf_loop.store import backup
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.backup import RestoreError, restore, snapshot_bytes, snapshot_to
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.schema import SCHEMA_VERSION, schema_version
from rlhf_loop.store.submissions import submit, undo_last
from rlhf_loop.store.tasks import next_task

TIMEOUT = 600.0


def _rank(db: sqlite_utils.Database, name: str, n: int) -> None:
    me = annotator_id(db, name)
    for _ in range(n):
        task = next_task(db, me, 1, TIMEOUT)
        assert task is not None
        submit(db, me, task.comparison_id, "ranked", list(range(1, task.k + 1)))


def _populated(tmp_path: Path, comparisons: int = 12, ranked: int = 6) -> sqlite_utils.Database:
    db = fresh_db(tmp_path)
    make_comparisons(db, comparisons)
    _rank(db, "ada", ranked)
    return db


def _content(path: Path, skip: tuple[str, ...] = ()) -> str:
    """A hash of every row of every table (in rowid order), to tell 'unchanged' exactly."""
    digest = hashlib.sha256()
    db = sqlite_utils.Database(path)
    try:
        for name in sorted(db.table_names()):
            if name in skip:
                continue
            digest.update(name.encode())
            for row in db[name].rows_where(order_by="rowid"):
                digest.update(repr(sorted(row.items())).encode())
    finally:
        db.close()
    return digest.hexdigest()


def _as_file(data: bytes, path: Path) -> sqlite_utils.Database:
    path.write_bytes(data)
    return sqlite_utils.Database(path)


def _keep_ranking(path: str, stop: Event, started: Event) -> None:
    """A second process writing as fast as it can: rank, undo every third answer, and add
    tasks when the queue is empty."""
    db = open_db(path)
    me = annotator_id(db, "writer")
    done = 0
    while not stop.is_set():
        task = next_task(db, me, 1, TIMEOUT)
        if task is None:
            make_comparisons(db, 20)
            continue
        submit(db, me, task.comparison_id, "ranked", list(range(1, task.k + 1)))
        done += 1
        if done % 3 == 0:
            undo_last(db, me)
        if done == 20:
            started.set()
    db.conn.close()


def _assert_consistent(db: sqlite_utils.Database) -> None:
    """Invariants that hold only between whole transactions of submit/undo_last."""
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    rankings = db["rankings"].count
    assert db["events"].count_where("kind = 'ranking_ranked'") == rankings
    assert db["events"].count_where("kind = 'ranking_undone'") == db["rankings"].count_where(
        "retracted_at IS NOT NULL"
    )
    live = db["rankings"].count_where("retracted_at IS NULL")
    assert db["assignments"].count_where("closed_at IS NOT NULL") == live


def test_snapshot_while_another_process_writes_is_a_consistent_single_file(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 40)
    add_texts(db, [f"filler {i} " + "x" * 400 for i in range(3000)])  # a copy that takes a while
    path = tmp_path / "rlhf.db"
    ctx = multiprocessing.get_context("spawn")
    stop, started = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_keep_ranking, args=(str(path), stop, started))
    writer.start()
    try:
        assert started.wait(60), "the writer process did not start writing"
        seen = []
        for i in range(6):
            before = db["rankings"].count
            data = snapshot_bytes(path)
            after = db["rankings"].count
            copy = _as_file(data, tmp_path / f"copy{i}.db")
            assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            _assert_consistent(copy)
            assert before <= copy["rankings"].count <= after
            seen.append(copy["rankings"].count)
            copy.close()
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join(30)
    assert writer.exitcode == 0
    assert len(set(seen)) > 1, "the writer wrote nothing while the snapshots were taken"


def test_snapshot_to_leaves_one_self_contained_file(tmp_path: Path) -> None:
    _populated(tmp_path)
    dest = snapshot_to(tmp_path / "rlhf.db", tmp_path / "out" / "snap.db")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["snap.db"]  # no -wal, no .partial
    assert dest.read_bytes()[18:20] == b"\x01\x01"  # rollback-journal header: no -wal expected
    assert _content(dest) == _content(tmp_path / "rlhf.db")
    with pytest.raises(StoreError, match="no database"):
        snapshot_bytes(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_restore_brings_back_the_snapshot_and_the_safety_snapshot_undoes_it(
    tmp_path: Path,
) -> None:
    db = _populated(tmp_path)
    path, backups = tmp_path / "rlhf.db", tmp_path / "backups"
    snap = snapshot_bytes(path)
    original = _content(path, skip=("events",))
    original_counts = {t: db[t].count for t in backup.COUNTED_TABLES}

    undo_last(db, annotator_id(db, "ada"))
    _rank(db, "bob", 4)
    add_texts(db, ["a new prompt"])
    db["annotators"].delete(annotator_id(db, "nobody"))
    modified = _content(path, skip=("events",))
    modified_counts = {t: db[t].count for t in backup.COUNTED_TABLES}
    assert modified != original

    report = restore(path, snap, backups)
    assert _content(path, skip=("events",)) == original
    assert report.before == modified_counts and report.after == original_counts
    assert report.upload_schema_version == report.schema_version == SCHEMA_VERSION
    assert report.safety_snapshot.parent == backups and report.safety_snapshot.is_file()
    assert "restore that file to undo" in report.summary()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    restored_events = list(db["events"].rows_where("kind = 'database_restored'"))
    assert len(restored_events) == 1
    assert str(report.safety_snapshot) in restored_events[0]["payload"]

    undo = restore(db, report.safety_snapshot.read_bytes(), backups)  # a connection works too
    assert _content(path, skip=("events",)) == modified
    assert undo.after == modified_counts
    assert undo.safety_snapshot != report.safety_snapshot
    assert sorted(p.suffix for p in backups.iterdir()) == [".db", ".db"]  # no temp dirs left


def _open_and_wait(path: str, counts: Queue, go: Event) -> None:
    """A worker-like process: holds its connection open across the restore, then reads and
    writes through it."""
    db = open_db(path)
    counts.put(db["rankings"].count)
    go.wait(60)
    counts.put(db["rankings"].count)
    counts.put(annotator_id(db, "after-restore"))
    counts.put(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_process_holding_the_database_open_sees_the_restored_data(tmp_path: Path) -> None:
    db = _populated(tmp_path, ranked=2)
    path = tmp_path / "rlhf.db"
    snap = snapshot_bytes(path)
    _rank(db, "bob", 5)
    other = open_db(path)  # like an app session in this process
    assert other["rankings"].count == 7

    ctx = multiprocessing.get_context("spawn")
    counts, go = ctx.Queue(), ctx.Event()
    worker = ctx.Process(target=_open_and_wait, args=(str(path), counts, go))
    worker.start()
    try:
        assert counts.get(timeout=60) == 7
        restore(path, snap, tmp_path / "backups")
        go.set()
        assert counts.get(timeout=60) == 2
        new_id = counts.get(timeout=60)
        assert counts.get(timeout=60) == "ok"
    finally:
        go.set()
        worker.join(30)
    assert worker.exitcode == 0
    assert other["rankings"].count == 2
    assert other["annotators"].get(new_id)["name"] == "after-restore"
    assert next_task(other, annotator_id(other, "bob"), 1, TIMEOUT) is not None


def test_restore_waits_for_the_write_lock_then_gives_up_changing_nothing(tmp_path: Path) -> None:
    _populated(tmp_path)
    path, backups = tmp_path / "rlhf.db", tmp_path / "backups"
    snap = snapshot_bytes(path)
    annotator_id(open_db(path), "later")
    before = _content(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process mid-write, for longer than the timeout
    try:
        started = time.monotonic()
        with pytest.raises(RestoreError, match="busy"):
            restore(path, snap, backups, busy_timeout_s=0.3)
        assert time.monotonic() - started >= 0.25
    finally:
        blocker.execute("ROLLBACK")
    assert _content(path) == before
    assert list(backups.iterdir()) == []


def test_the_safety_snapshot_is_taken_under_the_copys_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit can land between the safety snapshot and the copy: while the snapshot is read,
    the copy already holds the live write lock (and nothing of it is visible yet)."""
    db = _populated(tmp_path)
    path, backups = tmp_path / "rlhf.db", tmp_path / "backups"
    snap = snapshot_bytes(path)
    _rank(db, "bob", 3)
    seen = []
    real_snapshot_to = backup.snapshot_to

    def checking_snapshot_to(*args, **kwargs):
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        seen.append(other.execute("SELECT count(*) FROM rankings").fetchone()[0])
        other.close()
        return real_snapshot_to(*args, **kwargs)

    monkeypatch.setattr(backup, "snapshot_to", checking_snapshot_to)
    report = restore(path, snap, backups)
    assert seen == [9] and report.before["rankings"] == 9 and db["rankings"].count == 6
    [event] = db["events"].rows_where("kind = 'database_restored'")
    assert '"rankings": 9' in event["payload"]  # the counts under the lock, in the restored log


def test_a_failed_safety_snapshot_restores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populated(tmp_path)
    path, backups = tmp_path / "rlhf.db", tmp_path / "backups"
    snap = snapshot_bytes(path)
    annotator_id(open_db(path), "later")
    before = _content(path)

    def no_space(*args, **kwargs):
        raise StoreError("cannot write the snapshot: [Errno 28] No space left on device")

    monkeypatch.setattr(backup, "snapshot_to", no_space)
    with pytest.raises(RestoreError, match=r"no safety snapshot could be saved.*No space"):
        restore(path, snap, backups)
    assert _content(path) == before
    assert list(backups.iterdir()) == []


def _other_app(path: Path, tables: bool) -> bytes:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        if tables:
            conn.execute("INSERT INTO notes (body) VALUES ('hello')")
        else:
            conn.execute("DROP TABLE notes")
        conn.commit()
    return path.read_bytes()


def _with_user_version(snap: bytes, path: Path, version: int) -> bytes:
    path.write_bytes(snap)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {version}")
    return path.read_bytes()


def _corrupted(snap: bytes) -> bytes:
    """Garbage over the b-tree pages after the schema page; the header stays intact."""
    page = int.from_bytes(snap[16:18], "big")
    noise = random.Random(1).randbytes(page * 3)
    return snap[:page] + noise + snap[page * 4 :]


REFUSALS = {
    "random bytes": (lambda snap, tmp: random.Random(0).randbytes(8192), "not an SQLite"),
    "empty": (lambda snap, tmp: b"", "empty"),
    "truncated to half": (lambda snap, tmp: snap[: len(snap) // 2], "truncated"),
    "truncated mid-page": (lambda snap, tmp: snap[:-100], "truncated"),
    "damaged pages": (lambda snap, tmp: _corrupted(snap), "damaged"),
    "another app, no tables": (lambda snap, tmp: _other_app(tmp / "o.db", False), "not an rlhf"),
    "another app's table": (lambda snap, tmp: _other_app(tmp / "a.db", True), "lacks the tables"),
    "newer schema": (
        lambda snap, tmp: _with_user_version(snap, tmp / "n.db", SCHEMA_VERSION + 1),
        "newer rlhf-loop.*upgrade the app",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_bad_upload_is_refused_and_changes_nothing(tmp_path: Path, case: str) -> None:
    _populated(tmp_path)
    path, backups = tmp_path / "rlhf.db", tmp_path / "backups"
    make, message = REFUSALS[case]
    work = tmp_path / "work"
    work.mkdir()
    upload = make(snapshot_bytes(path), work)
    before = _content(path)
    with pytest.raises(RestoreError, match=message):
        restore(path, upload, backups)
    assert _content(path) == before
    assert list(backups.iterdir()) == []


def _old_schema_backup(path: Path, version: int, page_size: int) -> bytes:
    """A backup as an older rlhf-loop wrote it: the first ``version`` migrations and some data
    in the columns version 1 has."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA page_size = {page_size}")
        db = old_schema(sqlite_utils.Database(conn), version)
        db["annotators"].insert({"id": 1, "name": "ada", "role": "annotator", "created_at": 1.0})
        for p in range(1, 4):
            db["prompts"].insert(
                {"id": p, "text": f"old {p}", "text_hash": f"h{p}", "created_at": 1}
            )
            for g in range(2):
                db["generations"].insert(
                    {
                        "id": 10 * p + g,
                        "prompt_id": p,
                        "policy_version": 0,
                        "text": f"answer {g}",
                        "token_count": 2,
                        "finished": 1,
                        "params": "{}",
                    }
                )
            db["comparisons"].insert(
                {
                    "id": p,
                    "prompt_id": p,
                    "policy_version": 0,
                    "k": 2,
                    "generation_ids": f"[{10 * p}, {10 * p + 1}]",
                    "created_at": 1.0,
                }
            )
        db["assignments"].insert(
            {"comparison_id": 1, "annotator_id": 1, "served_at": 1.0, "closed_at": 2.0}
        )
        db["rankings"].insert(
            {
                "comparison_id": 1,
                "annotator_id": 1,
                "status": "ranked",
                "ranks": "[1, 2]",
                "seconds": 1.0,
                "created_at": 2.0,
            }
        )
    return path.read_bytes()


def _old_versions() -> Iterator[tuple[int, int]]:
    yield 1, 1024  # also a page size the live database does not have
    for version in range(1, SCHEMA_VERSION):
        yield version, 4096


@pytest.mark.parametrize(("version", "page_size"), list(_old_versions()))
def test_a_backup_of_an_older_schema_is_migrated(
    tmp_path: Path, version: int, page_size: int
) -> None:
    _populated(tmp_path)
    path = tmp_path / "rlhf.db"
    upload = _old_schema_backup(tmp_path / "old.db", version, page_size)
    report = restore(path, upload, tmp_path / "backups")
    assert report.upload_schema_version == version and report.migrated
    assert "brought up to" in report.summary()
    db = open_db(path)
    assert schema_version(db) == SCHEMA_VERSION
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {t: db[t].count for t in backup.COUNTED_TABLES} == report.after
    assert report.after == {"prompts": 3, "comparisons": 3, "rankings": 1, "annotators": 1}
    assert db["comparisons"].get(2)["priority"] == 0.0  # a column a later migration added
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 1, TIMEOUT)  # the migrated data is servable
    assert task is not None and task.comparison_id == 2
