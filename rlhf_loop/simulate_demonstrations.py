"""Simulated demonstrations: what a careful annotator would write for demo arithmetic prompts.

The oracle-best answer ("7 + 5 is 12.") in one of the demo corpus's own phrasings
(``model.demo_corpus._arithmetic_answer``), so a round on them teaches correctness rather than a
new style: for the SFT tests and bench, stored through the importer as a real file would be.
"""

from __future__ import annotations

import sqlite_utils

from rlhf_loop.demonstration_import import DemonstrationRow, ParsedDemonstrations
from rlhf_loop.simulate import parse_arithmetic
from rlhf_loop.store.demonstrations import DemonstrationReport, add_imported


def oracle_answer(prompt: str) -> str:
    """The right answer to "What is A op B?", phrased as the corpus phrases answers."""
    parsed = parse_arithmetic(prompt)
    if parsed is None:
        raise ValueError(f"not a demo arithmetic prompt: {prompt!r}")
    a, op, b, value = parsed
    return f"{a} {op} {b} is {value}."


def add_oracle_demonstrations(db: sqlite_utils.Database, prompts: list[str]) -> DemonstrationReport:
    """One oracle answer per prompt, imported (prompts not stored yet are added)."""
    rows = [DemonstrationRow(p, oracle_answer(p), i + 1) for i, p in enumerate(prompts)]
    return add_imported(db, ParsedDemonstrations(rows, []), "oracle.jsonl")
