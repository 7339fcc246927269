"""People's agreement over the rankings that train, kept up to date rather than recomputed.

The Dashboard shows Krippendorff's alpha, each annotator's tau-b against the others' consensus
and tau-b between every two annotators (``rlhf_loop.agreement``). From scratch they go over every
live ranking: minutes on every render at 10^6 rankings. Each of them is a sum over items
(``AgreementTally``), so one tally per database is kept here and each call redoes only the items
whose judgements changed since the last one: items with a new ranking (ids above the highest one
seen) and items named in ``ranking_changes`` (a retraction, a prompt retired or restored, a gold
order set: the schema's triggers write those rows, so no code path can forget one). The figures
stay exact: equal, to the last bit, to a tally of all the judgements there are now.

One tally per database file in a process, shared by a Streamlit server's sessions (a lock lets
one bring it up to date at a time). The first call in a process builds it from every ranking; a
restore (``store.backup``: the rows replaced wholesale, a 'database_restored' event written) or a
highest ranking that is no longer the row seen makes it start again.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import sqlite_utils

from rlhf_loop.agreement import AgreementFigures, AgreementTally, Item, item_from
from rlhf_loop.store.db import read_snapshot
from rlhf_loop.store.judgements import judgement_rows
from rlhf_loop.store.submissions import last_restore


class _Interned:
    """Distinct values, each stored once and known by its index."""

    def __init__(self) -> None:
        self.values: list = []
        self._index: dict = {}

    def index(self, value: object) -> int:
        found = self._index.get(value)
        if found is None:
            found = self._index[value] = len(self.values)
            self.values.append(value)
        return found


class _ItemsByComparison:
    """Each comparison's item as it was tallied, to take it back when it changes.

    Two int32 arrays indexed by comparison id (ids are dense) point into the annotator sets and
    the ranking patterns seen, which repeat: at K = 4, tens of sets and a few thousand patterns
    make up 10^6 rankings. A few bytes per item, where a Python object each took hundreds of
    megabytes.
    """

    def __init__(self) -> None:
        self._names = np.full(1024, -1, dtype=np.int32)  # -1: no item
        self._ranks = np.zeros(1024, dtype=np.int32)
        self._names_seen = _Interned()
        self._ranks_seen = _Interned()

    def get(self, comparison_id: int) -> Item | None:
        if comparison_id >= len(self._names) or self._names[comparison_id] < 0:
            return None
        return Item(
            self._names_seen.values[self._names[comparison_id]],
            self._ranks_seen.values[self._ranks[comparison_id]],
        )

    def set(self, comparison_id: int, item: Item | None) -> None:
        if comparison_id >= len(self._names):
            size = max(2 * len(self._names), comparison_id + 1)
            self._names = np.concatenate([self._names, np.full(size, -1, dtype=np.int32)])
            self._ranks = np.concatenate([self._ranks, np.zeros(size, dtype=np.int32)])
        if item is None:
            self._names[comparison_id] = -1
        else:
            self._names[comparison_id] = self._names_seen.index(item.names)
            self._ranks[comparison_id] = self._ranks_seen.index(item.ranks)


@dataclass
class _Tallied:
    """A tally and what it was made of: each item's judgements, and how far it has read."""

    tally: AgreementTally = field(default_factory=AgreementTally)
    items: _ItemsByComparison = field(default_factory=_ItemsByComparison)
    built: bool = False
    rankings_seen: int = 0  # highest ranking id taken in
    seen_row: tuple | None = None  # that ranking's (comparison, annotator, created_at)
    changes_seen: int = 0  # highest ranking_changes id taken in
    restored: tuple | None = None  # the newest restore event, (id, at)


_TALLIES: dict[str, _Tallied] = {}
_LOCK = threading.Lock()


def training_agreement(db: sqlite_utils.Database) -> AgreementFigures:
    """Agreement between people over the rankings that train (``judgements(db, gold=False)``),
    as of now."""
    # The file; an in-memory database (no file name) is its own connection's.
    key = db.execute("PRAGMA database_list").fetchone()[2] or f"memory:{id(db.conn)}"
    with _LOCK, read_snapshot(db):
        tallied = _TALLIES.get(key)
        if tallied is None or not _same_rows(db, tallied):
            tallied = _TALLIES[key] = _Tallied()
        _catch_up(db, tallied)
        return tallied.tally.figures()


def forget_tallies() -> None:
    """Drop every tally (the next call rebuilds): what a fresh server process starts with."""
    with _LOCK:
        _TALLIES.clear()


def _same_rows(db: sqlite_utils.Database, tallied: _Tallied) -> bool:
    """Whether the rows the tally was made of are still there (no restore since)."""
    return last_restore(db) == tallied.restored and _ranking_row(db, tallied.rankings_seen) == (
        tallied.seen_row
    )


def _ranking_row(db: sqlite_utils.Database, ranking_id: int) -> tuple | None:
    row = db.execute(
        "SELECT comparison_id, annotator_id, created_at FROM rankings WHERE id = ?", [ranking_id]
    ).fetchone()
    return tuple(row) if row else None


def _catch_up(db: sqlite_utils.Database, tallied: _Tallied) -> None:
    """Redo the items that changed since the tally last read (all of them on the first call)."""
    top = db.execute("SELECT coalesce(max(id), 0) FROM rankings").fetchone()[0]
    changes = db.execute("SELECT coalesce(max(id), 0) FROM ranking_changes").fetchone()[0]
    dirty = (
        _changed_items(db, tallied.rankings_seen, tallied.changes_seen) if tallied.built else None
    )
    if dirty is None:  # the first call: every item, none to take back
        delta: dict[Item, int] = defaultdict(int)
        for comparison_id, item in _items(db, None):
            delta[item] += 1
            tallied.items.set(comparison_id, item)
        tallied.tally.update(delta)
    elif dirty:
        fresh = dict(_items(db, dirty))
        delta = defaultdict(int)
        for comparison_id in dirty:
            old, new = tallied.items.get(comparison_id), fresh.get(comparison_id)
            if old is not None:
                delta[old] -= 1
            if new is not None:
                delta[new] += 1
            tallied.items.set(comparison_id, new)
        tallied.tally.update(delta)
    tallied.built = True
    tallied.rankings_seen, tallied.changes_seen = top, changes
    tallied.seen_row = _ranking_row(db, top)
    tallied.restored = last_restore(db)


def _changed_items(db: sqlite_utils.Database, rankings_seen: int, changes_seen: int) -> set[int]:
    """Items with a ranking newer than ``rankings_seen`` or a change logged after
    ``changes_seen`` (a prompt's change: each of its items)."""
    rows = db.execute(
        """
        SELECT comparison_id FROM rankings WHERE id > :rankings
        UNION SELECT comparison_id FROM ranking_changes
              WHERE id > :changes AND comparison_id IS NOT NULL
        UNION SELECT c.id FROM ranking_changes rc JOIN comparisons c ON c.prompt_id = rc.prompt_id
              WHERE rc.id > :changes
        """,
        {"rankings": rankings_seen, "changes": changes_seen},
    )
    return {comparison_id for (comparison_id,) in rows}


def _items(
    db: sqlite_utils.Database, comparison_ids: Iterable[int] | None
) -> Iterator[tuple[int, Item]]:
    """Each item's judgements, of ``comparison_ids`` or of every item, item by item (the rows
    come in item order, so no item waits in memory for its last ranking).

    Rankings repeat a few patterns (75 with ties at K = 4): each stored JSON is parsed once.
    """
    ids = None if comparison_ids is None else sorted(comparison_ids)
    parsed: dict[str, tuple[int, ...]] = {}
    rows = judgement_rows(db, gold=False, comparison_ids=ids, order_by="r.comparison_id")
    for comparison_id, judged in itertools.groupby(rows, key=lambda row: row[0]):
        ranks_by_name = {}
        for _, name, ranks in judged:
            pattern = parsed.get(ranks)
            if pattern is None:
                pattern = parsed[ranks] = tuple(json.loads(ranks))
            ranks_by_name[name] = pattern
        yield comparison_id, item_from(ranks_by_name)
