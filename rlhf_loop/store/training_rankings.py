"""Which rankings train the reward model: one definition for the training data, its export, the
retrain trigger and the agreement between annotators, so that none of them counts what another
leaves out (a trigger counting rankings that training drops would retrain without end).

An annotator's live ranking is not retracted (an undo replaces a judgement, the redo is the live
one) and of status 'ranked' (a skip carries no ranking; a flag says the item itself is suspect).
It trains unless it answers a gold item (those check annotators: the known order is the
operator's, not theirs) or a prompt an operator retired (judged broken after the fact), or it is
a simulated annotator's while the operator has not opted them in (``store.simulated``). The
opt-in is read from the database inside the condition, so every reader of this one definition
(reward training, export, retrain trigger, people's verdict on versions) follows a change at once
without being handed a setting.

A written answer (``store.demonstrations``) that counts as a ranking trains as one ranking of
K + 1 responses: the written one first, the K below it in the annotator's order of them, or tied
when they gave none. ``WRITTEN_ITEMS`` and ``TRAINS_OR_WRITTEN`` add those to the rankings;
everything that judges annotators or versions keeps reading ``TRAINS``, which a written answer
does not enter (it is nobody's judgement of the K against each other, nor of a version).
"""

from __future__ import annotations

import sqlite_utils

from rlhf_loop.store.annotators import SIMULATED

# An annotator's live ranking ``r``.
LIVE_RANKING = "r.retracted_at IS NULL AND r.status = 'ranked'"

# The tables the conditions below name: ranking ``r``, its comparison ``c`` and prompt ``p``.
RANKED_ITEMS = """
    rankings r
    JOIN comparisons c ON c.id = r.comparison_id
    JOIN prompts p ON p.id = c.prompt_id
"""

# Ranking ``r`` was given by a simulated annotator.
BY_SIMULATED = f"r.annotator_id IN (SELECT id FROM annotators WHERE role = '{SIMULATED}')"

# The operator's newest choice: simulated rankings train and judge versions (off until chosen).
SIMULATED_INCLUDED = (
    "coalesce((SELECT included FROM simulated_opt_in ORDER BY id DESC LIMIT 1), 0) = 1"
)

# What makes a live answer train, over RANKED_ITEMS: not of a gold item or a retired prompt, and
# not simulated unless opted in.
_TRAINABLE = (
    "c.gold_ranks IS NULL AND p.retired_at IS NULL"
    f" AND (NOT ({BY_SIMULATED}) OR {SIMULATED_INCLUDED})"
)

# A live ranking that trains, over RANKED_ITEMS.
TRAINS = f"{LIVE_RANKING} AND {_TRAINABLE}"

# RANKED_ITEMS with the written answer ``d`` each answer row carries, if any.
WRITTEN_ITEMS = f"{RANKED_ITEMS} LEFT JOIN demonstrations d ON d.ranking_id = r.id"

# An answer that is a written answer only, without a ranking of the K.
_WRITTEN_ONLY = "r.retracted_at IS NULL AND r.status = 'demonstrated'"

# Over WRITTEN_ITEMS: a live ranking that trains, or a written answer alone that counts as one.
TRAINS_OR_WRITTEN = (
    f"({LIVE_RANKING} OR ({_WRITTEN_ONLY} AND d.counts_as_ranking = 1)) AND {_TRAINABLE}"
)


def training_ranking_count(db: sqlite_utils.Database) -> int:
    """How many rankings the next reward model would train on (held-out share included), written
    answers that count as rankings among them."""
    return db.execute(f"SELECT count(*) FROM {WRITTEN_ITEMS} WHERE {TRAINS_OR_WRITTEN}").fetchone()[
        0
    ]
