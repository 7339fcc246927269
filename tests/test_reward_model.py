"""Reward-model training on the demo backbone: it learns a known preference from whole rankings
with ties, is saved and registered whole, and refuses bad input with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from job_helpers import Progress
from store_helpers import corpus_comparisons, fresh_db, oracle_rankings

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.ppo.scoring import score
from rlhf_loop.prompt_import import PROMPT_LABELS
from rlhf_loop.reward.active import reprioritise, score_responses, selection_priority
from rlhf_loop.reward.data import RankingExample, load_rankings, split_held_out
from rlhf_loop.reward.job import retrain_due, run_train_reward, train_config
from rlhf_loop.reward.losses import OPENNESS_LABELS
from rlhf_loop.reward.model import load_backbone, load_reward_model, save_reward_model
from rlhf_loop.reward.train import (
    RewardTrainConfig,
    _utilities,
    evaluate,
    train_reward_model,
)
from rlhf_loop.store import jobs
from rlhf_loop.store.tasks import next_task
from rlhf_loop.store.versions import latest_version

CONFIG = RewardTrainConfig(epochs=4, lr=1e-3, batch_rankings=8, max_length=64)


def job_context(db, tmp_path: Path, model_path: Path, **settings) -> JobContext:
    config = Settings(data_dir=str(tmp_path), device="cpu", reward_max_length=64, **settings)
    job = jobs.claim(db, "test", 30) if jobs.enqueue(db, "train_reward") else None
    return JobContext(db, config, job, Progress(), str(model_path))


def test_stored_labels_in_any_case_pick_their_utility() -> None:
    """Rows imported before the import lower-cased labels may say "Open"; they are not
    unlabelled. An unknown label still trains as unlabelled (the log utility)."""
    labels = ["Open", " CLOSED ", None, "other"]
    batch = [RankingExample("p", ["a", "b"], [1, 2], label) for label in labels]
    assert _utilities(batch)[0] == ["neg_power", "linear", "log", "log"]


def test_the_import_accepts_exactly_the_labels_the_trainer_knows() -> None:
    assert sorted(PROMPT_LABELS) == sorted(OPENNESS_LABELS)


def test_learns_a_known_preference_from_rankings_with_ties(
    tmp_path: Path, demo_model_path: Path
) -> None:
    torch.manual_seed(0)
    db = fresh_db(tmp_path)
    examples = oracle_rankings(db, 160)
    assert any(len(set(e.ranks)) < len(e.ranks) for e in examples)  # ties are in the data
    train, held_out = split_held_out(examples, 0.25)
    model, tokenizer = load_backbone(str(demo_model_path), "cpu")
    before = evaluate(model, tokenizer, held_out, 0.0, CONFIG)
    outcome = train_reward_model(model, tokenizer, train, CONFIG)
    after = evaluate(model, tokenizer, held_out, outcome.log_nu, CONFIG)
    first = sum(p["loss"] for p in outcome.history[:5]) / 5
    last = sum(p["loss"] for p in outcome.history[-5:]) / 5
    assert last < 0.7 * first
    assert after["pairwise_accuracy"] >= 0.85, after
    assert after["pairwise_accuracy"] > before["pairwise_accuracy"]
    assert after["heldout_nll"] < before["heldout_nll"]


def test_all_tie_rankings_and_mixed_k_train_without_error(demo_model_path: Path) -> None:
    model, tokenizer = load_backbone(str(demo_model_path), "cpu")
    data = [
        RankingExample("What is 1 + 1?", ["2.", "Two.", "It is 2."], [1, 1, 1]),
        RankingExample(
            "Describe a cat.", ["A cat.", "Cats purr.", "Fur.", "Meow.", "x"], [1, 2, 2, 3, 4]
        ),
    ]
    outcome = train_reward_model(model, tokenizer, data, RewardTrainConfig(epochs=2, lr=1e-3))
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in outcome.history)
    assert outcome.log_nu is not None


def test_saved_version_loads_with_the_same_scores_and_missing_files_are_reported(
    tmp_path: Path, demo_model_path: Path
) -> None:
    model, tokenizer = load_backbone(str(demo_model_path), "cpu")
    model.eval()
    texts = ["Two.", "It is two, I think."]
    expected = score_responses(model, tokenizer, "What is 1 + 1?", texts, 64)
    path = save_reward_model(model, tokenizer, {"log_nu": 0.1}, tmp_path / "reward" / "v1")
    assert [p.name for p in (tmp_path / "reward").iterdir()] == ["v1"]  # no temp dir left
    loaded, loaded_tokenizer, meta = load_reward_model(path, "cpu")
    assert meta == {"log_nu": 0.1}
    got = score_responses(loaded, loaded_tokenizer, "What is 1 + 1?", texts, 64)
    assert got == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ModelLoadError, match="files are missing"):
        load_reward_model(tmp_path / "reward" / "v9", "cpu")


def test_lora_reward_model_trains_and_saves_merged(tmp_path: Path, demo_model_path: Path) -> None:
    model, tokenizer = load_backbone(str(demo_model_path), "cpu", lora_r=4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.2 * sum(p.numel() for p in model.parameters())
    data = [RankingExample("Describe a cat.", ["A cat sat on a mat.", "Cat."], [1, 2])] * 4
    train_reward_model(model, tokenizer, data, RewardTrainConfig(epochs=1, lr=1e-3))
    path = save_reward_model(model, tokenizer, {}, tmp_path / "v1")
    loaded, _, _ = load_reward_model(path, "cpu")
    assert not any("lora" in name for name, _ in loaded.named_parameters())


def test_job_registers_a_version_with_held_out_metrics(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 60)
    ctx = job_context(db, tmp_path, demo_model_path, reward_epochs=2, reward_lr=1e-3)
    assert retrain_due(db, ctx.settings)  # 60 new rankings >= reward_retrain_every (50)
    result = run_train_reward(ctx)
    version = latest_version(db, "reward")
    assert version["version"] == result["version"] == 1
    assert Path(version["path"]).is_dir()
    metrics = version["metrics"]
    assert metrics["rankings_used"] == 60 and metrics["heldout_rankings"] > 0
    # The metrics are the saved model's on the held-out rankings, not the training ones.
    _, held_out = split_held_out(load_rankings(db), ctx.settings.reward_heldout_fraction)
    model, tokenizer, _ = load_reward_model(version["path"], "cpu")
    again = evaluate(model, tokenizer, held_out, metrics["log_nu"], train_config(ctx.settings))
    assert again["heldout_pairs"] == metrics["heldout_pairs"] > 0
    assert again["pairwise_accuracy"] == pytest.approx(metrics["pairwise_accuracy"])
    assert ctx.reporter.reports[-1][1] == 1.0
    assert {m["name"] for m in jobs.job_metrics(db, ctx.job.id)} >= {"loss", "nu"}
    assert not retrain_due(db, ctx.settings)


def test_training_with_no_rankings_fails_with_a_message(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    with pytest.raises(JobError, match="no rankings to train on yet"):
        run_train_reward(job_context(db, tmp_path, demo_model_path))


def test_active_selection_puts_uncertain_items_first(tmp_path: Path, demo_model_path: Path) -> None:
    close, wide = selection_priority([[0.0, 0.1, 0.2], [0.0, 2.0, 4.0]])
    assert close > wide  # responses the model can hardly order
    low, middle, tail = selection_priority([[0.0, 1.0], [0.5, 1.5], [10.0, 11.0]])
    assert middle > low > tail  # equal gaps: prompts of middle difficulty first
    db = fresh_db(tmp_path)
    corpus_comparisons(db, 6)
    model, tokenizer = load_backbone(str(demo_model_path), "cpu")
    assert reprioritise(db, model, tokenizer, 64) == 6
    priorities = {r["id"]: r["priority"] for r in db["comparisons"].rows}
    ada = db["annotators"].insert({"name": "ada", "role": "annotator", "created_at": 0}).last_pk
    served = next_task(db, ada, 1, 600)
    assert served.comparison_id == max(priorities, key=priorities.get)


def test_ppo_scores_a_prompt_aware_model_on_the_scale_its_loss_shaped(
    tmp_path: Path, demo_model_path: Path
) -> None:
    """The prompt-aware loss acts on sigmoid(score); PPO must read that, not the raw logit."""
    model, tokenizer = load_backbone(str(demo_model_path), "cpu")
    with torch.no_grad():
        model.score.weight.mul_(50)  # raw scores far outside (0, 1)
    prompts, texts = ["What is 1 + 1?"] * 2, ["Two.", "It is two, I think."]
    for prompt_aware in (True, False):
        meta = {"config": {"prompt_aware": prompt_aware}}
        path = save_reward_model(model, tokenizer, meta, tmp_path / f"v{int(prompt_aware)}")
        loaded, loaded_tokenizer, loaded_meta = load_reward_model(path, "cpu")
        raw = torch.tensor(score_responses(loaded, loaded_tokenizer, prompts[0], texts, 64))
        got = score(loaded, loaded_tokenizer, loaded_meta, prompts, texts, 64)
        assert raw.abs().max() > 1  # so the two scales cannot agree by chance
        expected = torch.sigmoid(raw) if prompt_aware else raw
        assert torch.allclose(got, expected, atol=1e-5)
