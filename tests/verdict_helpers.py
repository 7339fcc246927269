"""Building policy versions and blind rankings without a model, for the verdict views' tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import sqlite_utils
from store_helpers import add_texts

from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.generations import Sample, add_comparisons
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.versions import register_version

BASE_MODEL = "demo"  # the default settings' model: what the page reads standings for


def add_policy(
    db: sqlite_utils.Database,
    data_dir: Path,
    version: int,
    parent: int | None,
    adoption: str | None,
    live: bool = False,
    **metrics: Any,
) -> int:
    """Register a policy version with a real (empty) directory, so it can be made live; the
    base (``parent=None``) has no files, as the worker registers it."""
    parent_id = (
        None
        if parent is None
        else next(db["model_versions"].rows_where("kind = 'policy' AND version = ?", [parent]))[
            "id"
        ]
    )
    path = None
    if parent is not None:
        path = data_dir / f"policy-v{version}"
        path.mkdir()
        metrics = {"parent_version": parent, **metrics}
    return register_version(
        db, "policy", version, path, BASE_MODEL, metrics, parent_id, live=live, adoption=adoption
    )


def add_chain(
    db: sqlite_utils.Database,
    data_dir: Path,
    rewards: list[float],
    metrics: Callable[[int], dict[str, Any]] = lambda version: {},
) -> None:
    """The base, then one adopted version per reward-model score, each the parent of the next,
    the newest live; KL grows by one per version unless ``metrics(version)`` says otherwise."""
    add_policy(db, data_dir, 0, None, None)
    for version, reward in enumerate(rewards, start=1):
        defaults = {"kl_after": float(version), "reward_version": 1}
        add_policy(
            db,
            data_dir,
            version,
            version - 1,
            "adopted",
            live=version == len(rewards),
            reward_after=reward,
            **(defaults | metrics(version)),
        )


def add_blind_rankings(
    db: sqlite_utils.Database,
    pair: tuple[int, int],
    n: int,
    outcome: Literal["first", "mostly first", "second", "even"],
    annotator: str = "ada",
) -> None:
    """``n`` blind items, each two responses of each version of ``pair``, ranked through the
    store: "first" ranks the first version's responses above all of the second's, "second" the
    reverse, "mostly first" does so in three items of four, "even" in every other item (no
    preference)."""
    first, second = pair
    start = db["prompts"].count
    add_texts(db, [f"blind prompt {start + i} for {pair}" for i in range(n)])
    prompt_ids = [r["id"] for r in db["prompts"].rows_where(order_by="id")][start:]
    samples = [
        [
            Sample(f"v{v} answer {j} to {pid}", 5, True, policy_version=v)
            for j, v in enumerate((first, second, first, second))
        ]
        for pid in prompt_ids
    ]
    ids = add_comparisons(db, max(pair), prompt_ids, samples, {}, blind_versions=pair)
    who = annotator_id(db, annotator)
    for i, comparison in enumerate(ids):
        first_wins = {
            "first": True,
            "mostly first": i % 4 != 3,
            "second": False,
            "even": i % 2 == 0,
        }[outcome]
        ranks = [1, 3, 2, 4] if first_wins else [3, 1, 4, 2]
        db["assignments"].insert(
            {"comparison_id": comparison, "annotator_id": who, "served_at": time.time()}
        )
        submit(db, who, comparison, "ranked", ranks)
