"""The policy's final norm, trained beside the adapter: it is the policy's temperature, the
reference keeps the base's, it travels with the saved adapter and the merged export, and it
trains on its own learning rate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from chat_models import FAMILIES, build_chat_model
from ppo_helpers import reference_logits
from transformers import AutoModelForCausalLM

from rlhf_loop.ppo.policy import (
    final_norm_name,
    forward,
    load_policy,
    merged_model,
    new_policy,
    save_policy,
)


def _inputs(policy) -> tuple[torch.Tensor, torch.Tensor]:
    enc = policy.tokenizer(["Q: What is 2 + 3?\nA: 5."], return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _saved_norm(policy) -> torch.nn.Module:
    [module] = [m for n, m in policy.model.named_modules() if n.endswith("modules_to_save.default")]
    return module


def test_the_final_norm_is_found_in_each_family(tmp_path: Path, demo_model_path: Path) -> None:
    gpt2 = AutoModelForCausalLM.from_pretrained(demo_model_path)
    assert final_norm_name(gpt2) == "transformer.ln_f"
    for family in FAMILIES:
        model = AutoModelForCausalLM.from_pretrained(build_chat_model(family, tmp_path / family))
        assert final_norm_name(model) == "model.norm"
    assert final_norm_name(torch.nn.Linear(2, 2)) is None


def test_the_norm_gain_is_the_temperature_and_the_reference_keeps_the_base(
    demo_model_path: Path,
) -> None:
    """GPT-2's head has no bias: doubling the trained norm's gain and bias doubles every logit
    (temperature 1/2), which no LoRA update behind the norm could do; the reference (adapter
    off) still reads the base's norm."""
    policy = new_policy(str(demo_model_path), "cpu", 4, train_norm=True)
    ids, mask = _inputs(policy)
    with torch.no_grad():
        before, _ = forward(policy, ids, mask, with_values=False)
        norm = _saved_norm(policy)
        norm.weight.mul_(2.0)
        norm.bias.mul_(2.0)
        after, _ = forward(policy, ids, mask, with_values=False)
        reference = reference_logits(policy, ids, mask)
    assert torch.allclose(after, 2 * before, atol=1e-4)
    assert torch.allclose(reference, before, atol=1e-5)


def test_the_trained_norm_saves_reloads_and_merges(tmp_path: Path, demo_model_path: Path) -> None:
    policy = new_policy(str(demo_model_path), "cpu", 4, train_norm=True)
    with torch.no_grad():
        _saved_norm(policy).weight.mul_(1.5)
    ids, mask = _inputs(policy)
    with torch.no_grad():
        expected, _ = forward(policy, ids, mask, with_values=False)
    version = save_policy(policy, tmp_path / "v1", {"lora_r": 4})
    again = load_policy(str(demo_model_path), version, "cpu")
    merged = AutoModelForCausalLM.from_pretrained(
        merged_model(str(demo_model_path), version, tmp_path / "merged")
    )
    with torch.no_grad():
        reloaded, _ = forward(again, ids, mask, with_values=False)
        plain = merged(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(reloaded, expected, atol=1e-4)
    assert torch.allclose(plain, expected, atol=1e-4)


def test_the_norm_trains_on_its_own_rate_and_stays_float32(demo_model_path: Path) -> None:
    policy = new_policy(str(demo_model_path), "cpu", 4, dtype="bfloat16", train_norm=True)
    adapter, norm = policy.optimiser_groups(1e-3, 3e-2)
    assert adapter["lr"] == 1e-3 and norm["lr"] == 3e-2
    assert len(norm["params"]) == 2  # the LayerNorm's gain and bias
    assert {p.dtype for p in norm["params"]} == {torch.float32}
    ids, mask = _inputs(policy)
    logits, _ = forward(policy, ids, mask, with_values=False)  # a float32 norm over bf16 runs
    assert torch.isfinite(logits).all()
    frozen = new_policy(str(demo_model_path), "cpu", 4, train_norm=False)
    assert len(frozen.optimiser_groups(1e-3, 3e-2)) == 1  # nothing beside the adapter


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_bfloat16_chat_model_runs_with_a_float32_norm(tmp_path: Path, family: str) -> None:
    path = build_chat_model(family, tmp_path / family)
    policy = new_policy(str(path), "cpu", 4, dtype="bfloat16", train_norm=True)
    ids, mask = _inputs(policy)
    logits, values = forward(policy, ids, mask, with_values=True)
    assert torch.isfinite(logits).all() and values.dtype == torch.float32
