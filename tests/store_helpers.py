"""Building database states without a model: prompts and comparisons from fixed texts."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import sqlite_utils

from rlhf_loop.prompt_import import ParsedPrompts, PromptRow
from rlhf_loop.store.db import open_db
from rlhf_loop.store.generations import Sample, add_comparisons, live_policy_version
from rlhf_loop.store.prompts import add_prompts
from rlhf_loop.store.schema import MIGRATIONS


def fresh_db(path: Path) -> sqlite_utils.Database:
    return open_db(path / "rlhf.db")


def old_schema(db: sqlite_utils.Database, version: int) -> sqlite_utils.Database:
    """``db`` as an older rlhf-loop left it: its first ``version`` migrations only."""
    for migration in MIGRATIONS[:version]:
        migration(db)
    db.execute(f"PRAGMA user_version = {version}")
    return db


def exported(write: Callable[[TextIO], object]) -> str:
    """What an export writes, as one string (a test's exports are small)."""
    out = io.StringIO()
    write(out)
    return out.getvalue()


def add_texts(db: sqlite_utils.Database, texts: list[str]) -> None:
    rows = [PromptRow(text=t, line=i + 1) for i, t in enumerate(texts)]
    add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "test")


def make_comparisons(db: sqlite_utils.Database, n: int, k: int = 4) -> list[int]:
    """n comparisons over n new prompts, each with k distinct fixed responses."""
    start = db["prompts"].count
    add_texts(db, [f"prompt {start + i}" for i in range(n)])
    prompt_ids = [r["id"] for r in db["prompts"].rows_where(order_by="id")][start:]
    samples = [
        [Sample(f"response {j} to prompt {pid}", 5 + j, j % 2 == 0) for j in range(k)]
        for pid in prompt_ids
    ]
    version = live_policy_version(db, "fixed-texts")
    return add_comparisons(db, version, prompt_ids, samples, {"model": "fixed-texts", "k": k})


def corpus_comparisons(db: sqlite_utils.Database, n: int, k: int = 4, seed: int = 0) -> list[int]:
    """n comparisons of k distinct demo-corpus responses each: real texts, no model needed."""
    from rlhf_loop.model.demo_corpus import demo_examples

    by_prompt: dict[str, list[str]] = {}
    for prompt, response in demo_examples(40 * n, seed=seed):
        group = by_prompt.setdefault(prompt, [])
        if response not in group:
            group.append(response)
    groups = [(p, rs[:k]) for p, rs in by_prompt.items() if len(rs) >= k][:n]
    add_texts(db, [p for p, _ in groups])
    ids = {r["text"]: r["id"] for r in db["prompts"].rows}
    samples = [[Sample(t, len(t.split()), True) for t in rs] for _, rs in groups]
    version = live_policy_version(db, "corpus")
    return add_comparisons(db, version, [ids[p] for p, _ in groups], samples, {"model": "corpus"})


def oracle_rankings(db: sqlite_utils.Database, n: int, seed: int = 0) -> list:
    """n corpus comparisons ranked by a simulated annotator who prefers ~5-word answers (a
    preference the tiny demo backbone can learn), with noise and ties, through the store."""
    from rlhf_loop.reward.data import load_rankings
    from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator, annotate

    corpus_comparisons(db, n, seed=seed)
    oracle = LengthOracle(target_words=5)
    annotate(db, "oracle", SimulatedAnnotator(oracle, noise=0.3, tie_threshold=0.5, seed=seed), n)
    return load_rankings(db)
