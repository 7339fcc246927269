"""One definition of the rankings that train, shared by the training data, the export, the
retrain trigger and the agreement between annotators: gold answers and rankings of a retired
prompt count in none of them, so a version trained on everything else is not due again."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import fresh_db, make_comparisons

from rlhf_loop.config import Settings
from rlhf_loop.export import ranking_records
from rlhf_loop.gold_import import GoldItem
from rlhf_loop.reward.job import retrain_due
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.flags import review_flag
from rlhf_loop.store.gold import add_gold_items
from rlhf_loop.store.quality import judgements
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import next_task
from rlhf_loop.store.training_rankings import training_ranking_count
from rlhf_loop.store.versions import next_version, register_version

EVERY = 4
PEOPLE = ["ada", "bob", "cal", "dee", "eve", "fay"]  # more answers per item than EVERY


def _answer(db, name: str, status: str = "ranked", gold_every: int = 0) -> int:
    """``name`` answers their next item; returns the ranking id."""
    who = annotator_id(db, name)
    task = next_task(db, who, len(PEOPLE), 600, gold_every)
    ranks = list(range(1, task.k + 1)) if status == "ranked" else None
    return submit(db, who, task.comparison_id, status, ranks, reason="broken prompt")


@pytest.fixture
def db(tmp_path: Path):
    """Six answers to a gold item, five rankings of a prompt retired after the sixth annotator
    flagged it, and three rankings of policy items in use."""
    db = fresh_db(tmp_path)
    add_gold_items(db, [GoldItem("gold prompt", ["good", "fine", "bad"], [1, 2, 3], 1)], "gold")
    for name in PEOPLE:
        _answer(db, name, gold_every=1)
    make_comparisons(db, 1, k=3)
    for name in PEOPLE[:-1]:
        _answer(db, name)
    review_flag(db, _answer(db, PEOPLE[-1], status="flagged"), "retired_prompt", "olga")
    make_comparisons(db, 3, k=3)
    for name in PEOPLE[:3]:
        _answer(db, name)
    return db


def _train_on_what_trains(db) -> None:
    """A reward version that used what training loads, as ``run_train_reward`` records it."""
    used = len(list(ranking_records(db)))
    register_version(
        db, "reward", next_version(db, "reward"), None, "test", {"rankings_used": used}
    )


def test_gold_and_retired_rankings_never_make_a_retrain_due(db) -> None:
    settings = Settings(reward_retrain_every=EVERY)
    assert db["rankings"].count_where("status = 'ranked'") == 6 + 5 + 3
    assert training_ranking_count(db) == len(list(ranking_records(db))) == 3
    _train_on_what_trains(db)
    assert not retrain_due(db, settings)  # 11 non-training rankings >= EVERY: due before the fix

    make_comparisons(db, EVERY, k=3)
    for _ in range(EVERY - 1):
        _answer(db, "gil")
    assert not retrain_due(db, settings)
    _answer(db, "gil")
    assert retrain_due(db, settings)  # EVERY new rankings that train
    _train_on_what_trains(db)
    assert not retrain_due(db, settings)


def test_agreement_between_annotators_rests_on_the_rankings_that_train(db) -> None:
    trains = {r["comparison_id"] for r in ranking_records(db)}
    assert {j.comparison_id for j in judgements(db, gold=False)} == trains
    assert len(judgements(db, gold=False)) == training_ranking_count(db)
    gold = {c["id"] for c in db["comparisons"].rows_where("gold_ranks IS NOT NULL")}
    assert {j.comparison_id for j in judgements(db, gold=True)} == gold
    assert len(judgements(db)) == 6 + 5 + 3  # every live ranking, for the callers that want all
