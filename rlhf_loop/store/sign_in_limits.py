"""Operator sign-in limits: failed attempts per name and per client, in the database.

Why here and not in the browser session: a lock-out held in ``st.session_state`` ended with the
session, so a new browser tab (or a script opening fresh sessions) got five more guesses each
time. Counted in SQLite, the limit holds across sessions, server processes and restarts.

Why per name *and* per client: the operator password is one shared secret and the name is only
what goes into the audit log, so an attacker can rotate names; the client's address catches
that. A client with no address (Streamlit reports none for a loopback connection) is limited by
name only: lumping every such client together would let one of them lock out all the others.

Each attempt is reserved (a row with ``ok`` NULL) *before* the slow password check and counts as
failed until it succeeds, so a burst of concurrent attempts cannot all slip in under the limit:
they queue on the write lock and each sees the ones before it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event

# This many failures within WINDOW_S lock the name (the client gets more: several operators
# may share one address, a proxy's, and mistype independently).
LIMITS = {"name": 5, "client": 15}
WINDOW_S = 15 * 60.0
# Each lock of the same key lasts twice the one before, from a minute up to an hour...
FIRST_LOCK_S = 60.0
MAX_LOCK_S = 3600.0
# ...until a success, or a day without a new lock, makes it a first offender again.
FORGET_S = 24 * 3600.0

FAILED = "operator_sign_in_failed"
SIGNED_IN = "operator_signed_in"
WRONG_PASSWORD = "wrong password"


@dataclass(frozen=True)
class Lock:
    """Sign-ins for ``key`` (a name, or a client's address) are refused until ``until``."""

    scope: str
    key: str
    until: float

    def message(self, at: float | None = None) -> str:
        """Says how long, never whether the name is known: any name is locked the same way."""
        who = f"for '{self.key}'" if self.scope == "name" else "from your address"
        wait = wait_text(self.until - (now() if at is None else at))
        return f"Too many failed sign-ins {who}: try again in {wait}."


def lock_seconds(strikes: int) -> float:
    """How long the ``strikes``-th lock in a row lasts: doubling, capped."""
    return min(FIRST_LOCK_S * 2.0 ** (strikes - 1), MAX_LOCK_S)


def wait_text(seconds: float) -> str:
    """'45 s' under a minute and a half, else whole minutes rounded up ('4 min')."""
    if seconds < 90:
        return f"{max(math.ceil(seconds), 1)} s"
    return f"{math.ceil(seconds / 60)} min"


def begin_attempt(
    db: sqlite_utils.Database, name: str, client: str | None, at: float | None = None
) -> int | Lock:
    """Reserve an attempt before the password is checked: its id, or the lock that refuses it
    (logged, and the password is then not checked at all)."""
    at = now() if at is None else at
    with write_txn(db):
        lock = current_lock(db, name, client, at)
        if lock is not None:
            reason = f"locked ({lock.scope})"
            log_event(db, FAILED, name=name, client=client, reason=reason)
            return lock
        attempt = (
            db["sign_in_attempts"]
            .insert({"name": name, "client": client, "at": at, "ok": None})
            .last_pk
        )
        for scope, key in _keys(name, client):
            _lock_if_over_limit(db, scope, key, at)
        return attempt


def finish_attempt(
    db: sqlite_utils.Database, attempt: int, password_ok: bool, at: float | None = None
) -> Lock | None:
    """Record the checked password. A right one forgives the name's and the client's earlier
    failures (and lifts the lock this very attempt may have set); a wrong one is logged and the
    lock it leads to, if any, is returned so the page can say so at once."""
    at = now() if at is None else at
    with write_txn(db):
        row = db["sign_in_attempts"].get(attempt)
        db["sign_in_attempts"].update(attempt, {"ok": int(password_ok)})
        if password_ok:
            for scope, key in _keys(row["name"], row["client"]):
                _set_lock(db, scope, key, strikes=0, until=at)
            return None
        log_event(db, FAILED, name=row["name"], client=row["client"], reason=WRONG_PASSWORD)
        return current_lock(db, row["name"], row["client"], at)


def current_lock(
    db: sqlite_utils.Database, name: str, client: str | None, at: float | None = None
) -> Lock | None:
    """The longest lock in force on ``name`` or ``client``; None when neither is locked."""
    at = now() if at is None else at
    locks = [
        Lock(scope, key, row["locked_until"])
        for scope, key in _keys(name, client)
        if (row := _lock_row(db, scope, key)) and row["locked_until"] > at
    ]
    return max(locks, key=lambda lock: lock.until, default=None)


def sign_in_log(db: sqlite_utils.Database, limit: int = 50) -> list[dict[str, Any]]:
    """The newest sign-in attempts for the operators' audit view: when, who, from where, and
    how it ended. Passwords are never stored, so none can be shown."""
    rows = db["events"].rows_where(
        "kind IN (?, ?)", [FAILED, SIGNED_IN], order_by="id DESC", limit=limit
    )
    table = []
    for row in rows:
        payload = json.loads(row["payload"] or "{}")
        table.append(
            {
                "when": dt.datetime.fromtimestamp(row["at"]).strftime("%m-%d %H:%M:%S"),
                "name": payload.get("name", ""),
                "client": payload.get("client") or "local or unknown",
                "outcome": "signed in" if row["kind"] == SIGNED_IN else payload.get("reason", ""),
            }
        )
    return table


def _keys(name: str, client: str | None) -> list[tuple[str, str]]:
    return [("name", name)] + ([("client", client)] if client else [])


def _lock_if_over_limit(db: sqlite_utils.Database, scope: str, key: str, at: float) -> None:
    """Lock ``key`` when its failures (pending ones included) since its last lock or success,
    within the window, reach the limit. Failures before a lock were paid for by it; failures
    before a success were forgiven by it."""
    row = _lock_row(db, scope, key) or {"strikes": 0, "locked_until": 0.0}
    strikes = row["strikes"] if at - row["locked_until"] < FORGET_S else 0
    since = max(at - WINDOW_S, row["locked_until"])
    failures = db["sign_in_attempts"].count_where(
        f"{scope} = ? AND at >= ? AND ok IS NOT 1", [key, since]
    )
    if failures >= LIMITS[scope]:
        _set_lock(db, scope, key, strikes + 1, at + lock_seconds(strikes + 1))


def _lock_row(db: sqlite_utils.Database, scope: str, key: str) -> dict[str, Any] | None:
    rows = db["sign_in_locks"].rows_where("scope = ? AND key = ?", [scope, key], limit=1)
    return next(iter(rows), None)


def _set_lock(db: sqlite_utils.Database, scope: str, key: str, strikes: int, until: float) -> None:
    db["sign_in_locks"].upsert(
        {"scope": scope, "key": key, "strikes": strikes, "locked_until": until},
        pk=("scope", "key"),
    )
