"""Whether a policy version serves: candidates, blind comparison pairs, promotion and rejection.

Under ``policy_adoption = "human"`` a finished PPO round registers a *candidate*: it samples
only into blind comparison items against the live version, and becomes live when people prefer
it (or an operator promotes it). A rising reward-model score is not evidence that a policy got
better; only the annotators' blind rankings are. Every decision is an event with its figures.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from rlhf_loop.store.db import write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.versions import _with_metrics, live_policy, set_live_policy

CANDIDATE, ADOPTED, REJECTED = "candidate", "adopted", "rejected"


def policy_row(db: sqlite_utils.Database, version: int) -> dict[str, Any] | None:
    rows = db["model_versions"].rows_where("kind = 'policy' AND version = ?", [version], limit=1)
    row = next(iter(rows), None)
    return _with_metrics(row) if row else None


def pending_candidate(db: sqlite_utils.Database, base_model: str) -> dict[str, Any] | None:
    """The newest candidate on ``base_model`` still awaiting a verdict."""
    rows = db["model_versions"].rows_where(
        "kind = 'policy' AND base_model = ? AND adoption = ?",
        [base_model, CANDIDATE],
        order_by="version DESC",
        limit=1,
    )
    row = next(iter(rows), None)
    return _with_metrics(row) if row else None


def parent_of(db: sqlite_utils.Database, row: dict[str, Any]) -> dict[str, Any] | None:
    if row["parent_id"] is None:
        return None
    return _with_metrics(db["model_versions"].get(row["parent_id"]))


def blind_pair(
    db: sqlite_utils.Database, base_model: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The two versions blind items compare now: a pending candidate against the live version,
    else the live version against its parent (so a live version keeps being checked, and can be
    rolled back); None while only the base exists."""
    live = live_policy(db, base_model)
    candidate = pending_candidate(db, base_model)
    if candidate is not None:
        return candidate, live
    parent = parent_of(db, live)
    return (live, parent) if parent is not None else None


def promote(db: sqlite_utils.Database, version: int, by: str, figures: dict[str, Any]) -> None:
    """Make ``version`` live and adopted; ``by`` is "people" or the operator's name."""
    with write_txn(db):
        set_live_policy(db, version)
        _set_adoption(db, version, ADOPTED)
        log_event(db, "policy_promoted", version=version, by=by, **figures)


def reject(db: sqlite_utils.Database, version: int, by: str, figures: dict[str, Any]) -> None:
    """Mark ``version`` rejected; a live one is rolled back to its parent at once."""
    with write_txn(db):
        row = policy_row(db, version)
        if row is None:
            raise ValueError(f"there is no policy version {version}")
        if row["adoption"] == REJECTED:
            raise ValueError(f"policy v{version} is already rejected")
        rolled_back_to = None
        if row["live"]:
            parent = parent_of(db, row)
            if parent is None:
                raise ValueError(f"policy v{version} has no parent to roll back to")
            set_live_policy(db, parent["version"])
            rolled_back_to = parent["version"]
        _set_adoption(db, version, REJECTED)
        log_event(
            db,
            "policy_rejected",
            version=version,
            by=by,
            rolled_back_to=rolled_back_to,
            **figures,
        )


def _set_adoption(db: sqlite_utils.Database, version: int, state: str) -> None:
    row = policy_row(db, version)
    if row is None:
        raise ValueError(f"there is no policy version {version}")
    db["model_versions"].update(row["id"], {"adoption": state})


def supersede_candidates(db: sqlite_utils.Database, base_model: str, by_version: int) -> None:
    """A newer candidate replaces any still pending: only one is judged at a time."""
    for row in db["model_versions"].rows_where(
        "kind = 'policy' AND base_model = ? AND adoption = ? AND version != ?",
        [base_model, CANDIDATE, by_version],
    ):
        db["model_versions"].update(row["id"], {"adoption": REJECTED})
        log_event(db, "policy_rejected", version=row["version"], by=f"superseded by v{by_version}")
