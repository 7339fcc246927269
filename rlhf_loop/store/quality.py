"""Annotation quality from the store: the live rankings, gold orders and timings that
``rlhf_loop.agreement`` turns into agreement figures, joined per annotator for the operator.

Only live rankings count (``store.training_rankings``): not retracted, of status 'ranked'. Skips
carry no ranking; flags mean the item itself is suspect (e.g. unrankable responses), so their
ranks, if any, say nothing about the annotator's consistency.

Agreement between annotators is measured on the rankings that train (policy items of prompts in
use: a retired prompt was judged broken, as suspect as a flagged item), agreement with a known
order on gold items: every annotator sees every gold item, so mixing them in would let the
checks dominate the inter-annotator figures. Nothing here bans anyone; the report is for a
person to read.

Simulated annotators (role 'simulated') are never in these figures, whether or not the operator
lets their rankings train: they measure how people agree, and an oracle agreeing with itself
would inflate them. The Dashboard shows simulated rankings apart (``store.simulated``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlite_utils

from rlhf_loop.agreement import (
    Judgement,
    consensus_agreement,
    gold_agreement,
    overall_alpha,
    seconds_summary,
    shared_items,
)
from rlhf_loop.store.annotators import SIMULATED
from rlhf_loop.store.demonstrations import LIVE_DEMONSTRATION
from rlhf_loop.store.training_rankings import BY_SIMULATED, LIVE_RANKING, RANKED_ITEMS, TRAINS


def judgements(db: sqlite_utils.Database, gold: bool | None = None) -> list[Judgement]:
    """People's live rankings as (comparison_id, annotator name, dense ranks), in submission
    order; a simulated annotator's never (module docstring).

    ``gold``: True for gold items only, False for the rankings that train, None for every live
    ranking.
    """
    if gold is None:
        where = LIVE_RANKING
    elif gold:
        where = f"{LIVE_RANKING} AND c.gold_ranks IS NOT NULL"
    else:
        where = TRAINS
    rows = db.execute(
        f"""
        SELECT r.comparison_id, a.name, r.ranks FROM {RANKED_ITEMS}
        JOIN annotators a ON a.id = r.annotator_id
        WHERE {where} AND NOT ({BY_SIMULATED})
        ORDER BY r.id
        """
    ).fetchall()
    return [Judgement(c, name, json.loads(ranks)) for c, name, ranks in rows]


def gold_orders(db: sqlite_utils.Database) -> dict[int, list[int]]:
    """The known order of each gold item: comparison id -> dense ranks per response."""
    rows = db.execute(
        "SELECT id, gold_ranks FROM comparisons WHERE gold_ranks IS NOT NULL"
    ).fetchall()
    return {c: json.loads(ranks) for c, ranks in rows}


def seconds_by_annotator(db: sqlite_utils.Database) -> dict[str, list[float]]:
    """Seconds from serving to submit of every live ranking, per annotator name.

    Rankings only: a skip is often a glance and a flag is a different task, so either would blur
    the time an annotator takes to rank. Gold items are included (they look like any other item).
    """
    seconds: dict[str, list[float]] = defaultdict(list)
    for name, value in db.execute(
        f"""
        SELECT a.name, r.seconds FROM rankings r JOIN annotators a ON a.id = r.annotator_id
        WHERE {LIVE_RANKING} ORDER BY r.id
        """
    ).fetchall():
        seconds[name].append(value)
    return dict(seconds)


def _status_counts(db: sqlite_utils.Database) -> dict[str, dict[str, int]]:
    """Live (not retracted) answers per annotator name and status."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for name, status, n in db.execute(
        """
        SELECT a.name, r.status, count(*) FROM rankings r
        JOIN annotators a ON a.id = r.annotator_id
        WHERE r.retracted_at IS NULL GROUP BY a.name, r.status
        """
    ).fetchall():
        counts[name][status] = n
    return counts


def _written_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Live answers written on the Rank page, per annotator name (imported ones have none)."""
    return dict(
        db.execute(
            f"""
            SELECT a.name, count(*) FROM demonstrations d
            JOIN rankings r ON r.id = d.ranking_id
            JOIN annotators a ON a.id = r.annotator_id
            WHERE {LIVE_DEMONSTRATION} GROUP BY a.name
            """
        ).fetchall()
    )


def annotator_report(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """One row per annotator, ordered by name, ready for ``st.dataframe``.

    Everyone registered is listed, so a newcomer shows up before their first answer, except
    operators who never answered (they sign in to run the loop, not to rank) and simulated
    annotators (they are no people; the Dashboard shows them apart).

    Columns: annotator, ranked, skipped, flagged, written (live answers; an item answered with a
    written answer and no ranking of the K is only "written"), median_s, p90_s (seconds per
    ranking), agreement_tau (mean tau-b vs the leave-one-out consensus on policy items),
    agreement_items (policy items shared with another annotator), agreement_scored (of those,
    items with a defined tau), gold_items, gold_tau, gold_pair_accuracy. None where a figure has
    nothing to rest on yet.
    """
    counts = _status_counts(db)
    written = _written_counts(db)
    seconds = seconds_by_annotator(db)
    consensus = consensus_agreement(judgements(db, gold=False))
    gold = gold_agreement(judgements(db, gold=True), gold_orders(db))
    rows = []
    for person in db["annotators"].rows_where(order_by="name"):
        name = person["name"]
        if person["role"] == SIMULATED or (person["role"] == "operator" and name not in counts):
            continue
        timing = seconds_summary(seconds.get(name, []))
        agree = consensus.get(name)
        checked = gold.get(name)
        rows.append(
            {
                "annotator": name,
                "ranked": counts[name].get("ranked", 0),
                "skipped": counts[name].get("skipped", 0),
                "flagged": counts[name].get("flagged", 0),
                "written": written.get(name, 0),
                "median_s": timing.median,
                "p90_s": timing.p90,
                "agreement_tau": agree.tau if agree else None,
                "agreement_items": agree.items if agree else 0,
                "agreement_scored": agree.scored if agree else 0,
                "gold_items": checked.items if checked else 0,
                "gold_tau": checked.tau if checked else None,
                "gold_pair_accuracy": checked.pair_accuracy if checked else None,
            }
        )
    return rows


def overall(db: sqlite_utils.Database) -> dict[str, Any]:
    """Agreement over the rankings that train: Krippendorff's alpha (ordinal; None while
    undefined), the items it rests on (ranked by two or more annotators), and the annotators with
    such a ranking."""
    live = judgements(db, gold=False)
    return {
        "alpha": overall_alpha(live),
        "items_shared": shared_items(live),
        "annotators": len({j.annotator for j in live}),
    }
