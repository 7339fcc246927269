"""The SQLite store: schema, serving tasks, answers with ties, undo, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from store_helpers import add_texts, fresh_db, make_comparisons

from rlhf_loop.export import pair_records, ranking_records
from rlhf_loop.ranking import RankingError
from rlhf_loop.store.annotators import AnnotatorNameError, annotator_id
from rlhf_loop.store.db import open_db
from rlhf_loop.store.schema import SCHEMA_VERSION, schema_version
from rlhf_loop.store.submissions import DuplicateSubmission, done_today, submit, undo_last
from rlhf_loop.store.tasks import free_slots, next_task, tasks_left_for

TIMEOUT = 600.0


def test_database_is_wal_and_migrated_once(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert schema_version(db) == SCHEMA_VERSION
    assert {"prompts", "generations", "comparisons", "rankings", "annotators", "events"} <= set(
        db.table_names()
    )
    again = open_db(tmp_path / "rlhf.db")  # reopening applies nothing twice
    assert schema_version(again) == SCHEMA_VERSION


def test_prompts_are_stored_once(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    add_texts(db, ["a", "<script>alert(1)</script>"])
    add_texts(db, ["a", "b"])
    texts = [r["text"] for r in db["prompts"].rows_where(order_by="id")]
    assert texts == ["a", "<script>alert(1)</script>", "b"]


def test_annotator_names_are_checked(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    assert annotator_id(db, " ada ") == annotator_id(db, "ada")
    for bad in ["", "   ", "x" * 65, "bad\x00name"]:
        with pytest.raises(AnnotatorNameError):
            annotator_id(db, bad)


def test_reload_serves_the_same_task_and_two_annotators_get_different_ones(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 3)
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    first = next_task(db, ada, overlap=1, assignment_timeout_s=TIMEOUT)
    assert first is not None and first.k == 4
    assert next_task(db, ada, 1, TIMEOUT).comparison_id == first.comparison_id  # a page reload
    other = next_task(db, bob, 1, TIMEOUT)
    assert other is not None and other.comparison_id != first.comparison_id
    assert tasks_left_for(db, ada, 1, TIMEOUT) == 1


def test_overlap_serves_a_task_to_n_annotators_only(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1)
    ids = [annotator_id(db, name) for name in ["a", "b", "c"]]
    served = [next_task(db, i, overlap=2, assignment_timeout_s=TIMEOUT) for i in ids]
    assert served[0].comparison_id == served[1].comparison_id
    assert served[2] is None


def test_skip_frees_the_slot_for_others_but_not_for_the_skipper(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1)
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    task = next_task(db, ada, 1, TIMEOUT)
    assert next_task(db, bob, 1, TIMEOUT) is None
    submit(db, ada, task.comparison_id, "skipped")
    assert next_task(db, ada, 1, TIMEOUT) is None
    assert next_task(db, bob, 1, TIMEOUT).comparison_id == task.comparison_id


def test_abandoned_task_returns_to_the_pool_after_the_timeout(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1)
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    assert next_task(db, ada, 1, assignment_timeout_s=TIMEOUT) is not None
    assert next_task(db, bob, 1, assignment_timeout_s=TIMEOUT) is None
    db["assignments"].update(1, {"served_at": 0.0})  # served long ago
    assert next_task(db, bob, 1, assignment_timeout_s=TIMEOUT) is not None


def test_ranking_with_ties_is_stored_dense_with_time_spent(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 2)
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 1, TIMEOUT)
    ranking_id = submit(db, ada, task.comparison_id, "ranked", [1, 3, 3, 4])
    row = db["rankings"].get(ranking_id)
    assert json.loads(row["ranks"]) == [1, 2, 2, 3]
    assert row["seconds"] >= 0 and row["status"] == "ranked"
    assert done_today(db, ada) == 1
    assert next_task(db, ada, 1, TIMEOUT).comparison_id != task.comparison_id


def test_invalid_and_duplicate_submissions_are_refused_and_lose_nothing(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 2)
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    task = next_task(db, ada, 1, TIMEOUT)
    with pytest.raises(RankingError, match="D has no rank"):
        submit(db, ada, task.comparison_id, "ranked", [1, 2, 3, None])
    with pytest.raises(RankingError, match="not served to you"):
        submit(db, bob, task.comparison_id, "ranked", [1, 2, 3, 4])
    with pytest.raises(RankingError, match="say why"):
        submit(db, ada, task.comparison_id, "flagged")
    first = submit(db, ada, task.comparison_id, "ranked", [1, 2, 3, 4])
    with pytest.raises(DuplicateSubmission):
        submit(db, ada, task.comparison_id, "ranked", [4, 3, 2, 1])
    assert [r["id"] for r in db["rankings"].rows] == [first]
    assert json.loads(db["rankings"].get(first)["ranks"]) == [1, 2, 3, 4]


def test_undo_reopens_the_task_and_the_redo_supersedes(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 2)
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 1, TIMEOUT)
    first = submit(db, ada, task.comparison_id, "ranked", [1, 2, 3, 4])
    next_task(db, ada, 1, TIMEOUT)  # the page already shows the next item
    assert undo_last(db, ada) == task.comparison_id
    assert next_task(db, ada, 1, TIMEOUT).comparison_id == task.comparison_id
    second = submit(db, ada, task.comparison_id, "ranked", [2, 1, 1, 3])
    assert db["rankings"].get(first)["retracted_at"] is not None
    assert db["rankings"].get(second)["supersedes"] == first
    exported = list(ranking_records(db))
    assert [r["ranking_id"] for r in exported] == [second]


def test_flag_may_carry_no_ranking(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1)
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 1, TIMEOUT)
    row = db["rankings"].get(submit(db, ada, task.comparison_id, "flagged", reason="all bad"))
    assert row["ranks"] is None and row["reason"] == "all bad"
    assert list(ranking_records(db)) == []  # flags are not training data


def test_pairs_export_excludes_ties(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1, k=3)
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 1, TIMEOUT)
    submit(db, ada, task.comparison_id, "ranked", [1, 1, 2])
    pairs = list(pair_records(ranking_records(db)))
    texts = [r.text for r in task.responses]
    assert pairs == [
        {"prompt": task.prompt, "chosen": texts[0], "rejected": texts[2]},
        {"prompt": task.prompt, "chosen": texts[1], "rejected": texts[2]},
    ]


def test_free_slots_counts_what_the_sampler_must_top_up(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 3)
    assert free_slots(db, overlap=2, assignment_timeout_s=TIMEOUT) == 6
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 2, TIMEOUT)
    submit(db, ada, task.comparison_id, "ranked", [1, 2, 3, 4])
    assert free_slots(db, overlap=2, assignment_timeout_s=TIMEOUT) == 5


def _rank(db_path: str, name: str, n: int, barrier) -> int:
    """One annotator process: rank n tasks as fast as it can; returns how many it stored."""
    db = open_db(db_path)
    me = annotator_id(db, name)
    barrier.wait()
    stored = 0
    while stored < n and (task := next_task(db, me, 1, TIMEOUT)) is not None:
        submit(db, me, task.comparison_id, "ranked", list(range(1, task.k + 1)))
        stored += 1
    return stored


def test_two_processes_ranking_at_once_lose_nothing(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 120)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    path = str(tmp_path / "rlhf.db")
    with ctx.Pool(2) as pool:
        counts = pool.starmap(_rank, [(path, "ada", 60, barrier), (path, "bob", 60, barrier)])
    assert counts == [60, 60]
    rows = list(db["rankings"].rows)
    assert len(rows) == 120
    assert len({r["comparison_id"] for r in rows}) == 120  # no task served to both
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_writer_waits_for_another_writers_lock(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1)
    ada = annotator_id(db, "ada")
    task = next_task(db, ada, 1, TIMEOUT)
    blocker = sqlite3.connect(tmp_path / "rlhf.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
    threading.Timer(0.5, blocker.execute, ["COMMIT"]).start()  # ...for half a second
    started = time.monotonic()
    submit(db, ada, task.comparison_id, "ranked", [1, 2, 3, 4])
    assert time.monotonic() - started >= 0.4
    assert db["rankings"].count == 1
