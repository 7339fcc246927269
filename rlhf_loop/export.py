"""Exports of the rankings as JSONL: full rankings with ties, and strict pairs for TRL.

The pairs file has exactly TRL's explicit-prompt preference columns (prompt, chosen, rejected),
so ``load_dataset("json", data_files=...)`` feeds ``trl.RewardTrainer`` as it is
(tests/test_export_trl.py trains on one). Ties yield no pair there (TRL has no tie), flagged and
retracted answers are left out of both files. So are answers to gold items (they check
annotators; the known order is the operator's, not theirs) and answers on prompts an operator
retired. A written answer that counts as a ranking (``store.demonstrations``) is one more
response of its ranking, rank 1, above the K (so the pairs file has it beat each of them).

Both files carry the raw prompt as annotators saw it, not the text the app's own reward model
reads (``reward.data.exchange_text``: the prompt in the policy's chat template, or in
"Question: ...\\nAnswer:" for a tokenizer without one, then a space and the response). The raw
text is what the ranking was about and fits any model, whereas a template belongs to one
tokenizer. So TRL does not see the app's text: given these plain strings it concatenates prompt
and response as they are (no separator) and appends EOS; it applies the tokenizer's chat
template only to conversational rows (lists of role/content messages), which a user can build
from these fields.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TextIO

import sqlite_utils

from rlhf_loop.ranking import strict_pairs
from rlhf_loop.store.generations import generations_by_id
from rlhf_loop.store.training_rankings import TRAINS_OR_WRITTEN, WRITTEN_ITEMS

# Rankings whose generations are read in one query: a few MB of texts held at a time.
RANKINGS_PER_READ = 1000

_TRAINING_RANKINGS = f"""
    SELECT r.id, r.comparison_id, r.ranks, r.seconds, r.created_at, a.name AS annotator,
           c.generation_ids, c.policy_version, p.text AS prompt, p.label,
           CASE WHEN d.counts_as_ranking = 1 THEN d.id END AS written_id, d.text AS written
    FROM {WRITTEN_ITEMS}
    JOIN annotators a ON a.id = r.annotator_id
    WHERE {TRAINS_OR_WRITTEN}
    ORDER BY r.id
"""


def ranking_records(db: sqlite_utils.Database) -> Iterator[dict[str, Any]]:
    """One record per ranking that trains (``store.training_rankings``): the prompt, each response
    with its rank, who and how long. A written answer that counts as a ranking is the first
    response, rank 1, with ``demonstration_id`` and no generation; the K follow below it.

    Read RANKINGS_PER_READ rankings at a time, with their generations in one query: what is
    held stays one chunk however many rankings there are."""
    rows = db.query(_TRAINING_RANKINGS)
    while chunk := list(itertools.islice(rows, RANKINGS_PER_READ)):
        orders = [json.loads(row["generation_ids"]) for row in chunk]
        generations = generations_by_id(
            db, [i for order in orders for i in order], select="id, text, policy_version"
        )
        for row, order in zip(chunk, orders, strict=True):
            yield _record(row, [generations[i] for i in order])


def _record(row: dict[str, Any], generations: list[dict[str, Any]]) -> dict[str, Any]:
    ranks = json.loads(row["ranks"]) if row["ranks"] else [1] * len(generations)
    written = []
    if row["written_id"] is not None:
        ranks = [rank + 1 for rank in ranks]
        written = [_written_response(row["written_id"], row["written"])]
    return {
        "ranking_id": row["id"],
        "comparison_id": row["comparison_id"],
        "prompt": row["prompt"],
        "prompt_label": row["label"],
        "policy_version": row["policy_version"],
        "annotator": row["annotator"],
        "seconds": round(row["seconds"], 3),
        "created_at": row["created_at"],
        "responses": written
        + [
            {
                "generation_id": g["id"],
                "text": g["text"],
                "rank": r,
                "policy_version": g["policy_version"],  # blind items mix two versions
            }
            for g, r in zip(generations, ranks, strict=True)
        ],
    }


def _written_response(demonstration_id: int, text: str) -> dict[str, Any]:
    """A written answer among a ranking's responses: no policy wrote it."""
    return {
        "generation_id": None,
        "demonstration_id": demonstration_id,
        "text": text,
        "rank": 1,
        "policy_version": None,
    }


def pair_records(rankings: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """Every strictly ordered pair of each ranking, in TRL's preference format."""
    for record in rankings:
        responses = record["responses"]
        for better, worse in strict_pairs([r["rank"] for r in responses]):
            yield {
                "prompt": record["prompt"],
                "chosen": responses[better]["text"],
                "rejected": responses[worse]["text"],
            }


ExportShape = Literal["full", "pairs"]


def write_jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write each record as one JSON line as soon as it is made; returns the lines written.

    Nothing but the record at hand is held, so an export's memory stays flat however many
    rankings there are (tests/test_store_scale.py); the records come from a database cursor.
    """
    lines = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        lines += 1
    return lines


def export_jsonl(db: sqlite_utils.Database, shape: ExportShape, out: TextIO) -> int:
    """The Data page's download, here so a test loads exactly the file operators get."""
    records = ranking_records(db)
    return write_jsonl(pair_records(records) if shape == "pairs" else records, out)


def download_file(write: Callable[[TextIO], object]) -> io.RawIOBase:
    """What ``write`` writes, in an unnamed temporary file read back from the start: handed to
    a download button, it spares the page a string of the whole export (Streamlit then reads the
    file's bytes once to serve them)."""
    file = tempfile.TemporaryFile()  # noqa: SIM115 (returned open, for the button to read)
    try:
        text = io.TextIOWrapper(file, encoding="utf-8", newline="\n")
        write(text)
        text.flush()
        raw = text.detach().detach()
    except BaseException:
        file.close()
        raise
    raw.seek(0)
    return raw
