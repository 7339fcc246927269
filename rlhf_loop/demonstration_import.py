"""Parser for demonstration files: a prompt and a person's answer to it, one JSON per line.

Two shapes per line, so a file made for TRL's SFT trainer imports as it is:
``{"prompt": "...", "response": "..."}`` or the conversational
``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}``.
Like a prompt or gold import it is all or nothing: every failure is a
``DemonstrationImportError`` naming the line and what to fix, before the database is touched.
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
from rlhf_loop.text_checks import TextProblem, checked_text

DEFAULT_MAX_DEMONSTRATIONS = 100_000
SHAPES = (
    'one JSON object per line: {"prompt": "...", "response": "..."} or {"messages": '
    '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
)


class DemonstrationImportError(PromptImportError):
    """The file cannot be imported; ``str()`` is a message fit to show the operator."""


@dataclass(frozen=True)
class DemonstrationRow:
    prompt: str
    text: str
    line: int


@dataclass(frozen=True)
class ParsedDemonstrations:
    rows: list[DemonstrationRow]
    duplicate_lines: list[int]  # the same prompt and answer as an earlier line


def parse_demonstration_file(
    filename: str, data: bytes, max_chars: int, *, max_rows: int = DEFAULT_MAX_DEMONSTRATIONS
) -> ParsedDemonstrations:
    """Parse a .jsonl demonstration file; raise ``DemonstrationImportError`` on the first
    problem."""
    if not filename.lower().endswith(".jsonl"):
        raise DemonstrationImportError(
            f"{filename or 'the file'} is not a .jsonl file. A demonstration file has {SHAPES}"
        )
    rows: list[DemonstrationRow] = []
    duplicates: list[int] = []
    seen: set[tuple[str, str]] = set()
    try:
        for number, line in numbered_lines(decode_utf8(data)):
            if not line.strip():
                continue
            row = _row(json_object(line, number), number, max_chars)
            if (row.prompt, row.text) in seen:
                duplicates.append(number)
                continue
            if len(rows) >= max_rows:
                raise DemonstrationImportError(
                    f"the file has more than {max_rows:,} demonstrations; split it", number
                )
            seen.add((row.prompt, row.text))
            rows.append(row)
    except DemonstrationImportError:
        raise
    except PromptImportError as exc:
        raise DemonstrationImportError(str(exc)) from None
    if not rows:
        raise DemonstrationImportError(f"the file contains no demonstrations; it needs {SHAPES}")
    return ParsedDemonstrations(rows=rows, duplicate_lines=duplicates)


def _row(record: dict[str, Any], number: int, max_chars: int) -> DemonstrationRow:
    if "messages" in record:
        if "prompt" in record or "response" in record:
            raise DemonstrationImportError(
                "has both 'messages' and 'prompt'/'response'; use one shape per line", number
            )
        prompt, response = _conversation(record["messages"], number)
    elif "prompt" in record or "response" in record:
        for name in ("prompt", "response"):
            if name not in record:
                raise DemonstrationImportError(f"missing '{name}' field", number)
        prompt, response = record["prompt"], record["response"]
    else:
        raise DemonstrationImportError(
            f"found neither 'prompt' and 'response' nor 'messages'; expected {SHAPES}", number
        )
    try:
        return DemonstrationRow(
            prompt=checked_text(prompt, "the prompt", max_chars),
            text=checked_text(response, "the answer", max_chars),
            line=number,
        )
    except TextProblem as exc:
        raise DemonstrationImportError(str(exc), number) from None


def _conversation(messages: Any, number: int) -> tuple[Any, Any]:
    """The user's and the assistant's content of a two-turn conversation, in that order."""
    if not isinstance(messages, list):
        raise DemonstrationImportError(
            f"'messages' must be a list of messages, found {json_kind(messages)}", number
        )
    roles = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise DemonstrationImportError(
                f"message {i} must be an object with 'role' and 'content', found "
                f"{json_kind(message)}",
                number,
            )
        roles.append(message.get("role"))
    if roles == ["user", "assistant"]:
        return messages[0].get("content"), messages[1].get("content")
    if roles == ["user"]:
        raise DemonstrationImportError(
            "the conversation has no assistant turn, so there is no answer to learn from", number
        )
    shown = ", ".join(str(role) for role in roles) or "none"
    raise DemonstrationImportError(
        "expected exactly two messages, a 'user' turn then an 'assistant' turn; found the roles: "
        f"{shown}",
        number,
    )
