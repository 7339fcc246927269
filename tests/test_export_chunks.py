"""Rankings are read with their generations a chunk at a time (``export.ranking_records``): the
records, the pairs and the reward model's examples must be the ones the former reading, one
generations query per ranking, made, whatever falls on a chunk's edge."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import fresh_db, make_comparisons

from rlhf_loop import export
from rlhf_loop.reward.data import load_rankings
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.demonstrations import submit_demonstration
from rlhf_loop.store.generations import comparison_generations
from rlhf_loop.store.submissions import submit, undo_last
from rlhf_loop.store.tasks import next_task


def _one_query_per_ranking(db) -> list[dict]:
    """The former reading: each ranking's generations in a query of their own."""
    return [
        export._record(row, comparison_generations(db, row["generation_ids"]))
        for row in db.query(export._TRAINING_RANKINGS)
    ]


@pytest.fixture
def db(tmp_path: Path):
    """Items of 3 and 4 responses answered by five people in every way an answer goes: ranked
    with ties, skipped, flagged (with a ranking and without), undone and redone, written."""
    db = fresh_db(tmp_path)
    make_comparisons(db, 4, k=3)
    make_comparisons(db, 4, k=4)
    for turn in range(8):
        for n, name in enumerate(["ada", "bob", "cal", "dee", "eve"]):
            me = annotator_id(db, name)
            task = next_task(db, me, 5, 600)
            ties = [1 + (i + turn + n) % 2 for i in range(task.k)]  # 1 2 1 ... or 2 1 2 ...
            if (turn + n) % 5 == 1:
                submit(db, me, task.comparison_id, "skipped")
            elif (turn + n) % 5 == 2:
                submit(db, me, task.comparison_id, "flagged", ties if turn % 2 else None, "bad")
            elif (turn + n) % 5 == 3:
                submit_demonstration(
                    db,
                    me,
                    task.comparison_id,
                    f"{name}'s own answer",
                    max_chars=1000,
                    counts_as_ranking=True,
                    ranks=ties if turn % 2 else None,
                )
            else:
                submit(db, me, task.comparison_id, "ranked", ties)
                if turn % 3 == 0:  # undone, then answered again in another order
                    undo_last(db, me)
                    redo = list(range(task.k, 0, -1))
                    submit(db, me, task.comparison_id, "ranked", redo)
    return db


@pytest.mark.parametrize("per_read", [1, 7, 1000])
def test_chunked_records_are_those_read_one_ranking_at_a_time(
    db, per_read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "RANKINGS_PER_READ", per_read)
    expected = _one_query_per_ranking(db)
    records = list(export.ranking_records(db))
    assert records == expected
    # The fixture has what each part of a record comes from: ties, written answers, both sizes.
    assert {len(r["responses"]) for r in records} == {3, 4, 5}
    assert any(r["responses"][0]["generation_id"] is None for r in records)
    assert len(records) % 7  # the last chunk of 7 is a partial one
    assert list(export.pair_records(records)) == list(export.pair_records(expected))
    assert [(e.ranking_id, e.responses, e.ranks) for e in load_rankings(db)] == [
        (r["ranking_id"], [x["text"] for x in r["responses"]], [x["rank"] for x in r["responses"]])
        for r in expected
    ]
