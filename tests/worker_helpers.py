"""Starting a real worker process on a test's data dir, with the cached test model."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import TEST_PRETRAIN_STEPS

from rlhf_loop.config import Settings
from rlhf_loop.worker_launch import settings_env

REPO = Path(__file__).resolve().parent.parent
# A worker that exits once idle for a second: it runs the queued jobs, then stops.
WORKER = [sys.executable, "-m", "rlhf_loop", "worker", "--idle-exit", "1"]


def worker_env(tmp_path: Path, model_path: Path, **overrides) -> dict[str, str]:
    """The environment for ``python -m rlhf_loop worker``: this data dir, the test model, no
    demo prompts and no automatic jobs (a test enqueues what it wants run), a PPO round's
    version live at once (these tests are about jobs, not adoption), plus ``overrides``."""
    settings = Settings(
        data_dir=str(tmp_path),
        model_cache_dir=str(model_path.parent),
        demo_pretrain_steps=TEST_PRETRAIN_STEPS,
        device="cpu",
        seed_demo_prompts=False,
        reward_retrain_every=0,
        sft_retrain_every=0,
        ppo_after_reward=False,
        reward_lr=1e-3,
        reward_max_length=64,
        queue_depth=1,
        policy_adoption="immediate",
    ).replace(**overrides)
    (tmp_path / "empty.toml").write_text("")
    return os.environ | settings_env(settings) | {"RLHF_LOOP_CONFIG": str(tmp_path / "empty.toml")}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
