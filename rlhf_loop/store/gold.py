"""Gold items in the database: an operator's prompt and responses with a known order.

Stored as an ordinary comparison (so the Rank page shows it like any other item) whose
``gold_ranks`` holds the known order and whose generations carry ``GOLD_POLICY_VERSION``,
since no policy wrote them. Their token counts (shown under each response) are estimates until
the worker recounts them with the policy's tokenizer: an estimate beside exact counts would let
an attentive annotator tell the gold items apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.gold_import import GoldItem
from rlhf_loop.prompt_import import prompt_hash
from rlhf_loop.simulate import approx_tokens
from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.generations import Sample, add_comparisons

GOLD_POLICY_VERSION = -1


@dataclass(frozen=True)
class GoldReport:
    added: int
    already_present: int

    def summary(self) -> str:
        text = f"{self.added} gold item(s) added"
        if self.already_present:
            text += f"; {self.already_present} already gold items, left as they were"
        return text


def add_gold_items(db: sqlite_utils.Database, items: list[GoldItem], source: str) -> GoldReport:
    """Store every item in one transaction. A prompt that is already a gold item is skipped (its
    known order stands); a prompt already in the pool becomes a gold prompt, and the sampler
    stops drawing it, so its gold item cannot be recognised beside policy samples."""
    added = 0
    with write_txn(db):
        for item in items:
            prompt_id = _prompt_id(db, item.prompt, source)
            if db["comparisons"].count_where(
                "prompt_id = ? AND gold_ranks IS NOT NULL", [prompt_id]
            ):
                continue
            samples = [Sample(text, approx_tokens(text), True) for text in item.responses]
            [comparison_id] = add_comparisons(
                db, GOLD_POLICY_VERSION, [prompt_id], [samples], {"gold": source, "counted": False}
            )
            db["comparisons"].update(comparison_id, {"gold_ranks": json.dumps(item.ranks)})
            added += 1
        log_event(db, "gold_imported", source=source, added=added)
    return GoldReport(added=added, already_present=len(items) - added)


def _prompt_id(db: sqlite_utils.Database, text: str, source: str) -> int:
    key = prompt_hash(text)
    rows = list(db["prompts"].rows_where("text_hash = ?", [key], limit=1))
    if rows:
        return rows[0]["id"]
    return (
        db["prompts"]
        .insert({"text": text, "text_hash": key, "source": source, "created_at": now()})
        .last_pk
    )


def recount_gold_tokens(db: sqlite_utils.Database, count_tokens: Callable[[str], int]) -> int:
    """Replace estimated token counts of gold responses with ``count_tokens``; returns how many
    (none after the first call: a cheap query for the worker to make before each batch)."""
    rows = list(
        db["generations"].rows_where(
            "policy_version = ? AND json_extract(params, '$.counted') = 0",
            [GOLD_POLICY_VERSION],
            select="id, text, params",
        )
    )
    with write_txn(db):
        for row in rows:
            params = {**json.loads(row["params"]), "counted": True}
            db["generations"].update(
                row["id"],
                {"token_count": count_tokens(row["text"]), "params": json.dumps(params)},
            )
    return len(rows)
