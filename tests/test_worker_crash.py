"""A worker SIGKILLed in a reward-model retrain, a PPO round or an SFT round, first in the middle
of training, then at a random moment (loading, training, evaluating or saving): after each kill
the database is sound, no ranking is lost, nothing half-written is registered and the live
policy is a complete version; the next worker retries the job to the end.

The random moments come from FAULT_SEED (default: a fresh seed, printed on failure), so a failure
can be replayed with the same seed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fault_checks import assert_sound, ranking_rows
from store_helpers import fresh_db, oracle_rankings
from worker_helpers import wait_for, worker_env

from rlhf_loop.model.demo_corpus import ARITHMETIC, demo_prompts
from rlhf_loop.simulate_demonstrations import add_oracle_demonstrations
from rlhf_loop.store import jobs
from rlhf_loop.store.leases import live_holder
from rlhf_loop.store.versions import latest_version, list_versions, live_policy
from rlhf_loop.worker import LEASE

REPO = Path(__file__).resolve().parent.parent
LEASE_S = 3.0


def _env(tmp_path: Path, model_path: Path, **overrides) -> dict[str, str]:
    return worker_env(
        tmp_path,
        model_path,
        reward_epochs=3,
        lease_timeout_s=LEASE_S,
        job_max_attempts=5,
        max_new_tokens=16,
        ppo_steps=30,
        ppo_batch_prompts=8,
        ppo_minibatch=8,
        ppo_eval_prompts=4,
        **overrides,
    )


SEED = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
WORKER = [sys.executable, "-m", "rlhf_loop", "worker", "--idle-exit", "1"]


def _kill_when(db, env: dict[str, str], ready, what: str) -> str:
    """Start a worker, SIGKILL it once ``ready()``; returns what it was doing then."""
    worker = subprocess.Popen(WORKER, env=env, cwd=REPO)
    try:
        wait_for(ready, 180, what)
        doing = (live_holder(db, LEASE, 60) or {}).get("status") or "starting"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    time.sleep(LEASE_S + 0.5)  # the dead worker's lease and job heartbeat go stale
    return doing


def _random_moment(db, job_id: int, attempts: int, rng: random.Random, span_s: float):
    """A condition that turns true a random time (0..span_s) after the job's next claim."""
    claimed: list[float] = []

    def ready() -> bool:
        if not claimed and db["jobs"].get(job_id)["attempts"] > attempts:
            claimed.append(time.monotonic() + rng.uniform(0.0, span_s))
        return bool(claimed) and time.monotonic() >= claimed[0]

    return ready


def _killed_twice_then_finished(db, env, job_id: int, mid_training, span_s, unchanged):
    """Kill mid-training, then at a random moment; ``unchanged`` checks that an unfinished job
    left the models as they were."""
    rankings = ranking_rows(db)
    rng = random.Random(SEED)
    landed = [_kill_when(db, env, mid_training, "training steps")]
    assert db["jobs"].get(job_id)["status"] == "running"
    assert_sound(db, rankings, "demo")
    unchanged()
    ready = _random_moment(db, job_id, db["jobs"].get(job_id)["attempts"], rng, span_s)
    landed.append(_kill_when(db, env, ready, "the random moment"))
    assert_sound(db, rankings, "demo")
    if db["jobs"].get(job_id)["status"] == "running":  # else it finished before the kill
        unchanged()
    print(f"FAULT_SEED={SEED}: killed while (last reported) {landed}")

    subprocess.run(WORKER, env=env, cwd=REPO, timeout=300, check=True)
    row = db["jobs"].get(job_id)
    assert row["status"] == "done", f"FAULT_SEED={SEED}: {row['error']}"
    assert_sound(db, rankings, "demo")
    return row


def test_retrain_killed_mid_training_and_at_a_random_moment_then_finished(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 60)
    job_id = jobs.enqueue(db, "train_reward", {"reason": "test"})
    env = _env(tmp_path, demo_model_path)

    def mid_training() -> bool:
        return len(jobs.job_metrics(db, job_id)) >= 6

    def no_new_version() -> None:
        assert latest_version(db, "reward") is None

    row = _killed_twice_then_finished(db, env, job_id, mid_training, 12.0, no_new_version)
    assert row["attempts"] >= 2
    version = latest_version(db, "reward")
    assert version["version"] == 1 and (Path(version["path"]) / "reward_meta.json").is_file()


def test_incremental_retrain_killed_mid_training_and_at_a_random_moment_then_finished(
    tmp_path: Path, demo_model_path: Path
) -> None:
    """A retrain that starts from v1 leaves v1 the newest version until it registers, once."""
    db = fresh_db(tmp_path)
    oracle_rankings(db, 60)
    env = _env(tmp_path, demo_model_path, reward_replay_rankings=10)
    jobs.enqueue(db, "train_reward")
    subprocess.run(WORKER, env=env, cwd=REPO, timeout=300, check=True)  # reward model v1
    oracle_rankings(db, 30, seed=1)
    job_id = jobs.enqueue(db, "train_reward", {"reason": "test"})

    def mid_training() -> bool:
        return len(jobs.job_metrics(db, job_id)) >= 6

    def v1_newest() -> None:
        assert latest_version(db, "reward")["version"] == 1

    row = _killed_twice_then_finished(db, env, job_id, mid_training, 12.0, v1_newest)
    assert row["attempts"] >= 2
    versions = list_versions(db, "reward")
    assert [v["version"] for v in versions] == [2, 1]  # registered once
    assert versions[0]["metrics"]["retrain"]["kind"] == "incremental"
    assert versions[0]["metrics"]["retrain"]["started_from"] == 1
    assert not list((tmp_path / "runs" / "reward").glob(".v*"))  # no half-written leftovers


def test_ppo_round_killed_mid_training_and_at_a_random_moment_keeps_the_live_policy(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 40)
    env = _env(tmp_path, demo_model_path)
    jobs.enqueue(db, "train_reward")
    subprocess.run(WORKER, env=env, cwd=REPO, timeout=300, check=True)  # reward model v1
    live_before = live_policy(db, "demo")
    job_id = jobs.enqueue(db, "ppo_round", {"reason": "test"})

    def mid_training() -> bool:
        return len(jobs.job_metrics(db, job_id)) >= 12 * 3  # ~3 steps

    def old_policy_live() -> None:
        assert live_policy(db, "demo")["version"] == live_before["version"]

    row = _killed_twice_then_finished(db, env, job_id, mid_training, 20.0, old_policy_live)
    assert row["attempts"] >= 2
    live = live_policy(db, "demo")
    assert live["version"] > live_before["version"] and Path(live["path"]).is_dir()
    assert not list((tmp_path / "runs" / "policy").glob(".v*"))  # no half-written leftovers


def test_sft_round_killed_mid_training_and_at_a_random_moment_keeps_the_live_policy(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    add_oracle_demonstrations(db, demo_prompts(40, kinds=(ARITHMETIC,)))
    # many small steps: a round long enough to be killed in the middle of
    env = _env(tmp_path, demo_model_path, sft_epochs=30, sft_batch=2)
    live_before = live_policy(db, "demo")
    job_id = jobs.enqueue(db, "sft_round", {"reason": "test"})

    def mid_training() -> bool:
        return len(jobs.job_metrics(db, job_id)) >= 5

    def old_policy_live() -> None:
        assert live_policy(db, "demo")["version"] == live_before["version"]

    row = _killed_twice_then_finished(db, env, job_id, mid_training, 10.0, old_policy_live)
    assert row["attempts"] >= 2
    live = live_policy(db, "demo")
    assert live["version"] > live_before["version"] and live["metrics"]["trained_by"] == "sft"
    assert len([v for v in list_versions(db, "policy") if v["path"]]) == 1  # registered once
    assert not list((tmp_path / "runs" / "policy").glob(".v*"))  # no half-written leftovers
