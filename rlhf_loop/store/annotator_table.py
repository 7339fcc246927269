"""The Dashboard's annotator table: ``quality.annotator_report`` as an operator should read it.

Two things the raw report gets wrong for a person reading it:

- It lists everyone registered, so a name typed once and never used is a row of zeros and empty
  figures, and the table disagrees with any count of annotators above it. Here the rows are the
  annotators with at least one live answer, and the others are named apart.
- Its time per item is the time from serving to submit, so a tab left open over lunch counts as
  one slow item: one 752 s item made an annotator's p90 452 s. Rankings that took longer than
  ``IDLE_CUTOFF_S`` are left out of the time figures (not capped: a capped value would still pull
  the p90 towards the cutoff) and counted per annotator, so the page can say how many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.store.quality import NO_SECONDS, annotator_report, seconds_summaries

# Longer than anyone spends reading one prompt and K responses: past it the annotator was away.
IDLE_CUTOFF_S = 600.0

# The table's columns in reading order: the time figures beside the count of what they leave out.
TABLE_COLUMNS = [
    "annotator",
    "ranked",
    "skipped",
    "flagged",
    "written",
    "median_s",
    "p90_s",
    "idle_excluded",
    "agreement_tau",
    "agreement_items",
    "gold_items",
    "gold_tau",
    "gold_pair_accuracy",
]


@dataclass(frozen=True)
class AnnotatorTable:
    """Rows for the table, and what the page says around it."""

    rows: list[dict[str, Any]]  # annotators with at least one live answer, by name
    without_answers: list[str]  # registered annotators with none yet (operators not included)
    idle_excluded: int  # rankings left out of the time figures, all annotators together
    cutoff_s: float


def annotator_table(db: sqlite_utils.Database, cutoff_s: float = IDLE_CUTOFF_S) -> AnnotatorTable:
    """The report's rows with time figures over rankings of at most ``cutoff_s`` seconds and an
    ``idle_excluded`` column (rankings over it), without annotators who never answered."""
    seconds = seconds_summaries(db, cutoff_s)
    rows, without = [], []
    excluded_total = 0
    for row in annotator_report(db, seconds):
        name = row["annotator"]
        if row["ranked"] + row["skipped"] + row["flagged"] + row["written"] == 0:
            without.append(name)
            continue
        # The time figures cover the live rankings ("ranked"), less the idle ones.
        excluded = row["ranked"] - seconds.get(name, NO_SECONDS).n
        excluded_total += excluded
        rows.append(row | {"idle_excluded": excluded})
    return AnnotatorTable(rows, without, excluded_total, cutoff_s)
