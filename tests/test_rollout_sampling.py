"""The rollout sampler: greedy is ``generate`` token for token, sampling draws from the warped
softmax HF defines, and the output layout is what PPO slices by."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlhf_loop.model.loader import load_causal_lm
from rlhf_loop.model.prompting import format_prompt
from rlhf_loop.ppo import rollout_sampling
from rlhf_loop.ppo.rollout_sampling import RolloutTokens, SampleConfig, draw, sample_tokens

# Prompts of different lengths (so the batch is really left-padded), some the demo model ends
# quickly and some it rambles on, so rows stop at different steps or not at all.
PROMPTS = [
    "What is 3 + 4?",
    "What colour is the sky?",
    "Tell me about cats.",
    "hello",
    "What is 12 * 7? Explain every step of the working, then say it again in other words.",
    "Why do birds sing?",
]
DRAWS = 2500  # first tokens per distribution check (the prefill of these rows is most of the time)


@pytest.fixture(scope="module")
def demo(demo_model_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_causal_lm(str(demo_model_path), "cpu")


def encode(tok: PreTrainedTokenizerBase, prompts: list[str]) -> dict[str, torch.Tensor]:
    tok.padding_side = "left"
    texts = [format_prompt(tok, p) for p in prompts]
    return dict(tok(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def ours(model, batch, config: SampleConfig, eos, pad, seed: int | None = None) -> RolloutTokens:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return sample_tokens(
        model, batch["input_ids"], batch["attention_mask"], config, eos, pad, generator
    )


def greedy_generate(model, batch, max_new: int, eos: int, pad: int) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(
            **batch, do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad
        )
    return out[:, batch["input_ids"].shape[1] :]


def expected_mask(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """1 up to and including the first end token, by a plain per-row scan."""
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(tokens.tolist()):
        end = row.index(eos) + 1 if eos in row else len(row)
        mask[i, :end] = 1
    return mask


@pytest.mark.parametrize("max_new", [1, 6, 32])
def test_greedy_is_generate_token_for_token(demo, max_new: int) -> None:
    model, tok = demo
    batch = encode(tok, PROMPTS)
    assert (batch["attention_mask"] == 0).any(), "the batch must be left-padded"
    out = ours(model, batch, SampleConfig(max_new, greedy=True), tok.eos_token_id, tok.pad_token_id)
    theirs = greedy_generate(model, batch, max_new, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(out.response_ids, theirs)
    assert torch.equal(out.response_mask, expected_mask(theirs, tok.eos_token_id))
    assert out.eos_found.tolist() == [tok.eos_token_id in row for row in theirs.tolist()]


def tiny_model(kind: str) -> PreTrainedModel:
    """Randomly initialised Llama/Qwen2-style models: rotary positions, grouped KV heads."""
    torch.manual_seed(0)
    sizes = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**sizes)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_is_generate_for_llama_and_qwen_style_models(kind: str) -> None:
    model = tiny_model(kind)
    lengths = [3, 9, 5, 12]
    width = max(lengths)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, n in enumerate(lengths):
        input_ids[i, width - n :] = torch.randint(3, 96, (n,), generator=gen)
        attention_mask[i, width - n :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    out = ours(model, batch, SampleConfig(20, greedy=True), 1, 0)
    assert torch.equal(out.response_ids, greedy_generate(model, batch, 20, 1, 0))


def test_peft_wrapped_model_decodes_through_its_adapter(demo_model_path: Path) -> None:
    model, tok = load_causal_lm(str(demo_model_path), "cpu")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], lora_dropout=0.0))
    with torch.no_grad():  # a non-zero adapter, so decoding without it would differ
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(3))
    lora.eval()
    batch = encode(tok, PROMPTS)
    out = ours(lora, batch, SampleConfig(16, greedy=True), tok.eos_token_id, tok.pad_token_id)
    theirs = greedy_generate(lora, batch, 16, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(out.response_ids, theirs)
    with lora.disable_adapter():
        base = ours(lora, batch, SampleConfig(16, greedy=True), tok.eos_token_id, tok.pad_token_id)
    assert not torch.equal(base.response_ids, out.response_ids)


def test_sampling_is_reproducible_with_a_seeded_generator(demo) -> None:
    model, tok = demo
    batch = encode(tok, PROMPTS * 4)
    config = SampleConfig(24, temperature=1.0, top_p=0.95)
    first, again, other = (
        ours(model, batch, config, tok.eos_token_id, tok.pad_token_id, seed)
        for seed in (11, 11, 12)
    )
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.equal(first.response_mask, again.response_mask)
    assert not torch.equal(first.response_ids, other.response_ids)


def test_response_layout_for_sampled_rows(demo) -> None:
    """Right-padded to the longest response, pad after each end token, mask through the end."""
    model, tok = demo
    batch = encode(tok, PROMPTS * 4)
    out = ours(model, batch, SampleConfig(12, top_p=0.95), tok.eos_token_id, tok.pad_token_id, 5)
    ids, mask = out.response_ids, out.response_mask
    assert ids.shape == mask.shape and ids.shape[0] == len(PROMPTS) * 4
    assert int(mask.sum(1).max()) == ids.shape[1] <= 12
    assert torch.equal(mask, expected_mask(ids, tok.eos_token_id))
    assert bool((ids[mask == 0] == tok.pad_token_id).all())
    assert out.eos_found.tolist() == [tok.eos_token_id in row for row in ids.tolist()]
    assert out.eos_found.any() and not out.eos_found.all(), "want rows of both kinds"


def test_pad_equal_to_eos_still_masks_through_the_first_end(demo) -> None:
    model, tok = demo
    batch = encode(tok, PROMPTS)
    eos = tok.eos_token_id
    out = ours(model, batch, SampleConfig(32, greedy=True), eos, pad=eos)
    assert torch.equal(out.response_mask, expected_mask(out.response_ids, eos))
    assert out.eos_found.all()


def test_any_of_several_end_tokens_ends_a_row(demo) -> None:
    model, tok = demo
    batch = encode(tok, PROMPTS)
    plain = ours(model, batch, SampleConfig(32, greedy=True), tok.eos_token_id, tok.pad_token_id)
    second = plain.response_ids[0, 1].item()  # the first row's second token ends it now
    both = ours(
        model, batch, SampleConfig(32, greedy=True), [tok.eos_token_id, second], tok.pad_token_id
    )
    assert both.response_mask[0].sum() == 2 and both.eos_found[0]
    rows = plain.response_mask.sum(1) >= both.response_mask.sum(1)
    assert rows.all()


def test_outputs_are_ordinary_tensors_autograd_can_save(demo) -> None:
    model, tok = demo
    out = ours(model, encode(tok, PROMPTS), SampleConfig(8), tok.eos_token_id, tok.pad_token_id, 0)
    assert not any(t.is_inference() for t in (out.response_ids, out.response_mask, out.eos_found))
    weight = torch.ones(out.response_mask.shape, requires_grad=True)
    (weight * out.response_mask).sum().backward()  # an inference tensor would raise here
    assert torch.equal(weight.grad, out.response_mask.float())


def reference_probs(logits: torch.Tensor, config: SampleConfig) -> torch.Tensor:
    """HF's own warpers, in ``generate``'s order, as the independent reference."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return torch.softmax(warpers(None, logits[None].clone())[0], -1)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic over tokens expected >= 5 times (the rest pooled), and its critical
    value at p = 3e-5 (Wilson-Hilferty), so only a real mismatch fails."""
    expected = probs.double() * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big].double(), counts[~big].sum(0, keepdim=True).double()])
    expected = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = expected > 0
    stat = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    df = int(keep.sum()) - 1
    z = 4.0
    critical = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, critical


@pytest.mark.parametrize(
    "config",
    [
        SampleConfig(1, temperature=0.8),
        SampleConfig(1, temperature=1.0, top_k=5),
        SampleConfig(1, temperature=1.0, top_p=0.8),
        SampleConfig(1, temperature=1.3, top_k=12, top_p=0.7),
    ],
    ids=["temperature", "top_k", "top_p", "all_three"],
)
def test_first_token_follows_the_warped_softmax(demo, config: SampleConfig) -> None:
    model, tok = demo
    one = encode(tok, ["What is 3 + 4?"])
    with torch.no_grad():
        logits = model(**one).logits[0, -1]
    target = reference_probs(logits, config)
    batch = {k: v.expand(DRAWS, -1) for k, v in one.items()}
    out = ours(model, batch, config, tok.eos_token_id, tok.pad_token_id, seed=2024)
    counts = torch.bincount(out.response_ids[:, 0], minlength=logits.shape[-1])

    support = target > 0
    assert counts[~support].sum() == 0, "drew a token top-k/top-p excludes"
    assert bool((counts[target >= 0.01] > 0).all()), "never drew a likely allowed token"
    stat, critical = chi_square(counts, target)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f}"
    # The check has power: plain softmax(logits), the untruncated, unscaled distribution, fails.
    assert chi_square(counts, torch.softmax(logits, -1))[0] > critical


def test_draw_never_picks_a_zero_weight() -> None:
    weights = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]]).repeat(500, 1)
    picked = draw(weights, torch.Generator().manual_seed(0))
    assert set(picked[::2].tolist()) == {1, 2}
    assert set(picked[1::2].tolist()) == {4}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_new_tokens=0),
        dict(max_new_tokens=4, temperature=0.0),
        dict(max_new_tokens=4, top_p=0.0),
        dict(max_new_tokens=4, top_p=1.5),
        dict(max_new_tokens=4, top_k=-1),
    ],
)
def test_config_rejects_settings_that_cannot_sample(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SampleConfig(**kwargs)


def test_greedy_ignores_temperature() -> None:
    assert SampleConfig(4, temperature=0.0, greedy=True).greedy


@pytest.mark.parametrize(
    "config",
    [
        SampleConfig(10, temperature=0.5),
        SampleConfig(10, temperature=0.7, top_k=20),
        SampleConfig(10, temperature=1.3, top_p=0.8),
    ],
    ids=["t0.5", "top-k", "top-p"],
)
def test_logprobs_are_those_of_the_distribution_that_drew_each_token(
    demo, config: SampleConfig
) -> None:
    """Each token's log-probability under HF's warped, renormalised softmax at its step."""
    model, tok = demo
    batch = encode(tok, PROMPTS[:3])
    out = ours(model, batch, config, tok.eos_token_id, tok.pad_token_id, seed=4)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1:
        warpers.append(TopPLogitsWarper(config.top_p))
    ids = torch.cat([batch["input_ids"], out.response_ids], 1)
    mask = torch.cat([batch["attention_mask"], out.response_mask], 1)
    with torch.inference_mode():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    start = batch["input_ids"].shape[1] - 1
    for t in range(out.response_ids.shape[1]):
        warped = warpers(ids[:, : start + t + 1], logits[:, start + t].float())
        expected = torch.log_softmax(warped, -1).gather(-1, out.response_ids[:, t, None])[:, 0]
        live = out.response_mask[:, t].bool()
        assert torch.allclose(out.logprobs[live, t], expected[live], atol=1e-4)
        assert (out.logprobs[~live, t] == 0).all()


def test_decoding_passes_the_cache_under_its_current_name(demo) -> None:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; 5.40 drops the old name."""
    model, tok = demo

    class OnlyCurrentNames(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, **kwargs):
            assert "past_key_values" not in kwargs, "the removed argument name was used"
            return self.inner(**kwargs)

    batch = encode(tok, PROMPTS[:2])
    wrapped = ours(OnlyCurrentNames(), batch, SampleConfig(8, greedy=True), tok.eos_token_id, 0)
    direct = ours(model, batch, SampleConfig(8, greedy=True), tok.eos_token_id, 0)
    assert torch.equal(wrapped.response_ids, direct.response_ids)


class PrefillRows(torch.nn.Module):
    """The model, recording how many rows each call fed (the first call is the prefill)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.inner, self.rows = model, []

    def forward(self, **kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        return self.inner(**kwargs)


def test_rows_of_one_prompt_share_its_prefill_and_draw_what_their_own_would(demo) -> None:
    """K samples per prompt: one prefill per prompt, the same tokens under the same generator
    as a prefill per row, and log-probs equal to rounding."""
    model, tok = demo
    batch = {k: v.repeat_interleave(4, 0) for k, v in encode(tok, PROMPTS).items()}
    config = SampleConfig(16, temperature=1.0, top_p=0.95)
    shared_model = PrefillRows(model)
    shared = ours(shared_model, batch, config, tok.eos_token_id, tok.pad_token_id, seed=3)
    per_row_model = PrefillRows(model)
    with mock.patch.object(rollout_sampling, "prompt_groups", lambda ids, mask: None):
        per_row = ours(per_row_model, batch, config, tok.eos_token_id, tok.pad_token_id, seed=3)
    assert (shared_model.rows[0], per_row_model.rows[0]) == (len(PROMPTS), 4 * len(PROMPTS))
    assert torch.equal(shared.response_ids, per_row.response_ids)
    assert len({tuple(r) for r in shared.response_ids.tolist()}) > len(PROMPTS)  # rows differ
    for mine, theirs in [
        (shared.logprobs, per_row.logprobs),
        (shared.policy_logprobs, per_row.policy_logprobs),
    ]:
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_prompt_groups_match_ids_and_mask_and_keep_batch_order() -> None:
    pad = 0
    ids = torch.tensor([[pad, 5, 6], [7, 8, 9], [pad, 5, 6], [pad, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    first, inverse = rollout_sampling.prompt_groups(ids, mask)
    # row 3 has the same ids as row 0 but attends to its first token: a different prompt
    assert torch.equal(ids[first][inverse], ids) and torch.equal(mask[first][inverse], mask)
    assert sorted(first.tolist()) == [0, 1, 3]
    assert inverse[0] == inverse[2] != inverse[3] and inverse[1] == inverse[4]
    assert rollout_sampling.prompt_groups(ids[:2], mask[:2]) is None  # all distinct


@pytest.mark.parametrize(
    "config",
    [
        SampleConfig(10, temperature=0.7),
        SampleConfig(10, temperature=1.2, top_k=8),
        SampleConfig(10, temperature=0.7, top_p=0.8),
        SampleConfig(10, greedy=True),
    ],
    ids=["untruncated", "top-k", "top-p", "greedy"],
)
def test_policy_logprobs_and_values_are_a_fresh_forward_passs(demo, config) -> None:
    """What PPO would recompute: log-probs at the sampling temperature without truncation
    (greedy: temperature 1) and the value head on the last hidden state, to float rounding."""
    model, tok = demo
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.normal_(head.weight, generator=torch.Generator().manual_seed(0))
    batch = {k: v.repeat_interleave(2, 0) for k, v in encode(tok, PROMPTS[:4]).items()}
    out = sample_tokens(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        config,
        tok.eos_token_id,
        tok.pad_token_id,
        torch.Generator().manual_seed(6),
        value_head=lambda hidden: head(hidden).squeeze(-1),
    )
    ids = torch.cat([batch["input_ids"], out.response_ids], 1)
    mask = torch.cat([batch["attention_mask"], out.response_mask], 1)
    with torch.inference_mode():
        full = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
        )
        start, length = batch["input_ids"].shape[1] - 1, out.response_ids.shape[1]
        temperature = 1.0 if config.greedy else config.temperature
        logits = full.logits[:, start : start + length].float() / temperature
        expected = torch.log_softmax(logits, -1).gather(-1, out.response_ids[..., None])[..., 0]
        values = head(full.hidden_states[-1][:, start : start + length]).squeeze(-1)
    live = out.response_mask.bool()
    assert torch.allclose(out.policy_logprobs[live], expected[live], atol=1e-5)
    assert torch.allclose(out.values[live], values[live], atol=1e-5)
    assert (out.policy_logprobs[~live] == 0).all() and (out.values[~live] == 0).all()
    if config.top_k or config.top_p < 1:  # truncated: the sampler's own are renormalised
        assert (out.logprobs[live] > out.policy_logprobs[live] + 1e-3).any()
    elif not config.greedy:
        assert torch.equal(out.logprobs, out.policy_logprobs)
