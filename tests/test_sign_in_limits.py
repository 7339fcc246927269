"""Operator sign-in limits in the store: the sliding window, the growing back-off, expiry, a
limit that two sessions share, and concurrent attempts each counted once. The clock is
injected (``at``), so nothing here sleeps."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlite_utils
from store_helpers import fresh_db, old_schema

from rlhf_loop.store.db import open_db
from rlhf_loop.store.schema import SCHEMA_VERSION, schema_version
from rlhf_loop.store.sign_in_limits import (
    FIRST_LOCK_S,
    FORGET_S,
    LIMITS,
    MAX_LOCK_S,
    WINDOW_S,
    Lock,
    begin_attempt,
    current_lock,
    finish_attempt,
    lock_seconds,
    sign_in_log,
    wait_text,
)

T0 = 1_000_000.0


def attempt(
    db: sqlite_utils.Database, name: str, ok: bool, at: float, client: str | None = None
) -> int | Lock:
    """One whole sign-in: the attempt's id once its password was checked, or the lock that
    refused it before any check."""
    started = begin_attempt(db, name, client, at)
    if not isinstance(started, Lock):
        finish_attempt(db, started, ok, at)
    return started


def fail(db: sqlite_utils.Database, name: str, times: int, at: float, **kw) -> list[int | Lock]:
    return [attempt(db, name, False, at + i, **kw) for i in range(times)]


def test_back_off_doubles_to_a_cap_and_waits_read_in_seconds_then_minutes() -> None:
    assert [lock_seconds(s) for s in (1, 2, 3)] == [
        FIRST_LOCK_S,
        2 * FIRST_LOCK_S,
        4 * FIRST_LOCK_S,
    ]
    assert lock_seconds(50) == MAX_LOCK_S
    assert [wait_text(s) for s in (0.2, 59.1, 89, 90, 239.5)] == [
        "1 s",
        "60 s",
        "89 s",
        "2 min",
        "4 min",
    ]


def test_the_limit_locks_the_name_and_the_message_says_for_how_long(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    limit = LIMITS["name"]
    assert not any(isinstance(r, Lock) for r in fail(db, "alice", limit - 1, T0))
    assert current_lock(db, "alice", None, T0 + limit) is None
    fail(db, "alice", 1, T0 + limit)
    lock = current_lock(db, "alice", None, T0 + limit)
    assert lock == Lock("name", "alice", T0 + limit + FIRST_LOCK_S)
    # The right password is refused (never checked) while locked, from any client.
    refused = attempt(db, "alice", True, T0 + limit + 1, client="10.0.0.9")
    assert isinstance(refused, Lock)
    assert (
        refused.message(T0 + limit + 1)
        == "Too many failed sign-ins for 'alice': try again in 59 s."
    )
    assert current_lock(db, "bob", None, T0 + limit) is None  # one name's lock is its own


def test_failures_older_than_the_window_no_longer_count(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    fail(db, "alice", 1, T0)
    fail(db, "alice", LIMITS["name"] - 2, T0 + WINDOW_S / 2)
    later = T0 + WINDOW_S + 1  # the first has left the window, the others have not
    fail(db, "alice", 1, later)
    assert current_lock(db, "alice", None, later) is None
    fail(db, "alice", 1, later + 1)  # five in the window now
    assert current_lock(db, "alice", None, later + 1) is not None


def test_a_lock_expires_a_right_password_then_signs_in_and_resets_the_back_off(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path)
    limit = LIMITS["name"]
    fail(db, "alice", limit, T0)
    first = current_lock(db, "alice", None, T0 + limit)
    # After the first lock, the next five failures lock twice as long.
    fail(db, "alice", limit, first.until)
    second = current_lock(db, "alice", None, first.until + limit)
    assert second.until - (first.until + limit - 1) == 2 * FIRST_LOCK_S
    assert "try again in 2 min" in second.message(first.until + limit - 1)
    assert isinstance(attempt(db, "alice", True, second.until - 1), Lock)
    signed_in = attempt(db, "alice", True, second.until)  # the lock has just expired
    assert not isinstance(signed_in, Lock)
    assert current_lock(db, "alice", None, second.until) is None
    # A success forgave everything before it: the next lock is a first one again.
    fail(db, "alice", limit, second.until + 1)
    third = current_lock(db, "alice", None, second.until + limit)
    assert third.until == second.until + limit + FIRST_LOCK_S


def test_a_day_without_a_lock_forgets_earlier_locks(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    limit = LIMITS["name"]
    fail(db, "alice", limit, T0)
    again = current_lock(db, "alice", None, T0 + limit).until + FORGET_S
    fail(db, "alice", limit, again)
    lock = current_lock(db, "alice", None, again + limit)
    assert lock.until == again + limit - 1 + FIRST_LOCK_S


def test_two_sessions_share_one_count_and_the_lock_outlives_both(tmp_path: Path) -> None:
    """Two connections stand for two browser sessions (or server processes); a third opened
    afterwards, as after a restart, still sees the lock."""
    first, second = fresh_db(tmp_path), open_db(tmp_path / "rlhf.db")
    for i in range(LIMITS["name"]):
        attempt(first if i % 2 else second, "alice", False, T0 + i)
    first.conn.close()
    second.conn.close()
    restarted = open_db(tmp_path / "rlhf.db")
    assert isinstance(attempt(restarted, "alice", True, T0 + 10), Lock)


def test_a_client_rotating_names_is_locked_by_its_address(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    address = "203.0.113.7"
    for i in range(LIMITS["client"]):
        attempt(db, f"name{i}", False, T0 + i, client=address)
    refused = attempt(db, "fresh-name", True, T0 + 20, client=address)
    assert isinstance(refused, Lock) and refused.scope == "client"
    assert refused.message(T0 + 20).startswith("Too many failed sign-ins from your address")
    # Another client may still use those names; a client with no address is limited by name.
    assert not isinstance(attempt(db, "fresh-name", True, T0 + 20, client="198.51.100.1"), Lock)
    assert not isinstance(attempt(db, "other", True, T0 + 20), Lock)


def test_concurrent_attempts_are_each_counted_once_and_none_slips_past_the_limit(
    tmp_path: Path,
) -> None:
    """Eight sessions start an attempt at the same moment (each its own connection, as separate
    server processes would have): each is reserved before its password check, so exactly the
    limit's worth get checked and the rest are refused."""
    fresh_db(tmp_path)
    sessions = 8
    barrier = threading.Barrier(sessions)
    results: list[int | Lock] = []

    def session() -> None:
        db = open_db(tmp_path / "rlhf.db")
        barrier.wait()
        results.append(begin_attempt(db, "alice", None, T0))

    threads = [threading.Thread(target=session) for _ in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [r for r in results if not isinstance(r, Lock)]
    assert len(started) == LIMITS["name"] and len(set(started)) == LIMITS["name"]
    assert sum(isinstance(r, Lock) for r in results) == sessions - LIMITS["name"]
    db = open_db(tmp_path / "rlhf.db")
    assert db["sign_in_attempts"].count == LIMITS["name"]
    # One of the reserved ones had the right password: that lifts the lock they set.
    finish_attempt(db, started[0], True, T0 + 1)
    assert current_lock(db, "alice", None, T0 + 1) is None


def test_every_attempt_is_in_the_audit_log_without_the_password(tmp_path: Path) -> None:
    from rlhf_loop.store.annotators import record_operator_sign_in

    db = fresh_db(tmp_path)
    fail(db, "mallory", LIMITS["name"] + 1, T0, client="203.0.113.7")
    record_operator_sign_in(db, "olga", "198.51.100.1")
    log = sign_in_log(db)
    assert [(r["name"], r["client"], r["outcome"]) for r in log[:2]] == [
        ("olga", "198.51.100.1", "signed in"),
        ("mallory", "203.0.113.7", "locked (name)"),
    ]
    assert [r["outcome"] for r in log[2:]] == ["wrong password"] * LIMITS["name"]
    assert sign_in_log(fresh_db(tmp_path / "empty")) == []


def test_a_schema_v8_database_gains_the_sign_in_tables(tmp_path: Path) -> None:
    old = old_schema(sqlite_utils.Database(tmp_path / "old.db"), 8)
    old["events"].insert({"at": T0, "kind": "operator_signed_in", "payload": '{"name": "olga"}'})
    old.conn.close()
    db = open_db(tmp_path / "old.db")
    assert schema_version(db) == SCHEMA_VERSION
    assert {"sign_in_attempts", "sign_in_locks"} <= set(db.table_names())
    # An event logged before clients were recorded shows as unknown, not as an error.
    assert sign_in_log(db)[0]["client"] == "local or unknown"
    fail(db, "alice", LIMITS["name"], T0)
    assert current_lock(db, "alice", None, T0 + 10) is not None
