"""What an annotator has beside the item (issue 11, items 3, 4 and 7), through the store and
AppTest: undo and reopen with the old ranking back in the box, a comment stored with the
ranking, guidelines and a daily target from the Settings page, the streak, the refusal at the
box. What only a browser shows (focus, the popover, Tab order) is in test_rank_keyboard.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import operator_page
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest
from test_pages import rank_page, shown_texts

from rlhf_loop.ranking import RankingError
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.guidelines import GuidelinesError, current_guidelines, set_guidelines
from rlhf_loop.store.submissions import (
    STREAK_BREAK_S,
    progress,
    recent_answers,
    reopen,
    reopen_last,
    submit,
)
from rlhf_loop.store.tasks import next_task


def _answer(db, who: int, status: str = "ranked", **details) -> int:
    task = next_task(db, who, 1, 1800)
    return submit(db, who, task.comparison_id, status, **details)


def test_reopen_any_own_answer_retracts_it_and_the_redo_supersedes_it(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 4)
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    first = _answer(db, ada, ranks=[1, 2, 2, 3], comment="B and C say the same")
    _answer(db, ada, "flagged", reason="Prompt is broken.")
    on_screen = next_task(db, ada, 1, 1800)  # the third item is open when ada reopens the first
    assert [a.ranking_id for a in recent_answers(db, ada)] == [2, first]

    with pytest.raises(RankingError, match="not yours"):
        reopen(db, bob, first)
    back = reopen(db, ada, first)
    said = ("ranked", [1, 2, 2, 3], "B and C say the same")
    assert (back.status, back.ranks, back.comment) == said
    assert db["rankings"].get(first)["retracted_at"] is not None  # kept, marked retracted
    with pytest.raises(RankingError, match="already reopened"):
        reopen(db, ada, first)
    assert next_task(db, ada, 1, 1800).comparison_id == back.comparison_id  # served next
    corrected = submit(db, ada, back.comparison_id, "ranked", [2, 1, 1, 3], comment="fixed")
    row = db["rankings"].get(corrected)
    assert row["supersedes"] == first and row["comment"] == "fixed"
    assert next_task(db, ada, 1, 1800).comparison_id == on_screen.comparison_id  # then this one
    assert [a.ranking_id for a in recent_answers(db, ada)] == [corrected, 2]


def test_undo_gives_back_what_the_last_answer_said(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 2)
    ada = annotator_id(db, "ada")
    assert reopen_last(db, ada) is None
    _answer(db, ada, "flagged", reason="Harmful content.")
    back = reopen_last(db, ada)
    assert (back.status, back.ranks, back.reason) == ("flagged", None, "Harmful content.")


def test_the_streak_counts_answers_since_the_last_long_pause(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 6)
    ada = annotator_id(db, "ada")
    for status in ("ranked", "ranked", "skipped", "ranked", "flagged"):
        _answer(db, ada, status, ranks=[1, 2, 3, 4], reason="Other.")
    rows = [r["id"] for r in db["rankings"].rows_where(order_by="id")]
    t0 = db["rankings"].get(rows[-1])["created_at"]
    # The first two answers were given before a 20-minute pause.
    for rid, at in zip(rows, [t0 - 1500, t0 - 1400, t0 - 30, t0 - 20, t0], strict=True):
        db["rankings"].update(rid, {"created_at": at})
    now = progress(db, ada, at=t0 + 5)
    assert now.streak == 2  # ranked and flagged after the pause; the skip neither counts nor breaks
    assert now.done_today in (2, 4)  # (2 when the test runs just after midnight)
    assert progress(db, ada, at=t0 + STREAK_BREAK_S + 1).streak == 0  # a pause still going on


def test_guidelines_are_kept_per_edit_and_checked(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    assert current_guidelines(db).text == "" and current_guidelines(db).daily_target == 0
    set_guidelines(db, "Prefer **correct** answers.", 50, "olga")
    set_guidelines(db, "Prefer short, correct answers.", 80, "oscar")
    now = current_guidelines(db)
    assert (now.text, now.daily_target) == ("Prefer short, correct answers.", 80)
    assert now.author == "oscar"
    assert db["guidelines"].count == 2
    with pytest.raises(GuidelinesError):
        set_guidelines(db, "x", -1, "olga")
    with pytest.raises(GuidelinesError):
        set_guidelines(db, "x" * 20_001, 0, "olga")


def test_a_comment_is_stored_with_the_ranking(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    at = rank_page()
    at.text_input(key="typed-1").input("1 2 2 3")
    at.text_input(key="comment-1").input("  <b>C</b> repeats B  ")
    at.button[0].click().run()
    row = db["rankings"].get(1)
    assert json.loads(row["ranks"]) == [1, 2, 2, 3] and row["comment"] == "<b>C</b> repeats B"


def test_undo_brings_the_ranking_back_into_the_box_and_says_so(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    at = rank_page()
    first = shown_texts(at)[1]
    at.text_input(key="typed-1").input("B > A = C > D")
    at.text_input(key="comment-1").input("close call")
    at.button[0].click().run()
    next(b for b in at.button if b.label == "Undo last submission").click().run()
    assert shown_texts(at)[1] == first
    assert at.text_input(key="typed-1").value == "2 1 2 3"
    assert at.text_input(key="comment-1").value == "close call"
    assert "Undone: your ranking B > A = C > D is retracted and back in the box" in at.info[0].value
    at.text_input(key="typed-1").input("2 1 1 3")
    at.button[0].click().run()
    redo = db["rankings"].get(2)
    assert json.loads(redo["ranks"]) == [2, 1, 1, 3] and redo["supersedes"] == 1
    assert db["rankings"].get(1)["retracted_at"] is not None


def test_reopen_from_the_last_answers_brings_one_back_for_correction(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 3)
    at = rank_page()
    for cid, typed in ((1, "1234"), (2, "4321")):
        at.text_input(key=f"typed-{cid}").input(typed)
        at.button[0].click().run()
    assert not [b for b in at.button if b.label == "Reopen"]  # the list is drawn only when open
    at.session_state["recent-answers"] = True  # the annotator opens "Your last 5 answers"
    at.run()
    assert [t for t in shown_texts(at) if t.startswith("prompt ")][1:] == ["prompt 1", "prompt 0"]
    next(b for b in at.button if b.key == "reopen-1").click().run()
    assert shown_texts(at)[1] == "prompt 0"
    assert at.text_input(key="typed-1").value == "1 2 3 4"
    assert "Reopened: your ranking A > B > C > D is retracted" in at.info[0].value
    at.text_input(key="typed-1").input("1 2 3 3")
    at.button[0].click().run()
    assert db["rankings"].get(3)["supersedes"] == 1
    assert shown_texts(at)[1] == "prompt 2"  # then the item that was on screen before


def test_a_refusal_is_shown_at_the_ranking_box(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 1)
    at = rank_page()
    at.text_input(key="typed-1").input("1 2")
    at.button[0].click().run()
    assert db["rankings"].count == 0
    form = at.main.children[next(i for i, b in at.main.children.items() if b.type == "form")]
    # The error is in the form, in the ranking box's column, before the first response.
    assert "expected a rank for each of the 4 responses" in form.error[0].value
    typed_column = form.children[0].children[0]
    assert [e.value for e in typed_column.error] == [form.error[0].value]


def test_guidelines_and_the_daily_target_written_on_the_settings_page_reach_the_rank_page(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 3)
    settings = operator_page("pages/settings.py")
    settings.text_area(key="guidelines-text").input("## Rules\n\nPrefer *correct* answers.")
    settings.number_input(key="guidelines-target").set_value(20)
    next(b for b in settings.button if b.label == "Save guidelines").click().run()
    assert "Saved" in settings.success[0].value
    assert current_guidelines(db).author == "olga"

    at = rank_page()
    assert [m.value for m in at.sidebar.markdown] == ["## Rules\n\nPrefer *correct* answers."]
    at.text_input(key="typed-1").input("1 2 3 4")
    at.button[0].click().run()
    assert [m.label for m in at.metric] == ["Done today", "In a row", "Queue left"]
    assert [m.value for m in at.metric] == ["1 / 20", "1", "1"]  # item 2 on screen, 3 left


def test_no_guidelines_no_panel(data_dir: Path) -> None:
    make_comparisons(fresh_db(data_dir), 1)
    at: AppTest = rank_page()
    assert not at.sidebar.markdown and not at.sidebar.expander


def test_the_imported_heap_is_frozen_once_per_set_of_modules(monkeypatch) -> None:
    """Issue 11, item 6: Streamlit's collection after every run skips the long-lived objects."""
    import gc

    from pages import common

    collections: list[int] = []
    monkeypatch.setattr(common, "_modules_frozen", 0)
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(1) or 0)
    try:
        common.settle_heap()
        assert gc.get_freeze_count() > 0
        common.settle_heap()  # no module imported since: nothing to do
        assert len(collections) == 1
        monkeypatch.setattr(common, "_modules_frozen", common._modules_frozen - 1)
        common.settle_heap()  # as after an operator page imported its modules
        assert len(collections) == 2
    finally:
        gc.unfreeze()  # leave this test process as it was
