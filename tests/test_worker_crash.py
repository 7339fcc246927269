"""A worker SIGKILLed in a reward-model retrain, a PPO round or an SFT round, first in the middle
of training, then at a random moment (loading, training, evaluating or saving): after each kill
the database is sound, no ranking is lost, nothing half-written is registered and the live
policy is a complete version; the next worker retries the job to the end. A worker killed while
a candidate policy is judged by people (sampling blind items, or with the verdict reached) leaves
it a candidate, and the next one decides it once.

The random moments come from FAULT_SEED (default: a fresh seed, printed on failure), so a failure
can be replayed with the same seed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from fault_checks import assert_sound, ranking_rows
from store_helpers import add_texts, fresh_db, oracle_rankings
from worker_helpers import wait_for, worker_env

from rlhf_loop.faults import FAULT_ENV
from rlhf_loop.model.demo_corpus import ARITHMETIC, demo_prompts
from rlhf_loop.ppo.policy import new_policy, save_policy
from rlhf_loop.simulate_demonstrations import add_oracle_demonstrations
from rlhf_loop.store import jobs
from rlhf_loop.store.adoption import CANDIDATE, pending_candidate
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.leases import live_holder
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import next_task
from rlhf_loop.store.versions import latest_version, list_versions, live_policy, register_version
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


def _candidate(db, tmp_path: Path, model_path: Path) -> int:
    """v1, a LoRA policy whose answers differ from the base's, waiting for people's verdict."""
    torch.manual_seed(0)
    policy = new_policy(str(model_path), "cpu", lora_r=4)
    with torch.no_grad():
        for p in policy.adapter_parameters("default"):
            p.add_(0.5 * torch.randn_like(p))
    path = save_policy(policy, tmp_path / "v1", {"lora_r": 4})
    base = live_policy(db, "demo")
    register_version(db, "policy", 1, path, "demo", {}, base["id"], adoption=CANDIDATE)
    return 1


def _rank_for(db, who: int, preferred: int) -> int:
    """Ranks every item on offer, ``preferred``'s responses first; returns how many."""
    ranked = 0
    while (task := next_task(db, who, 1, 1800)) is not None:
        versions = [
            db["generations"].get(r.generation_id)["policy_version"] for r in task.responses
        ]
        submit(
            db, who, task.comparison_id, "ranked", [1 if v == preferred else 2 for v in versions]
        )
        ranked += 1
    return ranked


def _ranked_on(db, who: int, preferred: int, worker: subprocess.Popen) -> bool:
    """Ranks what is on offer; True once the worker has exited."""
    _rank_for(db, who, preferred)
    return worker.poll() is not None


def _still_a_candidate(db, version: int) -> None:
    assert pending_candidate(db, "demo")["version"] == version
    assert live_policy(db, "demo")["version"] == 0
    assert db["events"].count_where("kind = 'policy_promoted'") == 0


def test_worker_killed_while_a_candidate_is_judged_keeps_it_a_candidate_then_promotes_it_once(
    tmp_path: Path, demo_model_path: Path
) -> None:
    """Killed while sampling blind items, then at the verdict (reached, not applied): the
    candidate stays a candidate each time, every blind item ranked before counts, and the next
    worker promotes it once."""
    db = fresh_db(tmp_path)
    add_texts(db, [f"What is {i} + {i + 2}?" for i in range(40)])
    candidate = _candidate(db, tmp_path, demo_model_path)
    env = _env(
        tmp_path,
        demo_model_path,
        policy_adoption="human",
        eval_share=1.0,
        queue_depth=8,
        sample_batch_prompts=4,
    )
    judge = annotator_id(db, "judge")
    ranked = [0]

    def ranked_four() -> bool:  # people rank blind items as the worker samples more of them
        ranked[0] += _rank_for(db, judge, candidate)
        return ranked[0] >= 4

    doing = _kill_when(db, env, ranked_four, "4 blind items ranked")
    _still_a_candidate(db, candidate)
    for row in db["comparisons"].rows:  # no half-stored item: each mixes both versions
        assert sorted(json.loads(row["blind_versions"])) == [0, candidate]
        versions = {
            db["generations"].get(g)["policy_version"] for g in json.loads(row["generation_ids"])
        }
        assert versions == {0, candidate}

    worker = subprocess.Popen(WORKER, env=env | {FAULT_ENV: "before_verdict"}, cwd=REPO)
    try:
        wait_for(lambda: _ranked_on(db, judge, candidate, worker), 180, "the verdict")
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == -signal.SIGKILL  # it died at the verdict, not before
    _still_a_candidate(db, candidate)
    rankings = ranking_rows(db)
    time.sleep(LEASE_S + 0.5)

    subprocess.run(WORKER, env=env, cwd=REPO, timeout=300, check=True)
    assert_sound(db, rankings, "demo")
    [event] = db["events"].rows_where("kind = 'policy_promoted'")
    figures = json.loads(event["payload"])
    assert figures["version"] == candidate and figures["by"] == "people"
    assert figures["pairs"] == 4 * len(rankings)  # every blind ranking counted, the first 4 too
    assert live_policy(db, "demo")["version"] == candidate
    assert pending_candidate(db, "demo") is None
    print(f"first kill while (last reported) {doing!r}")
