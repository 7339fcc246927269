"""Tests for the prompt import parsers: each format, each way a file can be wrong, and a fuzz test
that nothing but ``PromptImportError`` ever escapes (the UI shows that message and nothing else)."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_loop.prompt_import import (
    ParsedPrompts,
    PromptImportError,
    PromptRow,
    parse_prompt_file,
    prompt_hash,
)

MAX = 20_000
EXTENSIONS = ("txt", "jsonl", "csv")


def parse(filename: str, data: bytes | str, max_chars: int = MAX, **kwargs: int) -> ParsedPrompts:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return parse_prompt_file(filename, raw, max_chars, **kwargs)


def fails(
    filename: str, data: bytes | str, max_chars: int = MAX, **kwargs: int
) -> PromptImportError:
    with pytest.raises(PromptImportError) as caught:
        parse(filename, data, max_chars, **kwargs)
    return caught.value


def texts(parsed: ParsedPrompts) -> list[str]:
    return [row.text for row in parsed.rows]


def jsonl(*records: object) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


# --- .txt ---------------------------------------------------------------------------------------


def test_txt_one_prompt_per_line_stripped_with_line_numbers() -> None:
    parsed = parse("p.txt", "  first  \n\nsecond\n   \n\tthird\n")
    assert texts(parsed) == ["first", "second", "third"]
    assert [row.line for row in parsed.rows] == [1, 3, 5]
    assert parsed.blank_lines == 2
    assert parsed.duplicates == []
    assert all(row.label is None and row.meta == {} for row in parsed.rows)


def test_txt_crlf_line_endings() -> None:
    parsed = parse("p.txt", "one\r\ntwo\r\n\r\nthree")
    assert texts(parsed) == ["one", "two", "three"]
    assert [row.line for row in parsed.rows] == [1, 2, 4]
    assert parsed.blank_lines == 1


def test_txt_duplicates_keep_first_and_report_later_lines() -> None:
    parsed = parse("p.txt", "a\nb\n  a  \nc\nb\n")
    assert texts(parsed) == ["a", "b", "c"]
    assert [row.line for row in parsed.rows] == [1, 2, 4]
    assert parsed.duplicates == [3, 5]


def test_txt_duplicate_comparison_is_exact_after_stripping() -> None:
    assert texts(parse("p.txt", "Hello\nhello\nHello \n")) == ["Hello", "hello"]


def test_html_is_kept_verbatim() -> None:
    script = "<script>alert(1)</script>"
    assert texts(parse("p.txt", f"{script}\n")) == [script]
    assert texts(parse("p.jsonl", jsonl({"prompt": script}))) == [script]
    assert texts(parse("p.csv", f'prompt\n"{script}"\n')) == [script]


def test_unicode_text_is_kept() -> None:
    assert texts(parse("p.txt", "café ☕ 日本語\n")) == ["café ☕ 日本語"]


def test_utf8_bom_is_ignored() -> None:
    parsed = parse("p.txt", b"\xef\xbb\xbffirst\nsecond\n")
    assert texts(parsed) == ["first", "second"]


def test_utf8_bom_before_csv_header() -> None:
    assert texts(parse("p.csv", b"\xef\xbb\xbfprompt,label\nhi,open\n")) == ["hi"]


# --- file-level errors --------------------------------------------------------------------------


@pytest.mark.parametrize("extension", EXTENSIONS)
@pytest.mark.parametrize("data", [b"", b"   \n\n \r\n\t\n", b"\xef\xbb\xbf"])
def test_empty_or_whitespace_file(extension: str, data: bytes) -> None:
    error = fails(f"p.{extension}", data)
    assert str(error) == "the file contains no prompts"
    assert error.line is None


@pytest.mark.parametrize("data", ["prompt\n", "prompt,label,source\n", "\n prompt \n\n", ",,\n"])
def test_header_only_csv(data: str) -> None:
    assert str(fails("p.csv", data)) == "the file contains no prompts"


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_latin1_byte_names_the_line_and_byte(extension: str) -> None:
    data = {
        "txt": b"fine\ncaf\xe9\n",
        "jsonl": b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n',
        "csv": b"prompt\ncaf\xe9\n",
    }[extension]
    error = fails(f"p.{extension}", data)
    assert error.line == 2
    assert "line 2" in str(error)
    assert "0xE9" in str(error)
    assert "UTF-8" in str(error)


def test_bad_byte_line_counts_crlf_lines() -> None:
    error = fails("p.txt", b"a\r\nb\r\n\r\nbad \xff here\r\n")
    assert error.line == 4


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file(encoding: str) -> None:
    error = fails("p.txt", "hello\nworld\n".encode(encoding))
    assert "UTF-16" in str(error)
    assert "UTF-8" in str(error)


def test_nul_bytes_mean_binary_file() -> None:
    error = fails("p.txt", b"ok\n\x89PNG\x00\x00\x00")
    assert error.line == 2
    assert "NUL" in str(error)


def test_nul_escape_in_jsonl_prompt_is_rejected() -> None:
    error = fails("p.jsonl", '{"prompt": "a"}\n{"prompt": "x\\u0000y"}\n')
    assert error.line == 2
    assert "NUL" in str(error)


@pytest.mark.parametrize("filename", ["p.json", "p.xlsx", "prompts", "p.txt.gz", ""])
def test_unknown_extension_lists_accepted_types(filename: str) -> None:
    error = fails(filename, "hello\n")
    message = str(error)
    assert "not a supported file type" in message
    for extension in (".txt", ".jsonl", ".csv"):
        assert extension in message
    assert error.line is None


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("P.TXT", "hi\n"),
        ("my.prompts.txt", "hi\n"),
        ("p.JsonL", '{"prompt": "hi"}\n'),
        ("data.Csv", "prompt\nhi\n"),
    ],
)
def test_extension_is_case_insensitive(filename: str, data: str) -> None:
    assert texts(parse(filename, data)) == ["hi"]


# --- length and row limits ----------------------------------------------------------------------


def long_file(extension: str, prompt: str) -> str:
    return {
        "txt": f"short\n{prompt}\n",
        "jsonl": jsonl({"prompt": "short"}, {"prompt": prompt}),
        "csv": f"prompt\nshort\n{prompt}\n",
    }[extension]


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_100kb_prompt_over_limit(extension: str) -> None:
    prompt = "x" * 100_000
    error = fails(f"p.{extension}", long_file(extension, prompt), max_chars=20_000)
    expected_line = 3 if extension == "csv" else 2
    assert error.line == expected_line
    assert f"line {expected_line}" in str(error)
    assert "100,000" in str(error)
    assert "20,000" in str(error)


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_100kb_prompt_accepted_when_limit_allows(extension: str) -> None:
    prompt = "y" * 100_000
    parsed = parse(f"p.{extension}", long_file(extension, prompt), max_chars=100_000)
    assert texts(parsed) == ["short", prompt]


def test_csv_cell_longer_than_csv_module_default_limit() -> None:
    prompt = "z" * 300_000
    parsed = parse("p.csv", f"prompt\n{prompt}\n", max_chars=300_000)
    assert texts(parsed) == [prompt]


def test_length_counts_characters_after_stripping() -> None:
    assert texts(parse("p.txt", "   abcde   \n", max_chars=5)) == ["abcde"]
    assert fails("p.txt", "abcdef\n", max_chars=5).line == 1
    assert texts(parse("p.txt", "ééééé\n", max_chars=5)) == ["ééééé"]


def test_row_limit() -> None:
    assert len(parse("p.txt", "a\nb\nc\n", max_rows=3).rows) == 3
    error = fails("p.txt", "a\nb\nc\nd\n", max_rows=3)
    assert error.line == 4
    assert "more than 3 prompts" in str(error)


def test_duplicates_do_not_count_towards_row_limit() -> None:
    assert texts(parse("p.txt", "a\na\na\nb\n", max_rows=2)) == ["a", "b"]


# --- labels -------------------------------------------------------------------------------------


def test_labels_in_any_case_are_stored_lower_cased() -> None:
    data = jsonl({"prompt": "a", "label": "Open"}, {"prompt": "b", "label": " CLOSED\t"})
    assert [row.label for row in parse("p.jsonl", data).rows] == ["open", "closed"]
    parsed = parse("p.csv", "prompt,label\na,OPEN\nb, Closed \nc,\n")
    assert [row.label for row in parsed.rows] == ["open", "closed", None]


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("p.jsonl", jsonl({"prompt": "a", "label": "open"}, {"prompt": "b", "label": "opne"})),
        ("p.csv", "prompt,label\nb,opne\na,closed\n"),
    ],
)
def test_an_unknown_label_refuses_the_file_with_its_line_and_the_allowed_values(
    filename: str, data: str
) -> None:
    error = fails(filename, data)
    assert error.line == 2
    assert str(error) == (
        "line 2: unknown label 'opne'; use 'open' or 'closed' (any case), "
        "or leave it empty for no label"
    )


# --- .jsonl -------------------------------------------------------------------------------------


def test_jsonl_label_and_meta() -> None:
    data = jsonl(
        {"prompt": " Tell me a story ", "label": "open", "source": "wiki", "n": 3},
        {"prompt": "2+2?", "label": None},
        {"prompt": "Capital of France?", "label": "  ", "tags": ["geo"]},
    )
    parsed = parse("p.jsonl", data)
    assert parsed.rows == [
        PromptRow(text="Tell me a story", line=1, label="open", meta={"source": "wiki", "n": 3}),
        PromptRow(text="2+2?", line=2, label=None, meta={}),
        PromptRow(text="Capital of France?", line=3, label=None, meta={"tags": ["geo"]}),
    ]


def test_jsonl_blank_lines_and_crlf() -> None:
    parsed = parse("p.jsonl", '{"prompt": "a"}\r\n\r\n  \r\n{"prompt": "b"}\r\n{"prompt": "a"}')
    assert texts(parsed) == ["a", "b"]
    assert [row.line for row in parsed.rows] == [1, 4]
    assert parsed.blank_lines == 2
    assert parsed.duplicates == [5]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"prompt": "x",}', "not valid JSON"),
        ("{'prompt': 'x'}", "not valid JSON"),
        ('{"prompt": "x"} trailing', "not valid JSON"),
        ('"just a string"', "expected a JSON object"),
        ('["prompt", "x"]', "found a list"),
        ("42", "found a number"),
        ('{"text": "x"}', "missing 'prompt' field"),
        ('{"prompt": 5}', "'prompt' must be text, found a number"),
        ('{"prompt": null}', "'prompt' must be text, found null"),
        ('{"prompt": ["a"]}', "'prompt' must be text, found a list"),
        ('{"prompt": true}', "'prompt' must be text, found true/false"),
        ('{"prompt": "   "}', "the prompt is empty"),
        ('{"prompt": ""}', "the prompt is empty"),
        ('{"prompt": "x", "label": 1}', "'label' must be text or null"),
        ('{"prompt": "x", "score": NaN}', "cannot be stored"),
        ('{"prompt": "x", "score": 1e999}', "cannot be stored"),
        ('{"prompt": "x\\ud800"}', "unpaired surrogate"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"prompt": "x", "n": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_jsonl_bad_line_names_line_3(bad_line: str, expected: str) -> None:
    data = '{"prompt": "ok"}\n\n' + bad_line + '\n{"prompt": "later"}\n'
    error = fails("p.jsonl", data)
    assert error.line == 3
    assert str(error).startswith("line 3: ")
    assert expected in str(error)


def test_jsonl_invalid_json_message_has_column_not_repr() -> None:
    message = str(fails("p.jsonl", '{"prompt": "x",}\n'))
    assert "column" in message
    assert "JSONDecodeError" not in message
    assert "Traceback" not in message


# --- .csv ---------------------------------------------------------------------------------------


def test_csv_prompt_label_and_meta_columns() -> None:
    data = " Prompt ,LABEL,source\nWhat is 2+2?,closed,math\n  Write a poem  ,open,\n"
    parsed = parse("p.csv", data)
    assert parsed.rows == [
        PromptRow(text="What is 2+2?", line=2, label="closed", meta={"source": "math"}),
        PromptRow(text="Write a poem", line=3, label="open", meta={"source": ""}),
    ]


def test_csv_without_label_column() -> None:
    parsed = parse("p.csv", "id,prompt\n1,hello\n")
    assert parsed.rows == [PromptRow(text="hello", line=2, label=None, meta={"id": "1"})]


def test_csv_quoted_multiline_field_then_bad_row() -> None:
    data = (
        "prompt,label\n"  # line 1
        '"first line\nsecond line\nthird line",open\n'  # lines 2-4
        "plain,closed\n"  # line 5
        "too,many,cells\n"  # line 6
    )
    error = fails("p.csv", data)
    assert error.line == 6
    assert "expected 2 cells" in str(error)
    assert "found 3" in str(error)


def test_csv_quoted_multiline_field_keeps_start_line() -> None:
    data = 'prompt,label\n"a\r\nb",open\r\n"c, with comma",closed\r\n\r\n"said ""hi""",\r\n'
    parsed = parse("p.csv", data)
    assert texts(parsed) == ["a\r\nb", "c, with comma", 'said "hi"']
    assert [row.line for row in parsed.rows] == [2, 4, 6]
    assert parsed.blank_lines == 1


def test_csv_too_few_cells() -> None:
    error = fails("p.csv", "prompt,label,source\nonly,two\n")
    assert error.line == 2
    assert "expected 3 cells" in str(error)


def test_csv_empty_prompt_cell() -> None:
    error = fails("p.csv", "prompt,label\nok,open\n  ,closed\n")
    assert error.line == 3
    assert "'prompt' cell is empty" in str(error)


def test_csv_rows_of_empty_cells_are_blank() -> None:
    parsed = parse("p.csv", "prompt,label\nhi,open\n,\n\n ,  \n")
    assert texts(parsed) == ["hi"]
    assert parsed.blank_lines == 3


def test_csv_missing_prompt_column() -> None:
    error = fails("p.csv", "text,label\nhello,open\n")
    assert error.line == 1
    assert "'prompt'" in str(error)
    assert "text, label" in str(error)


def test_csv_semicolon_separated_is_explained() -> None:
    message = str(fails("p.csv", "prompt;label\nhello;open\n"))
    assert "separated by commas" in message


def test_csv_headerless_file_message_stays_short() -> None:
    message = str(fails("p.csv", "A very long first prompt " * 20 + "\nanother\n"))
    assert len(message) < 300


def test_csv_duplicate_column() -> None:
    error = fails("p.csv", "prompt,Prompt\na,b\n")
    assert error.line == 1
    assert "twice" in str(error)


def test_csv_header_after_blank_lines() -> None:
    parsed = parse("p.csv", "\n\nprompt\nhi\n")
    assert [row.line for row in parsed.rows] == [4]
    assert parsed.blank_lines == 2


def test_csv_unclosed_quote_names_start_line() -> None:
    error = fails("p.csv", 'prompt,label\nok,open\n"never closed,open\nmore,closed\n')
    assert error.line == 3
    assert "never closed" in str(error)


def test_csv_text_after_closing_quote() -> None:
    error = fails("p.csv", 'prompt\n"quoted" then text\n')
    assert error.line == 2
    assert '""' in str(error)
    assert "expected after" not in str(error)


def test_csv_lone_carriage_returns() -> None:
    error = fails("p.csv", "prompt,label\rhello,open\r")
    assert "carriage return" in str(error)
    assert "newline" not in str(error)


def test_csv_duplicates() -> None:
    parsed = parse("p.csv", "prompt,label\na,open\nb,open\na,closed\n")
    assert texts(parsed) == ["a", "b"]
    assert parsed.duplicates == [4]
    assert parsed.rows[0].label == "open"


# --- prompt_hash --------------------------------------------------------------------------------


def test_prompt_hash_is_sha256_of_stripped_text() -> None:
    assert prompt_hash("  hello\n") == hashlib.sha256(b"hello").hexdigest()
    assert prompt_hash("hello") == prompt_hash("\thello ")
    assert prompt_hash("hello") != prompt_hash("Hello")


# --- property: only PromptImportError escapes ---------------------------------------------------

_SYNTAX = st.sampled_from(
    ["\n", "\r\n", "\r", ",", '"', "'", "{", "}", "[", "]", ":", " ", "\t", "\\", "\x00"]
)
_WORDS = st.sampled_from(
    ['"prompt"', '"label"', "prompt", "label", "null", "1e999", "NaN", "\\ud800", "\ufeff"]
)
_TEXTISH = st.lists(st.one_of(_SYNTAX, _WORDS, st.text(max_size=5)), max_size=40).map(
    lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
)
_JSON_VALUE = st.one_of(st.none(), st.integers(), st.text(max_size=30), st.booleans())
_JSONL = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"prompt": st.text(min_size=1, max_size=30)},
            optional={"label": _JSON_VALUE, "x": _JSON_VALUE},
        ),
        st.dictionaries(st.sampled_from(["prompt", "label", "x"]), _JSON_VALUE),
    ).map(json.dumps),
    max_size=8,
).map(lambda lines: "\n".join(lines).encode("utf-8"))


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["prompt", "label"], *rows])
    return buffer.getvalue().encode("utf-8", "surrogatepass")


_CELLS = st.one_of(
    st.lists(st.text(max_size=20), min_size=2, max_size=2),
    st.lists(st.text(max_size=20), max_size=3),
)
_CSV = st.lists(_CELLS, max_size=8).map(_csv_bytes)
# Well-formed files mostly arrive under their own extension, so the success path is exercised too.
_FILES = st.one_of(
    st.tuples(st.sampled_from(EXTENSIONS), st.one_of(st.binary(max_size=300), _TEXTISH)),
    st.tuples(st.sampled_from(EXTENSIONS), st.one_of(_JSONL, _CSV)),
    st.tuples(st.just("jsonl"), _JSONL),
    st.tuples(st.just("csv"), _CSV),
)


@settings(max_examples=200, deadline=None)
@given(
    file=_FILES,
    max_chars=st.integers(min_value=1, max_value=40),
    max_rows=st.integers(min_value=1, max_value=10),
)
def test_any_bytes_parse_cleanly_or_fail_with_a_message(
    file: tuple[str, bytes], max_chars: int, max_rows: int
) -> None:
    extension, data = file
    try:
        parsed = parse_prompt_file(f"fuzz.{extension}", data, max_chars, max_rows=max_rows)
    except PromptImportError as error:
        message = str(error)
        assert message.strip()
        assert "Traceback" not in message
        if error.line is not None:
            assert message.startswith(f"line {error.line}: ")
            assert 1 <= error.line <= data.count(b"\n") + 1
        return
    found = texts(parsed)
    assert found
    assert len(found) <= max_rows
    assert len(set(found)) == len(found)
    line_count = data.count(b"\n") + 1
    for row in parsed.rows:
        assert row.text
        assert row.text == row.text.strip()
        assert len(row.text) <= max_chars
        assert "\x00" not in row.text
        row.text.encode("utf-8")
        json.dumps(row.meta, allow_nan=False).encode("utf-8")
        assert 1 <= row.line <= line_count
    assert all(1 <= line <= line_count for line in parsed.duplicates)


@pytest.mark.parametrize("field", ['"label": "a\\u0000b"', '"meta": {"k": ["\\u0000"]}'])
def test_jsonl_nul_in_any_field_is_refused_but_a_literal_backslash_u_is_text(field: str) -> None:
    with pytest.raises(PromptImportError, match="line 1: contains a NUL character"):
        parse_prompt_file("p.jsonl", ('{"prompt": "x", ' + field + "}").encode(), 100)
    parsed = parse_prompt_file("p.jsonl", b'{"prompt": "x\\\\u0000"}', 100)
    assert parsed.rows[0].text == "x\\u0000"
