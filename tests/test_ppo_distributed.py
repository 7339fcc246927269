"""PPO on several processes, as ``accelerate launch`` / ``torchrun`` start it: here two CPU
processes over gloo, standing in for GPUs (CI has none)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_PRETRAIN_STEPS
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.config import Settings
from rlhf_loop.ppo.distributed import World
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import live_policy
from rlhf_loop.worker_launch import settings_env

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        *args,
    ]


def test_replicas_average_gradients_and_share_statistics(tmp_path: Path) -> None:
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "REPLICA_OUT": str(tmp_path),
    }
    done = subprocess.run(
        _torchrun(str(REPO / "tests" / "distributed_replica.py")),
        env=env,
        cwd=REPO,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    views = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [v["rank"] for v in views] == [0, 1]
    for view in views:
        assert view["grad"] == [1.5, 1.5, 1.5]  # identical on both: the replicas stay in step
        assert view["gathered"] == [0.0, 0.0, 1.0] and view["mine"] == [0, 1][view["rank"]]
        assert view["mean"] == {"x": 1.0}
        assert view["lonely"] == [1.0, 1.0]  # the missing gradient counted as zero
        assert view["most"] == 4


@pytest.mark.parametrize(
    ("total", "size", "parts"), [(16, 3, [6, 5, 5]), (5, 2, [3, 2]), (4, 1, [4])]
)
def test_a_batch_is_shared_out_across_processes(total: int, size: int, parts: list[int]) -> None:
    items = list(range(total))
    shares = [World(rank, size).share(items) for rank in range(size)]
    assert [len(s) for s in shares] == parts
    assert [i for s in shares for i in s] == items  # each item once, in order


def test_ppo_round_on_two_processes_publishes_one_live_version(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 40)
    settings = Settings(
        data_dir=str(tmp_path),
        model_cache_dir=str(demo_model_path.parent),
        demo_pretrain_steps=TEST_PRETRAIN_STEPS,
        device="cpu",
        max_new_tokens=16,
        reward_epochs=1,
        reward_max_length=64,
        ppo_steps=2,
        ppo_batch_prompts=5,  # 3 prompts on rank 0, 2 on rank 1
        ppo_samples_per_prompt=2,
        ppo_minibatch=4,  # so rank 0 has two minibatches, rank 1 one: it joins rank 0's second
        ppo_eval_prompts=4,
        ppo_after_reward=False,
        policy_adoption="immediate",
    )
    (tmp_path / "empty.toml").write_text("")
    env = (
        os.environ
        | settings_env(settings)
        | {
            "RLHF_LOOP_CONFIG": str(tmp_path / "empty.toml"),
            "OMP_NUM_THREADS": "1",
        }
    )
    jobs.enqueue(db, "train_reward")
    worker = [sys.executable, "-m", "rlhf_loop", "worker", "--idle-exit", "1"]
    subprocess.run(worker, env=env, cwd=REPO, timeout=300, check=True)  # reward model v1
    done = subprocess.run(
        _torchrun("-m", "rlhf_loop", "ppo-round"),
        env=env,
        cwd=REPO,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    live = live_policy(db, "demo")
    assert live["path"] is not None and Path(live["path"]).is_dir()
    (job,) = [j for j in db["jobs"].rows if j["kind"] == "ppo_round"]
    assert job["status"] == "done" and "2 process(es)" in job["params"]
    metrics = jobs.job_metrics(db, job["id"])
    assert {m["name"] for m in metrics} >= {"reward", "kl", "clip_frac"}
    # the configured batch in all, not per process: 5 prompts x 2 samples per step
    assert [m["value"] for m in metrics if m["name"] == "sequences"] == [10.0, 10.0]
