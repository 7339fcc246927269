"""Whether a new reward model may drive an automatic PPO round, and if not, why.

A reward model at chance still produces a reward curve that rises under PPO (0.37 held-out
accuracy on 19 pairs drove a round whose reward went 0.01 -> 0.75 while answers got worse), so
an automatic round needs the held-out accuracy's one-sided 95% lower bound above 0.5. An
operator can still force a round: under human adoption its result is only a candidate, judged
blind.
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from rlhf_loop.arena.accuracy import passes_gate, rankings_needed
from rlhf_loop.config import Settings
from rlhf_loop.store.adoption import pending_candidate


def ppo_gate(
    db: sqlite_utils.Database, settings: Settings, metrics: dict[str, Any], rankings: int
) -> dict[str, Any]:
    """``{"passed": bool, "reason": str, "rankings_needed": int | None}`` for a new version
    whose held-out ``metrics`` were measured after training on ``rankings`` rankings."""
    interval = metrics.get("accuracy_interval")
    pairs, accuracy = metrics.get("heldout_pairs", 0), metrics.get("pairwise_accuracy")
    # versions trained before the one-sided bound was recorded: the interval's lower end
    bound = metrics.get("accuracy_lower_bound", interval[0] if interval else None)
    if not pairs:
        return {
            "passed": False,
            "reason": "no held-out pair to judge the reward model by: rank more prompts",
            "rankings_needed": None,
        }
    if not passes_gate(bound):
        needed = rankings_needed(
            accuracy,
            bound,
            metrics.get("heldout_rankings", 1),
            settings.reward_heldout_fraction,
            rankings,
        )
        more = (
            f"about {needed} more rankings are likely needed"
            if needed is not None
            else "more rankings of the same kind are unlikely to help a model at chance"
        )
        return {
            "passed": False,
            "reason": (
                f"held-out accuracy {accuracy:.2f} (one-sided 95% lower bound {bound:.2f}; "
                f"95% interval {interval[0]:.2f}-{interval[1]:.2f}, {pairs} pairs) is not "
                f"above chance; {more}"
            ),
            "rankings_needed": needed,
        }
    candidate = pending_candidate(db, settings.model)
    if candidate is not None and settings.policy_adoption == "human":
        return {
            "passed": False,
            "reason": f"candidate policy v{candidate['version']} still awaits people's verdict",
            "rankings_needed": None,
        }
    return {
        "passed": True,
        "reason": f"held-out accuracy lies above chance (one-sided 95% lower bound {bound:.2f})",
        "rankings_needed": 0,
    }
