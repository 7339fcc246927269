"""People's live rankings as judgements, the input of every agreement figure.

Only live rankings count (``store.training_rankings``): not retracted, of status 'ranked'. A
simulated annotator's never: the figures measure how people agree, and an oracle agreeing with
itself would inflate them (``store.quality``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import sqlite_utils

from rlhf_loop.agreement import Judgement
from rlhf_loop.store.training_rankings import BY_SIMULATED, LIVE_RANKING, RANKED_ITEMS, TRAINS

# RANKED_ITEMS from the few gold items (their partial index), then their rankings: without
# statistics the planner went through every live ranking instead (0.5 s at 10^6 rankings).
# CROSS JOIN keeps the tables in that order.
_GOLD_FIRST = """
    comparisons c CROSS JOIN rankings r ON r.comparison_id = c.id
    JOIN prompts p ON p.id = c.prompt_id
"""

# SQLite binds at most 32766 values per statement; far fewer keep each statement quick.
_IDS_PER_QUERY = 500


def judgement_rows(
    db: sqlite_utils.Database,
    gold: bool | None,
    comparison_ids: Sequence[int] | None = None,
    order_by: str = "r.id",
) -> Iterator[tuple[int, str, str]]:
    """(comparison_id, annotator name, ranks as stored JSON), of every item or of
    ``comparison_ids`` (ascending) only; ``gold`` as in ``judgements``. In submission order, or
    by ``order_by``: "r.comparison_id" follows the live rankings' index, item after item."""
    if gold is None:
        where = LIVE_RANKING
    elif gold:
        where = f"{LIVE_RANKING} AND c.gold_ranks IS NOT NULL"
    else:
        where = TRAINS
    query = f"""
        SELECT r.comparison_id, a.name, r.ranks FROM {_GOLD_FIRST if gold else RANKED_ITEMS}
        JOIN annotators a ON a.id = r.annotator_id
        WHERE {where} AND NOT ({BY_SIMULATED}) {{items}}
        ORDER BY {order_by}
    """
    if comparison_ids is None:
        yield from db.execute(query.format(items=""))
        return
    for start in range(0, len(comparison_ids), _IDS_PER_QUERY):
        chunk = list(comparison_ids[start : start + _IDS_PER_QUERY])
        marks = ",".join("?" * len(chunk))
        yield from db.execute(query.format(items=f"AND r.comparison_id IN ({marks})"), chunk)


def judgements(db: sqlite_utils.Database, gold: bool | None = None) -> list[Judgement]:
    """People's live rankings as (comparison_id, annotator name, dense ranks), in submission
    order.

    ``gold``: True for gold items only, False for the rankings that train, None for every live
    ranking.
    """
    return [Judgement(c, name, json.loads(ranks)) for c, name, ranks in judgement_rows(db, gold)]
