"""A crowd of simulated annotators, each in its own OS process, ranking against one database.

Why processes: every browser session of the app has its own SQLite connection, the app may run
as several Streamlit servers on one file, and the worker is another process. In separate
processes nothing in one interpreter (the GIL, a module-level cache) can serialise what only the
database's own locks must, so a race the store leaves open shows up here. Each annotator does
what the Rank page does, ``next_task`` then ``submit`` through the store's own calls, and adds
the faults people cause:

- a double click: with probability ``double_click_rate`` the same answer is sent on two
  connections at the same moment (two reruns or two tabs); exactly one must be stored and the
  other refused with ``DuplicateSubmission``;
- a busy database: a ``StoreError`` (the write lock was not had within the busy timeout, and
  nothing was written) is retried, as a person presses Submit again, and counted.

Every acknowledged submit (a ranking id returned) is reported back, so a caller can check the
database holds exactly those rows: none lost, none duplicated. The children import only the
store and the oracles (this module imports them lazily, for that), never torch, so twenty of
them start in a few seconds on a small machine.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import queue
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import sqlite_utils

    from rlhf_loop.simulate import Oracle

T = TypeVar("T")

# Modules an annotator process must not load: it would cost seconds and memory per process.
HEAVY_MODULES = ("torch", "transformers", "peft", "pandas", "numpy")
# sqlite-utils imports these eagerly, only to map their scalar types to column types when it
# creates tables from such values; annotators never do, and skipping them cuts a child's start
# from ~0.6 s to ~0.15 s of CPU (20 children on 2 cores: ~18 s -> ~5 s).
_UNUSED_BY_THE_STORE = ("pandas", "numpy")
# How long one store call keeps retrying a busy database before the annotator gives up.
RETRY_FOR_S = 120.0


class CrowdError(RuntimeError):
    """An annotator process failed or the crowd did not finish in time; the message says which."""


@dataclass(frozen=True)
class CrowdSpec:
    """What every annotator process is told (picklable: it crosses the spawn boundary)."""

    db_path: str
    rankings_each: int
    overlap: int
    assignment_timeout_s: float
    gold_every: int
    double_click_rate: float
    busy_timeout_s: float | None
    idle_exit_s: float
    seed: int
    name_prefix: str
    # Pickled, so that unpickling the spec in the child does not import the oracle's module
    # (and sqlite-utils with it) before _annotator_main has set the child's imports up.
    oracle_pickle: bytes


@dataclass
class CrowdReport:
    """What the crowd did, from the annotators' side: what each was told was stored."""

    annotators: int
    acknowledged: dict[str, list[int]]  # annotator name -> ranking ids returned by submit
    # annotator name -> comparison ids where one click of a double click was refused
    refused_duplicates: dict[str, list[int]]
    double_clicks: int
    busy_retries: int
    started_at: float  # wall clock (time.time), comparable with the database's timestamps
    finished_at: float
    submit_latencies_s: list[float] = field(repr=False)  # busy retries included
    next_item_latencies_s: list[float] = field(repr=False)  # next_task calls that served one
    child_heavy_imports: list[str] = field(default_factory=list)

    @property
    def rankings(self) -> int:
        return sum(len(ids) for ids in self.acknowledged.values())

    @property
    def wall_s(self) -> float:
        return self.finished_at - self.started_at

    @property
    def rankings_per_s(self) -> float:
        return self.rankings / self.wall_s if self.wall_s > 0 else math.nan

    def latency_s(self, quantile: float, of: str = "submit") -> float:
        """Nearest-rank quantile of the ``submit`` or ``next_item`` latencies."""
        ordered = sorted(self.submit_latencies_s if of == "submit" else self.next_item_latencies_s)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]

    def figures(self) -> dict[str, Any]:
        """The headline numbers, JSON-ready."""
        return {
            "annotators": self.annotators,
            "rankings": self.rankings,
            "wall_s": round(self.wall_s, 3),
            "rankings_per_s": round(self.rankings_per_s, 1),
            "double_clicks": self.double_clicks,
            "duplicates_refused": sum(len(c) for c in self.refused_duplicates.values()),
            "busy_retries": self.busy_retries,
            "submit_p50_ms": round(self.latency_s(0.5) * 1000, 1),
            "submit_p95_ms": round(self.latency_s(0.95) * 1000, 1),
            "submit_max_ms": round(self.latency_s(1.0) * 1000, 1),
            "next_item_p50_ms": round(self.latency_s(0.5, "next_item") * 1000, 1),
            "next_item_p95_ms": round(self.latency_s(0.95, "next_item") * 1000, 1),
            "next_item_max_ms": round(self.latency_s(1.0, "next_item") * 1000, 1),
        }


def run_crowd(
    db_path: str | Path,
    annotators: int = 20,
    rankings_each: int = 25,
    *,
    overlap: int = 1,
    assignment_timeout_s: float = 1800.0,
    gold_every: int = 0,
    double_click_rate: float = 0.1,
    busy_timeout_s: float | None = None,
    idle_exit_s: float = 2.0,
    seed: int = 0,
    name_prefix: str = "crowd",
    oracle: Oracle | None = None,
    when_ready: Callable[[], None] | None = None,
    timeout_s: float = 300.0,
) -> CrowdReport:
    """Run ``annotators`` processes, each ranking up to ``rankings_each`` tasks, all at once.

    Every process first connects and registers its name; then ``when_ready`` runs (e.g. to
    wait until the worker is training) and only then are all released together, so the
    submitting phase is truly concurrent and its clock does not count process start-up. An
    annotator stops at its quota or after ``idle_exit_s`` seconds of an empty queue. ``overlap``,
    ``assignment_timeout_s`` and ``gold_every`` are the settings the Rank page serves with.
    ``busy_timeout_s`` is each connection's wait for the write lock (default: the app's).
    """
    spec = CrowdSpec(
        db_path=str(db_path),
        rankings_each=rankings_each,
        overlap=overlap,
        assignment_timeout_s=assignment_timeout_s,
        gold_every=gold_every,
        double_click_rate=double_click_rate,
        busy_timeout_s=busy_timeout_s,
        idle_exit_s=idle_exit_s,
        seed=seed,
        name_prefix=name_prefix,
        oracle_pickle=pickle.dumps(oracle or _default_oracle()),
    )
    ctx = multiprocessing.get_context("spawn")  # no fork: a parent holding torch or sqlite state
    messages = ctx.Queue()
    go = ctx.Event()
    processes = [
        ctx.Process(target=_annotator_main, args=(spec, i, go, messages), daemon=True)
        for i in range(annotators)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        for process in processes:
            process.start()
        for _ in range(annotators):
            _expect(messages, processes, deadline, "ready", spec)
        if when_ready is not None:
            when_ready()
        started_at = time.time()
        go.set()
        results = [_expect(messages, processes, deadline, "done", spec) for _ in processes]
        for process in processes:
            process.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
    return CrowdReport(
        annotators=annotators,
        acknowledged={r["name"]: r["acknowledged"] for r in results},
        refused_duplicates={r["name"]: r["refused"] for r in results},
        double_clicks=sum(r["double_clicks"] for r in results),
        busy_retries=sum(r["busy_retries"] for r in results),
        started_at=started_at,
        finished_at=max([r["finished_at"] for r in results] + [started_at]),
        submit_latencies_s=[s for r in results for s in r["latencies"]],
        next_item_latencies_s=[s for r in results for s in r["next_item_latencies"]],
        child_heavy_imports=sorted({m for r in results for m in r["heavy_imports"]}),
    )


def _default_oracle() -> Oracle:
    from rlhf_loop.simulate import LengthOracle

    return LengthOracle(target_words=5)


def _expect(
    messages: Any, processes: list[Any], deadline: float, kind: str, spec: CrowdSpec
) -> dict[str, Any]:
    """The next message, which must be of ``kind``; a child's error or death is raised here."""
    while True:
        try:
            got, index, payload = messages.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise CrowdError(
                    f"annotator process {dead[0].pid} died with exit code {dead[0].exitcode}"
                ) from None
            if time.monotonic() > deadline:
                raise CrowdError(f"the crowd did not report {kind!r} in time") from None
            continue
        name = _name(spec, index)
        if got == "error":
            raise CrowdError(f"annotator {name} failed:\n{payload}")
        if got != kind:
            raise CrowdError(f"annotator {name} sent {got!r} while {kind!r} was expected")
        return payload


def _name(spec: CrowdSpec, index: int) -> str:
    return f"{spec.name_prefix}-{index:02d}"


@dataclass
class CrowdAudit:
    """The database checked against a CrowdReport: every field empty or zero when each
    acknowledged ranking is stored exactly once and the slot accounting held."""

    lost: list[int]  # ranking ids acknowledged to an annotator but not in the database
    phantom: list[int]  # rankings of the crowd's annotators that nobody was told of
    duplicated: int  # ids acknowledged twice, plus extra rows for one (item, annotator)
    over_overlap: list[int]  # items with more live rankings than the overlap
    double_clicks_not_one_row: list[tuple[str, int]]  # (annotator, item) without exactly 1 row
    open_assignments: int  # items served to the crowd and never answered
    integrity: str  # PRAGMA integrity_check

    @property
    def clean(self) -> bool:
        return (
            not (self.lost or self.phantom or self.over_overlap or self.double_clicks_not_one_row)
            and self.duplicated == self.open_assignments == 0
            and self.integrity == "ok"
        )


def audit(db: sqlite_utils.Database, report: CrowdReport, overlap: int) -> CrowdAudit:
    """Compare what the annotators were told with what ``db`` holds (run after the crowd)."""
    names = list(report.acknowledged)
    rows = db["annotators"].rows_where(f"name IN ({','.join('?' * len(names))})", names)
    ids = {r["name"]: r["id"] for r in rows}
    who = f"annotator_id IN ({','.join('?' * len(ids))})"
    acknowledged = [i for ranking_ids in report.acknowledged.values() for i in ranking_ids]
    stored = [r["id"] for r in db["rankings"].rows_where(who, list(ids.values()))]
    extra_rows = db.execute(
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM rankings WHERE {who} "
        "GROUP BY comparison_id, annotator_id)",
        list(ids.values()),
    ).fetchone()[0]
    over_overlap = db.execute(
        "SELECT comparison_id FROM rankings WHERE retracted_at IS NULL AND status != 'skipped' "
        "GROUP BY comparison_id HAVING count(*) > ?",
        [overlap],
    ).fetchall()
    return CrowdAudit(
        lost=sorted(set(acknowledged) - set(stored)),
        phantom=sorted(set(stored) - set(acknowledged)),
        duplicated=len(acknowledged) - len(set(acknowledged)) + int(extra_rows),
        over_overlap=[r[0] for r in over_overlap],
        double_clicks_not_one_row=[
            (name, comparison_id)
            for name, comparisons in report.refused_duplicates.items()
            for comparison_id in comparisons
            if db["rankings"].count_where(
                "comparison_id = ? AND annotator_id = ?", [comparison_id, ids[name]]
            )
            != 1
        ],
        open_assignments=db["assignments"].count_where(
            f"closed_at IS NULL AND {who}", list(ids.values())
        ),
        integrity=db.execute("PRAGMA integrity_check").fetchone()[0],
    )


# ---------------------------------------------------------------------------------------------
# One annotator process
# ---------------------------------------------------------------------------------------------


class _Retries:
    """Busy retries of one process, counted from its threads (the double click has two)."""

    def __init__(self, busy: type[Exception], seed: str) -> None:
        self.busy = busy
        self.count = 0
        self._lock = threading.Lock()
        # Its own generator: the pauses, as many as contention causes, must not shift the
        # annotator's seeded choices (which items get a double click).
        self._jitter = random.Random(seed)

    def call(self, action: Callable[..., T], *args: Any) -> T:
        """``action(*args)``, again after a short random pause each time the database was busy.

        Safe to repeat: the store raises StoreError only when BEGIN IMMEDIATE failed, before
        anything was written."""
        give_up = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                return action(*args)
            except self.busy:
                with self._lock:
                    self.count += 1
                if time.monotonic() > give_up:
                    raise
                time.sleep(self._jitter.uniform(0.001, 0.02))


def _annotator_main(spec: CrowdSpec, index: int, go: Any, messages: Any) -> None:
    """Entry point of an annotator process: connect, register, wait for go, rank, report."""
    for name in _UNUSED_BY_THE_STORE:
        if name not in sys.modules:  # not already loaded by the parent's main module
            sys.modules[name] = None  # type: ignore[assignment]  # import fails, as if absent
    try:
        messages.put(("done", index, _annotate(spec, index, go, messages)))
    except BaseException:
        messages.put(("error", index, traceback.format_exc()))


def _annotate(spec: CrowdSpec, index: int, go: Any, messages: Any) -> dict[str, Any]:
    from rlhf_loop.simulate import SimulatedAnnotator
    from rlhf_loop.store.annotators import annotator_id
    from rlhf_loop.store.db import StoreError, open_db
    from rlhf_loop.store.submissions import submit
    from rlhf_loop.store.tasks import next_task

    name = _name(spec, index)
    rng = random.Random(f"{spec.seed}:{name}")
    annotator = SimulatedAnnotator(
        pickle.loads(spec.oracle_pickle), noise=0.3, tie_threshold=0.5, seed=rng.randrange(2**32)
    )
    db = open_db(spec.db_path, spec.busy_timeout_s)
    second_tab = open_db(spec.db_path, spec.busy_timeout_s)  # where a double click's twin lands
    retries = _Retries(StoreError, f"{spec.seed}:{name}:retries")
    who = retries.call(annotator_id, db, name)
    messages.put(("ready", index, {}))
    go.wait()
    acknowledged: list[int] = []
    refused: list[int] = []
    latencies: list[float] = []
    next_item_latencies: list[float] = []
    double_clicks = 0
    empty_since: float | None = None  # when the queue was first found empty, in a row
    while len(acknowledged) < spec.rankings_each:
        started = time.perf_counter()
        task = retries.call(
            next_task, db, who, spec.overlap, spec.assignment_timeout_s, spec.gold_every
        )
        if task is None:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since > spec.idle_exit_s:
                break
            time.sleep(0.05)
            continue
        next_item_latencies.append(time.perf_counter() - started)
        empty_since = None
        ranks = annotator.rank(task.prompt, [r.text for r in task.responses])
        if rng.random() < spec.double_click_rate:
            double_clicks += 1
            stored, refused_here, seconds = _double_click(
                (db, second_tab), who, task.comparison_id, ranks, retries
            )
            refused += [task.comparison_id] * refused_here
        else:
            started = time.perf_counter()
            stored = [retries.call(submit, db, who, task.comparison_id, "ranked", ranks)]
            seconds = time.perf_counter() - started
        acknowledged += stored
        latencies.append(seconds)
    finished_at = time.time()
    return {
        "name": name,
        "acknowledged": acknowledged,
        "refused": refused,
        "double_clicks": double_clicks,
        "busy_retries": retries.count,
        "latencies": latencies,
        "next_item_latencies": next_item_latencies,
        "finished_at": finished_at,
        "heavy_imports": [m for m in HEAVY_MODULES if sys.modules.get(m) is not None],
    }


def _double_click(
    connections: tuple[Any, Any],
    who: int,
    comparison_id: int,
    ranks: list[int],
    retries: _Retries,
) -> tuple[list[int], int, float]:
    """Submit the same answer on two connections at the same moment.

    Returns the ranking ids stored (one, when the store is right), how many clicks were refused
    as duplicates, and the seconds until both clicks had an answer. Any other error is raised.
    """
    from rlhf_loop.store.submissions import DuplicateSubmission, submit

    start = threading.Barrier(2)
    outcomes: list[tuple[str, Any]] = [("none", None), ("none", None)]

    def click(i: int) -> None:
        start.wait()
        try:
            ranking_id = retries.call(submit, connections[i], who, comparison_id, "ranked", ranks)
            outcomes[i] = ("stored", ranking_id)
        except DuplicateSubmission:
            outcomes[i] = ("refused", None)
        except BaseException as exc:
            outcomes[i] = ("error", exc)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for kind, value in outcomes:
        if kind == "error":
            raise value
    stored = [value for kind, value in outcomes if kind == "stored"]
    return stored, sum(kind == "refused" for kind, _ in outcomes), seconds
