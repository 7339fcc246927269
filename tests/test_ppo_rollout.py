"""PPO rollouts: sampled with the adapter merged into a float32 base (whose bits come back
exactly), and the decode's log-probs and values used as the step's old ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from rlhf_loop.ppo.packing import packs_responses
from rlhf_loop.ppo.policy import Policy, merged_adapter, new_policy
from rlhf_loop.ppo.rollout import rollout
from rlhf_loop.ppo.rollout_sampling import SampleConfig
from rlhf_loop.ppo.step import old_outputs
from rlhf_loop.sampler import draw_responses

PROMPTS = ["What is 2 + 3?", "Tell me about cats.", "What colour is the sky?"]


def trained_policy(path: Path, dtype: str = "float32") -> Policy:
    """A policy whose adapter, trained norm and value head are away from their start."""
    torch.manual_seed(0)
    policy = new_policy(str(path), "cpu", lora_r=4, dtype=dtype, train_norm=True)
    with torch.no_grad():
        for p in policy.adapter_parameters("default"):
            p.add_(0.05 * torch.randn_like(p))
        policy.value_head.weight.normal_(std=0.1)
    policy.model.eval()
    return policy


def base_weights(policy: Policy) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in policy.model.named_parameters()
        if "lora_" not in n and "modules_to_save" not in n
    }


def lora_calls(policy: Policy) -> list[int]:
    """Counts calls of the adapter's A matrices (none when the adapter is merged)."""
    calls = [0]
    for module in policy.model.modules():
        if isinstance(module, LoraLayer):
            for lora_a in module.lora_A.values():
                lora_a.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_merged_sampling_draws_what_the_adapter_draws_and_restores_the_base_exactly(
    demo_model_path: Path,
) -> None:
    policy = trained_policy(demo_model_path)
    before = base_weights(policy)
    config = SampleConfig(16, temperature=1.0, top_p=0.95)
    calls = lora_calls(policy)
    merged = rollout(policy, PROMPTS, 3, config, torch.Generator().manual_seed(5))
    assert calls[0] == 0, "sampled through the unmerged adapter"
    after = base_weights(policy)
    assert all(torch.equal(after[n], w) for n, w in before.items()), "the base's bits moved"
    assert not any(m.merged for m in policy.model.modules() if isinstance(m, LoraLayer))

    with torch.no_grad():  # the same draw through the adapter, unmerged
        unmerged = draw_responses(
            policy.model,
            policy.tokenizer,
            PROMPTS,
            3,
            config,
            torch.Generator().manual_seed(5),
            policy.values,
        )
    assert calls[0] > 0
    assert torch.equal(merged.response_ids, unmerged.tokens.response_ids)
    mask = merged.response_mask.bool()
    assert torch.allclose(
        merged.policy_logprobs[mask], unmerged.tokens.policy_logprobs[mask], atol=1e-5
    )
    assert torch.allclose(merged.values[mask], unmerged.tokens.values[mask], atol=1e-5)


def test_old_outputs_take_the_rollouts_own_in_place_of_a_forward_pass(
    demo_model_path: Path,
) -> None:
    """Equal to the forward pass's to float rounding, and one model call (the reference's)
    instead of two."""
    policy = trained_policy(demo_model_path)
    config = SampleConfig(12, temperature=0.7, top_p=0.9)
    batch = rollout(policy, PROMPTS, 2, config, torch.Generator().manual_seed(1))
    assert batch.policy_logprobs is not None and batch.values is not None
    assert packs_responses(policy)  # its one-off check of the model is not counted below
    model_calls = [0]
    policy.model.register_forward_hook(lambda *_: model_calls.__setitem__(0, model_calls[0] + 1))
    reused = old_outputs(policy, batch)
    assert model_calls[0] == 1
    forwarded = old_outputs(policy, dataclasses.replace(batch, policy_logprobs=None, values=None))
    assert model_calls[0] == 3
    mask = batch.response_mask.bool()
    for mine, theirs in zip(reused, forwarded, strict=True):
        assert torch.allclose(mine[mask], theirs[mask], atol=2e-5)
    assert not torch.allclose(reused[0][mask], reused[2][mask], atol=1e-3)  # not the reference
    kept = batch.select(torch.tensor([True, False, True, False, False, True]))
    assert torch.equal(kept.values, batch.values[[0, 2, 5]])
    assert torch.equal(kept.policy_logprobs, batch.policy_logprobs[[0, 2, 5]])


def test_a_bfloat16_base_is_not_merged_and_the_step_recomputes(demo_model_path: Path) -> None:
    """Rounded into bfloat16 weights the update would move log-probs ~0.05 nats, and a bf16
    decode differs from the batched pass by as much, so neither is used there."""
    policy = trained_policy(demo_model_path, "bfloat16")
    before = base_weights(policy)
    calls = lora_calls(policy)
    batch = rollout(policy, PROMPTS, 2, SampleConfig(8), torch.Generator().manual_seed(0))
    assert calls[0] > 0
    assert batch.policy_logprobs is None and batch.values is None
    assert all(torch.equal(base_weights(policy)[n], w) for n, w in before.items())
    old_logp, old_values, _ = old_outputs(policy, batch)
    assert old_logp.shape == old_values.shape == batch.response_ids.shape


def test_an_error_while_merged_still_restores_the_base(demo_model_path: Path) -> None:
    policy = trained_policy(demo_model_path)
    before = base_weights(policy)
    with pytest.raises(RuntimeError, match="mid-sampling"), merged_adapter(policy):
        assert all(m.merged for m in policy.model.modules() if isinstance(m, LoraLayer))
        assert not all(torch.equal(base_weights(policy)[n], w) for n, w in before.items())
        raise RuntimeError("mid-sampling")
    assert not any(m.merged for m in policy.model.modules() if isinstance(m, LoraLayer))
    assert all(torch.equal(base_weights(policy)[n], w) for n, w in before.items())
