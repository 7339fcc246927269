"""The Rank page's "Write a better answer" (issue 13) through AppTest: the editor opens from its
button, starts from a picked response or empty, refuses an empty, blank or huge answer at the
editor, keeps HTML as typed, refuses a second submit of the item from another tab, brings the
answer back on undo, and says whether the answer counts as a ranking above all K. Also the Data
page's import: a bad demonstration file refused whole with its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import as_read, operator_page
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest
from test_pages import rank_page, shown_texts

WRITE = "Write a better answer"


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _open_editor(at: AppTest) -> AppTest:
    _button(at, WRITE).click().run()
    assert at.text_area(key="demo-text-1") is not None
    return at


def _submit(at: AppTest, text: str | None = None, ranks: str = "") -> AppTest:
    if text is not None:
        at.text_area(key="demo-text-1").input(text)
    at.text_input(key="demo-ranks-1").input(ranks)
    return _button(at, "Submit answer").click().run()


@pytest.fixture
def db(data_dir: Path):
    db = fresh_db(data_dir)
    make_comparisons(db, 3)
    return db


def test_the_written_answer_starts_from_a_picked_response_and_counts_as_a_ranking(db) -> None:
    at = _open_editor(rank_page())
    assert any("beats all 4 responses" in c.value for c in at.caption)
    at.selectbox(key="demo-start-1").select(1).run()
    assert at.text_area(key="demo-text-1").value == "response 1 to prompt 1"
    _submit(at, "response 1 to prompt 1, but better")
    [row] = db["demonstrations"].rows
    assert row["text"] == "response 1 to prompt 1, but better"
    assert row["generation_id"] == 2 and row["counts_as_ranking"] == 1
    assert db["rankings"].get(row["ranking_id"])["status"] == "demonstrated"
    assert "Saved your answer as a ranking above every response" in at.success[0].value
    assert shown_texts(at)[1] == "prompt 1"  # the next item is on screen


def test_an_empty_blank_or_huge_answer_is_refused_at_the_editor(db, data_dir: Path) -> None:
    at = _open_editor(rank_page())
    for text, message in [
        ("", "your answer is empty"),
        ("  \n  ", "your answer is empty"),
        ("x" * 20_001, "your answer is 20,001 characters long; the limit is 20,000"),
    ]:
        _submit(at, text)
        assert message in at.error[0].value
        assert db["demonstrations"].count == db["rankings"].count == 0
        assert shown_texts(at)[1] == "prompt 0"  # still this item, the editor still open
    _submit(at, "fine", ranks="1 2")
    assert "expected a rank for each" in at.error[0].value


def test_html_is_stored_and_given_back_as_typed_and_undo_reopens_the_editor(db) -> None:
    at = _open_editor(rank_page())
    text = "<script>alert('x')</script> **not bold** <img src=x onerror=alert(1)>"
    _submit(at, text, ranks="B > A = C > D")
    [row] = db["demonstrations"].rows
    assert row["text"] == text
    ranking = db["rankings"].get(row["ranking_id"])
    assert (ranking["status"], json.loads(ranking["ranks"])) == ("ranked", [2, 1, 2, 3])
    assert not at.markdown or all("<script>" not in m.value for m in at.markdown)

    _button(at, "Undo last submission").click().run()
    assert "your written answer is retracted and back in the editor" in at.info[0].value
    assert at.text_area(key="demo-text-1").value == text  # plain text in a text box
    assert at.text_input(key="demo-ranks-1").value == "2 1 2 3"
    _submit(at, "corrected")
    assert [d["text"] for d in db["demonstrations"].rows_where(order_by="id")] == [
        text,
        "corrected",
    ]
    redo = db["rankings"].get(db["demonstrations"].get(2)["ranking_id"])
    assert redo["supersedes"] == row["ranking_id"]


def test_a_second_submit_of_the_item_from_another_tab_keeps_the_first(db) -> None:
    first, second = _open_editor(rank_page()), _open_editor(rank_page())
    _submit(first, "first answer")
    _submit(second, "second answer")
    assert "you already submitted this item; your first answer was kept" in second.warning[0].value
    assert [d["text"] for d in db["demonstrations"].rows] == ["first answer"]


def test_the_page_says_when_a_written_answer_does_not_count(
    db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLHF_LOOP_DEMONSTRATIONS_COUNT_AS_RANKINGS", "false")
    at = _open_editor(rank_page())
    assert any("does not count as a ranking" in c.value for c in at.caption)
    _submit(at, "an answer")
    assert at.success[0].value == "Saved your answer"
    assert db["demonstrations"].get(1)["counts_as_ranking"] == 0


def test_the_editor_closes_and_the_ranking_box_is_back(db) -> None:
    at = _open_editor(rank_page())
    _button(at, "Close the editor").click().run()
    assert not at.text_area
    at.text_input(key="typed-1").input("1 2 3 4")
    _button(at, "Submit").click().run()
    assert db["rankings"].get(1)["status"] == "ranked"


# --- the Data page's import ------------------------------------------------------------------


def test_the_data_page_refuses_a_bad_demonstration_file_whole_then_imports_a_good_one(
    db, data_dir: Path
) -> None:
    at = operator_page("pages/data.py")
    uploader = at.file_uploader[2]  # prompts, gold items, demonstrations
    bad = b'{"prompt": "p", "response": "r"}\n{"messages": [{"role": "user", "content": "q"}]}\n'
    uploader.set_value(("d.jsonl", bad, "application/jsonl"))
    _button(at, "Import demonstration file").click().run()
    assert "line 2: the conversation has no assistant turn" in as_read(at.error[0].value)
    assert "Nothing was imported" in at.error[0].value and db["demonstrations"].count == 0
    good = b'{"prompt": "prompt 0", "response": "<b>an answer</b>"}\n'
    at.file_uploader[2].set_value(("d.jsonl", good, "application/jsonl"))
    _button(at, "Import demonstration file").click().run()
    assert "1 demonstration(s) added" in at.success[0].value
    assert db["demonstrations"].get(1)["source"] == "import:d.jsonl"
