"""Annotator identities: every ranking names who gave it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.sign_in_limits import FAILED, SIGNED_IN

MAX_NAME_CHARS = 64
# The role of a simulated annotator (``rlhf_loop.simulate_process``): every ranking it gives is
# simulated. A role rather than a flag on each ranking, so no code path can forget to set it.
SIMULATED = "simulated"


class AnnotatorNameError(ValueError):
    """The name cannot identify an annotator; the message says why."""


def clean_name(name: str) -> str:
    """Names are shown in tables and exports: printable, trimmed, not too long."""
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise AnnotatorNameError("enter a name to start ranking")
    if len(name) > MAX_NAME_CHARS:
        raise AnnotatorNameError(f"a name has at most {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise AnnotatorNameError("a name cannot contain control characters")
    return name


def annotator_id(
    db: sqlite_utils.Database,
    name: str,
    role: str = "annotator",
    simulation_run: int | None = None,
) -> int:
    """The id of ``name``, registering it on first use (a simulated one with its run).

    A person cannot take a simulated annotator's name nor a simulation a person's: their
    rankings would then count as the other kind's (see ``SIMULATED``)."""
    name = clean_name(name)
    known = _lookup(db, name)  # the common case, a read: no write lock on every page run
    if known is not None:
        return _same_kind(known, role)
    with write_txn(db):
        known = _lookup(db, name)
        if known is not None:
            return _same_kind(known, role)
        row = {"name": name, "role": role, "created_at": now(), "simulation_run": simulation_run}
        new_id = db["annotators"].insert(row).last_pk
        log_event(db, "annotator_added", new_id, name=name, role=role)
        return new_id


def _lookup(db: sqlite_utils.Database, name: str) -> dict | None:
    rows = list(db["annotators"].rows_where("name = ?", [name], limit=1))
    return rows[0] if rows else None


def _same_kind(known: dict, role: str) -> int:
    if (known["role"] == SIMULATED) != (role == SIMULATED):
        kind = "a simulated annotator" if known["role"] == SIMULATED else "a person"
        raise AnnotatorNameError(f"this name belongs to {kind}; choose another")
    return known["id"]


def record_operator_sign_in(db: sqlite_utils.Database, name: str, client: str | None = None) -> int:
    """Operators are people in the same table, with the role that lets them in; the sign-in is
    in the audit log with the client's address, so every operator action can be traced to a
    name. A name this refuses (a simulated annotator's) is logged as a failed sign-in."""
    try:
        person = annotator_id(db, name, role="operator")
    except AnnotatorNameError as exc:
        log_event(db, FAILED, name=name, client=client, reason=str(exc))
        raise
    with write_txn(db):
        db["annotators"].update(person, {"role": "operator"})
        log_event(db, SIGNED_IN, person, name=name, client=client)
    return person


def invite(db: sqlite_utils.Database, name: str) -> str:
    """Register ``name`` (or keep them) with a fresh invite key, which replaces any earlier one;
    returns the key, which is stored only as a hash and so can be shown just this once."""
    key = secrets.token_urlsafe(16)
    person = annotator_id(db, name)
    with write_txn(db):
        db["annotators"].update(person, {"key_hash": _key_hash(key)})
        log_event(db, "annotator_invited", person, name=clean_name(name))
    return key


def check_key(db: sqlite_utils.Database, name: str, key: str) -> int | None:
    """The annotator's id when ``key`` is their current invite key; else None."""
    rows = list(db["annotators"].rows_where("name = ?", [name], limit=1))
    if not rows or not rows[0]["key_hash"]:
        return None
    return rows[0]["id"] if hmac.compare_digest(_key_hash(key), rows[0]["key_hash"]) else None


def invited(db: sqlite_utils.Database) -> list[str]:
    """Names that hold an invite key, for the operator's list."""
    return [r["name"] for r in db["annotators"].rows_where("key_hash IS NOT NULL", order_by="name")]


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
