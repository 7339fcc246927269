"""The store at scale (bench/store_scale.py): the v10 migration on an old database, the queue's
slot count kept by triggers, the Dashboard's agreement figures kept up to date, and exports that
stream. Small generated databases; the 10^6 figures are the bench's."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
import sqlite_utils
from store_helpers import fresh_db, make_comparisons, old_schema

from bench.store_scale_data import build
from rlhf_loop import export
from rlhf_loop.agreement import tally
from rlhf_loop.export import export_jsonl
from rlhf_loop.export_sft import export_sft_jsonl
from rlhf_loop.store import agreement_cache
from rlhf_loop.store.agreement_cache import forget_tallies, training_agreement
from rlhf_loop.store.annotators import SIMULATED, annotator_id
from rlhf_loop.store.backup import restore, snapshot_bytes
from rlhf_loop.store.db import open_db
from rlhf_loop.store.judgements import judgements
from rlhf_loop.store.prompt_list import restore_prompts, retire_prompts
from rlhf_loop.store.schema import SCHEMA_VERSION, schema_version
from rlhf_loop.store.simulated import remove_simulated
from rlhf_loop.store.submissions import reopen, submit, undo_last
from rlhf_loop.store.tasks import free_slots, next_task, tasks_left_for

TIMEOUT = 600.0

# The queue's definitions before v10, counting each item's rankings row by row: the reference
# the indexed queue must agree with.
_OLD_FREE = """
    :overlap
    - (SELECT count(*) FROM rankings r
       WHERE r.comparison_id = c.id AND r.retracted_at IS NULL AND r.status != 'skipped')
    - (SELECT count(*) FROM assignments a
       WHERE a.comparison_id = c.id AND a.closed_at IS NULL AND a.served_at > :cutoff)
"""
_OLD_POOL = (
    "c.gold_ranks IS NULL"
    " AND c.prompt_id NOT IN (SELECT id FROM prompts WHERE retired_at IS NOT NULL)"
)


def _recounted(db: sqlite_utils.Database) -> dict[int, int]:
    """Each item's live answers (not skips), counted from the rankings."""
    return {
        c: n
        for c, n in db.execute(
            """
            SELECT c.id, count(r.id) FROM comparisons c LEFT JOIN rankings r
              ON r.comparison_id = c.id AND r.retracted_at IS NULL AND r.status != 'skipped'
            GROUP BY c.id
            """
        )
    }


def _kept(db: sqlite_utils.Database) -> dict[int, int]:
    return {r["id"]: r["live_answers"] for r in db["comparisons"].rows}


def test_v10_counts_the_answers_of_an_old_databases_items_and_indexes_the_queue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = old_schema(sqlite_utils.Database(path), 9)
    items = make_comparisons(old, 3, k=2)
    ada, bob, cat = (
        old["annotators"].insert({"name": n, "role": "annotator", "created_at": 1.0}).last_pk
        for n in ["ada", "bob", "cat"]
    )
    answers = [  # (item, annotator, status, retracted)
        (items[0], ada, "ranked", False),
        (items[0], bob, "ranked", True),
        (items[0], bob, "ranked", False),
        (items[1], ada, "skipped", False),
        (items[1], cat, "flagged", False),
    ]
    for item, who, status, retracted in answers:
        old["assignments"].insert(
            {"comparison_id": item, "annotator_id": who, "served_at": 1.0, "closed_at": 2.0},
            ignore=True,
        )
        old["rankings"].insert(
            {
                "comparison_id": item,
                "annotator_id": who,
                "status": status,
                "ranks": "[1, 2]",
                "seconds": 1.0,
                "created_at": 2.0,
                "retracted_at": 3.0 if retracted else None,
            }
        )
    old.conn.close()

    db = open_db(path)
    assert schema_version(db) == SCHEMA_VERSION
    assert _kept(db) == {items[0]: 2, items[1]: 1, items[2]: 0} == _recounted(db)
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM comparisons WHERE live_answers < 2"
    ).fetchall()
    assert "idx_comparisons_live_answers" in plan[0][3]
    dan = annotator_id(db, "dan")
    served = {next_task(db, dan, 2, TIMEOUT).comparison_id}
    submit(db, dan, next(iter(served)), "ranked", [2, 1])
    served.add(next_task(db, dan, 2, TIMEOUT).comparison_id)
    assert served == {items[1], items[2]}  # the first item has its two answers already
    assert _kept(db) == _recounted(db)


def test_each_items_answer_count_follows_every_write(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 4, k=3)
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    sim = annotator_id(db, "sim", role=SIMULATED)

    def answer(who: int, status: str = "ranked", **details: object) -> int:
        task = next_task(db, who, 3, TIMEOUT)
        return submit(db, who, task.comparison_id, status, **details)

    steps = [
        lambda: answer(ada, ranks=[1, 2, 3]),
        lambda: answer(bob, "skipped"),
        lambda: answer(bob, "flagged", reason="broken"),
        lambda: answer(sim, ranks=[3, 2, 1]),
        lambda: undo_last(db, ada),
        lambda: answer(ada, ranks=[2, 1, 3]),
        lambda: reopen(db, bob, db["rankings"].get(3)["id"]),
        lambda: remove_simulated(db, "olga", TIMEOUT),
        lambda: db.execute("DELETE FROM rankings WHERE id = 2"),
    ]
    for step in steps:
        step()
        assert _kept(db) == _recounted(db)
    assert sum(_kept(db).values()) == 1  # ada's redo only: bob's flag reopened, sim's removed


@pytest.mark.parametrize("overlap", [1, 2, 3])
def test_the_queue_counts_free_slots_as_it_did_row_by_row(tmp_path: Path, overlap: int) -> None:
    db = fresh_db(tmp_path)
    items = make_comparisons(db, 12, k=2)
    retire_prompts(db, [db["comparisons"].get(items[5])["prompt_id"]], "olga")
    people = [annotator_id(db, f"p{i}") for i in range(4)]
    rng = random.Random(overlap)
    for _ in range(30):
        who = rng.choice(people)
        task = next_task(db, who, overlap, TIMEOUT)
        if task is not None and rng.random() < 0.8:
            submit(db, who, task.comparison_id, rng.choice(["ranked", "skipped"]), [1, 2])
        elif rng.random() < 0.3:
            undo_last(db, who)
        params = {"overlap": overlap, "cutoff": 0.0}
        old_free = db.execute(
            f"SELECT coalesce(sum(max(({_OLD_FREE}), 0)), 0) FROM comparisons c WHERE {_OLD_POOL}",
            params,
        ).fetchone()[0]
        assert free_slots(db, overlap, 10**10) == old_free
        for person in people:
            left = db.execute(
                f"""SELECT count(*) FROM comparisons c WHERE {_OLD_POOL}
                AND NOT EXISTS (SELECT 1 FROM assignments a
                                WHERE a.comparison_id = c.id AND a.annotator_id = :annotator)
                AND ({_OLD_FREE}) > 0""",
                params | {"annotator": person},
            ).fetchone()[0]
            assert tasks_left_for(db, person, overlap, 10**10) == left


def _from_scratch(db: sqlite_utils.Database):
    return tally(judgements(db, gold=False)).figures()


def test_the_dashboards_agreement_stays_exact_as_rankings_arrive(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    items = make_comparisons(db, 8, k=3)
    people = [annotator_id(db, n) for n in ["ada", "bob", "cat"]]
    sim = annotator_id(db, "sim", role=SIMULATED)
    rng = random.Random(0)

    def rank(who: int, n: int) -> None:
        for _ in range(n):
            task = next_task(db, who, 4, TIMEOUT)
            submit(db, who, task.comparison_id, "ranked", rng.sample([1, 2, 2, 3][:3], 3))

    for who in people:
        rank(who, 4)
    statements: list[str] = []
    assert training_agreement(db) == _from_scratch(db)  # built from every ranking
    snapshot = snapshot_bytes(tmp_path / "rlhf.db")
    db.conn.set_trace_callback(statements.append)
    events = [
        lambda: rank(people[0], 2),  # new rankings
        lambda: rank(sim, 3),  # simulated: in no figure
        lambda: undo_last(db, people[1]),  # a retraction
        lambda: rank(people[1], 1),  # the redo
        lambda: retire_prompts(db, [db["comparisons"].get(items[0])["prompt_id"]], "olga"),
        lambda: restore_prompts(db, [db["comparisons"].get(items[0])["prompt_id"]], "olga"),
        lambda: db["comparisons"].update(items[1], {"gold_ranks": "[1, 2, 3]"}),
        lambda: remove_simulated(db, "olga", TIMEOUT),
    ]
    for event in events:
        event()
        statements.clear()
        assert training_agreement(db) == _from_scratch(db)
        # Brought up to date from the items that changed, not from every ranking again.
        read = [s for s in statements if "ORDER BY r.comparison_id" in s]
        assert read and all("r.comparison_id IN (" in s for s in read), read
    db.conn.set_trace_callback(None)
    restore(db, snapshot, tmp_path / "backups")  # the rows replaced wholesale
    rank(people[2], 1)
    assert training_agreement(db) == _from_scratch(db)
    assert training_agreement(db).shared_items > 0


def _full_reads(statements: list[str]) -> list[str]:
    """The statements that read every item's rankings (a build), not named items'."""
    return [
        s for s in statements if "ORDER BY r.comparison_id" in s and "r.comparison_id IN (" not in s
    ]


def test_a_new_process_takes_up_the_saved_tally_and_redoes_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agreement_cache, "SAVE_AFTER_ITEMS", 3)
    db = fresh_db(tmp_path)
    make_comparisons(db, 12, k=3)
    people = [annotator_id(db, n) for n in ["ada", "bob", "cat"]]
    rng = random.Random(1)

    def rank(who: int, n: int) -> None:
        for _ in range(n):
            task = next_task(db, who, 3, TIMEOUT)
            submit(db, who, task.comparison_id, "ranked", rng.sample([1, 2, 3], 3))

    for who in people:
        rank(who, 5)
    saved = tmp_path / "rlhf.db.agreement.npz"
    snapshot = snapshot_bytes(tmp_path / "rlhf.db")
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    assert training_agreement(db) == _from_scratch(db) and saved.exists()  # built, then saved
    assert len(_full_reads(statements)) == 1

    # A restarted server: the saved tally, then only the items changed since it was saved.
    for change in (lambda: rank(people[0], 2), lambda: undo_last(db, people[1]), lambda: None):
        change()
        forget_tallies()
        statements.clear()
        assert training_agreement(db) == _from_scratch(db)
        assert _full_reads(statements) == []
    rank(people[2], 4)  # 4 items redone: past SAVE_AFTER_ITEMS, so saved again
    training_agreement(db)
    forget_tallies()
    statements.clear()
    assert training_agreement(db) == _from_scratch(db)
    assert not [s for s in statements if "r.comparison_id IN (" in s]  # nothing left to redo

    # Files that cannot be trusted are built again: unreadable, or of rows since restored.
    saved.write_bytes(b"PK\x03\x04 not a tally")
    forget_tallies()
    statements.clear()
    assert training_agreement(db) == _from_scratch(db)
    assert len(_full_reads(statements)) == 1
    stale = saved.read_bytes()
    restore(db, snapshot, tmp_path / "backups")
    saved.write_bytes(stale)  # a tally of the rows before the restore
    forget_tallies()
    statements.clear()
    assert training_agreement(db) == _from_scratch(db)
    assert len(_full_reads(statements)) == 1
    forget_tallies()  # the tally saved after the restore is taken up like any other
    statements.clear()
    assert training_agreement(db) == _from_scratch(db)
    assert _full_reads(statements) == []
    db.conn.set_trace_callback(None)


def _export_peak(db_path: Path, write) -> int:
    """tracemalloc's peak while ``write`` exports the database to /dev/null."""
    db = open_db(db_path)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        tracemalloc.start()
        try:
            lines = write(db, sink)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    db.conn.close()
    assert lines > 0
    return peak


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Generated stores of 1,000 and 8,000 rankings, shared by the export tests."""
    folder = tmp_path_factory.mktemp("stores")
    build(folder / "small.db", 1_000)
    build(folder / "large.db", 8_000)
    return folder / "small.db", folder / "large.db"


@pytest.mark.parametrize(
    "write",
    [
        lambda db, out: export_jsonl(db, "full", out),
        lambda db, out: export_jsonl(db, "pairs", out),
        export_sft_jsonl,
    ],
    ids=["full", "pairs", "sft"],
)
def test_an_exports_memory_does_not_grow_with_the_rankings(
    stores, write, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rankings are read a chunk at a time: chunks smaller than either store, so that both hold
    # one whole chunk and the peak can only grow with the rankings if more than a chunk is kept.
    monkeypatch.setattr(export, "RANKINGS_PER_READ", 100)
    small_peak, large_peak = (_export_peak(path, write) for path in stores)
    # Eight times the rows, the same peak: one record at a time (a list of them grew eightfold).
    assert large_peak < 1.5 * small_peak + 64 * 1024, (small_peak, large_peak)
