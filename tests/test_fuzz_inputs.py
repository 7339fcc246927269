"""Bad-input fuzzing: every file an operator uploads and every ranking an annotator types either
goes through or is refused with a message, never with a traceback on the page.

Why a separate file from the unit tests: these properties hold for *any* input, so hypothesis
generates the inputs (nasty bytes, broken encodings, odd JSON and CSV, arbitrary typed text) and
the tests only say what must always be true. The pure parsers get hundreds of examples each; the
two pages get sixty, because every AppTest run costs 30-70 ms on a shared 2-core machine.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlite_utils
from app_helpers import APP, operator_page
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

from rlhf_loop.gold_import import GoldImportError, parse_gold_file
from rlhf_loop.prompt_import import (
    PROMPT_LABELS,
    ParsedPrompts,
    PromptImportError,
    parse_prompt_file,
)
from rlhf_loop.ranking import (
    RankingError,
    dense_ranks,
    describe_ranking,
    parse_ranking,
    ranks_from_inputs,
    validate_ranks,
)

EXTENSIONS = ("txt", "jsonl", "csv")
PURE = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAGE = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- what a file can be made of -----------------------------------------------------------------

# Mostly text a real file holds (so the accepting path is exercised too), laced with the
# characters that break parsers: quotes, separators, line breaks no editor agrees on, a BOM in
# the middle, control characters. The poisons (NUL, lone surrogates, any code point at all) are
# put in a quarter of the files only, since one of them gets a whole file refused.
_WORD = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
_ODD_CHARS = st.sampled_from(
    [
        "\r", "\n", "\r\n", "\x85", "\u2028", "\ufeff", "\x1c", "\x0b", "\t", " ", '"', ",", ";",
        "\\", "{", "}", "[", "]", ":", "\U0001f600", "e\u0301", "\u200b", "\x7f",
    ]
)  # fmt: skip
_POISONS = st.one_of(
    st.sampled_from(["\x00", "\ud800", "\udfff", "\udcff"]),
    st.text(st.characters(codec=None), min_size=1, max_size=4),  # any code point, surrogates too
)
_SOME_TEXT = st.lists(st.one_of(_WORD, _WORD, _ODD_CHARS), min_size=1, max_size=10).map("".join)
_NASTY_TEXT = st.lists(st.one_of(_WORD, _ODD_CHARS, _POISONS), max_size=20).map("".join)


@st.composite
def _any_case(draw: st.DrawFn, word: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in word)


# Labels as people type them: a known one in any case, padded; the importer lower-cases them.
_KNOWN_LABELS = st.tuples(
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(PROMPT_LABELS).flatmap(_any_case),
    st.sampled_from(["", " ", "  "]),
).map("".join)
# Mostly known or empty, so most files get past the label check; any other text refuses one.
_LABEL_CELLS = st.one_of(_KNOWN_LABELS, _KNOWN_LABELS, st.just(""), _SOME_TEXT)


def _one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws (st.integers leans towards its bounds, so it is not this)."""
    return st.sampled_from([True] + [False] * (n - 1))


# Around a short limit (tests draw one of 1..60), around the default 20,000, and past the csv
# module's own 128 KiB cell limit.
_HUGE_LINES = st.sampled_from([39, 40, 41, 20_000, 20_001, 131_073]).map(lambda n: "x" * n)


@st.composite
def _mostly(draw: st.DrawFn, usual: st.SearchStrategy[str], rare: st.SearchStrategy[str]) -> str:
    """``rare`` one time in ten: one huge line per file is plenty, and it refuses the file."""
    return draw(rare if draw(_one_in(10)) else usual)


_LINE_TEXT = _mostly(_SOME_TEXT, _HUGE_LINES)
_LINE_ENDINGS = st.sampled_from(["\n", "\n", "\r\n", "\r\n", "\r", "\n\r", "\x85", "\u2028"])


def _encode(text: str, encoding: str) -> bytes:
    """Bytes as some other program might have saved them: lone surrogates go through as the
    invalid three-byte sequences some tools write, characters a code page lacks become '?'."""
    errors = "surrogatepass" if encoding.startswith("utf") else "replace"
    return text.encode(encoding, errors)


_OTHER_ENCODINGS = st.sampled_from(
    ["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]
)


@st.composite
def _joined(draw: st.DrawFn, lines: st.SearchStrategy[str], max_lines: int = 8) -> str:
    """Lines joined with one line ending, or (one file in four) a mix of them, as files edited
    on several systems end up; a mix of endings mostly breaks JSON lines and CSV."""
    parts = draw(st.lists(lines, min_size=1, max_size=max_lines))
    single = None if draw(_one_in(4)) else draw(st.sampled_from(["\n", "\r\n"]))
    return "".join(part + (single or draw(_LINE_ENDINGS)) for part in parts)


# JSON values of every type, for the "prompt" and "label" fields and the extra ones.
_JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),  # NaN and infinities included: json.dumps writes them, JSON forbids them
        _SOME_TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_WORD, inner, max_size=3)),
    max_leaves=6,
)
_GOOD_RECORDS = st.fixed_dictionaries(
    {"prompt": _LINE_TEXT},
    optional={"label": st.one_of(st.none(), _LABEL_CELLS), "source": _JSON_VALUES},
)
_ODD_RECORDS = st.one_of(
    st.fixed_dictionaries(
        {"prompt": st.one_of(_NASTY_TEXT, _JSON_VALUES)},
        optional={"label": st.one_of(_NASTY_TEXT, _JSON_VALUES), "meta": _JSON_VALUES},
    ),
    st.dictionaries(st.sampled_from(["Prompt", "text", "label", ""]), _JSON_VALUES),
    _JSON_VALUES,  # non-object lines: 3, "text", [..], null
)


def _nested(depth: int) -> str:
    return '{"prompt": "deep", "x": ' + "[" * depth + "]" * depth + "}"


_BAD_JSON_LINES = st.sampled_from(
    [
        '{"prompt": 1' + "0" * 5_000 + "}",
        '{"prompt": "a", "n": 1' + "0" * 5_000 + "}",
        '{"prompt": "a", "n": NaN}',
        '{"prompt": "a", "n": -Infinity}',
        '{"prompt": "a", "n": 1e999}',
        '{"prompt": "\\ud800"}',
        '{"prompt": "a", "label": "\\udfff"}',
        '{"prompt": "\\u0000"}',
        '{"prompt": "a", "label": "\\u0000"}',
        '{"prompt": "a", "prompt": 3}',
        '{"prompt": "a"',
        "\ufeff" + '{"prompt": "a"}',
        "[" * 100_000,
    ]
)
_JSON_LINES = st.one_of(
    _GOOD_RECORDS.map(lambda record: json.dumps(record, ensure_ascii=False)),
    _GOOD_RECORDS.map(lambda record: json.dumps(record, ensure_ascii=False)),
    _GOOD_RECORDS.map(json.dumps),
    _GOOD_RECORDS.map(json.dumps),
    _GOOD_RECORDS.map(json.dumps),
    _ODD_RECORDS.map(lambda record: json.dumps(record, ensure_ascii=False)),
    _ODD_RECORDS.map(json.dumps),  # ASCII only: NUL and lone surrogates become escapes
    st.one_of(st.integers(900, 1_000), st.just(100_000)).map(_nested),
    _BAD_JSON_LINES,
    _NASTY_TEXT,
)

_USUAL_HEADERS = st.sampled_from(
    [["prompt"], ["prompt", "label"], ["id", "Prompt", "label"], [" PROMPT "]]
)
_ODD_HEADERS = st.lists(
    st.one_of(st.sampled_from(["prompt", "label", "id", "", "Label "]), _SOME_TEXT),
    min_size=1,
    max_size=4,
)


@st.composite
def _csv_text(draw: st.DrawFn) -> str:
    """A CSV the csv module writes, rows mostly as wide as the header, sometimes not."""
    header = draw(_ODD_HEADERS if draw(_one_in(4)) else _USUAL_HEADERS)
    cell = st.one_of(_LINE_TEXT, _LINE_TEXT, _LINE_TEXT, st.just(""))
    labels = {i for i, name in enumerate(header) if name.strip().lower() == "label"}
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        width = draw(st.integers(0, 5)) if draw(_one_in(10)) else len(header)
        rows.append([draw(_LABEL_CELLS if i in labels else cell) for i in range(width)])
    out = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    ending = draw(st.sampled_from(["\r\n", "\r\n", "\n", "\r"]))
    csv.writer(out, quoting=quoting, lineterminator=ending).writerows([header, *rows])
    return out.getvalue()


@st.composite
def _corrupted(draw: st.DrawFn, text: st.SearchStrategy[str]) -> str:
    """Well-formed text with a few characters dropped or inserted: a stray quote, a lost comma."""
    value = draw(text)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(value)))
        if draw(st.booleans()) and value:
            value = value[:at] + value[at + 1 :]
        else:
            value = (
                value[:at] + draw(st.sampled_from(['"', ",", "\n", "\r", "{", "\\"])) + value[at:]
            )
    return value


_FILE_TEXTS = {
    "txt": _joined(_LINE_TEXT, max_lines=12),
    "jsonl": _mostly(_joined(_JSON_LINES, max_lines=4), _corrupted(_joined(_JSON_LINES))),
    "csv": _mostly(_csv_text(), st.one_of(_corrupted(_csv_text()), _joined(_SOME_TEXT))),
}


@st.composite
def nasty_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A file name and its bytes: mostly text shaped for the extension, sometimes another
    format's text, a non-UTF-8 encoding, a stray byte-order mark, or bytes of any kind."""
    extension = draw(st.sampled_from(EXTENSIONS))
    if draw(_one_in(10)):
        return f"fuzz.{extension}", draw(st.binary(max_size=400))
    shape = draw(st.sampled_from(EXTENSIONS)) if draw(_one_in(10)) else extension
    content = draw(_FILE_TEXTS[shape])
    if draw(_one_in(4)):
        at = draw(st.integers(0, len(content)))
        content = content[:at] + draw(_POISONS) + content[at:]
    encoding = draw(_OTHER_ENCODINGS) if draw(_one_in(8)) else "utf-8"
    data = _encode(content, encoding)
    if draw(_one_in(10)):
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])) + data
    return f"fuzz.{extension}", data


# A short limit (so the length check fires) or, twice as often, the configured default.
_MAX_CHARS = st.one_of(st.integers(1, 60), st.just(20_000), st.just(20_000))


# --- the property every import must keep --------------------------------------------------------


def parses_cleanly_or_refuses(
    filename: str, data: bytes, max_chars: int, max_rows: int = 100_000
) -> ParsedPrompts | None:
    """Parse and check the outcome; ``None`` means a clean refusal. Any other exception escapes
    and fails the test, which is the point: the Data page catches only PromptImportError."""
    lines = data.count(b"\n") + 1
    try:
        parsed = parse_prompt_file(filename, data, max_chars, max_rows=max_rows)
    except PromptImportError as error:
        message = str(error)
        assert message.strip(), "a refusal must say why"
        if error.line is not None:
            assert message.startswith(f"line {error.line}: ")
            assert 1 <= error.line <= lines
        event("file refused")
        return None
    event("file accepted")
    assert parsed.rows, "an accepted file has at least one prompt"
    assert len(parsed.rows) <= max_rows
    texts = [row.text for row in parsed.rows]
    assert len(set(texts)) == len(texts), "duplicates are skipped, not stored twice"
    for row in parsed.rows:
        assert isinstance(row.text, str) and row.text and row.text == row.text.strip()
        assert len(row.text) <= max_chars and "\x00" not in row.text
        row.text.encode("utf-8")  # storable: no lone surrogates
        assert row.label in (None, *PROMPT_LABELS)
        json.dumps(row.meta, allow_nan=False).encode("utf-8")
    starts = [row.line for row in parsed.rows]
    assert starts == sorted(set(starts)), "rows come in file order, one per starting line"
    assert all(1 <= line <= lines for line in starts + parsed.duplicates)
    assert not set(parsed.duplicates) & set(starts)
    assert len(starts) + len(parsed.duplicates) + parsed.blank_lines <= lines
    return parsed


@PURE
@given(file=nasty_files(), max_chars=_MAX_CHARS)
@example(file=("p.jsonl", _nested(100_000).encode()), max_chars=40)
@example(file=("p.jsonl", b'{"prompt": "a", "n": 1' + b"0" * 5_000 + b"}"), max_chars=40)
@example(file=("p.csv", b'prompt\r\n"' + b"x" * 131_073 + b'"\r\n'), max_chars=200_000)
@example(file=("p.txt", "\ud800\n".encode("utf-8", "surrogatepass")), max_chars=40)
@example(file=("p.csv", "prompt\n\u2028\n".encode()), max_chars=40)
def test_any_file_imports_or_is_refused_with_a_message(
    file: tuple[str, bytes], max_chars: int
) -> None:
    parses_cleanly_or_refuses(*file, max_chars)


def test_deep_nesting_is_refused_as_too_deep_never_as_a_number() -> None:
    """Found probing the nesting limit through the Data page: at the one depth where json.loads
    still succeeds but writing the value back (the storability check) goes over Python's
    recursion limit, the file was refused as holding "a number that cannot be stored (NaN,
    Infinity, or too large)". That depth depends on the caller's stack, so try them all."""
    refused = 0
    for depth in range(700, 1_600):  # the limit is near 1,000 levels on 3.11, 1,500 on 3.12
        try:
            parse_prompt_file("p.jsonl", _nested(depth).encode(), 40)
        except PromptImportError as error:
            assert "deep" in str(error), (depth, str(error))
            refused += 1
            if refused == 3:  # json.loads itself refuses from here on
                break


@PURE
@given(data=st.binary(max_size=2_000), name=st.one_of(st.sampled_from(EXTENSIONS), st.text()))
def test_arbitrary_bytes_under_any_name(data: bytes, name: str) -> None:
    parses_cleanly_or_refuses(f"upload.{name}", data, 20_000)


@st.composite
def _well_formed_gold(draw: st.DrawFn) -> dict:
    """A record a correct exporter writes: k texts and k ranks in 1..k (maybe all tied)."""
    k = draw(st.integers(2, 9))
    responses = draw(st.lists(_SOME_TEXT, min_size=k, max_size=k))
    ranks = draw(st.lists(st.integers(1, k), min_size=k, max_size=k))
    return {"prompt": draw(_SOME_TEXT), "responses": responses, "ranks": ranks}


_GOLD_RECORDS = st.one_of(
    _well_formed_gold(),
    _well_formed_gold(),
    st.fixed_dictionaries(
        {
            "prompt": st.one_of(_SOME_TEXT, _JSON_VALUES),
            "responses": st.one_of(st.lists(st.one_of(_SOME_TEXT, _JSON_VALUES), max_size=10)),
            "ranks": st.one_of(st.lists(st.one_of(st.integers(-2, 12), _JSON_VALUES), max_size=10)),
        }
    ),
    _ODD_RECORDS,
)


@PURE
@given(
    lines=st.lists(st.one_of(_GOLD_RECORDS.map(json.dumps), _BAD_JSON_LINES), max_size=5),
    name=st.sampled_from(["g.jsonl", "g.jsonl", "g.json"]),
)
def test_any_gold_file_imports_or_is_refused_with_a_message(lines: list[str], name: str) -> None:
    try:
        items = parse_gold_file(name, "\n".join(lines).encode(), 200)
    except GoldImportError as error:
        assert str(error).strip()
        return
    for item in items:
        assert 2 <= len(item.responses) == len(item.ranks) <= 9
        assert sorted(set(item.ranks)) == list(range(1, max(item.ranks) + 1))  # dense
        assert max(item.ranks) > 1 and item.prompt and item.prompt == item.prompt.strip()
    assert len({i.prompt for i in items}) == len(items)


# --- round trips: what a correct exporter writes comes back as written --------------------------

# Valid prompt text: anything UTF-8 can carry except NUL (which the importer refuses by design).
_VALID_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
_VALID_TEXT = st.text(_VALID_CHARS, min_size=1, max_size=40).filter(str.strip)
_PROMPTS = st.lists(
    st.tuples(_VALID_TEXT, st.one_of(st.none(), st.just(""), _KNOWN_LABELS)),
    min_size=1,
    max_size=15,
)


def _first_of_each(prompts: list[tuple[str, str | None]]) -> list[int]:
    """Indices of the prompts the importer keeps: the first of those equal after stripping."""
    first: dict[str, int] = {}
    for i, (text, _) in enumerate(prompts):
        first.setdefault(text.strip(), i)
    return sorted(first.values())


def _expected(prompts: list[tuple[str, str | None]]) -> tuple[list[tuple[str, str | None]], int]:
    """The documented normalisation: strip each prompt and label, lower-case the label (an empty
    one is none), keep the first of prompts equal after stripping, count the rest as duplicates."""
    kept: dict[str, str | None] = {}
    for text, label in prompts:
        kept.setdefault(text.strip(), (label or "").strip().lower() or None)
    return list(kept.items()), len(prompts) - len(kept)


def _check_round_trip(parsed: ParsedPrompts | None, prompts: list[tuple[str, str | None]]) -> None:
    assert parsed is not None, "a well-formed file was refused"
    rows, duplicates = _expected(prompts)
    assert [(row.text, row.label) for row in parsed.rows] == rows
    assert len(parsed.duplicates) == duplicates
    assert parsed.blank_lines == 0


@PURE
@given(prompts=_PROMPTS, ascii_only=st.booleans(), ending=st.sampled_from(["\n", "\r\n"]))
@example(prompts=[("\u2028a\x85", "\x1c")], ascii_only=False, ending="\n")
def test_jsonl_written_by_json_dumps_round_trips(
    prompts: list[tuple[str, str | None]], ascii_only: bool, ending: str
) -> None:
    lines = [json.dumps({"prompt": t, "label": lab}, ensure_ascii=ascii_only) for t, lab in prompts]
    data = ending.join(lines).encode("utf-8")
    longest = max(len(text.strip()) for text, _ in prompts)  # the limit itself is allowed
    parsed = parses_cleanly_or_refuses("p.jsonl", data, longest)
    _check_round_trip(parsed, prompts)
    assert parsed is not None
    assert [row.line for row in parsed.rows] == [i + 1 for i in _first_of_each(prompts)]


@PURE
@given(
    prompts=_PROMPTS,
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    extra_column=st.booleans(),
    bom=st.booleans(),
)
@example(prompts=[('a\r\n"b",', None)], quoting=csv.QUOTE_MINIMAL, extra_column=True, bom=True)
def test_csv_written_by_the_csv_module_round_trips(
    prompts: list[tuple[str, str | None]], quoting: int, extra_column: bool, bom: bool
) -> None:
    header = ["id", "prompt", "label"] if extra_column else ["prompt", "label"]
    rows = [
        ([str(i)] if extra_column else []) + [t, lab or ""] for i, (t, lab) in enumerate(prompts)
    ]
    out = io.StringIO()
    csv.writer(out, quoting=quoting).writerows([header, *rows])  # "\r\n", as Excel writes
    data = (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8")
    longest = max(len(text.strip()) for text, _ in prompts)
    parsed = parses_cleanly_or_refuses("p.csv", data, longest)
    _check_round_trip(parsed, prompts)
    assert parsed is not None
    ids = [{"id": str(i)} if extra_column else {} for i in _first_of_each(prompts)]
    assert [row.meta for row in parsed.rows] == ids


_UNKNOWN_LABELS = st.text(_VALID_CHARS, min_size=1, max_size=10).filter(
    lambda t: t.strip() and t.strip().lower() not in PROMPT_LABELS
)


def _labelled_file(
    extension: str, prompts: list[tuple[str, str | None]]
) -> tuple[bytes, list[int]]:
    """The file a correct exporter writes, and the line each prompt's row starts on."""
    if extension == "jsonl":
        lines = [json.dumps({"prompt": t, "label": lab}) for t, lab in prompts]
        return "\n".join(lines).encode(), list(range(1, len(prompts) + 1))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "label"])
    starts = []
    for text, label in prompts:
        starts.append(out.getvalue().count("\n") + 1)
        writer.writerow([text, label or ""])
    return out.getvalue().encode(), starts


@PURE
@given(
    prompts=_PROMPTS,
    unknown=_UNKNOWN_LABELS,
    extension=st.sampled_from(["jsonl", "csv"]),
    data=st.data(),
)
def test_an_unknown_label_anywhere_refuses_the_file_at_its_line(
    prompts: list[tuple[str, str | None]], unknown: str, extension: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(prompts) - 1))
    prompts[at] = (prompts[at][0], unknown)
    raw, starts = _labelled_file(extension, prompts)
    with pytest.raises(PromptImportError) as caught:
        parse_prompt_file(f"p.{extension}", raw, 20_000)
    assert caught.value.line == starts[at]
    assert "unknown label" in str(caught.value)


@PURE
@given(
    prompts=st.lists(_VALID_TEXT.filter(lambda t: "\n" not in t), min_size=1, max_size=15),
    ending=st.sampled_from(["\n", "\r\n"]),
)
def test_txt_one_prompt_per_line_round_trips(prompts: list[str], ending: str) -> None:
    # A UTF-8 BOM is always written: without one, a first prompt that itself starts with U+FEFF
    # would lose it, since the importer drops a leading BOM as the file's encoding mark.
    data = b"\xef\xbb\xbf" + ending.join(prompts).encode("utf-8")
    parsed = parses_cleanly_or_refuses("p.txt", data, max(len(t.strip()) for t in prompts))
    _check_round_trip(parsed, [(t, None) for t in prompts])


# --- rankings -----------------------------------------------------------------------------------

_KS = st.integers(2, 9)
_RANKING_CHARS = st.sampled_from(
    [
        *"0123456789ABCDEFGHIJabcdefghij >=<,;.-+\t\n",
        *"\u00b2\u0661\uff11\U0001d7cf\u2460\u00bd\u3000\x85\ufeff",  # ²١１𝟏①½, odd spaces
    ]
)
_ARBITRARY_TYPED = st.one_of(
    st.text(_RANKING_CHARS, max_size=25),
    st.text(max_size=25),
    st.lists(st.integers(-3, 12).map(str), max_size=10).map(" ".join),
    st.sampled_from(["1 " + "1" * 5_000, "1 2 " + "9" * 4_301, "0" * 5_000 + "1 2"]),
)
_SEPARATORS = st.sampled_from(["", " ", ",", ", ", ";", "  \t", " ,; "])


@st.composite
def rankings(draw: st.DrawFn, k: int | None = None) -> list[int]:
    """Any ranking with ties of k (else 2..9) responses, ranks 1..k, not necessarily dense."""
    size = draw(_KS) if k is None else k
    return draw(st.lists(st.integers(1, max(size, 1)), min_size=size, max_size=size))


@st.composite
def typed_rankings(draw: st.DrawFn, k: int) -> str:
    """What an annotator might type for k responses: a ranking in either notation, one for the
    wrong number of responses, the same with a slip of the finger, or anything at all."""
    kind = draw(st.sampled_from([0, 1, 1, 2, 3]))
    if kind == 0:
        return draw(_ARBITRARY_TYPED)
    size = k if kind < 3 else draw(st.integers(1, 10))
    ranks = draw(rankings(size)) if size <= 9 else [1] * size
    if draw(st.booleans()):
        text = describe_ranking(dense_ranks(ranks))
        text = text.lower() if draw(st.booleans()) else text
    else:
        text = draw(_SEPARATORS).join(map(str, ranks))
    if kind == 2:  # a slip of the finger: one character dropped, doubled or replaced
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        middle = draw(st.sampled_from(["", text[at : at + 1] * 2, draw(_RANKING_CHARS)]))
        text = text[:at] + middle + text[at + 1 :]
    return text


@st.composite
def typed_with_k(draw: st.DrawFn) -> tuple[str, int]:
    """A number of responses and what was typed for them, drawn together so k can shrink too."""
    k = draw(_KS)
    return draw(typed_rankings(k)), k


def is_dense_ranking(ranks: object, k: int) -> bool:
    """Length k, whole numbers, best rank 1, no gaps: the only shape the store accepts."""
    return (
        isinstance(ranks, list)
        and len(ranks) == k
        and all(type(r) is int for r in ranks)
        and sorted(set(ranks)) == list(range(1, max(ranks, default=0) + 1))
    )


def ranks_or_refusal(call: Callable[..., list[int]], *args: object) -> list[int] | None:
    """Run a ranking function; only a valid ranking or a RankingError with a message may come out
    (the Rank page catches RankingError and nothing else)."""
    try:
        ranks = call(*args)
    except RankingError as error:
        assert str(error).strip()
        event("ranking refused")
        return None
    event("ranking accepted")
    return ranks


@PURE
@given(typed_k=typed_with_k())
@example(typed_k=("1 \u00b2", 2))  # superscript two: str.isdigit(), but int() refuses it
@example(typed_k=("1 " + "1" * 5_000, 2))  # past int()'s 4,300-digit limit
@example(typed_k=("\u0661\u0662", 2))  # Arabic-Indic digits: int() reads them, so they count
def test_typed_ranking_parses_or_is_refused(typed_k: tuple[str, int]) -> None:
    typed, k = typed_k
    ranks = ranks_or_refusal(parse_ranking, typed, k)
    if ranks is not None:
        assert is_dense_ranking(ranks, k)
        assert ranks_or_refusal(parse_ranking, describe_ranking(ranks), k) == ranks


_BAD_ENTRIES = st.one_of(
    st.none(),
    st.integers(-2, 11),
    st.integers(),
    st.sampled_from([10**5000, -(10**5000), True, False, 1.0, 2.5, float("nan"), "1", "", b"1"]),
)


@st.composite
def rank_lists(draw: st.DrawFn) -> tuple[list, int]:
    """A list for k responses: valid, with a few entries spoiled, or of any length and content."""
    k = draw(_KS)
    if draw(_one_in(3)):
        return draw(st.lists(_BAD_ENTRIES, max_size=11)), k
    ranks: list = draw(rankings(k))
    for _ in range(draw(st.integers(0, 2))):
        ranks[draw(st.integers(0, k - 1))] = draw(_BAD_ENTRIES)
    return ranks, k


@PURE
@given(ranks_k=rank_lists())
def test_validate_ranks_accepts_exactly_the_valid_lists(ranks_k: tuple[list, int]) -> None:
    ranks, k = ranks_k
    result = ranks_or_refusal(validate_ranks, ranks, k)
    valid = len(ranks) == k and all(type(r) is int and 1 <= r <= k for r in ranks)
    assert (result is not None) == valid
    if result is not None:
        assert is_dense_ranking(result, k) and result == dense_ranks(ranks)


@PURE
@given(ranks_k=rank_lists(), data=st.data())
def test_rank_page_inputs_give_a_ranking_or_a_message(
    ranks_k: tuple[list, int], data: st.DataObject
) -> None:
    picked, _ = ranks_k  # k is len(picked) here, as on the page
    typed = data.draw(st.one_of(st.sampled_from(["", "  ", "\t\n"]), typed_rankings(len(picked))))
    ranks = ranks_or_refusal(ranks_from_inputs, typed, picked)
    if ranks is not None:
        assert is_dense_ranking(ranks, len(picked))


@PURE
@given(ranks=rankings(), separator=_SEPARATORS)
def test_a_ranking_written_out_parses_back_to_itself(ranks: list[int], separator: str) -> None:
    k, dense = len(ranks), dense_ranks(ranks)
    assert parse_ranking(describe_ranking(dense), k) == dense
    assert parse_ranking(describe_ranking(dense).lower().replace(" ", ""), k) == dense
    assert parse_ranking(separator.join(map(str, ranks)), k) == dense
    assert ranks_from_inputs("", list(ranks)) == dense


# --- the pages themselves -----------------------------------------------------------------------


@dataclass
class RankSession:
    """One annotator's open Rank page, reused across examples (a fresh one costs a second)."""

    db: sqlite_utils.Database
    at: AppTest

    def show_new_item(self, k: int) -> int:
        """Queue one item of k responses and bring it on screen. Every earlier item has been
        answered (ranked or skipped), so the new one is the one shown: what an example draws
        never depends on the examples before it, as hypothesis requires."""
        (cid,) = make_comparisons(self.db, 1, k=k)
        self.at.run()
        typed = [w for w in self.at.text_input if str(w.key).startswith("typed-")]
        assert [w.key for w in typed] == [f"typed-{cid}"]
        return cid

    def ranked(self) -> int:
        return self.db["rankings"].count_where("status = 'ranked'")

    def skip(self) -> None:
        next(b for b in self.at.button if b.label == "Skip").click().run()


@pytest.fixture
def rank_session(data_dir: Path) -> Iterator[RankSession]:
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["annotator"] = "fuzz"
    yield RankSession(fresh_db(data_dir), at)


@PAGE
@given(typed_k=typed_with_k())
@example(typed_k=("1 \u00b2", 2))  # both raised ValueError inside the submit callback: a
@example(typed_k=("1 2 " + "9" * 4_301, 3))  # traceback on the page, before the fix
def test_rank_page_typed_ranking_never_shows_a_traceback(
    rank_session: RankSession, typed_k: tuple[str, int]
) -> None:
    typed, k = typed_k
    session, at = rank_session, rank_session.at
    cid = session.show_new_item(k)
    before = session.ranked()
    at.text_input(key=f"typed-{cid}").input(typed)
    at.button[0].click().run()  # the form's submit button: Enter in the field does the same
    assert not at.exception, at.exception[0].value if at.exception else ""
    expected = ranks_or_refusal(ranks_from_inputs, typed, [None] * k)
    if session.ranked() == before:
        assert [e.value for e in at.error if e.value.strip()], "refused without a message"
        assert expected is None
        session.skip()  # clear the queue for the next example
    else:
        row = next(session.db["rankings"].rows_where("comparison_id = ?", [cid]))
        assert json.loads(row["ranks"]) == expected
        assert any("Saved" in s.value for s in at.success)


@pytest.fixture
def data_page(data_dir: Path) -> Iterator[tuple[sqlite_utils.Database, AppTest]]:
    db = fresh_db(data_dir)
    yield db, operator_page("pages/data.py", "fuzz")


@st.composite
def well_formed_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Files a correct exporter writes, so the page's success path and database write get odd
    but valid text too, not only refusals."""
    prompts = draw(_PROMPTS)
    extension = draw(st.sampled_from(EXTENSIONS))
    if extension != "txt":
        return f"p.{extension}", _labelled_file(extension, prompts)[0]
    return "p.txt", "\n".join(t for t, _ in prompts if "\n" not in t).encode()


@PAGE
@given(file=st.one_of(nasty_files(), well_formed_files()))
@example(file=("p.jsonl", _nested(979).encode()))  # the depth that found the bug above, here
@example(file=("p.jsonl", b'{"prompt": "a", "label": "\\u0000"}'))
def test_data_page_import_never_shows_a_traceback(
    data_page: tuple[sqlite_utils.Database, AppTest], file: tuple[str, bytes]
) -> None:
    # AppTest in streamlit 1.67 drives st.file_uploader (set_value with (name, bytes, mime)), so
    # this goes through the page's own try/except, the parser and the database write.
    db, at = data_page
    name, data = file
    stored = {row["text"] for row in db["prompts"].rows}
    at.file_uploader[0].set_value((name, data, "text/plain"))
    at.button[0].click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    parsed = parses_cleanly_or_refuses(name, data, 20_000)  # the page's default max_prompt_chars
    if parsed is None:
        assert any("Nothing was imported" in e.value for e in at.error)
        assert db["prompts"].count == len(stored)
    else:
        assert any("prompt(s) added" in s.value for s in at.success)
        assert {row["text"] for row in db["prompts"].rows} == stored | {r.text for r in parsed.rows}
