"""A store of N rankings in minutes: generated rows bulk-inserted straight into the tables.

Going through ``submit`` costs a write transaction per ranking (hours at 10^6), so the rows are
written as the store would have left them, in large transactions with ``executemany``. Only the
primary rows are written (prompts, generations, comparisons, assignments, rankings, events,
demonstrations, flag reviews); whatever the schema derives from them (indexes, triggers) is the
schema's own doing, exactly as in use.

The shape, per history item (a comparison of K = 4 responses): ``OVERLAP`` live answers by
different annotators (mostly rankings with ties, some flags, some written answers), sometimes a
third annotator's skip, sometimes an answer undone and redone (a retracted row and the one that
supersedes it); people and, on a tenth of the answers, simulated annotators. Around it: the
policy's versions (older items of older versions), gold items every person answered, a few
retired prompts, reviewed and open flags, imported demonstrations, and a ready queue at the
newest version (empty items and half-answered ones, some held by other annotators).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from rlhf_loop.store.db import open_db, write_txn

K = 4
OVERLAP = 2
PEOPLE = 12
SIMULATED = 2
VERSIONS = 5
GOLD_ITEMS = 20
READY_EMPTY = 300
READY_HALF = 100
BLOCK = 20_000  # items generated and inserted per transaction
DAY = 86_400.0
# Rows per history item beyond the OVERLAP answers: a skip on 4% of items, a redo on 3% of
# answers (its retracted first answer is one more row).
SKIP_SHARE, REDO_SHARE = 0.04, 0.03
ROWS_PER_ITEM = OVERLAP + SKIP_SHARE + OVERLAP * REDO_SHARE
DEMONSTRATION_COLUMNS = [
    "id",
    "prompt_id",
    "annotator_id",
    "seconds",
    "ranking_id",
    "counts_as_ranking",
    "created_at",
    "text",
    "source",
]
FILLER = "the answer goes on for a while in plain words so that the row has a realistic size "


@dataclass(frozen=True)
class Shape:
    """How many of each row a store of ``rankings`` ranking rows gets."""

    rankings: int

    @property
    def gold_rows(self) -> int:
        """Most (item, person) pairs: a person has gold items still to see, as after an
        operator added some."""
        return min(GOLD_ITEMS * PEOPLE * 4 // 5, self.rankings // 10)

    @property
    def items(self) -> int:
        """History items (answered to the overlap)."""
        return max(1, round((self.rankings - self.gold_rows) / ROWS_PER_ITEM))

    @property
    def prompts(self) -> int:
        return max(1, self.items // VERSIONS)


def _insert(
    db: sqlite_utils.Database, table: str, columns: Sequence[str], rows: Iterable[tuple]
) -> None:
    marks = ", ".join("?" * len(columns))
    db.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def dense_ranks(scores: np.ndarray) -> np.ndarray:
    """Per row, dense ranks of ``scores`` (higher is better, equal scores tie): 1, 2, 2, 3."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=1)
    step = np.concatenate(
        [np.ones((len(scores), 1), int), (ordered[:, 1:] != ordered[:, :-1]).astype(int)], axis=1
    )
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.cumsum(step, axis=1), axis=1)
    return ranks


def _noisy_ranks(truth: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One annotator's ranking per row of true scores: noise, then ties where scores are close."""
    noisy = np.round((truth + rng.normal(0, 0.6, truth.shape)) / 0.7)
    return [json.dumps(r) for r in dense_ranks(noisy).tolist()]


class _Builder:
    """Writes one store; ids are counted here, so no row is read back."""

    def __init__(self, db: sqlite_utils.Database, shape: Shape, seed: int) -> None:
        self.db, self.shape = db, shape
        self.rng = np.random.default_rng(seed)
        self.t0 = time.time() - 180 * DAY
        self.span = 180 * DAY - 3600.0  # history ends an hour ago: some of it is today's
        self.next_ranking = self.next_assignment = self.next_event = 1
        self.next_demo = 1
        self.people = list(range(1, PEOPLE + 1))
        self.simulated = list(range(PEOPLE + 1, PEOPLE + SIMULATED + 1))

    def annotators(self) -> None:
        rows = [(i, f"ann-{i - 1:02d}", "annotator", self.t0, None) for i in self.people]
        rows += [(i, f"sim-{i}", "simulated", self.t0, 1) for i in self.simulated]
        rows.append((PEOPLE + SIMULATED + 1, "op", "operator", self.t0, None))
        self.db["simulation_runs"].insert(
            {
                "id": 1,
                "oracle": "length",
                "annotators": SIMULATED,
                "noise": 0.3,
                "tie_threshold": 0.5,
                "pace_s": 1.0,
                "seed": 0,
                "state": "stopped",
                "started_by": "op",
                "created_at": self.t0,
                "heartbeat_at": self.t0,
            }
        )
        _insert(self.db, "annotators", ["id", "name", "role", "created_at", "simulation_run"], rows)
        self.db["model_versions"].insert_all(
            {
                "kind": "policy",
                "version": v,
                "base_model": "bench",
                "metrics": "{}",
                "live": int(v == VERSIONS - 1),
                "created_at": self.t0 + v * self.span / VERSIONS,
            }
            for v in range(VERSIONS)
        )

    def prompts(self) -> None:
        """History prompts (each sampled once per version), then the gold items' prompts."""
        total = self.shape.prompts + GOLD_ITEMS
        retired = set(self.rng.choice(self.shape.prompts, max(1, total // 500), replace=False))

        def rows() -> Iterable[tuple]:
            for i in range(total):
                text = f"Prompt {i}: explain, in a few sentences, how item {i} works and why."
                gold = i >= self.shape.prompts
                yield (
                    i + 1,
                    text,
                    hashlib.sha256(text.encode()).hexdigest(),
                    ("open", "closed", None)[i % 3],
                    "gold:bench.jsonl" if gold else "bench.txt",
                    self.t0,
                    self.t0 + DAY if i in retired else None,
                )

        columns = ["id", "text", "text_hash", "label", "source", "created_at", "retired_at"]
        _insert(self.db, "prompts", columns, rows())

    def comparisons(self, first: int, items: int, version: int | None = None) -> np.ndarray:
        """``items`` comparisons from id ``first`` with their K generations; returns their
        creation times. History items cycle through the prompts, one version after another."""
        created = self.t0 + (np.arange(first, first + items) / (self.shape.items + 1)) * self.span
        gens, comps = [], []
        for n, cid in enumerate(range(first, first + items)):
            index = cid - GOLD_ITEMS - 1
            v = version if version is not None else min(index // self.shape.prompts, VERSIONS - 1)
            pid = index % self.shape.prompts + 1
            ids = [(cid - 1) * K + j + 1 for j in range(K)]
            for j, gid in enumerate(ids):
                text = f"Response {j} to prompt {pid} (v{v}): " + FILLER[: 40 + 10 * j]
                gens.append((gid, pid, v, text, 20 + 5 * j, int(j != 3), '{"model": "bench"}'))
            comps.append((cid, pid, v, K, json.dumps(ids), float(created[n])))
        self._write_items(gens, comps)
        return created

    def _write_items(self, gens: list[tuple], comps: list[tuple]) -> None:
        gen_columns = ["id", "prompt_id", "policy_version", "text", "token_count", "finished"]
        _insert(self.db, "generations", [*gen_columns, "params"], gens)
        _insert(
            self.db,
            "comparisons",
            ["id", "prompt_id", "policy_version", "k", "generation_ids", "created_at"],
            comps,
        )

    def gold(self) -> None:
        """GOLD_ITEMS items with a known order, on the last prompts, created at the start."""
        gens, comps = [], []
        for g in range(GOLD_ITEMS):
            cid, pid = g + 1, self.shape.prompts + g + 1
            ids = [(cid - 1) * K + j + 1 for j in range(K)]
            for j, gid in enumerate(ids):
                gens.append((gid, pid, 0, f"Gold response {j} to {pid}", 10, 1, "{}"))
            comps.append((cid, pid, 0, K, json.dumps(ids), self.t0))
        self._write_items(gens, comps)
        for g in range(GOLD_ITEMS):
            self.db["comparisons"].update(g + 1, {"gold_ranks": json.dumps([1, 2, 2, 3])})

    def answers(
        self, items: np.ndarray, created: np.ndarray, gold: Sequence[tuple[int, int]]
    ) -> None:
        """Answers to ``items`` (created at ``created``), OVERLAP live ones each, plus the
        ``gold`` (item, person) answers to gold items, all in time order."""
        rng = self.rng
        n = len(items)
        pool = np.array(self.people + self.simulated)
        weights = np.array([0.9 / PEOPLE] * PEOPLE + [0.1 / SIMULATED] * SIMULATED)
        picks = np.array([rng.choice(pool, OVERLAP + 1, replace=False, p=weights) for _ in items])
        truth = rng.normal(0, 1, (n, K))
        plan: list[tuple] = []  # (time, comparison, annotator, status, ranks, redo)
        for slot in range(OVERLAP):
            ranks = _noisy_ranks(truth, rng)
            lag = rng.exponential(3600.0, n)
            status = rng.choice(
                ["ranked", "flagged", "written", "demonstrated"], n, p=[0.982, 0.008, 0.006, 0.004]
            )
            redo = rng.random(n) < REDO_SHARE
            for i in range(n):
                plan.append(
                    (created[i] + lag[i], items[i], picks[i, slot], status[i], ranks[i], redo[i])
                )
        skipped = np.flatnonzero(rng.random(n) < SKIP_SHARE)
        plan += [
            (created[i] + 10.0, items[i], picks[i, OVERLAP], "skipped", None, False)
            for i in skipped
        ]
        gold_ranks = _noisy_ranks(np.tile([1.0, 0.0, 0.0, -1.0], (len(gold), 1)), rng)
        for (cid, who), ranks in zip(gold, gold_ranks, strict=True):
            when = created[0] + rng.random() * (created[-1] - created[0])
            plan.append((when, cid, who, "ranked", ranks, False))
        plan.sort(key=lambda row: row[0])
        self._write_answers(plan)

    def _write_answers(self, plan: list[tuple]) -> None:
        rankings, assignments, events, demos, reviews = [], [], [], [], []
        seconds = np.exp(self.rng.normal(np.log(25.0), 0.8, len(plan)))
        seconds[self.rng.random(len(plan)) < 0.01] = 900.0  # a tab left open
        for (at, cid, who, status, ranks, redo), took in zip(plan, seconds, strict=True):
            cid, who = int(cid), int(who)
            assignments.append((self.next_assignment, cid, who, at - took, at))
            self.next_assignment += 1
            stored = "ranked" if status == "written" else status
            if status in ("skipped", "demonstrated") or (
                status == "flagged" and self.rng.random() < 0.5
            ):
                ranks = None  # a flag may carry a ranking, or none
            reason = "Prompt is broken" if status == "flagged" else None
            superseded = None
            if redo:
                superseded = self.next_ranking
                rankings.append(
                    (superseded, cid, who, stored, ranks, reason, took, at - 5.0, at - 4.0, None)
                )
                self.next_ranking += 1
            rid = self.next_ranking
            self.next_ranking += 1
            rankings.append((rid, cid, who, stored, ranks, reason, took, at, None, superseded))
            events.append(
                (self.next_event, at, f"ranking_{stored}", who, json.dumps({"ranking_id": rid}))
            )
            self.next_event += 1
            if status in ("written", "demonstrated"):
                demos.append((self.next_demo, cid, who, took, rid, int(status == "written"), at))
                self.next_demo += 1
            if status == "flagged" and self.rng.random() < 0.8:
                reviews.append((rid, "dismissed", "op", at + 3600.0))
        columns = ["id", "comparison_id", "annotator_id", "status", "ranks", "reason", "seconds"]
        _insert(
            self.db, "rankings", [*columns, "created_at", "retracted_at", "supersedes"], rankings
        )
        _insert(
            self.db,
            "assignments",
            ["id", "comparison_id", "annotator_id", "served_at", "closed_at"],
            assignments,
        )
        _insert(self.db, "events", ["id", "at", "kind", "annotator_id", "payload"], events)
        _insert(
            self.db,
            "demonstrations",
            DEMONSTRATION_COLUMNS,
            (
                (
                    *d[:1],
                    self._prompt_of(d[1]),
                    *d[2:],
                    "A better answer, written out.",
                    "rank page",
                )
                for d in demos
            ),
        )
        _insert(self.db, "flag_reviews", ["ranking_id", "decision", "reviewer", "at"], reviews)

    def _prompt_of(self, comparison_id: int) -> int:
        if comparison_id <= GOLD_ITEMS:
            return self.shape.prompts + comparison_id
        return (comparison_id - GOLD_ITEMS - 1) % self.shape.prompts + 1

    def ready_queue(self) -> int:
        """Items at the newest version nobody (or one person) answered yet; returns the first
        ready item's id. Other people hold a few of them, and a few holds are abandoned."""
        first = GOLD_ITEMS + self.shape.items + 1
        total = READY_EMPTY + READY_HALF
        created = self.comparisons(first, total, version=VERSIONS - 1)
        half = np.arange(first + READY_EMPTY, first + total)
        answerers = self.rng.choice(self.people[1:], READY_HALF)  # never ann-00, the bench's
        plan = [
            (created[-1] + 60.0, cid, who, "ranked", "[1, 2, 2, 3]", False)
            for cid, who in zip(half, answerers, strict=True)
        ]
        self._write_answers(plan)
        now = time.time()
        holds = [
            (self.next_assignment + i, first + i, who, now - (60.0 if i % 3 else 7200.0), None)
            for i, who in enumerate(self.people[1:])
        ]
        _insert(
            self.db,
            "assignments",
            ["id", "comparison_id", "annotator_id", "served_at", "closed_at"],
            holds,
        )
        self.next_assignment += len(holds)
        return first


def build(path: Path, rankings: int, seed: int = 0) -> dict[str, float]:
    """Write a store of about ``rankings`` ranking rows at ``path``; returns its counts and the
    seconds the build took."""
    started = time.perf_counter()
    shape = Shape(rankings)
    db = open_db(path)
    db.execute("PRAGMA synchronous=OFF")  # a bench file: a crash mid-build just rebuilds it
    builder = _Builder(db, shape, seed)
    with write_txn(db):
        builder.annotators()
        builder.prompts()
        builder.gold()
    # Every (gold item, person) once at most, spread over the history's blocks.
    pairs = [(g, p) for g in range(1, GOLD_ITEMS + 1) for p in builder.people]
    order = builder.rng.permutation(len(pairs))[: shape.gold_rows]
    blocks = range(GOLD_ITEMS + 1, GOLD_ITEMS + shape.items + 1, BLOCK)
    for b, first in enumerate(blocks):
        count = min(BLOCK, GOLD_ITEMS + shape.items + 1 - first)
        gold = [pairs[i] for i in order[b :: len(blocks)]]
        with write_txn(db):
            created = builder.comparisons(first, count)
            builder.answers(np.arange(first, first + count), created, gold)
    with write_txn(db):
        builder.ready_queue()
        _imported_demonstrations(db, shape)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {t: db[t].count for t in ("prompts", "generations", "comparisons", "rankings")}
    db.conn.close()
    return counts | {"build_s": time.perf_counter() - started}


def _imported_demonstrations(db: sqlite_utils.Database, shape: Shape) -> None:
    """Answers imported from a file: no ranking, annotator nor item (one per 200 prompts)."""
    rows = [
        (pid, f"An imported answer to prompt {pid}.", "import:answers.jsonl", time.time())
        for pid in range(1, shape.prompts + 1, 200)
    ]
    _insert(db, "demonstrations", ["prompt_id", "text", "source", "created_at"], rows)
