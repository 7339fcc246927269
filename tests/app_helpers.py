"""Driving the Streamlit app through AppTest: the app's path and an operator's session."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def rank_page(annotator: str | None = "ada") -> AppTest:
    """An annotator's session on the Rank page (the app's default page), run once."""
    at = AppTest.from_file(APP, default_timeout=30)
    if annotator:
        at.query_params["annotator"] = annotator
    return at.run()


def operator_page(page: str, name: str = "olga") -> AppTest:
    """A signed-in operator's session on ``page`` (signing in itself: tests/test_roles.py)."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["operator"] = name
    at.run()
    return at.switch_page(page).run()


def as_read(markdown: str) -> str:
    """A message box's Markdown source as the reader sees it: backslash escapes (user text is
    escaped, see rlhf_loop.plain_text) removed."""
    return re.sub(r"\\(.)", r"\1", markdown)
