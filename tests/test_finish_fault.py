"""A worker killed exactly before, or exactly after, the transaction that registers a job's model
version and ends the job (``RLHF_LOOP_FAULT``): before, nothing is registered and the retry
registers one version; after, the job is done and nothing runs it again. Either way there is one
new version and, after a retrain, one PPO round: never a duplicate reward version, nor a second,
unasked round on top of the new live policy."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_checks import assert_sound, ranking_rows
from job_helpers import job_context
from store_helpers import fresh_db, oracle_rankings
from worker_helpers import REPO, WORKER, worker_env

from rlhf_loop.faults import FAULT_ENV
from rlhf_loop.job_runner import run_job
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import list_versions, live_policy

LEASE_S = 3.0


def _worker(tmp_path: Path, model_path: Path, fault: str | None = None, **overrides) -> int:
    """Run a worker until it is idle (or kills itself at ``fault``); its exit status."""
    env = worker_env(
        tmp_path,
        model_path,
        lease_timeout_s=LEASE_S,
        reward_epochs=1,
        max_new_tokens=8,
        ppo_steps=1,
        ppo_batch_prompts=4,
        ppo_minibatch=8,
        ppo_eval_prompts=2,
        **overrides,
    )
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(WORKER, env=env, cwd=REPO, timeout=300).returncode


def _killed_then_rerun(
    db, tmp_path: Path, model_path: Path, job_id: int, point: str, left: Callable[[bool], None]
) -> None:
    """Kill a worker at ``point`` of job ``job_id``, check with ``left(killed_after_commit)``
    what it left, then let the next worker run until idle."""
    rankings = ranking_rows(db)
    settings = {"ppo_after_reward": True}
    assert _worker(tmp_path, model_path, point, **settings) == -signal.SIGKILL
    after = point == "after_finish"
    assert db["jobs"].get(job_id)["status"] == ("done" if after else "running")
    left(after)
    assert_sound(db, rankings, "demo")
    time.sleep(LEASE_S + 0.5)  # the dead worker's lease and job heartbeat go stale
    assert _worker(tmp_path, model_path, **settings) == 0
    row = db["jobs"].get(job_id)
    assert (row["status"], row["attempts"]) == ("done", 1 if after else 2), row["error"]
    assert_sound(db, rankings, "demo")


def _ppo_rounds(db) -> list[str]:
    return [j["status"] for j in db["jobs"].rows_where("kind = 'ppo_round'")]


@pytest.mark.parametrize("point", ["before_finish", "after_finish"])
def test_a_retrain_killed_at_its_end_gives_one_version_and_one_ppo_round(
    point: str, tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 30)
    job_id = jobs.enqueue(db, "train_reward", {"reason": "test"})

    def left(after: bool) -> None:  # the version and its PPO round with the job's end, or none
        assert len(list_versions(db, "reward")) == int(after)
        assert _ppo_rounds(db) == ["queued"] * after

    _killed_then_rerun(db, tmp_path, demo_model_path, job_id, point, left)
    assert [v["version"] for v in list_versions(db, "reward")] == [1]
    assert _ppo_rounds(db) == ["done"]  # the one round v1 asked for, run once
    [trained] = [v for v in list_versions(db, "policy") if v["path"] is not None]
    assert live_policy(db, "demo")["version"] == trained["version"]


@pytest.mark.parametrize("point", ["before_finish", "after_finish"])
def test_a_ppo_round_killed_at_its_end_publishes_one_live_version(
    point: str, tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 30)
    assert run_job(job_context(db, tmp_path, demo_model_path, "train_reward"))
    base = live_policy(db, "demo")["version"]
    job_id = jobs.enqueue(db, "ppo_round", {"reason": "test"})

    def left(after: bool) -> None:
        assert live_policy(db, "demo")["version"] == base + after

    _killed_then_rerun(db, tmp_path, demo_model_path, job_id, point, left)
    demo = [v["version"] for v in list_versions(db, "policy") if v["base_model"] == "demo"]
    assert demo == [base + 1, base]
    assert live_policy(db, "demo")["version"] == base + 1
    assert _ppo_rounds(db) == ["done"]
