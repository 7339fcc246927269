"""The disk holding runs/ turns read-only in the middle of saving a model version: a real tmpfs
remounted read-only after the weights are written and before the metadata. The job fails with
a message the operator can act on, nothing half-written is registered, the live policy stays
the complete old one; once the disk is writable again the same job succeeds and the leftover
temporary directory is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_helpers import mount, small_disk
from fault_checks import assert_sound, ranking_rows
from job_helpers import job_context
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.job_runner import run_job
from rlhf_loop.store.versions import latest_version, live_policy


@pytest.fixture
def runs_disk(tmp_path: Path) -> Iterator[Path]:
    """runs/ on its own small filesystem, so that it alone can be made read-only."""
    with small_disk(tmp_path / "runs", "512m") as runs:
        yield runs


@pytest.mark.parametrize("kind", ["train_reward", "ppo_round"])
def test_read_only_mid_save_fails_cleanly_and_the_retry_succeeds(
    kind: str, runs_disk: Path, tmp_path: Path, demo_model_path: Path, monkeypatch
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 40)
    if kind == "ppo_round":
        assert run_job(job_context(db, tmp_path, demo_model_path, "train_reward"))
    rankings = ranking_rows(db)
    live_before = live_policy(db, "demo")
    model_kind = "reward" if kind == "train_reward" else "policy"
    versions_before = latest_version(db, model_kind)

    real_write_text = Path.write_text

    def read_only_before_metadata(self: Path, *args, **kwargs):
        # The metadata is each save's last file: the weights are on disk by now.
        if self.parent.name.startswith(".v") and runs_disk in self.parents:
            assert mount("-o", "remount,ro", str(runs_disk))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only_before_metadata)
    context = job_context(db, tmp_path, demo_model_path, kind)
    assert not run_job(context)
    monkeypatch.undo()

    row = db["jobs"].get(context.job.id)
    assert row["status"] == "failed"
    assert "Read-only file system" in row["error"] and "live models are unchanged" in row["error"]
    assert latest_version(db, model_kind) == versions_before  # nothing registered
    assert live_policy(db, "demo")["version"] == live_before["version"]
    [leftover] = list((runs_disk / model_kind).glob(".v*"))  # half-written, could not be removed
    assert any(leftover.iterdir())
    assert_sound(db, rankings, "demo")

    assert mount("-o", "remount,rw", str(runs_disk))
    retry = job_context(db, tmp_path, demo_model_path, kind)
    assert run_job(retry), db["jobs"].get(retry.job.id)["error"]
    assert (
        latest_version(db, model_kind)["version"]
        == (versions_before or {"version": 0})["version"] + 1
    )
    assert not list((runs_disk / model_kind).glob(".v*"))  # the leftover was cleared
    if kind == "ppo_round":
        assert live_policy(db, "demo")["version"] > live_before["version"]
    assert_sound(db, rankings, "demo")
