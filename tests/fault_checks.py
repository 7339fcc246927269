"""What must hold after any fault: the database is sound, no ranking is lost, and every
registered model version (the live policy above all) is complete on disk."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from rlhf_loop.ppo import policy
from rlhf_loop.reward import model as reward_model
from rlhf_loop.store.versions import live_policy

# Files without which a version cannot be loaded, by kind.
REQUIRED_FILES = {
    "policy": [
        "adapter_config.json",
        "adapter_model.safetensors",
        policy.VALUE_HEAD_FILE,
        policy.META_FILE,
    ],
    "reward": ["config.json", "model.safetensors", reward_model.META_FILE],
}


def ranking_rows(db: sqlite_utils.Database) -> list[tuple]:
    return [tuple(r.values()) for r in db["rankings"].rows_where(order_by="id")]


def assert_sound(db: sqlite_utils.Database, rankings_before: list[tuple], base_model: str) -> None:
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert ranking_rows(db) == rankings_before, "a ranking was lost or changed"
    for row in db["model_versions"].rows_where("path IS NOT NULL"):
        missing = [f for f in REQUIRED_FILES[row["kind"]] if not (Path(row["path"]) / f).is_file()]
        assert not missing, f"{row['kind']} v{row['version']} is registered without {missing}"
    live = live_policy(db, base_model)
    assert live["path"] is None or Path(live["path"]).is_dir()
