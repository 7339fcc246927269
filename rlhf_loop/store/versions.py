"""Model versions (reward models now, policies later): registered only once fully on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event


def next_version(db: sqlite_utils.Database, kind: str) -> int:
    row = db.execute(
        "SELECT coalesce(max(version) + 1, 1) FROM model_versions WHERE kind = ?", [kind]
    ).fetchone()
    return row[0]


def register_version(
    db: sqlite_utils.Database,
    kind: str,
    version: int,
    path: Path | None,
    base_model: str,
    metrics: dict[str, Any],
    parent_id: int | None = None,
    live: bool = False,
    adoption: str | None = None,
) -> int:
    """Call after the artefact's directory is complete (renamed into place). A policy registered
    ``live`` becomes the one the sampler serves, in the same transaction; one registered as a
    ``"candidate"`` serves only in blind comparison items until people prefer it."""
    with write_txn(db):
        if live:
            _clear_live(db, base_model)
        row_id = (
            db["model_versions"]
            .insert(
                {
                    "kind": kind,
                    "version": version,
                    "base_model": base_model,
                    "path": None if path is None else str(path),
                    "metrics": json.dumps(metrics, sort_keys=True),
                    "parent_id": parent_id,
                    "live": int(live),
                    "adoption": adoption,
                    "created_at": now(),
                }
            )
            .last_pk
        )
        log_event(
            db, "model_registered", model_kind=kind, version=version, live=live, adoption=adoption
        )
    return row_id


def _clear_live(db: sqlite_utils.Database, base_model: str) -> None:
    for row in db["model_versions"].rows_where(
        "kind = 'policy' AND base_model = ? AND live = 1", [base_model]
    ):
        db["model_versions"].update(row["id"], {"live": 0})


def live_policy(db: sqlite_utils.Database, base_model: str) -> dict[str, Any]:
    """The policy the sampler serves on ``base_model``; the bare base model (version 0, no
    adapter) is registered on first use."""
    with write_txn(db):
        rows = db["model_versions"].rows_where(
            "kind = 'policy' AND base_model = ? AND live = 1", [base_model], limit=1
        )
        row = next(iter(rows), None)
        if row is None:
            version = db.execute(
                "SELECT coalesce(max(version) + 1, 0) FROM model_versions WHERE kind = 'policy'"
            ).fetchone()[0]
            register_version(db, "policy", version, None, base_model, {}, live=True)
            row = next(
                iter(db["model_versions"].rows_where("kind = 'policy' AND version = ?", [version]))
            )
    return _with_metrics(row)


def set_live_policy(
    db: sqlite_utils.Database, version: int, by: str | None = None
) -> dict[str, Any]:
    """Roll forward or back to ``version``; refused when its files are gone. ``by`` names the
    operator in the event, when one asked."""
    with write_txn(db):
        rows = db["model_versions"].rows_where("kind = 'policy' AND version = ?", [version])
        row = next(iter(rows), None)
        if row is None:
            raise ValueError(f"there is no policy version {version}")
        if row["path"] is not None and not Path(row["path"]).is_dir():
            raise ValueError(
                f"policy v{version}'s files are missing at {row['path']}; it cannot be made live"
            )
        _clear_live(db, row["base_model"])
        db["model_versions"].update(row["id"], {"live": 1})
        log_event(db, "policy_made_live", version=version, **({"by": by} if by else {}))
    return _with_metrics({**row, "live": 1})


def latest_version(db: sqlite_utils.Database, kind: str) -> dict[str, Any] | None:
    rows = db["model_versions"].rows_where("kind = ?", [kind], order_by="version DESC", limit=1)
    row = next(iter(rows), None)
    return _with_metrics(row) if row else None


def latest_policy_trained_by(db: sqlite_utils.Database, how: str) -> dict[str, Any] | None:
    """The newest policy version whose metrics say ``trained_by = how`` ("ppo" or "sft"),
    live or not: what an automatic round counts its new data from."""
    rows = db["model_versions"].rows_where(
        "kind = 'policy' AND json_extract(metrics, '$.trained_by') = ?",
        [how],
        order_by="version DESC",
        limit=1,
    )
    row = next(iter(rows), None)
    return _with_metrics(row) if row else None


def list_versions(db: sqlite_utils.Database, kind: str) -> list[dict[str, Any]]:
    rows = db["model_versions"].rows_where("kind = ?", [kind], order_by="version DESC")
    return [_with_metrics(r) for r in rows]


def _with_metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "metrics": json.loads(row["metrics"] or "{}")}
