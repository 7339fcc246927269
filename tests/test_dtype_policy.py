"""The dtype policy: frozen weights in the configured dtype, everything that trains or scores in
float32. bfloat16 is the GPU default; torch runs it on a CPU too, so CI covers the GPU's dtype
path by forcing it here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from job_helpers import job_context
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.config import ConfigError, Settings
from rlhf_loop.model.loader import load_causal_lm, resolve_dtype
from rlhf_loop.ppo import round as ppo_round
from rlhf_loop.ppo.policy import forward, new_policy
from rlhf_loop.reward.job import run_train_reward
from rlhf_loop.reward.model import load_backbone, load_reward_model
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import latest_version, live_policy


def test_auto_is_float32_on_a_cpu_and_names_are_checked() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'bf16'"):
        resolve_dtype("bf16", "cpu")
    with pytest.raises(ConfigError, match="dtype must be"):
        Settings(dtype="half").validate()


def test_bfloat16_policy_keeps_adapter_and_value_head_in_float32(demo_model_path: Path) -> None:
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4, dtype="bfloat16")
    frozen = {p.dtype for p in policy.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in policy.trainable_parameters()}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    enc = policy.tokenizer(["Question: What is 2 + 2?\nAnswer: 4."], return_tensors="pt")
    logits, values = forward(policy, enc["input_ids"], enc["attention_mask"], with_values=True)
    assert values.dtype == torch.float32 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("lora_r", [0, 4])
def test_reward_backbone_trains_in_float32_or_lora_over_bfloat16(
    demo_model_path: Path, lora_r: int
) -> None:
    model, _ = load_backbone(str(demo_model_path), "cpu", lora_r=lora_r, dtype="bfloat16")
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trained == {torch.float32}  # AdamW on bfloat16 weights would round updates away
    head = {p.dtype for n, p in model.named_parameters() if "score" in n}
    assert head == {torch.float32}
    base = {p.dtype for n, p in model.named_parameters() if "score" not in n and "lora" not in n}
    assert base == {torch.float32 if lora_r == 0 else torch.bfloat16}


@pytest.mark.parametrize("reward_lora_r", [0, 4])
def test_whole_retrain_and_ppo_round_in_bfloat16(
    tmp_path: Path, demo_model_path: Path, reward_lora_r: int
) -> None:
    torch.manual_seed(0)
    db = fresh_db(tmp_path)
    oracle_rankings(db, 40)
    settings = {"dtype": "bfloat16", "reward_lora_r": reward_lora_r}
    reward = run_train_reward(
        job_context(db, tmp_path, demo_model_path, "train_reward", **settings)
    )
    assert reward["version"] == 1
    assert all(
        torch.isfinite(torch.tensor(reward[k])) for k in ("final_loss", "heldout_nll", "log_nu")
    )
    scorer, _, _ = load_reward_model(latest_version(db, "reward")["path"], "cpu", "bfloat16")
    # the default form: the causal LM (its likelihood prior) in bf16, head and weight float32
    assert scorer.score.weight.dtype == scorer.lm_weight.dtype == torch.float32
    assert scorer.lm.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16

    ctx = job_context(db, tmp_path, demo_model_path, "ppo_round", **settings)
    result = ppo_round.run_ppo_round(ctx)
    live = live_policy(db, "demo")
    assert live["version"] == result["version"] and Path(live["path"]).is_dir()
    losses = [
        m["value"]
        for m in jobs.job_metrics(db, ctx.job.id)
        if m["name"] in {"policy_loss", "value_loss", "reward", "kl"}
    ]
    assert len(losses) == 4 * ctx.settings.ppo_steps
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert result["kl_before"] == pytest.approx(0.0, abs=1e-6)  # fresh adapter = reference


def test_loader_holds_the_base_in_the_requested_dtype(demo_model_path: Path) -> None:
    model, _ = load_causal_lm(str(demo_model_path), "cpu", "bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
