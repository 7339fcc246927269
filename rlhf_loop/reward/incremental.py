"""Which rankings a reward-model retrain trains on, and from what: in full, or incrementally.

A full retrain starts from the backbone and reads every training ranking, so its cost grows with
the rankings held (50k rankings x 4 epochs each time 50 new ones arrive). An incremental one
starts from the newest reward model and trains on the rankings it has not trained on yet plus
a fixed-size replay sample of older ones, whose cost stays flat: the new rankings teach it what
changed, the replay keeps it from drifting away from what it knew (without replay, 4 epochs on
50 rankings overfit them and forget the rest).

Incremental versions drift all the same, a little at a time (a ranking retracted or a prompt
retired since leaves its mark until a fresh start), so every ``reward_full_retrain_every``-th
version is a full retrain. So is any version whose starting point is unusable (none yet, its
files gone, another backbone or other reward settings, no record of what it trained on) and
any version for which incremental training would read more than half the rankings anyway:
there it saves little and gives up the fresh start. Each version records the kind and why.

"New since it" is by ranking id against the ids the newest model's lineage trained on (saved
with it): rankings that start to train later (simulated ones opted in, a prompt restored) count
as new, which a "rankings after the last one it saw" watermark would miss. The held-out split is
``data.split_held_out``'s, by prompt, unchanged: held-out rankings are in neither set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhf_loop.config import Settings
from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.reward.data import RankingExample
from rlhf_loop.reward.model import read_meta

# The settings that change what a reward means or how it reads text: a model trained under
# others is no starting point. Learning rate, epochs and batch size only change how it trains.
MODEL_SETTINGS = (
    "backbone",
    "reward_likelihood_prior",
    "reward_lora_r",
    "reward_prompt_aware",
    "reward_learn_ties",
    "reward_max_length",
)


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain trains on (``rows``) and from what; ``record`` goes in its metrics, and
    ``seen`` (the ranking ids its lineage has trained on since its last full retrain) is saved
    with the version for the next plan."""

    kind: Literal["full", "incremental"]
    reason: str
    rows: list[RankingExample]
    seen: list[int]
    new: int
    replay: int
    since_full: int = 0
    started_from: int | None = None
    start_log_nu: float | None = None
    start_path: Path | None = None

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "new_rankings": self.new,
            "replay_rankings": self.replay,
            "versions_since_full": self.since_full,
            "started_from": self.started_from,
        }


def model_settings(settings: Settings, backbone: str) -> dict[str, Any]:
    """``MODEL_SETTINGS`` as a version records them."""
    return {"backbone": backbone} | {name: getattr(settings, name) for name in MODEL_SETTINGS[1:]}


def plan_retrain(
    previous: dict[str, Any] | None,
    train: list[RankingExample],
    settings: Settings,
    backbone: str,
    version: int,
) -> RetrainPlan:
    """The plan for version ``version`` on the training rankings ``train`` (held-out ones
    already split off), given the newest registered version ``previous`` (a row of
    ``store.versions``, or None)."""
    ids = [_ranking_id(e) for e in train]

    def full(reason: str) -> RetrainPlan:
        return RetrainPlan("full", reason, train, sorted(ids), new=len(train), replay=0)

    if previous is None:
        return full("no reward model yet")
    name = f"v{previous['version']}"
    retrain = previous["metrics"].get("retrain", {})
    since_full = retrain.get("versions_since_full", 0) + 1
    every = settings.reward_full_retrain_every
    if since_full >= every:
        return full(f"one version in {every} retrains in full (reward_full_retrain_every)")
    try:
        meta = read_meta(previous["path"] or "")
    except ModelLoadError:
        return full(f"{name}'s files are missing: nothing to start from")
    differ = _differences(meta.get("model_settings"), model_settings(settings, backbone))
    if differ:
        return full(f"{name} was trained with other settings ({differ}): it is no starting point")
    if "rankings_seen" not in meta:
        return full(f"{name} has no record of the rankings it trained on")
    seen = set(meta["rankings_seen"])
    new = [e for e, i in zip(train, ids, strict=True) if i not in seen]
    old = [e for e, i in zip(train, ids, strict=True) if i in seen]
    replay = random.Random(version).sample(old, min(settings.reward_replay_rankings, len(old)))
    rows = new + replay
    if 2 * len(rows) > len(train):
        return full(
            f"{len(new)} new + {len(replay)} replayed would be more than half of the "
            f"{len(train)} training rankings: a full retrain costs about as much"
        )
    return RetrainPlan(
        "incremental",
        f"{len(new)} rankings new since {name}, {len(replay)} of {len(old)} older ones replayed",
        rows,
        sorted(seen.intersection(ids) | {_ranking_id(e) for e in new}),
        new=len(new),
        replay=len(replay),
        since_full=since_full,
        started_from=previous["version"],
        start_log_nu=previous["metrics"].get("log_nu"),
        start_path=Path(previous["path"]),
    )


def _ranking_id(example: RankingExample) -> int:
    if example.ranking_id is None:
        raise ValueError("a ranking without its store id cannot be planned for")
    return example.ranking_id


def _differences(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """What changed, in words ("reward_lora_r 0 -> 8"); a version without a record counts as
    different in everything."""
    if before is None:
        return "not recorded"
    return ", ".join(
        f"{key} {before.get(key)!r} -> {value!r}"
        for key, value in now.items()
        if before.get(key) != value
    )
