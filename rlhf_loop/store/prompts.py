"""Prompts in the database: an import lands whole or not at all, and a prompt is stored once."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.prompt_import import ParsedPrompts, prompt_hash
from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event


@dataclass(frozen=True)
class ImportReport:
    """What an import did, for the message the operator reads."""

    added: int
    already_present: int
    duplicate_lines: list[int]
    blank_lines: int

    def summary(self) -> str:
        parts = [f"{self.added} prompt(s) added"]
        if self.already_present:
            parts.append(f"{self.already_present} already in the database")
        if self.duplicate_lines:
            parts.append(duplicate_lines_note(self.duplicate_lines))
        if self.blank_lines:
            parts.append(f"{self.blank_lines} blank line(s) skipped")
        return "; ".join(parts)


def duplicate_lines_note(lines: list[int]) -> str:
    """The skipped duplicate lines of a file, the first ten by number, for an import summary."""
    shown = ", ".join(map(str, lines[:10]))
    return f"{len(lines)} duplicate line(s) skipped ({shown}{'…' if len(lines) > 10 else ''})"


def add_prompts(db: sqlite_utils.Database, parsed: ParsedPrompts, source: str) -> ImportReport:
    """Insert the parsed prompts that are new, in one transaction."""
    created = now()
    rows = [
        {
            "text": row.text,
            "text_hash": prompt_hash(row.text),
            "label": row.label,
            "meta": json.dumps(row.meta, sort_keys=True) if row.meta else None,
            "source": source,
            "created_at": created,
        }
        for row in parsed.rows
    ]
    with write_txn(db):
        before = db["prompts"].count
        db["prompts"].insert_all(rows, ignore=True, batch_size=500)
        added = db["prompts"].count - before
        log_event(db, "prompts_imported", source=source, added=added, offered=len(rows))
    return ImportReport(
        added=added,
        already_present=len(rows) - added,
        duplicate_lines=list(parsed.duplicates),
        blank_lines=parsed.blank_lines,
    )


def prompt_count(db: sqlite_utils.Database) -> int:
    return db["prompts"].count


# A prompt ``p`` that the policy may be sampled and trained on: not retired by an operator, and
# not a gold item's (a policy sample of it beside the gold item would give the check away).
IN_USE = """
    p.retired_at IS NULL
    AND p.id NOT IN (SELECT prompt_id FROM comparisons WHERE gold_ranks IS NOT NULL)
"""


def prompt_texts_in_use(db: sqlite_utils.Database) -> list[str]:
    """Prompts training may use, oldest first."""
    return [r["text"] for r in db.query(f"SELECT text FROM prompts p WHERE {IN_USE} ORDER BY id")]
