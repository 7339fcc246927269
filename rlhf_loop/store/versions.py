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
    path: Path,
    base_model: str,
    metrics: dict[str, Any],
) -> int:
    """Call after the artefact's directory is complete (renamed into place)."""
    with write_txn(db):
        row_id = (
            db["model_versions"]
            .insert(
                {
                    "kind": kind,
                    "version": version,
                    "base_model": base_model,
                    "path": str(path),
                    "metrics": json.dumps(metrics, sort_keys=True),
                    "created_at": now(),
                }
            )
            .last_pk
        )
        log_event(db, "model_registered", model_kind=kind, version=version, path=str(path))
    return row_id


def latest_version(db: sqlite_utils.Database, kind: str) -> dict[str, Any] | None:
    rows = db["model_versions"].rows_where("kind = ?", [kind], order_by="version DESC", limit=1)
    row = next(iter(rows), None)
    return _with_metrics(row) if row else None


def list_versions(db: sqlite_utils.Database, kind: str) -> list[dict[str, Any]]:
    rows = db["model_versions"].rows_where("kind = ?", [kind], order_by="version DESC")
    return [_with_metrics(r) for r in rows]


def _with_metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "metrics": json.loads(row["metrics"] or "{}")}
