"""Incremental reward retraining (``reward.incremental``): a version starts from the newest one
and trains on exactly the rankings new since it plus a seeded replay sample of older ones, held-
out rankings never among them; every ``reward_full_retrain_every``-th version, and any whose
starting point is unusable (another backbone or settings, files gone, no record), retrains in
full and says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from job_helpers import job_context
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.config import ConfigError, Settings
from rlhf_loop.reward import job as reward_job
from rlhf_loop.reward.data import (
    RankingExample,
    heldout_sample,
    is_held_out,
    load_rankings,
    split_held_out,
)
from rlhf_loop.reward.incremental import model_settings, plan_retrain
from rlhf_loop.reward.model import META_FILE, load_reward_model, read_meta
from rlhf_loop.store.versions import latest_version, list_versions

SETTINGS = Settings(reward_replay_rankings=20, reward_full_retrain_every=3)


def _rankings(ids: range) -> list[RankingExample]:
    return [RankingExample(f"prompt {i}", ["a", "b"], [1, 2], ranking_id=i) for i in ids]


def _previous(tmp_path: Path, seen: list[int], **changes) -> dict:
    """A registered version's row whose saved metadata says it trained on ``seen``."""
    path = tmp_path / "v4"
    path.mkdir(exist_ok=True)
    meta = {
        "model_settings": model_settings(SETTINGS, "backbone-a") | changes,
        "rankings_seen": seen,
    }
    (path / META_FILE).write_text(json.dumps(meta))
    metrics = {"retrain": {"versions_since_full": 0}, "log_nu": 0.25}
    return {"version": 4, "path": str(path), "metrics": metrics}


def test_an_incremental_plan_trains_on_exactly_the_new_rankings_and_a_seeded_replay(
    tmp_path: Path,
) -> None:
    train = _rankings(range(1, 201))
    previous = _previous(tmp_path, seen=[*range(1, 151), 999])  # 999 is no longer trained on
    plan = plan_retrain(previous, train, SETTINGS, "backbone-a", version=5)
    assert plan.kind == "incremental" and plan.started_from == 4 and plan.start_log_nu == 0.25
    ids = [e.ranking_id for e in plan.rows]
    assert ids[:50] == list(range(151, 201))  # every new ranking, once
    replayed = ids[50:]
    assert len(replayed) == len(set(replayed)) == 20 and set(replayed) <= set(range(1, 151))
    assert plan.seen == list(range(1, 201))  # what the lineage has trained on, 999 dropped
    assert (plan.new, plan.replay, plan.since_full) == (50, 20, 1)
    again = plan_retrain(previous, train, SETTINGS, "backbone-a", version=5)
    assert [e.ranking_id for e in again.rows] == ids  # seeded: a retried job replays the same
    other = plan_retrain(previous, train, SETTINGS, "backbone-a", version=6)
    assert [e.ranking_id for e in other.rows][50:] != replayed
    assert plan.reason == "50 rankings new since v4, 20 of 150 older ones replayed"


@pytest.mark.parametrize(
    ("since_full", "kind"), [(0, "incremental"), (1, "incremental"), (2, "full")]
)
def test_every_nth_version_retrains_in_full(tmp_path: Path, since_full: int, kind: str) -> None:
    previous = _previous(tmp_path, seen=list(range(1, 151)))
    previous["metrics"]["retrain"]["versions_since_full"] = since_full
    plan = plan_retrain(previous, _rankings(range(1, 201)), SETTINGS, "backbone-a", 5)
    assert plan.kind == kind
    if kind == "full":
        assert "one version in 3 retrains in full" in plan.reason and plan.since_full == 0
        assert len(plan.rows) == 200 and plan.seen == list(range(1, 201))


def test_an_unusable_starting_point_forces_a_full_retrain_and_says_why(tmp_path: Path) -> None:
    train = _rankings(range(1, 201))
    seen = list(range(1, 151))

    def reason(previous: dict | None, backbone: str = "backbone-a", **changes) -> str:
        plan = plan_retrain(previous, train, SETTINGS.replace(**changes), backbone, 5)
        assert plan.kind == "full" and len(plan.rows) == len(train)
        return plan.reason

    assert reason(None) == "no reward model yet"
    assert "backbone 'backbone-a' -> 'backbone-b'" in reason(
        _previous(tmp_path, seen), "backbone-b"
    )
    assert "reward_lora_r 0 -> 8" in reason(_previous(tmp_path, seen), reward_lora_r=8)
    no_record = _previous(tmp_path, seen) | {"path": str(_without_seen(tmp_path))}
    assert "no record of the rankings" in reason(no_record)
    gone = _previous(tmp_path, seen) | {"path": str(tmp_path / "deleted")}
    assert "files are missing" in reason(gone)
    assert "more than half" in reason(_previous(tmp_path, seen[:80]))  # 120 new of 200
    assert "more than half" in reason(_previous(tmp_path, seen), reward_replay_rankings=60)


def _without_seen(tmp_path: Path) -> Path:
    path = tmp_path / "v3"
    path.mkdir(exist_ok=True)
    meta = {"model_settings": model_settings(SETTINGS, "backbone-a")}
    (path / META_FILE).write_text(json.dumps(meta))
    return path


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="reward_full_retrain_every must be >= 1"):
        Settings(reward_full_retrain_every=0).validate()
    with pytest.raises(ConfigError, match="reward_replay_rankings must be >= 0"):
        Settings(reward_replay_rankings=-1).validate()
    with pytest.raises(ConfigError, match="reward_eval_max_rankings must be >= 0"):
        Settings(reward_eval_max_rankings=-5).validate()


def test_the_held_out_sample_is_bounded_and_stable_as_rankings_arrive() -> None:
    held_out = _rankings(range(1, 301))
    first = heldout_sample(held_out, 100)
    assert len(first) == 100 and heldout_sample(held_out, 0) == held_out
    later = heldout_sample(_rankings(range(1, 331)), 100)
    kept = {e.ranking_id for e in first} & {e.ranking_id for e in later}
    assert len(kept) >= 85  # 30 newcomers can displace only the ones they outrank


def test_the_job_retrains_incrementally_then_in_full_on_another_backbone(
    tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    db = fresh_db(tmp_path)
    oracle_rankings(db, 60)
    settings = {"reward_replay_rankings": 10, "reward_full_retrain_every": 3}
    first = reward_job.run_train_reward(
        job_context(db, tmp_path, demo_model_path, "train_reward", **settings)
    )
    assert (
        first["retrain"]["kind"] == "full" and first["retrain"]["reason"] == "no reward model yet"
    )
    v1 = latest_version(db, "reward")
    oracle_rankings(db, 20, seed=1)
    trained_on: list[list[RankingExample]] = []
    starting_weights: list[torch.Tensor] = []
    train = reward_job.train_reward_model

    def recording(model, tokenizer, rows, *args):
        trained_on.append(rows)
        starting_weights.append(model.score.weight.detach().clone())
        return train(model, tokenizer, rows, *args)

    monkeypatch.setattr(reward_job, "train_reward_model", recording)
    ctx = job_context(db, tmp_path, demo_model_path, "train_reward", **settings)
    second = reward_job.run_train_reward(ctx)

    examples = load_rankings(db)
    train_rows, held_out = split_held_out(examples, ctx.settings.reward_heldout_fraction)
    before = set(read_meta(v1["path"])["rankings_seen"])
    new = {e.ranking_id for e in train_rows} - before
    ids = [e.ranking_id for e in trained_on[0]]
    assert set(ids[: len(new)]) == new and len(ids) == len(set(ids)) == len(new) + 10
    assert set(ids[len(new) :]) <= before  # the replay: older training rankings
    assert not any(is_held_out(e.prompt, 0.15) for e in trained_on[0])
    retrain = second["retrain"]
    assert retrain | {"reason": ""} == {
        "kind": "incremental",
        "reason": "",
        "new_rankings": len(new),
        "replay_rankings": 10,
        "versions_since_full": 1,
        "started_from": 1,
    }
    assert second["train_rankings"] == len(new) + 10
    assert second["heldout_rankings"] == len(held_out) == second["heldout_rankings_all"]
    v1_model, _, _ = load_reward_model(v1["path"], "cpu")
    assert torch.equal(starting_weights[0], v1_model.score.weight)  # it started from v1
    v2 = latest_version(db, "reward")
    assert read_meta(v2["path"])["rankings_seen"] == sorted(e.ranking_id for e in train_rows)

    shipped = Path(__file__).resolve().parent.parent / "rlhf_loop" / "model" / "demo_shipped"
    ctx = job_context(
        db, tmp_path, demo_model_path, "train_reward", reward_backbone=str(shipped), **settings
    )
    third = reward_job.run_train_reward(ctx)
    assert third["retrain"]["kind"] == "full" and "backbone" in third["retrain"]["reason"]
    assert len(trained_on[-1]) == len(train_rows)
    assert [v["metrics"]["retrain"]["kind"] for v in list_versions(db, "reward")] == [
        "full",
        "incremental",
        "full",
    ]
