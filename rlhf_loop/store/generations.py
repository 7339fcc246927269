"""Policy versions, sampled generations and the comparisons (ranking tasks) built from them."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.store.db import now, write_txn
from rlhf_loop.store.prompts import IN_USE
from rlhf_loop.store.versions import live_policy


@dataclass(frozen=True)
class Sample:
    """One sampled response as stored; defined here, not in the sampler, so that the store (and
    every annotator-facing process) works without importing torch."""

    text: str
    token_count: int
    finished: bool  # ended with the end-of-sequence token rather than the length limit
    # the policy version that wrote it, where a comparison mixes two (blind items); None: the
    # comparison's own version
    policy_version: int | None = None


def comparison_generations(db: sqlite_utils.Database, generation_ids: str) -> list[dict]:
    """A comparison's generation rows in display order, from its ``generation_ids`` JSON."""
    ids = json.loads(generation_ids)
    by_id = generations_by_id(db, ids)
    return [by_id[i] for i in ids]


def generations_by_id(
    db: sqlite_utils.Database, ids: Sequence[int], select: str = "*"
) -> dict[int, dict]:
    """The generation rows of ``ids`` by id, in one query: an export reads those of a thousand
    rankings at a time (a query per ranking made 10^6 of them 70 s). The ids are bound as one
    JSON array, so their number meets no limit on bound variables."""
    rows = db["generations"].rows_where(
        "id IN (SELECT value FROM json_each(?))", [json.dumps(list(ids))], select=select
    )
    return {g["id"]: g for g in rows}


def live_policy_version(db: sqlite_utils.Database, base_model: str) -> int:
    """The version the sampler serves on ``base_model`` (the bare base model is version 0)."""
    return live_policy(db, base_model)["version"]


def prompts_to_sample(
    db: sqlite_utils.Database,
    policy_version: int,
    n: int,
    for_people: Callable[[str], bool] | None = None,
) -> list[tuple[int, str]]:
    """The n prompts in use with the fewest ranking tasks at this policy version, oldest first;
    only those ``for_people`` accepts when given (a program checks the others' answers)."""
    rows = db.execute(
        f"""
        SELECT p.id, p.text FROM prompts p
        LEFT JOIN comparisons c ON c.prompt_id = p.id AND c.policy_version = ?
        WHERE {IN_USE}
        GROUP BY p.id ORDER BY count(c.id), p.id {"" if for_people else "LIMIT ?"}
        """,
        [policy_version] + ([] if for_people else [n]),
    )
    kept = (row for row in rows if for_people is None or for_people(row[1]))
    return [(r[0], r[1]) for r in itertools.islice(kept, n)]


def add_comparisons(
    db: sqlite_utils.Database,
    policy_version: int,
    prompt_ids: Sequence[int],
    samples: Sequence[Sequence[Sample]],
    params: dict[str, object],
    blind_versions: tuple[int, int] | None = None,
) -> list[int]:
    """Store each prompt's K samples and one comparison over them, all in one transaction.

    ``blind_versions`` marks comparisons whose samples come from two policy versions (each
    sample names its own); the versions are kept out of everything an annotator is shown.
    """
    created = now()
    params_json = json.dumps(params, sort_keys=True)
    comparison_ids = []
    with write_txn(db):
        for prompt_id, group in zip(prompt_ids, samples, strict=True):
            generation_ids = [
                db["generations"]
                .insert(
                    {
                        "prompt_id": prompt_id,
                        "policy_version": (
                            policy_version if s.policy_version is None else s.policy_version
                        ),
                        "text": s.text,
                        "token_count": s.token_count,
                        "finished": int(s.finished),
                        "params": params_json,
                        "created_at": created,
                    }
                )
                .last_pk
                for s in group
            ]
            comparison_ids.append(
                db["comparisons"]
                .insert(
                    {
                        "prompt_id": prompt_id,
                        "policy_version": policy_version,
                        "k": len(generation_ids),
                        "generation_ids": json.dumps(generation_ids),
                        "blind_versions": (
                            None if blind_versions is None else json.dumps(list(blind_versions))
                        ),
                        "created_at": created,
                    }
                )
                .last_pk
            )
    return comparison_ids
