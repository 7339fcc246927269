"""Operator pages through AppTest (issue 11, items 8-13): the Data page's counters and prompt list,
the Dashboard's annotator table and idle time, the Training page's guarded "Make live"."""

from __future__ import annotations

from pathlib import Path

from app_helpers import operator_page
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

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
