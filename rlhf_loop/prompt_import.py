"""Parsers for prompt import files (.txt, .jsonl, .csv): bytes in, validated prompts out.

Why a separate, pure module: an import is all-or-nothing (the caller writes nothing unless the
whole file parses), so every check happens here, before the database is touched, and can be
tested without one. Every failure is a ``PromptImportError`` whose message names the line and
says what to fix, because the person reading it is an operator, not a programmer.

Line numbers are physical lines as an editor shows them: one more than the count of ``\\n``
bytes before the point in question, whatever the format.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_ROWS = 100_000

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SAVE_AS_UTF8 = (
    "save it as UTF-8 text (in most editors: Save As, encoding UTF-8) and import it again"
)
_NO_PROMPTS = "the file contains no prompts"
# The prompt-aware reward's two utilities (reward/losses.py OPENNESS_LABELS): any other label
# would train as unlabelled without a word, so the import refuses it.
PROMPT_LABELS = ("open", "closed")


@dataclass(frozen=True)
class PromptRow:
    """One prompt as read from the file; ``line`` lets later messages point back at the source."""

    text: str
    line: int
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedPrompts:
    """A whole file's prompts, plus what was skipped so the operator can be told about it."""

    rows: list[PromptRow]
    duplicates: list[int]
    blank_lines: int


class PromptImportError(ValueError):
    """The file cannot be imported; ``str()`` is a message fit to show the operator as is."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


def prompt_hash(text: str) -> str:
    """Key for "this prompt is already stored": whitespace around a prompt does not make it new."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def parse_prompt_file(
    filename: str, data: bytes, max_chars: int, *, max_rows: int = DEFAULT_MAX_ROWS
) -> ParsedPrompts:
    """Parse an uploaded file by its extension; raise ``PromptImportError`` on the first problem."""
    parser = _parser_for(filename)
    collector = _Collector(max_chars=max_chars, max_rows=max_rows)
    parser(decode_utf8(data), collector)
    return collector.result()


# --- format dispatch and decoding ---------------------------------------------------------------


def _parser_for(filename: str) -> Callable[[str, _Collector], None]:
    """Pick the parser before decoding, so a wrong file type is reported as such, not as bytes."""
    _, dot, extension = filename.lower().rpartition(".")
    parsers = {"txt": _parse_txt, "jsonl": _parse_jsonl, "csv": _parse_csv}
    if dot and extension in parsers:
        return parsers[extension]
    raise PromptImportError(
        f"{filename or 'the file'} is not a supported file type. Accepted types: "
        '.txt (one prompt per line), .jsonl (one JSON object per line with a "prompt" field), '
        '.csv (a header row with a "prompt" column)'
    )


def decode_utf8(data: bytes) -> str:
    """UTF-8 only: guessing an encoding would silently garble prompts, so ask for UTF-8 instead."""
    if data.startswith(_UTF16_BOMS):
        raise PromptImportError(f"the file is saved as UTF-16; {_SAVE_AS_UTF8}")
    data = data.removeprefix(_UTF8_BOM)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise PromptImportError(
            "the file contains NUL bytes, so it is probably not a text file "
            f"(or it is saved as UTF-16); {_SAVE_AS_UTF8}",
            line=_line_of(data, nul),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PromptImportError(
            f"byte 0x{data[error.start]:02X} is not valid UTF-8; the file is probably saved in "
            f"another encoding (such as Latin-1 or Windows-1252); {_SAVE_AS_UTF8}",
            line=_line_of(data, error.start),
        ) from None


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """Split on ``\\n`` only, unlike ``str.splitlines``, so numbers match an editor's."""
    return enumerate(io.StringIO(text, newline="\n"), start=1)


# --- validation shared by all formats -----------------------------------------------------------


class _Collector:
    """Applies the per-prompt rules in one place, so the three formats cannot drift apart."""

    def __init__(self, *, max_chars: int, max_rows: int) -> None:
        self.max_chars = max_chars
        self.max_rows = max_rows
        self.rows: list[PromptRow] = []
        self.duplicates: list[int] = []
        self.blank_lines = 0
        self._seen: set[str] = set()

    def blank(self) -> None:
        self.blank_lines += 1

    def add(self, line: int, prompt: str, label: str | None, meta: dict[str, Any]) -> None:
        text = prompt.strip()
        if not text:
            raise PromptImportError("the prompt is empty", line)
        if "\x00" in text:
            raise PromptImportError("the prompt contains a NUL character", line)
        if len(text) > self.max_chars:
            raise PromptImportError(
                f"the prompt is {len(text):,} characters long; the limit is {self.max_chars:,}",
                line,
            )
        if text in self._seen:
            self.duplicates.append(line)
            return
        if len(self.rows) >= self.max_rows:
            raise PromptImportError(
                f"the file has more than {self.max_rows:,} prompts; split it into smaller files",
                line,
            )
        self._seen.add(text)
        self.rows.append(PromptRow(text=text, line=line, label=label, meta=meta))

    def result(self) -> ParsedPrompts:
        if not self.rows:
            raise PromptImportError(_NO_PROMPTS)
        return ParsedPrompts(
            rows=self.rows, duplicates=self.duplicates, blank_lines=self.blank_lines
        )


def _clean_label(label: str | None, line: int) -> str | None:
    """A known label in any case, stored lower-cased; an empty cell means "no label", not a
    label called "". Anything else is refused: 'Opne' must not silently mean unlabelled."""
    stripped = (label or "").strip()
    if not stripped:
        return None
    if stripped.lower() not in PROMPT_LABELS:
        allowed = " or ".join(f"'{name}'" for name in PROMPT_LABELS)
        raise PromptImportError(
            f"unknown label '{_shorten(stripped)}'; use {allowed} (any case), "
            "or leave it empty for no label",
            line,
        )
    return stripped.lower()


# --- .txt ---------------------------------------------------------------------------------------


def _parse_txt(text: str, collector: _Collector) -> None:
    for number, line in numbered_lines(text):
        if line.strip():
            collector.add(number, line, None, {})
        else:
            collector.blank()


# --- .jsonl -------------------------------------------------------------------------------------


def _parse_jsonl(text: str, collector: _Collector) -> None:
    for number, line in numbered_lines(text):
        if not line.strip():
            collector.blank()
            continue
        record = json_object(line, number)
        meta = {key: value for key, value in record.items() if key not in ("prompt", "label")}
        collector.add(number, _json_prompt(record, number), _json_label(record, number), meta)


def json_object(line: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptImportError(f"not valid JSON: {json_problem(error)}", number) from None
    except (ValueError, RecursionError):
        # Numbers too long for Python's int parser, or nesting deeper than the stack allows.
        raise PromptImportError(
            "not valid JSON (a value is too long or too deep)", number
        ) from None
    if not isinstance(value, dict):
        raise PromptImportError(
            f'expected a JSON object like {{"prompt": "..."}}, found {json_kind(value)}', number
        )
    _check_storable(value, number)
    return value


# What the json module's terse messages usually mean in a hand-made .jsonl file, in the words of
# its author. The module's own message ends in " at" where it puts the position itself
# ("Unterminated string starting at"), so it cannot simply be followed by "at column N".
_ONE_LINE = " (each record must be one line: write a line break inside a text as \\n)"
_JSON_PROBLEMS = {
    "Unterminated string starting at": (
        "the text in quotes that starts at column {col} is not closed on this line" + _ONE_LINE
    ),
    "Invalid control character at": (
        "a raw tab or other control character inside a text at column {col} (write a tab as "
        "\\t, a line break as \\n)"
    ),
    "Expecting property name enclosed in double quotes": (
        "expected a field name in double quotes at column {col} (single quotes, or a comma "
        "before the closing brace?)"
    ),
    "Expecting value": "expected a value at column {col} (a text in double quotes, a number, …)",
    "Expecting ':' delimiter": "expected ':' after the field name at column {col}",
    "Expecting ',' delimiter": "expected ',' between fields at column {col}",
    "Extra data": "more text after the end of the object at column {col} (one object per line)",
    "Invalid \\escape": (
        "an unknown backslash escape at column {col} (write a backslash itself as two)"
    ),
    "Invalid \\uXXXX escape": "a \\u escape without four hex digits at column {col}",
}


def json_problem(error: json.JSONDecodeError) -> str:
    """The cause of a JSON syntax error, in words, with its column. A text broken over two lines
    (the usual cause in a hand-edited file) reads as a control character at the line's end."""
    if error.msg == "Invalid control character at" and error.doc[error.pos] in "\r\n":
        return "a text in quotes is still open at the end of the line" + _ONE_LINE
    template = _JSON_PROBLEMS.get(error.msg)
    if template is not None:
        return template.format(col=error.colno)
    reason = error.msg.removesuffix(" at")
    return f"{reason[:1].lower()}{reason[1:]} at column {error.colno}"


# json.dumps writes a NUL as \u0000; an odd run of backslashes before "u0000" is that escape, an
# even one is a literal backslash followed by the text "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _check_storable(value: dict[str, Any], number: int) -> None:
    """Reject what json.loads accepts but the database cannot hold as UTF-8 JSON, and NULs,
    which .txt and .csv files cannot carry either (so no format lets one in)."""
    try:
        stored = json.dumps(value, ensure_ascii=False, allow_nan=False)
        stored.encode("utf-8")
    except UnicodeEncodeError:
        raise PromptImportError(
            "contains a \\u escape that is not a valid character (an unpaired surrogate)", number
        ) from None
    except RecursionError:
        # Not a number: json.loads got just under the nesting limit, writing it back went over.
        raise PromptImportError("contains a value nested too deeply to be stored", number) from None
    except ValueError:
        raise PromptImportError(
            "contains a number that cannot be stored (NaN, Infinity, or too large)", number
        ) from None
    if _ESCAPED_NUL.search(stored):
        raise PromptImportError("contains a NUL character (\\u0000)", number)


def _json_prompt(record: dict[str, Any], number: int) -> str:
    if "prompt" not in record:
        raise PromptImportError("missing 'prompt' field", number)
    prompt = record["prompt"]
    if not isinstance(prompt, str):
        raise PromptImportError(f"'prompt' must be text, found {json_kind(prompt)}", number)
    return prompt


def _json_label(record: dict[str, Any], number: int) -> str | None:
    label = record.get("label")
    if label is not None and not isinstance(label, str):
        raise PromptImportError(f"'label' must be text or null, found {json_kind(label)}", number)
    return _clean_label(label, number)


def json_kind(value: Any) -> str:
    """Name JSON types as the file's author knows them, not as Python's type names."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    kinds = {dict: "an object", list: "a list", str: "text", type(None): "null"}
    return kinds[type(value)]


# --- .csv ---------------------------------------------------------------------------------------

_field_limit_lock = threading.Lock()


def _parse_csv(text: str, collector: _Collector) -> None:
    records = _csv_records(text)
    header_line, header = _first_nonblank(records, collector)
    columns = _Columns.from_header(header, header_line)
    for number, record in records:
        if not any(cell.strip() for cell in record):
            collector.blank()  # also rows like ",,," that spreadsheets append
            continue
        columns.check_width(record, number)
        prompt = record[columns.prompt]
        if not prompt.strip():
            raise PromptImportError("the 'prompt' cell is empty", number)
        collector.add(number, prompt, columns.label_of(record, number), columns.meta_of(record))


def _csv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield each record with the line it *starts* on: quoted cells may span several lines."""
    _allow_fields_up_to(len(text))
    reader = csv.reader(io.StringIO(text, newline="\n"), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise PromptImportError(_csv_problem(str(error)), start) from None
        yield start, record


def _allow_fields_up_to(size: int) -> None:
    """The csv module caps a cell at 128 KiB by default; here the whole file is already in
    memory, so the cap protects nothing and would only reject long prompts that max_chars allows.
    The limit is process-wide, so it is only ever raised, under a lock."""
    with _field_limit_lock:
        if csv.field_size_limit() < size:
            csv.field_size_limit(size)


def _csv_problem(reason: str) -> str:
    """Translate the csv module's messages, which are written for programmers."""
    if "unexpected end of data" in reason:
        return 'a quoted cell starting on this line is never closed (a closing " is missing)'
    if "expected after" in reason:
        return (
            'a quoted cell has text after its closing quote; write a " inside a quoted cell '
            'as two quotes ("")'
        )
    if "new-line" in reason:
        return (
            "a line ends with a lone carriage return; "
            "save the file with Windows or Unix line endings"
        )
    return "this row is not valid CSV"


def _first_nonblank(
    records: Iterator[tuple[int, list[str]]], collector: _Collector
) -> tuple[int, list[str]]:
    for number, record in records:
        if any(cell.strip() for cell in record):
            return number, record
        collector.blank()
    raise PromptImportError(_NO_PROMPTS)


@dataclass(frozen=True)
class _Columns:
    """Where the prompt and label live in each row, and what the other columns are called."""

    names: list[str]
    prompt: int
    label: int | None

    @classmethod
    def from_header(cls, header: list[str], line: int) -> _Columns:
        names = [name.strip() or f"column {index}" for index, name in enumerate(header, start=1)]
        lowered = [name.lower() for name in names]
        for name in lowered:
            if lowered.count(name) > 1:
                raise PromptImportError(f"the header names the column '{name}' twice", line)
        if "prompt" not in lowered:
            found = ", ".join(_shorten(name) for name in names)
            raise PromptImportError(
                "the first row must name the columns, separated by commas, one of them "
                f"'prompt' (found: {found})",
                line,
            )
        label = lowered.index("label") if "label" in lowered else None
        return cls(names=names, prompt=lowered.index("prompt"), label=label)

    def check_width(self, record: list[str], line: int) -> None:
        if len(record) != len(self.names):
            raise PromptImportError(
                f"expected {len(self.names)} cells (one per header column) but found "
                f"{len(record)}; check for a missing or extra comma, or a stray quote",
                line,
            )

    def label_of(self, record: list[str], line: int) -> str | None:
        return None if self.label is None else _clean_label(record[self.label], line)

    def meta_of(self, record: list[str]) -> dict[str, Any]:
        skip = (self.prompt, self.label)
        return {
            name: cell
            for index, (name, cell) in enumerate(zip(self.names, record, strict=True))
            if index not in skip
        }


def _shorten(name: str, limit: int = 40) -> str:
    """A header-less file puts a whole prompt where a column name should be; keep messages short."""
    return name if len(name) <= limit else name[: limit - 3] + "..."
