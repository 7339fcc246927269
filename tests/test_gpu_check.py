"""bench/gpu_check.py's arithmetic: the GPU table, the PPO step's FLOP count and MFU (the GPU
run itself needs a lent GPU; its code paths run on CPU with ``--device cpu --quick``)."""

from __future__ import annotations

import pytest

from bench.gpu_check import LARGE_SPEC, peak_tflops, ppo_mfu, ppo_step_flops


def step(step_s: float, update_s: float, passes: int = 2) -> dict:
    return {
        "sequences": 4,
        "prompt_positions": 10,
        "distinct_prompt_tokens": 14,  # 2 prompts of 7 real tokens, 2 samples each
        "rollout_positions": 6,
        "rollout_tokens": 20,
        "old_forward_passes": passes,
        "step_s": step_s,
        "update_s": update_s,
    }


def test_peak_from_the_device_name_or_the_override() -> None:
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA H100 PCIe", override=756.0) == 756.0
    assert peak_tflops("x86_64") is None


def test_step_flops_count_each_pass_on_real_tokens() -> None:
    flops = ppo_step_flops(params=100, reward_params=50, step=step(1.0, 0.5), epochs=2)
    # each distinct prompt once, then the responses: 14 + 20 tokens, no padding
    assert flops["rollout"] == 2 * 100 * 34
    assert flops["score"] == 2 * 50 * 34
    # update: reference + policy forward (2 each) + 2 training epochs (6 each)
    assert flops["update"] == (2 * 2 + 6 * 2) * 100 * 34
    # a float32 base keeps the sampler's log-probs: one forward pass fewer
    fewer = ppo_step_flops(100, 50, step(1.0, 0.5, passes=1), 2)["update"]
    assert flops["update"] - fewer == 2 * 100 * 34


def test_mfu_skips_the_warm_up_and_needs_a_peak() -> None:
    steps = [step(100.0, 100.0), step(1.0, 0.5), step(1.0, 0.5)]
    result = ppo_mfu(steps, params=100, reward_params=50, epochs=2, peak=1e-9)  # 1000 FLOP/s
    total = 2 * 100 * 34 + 2 * 50 * 34 + 16 * 100 * 34
    assert result["step_flops"] == total
    assert result["step_mfu"] == pytest.approx(total / 1.0 / 1000)
    assert result["update_mfu"] == pytest.approx(16 * 100 * 34 / 0.5 / 1000)
    assert ppo_mfu(steps, 100, 50, 2, None)["step_mfu"] is None


def test_larger_model_is_about_300m() -> None:
    weights = 12 * LARGE_SPEC.n_layer * LARGE_SPEC.n_embd**2
    assert 250e6 < weights < 350e6
