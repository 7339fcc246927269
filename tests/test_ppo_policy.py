"""The LoRA policy: one base copy serving policy and reference, versions saved whole, exports that
load with the libraries alone, and the live pointer's roll back."""

from __future__ import annotations

import dataclasses
import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from ppo_helpers import reference_logits
from store_helpers import fresh_db
from transformers import AutoModelForCausalLM

from rlhf_loop.model.loader import ModelLoadError, load_causal_lm
from rlhf_loop.ppo.export import adapter_zip, merged_zip
from rlhf_loop.ppo.math import ema_update, logprobs_from_logits
from rlhf_loop.ppo.policy import (
    REFERENCE,
    Policy,
    forward,
    load_policy,
    new_policy,
    save_policy,
)
from rlhf_loop.ppo.rollout import rollout
from rlhf_loop.ppo.rollout_sampling import SampleConfig
from rlhf_loop.ppo.step import old_outputs
from rlhf_loop.sampler import LivePolicy
from rlhf_loop.store.versions import live_policy, register_version, set_live_policy


def _batch(policy, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    policy.tokenizer.padding_side = "left"
    enc = policy.tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _nudge(policy) -> None:
    """Move the adapter away from the identity, as training would."""
    with torch.no_grad():
        for p in policy.adapter_parameters("default"):
            p.add_(0.05 * torch.randn_like(p))


def test_fresh_adapter_is_the_reference_and_training_moves_only_the_policy(
    demo_model_path: Path,
) -> None:
    torch.manual_seed(0)
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4)
    ids, mask = _batch(policy, ["Question: What is 2 + 2?\nAnswer: 4.", "Question: Hi?\nAnswer:"])
    logits, values = forward(policy, ids, mask, with_values=True)
    assert torch.allclose(logits, reference_logits(policy, ids, mask), atol=1e-5)
    assert values.shape == ids.shape and torch.all(values == 0)  # zero-initialised head
    base_weights = sum(p.numel() for p in policy.model.parameters() if not p.requires_grad)
    assert sum(p.numel() for p in policy.trainable_parameters()) < 0.1 * base_weights
    _nudge(policy)
    moved, _ = forward(policy, ids, mask, with_values=False)
    assert not torch.allclose(moved, logits, atol=1e-4)
    assert torch.allclose(reference_logits(policy, ids, mask), logits, atol=1e-5)


def test_ema_reference_trails_the_policy(demo_model_path: Path) -> None:
    torch.manual_seed(0)
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4, ema_reference=True)
    before = [p.clone() for p in policy.adapter_parameters(REFERENCE)]
    _nudge(policy)
    ema_update(policy.adapter_parameters(REFERENCE), policy.adapter_parameters("default"), 0.9)
    for old, ref, cur in zip(
        before,
        policy.adapter_parameters(REFERENCE),
        policy.adapter_parameters("default"),
        strict=True,
    ):
        assert torch.allclose(ref, 0.9 * old + 0.1 * cur, atol=1e-6)
    ids, mask = _batch(policy, ["Question: Hi?\nAnswer:"])
    reference_logits(policy, ids, mask)  # switching adapters must not unfreeze the reference
    assert not any(p.requires_grad for p in policy.adapter_parameters(REFERENCE))
    assert all(p.requires_grad for p in policy.adapter_parameters("default"))


def test_saved_version_reloads_and_exports_load_with_plain_libraries(
    tmp_path: Path, demo_model_path: Path
) -> None:
    torch.manual_seed(0)
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4)
    _nudge(policy)
    with torch.no_grad():
        policy.value_head.bias.fill_(0.5)
    path = save_policy(policy, tmp_path / "policy" / "v1", {"lora_r": 4})
    assert [p.name for p in (tmp_path / "policy").iterdir()] == ["v1"]  # no temp dir left over
    ids, mask = _batch(policy, ["Question: What colour is the sky?\nAnswer: Blue."])
    expected, expected_values = forward(policy, ids, mask, with_values=True)

    again = load_policy(str(demo_model_path), path, "cpu")
    logits, values = forward(again, ids, mask, with_values=True)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(values, expected_values, atol=1e-6)

    with zipfile.ZipFile(io.BytesIO(merged_zip(str(demo_model_path), path))) as archive:
        archive.extractall(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    plain = merged(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    assert torch.allclose(plain, expected, atol=1e-4)
    with zipfile.ZipFile(io.BytesIO(adapter_zip(path))) as archive:
        assert "adapter_config.json" in archive.namelist()


def test_missing_files_refuse_load_rollback_and_keep_the_sampler_serving(
    tmp_path: Path, demo_model_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="policy files are missing"):
        load_policy(str(demo_model_path), tmp_path / "nowhere", "cpu")
    db = fresh_db(tmp_path)
    base = live_policy(db, "demo")
    assert (base["version"], base["path"]) == (0, None)
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4)
    path = save_policy(policy, tmp_path / "v1", {"lora_r": 4})
    register_version(db, "policy", 1, path, "demo", {}, base["id"], live=True)
    sampler = LivePolicy(str(demo_model_path), "cpu")
    assert sampler.current(live_policy(db, "demo"))[2] == 1
    set_live_policy(db, 0)  # roll back to the base
    assert live_policy(db, "demo")["version"] == 0
    shutil.rmtree(path)
    with pytest.raises(ValueError, match="files are missing"):
        set_live_policy(db, 1)
    assert live_policy(db, "demo")["version"] == 0  # the refused roll-forward changed nothing
    db["model_versions"].update(2, {"live": 1})  # as if v1 had been live when its files went
    db["model_versions"].update(1, {"live": 0})
    assert sampler.current(live_policy(db, "demo"))[2] == 1  # already loaded: keeps serving
    fresh = LivePolicy(str(demo_model_path), "cpu")
    with pytest.raises((ModelLoadError, OSError, ValueError)):
        fresh.current(live_policy(db, "demo"))  # nothing loaded yet: the error is the answer


def test_old_logprobs_at_the_sampling_temperature_are_the_samplers_own(
    demo_model_path: Path,
) -> None:
    """PPO's first ratio is 1 only if its log-probs come from the distribution that sampled."""
    torch.manual_seed(0)
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4)
    _nudge(policy)
    prompts = ["What is 2 + 3?", "Tell me about cats.", "What colour is the sky?"]
    config = SampleConfig(max_new_tokens=12, temperature=0.5)
    batch = rollout(policy, prompts, 2, config, torch.Generator().manual_seed(1))
    old_logp, _, ref_logp = old_outputs(policy, batch)
    mask = batch.response_mask.bool()
    assert batch.temperature == 0.5
    assert torch.allclose(old_logp[mask], batch.sample_logprobs[mask], atol=1e-4)
    at_t1 = logprobs_from_logits(
        batch.response_slice(
            forward(policy, batch.input_ids, batch.attention_mask, with_values=False)[0]
        ),
        batch.response_ids,
    )
    assert not torch.allclose(at_t1[mask], batch.sample_logprobs[mask], atol=1e-2)
    assert not torch.allclose(ref_logp[mask], old_logp[mask], atol=1e-3)  # the nudged adapter


def test_truncated_sampling_reports_its_gap_to_the_optimised_distribution(
    demo_model_path: Path,
) -> None:
    """With top-p the sampler's own log-probs exceed the untruncated ones PPO uses."""
    torch.manual_seed(0)
    policy = new_policy(str(demo_model_path), "cpu", lora_r=4)
    config = SampleConfig(max_new_tokens=12, temperature=1.0, top_p=0.5)
    batch = rollout(policy, ["Tell me about cats."], 4, config, torch.Generator().manual_seed(2))
    old_logp, _, _ = old_outputs(policy, batch)
    mask = batch.response_mask.bool()
    assert (batch.sample_logprobs[mask] >= old_logp[mask] - 1e-5).all()
    assert (batch.sample_logprobs[mask] - old_logp[mask]).max() > 0.1


def test_no_dropout_in_rollouts_or_evaluations(tmp_path: Path, demo_model_path: Path) -> None:
    """A model with dropout, left in training mode: a fresh adapter still has KL 0 to the
    reference and scores the same twice (on main the "before" KL read -1.4)."""
    model, tokenizer = load_causal_lm(str(demo_model_path), "cpu")
    model.config.update({"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1})
    model.save_pretrained(tmp_path / "dropout")
    tokenizer.save_pretrained(tmp_path / "dropout")
    policy = new_policy(str(tmp_path / "dropout"), "cpu", lora_r=4)
    policy.model.train()
    prompts = ["What is 2 + 3?", "Tell me about cats."]
    batch = rollout(policy, prompts, 2, SampleConfig(12), torch.Generator().manual_seed(0))
    policy.model.train()
    old_logp, _, ref_logp = old_outputs(policy, batch)
    mask = batch.response_mask.bool()
    # the old log-probs are the rollout's decode's: equal to the reference's pass to rounding
    assert torch.allclose(old_logp[mask], ref_logp[mask], atol=1e-5)
    recomputed = dataclasses.replace(batch, policy_logprobs=None, values=None)
    policy.model.train()
    forward_logp, _, _ = old_outputs(policy, recomputed)  # the forward pass a bf16 base takes
    assert torch.equal(forward_logp, ref_logp)
    policy.model.train()
    again, _, _ = old_outputs(policy, recomputed)
    assert torch.equal(again, forward_logp)


def test_a_base_shipped_as_a_peft_adapter_stays_part_of_the_frozen_base(
    tmp_path: Path, demo_model_path: Path
) -> None:
    """Sampler, policy start and KL reference all serve base + the shipped adapter."""
    base, tokenizer = load_causal_lm(str(demo_model_path), "cpu")
    shipped = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"]))
    with torch.no_grad():
        for name, param in shipped.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(3))
    shipped.save_pretrained(tmp_path / "shipped")
    tokenizer.save_pretrained(tmp_path / "shipped")
    ids, mask = _batch(
        Policy(shipped, torch.nn.Linear(1, 1), tokenizer), ["Question: What is 2 + 2?\nAnswer:"]
    )
    with torch.no_grad():
        expected = shipped.eval()(input_ids=ids, attention_mask=mask).logits
        with shipped.disable_adapter():
            bare = shipped(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(expected, bare, atol=1e-3)

    name = str(tmp_path / "shipped")
    sampler_model, _, _ = LivePolicy(name, "cpu").current({"version": 0, "path": None})
    policy = new_policy(name, "cpu", lora_r=4)
    with torch.no_grad():
        served = sampler_model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(served, expected, atol=1e-4)
    assert torch.allclose(forward(policy, ids, mask, with_values=False)[0], expected, atol=1e-4)
    assert torch.allclose(reference_logits(policy, ids, mask), expected, atol=1e-4)
