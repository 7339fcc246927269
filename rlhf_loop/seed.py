"""First-run content: demo prompts, so a fresh install has something to rank at once."""

from __future__ import annotations

import sqlite_utils

from rlhf_loop.model.demo_corpus import demo_prompts
from rlhf_loop.prompt_import import ParsedPrompts, PromptRow
from rlhf_loop.store.prompts import ImportReport, add_prompts, prompt_count

DEMO_PROMPT_COUNT = 200  # of the 220 the demo world has; the rest stay unseen


def seed_demo_prompts(db: sqlite_utils.Database) -> ImportReport | None:
    """Add the demo prompts when the prompt table is empty; None when it was not."""
    if prompt_count(db):
        return None
    rows = [PromptRow(text=p, line=i + 1) for i, p in enumerate(demo_prompts(DEMO_PROMPT_COUNT))]
    return add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "demo")
