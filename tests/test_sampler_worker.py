"""Sampling from the demo model and the background worker process that fills the queue."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch
from store_helpers import add_texts, fresh_db
from transformers import AutoTokenizer
from worker_helpers import REPO, WORKER, wait_for, worker_env

from rlhf_loop.config import load_settings
from rlhf_loop.gold_import import GoldItem
from rlhf_loop.model.loader import load_causal_lm
from rlhf_loop.ppo.policy import new_policy
from rlhf_loop.ppo.rollout import rollout
from rlhf_loop.sampler import SamplingParams, sample_responses
from rlhf_loop.store import leases
from rlhf_loop.store.gold import GOLD_POLICY_VERSION, add_gold_items
from rlhf_loop.store.tasks import free_slots
from rlhf_loop.worker import LEASE
from rlhf_loop.worker_launch import ensure_worker


@pytest.fixture(scope="module")
def policy(demo_model_path: Path):
    return load_causal_lm(str(demo_model_path), "cpu")


def test_k_samples_per_prompt_with_counts_and_endings(policy) -> None:
    model, tokenizer = policy
    params = SamplingParams(k=3, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=24)
    groups = sample_responses(model, tokenizer, ["What is 2 + 3?", "Describe a cat."], params)
    assert [len(g) for g in groups] == [3, 3]
    samples = [s for g in groups for s in g]
    assert all(1 <= s.token_count <= 24 for s in samples)
    assert all(s.token_count == 24 for s in samples if not s.finished)
    assert any(s.finished for s in samples)  # the demo model learned to stop
    assert len({s.text for s in samples}) > 1  # sampling, not greedy copies
    assert sample_responses(model, tokenizer, [], params) == []


def test_a_prompt_longer_than_the_context_is_truncated_not_fatal(policy) -> None:
    model, tokenizer = policy
    params = SamplingParams(k=2, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8)
    huge = "word " * 20_000 + "What is 1 + 1?"  # 100 kB
    (group,) = sample_responses(model, tokenizer, [huge], params)
    assert len(group) == 2


def test_the_queue_draws_as_ppo_rollouts_do(policy, demo_model_path: Path) -> None:
    """One sampler: the queue's samples are the PPO rollout's tokens for the same generator
    seed (a fresh adapter is the base), and ``generate`` is not called."""
    model, tokenizer = policy
    params = SamplingParams(k=3, temperature=0.9, top_p=0.95, top_k=20, max_new_tokens=16)
    prompts = ["What is 2 + 3?", "Describe a cat.", "Why do birds sing?"]
    with mock.patch.object(model, "generate", side_effect=AssertionError("generate called")):
        groups = sample_responses(
            model, tokenizer, prompts, params, generator=torch.Generator().manual_seed(8)
        )
    ppo = new_policy(str(demo_model_path), "cpu", lora_r=4)
    batch = rollout(
        ppo, prompts, params.k, params.sample_config(), torch.Generator().manual_seed(8)
    )
    samples = [s for g in groups for s in g]
    assert [s.text for s in samples] == batch.texts
    assert [s.token_count for s in samples] == batch.response_mask.sum(1).tolist()
    assert [s.finished for s in samples] == batch.eos_found.tolist()
    assert len(set(batch.texts)) > len(prompts)  # sampled, not one answer per prompt
    other = sample_responses(
        model, tokenizer, prompts, params, generator=torch.Generator().manual_seed(9)
    )
    assert [s.text for g in other for s in g] != batch.texts


def sampling_env(tmp_path: Path, demo_model_path: Path) -> dict[str, str]:
    """A worker that seeds demo prompts into an empty table and keeps a small queue full."""
    return worker_env(
        tmp_path,
        demo_model_path,
        seed_demo_prompts=True,
        k=3,
        max_new_tokens=16,
        queue_depth=6,
        sample_batch_prompts=4,
        lease_timeout_s=5.0,
    )


def test_worker_fills_the_queue_and_records_how_it_sampled(
    tmp_path: Path, demo_model_path: Path
) -> None:
    env = sampling_env(tmp_path, demo_model_path)
    db = fresh_db(tmp_path)
    add_texts(db, [f"What is {i} + {i}?" for i in range(10)])
    add_gold_items(
        db, [GoldItem("Name a colour.", ["Red.", "A colour, say blue."], [1, 2], 1)], "g"
    )
    # The first worker stays idle for 15 s before it exits, so the second meets a held lease
    # however slowly it starts on a loaded machine (with 1 s, it sometimes met a released one).
    first = subprocess.Popen(
        [*WORKER[:-1], "15"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    wait_for(
        lambda: (leases.live_holder(db, LEASE, 60) or {}).get("pid") == first.pid,
        60,
        "the first worker to take the lease",
    )
    second = subprocess.run(WORKER, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "another worker holds the lease" in second.stdout
    assert first.wait(timeout=120) == 0
    assert free_slots(db, overlap=1, assignment_timeout_s=600) >= 6
    # Idle, it saved the Dashboard's agreement tally for the app's first render to take up.
    assert (tmp_path / "rlhf.db.agreement.npz").exists()
    comparisons = list(db["comparisons"].rows_where("gold_ranks IS NULL"))
    assert all(c["k"] == 3 and c["policy_version"] == 0 for c in comparisons)
    # The gold responses' estimated token counts were replaced by the policy tokenizer's.
    tokenizer = AutoTokenizer.from_pretrained(demo_model_path)
    gold = list(db["generations"].rows_where("policy_version = ?", [GOLD_POLICY_VERSION]))
    assert [g["token_count"] for g in gold] == [
        len(tokenizer(g["text"])["input_ids"]) for g in gold
    ]
    assert all(json.loads(g["params"])["counted"] for g in gold)
    generation = next(iter(db["generations"].rows_where("policy_version = 0")))
    assert json.loads(generation["params"]) == {
        "k": 3,
        "max_new_tokens": 16,
        "model": "demo",
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 0.95,
    }
    assert db["prompts"].count == 11  # demo prompts are seeded only into an empty table
    assert leases.live_holder(db, LEASE, 60) is None  # released on exit


def test_app_launcher_starts_one_worker_which_replaces_a_dead_one(
    tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = sampling_env(tmp_path, demo_model_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the launcher passes its own environment on
    settings = load_settings(environ=env)
    db = fresh_db(tmp_path)
    db["leases"].insert(
        {"name": LEASE, "holder": "dead", "pid": 1, "acquired_at": 0, "heartbeat_at": 0}
    )
    pid = ensure_worker(db, settings)
    try:
        assert pid is not None
        assert ensure_worker(db, settings) is None  # the lease is taken: no second worker
        wait_for(  # demo prompts seeded and sampled
            lambda: free_slots(db, 1, 600) >= settings.queue_depth, 120, "a full queue"
        )
        assert leases.live_holder(db, LEASE, 5)["pid"] == pid
    finally:
        os.kill(pid, 15)
