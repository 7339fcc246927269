"""Which rankings train the reward model: one definition for the training data, its export, the
retrain trigger and the agreement between annotators, so that none of them counts what another
leaves out (a trigger counting rankings that training drops would retrain without end).

An annotator's live ranking is not retracted (an undo replaces a judgement, the redo is the live
one) and of status 'ranked' (a skip carries no ranking; a flag says the item itself is suspect).
It trains unless it answers a gold item (those check annotators: the known order is the
operator's, not theirs) or a prompt an operator retired (judged broken after the fact).
"""

from __future__ import annotations

import sqlite_utils

# An annotator's live ranking ``r``.
LIVE_RANKING = "r.retracted_at IS NULL AND r.status = 'ranked'"

# The tables the conditions below name: ranking ``r``, its comparison ``c`` and prompt ``p``.
RANKED_ITEMS = """
    rankings r
    JOIN comparisons c ON c.id = r.comparison_id
    JOIN prompts p ON p.id = c.prompt_id
"""

# A live ranking that trains, over RANKED_ITEMS.
TRAINS = f"{LIVE_RANKING} AND c.gold_ranks IS NULL AND p.retired_at IS NULL"


def training_ranking_count(db: sqlite_utils.Database) -> int:
    """How many rankings the next reward model would train on (held-out share included)."""
    return db.execute(f"SELECT count(*) FROM {RANKED_ITEMS} WHERE {TRAINS}").fetchone()[0]
