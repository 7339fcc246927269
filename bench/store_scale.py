"""The store at 10^4, 10^5 and 10^6 rankings: the Rank page's calls, the Dashboard's figures and
the exports, against the size of the database.

Each store is generated (``bench/store_scale_data.py``: bulk inserts, minutes at 10^6) once and
cached under ``--cache-dir`` by size, schema and generator source, then copied, so every
run measures the same rows. Per size:

- Rank page: ``submit`` then ``next_task`` for ``--items`` items by an annotator with a long
  history (the figure an annotator waits on), and the same plus what the page's header asks
  (guidelines, progress, tasks left);
- Dashboard: every store call the page makes, called directly: cold (the first render ever,
  with no saved agreement tally), restarted (the first render of a new server process, taking up
  the tally the first one saved), after the Rank page's new rankings and an undo arrived (a
  render while people rank), and once more with nothing new;
- exports (full rankings, TRL pairs, SFT demonstrations), each in its own process writing a
  file: seconds, and how far the process's peak RSS rose over its size after imports.

    nice -n 10 python bench/store_scale.py [--sizes 10000 100000 1000000] [--items 50]

Writes bench/out/store_scale.json and bench/out/store_scale.png (latency against size). The load
average is recorded before and after each size: on a shared machine figures mean little
without it.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlite_utils  # noqa: E402

from bench.store_scale_data import OVERLAP, build  # noqa: E402
from rlhf_loop.store.agreement_cache import forget_tallies, training_agreement  # noqa: E402
from rlhf_loop.store.annotator_table import annotator_table  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.flags import flag_counts, open_flags  # noqa: E402
from rlhf_loop.store.guidelines import current_guidelines  # noqa: E402
from rlhf_loop.store.quality import overall  # noqa: E402
from rlhf_loop.store.schema import SCHEMA_VERSION  # noqa: E402
from rlhf_loop.store.simulated import ranking_counts, simulated_annotators  # noqa: E402
from rlhf_loop.store.submissions import progress, submit, undo_last  # noqa: E402
from rlhf_loop.store.tasks import next_task, tasks_left_for  # noqa: E402

OUT = REPO / "bench" / "out"
TIMEOUT_S = 1800.0
GOLD_EVERY = 10
BENCH_ANNOTATOR = 1  # ann-00: a person with a long history
EXPORTS = ("full", "pairs", "sft")

# The Dashboard page's store calls, in its order (pages/dashboard.py).
DASHBOARD: dict[str, Callable[[sqlite_utils.Database], object]] = {
    "overall": overall,
    "flag_counts": flag_counts,
    "annotator_table": annotator_table,
    "pairwise_tau": lambda db: training_agreement(db).pairwise.rows(),
    "ranking_counts": ranking_counts,
    "simulated_annotators": simulated_annotators,
    "open_flags": lambda db: open_flags(db, limit=20),
}


def cached_store(cache: Path, size: int) -> tuple[Path, dict[str, Any]]:
    """The generated store of ``size`` rankings, built on first use."""
    sources = [REPO / "bench" / "store_scale_data.py", REPO / "rlhf_loop" / "store" / "schema.py"]
    tag = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:10]
    path = cache / f"store-{size}-v{SCHEMA_VERSION}-{tag}.db"
    meta = path.with_suffix(".json")
    if not meta.exists():
        path.unlink(missing_ok=True)
        meta.write_text(json.dumps(build(path, size)))
    return path, json.loads(meta.read_text())


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "n": len(ordered),
        "median_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[round(0.95 * (len(ordered) - 1))],
        "max_ms": 1000 * ordered[-1],
    }


def rank_page(db: sqlite_utils.Database, items: int) -> dict[str, dict[str, float]]:
    """Seconds per item: submit + next item, and that plus the page header's queries."""
    me = BENCH_ANNOTATOR
    task = next_task(db, me, OVERLAP, TIMEOUT_S, gold_every=GOLD_EVERY)
    answer, page = [], []
    for _ in range(items):
        started = time.perf_counter()
        submit(db, me, task.comparison_id, "ranked", [1, 2, 2, 3], served_at=task.served_at)
        task = next_task(db, me, OVERLAP, TIMEOUT_S, gold_every=GOLD_EVERY)
        answered = time.perf_counter()
        current_guidelines(db)
        progress(db, me)
        tasks_left_for(db, me, OVERLAP, TIMEOUT_S)
        answer.append(answered - started)
        page.append(time.perf_counter() - started)
    return {"submit_next": summary(answer), "page": summary(page)}


def dashboard(db: sqlite_utils.Database) -> dict[str, float]:
    """Seconds of each of the page's calls, and their total."""
    times = {}
    for name, call in DASHBOARD.items():
        started = time.perf_counter()
        call(db)
        times[name] = time.perf_counter() - started
    return times | {"total": sum(times.values())}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def agreement_memory(db: sqlite_utils.Database) -> dict[str, float]:
    """What the Dashboard's agreement tally holds once built, and its peak while building
    (tracemalloc: a second cold build, timed apart from the figures above)."""
    forget_tallies()
    gc.collect()
    tracemalloc.start()
    try:
        training_agreement(db)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"held_mb": held / 2**20, "build_peak_mb": peak / 2**20}


def export_in_process(db_path: Path, shape: str, out: Path) -> dict[str, float]:
    """One export in this (fresh) process: seconds, bytes, and how far the peak RSS rose over
    the RSS after imports (the peak is reset first: a child's ``ru_maxrss`` starts at its
    parent's)."""
    from rlhf_loop.export import export_jsonl
    from rlhf_loop.export_sft import export_sft_jsonl

    db = open_db(db_path)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_mb("VmRSS")
    started = time.perf_counter()
    with out.open("w", encoding="utf-8") as file:
        lines = export_sft_jsonl(db, file) if shape == "sft" else export_jsonl(db, shape, file)
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    return {
        "seconds": seconds,
        "lines": lines,
        "bytes": out.stat().st_size,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "peak_rss_rise_mb": peak - before,
    }


def export(db_path: Path, shape: str, workdir: Path) -> dict[str, float]:
    out = workdir / f"{shape}.jsonl"
    command = [sys.executable, __file__, "--export", shape, str(db_path), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    out.unlink()
    return json.loads(result.stdout)


def measure(cache: Path, size: int, items: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    source, built = cached_store(cache, size)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        workdir = Path(tmp)
        path = workdir / "store.db"
        shutil.copy(source, path)
        db = open_db(path)
        print(f"{size}: store {built}", flush=True)
        forget_tallies()
        cold = dashboard(db)
        print(f"{size}: dashboard cold {cold['total']:.2f} s", flush=True)
        forget_tallies()  # a restarted server: the tally saved by the first render is there
        restarted = dashboard(db)
        print(f"{size}: dashboard after a restart {restarted['total']:.2f} s", flush=True)
        rank = rank_page(db, items)
        print(f"{size}: rank page {rank}", flush=True)
        undo_last(db, BENCH_ANNOTATOR)
        changed = dashboard(db)
        unchanged = dashboard(db)
        print(f"{size}: dashboard after new rankings {changed['total']:.2f} s", flush=True)
        exports = {shape: export(path, shape, workdir) for shape in EXPORTS}
        print(f"{size}: exports {exports}", flush=True)
        tally_memory = agreement_memory(db)
        db.conn.close()
    return {
        "rankings": built["rankings"],
        "store": built,
        "rank_page": rank,
        "dashboard": {
            "cold": cold,
            "restarted": restarted,
            "after_new_rankings": changed,
            "unchanged": unchanged,
        },
        "agreement_tally_mb": tally_memory,
        "exports": exports,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["rankings"] for r in results]
    fig, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    lines = {
        "submit + next item, median": [r["rank_page"]["submit_next"]["median_ms"] for r in results],
        "submit + next item, p95": [r["rank_page"]["submit_next"]["p95_ms"] for r in results],
        "Rank page store calls, median": [r["rank_page"]["page"]["median_ms"] for r in results],
    }
    for stage in ("cold", "restarted", "after_new_rankings", "unchanged"):
        lines[f"Dashboard, {stage.replace('_', ' ')}"] = [
            1000 * r["dashboard"][stage]["total"] for r in results
        ]
    for shape in EXPORTS:
        lines[f"export {shape}"] = [1000 * r["exports"][shape]["seconds"] for r in results]
    for label, values in lines.items():
        latency.plot(sizes, values, marker="o", label=label)
    latency.axhline(20, color="grey", linestyle=":", label="20 ms (next item target)")
    latency.axhline(2000, color="grey", linestyle="--", label="2 s (Dashboard target)")
    latency.set(xscale="log", yscale="log", xlabel="rankings in the database", ylabel="ms")
    latency.set_title("Latency against store size")
    latency.legend(fontsize=7)
    for shape in EXPORTS:
        memory.plot(
            sizes,
            [r["exports"][shape]["peak_rss_rise_mb"] for r in results],
            marker="o",
            label=f"export {shape}",
        )
    memory.set(xscale="log", xlabel="rankings in the database", ylabel="MB")
    memory.set_title("Export: peak RSS rise over the process after imports")
    memory.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--export":
        _, _, shape, db_path, out = sys.argv
        print(json.dumps(export_in_process(Path(db_path), shape, Path(out))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "rlhf-store-scale"
    )
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results = [measure(args.cache_dir, size, args.items) for size in args.sizes]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "store_scale.json").write_text(json.dumps({"sizes": results}, indent=2))
    plot(results, OUT / "store_scale.png")


if __name__ == "__main__":
    main()
