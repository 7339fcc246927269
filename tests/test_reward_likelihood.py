"""The likelihood-prior reward (``reward.likelihood``): it starts as the backbone's own
log-likelihood of the response with its end token, above what the backbone expects of its own
samples; a stock phrase appended does not buy reward; it follows people when they disagree with
the backbone, saves and loads whole, and steps aside for backbones without a trained LM head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

from rlhf_loop.model.demo_corpus import demo_examples
from rlhf_loop.reward.data import RankingExample, exchange_text, reward_inputs, tail_mask
from rlhf_loop.reward.likelihood import (
    FORM,
    LikelihoodReward,
    excess_logprob,
    with_end_token,
)
from rlhf_loop.reward.model import flat_rewards, load_backbone, load_reward_model, save_reward_model
from rlhf_loop.reward.train import RewardTrainConfig, train_reward_model

PROMPTS = ["What is 2 + 3?", "What colour is the sky?"]
RESPONSES = ["2 + 3 = 5.", "It is blue and very bright."]


def test_end_token_goes_after_the_last_real_token_on_either_padding_side() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]])  # right padding
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    response = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    new_ids, new_attention, new_response = with_end_token(ids, attention, response, 9)
    assert new_ids.tolist() == [[5, 6, 7, 9, 9], [5, 6, 9, 0, 9]]
    assert new_attention.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert new_response.int().tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    left = with_end_token(
        torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]), 9
    )
    assert [t.int().tolist() for t in left] == [[[0, 5, 6, 9]], [[0, 1, 1, 1]], [[0, 0, 1, 1]]]


def test_excess_log_probability_is_zero_for_a_typical_token() -> None:
    uniform = torch.zeros(1, 8)  # every token as likely as the average sample: 0
    assert excess_logprob(uniform, torch.tensor([3])).item() == pytest.approx(0.0, abs=1e-6)
    peaked = torch.tensor([[4.0, 0.0, 0.0, 0.0]])
    above, below = excess_logprob(peaked.repeat(2, 1), torch.tensor([0, 1]))
    assert above > 0 > below
    # its expectation under the distribution itself is 0
    probs = torch.softmax(peaked, -1)[0]
    expected = sum(probs[t] * excess_logprob(peaked, torch.tensor([t])) for t in range(4))
    assert expected.item() == pytest.approx(0.0, abs=1e-6)


def test_response_mask_holds_exactly_the_response_text(demo_model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    inputs = reward_inputs(tokenizer, PROMPTS, RESPONSES, 64)
    for row, response in enumerate(RESPONSES):
        ids = inputs["input_ids"][row][inputs["response_mask"][row]]
        assert tokenizer.decode(ids).strip() == response
    # tokenizers without offsets count the response's own tokens from the end: the same here
    assert torch.equal(
        tail_mask(tokenizer, RESPONSES, inputs["attention_mask"]), inputs["response_mask"]
    )
    # a prompt longer than max_length loses its start, never the response
    long = reward_inputs(tokenizer, ["word " * 200 + PROMPTS[0]], RESPONSES[:1], 32)
    kept = long["input_ids"][0][long["response_mask"][0]]
    assert long["input_ids"].shape[1] == 32 and tokenizer.decode(kept).strip() == RESPONSES[0]


def _independent_excess(path: Path, prompt: str, response: str) -> float:
    """Sum over the response and its end token of log p + entropy, from full logits."""
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = exchange_text(tokenizer, prompt, response)
    prefix = len(tokenizer(text[: len(text) - len(response) - 1])["input_ids"])
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)
    with torch.no_grad():
        logprobs = torch.log_softmax(lm(input_ids=ids).logits[0, :-1], -1)
    picked = logprobs.gather(-1, ids[0, 1:, None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return (picked + entropy)[prefix - 1 :].sum().item()


def test_untrained_reward_is_the_backbones_confidence(demo_model_path: Path) -> None:
    model, tokenizer = load_backbone(str(demo_model_path), "cpu", likelihood_prior=True)
    assert isinstance(model, LikelihoodReward)
    with torch.no_grad():
        rewards = flat_rewards(model.eval(), reward_inputs(tokenizer, PROMPTS, RESPONSES, 64))
    for reward, prompt, response in zip(rewards, PROMPTS, RESPONSES, strict=True):
        expected = _independent_excess(demo_model_path, prompt, response)
        assert reward.item() == pytest.approx(expected, abs=1e-4)


def test_an_empty_answer_pays_for_ending_at_once(demo_model_path: Path) -> None:
    """Without the end token an empty answer would score 0, the score of a typical answer."""
    model, tokenizer = load_backbone(str(demo_model_path), "cpu", likelihood_prior=True)
    with torch.no_grad():
        rewards = flat_rewards(
            model.eval(), reward_inputs(tokenizer, PROMPTS[:1] * 2, ["", RESPONSES[0]], 64)
        )
    assert rewards[0] < min(0.0, rewards[1].item())


SHIPPED = Path(__file__).resolve().parent.parent / "rlhf_loop" / "model" / "demo_shipped"
FILLER = " Let me know if you have more questions."


def test_a_stock_phrase_neither_pays_nor_hides_a_wrong_answer() -> None:
    """What PPO found against the mean log-likelihood: a predictable phrase appended raises the
    mean and dilutes a wrong number. On the shipped demo model (which knows its sums), the
    right answer must beat the wrong one with the phrase, and the phrase must not pay."""
    model, tokenizer = load_backbone(str(SHIPPED), "cpu", likelihood_prior=True)
    sums = [(a, b) for a in range(1, 9, 2) for b in range(2, 10, 2)]
    prompts = [f"What is {a} + {b}?" for a, b in sums]
    right = [f"{a} + {b} = {a + b}." for a, b in sums]
    wrong = [f"{a} + {b} = {a + b + 2}.{FILLER}" for a, b in sums]
    padded = [f"{r}{FILLER}" for r in right]
    with torch.no_grad():
        inputs = reward_inputs(tokenizer, prompts * 3, right + wrong + padded, 64)
        rewards = flat_rewards(model.eval(), inputs).view(3, len(sums))
    assert (rewards[0] > rewards[1]).float().mean() >= 0.8
    assert (rewards[2] <= rewards[0] + 0.1).float().mean() >= 0.8


def _likelihood_rankings(prefer_likely: bool, n: int = 48) -> list[RankingExample]:
    """Each corpus answer against the same words shuffled (far less likely to the backbone);
    people prefer one or the other, always."""
    rankings = []
    for prompt, response in demo_examples(n, seed=5):
        words = response.split()
        garbled = " ".join(words[::-1]) if len(words) > 1 else f"{response} {response} the"
        ranks = [1, 2] if prefer_likely else [2, 1]
        rankings.append(RankingExample(prompt, [response, garbled], ranks))
    return rankings


@pytest.mark.parametrize("prefer_likely", [True, False])
def test_the_likelihood_weight_follows_people(demo_model_path: Path, prefer_likely: bool) -> None:
    """The prior is a starting point, not a verdict: when people prefer the less likely
    answer, the weight on the likelihood falls (and rises when they agree with it)."""
    torch.manual_seed(0)
    model, tokenizer = load_backbone(str(demo_model_path), "cpu", likelihood_prior=True)
    config = RewardTrainConfig(epochs=2, lr=3e-4, batch_rankings=8, max_length=64)
    outcome = train_reward_model(model, tokenizer, _likelihood_rankings(prefer_likely), config)
    weight = outcome.history[-1]["likelihood_weight"]
    assert weight > 1.1 if prefer_likely else weight < 0.9
    held_out = _likelihood_rankings(prefer_likely, 80)[48:]
    inputs = reward_inputs(
        tokenizer,
        [e.prompt for e in held_out for _ in e.responses],
        [r for e in held_out for r in e.responses],
        64,
    )
    with torch.no_grad():
        rewards = flat_rewards(model.eval(), inputs).view(len(held_out), 2)
    preferred = rewards[:, 0] > rewards[:, 1] if prefer_likely else rewards[:, 1] > rewards[:, 0]
    assert preferred.float().mean() >= 0.8


@pytest.mark.parametrize("lora_r", [0, 4])
def test_a_saved_version_scores_as_it_did_when_trained(
    tmp_path: Path, demo_model_path: Path, lora_r: int
) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_backbone(
        str(demo_model_path), "cpu", lora_r=lora_r, likelihood_prior=True
    )
    config = RewardTrainConfig(epochs=1, lr=1e-3, batch_rankings=8, max_length=64)
    train_reward_model(model, tokenizer, _likelihood_rankings(True, 16), config)
    inputs = reward_inputs(tokenizer, PROMPTS, RESPONSES, 64)
    with torch.no_grad():
        before = flat_rewards(model.eval(), inputs)
    path = save_reward_model(model, tokenizer, {"version": 1}, tmp_path / "reward" / "1")
    loaded, loaded_tokenizer, meta = load_reward_model(path, "cpu", "float32")
    assert meta["form"] == FORM and isinstance(loaded, LikelihoodReward)
    assert not (path / "adapter_config.json").exists()  # LoRA merged: plain transformers files
    with torch.no_grad():
        after = flat_rewards(loaded, reward_inputs(loaded_tokenizer, PROMPTS, RESPONSES, 64))
    assert torch.allclose(before, after, atol=1e-4)
    assert loaded.lm_weight.item() != 1.0  # the trained weight came back, not a fresh one


def test_a_backbone_without_a_trained_lm_head_gets_the_plain_head(tmp_path: Path) -> None:
    """An encoder (MiniLM is a BERT) loads as a causal LM only with a random LM head, whose
    likelihood would be noise: such a backbone keeps the scalar head alone."""
    encoder = tmp_path / "encoder"
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(encoder)
    tokenizer = AutoTokenizer.from_pretrained(_tiny_vocab_tokenizer(tmp_path))
    tokenizer.save_pretrained(encoder)
    model, _ = load_backbone(str(encoder), "cpu", likelihood_prior=True)
    assert not isinstance(model, LikelihoodReward)
    assert model.config.num_labels == 1


def _tiny_vocab_tokenizer(tmp_path: Path) -> Path:
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    vocab.write_text("\n".join(words) + "\n")
    out = tmp_path / "tokenizer"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    return out
