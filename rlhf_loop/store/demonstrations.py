"""Demonstrations: answers people write themselves, from the Rank page or an imported file.

A Rank-page demonstration answers its item the way a ranking does, through one row of
``rankings`` that ``demonstrations.ranking_id`` names: status 'ranked' when the annotator also
ranked the K responses, 'demonstrated' when not. Hence a second submit of the item is refused
by the same unique index, undo and reopening retract that row (and with it the demonstration,
which is live exactly while its row is), and the item leaves the queue as after a ranking; none
of that is written twice. What the annotator saw about counting (the setting
``demonstrations_count_as_rankings`` at the time) is stored with each one, so a later change
of the setting does not re-label what people were told (``training_rankings`` reads it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.demonstration_import import ParsedDemonstrations
from rlhf_loop.prompt_import import ParsedPrompts, PromptRow, prompt_hash
from rlhf_loop.ranking import RankingError
from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.prompts import add_prompts, duplicate_lines_note
from rlhf_loop.store.submissions import submit
from rlhf_loop.text_checks import TextProblem, checked_text

RANK_PAGE = "rank page"
IMPORT_SOURCE = "import:{name}"

# Demonstration ``d`` is live: imported, or written on the Rank page and not undone since. One
# primary-key lookup per demonstration: "ranking_id IN (SELECT id FROM rankings WHERE ...)"
# listed every live ranking first, 0.4 s at 10^6 rankings for a handful of demonstrations.
LIVE_DEMONSTRATION = (
    "(d.ranking_id IS NULL OR EXISTS (SELECT 1 FROM rankings dr"
    " WHERE dr.id = d.ranking_id AND dr.retracted_at IS NULL))"
)


class DemonstrationError(RankingError):
    """A written answer cannot be stored; ``str()`` says why, for the annotator."""


def submit_demonstration(
    db: sqlite_utils.Database,
    annotator: int,
    comparison_id: int,
    text: str,
    *,
    max_chars: int,
    counts_as_ranking: bool,
    started_from: int | None = None,
    ranks: list[int | None] | None = None,
    comment: str = "",
    served_at: float | None = None,
) -> int:
    """Store an annotator's written answer to the item on screen; returns its id.

    ``started_from`` is the generation the editor was prefilled with (None: written from empty);
    ``ranks`` the annotator's ranking of the K responses, if they gave one; ``served_at`` the
    item's serving time, as for ``submit``. The answer is stored as typed (stripped of
    surrounding whitespace): pages show it as plain text.
    """
    try:
        clean = checked_text(text, "your answer", max_chars)
    except TextProblem as exc:
        raise DemonstrationError(str(exc)) from None
    given = ranks if ranks is not None and any(r is not None for r in ranks) else None
    with write_txn(db):
        # The answer first: it checks that the item is the one on screen (its id may belong to
        # no item, or another, after a restore); a refusal below rolls it back.
        status = "ranked" if given else "demonstrated"
        ranking_id = submit(
            db, annotator, comparison_id, status, given, comment=comment, served_at=served_at
        )
        comparison = db["comparisons"].get(comparison_id)
        if started_from is not None and started_from not in json.loads(
            comparison["generation_ids"]
        ):
            raise DemonstrationError("the response you started from is not one of this item's")
        answer = db["rankings"].get(ranking_id)
        demonstration_id = (
            db["demonstrations"]
            .insert(
                {
                    "prompt_id": comparison["prompt_id"],
                    "text": clean,
                    "annotator_id": annotator,
                    "seconds": answer["seconds"],
                    "generation_id": started_from,
                    "ranking_id": ranking_id,
                    "counts_as_ranking": int(counts_as_ranking),
                    "source": RANK_PAGE,
                    "created_at": answer["created_at"],
                }
            )
            .last_pk
        )
        log_event(
            db,
            "demonstration_written",
            annotator,
            demonstration_id=demonstration_id,
            ranking_id=ranking_id,
        )
    return demonstration_id


@dataclass(frozen=True)
class Written:
    """A Rank-page demonstration as the editor needs it back after an undo or a reopen."""

    text: str
    started_from: int | None  # the position of the response it started from among the K


def demonstration_of(db: sqlite_utils.Database, ranking_id: int) -> Written | None:
    """The demonstration a (possibly retracted) answer row carried; None for a plain ranking."""
    rows = db["demonstrations"].rows_where("ranking_id = ?", [ranking_id], limit=1)
    row = next(iter(rows), None)
    if row is None:
        return None
    comparison = db["comparisons"].get(db["rankings"].get(ranking_id)["comparison_id"])
    shown = json.loads(comparison["generation_ids"])
    start = row["generation_id"]
    return Written(row["text"], shown.index(start) if start in shown else None)


@dataclass(frozen=True)
class DemonstrationReport:
    added: int
    already_present: int
    duplicate_lines: list[int]
    new_prompts: int

    def summary(self) -> str:
        notes = [
            f"{self.added} demonstration(s) added",
            self.new_prompts and f"{self.new_prompts} of their prompts were new, added as prompts",
            self.already_present and f"{self.already_present} already in the database",
            self.duplicate_lines and duplicate_lines_note(self.duplicate_lines),
        ]
        return "; ".join(note for note in notes if note)


def add_imported(
    db: sqlite_utils.Database, parsed: ParsedDemonstrations, filename: str
) -> DemonstrationReport:
    """Store a parsed file in one transaction. A prompt not stored yet is added as a prompt (a
    demonstration is always about a stored prompt); the same prompt and answer already stored is
    skipped. Imported answers rank nothing: they have no item of K responses to beat."""
    source = IMPORT_SOURCE.format(name=filename)
    prompts = [PromptRow(text=row.prompt, line=row.line) for row in parsed.rows]
    added, created = 0, now()
    with write_txn(db):
        new_prompts = add_prompts(db, ParsedPrompts(prompts, [], 0), source).added
        for row in parsed.rows:
            [prompt] = db["prompts"].rows_where("text_hash = ?", [prompt_hash(row.prompt)])
            if db["demonstrations"].count_where(
                "prompt_id = ? AND text = ?", [prompt["id"], row.text]
            ):
                continue
            db["demonstrations"].insert(
                {
                    "prompt_id": prompt["id"],
                    "text": row.text,
                    "counts_as_ranking": 0,
                    "source": source,
                    "created_at": created,
                }
            )
            added += 1
        log_event(db, "demonstrations_imported", source=source, added=added)
    return DemonstrationReport(
        added=added,
        already_present=len(parsed.rows) - added,
        duplicate_lines=parsed.duplicate_lines,
        new_prompts=new_prompts,
    )


def live_demonstration_count(db: sqlite_utils.Database) -> int:
    return db.execute(
        f"SELECT count(*) FROM demonstrations d WHERE {LIVE_DEMONSTRATION}"
    ).fetchone()[0]
