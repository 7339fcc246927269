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
one bring it up to date at a time). A restore (``store.backup``: the rows replaced wholesale, a
'database_restored' event written) or a highest ranking that is no longer the row seen makes it
start again.

Saved beside the database (``<file>.agreement.npz``) after a build and after every
``SAVE_AFTER_ITEMS`` items redone, so a new process (a restarted server, a second one) takes it
up and redoes only what changed since: at 10^6 rankings a build reads every ranking (about 5 s
on 2 cores, most of it in SQLite and per-row Python), taking up a saved tally about 0.1 s. The
file holds plain arrays and JSON, no pickle; one that is missing, unreadable, of another format
or of rows no longer there is ignored and the tally built again. A disk that refuses the write
costs the next process a build, nothing else. The worker takes the tally up when idle
(``worker``), so the file is there before anyone opens the Dashboard.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def arrays(self) -> tuple[np.ndarray, np.ndarray, list, list]:
        """What ``from_arrays`` takes back: the two index arrays and the values they index."""
        return self._names, self._ranks, self._names_seen.values, self._ranks_seen.values

    @classmethod
    def from_arrays(
        cls, names: np.ndarray, ranks: np.ndarray, names_seen: list, ranks_seen: list
    ) -> _ItemsByComparison:
        if names.shape != ranks.shape or names.ndim != 1:
            raise ValueError("index arrays of different shapes")
        if names.max(initial=-1) >= len(names_seen) or ranks.max(initial=0) >= max(
            1, len(ranks_seen)
        ):
            raise ValueError("an index past the values it points into")
        items = cls()
        items._names, items._ranks = names.astype(np.int32), ranks.astype(np.int32)
        for value in names_seen:
            items._names_seen.index(tuple(value))
        for value in ranks_seen:
            items._ranks_seen.index(tuple(tuple(r) for r in value))
        return items

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
    unsaved: int = 0  # items redone since the tally was last saved (or taken up)


# Items redone after which the tally is saved again: a process that takes it up redoes at most
# this many (about 10 microseconds each), however long the server ran.
SAVE_AFTER_ITEMS = 10_000
_FORMAT = 1  # of the saved tally; another one is ignored

_TALLIES: dict[str, _Tallied] = {}
_LOCK = threading.Lock()


def training_agreement(db: sqlite_utils.Database) -> AgreementFigures:
    """Agreement between people over the rankings that train (``judgements(db, gold=False)``),
    as of now."""
    # The file; an in-memory database (no file name) is its own connection's.
    file = db.execute("PRAGMA database_list").fetchone()[2]
    key = file or f"memory:{id(db.conn)}"
    saved = Path(f"{file}.agreement.npz") if file else None
    with _LOCK, read_snapshot(db):
        tallied = _TALLIES.get(key)
        if tallied is None and saved is not None:
            tallied = _load(saved)
        if tallied is None or not _same_rows(db, tallied):
            tallied = _Tallied()
        _TALLIES[key] = tallied
        built = not tallied.built
        _catch_up(db, tallied)
        if saved is not None and (built or tallied.unsaved >= SAVE_AFTER_ITEMS):
            _save(saved, tallied)
        return tallied.tally.figures()


def forget_tallies() -> None:
    """Drop every tally (the next call rebuilds): what a fresh server process starts with."""
    with _LOCK:
        _TALLIES.clear()


def _same_rows(db: sqlite_utils.Database, tallied: _Tallied) -> bool:
    """Whether the rows the tally was made of are still there (no restore since)."""
    changes = db.execute("SELECT coalesce(max(id), 0) FROM ranking_changes").fetchone()[0]
    return (
        last_restore(db) == tallied.restored
        and _ranking_row(db, tallied.rankings_seen) == tallied.seen_row
        and tallied.changes_seen <= changes
    )


def _save(path: Path, tallied: _Tallied) -> None:
    """Write the tally beside the database, whole or not at all (a new file renamed over the
    old); a disk that refuses leaves the old file, which is still right up to where it read."""
    names, ranks, names_seen, ranks_seen = tallied.items.arrays()
    meta = {
        "format": _FORMAT,
        "tally": tallied.tally.state(),
        "names_seen": names_seen,
        "ranks_seen": ranks_seen,
        "rankings_seen": tallied.rankings_seen,
        "seen_row": tallied.seen_row,
        "changes_seen": tallied.changes_seen,
        "restored": tallied.restored,
    }
    text = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        with temporary.open("wb") as out:
            np.savez(out, names=names, ranks=ranks, meta=text)
        temporary.replace(path)
        tallied.unsaved = 0
    except OSError:
        temporary.unlink(missing_ok=True)


def _load(path: Path) -> _Tallied | None:
    """The saved tally, or None where there is none that can be read."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta: dict[str, Any] = json.loads(saved["meta"].tobytes())
            if meta.get("format") != _FORMAT:
                return None
            items = _ItemsByComparison.from_arrays(
                saved["names"], saved["ranks"], meta["names_seen"], meta["ranks_seen"]
            )
        return _Tallied(
            tally=AgreementTally.from_state(meta["tally"]),
            items=items,
            built=True,
            rankings_seen=int(meta["rankings_seen"]),
            seen_row=None if meta["seen_row"] is None else tuple(meta["seen_row"]),
            changes_seen=int(meta["changes_seen"]),
            restored=None if meta["restored"] is None else tuple(meta["restored"]),
        )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None


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
            tallied.unsaved += 1
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
        tallied.unsaved += len(dirty)
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
