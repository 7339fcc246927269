"""The labeling loop end to end: the worker samples from the demo model, a simulated annotator
ranks a few hundred items through the Rank page's store calls, the worker retrains the reward
model on its own (every N rankings), and that model ranks held-out prompts well above chance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TEST_PRETRAIN_STEPS
from store_helpers import fresh_db

from rlhf_loop.config import Settings
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator, annotate
from rlhf_loop.store.versions import latest_version
from rlhf_loop.worker_launch import settings_env

REPO = Path(__file__).resolve().parent.parent
RANKINGS = 200


def test_worker_samples_annotator_ranks_reward_model_learns(
    tmp_path: Path, demo_model_path: Path
) -> None:
    settings = Settings(
        data_dir=str(tmp_path),
        model_cache_dir=str(demo_model_path.parent),
        demo_pretrain_steps=TEST_PRETRAIN_STEPS,
        device="cpu",
        k=4,
        max_new_tokens=24,
        queue_depth=48,
        sample_batch_prompts=16,
        reward_retrain_every=RANKINGS,
        reward_epochs=4,
        reward_lr=1e-3,
        reward_max_length=64,
        reward_heldout_fraction=0.2,
        ppo_after_reward=False,
    )
    (tmp_path / "empty.toml").write_text("")
    env = os.environ | settings_env(settings) | {"RLHF_LOOP_CONFIG": str(tmp_path / "empty.toml")}
    worker = subprocess.Popen([sys.executable, "-m", "rlhf_loop", "worker"], env=env, cwd=REPO)
    try:
        db = fresh_db(tmp_path)
        annotator = SimulatedAnnotator(
            LengthOracle(target_words=5), noise=0.3, tie_threshold=0.5, seed=1
        )
        ranked, deadline = 0, time.monotonic() + 400
        while ranked < RANKINGS:
            assert time.monotonic() < deadline, f"only {ranked} items ranked in time"
            ranked += annotate(db, "simulated", annotator, RANKINGS - ranked).ranked
            time.sleep(0.2)
        while (version := latest_version(db, "reward")) is None:
            assert time.monotonic() < deadline, "the automatic retrain did not finish in time"
            assert worker.poll() is None, "the worker died"
            time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    metrics = version["metrics"]
    generations = db["generations"].count
    print(f"e2e: {ranked} rankings of {generations} sampled responses -> reward v1 {metrics}")
    assert metrics["rankings_used"] >= RANKINGS
    assert metrics["heldout_rankings"] >= 20
    assert metrics["pairwise_accuracy"] >= 0.75, metrics  # chance is 0.5
    job = next(iter(db["jobs"].rows))
    assert job["status"] == "done" and "new rankings" in job["params"]
