"""Operator pages through AppTest (issue 11, items 8-13): the Data page's counters and prompt list,
the Dashboard's annotator table and idle time, the Training page's guarded "Make live"."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import operator_page
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

from rlhf_loop.prompt_import import PromptImportError, parse_prompt_file
from rlhf_loop.store.annotator_table import IDLE_CUTOFF_S, annotator_table
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import next_task

DATA = "pages/data.py"
DASHBOARD = "pages/dashboard.py"


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_data_page_counters_include_the_import_just_made(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    at = operator_page(DATA)
    assert metrics(at)["Prompts"] == "2"
    at.file_uploader[0].set_value(("p.txt", b"new one\nnew two\n", "text/plain"))
    next(b for b in at.button if b.label == "Import prompt file").click().run()
    assert "2 prompt(s) added" in at.success[0].value
    assert metrics(at)["Prompts"] == "4" == str(db["prompts"].count)


BAD_JSON_LINES = [
    '{"prompt": "abc',
    '{"prompt": "a\tb"}',
    '{"prompt": "x",}',
    "{'prompt': 'x'}",
    '{"prompt": "x"} trailing',
    '{"prompt" "x"}',
    '{"prompt": "x" "y": 1}',
    '{"prompt": "\\q"}',
    '{"prompt": "\\u12"}',
    '{"prompt": tru}',
]


@pytest.mark.parametrize("line", BAD_JSON_LINES)
def test_a_json_syntax_error_is_said_in_words_with_its_column(line: str) -> None:
    with pytest.raises(PromptImportError) as error:
        parse_prompt_file("p.jsonl", f'{{"prompt": "fine"}}\n{line}\n'.encode(), 1000)
    message = str(error.value)
    assert message.startswith("line 2: not valid JSON: ") and " at at " not in message
    open_text = line.count('"') % 2 == 1  # a text left open: the line's end is the cause
    assert ("still open at the end of the line" in message) == open_text
    assert ("at column " in message) == (not open_text)


def test_a_prompt_broken_over_two_lines_is_named_as_the_cause(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    at = operator_page(DATA)
    upload = b'{"prompt": "first"}\n{"prompt": "two\nlines"}\n'
    at.file_uploader[0].set_value(("p.jsonl", upload, "application/jsonl"))
    next(b for b in at.button if b.label == "Import prompt file").click().run()
    message = at.error[0].value
    assert (
        "line 2: not valid JSON: a text in quotes is still open at the end of the line" in message
    )
    assert "write a line break inside a text as \\n" in message
    assert "Nothing was imported" in message and db["prompts"].count == 0


def test_a_text_left_open_on_the_last_line_names_where_it_starts() -> None:
    with pytest.raises(PromptImportError) as error:
        parse_prompt_file("p.jsonl", b'{"prompt": "fine"}\n{"prompt": "abc', 1000)
    assert str(error.value) == (
        "line 2: not valid JSON: the text in quotes that starts at column 12 is not closed on "
        "this line (each record must be one line: write a line break inside a text as \\n)"
    )


def answer(db, name: str, seconds: list[float], status: str = "ranked") -> None:
    """``name`` answers one served item per entry of ``seconds``, which it took."""
    person = annotator_id(db, name)
    for took in seconds:
        task = next_task(db, person, overlap=4, assignment_timeout_s=3600)
        ranks = list(range(1, task.k + 1)) if status == "ranked" else None
        ranking = submit(db, person, task.comparison_id, status, ranks, "broken")
        db["rankings"].update(ranking, {"seconds": took})


def test_idle_rankings_are_left_out_of_the_time_figures_and_counted(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 12, k=3)
    answer(db, "ada", [20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0, 36.0, 752.0])
    answer(db, "bob", [15.0], status="skipped")
    annotator_id(db, "newcomer")
    annotator_id(db, "olga", role="operator")
    table = annotator_table(db)
    assert [r["annotator"] for r in table.rows] == ["ada", "bob"]
    assert table.without_answers == ["newcomer"]
    ada = table.rows[0]
    assert ada["ranked"] == 10 and ada["idle_excluded"] == 1 and table.idle_excluded == 1
    assert ada["median_s"] == 28.0 and ada["p90_s"] == pytest.approx(34.4)  # not 452 s
    assert table.rows[1]["median_s"] is None  # skips are not timed
    assert annotator_table(db, cutoff_s=1000.0).rows[0]["idle_excluded"] == 0
    assert IDLE_CUTOFF_S == 600.0


def test_dashboard_counts_the_annotators_of_its_table_and_says_how_idle_time_is_left_out(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 6, k=3)
    answer(db, "ada", [30.0, 40.0, 752.0])
    answer(db, "bob", [50.0])
    annotator_id(db, "carl")  # signed up, never answered: no row of zeros and None
    at = operator_page(DASHBOARD)
    rows = next(d.value for d in at.dataframe if "annotator" in d.value.columns)
    assert list(rows["annotator"]) == ["ada", "bob"]
    assert metrics(at)["Annotators"] == "2"
    assert rows.set_index("annotator").loc["ada", "p90_s"] == pytest.approx(39.0)
    assert rows.set_index("annotator").loc["ada", "idle_excluded"] == 1
    shown = " ".join(c.value for c in at.caption)
    assert "over rankings that took at most 10 min" in shown and "(1 so far)" in shown
    assert "Signed up, no answer yet" in shown and "carl" in [t.value for t in at.text]
