"""``python -m rlhf_loop ppo-round`` runs its job through the worker's own job runner: a disk that
turns read-only while the new policy is saved fails the job with the worker's message, and a
batch too small to share out over the processes says so before any work."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from conftest import TEST_PRETRAIN_STEPS
from job_helpers import job_context
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobError, run_job
from rlhf_loop.ppo import publish as ppo_publish
from rlhf_loop.ppo import round as ppo_round
from rlhf_loop.ppo.cli import run_round_command
from rlhf_loop.ppo.distributed import World
from rlhf_loop.store.versions import latest_version, live_policy


@pytest.fixture
def trained(tmp_path: Path, demo_model_path: Path):
    """A database with rankings and a reward model v1."""
    db = fresh_db(tmp_path)
    oracle_rankings(db, 30)
    assert run_job(job_context(db, tmp_path, demo_model_path, "train_reward"))
    return db


def test_a_read_only_disk_fails_the_commands_job_as_it_fails_the_workers(
    trained, tmp_path: Path, demo_model_path: Path, monkeypatch, capsys
) -> None:
    error = OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "runs" / "policy"))

    def read_only(*args, **kwargs):
        raise error

    monkeypatch.setattr(ppo_publish, "save_policy", read_only)
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process
    live_before = live_policy(trained, "demo")["version"]
    settings = Settings(
        data_dir=str(tmp_path),
        model_cache_dir=str(demo_model_path.parent),
        demo_pretrain_steps=TEST_PRETRAIN_STEPS,
        device="cpu",
        max_new_tokens=8,
        reward_max_length=64,
        ppo_steps=1,
        ppo_batch_prompts=4,
        ppo_minibatch=8,
        ppo_eval_prompts=2,
    )
    assert run_round_command(settings) == 1
    [command] = trained["jobs"].rows_where("kind = 'ppo_round'")
    assert command["status"] == "failed"
    assert command["error"].startswith(
        f"file system error: Read-only file system ({error.filename}); nothing was registered"
    )
    assert f"PPO round failed: {command['error']}" in capsys.readouterr().out
    assert latest_version(trained, "policy")["version"] == live_before  # nothing registered

    worker = job_context(trained, tmp_path, demo_model_path, "ppo_round")
    assert not run_job(worker)
    assert trained["jobs"].get(worker.job.id)["error"] == command["error"]


def test_a_batch_smaller_than_the_process_count_is_refused(
    trained, tmp_path: Path, demo_model_path: Path
) -> None:
    ctx = job_context(trained, tmp_path, demo_model_path, "ppo_round", ppo_batch_prompts=1)
    with pytest.raises(JobError, match="a batch of 1 prompt\\(s\\) cannot be split over 2"):
        ppo_round.run_ppo_round(ctx, World(rank=0, size=2))
