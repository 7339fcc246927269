"""Serving ranking tasks: which comparison an annotator sees next, claimed atomically.

A comparison has ``overlap`` slots. A slot is taken by a live ranking (or flag), or by an open
assignment that has not timed out. Serving writes an assignment, so a reload shows the same item
again, two annotators never get the same slot, and an abandoned item returns to the pool after
``assignment_timeout_s``. A skip frees the slot for someone else, never for the one who skipped.

Gold items (an operator's prompt and responses with a known order) sit outside the slot
accounting: every annotator gets each of them once, one in every ``gold_every`` items, looking
like any other item, so careless ranking shows up as disagreement with the known order.
Items of a retired prompt are no longer served.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.store.db import StoreError, now, read_snapshot, write_txn
from rlhf_loop.store.generations import comparison_generations

# Slots a comparison still has free: overlap minus live (non-skip) answers (``live_answers``,
# kept by the schema's triggers) minus open assignments.
_FREE_SLOTS = """
    :overlap - c.live_answers
    - (SELECT count(*) FROM assignments a
       WHERE a.comparison_id = c.id AND a.closed_at IS NULL AND a.served_at > :cutoff)
"""

# Only items with a slot left can have one free: the index on ``live_answers`` finds those few
# instead of going over every item ever ranked.
_OPEN = "c.live_answers < :overlap"

_NOT_RETIRED = "c.prompt_id NOT IN (SELECT id FROM prompts WHERE retired_at IS NOT NULL)"

# A policy item (not gold) of a prompt still in use.
_IN_POOL = f"c.gold_ranks IS NULL AND {_NOT_RETIRED}"

# ...that this annotator has not been served yet, with a slot left.
_SERVABLE = f"""
    {_OPEN} AND {_IN_POOL}
    AND NOT EXISTS (SELECT 1 FROM assignments a
                    WHERE a.comparison_id = c.id AND a.annotator_id = :annotator)
    AND ({_FREE_SLOTS}) > 0
"""


@dataclass(frozen=True)
class Response:
    generation_id: int
    text: str
    token_count: int
    finished: bool


@dataclass(frozen=True)
class Task:
    """One comparison as an annotator sees it: the prompt and K responses in display order.

    Nothing in it names a policy version: blind items compare versions, so what the page is
    handed must not tell them apart.
    """

    comparison_id: int
    prompt: str
    responses: list[Response]
    served_at: float

    @property
    def k(self) -> int:
        return len(self.responses)


def load_task(db: sqlite_utils.Database, comparison_id: int, served_at: float) -> Task:
    comparison = db["comparisons"].get(comparison_id)
    prompt = db["prompts"].get(comparison["prompt_id"])
    responses = [
        Response(g["id"], g["text"], g["token_count"], bool(g["finished"]))
        for g in comparison_generations(db, comparison["generation_ids"])
    ]
    return Task(comparison_id, prompt["text"], responses, served_at)


def _open_assignment(db: sqlite_utils.Database, annotator: int) -> tuple[int, float] | None:
    rows = db["assignments"].rows_where(
        "annotator_id = ? AND closed_at IS NULL", [annotator], order_by="served_at DESC", limit=1
    )
    row = next(iter(rows), None)
    return (row["comparison_id"], row["served_at"]) if row else None


def next_task(
    db: sqlite_utils.Database,
    annotator: int,
    overlap: int,
    assignment_timeout_s: float,
    gold_every: int = 0,
    name: str | None = None,
) -> Task | None:
    """The task this annotator is on, or a newly claimed one; None when the queue is empty.

    The task already on screen is found by a read, which WAL never blocks: a reload or a refused
    submit shows it again even while another process holds the write lock.

    ``name`` is the annotator's, as the page looked their id up. A restore committed since may
    have taken that id away, or given it to someone who registered after it: the id is then
    refused with StoreError, in the same read (or write) as the task, rather than serving
    someone else's item or claiming one in their name.
    """
    with read_snapshot(db):
        if name is not None:
            _still_theirs(db, annotator, name)
        current = _open_assignment(db, annotator)
        if current:
            return load_task(db, *current)
    with write_txn(db):
        _still_theirs(db, annotator, name)
        current = _open_assignment(db, annotator)  # a second tab may have claimed one meanwhile
        if current:
            return load_task(db, *current)
        served_at = now()
        chosen = _gold_due(db, annotator, gold_every) if gold_every else None
        if chosen is None:
            row = db.execute(
                f"""
                SELECT c.id FROM comparisons c WHERE {_SERVABLE}
                ORDER BY c.policy_version DESC, c.priority DESC, c.id
                LIMIT 1
                """,
                {
                    "annotator": annotator,
                    "overlap": overlap,
                    "cutoff": served_at - assignment_timeout_s,
                },
            ).fetchone()
            if row is None:
                return None
            chosen = row[0]
        db["assignments"].insert(
            {"comparison_id": chosen, "annotator_id": annotator, "served_at": served_at}
        )
        return load_task(db, chosen, served_at)


def _still_theirs(db: sqlite_utils.Database, annotator: int, name: str | None) -> None:
    rows = list(db["annotators"].rows_where("id = ?", [annotator], select="name", limit=1))
    if not rows or (name is not None and rows[0]["name"] != name):
        raise StoreError(
            "the database was just restored by an operator, and this page still knows you by "
            "your place in the one before"
        )


def _gold_due(db: sqlite_utils.Database, annotator: int, gold_every: int) -> int | None:
    """A gold item this annotator has not seen, when ``gold_every - 1`` policy items were served
    to them since their last gold one; else None."""
    unseen = db.execute(
        f"""
        SELECT c.id FROM comparisons c
        WHERE c.gold_ranks IS NOT NULL AND {_NOT_RETIRED}
          AND NOT EXISTS (SELECT 1 FROM assignments a
                          WHERE a.comparison_id = c.id AND a.annotator_id = :annotator)
        ORDER BY c.id LIMIT 1
        """,
        {"annotator": annotator},
    ).fetchone()
    if unseen is None:  # the usual case, with no (or no more) gold items: one index lookup
        return None
    # The last gold item served, found from the few gold items (CROSS JOIN keeps that order),
    # then the items served since, by assignment id (``idx_assignments_annotator_id``).
    since_gold = db.execute(
        """
        SELECT count(*) FROM assignments a JOIN comparisons c ON c.id = a.comparison_id
        WHERE a.annotator_id = :annotator AND c.gold_ranks IS NULL
          AND a.id > coalesce((SELECT max(g.id) FROM comparisons gc CROSS JOIN assignments g
                               WHERE gc.gold_ranks IS NOT NULL AND g.comparison_id = gc.id
                                 AND g.annotator_id = :annotator), 0)
        """,
        {"annotator": annotator},
    ).fetchone()[0]
    return unseen[0] if since_gold >= gold_every - 1 else None


def free_slots(db: sqlite_utils.Database, overlap: int, assignment_timeout_s: float) -> int:
    """Rankings the queue can still absorb, over all annotators: what the sampler tops up."""
    row = db.execute(
        f"""
        SELECT coalesce(sum(max(({_FREE_SLOTS}), 0)), 0) FROM comparisons c
        WHERE {_OPEN} AND {_IN_POOL}
        """,
        {"overlap": overlap, "cutoff": now() - assignment_timeout_s},
    ).fetchone()
    return int(row[0])


def tasks_left_for(
    db: sqlite_utils.Database, annotator: int, overlap: int, assignment_timeout_s: float
) -> int:
    """Tasks this annotator could still be served (the 'queue left' figure on the page)."""
    row = db.execute(
        f"SELECT count(*) FROM comparisons c WHERE {_SERVABLE}",
        {"annotator": annotator, "overlap": overlap, "cutoff": now() - assignment_timeout_s},
    ).fetchone()
    return int(row[0])
