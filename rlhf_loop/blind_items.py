"""Blind comparison items: one prompt, K responses from two policy versions, shuffled.

They are served like any other item and their rankings train the reward model like any other;
what sets them apart is kept in the database only (each generation's version, the comparison's
``blind_versions``), never on the page. From them the annotators' preference between versions
is measured without anyone knowing which is which (see ``rlhf_loop.arena``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

import sqlite_utils

from rlhf_loop.sampler import LivePolicy, SamplingParams, sample_responses
from rlhf_loop.store.generations import Sample, add_comparisons


def blind_count(db: sqlite_utils.Database, pair: tuple[int, int], batch: int, share: float) -> int:
    """How many of the next ``batch`` items should be blind, so that blind items make up
    ``share`` of the items sampled since the newer of the two versions appeared (rounding is
    carried over from batch to batch, so the share is exact in the long run)."""
    if share <= 0 or batch <= 0:
        return 0
    since = db.execute(
        "SELECT max(created_at) FROM model_versions WHERE kind = 'policy' AND version IN (?, ?)",
        list(pair),
    ).fetchone()[0]
    total, blind = db.execute(
        "SELECT count(*), count(blind_versions) FROM comparisons "
        "WHERE gold_ranks IS NULL AND created_at >= ?",
        [since or 0.0],
    ).fetchone()
    return max(0, min(batch, math.ceil((total + batch) * share) - blind))


def blind_params(params: SamplingParams, eval_k: int) -> SamplingParams:
    """The sampling settings of blind items: ``eval_k`` responses (0: the same K as others)."""
    return dataclasses.replace(params, k=eval_k) if eval_k else params


def mix(
    first: Sequence[Sequence[Sample]],
    second: Sequence[Sequence[Sample]],
    versions: tuple[int, int],
    k: int,
    rng: random.Random,
) -> list[list[Sample]]:
    """Per prompt, ``k`` samples: half from each version (the odd one alternating between them
    from item to item, so neither is favoured), labelled with their version and shuffled: the
    display order must not give the version away."""
    mixed = []
    for index, (ours, theirs) in enumerate(zip(first, second, strict=True)):
        more, fewer = math.ceil(k / 2), k // 2
        take_first, take_second = (more, fewer) if index % 2 == 0 else (fewer, more)
        group = [dataclasses.replace(s, policy_version=versions[0]) for s in ours[:take_first]]
        group += [dataclasses.replace(s, policy_version=versions[1]) for s in theirs[:take_second]]
        rng.shuffle(group)
        mixed.append(group)
    return mixed


def add_blind_items(
    db: sqlite_utils.Database,
    policy: LivePolicy,
    live: dict,
    pair: tuple[dict, dict],
    prompts: Sequence[tuple[int, str]],
    params: SamplingParams,
    rng: random.Random,
) -> list[int]:
    """Sample ``prompts`` with both versions of ``pair`` (registry rows; ``live`` is the live
    one's) and store the mixed items; returns their comparison ids."""
    model, tokenizer, served = policy.current(live)
    half = dataclasses.replace(params, k=math.ceil(params.k / 2))
    texts = [text for _, text in prompts]
    samples = [
        sample_responses(
            model if row["version"] == served else policy.other(row), tokenizer, texts, half
        )
        for row in pair
    ]
    versions = (pair[0]["version"], pair[1]["version"])
    return add_comparisons(
        db,
        max(versions),  # served ahead of older items, as a newer version's items are
        [pid for pid, _ in prompts],
        mix(*samples, versions, params.k, rng),
        params.record(live["base_model"]),
        blind_versions=versions,
    )
