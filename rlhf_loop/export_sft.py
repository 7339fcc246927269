"""Export of the demonstrations in TRL's conversational SFT format: one
``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` per line.

Why conversational rather than prompt/completion: ``trl.SFTTrainer`` applies the tokenizer's chat
template to such rows itself, and the same file serves any chat model. The user turn is the
prompt as annotators saw it. Live demonstrations only (an undone one is a retracted answer), and
none on a prompt an operator retired (judged broken); tests/test_demonstrations.py loads the file
with ``datasets.load_dataset("json")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

import sqlite_utils

from rlhf_loop.export import write_jsonl
from rlhf_loop.store.demonstrations import LIVE_DEMONSTRATION

_LIVE_ON_PROMPTS_IN_USE = f"""
    FROM demonstrations d JOIN prompts p ON p.id = d.prompt_id
    WHERE {LIVE_DEMONSTRATION} AND p.retired_at IS NULL
"""
_DEMONSTRATIONS = (
    f"SELECT p.text AS prompt, d.text AS answer {_LIVE_ON_PROMPTS_IN_USE} ORDER BY d.id"
)


def sft_records(db: sqlite_utils.Database) -> Iterator[dict[str, list[dict[str, str]]]]:
    for row in db.query(_DEMONSTRATIONS):
        yield {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["answer"]},
            ]
        }


def sft_record_count(db: sqlite_utils.Database) -> int:
    """How many records ``sft_records`` yields, without reading their texts (the worker asks on
    every pass whether an SFT round is due)."""
    return db.execute(f"SELECT count(*) {_LIVE_ON_PROMPTS_IN_USE}").fetchone()[0]


def export_sft_jsonl(db: sqlite_utils.Database, out: TextIO) -> int:
    """The Data page's download, here so a test loads exactly the file operators get; written
    line by line (``export.write_jsonl``)."""
    return write_jsonl(sft_records(db), out)
