"""Parser for gold-item files: a prompt, its responses and their known order, one JSON per line.

Gold items check annotators: each is served to everyone once, looking like any other item, and
an annotator's agreement with the known order shows careless ranking. Like a prompt import, a
gold import is all or nothing, and every failure is a ``GoldImportError`` naming the line.

A line: ``{"prompt": "...", "responses": ["...", "..."], "ranks": [1, 2, 2]}``, where ranks
follow the Rank page's convention (1 = best, equal numbers = a tie).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf_loop.prompt_import import (
    PromptImportError,
    decode_utf8,
    json_kind,
    json_object,
    numbered_lines,
)
from rlhf_loop.ranking import RankingError, validate_ranks
from rlhf_loop.text_checks import TextProblem, checked_text

MIN_RESPONSES, MAX_RESPONSES = 2, 9  # the Rank page's digit keys
DEFAULT_MAX_ITEMS = 10_000


class GoldImportError(PromptImportError):
    """The gold file cannot be imported; ``str()`` is a message fit to show the operator."""


@dataclass(frozen=True)
class GoldItem:
    prompt: str
    responses: list[str]
    ranks: list[int]  # dense
    line: int


def parse_gold_file(
    filename: str, data: bytes, max_chars: int, *, max_items: int = DEFAULT_MAX_ITEMS
) -> list[GoldItem]:
    """Parse a .jsonl gold file; raise ``GoldImportError`` on the first problem."""
    if not filename.lower().endswith(".jsonl"):
        raise GoldImportError(
            f"{filename or 'the file'} is not a .jsonl file. A gold file has one JSON object "
            'per line: {"prompt": "...", "responses": ["...", "..."], "ranks": [1, 2]}'
        )
    try:
        text = decode_utf8(data)
        items = [
            _item(json_object(line, number), number, max_chars)
            for number, line in numbered_lines(text)
            if line.strip()
        ]
    except GoldImportError:
        raise
    except PromptImportError as exc:
        raise GoldImportError(str(exc)) from None
    if not items:
        raise GoldImportError("the file contains no gold items")
    if len(items) > max_items:
        raise GoldImportError(f"the file has more than {max_items:,} items; split it")
    seen: dict[str, int] = {}
    for item in items:
        if item.prompt in seen:
            raise GoldImportError(
                f"the same prompt is already a gold item on line {seen[item.prompt]}", item.line
            )
        seen[item.prompt] = item.line
    return items


def _item(record: dict[str, Any], number: int, max_chars: int) -> GoldItem:
    prompt = _text(record.get("prompt"), "'prompt'", number, max_chars)
    responses = record.get("responses")
    if not isinstance(responses, list):
        raise GoldImportError(
            f"'responses' must be a list of texts, found {json_kind(responses)}", number
        )
    if not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
        raise GoldImportError(
            f"a gold item has {MIN_RESPONSES} to {MAX_RESPONSES} responses, found {len(responses)}",
            number,
        )
    texts = [
        _text(r, f"response {i + 1}", number, max_chars, allow_empty=True)
        for i, r in enumerate(responses)
    ]
    ranks = record.get("ranks")
    if not isinstance(ranks, list):
        raise GoldImportError(
            f"'ranks' must be a list of numbers, found {json_kind(ranks)}", number
        )
    try:
        dense = validate_ranks(ranks, len(texts))
    except RankingError as exc:
        raise GoldImportError(f"'ranks': {exc}", number) from None
    if len(set(dense)) == 1:
        raise GoldImportError("the ranks are all tied, so they check nothing", number)
    return GoldItem(prompt=prompt, responses=texts, ranks=dense, line=number)


def _text(value: Any, what: str, number: int, max_chars: int, *, allow_empty: bool = False) -> str:
    try:
        return checked_text(value, what, max_chars, allow_empty=allow_empty)
    except TextProblem as exc:
        raise GoldImportError(str(exc), number) from None
