"""Demonstrations (issue 13, first half) through the store, the import parser and the exports:
every bad input refused with its reason, a double submit and undo as for rankings, the written
answer counted as a ranking above all K (or not, as stored), the migration from schema v7, and
the SFT export loaded by ``datasets``."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import sqlite_utils
from store_helpers import exported, fresh_db, make_comparisons, old_schema

from rlhf_loop.demonstration_import import DemonstrationImportError, parse_demonstration_file
from rlhf_loop.export import export_jsonl, ranking_records
from rlhf_loop.export_sft import export_sft_jsonl
from rlhf_loop.reward.data import load_rankings
from rlhf_loop.store.annotator_table import annotator_table
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.db import open_db
from rlhf_loop.store.demonstrations import (
    RANK_PAGE,
    DemonstrationError,
    Written,
    add_imported,
    demonstration_of,
    live_demonstration_count,
    submit_demonstration,
)
from rlhf_loop.store.prompt_list import retire_prompts
from rlhf_loop.store.schema import SCHEMA_VERSION, schema_version
from rlhf_loop.store.submissions import DuplicateSubmission, reopen_last, submit
from rlhf_loop.store.tasks import Task, next_task
from rlhf_loop.store.training_rankings import training_ranking_count

MAX = 1000


def _served(db: sqlite_utils.Database, who: int) -> Task:
    task = next_task(db, who, 1, 1800)
    assert task is not None
    return task


def _write(db: sqlite_utils.Database, who: int, text: str, **options) -> int:
    options = {"max_chars": MAX, "counts_as_ranking": True} | options
    return submit_demonstration(db, who, _served(db, who).comparison_id, text, **options)


@pytest.fixture
def db(tmp_path: Path) -> sqlite_utils.Database:
    db = fresh_db(tmp_path)
    make_comparisons(db, 3, k=3)
    return db


# --- the Rank page's written answer ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "your answer is empty"),
        (" \n\t ", "your answer is empty"),
        ("x" * (MAX + 1), f"your answer is {MAX + 1:,} characters long; the limit is {MAX:,}"),
        ("a\x00b", "NUL"),
    ],
)
def test_a_bad_written_answer_is_refused_and_nothing_is_stored(db, text, message) -> None:
    ada = annotator_id(db, "ada")
    with pytest.raises(DemonstrationError, match=message):
        _write(db, ada, text)
    assert db["demonstrations"].count == db["rankings"].count == 0
    assert next_task(db, ada, 1, 1800).comparison_id == 1  # the item is still on screen


def test_html_and_script_are_kept_as_typed_plain_text(db) -> None:
    ada = annotator_id(db, "ada")
    text = "<script>alert(1)</script> **bold** <b>x</b> [a](javascript:b)"
    did = _write(db, ada, f"  {text}\n")
    row = db["demonstrations"].get(did)
    assert row["text"] == text  # stripped around, nothing removed or escaped inside
    assert (row["source"], row["annotator_id"], row["generation_id"]) == (RANK_PAGE, ada, None)
    assert row["seconds"] >= 0 and row["prompt_id"] == 1


def test_a_double_submit_keeps_the_first_answer(db) -> None:
    ada = annotator_id(db, "ada")
    task = _served(db, ada)
    common = {"max_chars": MAX, "counts_as_ranking": True}
    submit_demonstration(db, ada, task.comparison_id, "first", **common)
    with pytest.raises(DuplicateSubmission, match="first answer was kept"):
        submit_demonstration(db, ada, task.comparison_id, "second", **common)
    with pytest.raises(DuplicateSubmission):  # nor a ranking after it
        submit(db, ada, task.comparison_id, "ranked", [1, 2, 3])
    assert [d["text"] for d in db["demonstrations"].rows] == ["first"]
    assert db["rankings"].count == 1


def test_the_start_must_be_one_of_the_items_responses(db) -> None:
    ada = annotator_id(db, "ada")
    task = _served(db, ada)
    stranger = db["generations"].count  # the last generation belongs to another item
    with pytest.raises(DemonstrationError, match="not one of this item's"):
        submit_demonstration(
            db,
            ada,
            task.comparison_id,
            "x",
            max_chars=MAX,
            counts_as_ranking=True,
            started_from=stranger,
        )
    did = submit_demonstration(
        db,
        ada,
        task.comparison_id,
        "better",
        max_chars=MAX,
        counts_as_ranking=True,
        started_from=task.responses[1].generation_id,
    )
    assert db["demonstrations"].get(did)["generation_id"] == task.responses[1].generation_id
    answer = db["demonstrations"].get(did)["ranking_id"]
    assert demonstration_of(db, answer) == Written("better", 1)  # what the editor gets back


def test_undo_retracts_the_written_answer_and_a_redo_supersedes_it(db) -> None:
    ada = annotator_id(db, "ada")
    did = _write(db, ada, "my answer", ranks=[2, 1, 3])
    assert live_demonstration_count(db) == 1
    back = reopen_last(db, ada)
    assert (back.status, back.ranks) == ("ranked", [2, 1, 3])
    assert demonstration_of(db, back.ranking_id) == Written("my answer", None)
    assert live_demonstration_count(db) == 0 and db["demonstrations"].count == 1  # kept
    assert _sft_file(db) == "" and training_ranking_count(db) == 0
    assert _served(db, ada).comparison_id == back.comparison_id  # served again
    redo = _write(db, ada, "my better answer")
    answer = db["rankings"].get(db["demonstrations"].get(redo)["ranking_id"])
    assert answer["supersedes"] == back.ranking_id and answer["status"] == "demonstrated"
    assert did != redo and live_demonstration_count(db) == 1
    back = reopen_last(db, ada)
    assert (back.status, back.ranks) == ("demonstrated", None)


def test_the_dashboard_counts_written_answers_and_lists_their_writer(db) -> None:
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    _write(db, ada, "written without a ranking")  # her only answer
    _write(db, bob, "written with one", ranks=[1, 2, 3])
    _write(db, bob, "then undone")
    reopen_last(db, bob)
    table = annotator_table(db)
    rows = {row["annotator"]: row for row in table.rows}
    assert table.without_answers == []
    assert (rows["ada"]["written"], rows["ada"]["ranked"]) == (1, 0)
    assert (rows["bob"]["written"], rows["bob"]["ranked"]) == (1, 1)


# --- counting as a ranking -------------------------------------------------------------------


def test_a_written_answer_beats_all_k_and_the_k_keep_the_annotators_order(db) -> None:
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    _write(db, ada, "written with a ranking", ranks=[2, 1, 2])
    _write(db, bob, "written alone")
    records = list(ranking_records(db))
    assert training_ranking_count(db) == len(records) == 2
    with_ranking, alone = records
    assert [(r["text"], r["rank"]) for r in with_ranking["responses"]] == [
        ("written with a ranking", 1),
        ("response 0 to prompt 1", 3),
        ("response 1 to prompt 1", 2),
        ("response 2 to prompt 1", 3),
    ]
    assert with_ranking["responses"][0]["generation_id"] is None
    assert [r["rank"] for r in alone["responses"]] == [1, 2, 2, 2]  # the K tie below it
    examples = load_rankings(db)  # what the reward model reads
    assert [e.ranks for e in examples] == [[1, 3, 2, 3], [1, 2, 2, 2]]
    pairs = [
        json.loads(line)
        for line in exported(lambda out: export_jsonl(db, "pairs", out)).splitlines()
    ]
    assert sum(p["chosen"] == "written alone" for p in pairs) == 3


def test_with_the_setting_off_a_written_answer_ranks_nothing(db) -> None:
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    _write(db, ada, "written with a ranking", ranks=[2, 1, 2], counts_as_ranking=False)
    _write(db, bob, "written alone", counts_as_ranking=False)
    [record] = ranking_records(db)  # ada's ranking of the K still trains, as a ranking
    assert [r["rank"] for r in record["responses"]] == [2, 1, 2]
    assert training_ranking_count(db) == 1
    assert len(_sft_file(db).splitlines()) == 2  # both are still demonstrations


def test_a_written_answer_on_a_retired_prompt_neither_trains_nor_exports(db) -> None:
    ada = annotator_id(db, "ada")
    _write(db, ada, "answer")
    retire_prompts(db, [1], "olga")
    assert training_ranking_count(db) == 0 and _sft_file(db) == ""


# --- import ----------------------------------------------------------------------------------


def _parse(lines: list[str], name: str = "demos.jsonl"):
    return parse_demonstration_file(name, "\n".join(lines).encode(), MAX)


GOOD = '{"prompt": "What is 2+2?", "response": "4"}'
CHAT = json.dumps(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"prompt": "p"}', "missing 'response' field"),
        ('{"response": "r"}', "missing 'prompt' field"),
        ('{"prompt": "p", "response": "  "}', "the answer is empty"),
        ('{"prompt": "", "response": "r"}', "the prompt is empty"),
        ('{"prompt": "p", "response": 4}', "the answer must be text, found a number"),
        ('{"prompt": "p", "response": "' + "x" * (MAX + 1) + '"}', f"{MAX + 1:,} characters"),
        ('{"prompt": "p", "response": "a\\u0000b"}', "NUL"),
        ('{"text": "p"}', "neither 'prompt' and 'response' nor 'messages'"),
        ('{"messages": "hi"}', "'messages' must be a list"),
        ('{"messages": [{"role": "user", "content": "p"}]}', "no assistant turn"),
        (
            json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user"}]}),
            "found the roles: assistant, user",
        ),
        ('{"messages": [{"role": "user", "content": "p"}, "a"]}', "message 2 must be an object"),
        (
            '{"messages": [{"role": "user", "content": "p"}, {"role": "assistant"}]}',
            "the answer must be text, found null",
        ),
        ('{"messages": [], "prompt": "p", "response": "r"}', "use one shape per line"),
    ],
)
def test_a_bad_line_refuses_the_whole_file_with_its_number(bad: str, message: str) -> None:
    with pytest.raises(DemonstrationImportError, match=message) as caught:
        _parse([GOOD, "", CHAT, bad, GOOD])
    assert str(caught.value).startswith("line 4: ")


def test_a_bad_file_refuses_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(DemonstrationImportError, match=r"not a \.jsonl file"):
        _parse([GOOD], "demos.csv")
    with pytest.raises(DemonstrationImportError, match="no demonstrations"):
        _parse(["", "  "])
    with pytest.raises(DemonstrationImportError, match=r"line 2: .*not valid UTF-8"):
        parse_demonstration_file("d.jsonl", GOOD.encode() + b"\n\xff\n", MAX)
    db = fresh_db(tmp_path)
    with pytest.raises(DemonstrationImportError, match="more than 1 demonstrations"):
        parse_demonstration_file("d.jsonl", f"{GOOD}\n{CHAT}".encode(), MAX, max_rows=1)
    assert db["demonstrations"].count == 0


def test_an_import_adds_both_shapes_once_with_their_prompts(db) -> None:
    parsed = _parse([GOOD, CHAT, GOOD, '{"prompt": "prompt 1", "response": "<b>kept</b>"}'])
    assert [r.line for r in parsed.rows] == [1, 2, 4] and parsed.duplicate_lines == [3]
    report = add_imported(db, parsed, "demos.jsonl")
    assert (report.added, report.new_prompts, report.already_present) == (3, 2, 0)
    assert "1 duplicate line(s) skipped (3)" in report.summary()
    again = add_imported(db, parsed, "demos.jsonl")
    assert (again.added, again.already_present) == (0, 3)
    rows = list(db["demonstrations"].rows_where(order_by="id"))
    assert {r["source"] for r in rows} == {"import:demos.jsonl"}
    assert rows[2]["prompt_id"] == 2 and rows[2]["text"] == "<b>kept</b>"  # "prompt 1": stored
    assert all(r["annotator_id"] is None and r["ranking_id"] is None for r in rows)
    assert training_ranking_count(db) == 0  # nothing for an imported answer to beat


# --- export and migration --------------------------------------------------------------------


def test_the_sft_export_loads_with_datasets_as_trl_conversations(db, tmp_path: Path) -> None:
    ada = annotator_id(db, "ada")
    _write(db, ada, 'Line one\nline "two" <script>x</script> ünïcode')
    add_imported(db, _parse([CHAT]), "chat.jsonl")
    path = tmp_path / "sft.jsonl"
    path.write_text(_sft_file(db), encoding="utf-8")
    dataset = datasets.load_dataset("json", data_files=str(path), split="train")
    assert dataset.column_names == ["messages"] and len(dataset) == 2
    assert dataset[0]["messages"] == [
        {"role": "user", "content": "prompt 0"},
        {"role": "assistant", "content": 'Line one\nline "two" <script>x</script> ünïcode'},
    ]
    assert dataset[1]["messages"][1] == {"role": "assistant", "content": "Hello"}


def test_a_schema_v7_database_migrates_and_keeps_its_rankings(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = old_schema(sqlite_utils.Database(path), 7)
    old.conn.close()
    db = open_db(path)
    make_comparisons(db, 2, k=3)
    ada = annotator_id(db, "ada")
    submit(db, ada, _served(db, ada).comparison_id, "ranked", [1, 2, 3])
    assert schema_version(db) == SCHEMA_VERSION >= 8
    assert db["demonstrations"].count == 0
    assert [r["ranks"] for r in load_rankings_plain(db)] == [[1, 2, 3]]
    _write(db, ada, "written")
    assert live_demonstration_count(db) == 1 and training_ranking_count(db) == 2


def _sft_file(db: sqlite_utils.Database) -> str:
    return exported(lambda out: export_sft_jsonl(db, out))


def load_rankings_plain(db: sqlite_utils.Database) -> list[dict]:
    return [{"ranks": [r["rank"] for r in rec["responses"]]} for rec in ranking_records(db)]
