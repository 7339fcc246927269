"""Operator pages through AppTest (issue 11, items 8-13): the Data page's counters and prompt list,
the Dashboard's annotator table and idle time, the Training page's guarded "Make live"."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import operator_page
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

from rlhf_loop.prompt_import import PromptImportError, parse_prompt_file

DATA = "pages/data.py"


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
