"""An operator restores a snapshot while annotators keep ranking, and the worker keeps adding
items (so ids the restored database never had are given again, to other prompts).

Every answer acknowledged before the restore is in its safety snapshot, every one acknowledged
after it in the restored database, and each under the prompt its annotator was shown: an answer
to an item shown before the restore is refused with ``ItemReplaced``, whose message says so,
never stored under whatever item took that id. The Rank page shows that message, drops the
ranking typed for the item that is gone and serves the next one. An undo or a reopen from a page
shown before the restore is refused (``RestoredSince``): the annotator's id and the answers' ids
it knew may be someone else's in the restored database.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from app_helpers import rank_page
from store_helpers import add_texts, make_comparisons

from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.backup import restore, snapshot_bytes
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.submissions import (
    ItemReplaced,
    RestoredSince,
    reopen,
    reopen_last,
    restore_mark,
    submit,
)
from rlhf_loop.store.tasks import next_task

ANNOTATORS = 3
TIMEOUT = 600.0
THINK_S = 0.005  # an annotator reads the item this long before submitting


@dataclass
class Answer:
    """One acknowledged answer: what was shown and what was sent."""

    ranking_id: int
    annotator: int
    comparison_id: int
    prompt: str
    ranks: list[int]
    returned_at: float  # time.monotonic() when submit returned


@dataclass
class Annotator:
    name: str
    answers: list[Answer] = field(default_factory=list)
    replaced: list[tuple[int, str, str]] = field(default_factory=list)  # id, prompt, message
    reloads: int = 0  # item claims refused: the annotator's id was restored away meanwhile
    error: BaseException | None = None


def _annotate(path: Path, person: Annotator, stop: threading.Event) -> None:
    """As the Rank page: each run finds the annotator by name (a restore may have forgotten
    them), shows their item, and binds the submit to the item's id and serving time."""
    try:
        db = open_db(path)
        while not stop.is_set():
            me = annotator_id(db, person.name)
            try:
                task = next_task(db, me, 1, TIMEOUT, name=person.name)
            except StoreError:  # looked up before the restore, claiming after: the page says
                person.reloads += 1  # so, and its next run looks them up again
                continue
            if task is None:
                time.sleep(0.01)
                continue
            time.sleep(THINK_S)
            ranks = [1 + (task.comparison_id + i) % task.k for i in range(task.k)]
            try:
                ranking = submit(
                    db, me, task.comparison_id, "ranked", ranks, served_at=task.served_at
                )
            except ItemReplaced as exc:
                person.replaced.append((task.comparison_id, task.prompt, str(exc)))
                continue
            person.answers.append(
                Answer(ranking, me, task.comparison_id, task.prompt, ranks, time.monotonic())
            )
    except BaseException as exc:
        person.error = exc
        raise


def _keep_adding_items(path: Path, stop: threading.Event, batch: threading.Lock) -> None:
    """The worker: a prompt imported with every batch of new items (held under ``batch``, so a
    test can pick the moment between two)."""
    db = open_db(path)
    while not stop.is_set():
        with batch:
            add_texts(db, [f"imported at {time.monotonic_ns()}"])
            make_comparisons(db, 3)
        time.sleep(0.02)


def _rows(path: Path) -> dict[int, tuple[int, int, str, list[int]]]:
    """ranking id -> (annotator, comparison, prompt, ranks) in the database file at ``path``."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            """SELECT r.id, r.annotator_id, r.comparison_id, p.text, r.ranks FROM rankings r
               JOIN comparisons c ON c.id = r.comparison_id JOIN prompts p ON p.id = c.prompt_id"""
        ).fetchall()
    return {rid: (who, cid, text, json.loads(ranks)) for rid, who, cid, text, ranks in rows}


def test_a_restore_during_a_shift_loses_no_acknowledged_answer_and_misfiles_none(
    tmp_path: Path,
) -> None:
    path, backups = tmp_path / "rlhf.db", tmp_path / "backups"
    db = open_db(path)
    make_comparisons(db, 30)
    snapshot = snapshot_bytes(path)  # the operator's backup, from before the shift
    people = [Annotator(f"annotator{i}") for i in range(ANNOTATORS)]
    stop, batch = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=_annotate, args=(path, p, stop)) for p in people]
    threads.append(threading.Thread(target=_keep_adding_items, args=(path, stop, batch)))
    for thread in threads:
        thread.start()
    try:
        _wait_until(lambda: all(len(p.answers) >= 15 for p in people), people)
        # One more annotator has an item on screen across the restore, for sure.
        dora = annotator_id(db, "dora")
        claimed = []
        _wait_until(lambda: claimed.append(next_task(db, dora, 1, TIMEOUT)) or claimed[-1], people)
        doras_item = claimed[-1]
        with batch:  # between two batches of the worker, as annotators go on
            restore_began = time.monotonic()
            report = restore(path, snapshot, backups)
            restore_ended = time.monotonic()
            # One prompt more than the history before had here: the items the worker samples
            # next get the ids of items from before, under other prompts.
            add_texts(db, ["imported after the restore"])
        after = {p.name: len(p.answers) for p in people}
        _wait_until(lambda: all(len(p.answers) >= after[p.name] + 10 for p in people), people)
        _wait_until(lambda: db["comparisons"].count >= doras_item.comparison_id, people)
        took_her_id = db["prompts"].get(
            db["comparisons"].get(doras_item.comparison_id)["prompt_id"]
        )["text"]
        assert took_her_id != doras_item.prompt  # her item's id now names another prompt
        with pytest.raises(ItemReplaced, match=r"restored by an operator at .*NOT saved"):
            submit(
                db,
                dora,
                doras_item.comparison_id,
                "ranked",
                [1, 2, 3, 4],
                served_at=doras_item.served_at,
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert [p.error for p in people if p.error] == []

    saved, live = _rows(report.safety_snapshot), _rows(path)
    answers = [a for p in people for a in p.answers]
    for a in answers:
        row = (a.annotator, a.comparison_id, a.prompt, a.ranks)
        if a.returned_at < restore_began:
            assert saved.get(a.ranking_id) == row, "an answer acknowledged before is not saved"
        elif a.returned_at > restore_ended:
            assert live.get(a.ranking_id) == row, "an answer acknowledged after is lost"
        else:  # acknowledged while the restore ran: before its lock, or after its commit
            assert row in (saved.get(a.ranking_id), live.get(a.ranking_id))
    # The restored database holds only answers acknowledged since, each under the prompt shown
    # (the snapshot had none): none refused, none of dora's, none misfiled.
    acknowledged = {(a.ranking_id, a.annotator, a.comparison_id, a.prompt) for a in answers}
    assert {(rid, *row[:3]) for rid, row in live.items()} <= acknowledged
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    replaced = [r for p in people for r in p.replaced]
    assert all("restored by an operator at" in message for _, _, message in replaced)
    print(
        f"\nrestore during a shift: {len(answers)} answers acknowledged "
        f"({sum(a.returned_at < restore_began for a in answers)} before the restore, all in "
        f"its safety snapshot; {len(live)} after it, all in the restored database), "
        f"{len(replaced) + 1} answers to items shown before it refused as restored away, "
        f"{sum(p.reloads for p in people)} item claims refused (id restored away), 0 lost, "
        f"0 misfiled; the restore took {(restore_ended - restore_began) * 1000:.0f} ms"
    )


def _wait_until(condition, people: list[Annotator], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert [p.error for p in people if p.error] == []
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_rank_page_says_the_item_was_restored_away_and_drops_its_ranking(
    data_dir: Path,
) -> None:
    path = data_dir / "rlhf.db"
    db = open_db(path)
    make_comparisons(db, 1)
    at = rank_page()
    at.text_input(key="typed-1").input("1 2 3 4")
    at.button[0].click().run()
    snapshot = snapshot_bytes(path)  # with ada's answer to item 1
    make_comparisons(db, 1)
    at.run()
    assert at.text[1].value == "prompt 1"  # item 2, after the annotator's name
    at.text_input(key="typed-2").input("1 2 2 3")

    restore(path, snapshot, data_dir / "backups")  # an operator, from the Settings page
    add_texts(db, ["imported after the restore"])
    make_comparisons(db, 1)  # the worker: item 2 again, for another prompt
    at.button[0].click().run()  # ada submits what she typed for the item she saw

    assert "The database was restored by an operator at" in at.warning[0].value
    assert "NOT saved" in at.warning[0].value
    assert at.text[1].value == "prompt 2"  # the next item, under the id of the one gone
    assert at.text_input(key="typed-2").value == ""  # her ranking of the other is not in its box
    assert [(r["comparison_id"], r["ranks"]) for r in db["rankings"].rows] == [(1, "[1, 2, 3, 4]")]
    at.text_input(key="typed-2").input("4 3 2 1")
    at.button[0].click().run()
    assert "Saved D > C > B > A" in at.success[0].value
    assert json.loads(db["rankings"].get(2)["ranks"]) == [4, 3, 2, 1]


def _ranked_by(db, name: str, ranks: list[int]) -> tuple[int, int]:
    """(annotator id, ranking id) of ``name``'s answer to their next item."""
    me = annotator_id(db, name)
    return me, submit(db, me, next_task(db, me, 1, TIMEOUT).comparison_id, "ranked", ranks)


def test_an_undo_or_reopen_from_before_a_restore_leaves_the_new_owner_of_the_ids_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rlhf.db"
    db = open_db(path)
    make_comparisons(db, 2)
    snapshot = snapshot_bytes(path)  # before anyone registered
    seen = restore_mark(db)  # ada's page, as it reads her id and her answers
    ada, adas = _ranked_by(db, "ada", [1, 2, 3, 4])
    restore(path, snapshot, tmp_path / "backups")
    bob, bobs = _ranked_by(db, "bob", [4, 3, 2, 1])
    assert (bob, bobs) == (ada, adas)  # ada's page knows bob's id and bob's answer as hers

    with pytest.raises(RestoredSince, match=r"restored by an operator at .*nothing was undone"):
        reopen_last(db, ada, seen_restore=seen)
    with pytest.raises(RestoredSince, match="nothing was reopened"):
        reopen(db, ada, adas, seen_restore=seen)
    assert db["rankings"].get(bobs)["retracted_at"] is None
    assert db["assignments"].get(1)["closed_at"] is not None  # bob's item is not served again
    # A page shown since reads the new mark: bob undoes his own answer.
    assert reopen_last(db, bob, seen_restore=restore_mark(db)).ranking_id == bobs


def test_the_rank_page_undoes_nothing_of_another_persons_after_a_restore(data_dir: Path) -> None:
    path = data_dir / "rlhf.db"
    db = open_db(path)
    make_comparisons(db, 2)
    snapshot = snapshot_bytes(path)
    at = rank_page()  # ada, id 1
    at.text_input(key="typed-1").input("1 2 3 4")
    at.button[0].click().run()
    at.session_state["recent-answers"] = True  # her last answers, with a Reopen button each
    at.run()
    other_tab = rank_page()  # ada's second tab, with its Undo button

    restore(path, snapshot, data_dir / "backups")
    _ranked_by(db, "bob", [4, 3, 2, 1])  # bob: id 1, ranking 1, on item 1
    next(b for b in other_tab.button if b.label == "Undo last submission").click().run()
    next(b for b in at.button if b.key == "reopen-1").click().run()

    assert "restored by an operator at" in other_tab.warning[0].value
    assert "nothing was undone" in other_tab.warning[0].value
    assert "nothing was reopened" in at.warning[0].value
    assert not other_tab.info and not at.info  # bob's ranking is not brought back to her
    assert db["rankings"].get(1)["retracted_at"] is None
