"""A worker SIGKILLed in the middle of a reward-model retrain or a PPO round: nothing
half-written is registered (the previous policy stays live), and the next worker retries the job
to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TEST_PRETRAIN_STEPS
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.config import Settings
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import latest_version, live_policy
from rlhf_loop.worker_launch import settings_env

REPO = Path(__file__).resolve().parent.parent
LEASE_S = 3.0


def _env(tmp_path: Path, model_path: Path) -> dict[str, str]:
    settings = Settings(
        data_dir=str(tmp_path),
        model_cache_dir=str(model_path.parent),
        demo_pretrain_steps=TEST_PRETRAIN_STEPS,
        device="cpu",
        seed_demo_prompts=False,
        reward_retrain_every=0,
        ppo_after_reward=False,
        reward_epochs=3,
        reward_lr=1e-3,
        reward_max_length=64,
        queue_depth=1,
        lease_timeout_s=LEASE_S,
        max_new_tokens=16,
        ppo_steps=30,
        ppo_batch_prompts=8,
        ppo_minibatch=8,
        ppo_eval_prompts=4,
    )
    (tmp_path / "empty.toml").write_text("")
    return os.environ | settings_env(settings) | {"RLHF_LOOP_CONFIG": str(tmp_path / "empty.toml")}


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killed_mid_retrain_then_retried_to_completion(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 60)
    job_id = jobs.enqueue(db, "train_reward", {"reason": "test"})
    env = _env(tmp_path, demo_model_path)
    command = [sys.executable, "-m", "rlhf_loop", "worker", "--idle-exit", "1"]

    first = subprocess.Popen(command, env=env, cwd=REPO)
    _wait(lambda: len(jobs.job_metrics(db, job_id)) >= 6, 180, "training steps")  # mid-training
    first.send_signal(signal.SIGKILL)
    first.wait()
    row = db["jobs"].get(job_id)
    assert (row["status"], row["attempts"]) == ("running", 1)
    assert latest_version(db, "reward") is None  # nothing registered
    assert not (tmp_path / "runs" / "reward" / "v1").exists()

    time.sleep(LEASE_S + 0.5)  # the dead worker's lease and job heartbeat go stale
    second = subprocess.run(command, env=env, cwd=REPO, timeout=300)
    assert second.returncode == 0
    row = db["jobs"].get(job_id)
    assert (row["status"], row["attempts"]) == ("done", 2), row["error"]
    version = latest_version(db, "reward")
    assert version["version"] == 1 and (Path(version["path"]) / "reward_meta.json").is_file()
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_killed_mid_ppo_round_keeps_the_live_policy_then_retries(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 40)
    env = _env(tmp_path, demo_model_path)
    command = [sys.executable, "-m", "rlhf_loop", "worker", "--idle-exit", "1"]
    jobs.enqueue(db, "train_reward")
    subprocess.run(command, env=env, cwd=REPO, timeout=300, check=True)  # reward model v1
    live_before = live_policy(db, "demo")
    job_id = jobs.enqueue(db, "ppo_round", {"reason": "test"})

    first = subprocess.Popen(command, env=env, cwd=REPO)
    _wait(lambda: len(jobs.job_metrics(db, job_id)) >= 12 * 3, 180, "PPO steps")  # ~3 steps
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert db["jobs"].get(job_id)["status"] == "running"
    assert live_policy(db, "demo")["version"] == live_before["version"]  # still the old policy
    assert not list((tmp_path / "runs").glob("policy/v*"))

    time.sleep(LEASE_S + 0.5)
    subprocess.run(command, env=env, cwd=REPO, timeout=300, check=True)
    row = db["jobs"].get(job_id)
    assert (row["status"], row["attempts"]) == ("done", 2), row["error"]
    live = live_policy(db, "demo")
    assert live["version"] > live_before["version"] and Path(live["path"]).is_dir()
