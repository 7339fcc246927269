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

from rlhf_loop.agreement import SecondsSummary, gold_agreement, sorted_summary
from rlhf_loop.store.agreement_cache import training_agreement
from rlhf_loop.store.annotators import SIMULATED
from rlhf_loop.store.demonstrations import LIVE_DEMONSTRATION
from rlhf_loop.store.judgements import judgements
from rlhf_loop.store.training_rankings import LIVE_RANKING

NO_SECONDS = SecondsSummary(0, None, None)


def gold_orders(db: sqlite_utils.Database) -> dict[int, list[int]]:
    """The known order of each gold item: comparison id -> dense ranks per response."""
    rows = db.execute(
        "SELECT id, gold_ranks FROM comparisons WHERE gold_ranks IS NOT NULL"
    ).fetchall()
    return {c: json.loads(ranks) for c, ranks in rows}


def seconds_summaries(
    db: sqlite_utils.Database, cutoff_s: float | None = None
) -> dict[str, SecondsSummary]:
    """Per annotator name, the median and p90 of the seconds from serving to submit of their live
    rankings (of at most ``cutoff_s`` seconds, when given).

    Rankings only: a skip is often a glance and a flag is a different task, so either would blur
    the time an annotator takes to rank. Gold items are included (they look like any other item).
    Read from the index of live answers by annotator, status and seconds: a count per annotator,
    then the few values the figures rest on (``sorted_summary``), not all 10^6 of them.
    """
    cut = "" if cutoff_s is None else "AND r.seconds <= :cutoff"
    nth = f"""
        SELECT r.seconds FROM rankings r WHERE r.annotator_id = :annotator AND {LIVE_RANKING} {cut}
        ORDER BY r.seconds LIMIT 1 OFFSET :n
    """
    counts = db.execute(
        f"""
        SELECT a.id, a.name, s.n FROM annotators a JOIN (
            SELECT r.annotator_id, count(*) AS n FROM rankings r
            WHERE {LIVE_RANKING} {cut} GROUP BY r.annotator_id
        ) s ON s.annotator_id = a.id
        """,
        {"cutoff": cutoff_s},
    ).fetchall()
    return {
        name: sorted_summary(
            n,
            lambda i, annotator=annotator: db.execute(
                nth, {"annotator": annotator, "cutoff": cutoff_s, "n": i}
            ).fetchone()[0],
        )
        for annotator, name, n in counts
    }


def _status_counts(db: sqlite_utils.Database) -> dict[str, dict[str, int]]:
    """Live (not retracted) answers per annotator name and status, counted in the index of live
    answers (then named: a join per ranking read each row, 1.5 s at 10^6 rankings)."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for name, status, n in db.execute(
        """
        SELECT a.name, s.status, s.n FROM annotators a JOIN (
            SELECT annotator_id, status, count(*) AS n FROM rankings
            WHERE retracted_at IS NULL GROUP BY annotator_id, status
        ) s ON s.annotator_id = a.id
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


def annotator_report(
    db: sqlite_utils.Database, seconds: dict[str, SecondsSummary] | None = None
) -> list[dict[str, Any]]:
    """One row per annotator, ordered by name, ready for ``st.dataframe``.

    Everyone registered is listed, so a newcomer shows up before their first answer, except
    operators who never answered (they sign in to run the loop, not to rank) and simulated
    annotators (they are no people; the Dashboard shows them apart).

    Columns: annotator, ranked, skipped, flagged, written (live answers; an item answered with a
    written answer and no ranking of the K is only "written"), median_s, p90_s (seconds per
    ranking), agreement_tau (mean tau-b vs the leave-one-out consensus on policy items),
    agreement_items (policy items shared with another annotator), agreement_scored (of those,
    items with a defined tau), gold_items, gold_tau, gold_pair_accuracy. None where a figure has
    nothing to rest on yet. ``seconds``: the time figures to show, when the caller has its own
    (``seconds_summaries`` with a cutoff); by default over every live ranking.
    """
    counts = _status_counts(db)
    written = _written_counts(db)
    seconds = seconds_summaries(db) if seconds is None else seconds
    consensus = training_agreement(db).consensus
    gold = gold_agreement(judgements(db, gold=True), gold_orders(db))
    rows = []
    for person in db["annotators"].rows_where(order_by="name"):
        name = person["name"]
        if person["role"] == SIMULATED or (person["role"] == "operator" and name not in counts):
            continue
        timing = seconds.get(name, NO_SECONDS)
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
    figures = training_agreement(db)
    return {
        "alpha": figures.alpha,
        "items_shared": figures.shared_items,
        "annotators": figures.annotators,
    }
