"""The LoRA policy: one base copy serving policy and reference, versions saved whole, exports that
load with the libraries alone, and the live pointer's roll back."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from store_helpers import fresh_db
from transformers import AutoModelForCausalLM

from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.ppo.export import adapter_zip, merged_zip
from rlhf_loop.ppo.math import ema_update
from rlhf_loop.ppo.policy import (
    REFERENCE,
    forward,
    load_policy,
    new_policy,
    reference_logits,
    save_policy,
)
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
