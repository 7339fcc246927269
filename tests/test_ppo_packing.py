"""PPO's packed forward passes (``ppo.packing``): each prompt of a minibatch read once for its
samples' responses, under a block mask, with positions restarting per response, and the LM head
run only where a response token is predicted.

Packing is only worth having if it changes nothing PPO sees, so the tests hold it to the plain
padded batch: the exact layout on a hand-made rollout (a wrong column would silently train on
the wrong token), the same log-probs, values and gradients on real rollouts of GPT-2 (the demo),
Llama and Qwen2 (rotary positions, chat templates), the reference's log-probs, bfloat16, the
models that must keep the plain batch (another attention kernel, scaled logits), minibatches
that keep a prompt's samples together, and the first PPO ratio at exactly 1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from chat_models import build_chat_model
from ppo_helpers import reference_logits
from torch.utils.hooks import RemovableHandle

from rlhf_loop.ppo import packing
from rlhf_loop.ppo.math import (
    FixedKL,
    RunningMoments,
    entropy_from_logits,
    logprobs_from_logits,
    minibatch_indices,
)
from rlhf_loop.ppo.packing import (
    ResponseOutputs,
    pack_responses,
    packs_responses,
    reference_logprobs,
    response_outputs,
)
from rlhf_loop.ppo.policy import Policy, forward, new_policy, reference_weights
from rlhf_loop.ppo.rollout import Rollout, rollout
from rlhf_loop.ppo.rollout_sampling import SampleConfig
from rlhf_loop.ppo.step import Optimisation, PPOHyper, ppo_step
from rlhf_loop.reward.shared_prefix import block_causal_mask

# Three prompts of different lengths (left padding differs per prompt).
PROMPTS = ["What is 2 + 3?", "Tell me a long story about cats and dogs, please.", "Hi?"]
ROWS = torch.tensor([4, 1, 5, 0, 2])  # a shuffled subset: siblings apart and out of order


# -- a hand-made rollout ------------------------------------------------------------------------


def _hand_rollout() -> Rollout:
    """Rows 0 and 2 answer prompt "a" ([11, 12, 13]), row 1 prompt "b" ([21, 22], left-padded);
    responses of lengths 3, 1 and 2, right-padded with 0."""
    return Rollout(
        prompts=["a", "b", "a"],
        query_ids=torch.tensor([[11, 12, 13], [0, 21, 22], [11, 12, 13]]),
        query_mask=torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1]]),
        response_ids=torch.tensor([[31, 32, 33], [41, 0, 0], [51, 52, 0]]),
        response_mask=torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]),
        eos_found=torch.tensor([True, True, True]),
        texts=["x", "y", "z"],
        sample_logprobs=torch.zeros(3, 3),
    )


def _at(packed: packing.PackedResponses) -> list[list[tuple[int, int]]]:
    rows, columns = (t.tolist() for t in packed.at)
    return [list(zip(r, c, strict=True)) for r, c in zip(rows, columns, strict=True)]


def test_a_hand_made_rollout_packs_each_prompt_once_then_its_responses() -> None:
    batch = _hand_rollout()
    packed = pack_responses(batch, torch.arange(3), width=11)  # exactly fits: one row
    assert packed.input_ids.tolist() == [[11, 12, 13, 31, 32, 33, 51, 52, 21, 22, 41]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 3, 4, 0, 1, 2]]
    assert packed.groups.tolist() == [[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert packed.members.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 1]]
    # response token t is predicted at the prompt's last column (t = 0), then at token t - 1;
    # past a response's end the column repeats (its own group's, never a neighbour's)
    assert _at(packed) == [
        [(0, 2), (0, 3), (0, 4)],
        [(0, 9), (0, 9), (0, 9)],
        [(0, 2), (0, 6), (0, 6)],
    ]
    inputs = packed.model_inputs()
    assert inputs["attention_mask"].shape == (1, 1, 11, 11)
    assert torch.equal(inputs["position_ids"], packed.position_ids)

    mask = block_causal_mask(packed.groups, packed.members)[0, 0]
    seen = [mask[q].nonzero().squeeze(-1).tolist() for q in range(11)]
    assert seen[4] == [0, 1, 2, 3, 4]  # 32: its prompt, 31 and itself
    assert seen[7] == [0, 1, 2, 6, 7]  # 52: its prompt and 51, not its sibling 31-33
    assert seen[10] == [8, 9, 10]  # 41: prompt "b" only, nothing of group "a"
    assert seen[2] == [0, 1, 2]  # the prompt sees no response


def test_the_rows_order_sets_the_groups_order_and_the_outputs_order() -> None:
    packed = pack_responses(_hand_rollout(), torch.tensor([1, 2, 0]), width=100)
    assert packed.input_ids.tolist() == [[21, 22, 41, 11, 12, 13, 51, 52, 31, 32, 33]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 3, 4, 5]]
    assert packed.groups.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]]
    assert packed.members.tolist() == [[0, 0, 1, 0, 0, 0, 1, 1, 2, 2, 2]]
    assert _at(packed) == [
        [(0, 1), (0, 1), (0, 1)],
        [(0, 5), (0, 6), (0, 6)],
        [(0, 5), (0, 8), (0, 9)],
    ]


def test_groups_past_the_width_go_to_rows_of_their_own() -> None:
    """Group "a" needs 8 positions, "b" 3: at width 10 they cannot share a row; at width 6 "a"
    alone is over the width and still gets one row, never split."""
    for width in (10, 6):
        packed = pack_responses(_hand_rollout(), torch.arange(3), width)
        assert packed.input_ids.tolist() == [
            [11, 12, 13, 31, 32, 33, 51, 52],
            [21, 22, 41, 0, 0, 0, 0, 0],
        ]
        assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 3, 4], [0, 1, 2, 0, 0, 0, 0, 0]]
        assert packed.groups.tolist() == [[0] * 8, [0, 0, 0, -1, -1, -1, -1, -1]]
        assert packed.members.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 1, -1, -1, -1, -1, -1]]
        assert _at(packed) == [
            [(0, 2), (0, 3), (0, 4)],
            [(1, 1), (1, 1), (1, 1)],
            [(0, 2), (0, 6), (0, 6)],
        ]
    mask = block_causal_mask(packed.groups, packed.members)[1, 0]
    assert mask[2].tolist() == [True, True, True, False, False, False, False, False]
    for q in range(3, 8):  # padding sees only itself, and nothing sees padding
        assert mask[q].nonzero().squeeze(-1).tolist() == [q]
        assert mask[:, q].nonzero().squeeze(-1).tolist() == [q]


def test_groups_spread_over_the_fewest_rows_of_near_equal_length() -> None:
    """260 positions at width 256 make two rows of ~130, not one of 256 and a short one padded
    to 256; a group longer than the width gets a row; a row keeps its groups' order."""
    sizes = [40, 30, 35, 25, 45, 20, 30, 35]  # 260
    rows = packing._balanced_rows(sizes, 256)
    assert len(rows) == 2 and sorted(g for row in rows for g in row) == list(range(8))
    lengths = [sum(sizes[g] for g in row) for row in rows]
    assert max(lengths) - min(lengths) <= 10
    assert all(row == sorted(row) for row in rows)
    assert packing._balanced_rows(sizes, 1000) == [list(range(8))]
    assert packing._balanced_rows([300, 10, 10], 256) == [[0], [1, 2]]


# -- real rollouts: packed == plain -------------------------------------------------------------


def _policy(path: Path, lora_r: int, dtype: str = "float32") -> Policy:
    """A policy whose adapter (LoRA B off zero), trained final norm and value head all matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # LoRA's A is drawn from the global generator
        torch.manual_seed(0)
        policy = new_policy(str(path), "cpu", lora_r, dtype=dtype, train_norm=True)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if ("lora_B" in name or "modules_to_save" in name) and p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p.dtype))
        head = policy.value_head.weight
        head.copy_(0.1 * torch.randn(head.shape, generator=generator))
    return policy


def _rollout(policy: Policy) -> Rollout:
    """Two samples per prompt; then row 1 cut to one token and row 3 to four, so every batch
    has right padding of different lengths (a random-weight model never ends on its own)."""
    batch = rollout(
        policy, PROMPTS, 2, SampleConfig(10, temperature=0.8), torch.Generator().manual_seed(3)
    )
    assert len(set(batch.query_mask.sum(-1).tolist())) == 3  # three prompt lengths
    mask = batch.response_mask.clone()
    mask[1, 1:] = 0
    mask[3, 4:] = 0
    ids = batch.response_ids.masked_fill(mask == 0, policy.tokenizer.pad_token_id)
    return dataclasses.replace(batch, response_ids=ids, response_mask=mask)


def _from_logits(
    batch: Rollout, rows: torch.Tensor, logits: torch.Tensor, values: torch.Tensor | None
) -> ResponseOutputs:
    tokens, temperature = batch.response_ids[rows], batch.temperature
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach(), temperature=temperature)
    return ResponseOutputs(
        logprobs_from_logits(logits, tokens, temperature=temperature), values, entropy
    )


def _plain(
    policy: Policy, batch: Rollout, rows: torch.Tensor, with_values: bool, scale: float = 1.0
) -> ResponseOutputs:
    """What the padded batch gives (``scale``: its logits multiplied first)."""
    logits, values = forward(policy, batch.input_ids[rows], batch.attention_mask[rows], with_values)
    values = batch.response_slice(values) if values is not None else None
    return _from_logits(batch, rows, scale * batch.response_slice(logits), values)


def _assert_same(
    mine: ResponseOutputs, theirs: ResponseOutputs, mask: torch.Tensor, atol: float = 1e-5
) -> None:
    """Equal at the real response tokens; either may hold anything past a response's end."""
    torch.testing.assert_close(mine.logprobs[mask], theirs.logprobs[mask], atol=atol, rtol=0)
    if theirs.values is not None:
        assert mine.values is not None
        torch.testing.assert_close(mine.values[mask], theirs.values[mask], atol=atol, rtol=0)
    if mine.entropy is not None and theirs.entropy is not None:
        torch.testing.assert_close(mine.entropy[mask], theirs.entropy[mask], atol=atol, rtol=0)


def _grads(policy: Policy, out: ResponseOutputs, mask: torch.Tensor) -> list[torch.Tensor]:
    assert out.values is not None
    loss = out.logprobs[mask].sum() + out.values[mask].sum()
    return list(torch.autograd.grad(loss, policy.trainable_parameters()))


def _input_shapes(policy: Policy) -> tuple[list[tuple[int, ...]], RemovableHandle]:
    """Records the shape of every ``input_ids`` the model is called with."""
    shapes: list[tuple[int, ...]] = []
    handle = policy.model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    return shapes, handle


@pytest.fixture(params=["demo", "llama", "qwen2"])
def model_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "demo":
        return request.getfixturevalue("demo_model_path")
    return build_chat_model(request.param, tmp_path / request.param)


def test_packed_outputs_and_gradients_are_the_plain_batchs(model_path: Path) -> None:
    """GPT-2 (learned positions, several groups in a 64-wide row) and Llama / Qwen2 (rotary
    positions, 32 wide: a group per row). Every family rolls out, so all use real rollouts."""
    policy = _policy(model_path, lora_r=4)
    batch = _rollout(policy)
    assert packs_responses(policy)
    mask = batch.response_mask[ROWS].bool()

    shapes, handle = _input_shapes(policy)
    packed = response_outputs(policy, batch, ROWS, with_values=True, with_entropy=True)
    handle.remove()
    rows, width = shapes[0]  # one call, on fewer positions than the padded batch
    assert len(shapes) == 1 and rows * width < len(ROWS) * batch.input_ids.shape[1]
    assert rows == (2 if policy.model.config.model_type == "gpt2" else 3)  # see the docstring
    assert packed.values is not None and packed.entropy is not None
    assert packed.logprobs.shape == packed.values.shape == packed.entropy.shape == mask.shape
    assert not packed.entropy.requires_grad
    plain = _plain(policy, batch, ROWS, with_values=True)
    _assert_same(packed, plain, mask)
    assert plain.values[mask].std() > 1e-3 and plain.logprobs[mask].std() > 1e-3
    for out in (packed.logprobs, packed.values, packed.entropy):  # past the end: 0, documented
        assert torch.all(out[~mask] == 0)

    packed_grads, plain_grads = _grads(policy, packed, mask), _grads(policy, plain, mask)
    assert len(packed_grads) > 3
    for packed_grad, plain_grad in zip(packed_grads, plain_grads, strict=True):
        scale = plain_grad.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(packed_grad, plain_grad, atol=1e-5 * scale, rtol=1e-4)

    with torch.no_grad(), reference_weights(policy):
        reference = response_outputs(policy, batch, ROWS, with_values=False, with_entropy=True)
    assert reference.values is None
    plain_reference = batch.response_slice(
        reference_logits(policy, batch.input_ids, batch.attention_mask)
    )
    expected = _from_logits(batch, torch.arange(len(batch.texts)), plain_reference, None)
    subset = ResponseOutputs(expected.logprobs[ROWS], None, expected.entropy[ROWS])
    _assert_same(reference, subset, mask)
    assert (reference.logprobs - plain.logprobs.detach())[mask].abs().max() > 1e-3  # not policy
    whole_mask = batch.response_mask.bool()  # the step's reference pass: every row
    torch.testing.assert_close(
        reference_logprobs(policy, batch)[whole_mask],
        expected.logprobs[whole_mask],
        atol=1e-5,
        rtol=0,
    )


def test_bfloat16_packed_outputs_agree_with_the_plain_batch(demo_model_path: Path) -> None:
    """The GPU's dtype, forced on the CPU: the two layouts round differently, so the bar is
    bfloat16's; and both stay near the float32 policy's log-probs."""
    policy = _policy(demo_model_path, lora_r=8, dtype="bfloat16")
    assert not policy.float32_base and packs_responses(policy)
    batch = _rollout(policy)
    mask = batch.response_mask[ROWS].bool()
    with torch.no_grad():
        packed = response_outputs(policy, batch, ROWS, with_values=True)
        plain = _plain(policy, batch, ROWS, with_values=True)
    _assert_same(packed, plain, mask, atol=0.05)
    assert (packed.logprobs - plain.logprobs)[mask].abs().mean() < 0.005

    exact = _policy(demo_model_path, lora_r=8)
    with torch.no_grad():
        exact_out = response_outputs(exact, batch, ROWS, with_values=True)
    _assert_same(packed, exact_out, mask, atol=0.1)


# -- models that keep the plain batch -----------------------------------------------------------


def _eager_policy(path: Path) -> Policy:
    """Eager attention reads additive masks, not the boolean block mask."""
    policy = _policy(path, lora_r=4)
    policy.model.config._attn_implementation = "eager"
    assert not packs_responses(policy)
    return policy


def test_another_attention_kernel_keeps_the_plain_batch(demo_model_path: Path) -> None:
    """The policy falls back to the padded batch, and its outputs are still the packed
    policy's."""
    packed_policy = _policy(demo_model_path, lora_r=4)
    batch = _rollout(packed_policy)
    assert packs_responses(packed_policy)
    with torch.no_grad():
        packed = response_outputs(packed_policy, batch, ROWS, True, with_entropy=True)

    eager = _eager_policy(demo_model_path)
    shapes, handle = _input_shapes(eager)
    with torch.no_grad():
        fallback = response_outputs(eager, batch, ROWS, True, with_entropy=True)
    handle.remove()
    assert shapes == [tuple(batch.input_ids[ROWS].shape)]  # the padded batch: a row a sample
    mask = batch.response_mask[ROWS].bool()
    with torch.no_grad():
        _assert_same(fallback, _plain(eager, batch, ROWS, True), mask, atol=0.0)
    _assert_same(fallback, packed, mask)


def test_the_plain_fallback_gives_the_reference_log_probs(demo_model_path: Path) -> None:
    """The step's reference pass asks for no values; on a model that keeps the plain batch it
    must still give the reference's log-probs (every ``ppo_step`` takes this pass)."""
    eager = _eager_policy(demo_model_path)
    batch = _rollout(eager)
    with torch.no_grad(), reference_weights(eager):
        expected = _plain(eager, batch, torch.arange(len(batch.texts)), with_values=False)
    mask = batch.response_mask.bool()
    reference = reference_logprobs(eager, batch)
    torch.testing.assert_close(reference[mask], expected.logprobs[mask], atol=0.0, rtol=0)


def test_logits_that_are_not_the_heads_projection_keep_the_plain_batch(
    demo_model_path: Path,
) -> None:
    """Logits scaled after the head (as Granite's are): the packed path's head on the hidden
    state would miss the scale, so the check at first use sends the model to the plain batch."""
    policy = _policy(demo_model_path, lora_r=4)
    batch = _rollout(policy)
    mask = batch.response_mask[ROWS].bool()
    with torch.no_grad():
        unscaled = _plain(policy, batch, ROWS, True, scale=2.0)  # before the model is checked

    def scaled(_: torch.nn.Module, __: Any, out: Any) -> Any:
        out.logits = 2.0 * out.logits
        return out

    packing._PACKS.pop(policy.model, None)  # checked at first use, with the scale in place
    handle = policy.model.get_base_model().register_forward_hook(scaled)
    try:
        assert not packs_responses(policy)
        with torch.no_grad():
            fallback = response_outputs(policy, batch, ROWS, True, with_entropy=True)
    finally:
        handle.remove()
    _assert_same(fallback, unscaled, mask)
    packing._PACKS.pop(policy.model)
    assert packs_responses(policy)  # unscaled, the same model is checked again and packs
    with torch.no_grad():
        packed = response_outputs(policy, batch, ROWS, with_values=True)
    assert (packed.logprobs - fallback.logprobs)[mask].abs().max() > 1e-2  # the scale mattered


# -- minibatches that keep a prompt's samples together ------------------------------------------


def test_minibatches_keep_each_groups_indices_next_to_each_other() -> None:
    groups = torch.tensor([3, 0, 3, 1, 0, 2, 1, 3, 2, 0, 4])  # uneven sizes, interleaved
    orders = []
    for seed in (0, 1, 2):
        batches = minibatch_indices(len(groups), 4, torch.Generator().manual_seed(seed), groups)
        assert [len(b) for b in batches] == [4, 4, 3]
        order = torch.cat(batches).tolist()
        assert sorted(order) == list(range(len(groups)))
        labels = groups[order].tolist()
        runs = [g for k, g in enumerate(labels) if k == 0 or labels[k - 1] != g]
        assert sorted(runs) == sorted(set(labels)), labels  # one run per group
        for g in set(labels):  # a group's indices in their original order
            members = (groups == g).nonzero().flatten().tolist()
            assert [i for i in order if groups[i] == g] == members
        orders.append(runs)
    assert len({tuple(runs) for runs in orders}) > 1  # the groups are shuffled per seed
    again = minibatch_indices(len(groups), 4, torch.Generator().manual_seed(0), groups)
    runs_again = groups[torch.cat(again)].unique_consecutive().tolist()
    assert runs_again == orders[0]  # the same seed, the same order


# -- the first PPO update starts at ratio 1 -----------------------------------------------------


def test_the_first_minibatchs_packed_log_probs_are_the_decodes(demo_model_path: Path) -> None:
    """The step's new log-probs come from the packed pass and its old ones from the sampler's
    decode: before any update they are the same distribution, so the first minibatch's
    approx_kl is ~0 and nothing is clipped."""
    policy = _policy(demo_model_path, lora_r=8)
    batch = rollout(
        policy, PROMPTS, 2, SampleConfig(10, temperature=0.7), torch.Generator().manual_seed(4)
    )
    assert batch.policy_logprobs is not None and packs_responses(policy)
    state = Optimisation(
        torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3),
        FixedKL(0.05),
        RunningMoments(),
        torch.Generator().manual_seed(0),
    )
    hyper = PPOHyper(epochs=1, minibatch=len(batch.texts))
    scores = torch.tensor([1.0, -1.0, 0.5, 0.0, -0.5, 2.0])
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    shapes, handle = _input_shapes(policy)
    stats = ppo_step(policy, batch, scores, state, hyper)
    handle.remove()
    padded = batch.input_ids.numel()
    assert len(shapes) == 2 and all(r * w < padded for r, w in shapes)  # reference, update
    assert abs(stats["approx_kl"]) < 1e-4
    assert stats["clip_frac"] == 0.0
    assert stats["kl"] > 1e-3  # the adapter is off the reference: the KL term is live
    after = policy.trainable_parameters()
    assert any(not torch.equal(a, p) for a, p in zip(before, after, strict=True))  # it stepped
