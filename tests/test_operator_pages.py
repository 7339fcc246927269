"""Operator pages through AppTest (issue 11, items 8-13): the Data page's counters and prompt list,
the Dashboard's annotator table and idle time, the Training page's guarded "Make live"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import as_read, operator_page
from store_helpers import add_texts, fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

from rlhf_loop.prompt_import import PromptImportError, parse_prompt_file
from rlhf_loop.store.annotator_table import IDLE_CUTOFF_S, annotator_table
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.prompt_list import prompt_page, restore_prompts, retire_prompts
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import next_task

DATA = "pages/data.py"
DASHBOARD = "pages/dashboard.py"
SCRIPT = "<script>alert('x')</script>"


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
    message = as_read(at.error[0].value)
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


def events(db, kind: str) -> list[dict]:
    return [json.loads(e["payload"]) for e in db["events"].rows_where("kind = ?", [kind])]


def test_prompt_pages_search_filter_and_counts(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 3, k=3)  # prompts 1-3, one item each
    add_texts(db, [f"extra {i}" for i in range(30)] + ["100% sure_thing"])
    answer(db, "ada", [10.0, 12.0])  # prompts 1 and 2 ranked once each
    listing = prompt_page(db, page_size=25)
    assert (listing.matching, listing.pages, len(listing.rows)) == (34, 2, 25)
    assert listing.rows[0] == {
        "id": 1, "prompt": "prompt 0", "label": "", "times sampled": 1, "times ranked": 1,
        "gold": False, "retired": False,
    }  # fmt: skip
    assert listing.rows[2]["times ranked"] == 0 and listing.rows[3]["times sampled"] == 0
    last = prompt_page(db, page=99, page_size=25)
    assert last.page == 2 and last.ids == list(range(26, 35))
    assert prompt_page(db, "EXTRA 2").ids == [6, *range(24, 34)]  # extra 2, 20-29
    assert prompt_page(db, "%").ids == [34] and prompt_page(db, "s_r").ids == []  # literal
    assert prompt_page(db, "nothing like it").rows == []

    assert retire_prompts(db, [1, 2], "olga") == [1, 2]
    assert retire_prompts(db, [2, 3], "olga") == [3]  # 2 already was: not counted twice
    assert prompt_page(db, shown="retired").ids == [1, 2, 3]
    assert 1 not in prompt_page(db, shown="in use", page_size=100).ids
    assert restore_prompts(db, [2, 4], "olga") == [2]  # 4 was never retired
    assert prompt_page(db, shown="retired").ids == [1, 3]
    assert events(db, "prompts_retired") == [
        {"by": "olga", "prompt_ids": [1, 2]},
        {"by": "olga", "prompt_ids": [3]},
    ]
    assert events(db, "prompts_restored") == [{"by": "olga", "prompt_ids": [2]}]
    assert restore_prompts(db, [], "olga") == []


def select_rows(at: AppTest, rows: list[int]) -> AppTest:
    """Select rows of the prompt table as a click in the browser would."""
    table = next(d for d in at.dataframe if "times ranked" in d.value.columns)
    at.session_state[table.key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return at.run()


def test_data_page_lists_prompts_as_plain_text_and_retires_and_restores_them(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    add_texts(db, [SCRIPT, "What is **bold**?"] + [f"filler {i}" for i in range(30)])
    at = operator_page(DATA)
    table = next(d.value for d in at.dataframe if "times ranked" in d.value.columns)
    assert list(table["prompt"][:2]) == [SCRIPT, "What is **bold**?"] and len(table) == 25
    assert any("32 prompt(s) match; page 1 of 2" in c.value for c in at.caption)
    at.number_input(key="prompt_page").set_value(2).run()
    table = next(d.value for d in at.dataframe if "times ranked" in d.value.columns)
    assert list(table["id"]) == list(range(26, 33))

    at.text_input(key="prompt_search").input("bold").run()  # a new search starts at page 1
    assert any("1 prompt(s) match; page 1 of 1" in c.value for c in at.caption)
    select_rows(at, [0])
    assert "What is **bold**?" in [t.value for t in at.text]  # the whole text, as plain text
    next(b for b in at.button if b.label == "Retire selected").click().run()
    assert "1 prompt(s) retired." in at.success[0].value
    assert db["prompts"].get(2)["retired_at"] is not None
    at.segmented_control(key="prompt_shown").set_value("retired").run()
    at.text_input(key="prompt_search").input("").run()
    table = next(d.value for d in at.dataframe if "times ranked" in d.value.columns)
    assert list(table["id"]) == [2] and list(table["retired"]) == [True]
    select_rows(at, [0])
    next(b for b in at.button if b.label == "Restore selected").click().run()
    assert "1 prompt(s) restored." in at.success[0].value
    assert db["prompts"].get(2)["retired_at"] is None
    assert events(db, "prompts_restored") == [{"by": "olga", "prompt_ids": [2]}]
    assert not any("<script>" in m.value for m in at.markdown) and len(at.get("html")) == 0


def test_a_retire_acts_on_the_rows_that_were_on_screen(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_texts(db, ["first", "second", "third"])
    at = operator_page(DATA)
    select_rows(at, [1])  # "second", as drawn
    add_texts(db, ["zeroth"])  # meanwhile the table grew (here at the end; ids keep their rows)
    db.execute("UPDATE prompts SET retired_at = 1 WHERE id = 1")  # and another operator acted
    next(b for b in at.button if b.label == "Retire selected").click().run()
    assert [r["id"] for r in db["prompts"].rows_where("retired_at IS NOT NULL")] == [1, 2]


TRAINING = "pages/training.py"


def in_page_order(node) -> list:
    """Every element of the page, in the order it is drawn (columns left to right)."""
    children = getattr(node, "children", None)
    if children is None:
        return [node]
    return [e for key in sorted(children) for e in in_page_order(children[key])]


def _shown(element) -> str | None:
    """A selectbox's label or a text's value: what locates it on the page."""
    if element.type == "selectbox":
        return element.label
    if element.type in ("text", "subheader", "heading"):
        return element.value
    return None


def test_side_by_side_asks_for_the_prompt_above_the_two_answers(data_dir: Path) -> None:
    from verdict_helpers import add_policy

    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None)
    for version, answer_text in ((1, "It is 4."), (2, "Four, I think.")):
        add_policy(db, data_dir, version, version - 1, "adopted", live=version == 2)
        meta = {
            "metrics": {"parent_version": version - 1},
            "samples_before": [{"prompt": "What is 2 + 2?", "response": "2"}],
            "samples_after": [{"prompt": "What is 2 + 2?", "response": answer_text}],
        }
        (data_dir / f"policy-v{version}" / "policy_meta.json").write_text(json.dumps(meta))
    at = operator_page(TRAINING)
    order = [_shown(e) for e in in_page_order(at.main)]
    side = order.index("Side by side")
    prompt_choice = order.index("Held-out prompt", side)
    assert order.index("Version", side) < prompt_choice
    assert prompt_choice < order.index("It is 4.") and prompt_choice < order.index("Four, I think.")


def test_the_accuracy_chart_of_a_single_reward_model_shows_its_point(data_dir: Path) -> None:
    from rlhf_loop.store.versions import register_version

    db = fresh_db(data_dir)
    register_version(db, "reward", 1, data_dir / "r1", "demo", {"pairwise_accuracy": 0.9})
    at = operator_page(TRAINING)
    [spec] = [
        json.loads(c.proto.spec)
        for c in at.get("vega_lite_chart")
        if "held-out accuracy" in c.proto.spec
    ]
    marks = {layer["mark"]["type"]: layer["mark"] for layer in spec["layer"]}
    assert marks["point"]["size"] >= 60 and marks["point"]["filled"]
    assert "text" in marks  # the value written beside the point
    from streamlit import dataframe_util

    [chart] = [c for c in at.get("vega_lite_chart") if "held-out accuracy" in c.proto.spec]
    frames = [
        dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets
    ]
    assert any(list(f.get("accuracy", [])) == [0.9] for f in frames)


def test_no_accuracy_to_plot_says_so_instead_of_an_empty_chart(data_dir: Path) -> None:
    from rlhf_loop.store.versions import register_version

    db = fresh_db(data_dir)
    register_version(db, "reward", 1, data_dir / "r1", "demo", {"heldout_pairs": 0})
    at = operator_page(TRAINING)
    assert not [c for c in at.get("vega_lite_chart") if "held-out accuracy" in c.proto.spec]
    assert any("No version has a held-out accuracy yet" in c.value for c in at.caption)
