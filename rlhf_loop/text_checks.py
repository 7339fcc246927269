"""The rules every stored text of a person obeys, wherever it comes from (a file's line, the Rank
page's editor): text, not empty once stripped, no NUL, within a size limit.

One function, so that a gold file, a demonstrations file and the editor refuse the same texts
with the same words; each caller adds where the text was (a line number, the editor).
"""

from __future__ import annotations

from typing import Any

from rlhf_loop.prompt_import import json_kind


class TextProblem(ValueError):
    """A text cannot be stored; ``str()`` says why, in words fit for the person who wrote it."""


def checked_text(value: Any, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    """``value`` stripped of surrounding whitespace, or ``TextProblem`` naming ``what``.

    The text itself is kept as written (markup included): pages show it as plain text, never as
    Markdown or HTML, so nothing in it needs escaping or removing here.
    """
    if not isinstance(value, str):
        raise TextProblem(f"{what} must be text, found {json_kind(value)}")
    text = value.strip()
    if not text and not allow_empty:
        raise TextProblem(f"{what} is empty")
    if "\x00" in text:
        raise TextProblem(f"{what} contains a NUL character")
    if len(text) > max_chars:
        raise TextProblem(f"{what} is {len(text):,} characters long; the limit is {max_chars:,}")
    return text
