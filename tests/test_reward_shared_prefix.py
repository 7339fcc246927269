"""Packed rankings (``reward.shared_prefix``): each ranking's prompt read once for its K
responses gives the rewards, losses and gradients of the plain one-row-per-response batch, for
both reward forms and in bfloat16, including rankings whose rows share nothing (a truncated
prompt), empty answers, answers that share their opening words and mixed K."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from chat_models import build_chat_model
from transformers import BertConfig, BertForSequenceClassification

from rlhf_loop.model.demo_corpus import demo_examples
from rlhf_loop.ppo import scoring
from rlhf_loop.ppo.scoring import score
from rlhf_loop.reward.data import RankingExample, collate, reward_inputs
from rlhf_loop.reward.likelihood import LikelihoodReward
from rlhf_loop.reward.model import flat_rewards, load_backbone
from rlhf_loop.reward.shared_prefix import (
    PackedRankings,
    common_start,
    pack_rankings,
    shares_prefixes,
)
from rlhf_loop.reward.train import RewardTrainConfig, batch_loss, train_reward_model

LONG_PROMPT = "Count with me: " + " ".join(f"{i} sheep" for i in range(80))


def _rankings() -> list[RankingExample]:
    corpus = demo_examples(40, seed=3)
    by_prompt: dict[str, list[str]] = {}
    for prompt, response in corpus:
        by_prompt.setdefault(prompt, []).append(response)
    rankings = [
        RankingExample(p, rs[:4], list(range(1, len(rs[:4]) + 1)))
        for p, rs in by_prompt.items()
        if len(rs) >= 2
    ][:6]
    return [
        *rankings,
        RankingExample("What is 2 + 3?", ["", "5.", "2 + 3 = 5.", "2 + 3 = 6."], [4, 1, 1, 3]),
        RankingExample(LONG_PROMPT, ["Cats purr.", "Dogs bark at night, mostly."], [1, 2]),
        RankingExample("Name a colour.", ["Blue.", "Blue."], [1, 1]),  # identical answers
    ]


def test_a_ranking_shares_its_common_start_and_each_answer_keeps_its_own_end() -> None:
    assert common_start([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_start([[1, 2, 3], [1, 2, 3]]) == 2  # the last token stays each row's own
    assert common_start([[7, 2], [8, 2]]) == 0
    inputs = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 8, 9], [3, 4, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]),
        "response_mask": torch.tensor([[0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]),
    }
    packed = pack_rankings(inputs, torch.tensor([0, 0, 1]), pad_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 0, 0, 0]]
    assert packed.segments.tolist() == [[0, 0, 1, 2, 2], [0, 3, -1, -1, -1]]
    assert list(zip(*(t.tolist() for t in packed.last), strict=True)) == [(0, 2), (0, 4), (1, 1)]
    # each response token with the column that predicts it: 8 is predicted from 6, not from 7
    scored = list(zip(*(t.tolist() for t in packed.scored), strict=True))
    assert scored == [(0, 0, 1, 2), (1, 0, 1, 3), (1, 0, 3, 4), (2, 1, 0, 1)]
    mask = packed.attention_mask()[0, 0]
    assert mask[3].tolist() == [True, True, False, True, False]  # 8 sees the prompt, not 7
    assert mask[2].tolist() == [True, True, True, False, False]
    assert packed.attention_mask()[1, 0, 3].tolist() == [False, False, False, True, False]


def _rewards_both_ways(
    model: torch.nn.Module, tokenizer, rankings: list[RankingExample], max_length: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    end_id = model.end_id if isinstance(model, LikelihoodReward) else None
    with torch.no_grad():
        plain = collate(rankings, tokenizer, max_length)
        packed = collate(rankings, tokenizer, max_length, packed=True, end_id=end_id)
        return flat_rewards(model, plain.inputs), flat_rewards(model, packed.inputs)


@pytest.mark.parametrize("likelihood", [False, True])
def test_packed_rankings_score_as_the_plain_batch(demo_model_path: Path, likelihood: bool) -> None:
    _check_same_rewards(demo_model_path, likelihood)


@pytest.mark.parametrize(("family", "likelihood"), [("llama", True), ("qwen2", False)])
def test_packed_rankings_score_as_the_plain_batch_on_chat_models(
    tmp_path: Path, family: str, likelihood: bool
) -> None:
    """Rotary positions, a chat template around the prompt, a pad token that is the end token
    (Llama) or not (Qwen2)."""
    _check_same_rewards(build_chat_model(family, tmp_path / family), likelihood)


def _check_same_rewards(path: Path, likelihood: bool) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_backbone(str(path), "cpu", likelihood_prior=likelihood)
    assert shares_prefixes(model)
    if not likelihood:  # a trained-looking head, so the rewards are not all alike
        torch.nn.init.normal_(model.score.weight, std=0.5)
    rankings = _rankings()
    plain, packed = _rewards_both_ways(model.eval(), tokenizer, rankings)
    assert plain.std() > 0.05
    assert torch.allclose(plain, packed, atol=1e-4, rtol=1e-5), (plain - packed).abs().max()
    # the long prompt is truncated differently per answer: that ranking shares nothing
    packed_rows = collate(rankings, tokenizer, 128, packed=True).inputs
    assert (packed_rows.segments[-2] == 0).sum() == 0
    assert (packed_rows.segments[0] == 0).sum() > 5  # the others share their prompt


def test_packed_rankings_score_as_the_plain_batch_in_bfloat16(demo_model_path: Path) -> None:
    """A LoRA likelihood reward over a frozen bfloat16 backbone (the GPU's default): the two
    layouts round differently, so the bar is bfloat16's (3 significant digits per step)."""
    torch.manual_seed(0)
    model, tokenizer = load_backbone(
        str(demo_model_path), "cpu", lora_r=4, dtype="bfloat16", likelihood_prior=True
    )
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    plain, packed = _rewards_both_ways(model.eval(), tokenizer, _rankings())
    assert torch.allclose(plain, packed, atol=0.3, rtol=0.03), (plain - packed).abs().max()
    assert (plain - packed).abs().mean() < 0.05 * plain.abs().mean()


@pytest.mark.parametrize("likelihood", [False, True])
def test_packed_training_takes_the_same_steps(demo_model_path: Path, likelihood: bool) -> None:
    """Same loss and gradients on a batch, so the same training run: a wrong mask or position
    would change both."""
    torch.manual_seed(0)
    model, tokenizer = load_backbone(str(demo_model_path), "cpu", likelihood_prior=likelihood)
    rankings = _rankings()
    grads = []
    for share in (False, True):
        config = RewardTrainConfig(max_length=64, share_prompts=share)
        model.zero_grad()
        loss = batch_loss(model, tokenizer, rankings, config, torch.zeros(())).batch_mean()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (plain_loss, plain_grads), (packed_loss, packed_grads) = grads
    assert packed_loss == pytest.approx(plain_loss, abs=1e-5)
    for a, b in zip(plain_grads, packed_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)
    histories = []
    for share in (False, True):
        torch.manual_seed(0)
        fresh, _ = load_backbone(str(demo_model_path), "cpu", likelihood_prior=likelihood)
        config = RewardTrainConfig(epochs=2, lr=1e-3, batch_rankings=4, share_prompts=share)
        histories.append(
            [p["loss"] for p in train_reward_model(fresh, tokenizer, rankings, config).history]
        )
    assert histories[0] == pytest.approx(histories[1], abs=1e-3)


def test_encoders_and_other_attention_kernels_keep_the_plain_batch(demo_model_path: Path) -> None:
    encoder = BertConfig(hidden_size=8, num_attention_heads=1, num_hidden_layers=1, num_labels=1)
    assert not shares_prefixes(BertForSequenceClassification(encoder))  # attends both ways
    model, _ = load_backbone(str(demo_model_path), "cpu")
    model.config._attn_implementation = "eager"  # reads additive masks, not boolean ones
    assert not shares_prefixes(model)
    assert not shares_prefixes(torch.nn.Linear(2, 2))


def test_packed_rows_need_no_more_positions_than_one_exchange(demo_model_path: Path) -> None:
    """A packed row is longer than max_length, but its positions restart for each exchange,
    so a backbone with few positions (the demo has 256) reads it."""
    _, tokenizer = load_backbone(str(demo_model_path), "cpu")
    responses = [" ".join(["word"] * 40) + f" {i}" for i in range(8)]
    inputs = reward_inputs(tokenizer, ["Say words."] * 8, responses, 64)
    packed = pack_rankings(inputs, torch.zeros(8, dtype=torch.long), tokenizer.pad_token_id)
    assert packed.input_ids.shape[1] > 64 >= packed.position_ids.max() + 1


@pytest.mark.parametrize("likelihood", [False, True])
def test_ppo_scores_a_rollout_packed_as_the_plain_batch(
    demo_model_path: Path, likelihood: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollout's samples of one prompt are scored with the prompt read once: the same scores
    as one row per response, for prompts that repeat, alternate or come once."""
    torch.manual_seed(0)
    model, tokenizer = load_backbone(str(demo_model_path), "cpu", likelihood_prior=likelihood)
    if not likelihood:
        torch.nn.init.normal_(model.score.weight, std=0.5)
    model.eval()
    prompts = ["What is 2 + 3?", "What is 2 + 3?", "Name a colour.", LONG_PROMPT]
    prompts += ["Name a colour.", "What is 2 + 3?"]
    responses = ["5.", "It is 6.", "Blue.", "Cats purr.", "Red, like a rose.", ""]
    layouts: list[type] = []

    def spy(model: torch.nn.Module, inputs: object) -> torch.Tensor:
        layouts.append(type(inputs))
        return flat_rewards(model, inputs)

    monkeypatch.setattr(scoring, "flat_rewards", spy)
    packed_scores = score(model, tokenizer, {}, prompts, responses, max_length=64)
    with torch.no_grad():
        plain = flat_rewards(model, reward_inputs(tokenizer, prompts, responses, 64))
    assert plain.std() > 0.05
    assert torch.allclose(packed_scores, plain, atol=1e-4, rtol=1e-5)
    assert layouts == [PackedRankings]
    # chunks smaller than the batch split a prompt's samples and still score them the same
    chunked = score(model, tokenizer, {}, prompts, responses, max_length=64, batch_size=4)
    assert torch.allclose(chunked, plain, atol=1e-4, rtol=1e-5)
