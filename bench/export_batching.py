"""Reading rankings with their generations, before and after batching (issue 14): the full and
pairs exports and ``load_rankings`` at 10^4-10^6 rankings, run by an older checkout of the code
and by this one, alternately, on the same generated stores (``bench/store_scale.py``'s cache).

Each run is a fresh process of the checkout it times (``store_scale.py --export`` for the
exports), so neither side inherits the other's page cache advantage more than the order gives;
the two files of an export are compared byte for byte, so a speed-up that changed the output
shows up here as ``identical: false``.

    git worktree add /tmp/before-wt <commit before the change>
    nice -n 10 python bench/export_batching.py --before /tmp/before-wt [--sizes 10000 100000]

Writes bench/out/export_batching.json with the load average before and after each size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.store_scale import cached_store

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("full", "pairs")

# Run by each checkout in its own process: load_rankings' seconds and how many it read.
LOAD_RANKINGS = """
import json, sys, time
from rlhf_loop.reward.data import load_rankings
from rlhf_loop.store.db import open_db
db = open_db(sys.argv[1])
started = time.perf_counter()
n = len(load_rankings(db))
print(json.dumps({"seconds": time.perf_counter() - started, "rankings": n}))
"""


def _run(tree: Path, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def _digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def export_pair(trees: dict[str, Path], db: Path, shape: str, work: Path) -> dict[str, Any]:
    """The export by each checkout: seconds, peak RSS rise, and whether the files are equal."""
    figures, digests = {}, {}
    for side, tree in trees.items():
        out = work / f"{side}-{shape}.jsonl"
        figures[side] = _run(
            tree, [str(tree / "bench" / "store_scale.py"), "--export", shape, str(db), str(out)]
        )
        digests[side] = _digest(out)
        out.unlink()
    return {
        **figures,
        "speedup": figures["before"]["seconds"] / figures["after"]["seconds"],
        "identical": digests["before"] == digests["after"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the older code")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--load-sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/rlhf-store-scale"))
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO}
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        db, _ = cached_store(args.cache_dir, size)
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="export-batching-") as tmp:
            exports = {shape: export_pair(trees, db, shape, Path(tmp)) for shape in SHAPES}
        row: dict[str, Any] = {"rankings": size, "exports": exports}
        if size in args.load_sizes:
            loads = {
                side: _run(tree, ["-c", LOAD_RANKINGS, str(db)]) for side, tree in trees.items()
            }
            loads["speedup"] = loads["before"]["seconds"] / loads["after"]["seconds"]
            row["load_rankings"] = loads
        row["load_average_before"] = load_before
        row["load_average_after"] = os.getloadavg()
        print(json.dumps(row), flush=True)
        results.append(row)
    out = REPO / "bench" / "out" / "export_batching.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"before": str(trees["before"]), "results": results}, indent=2))


if __name__ == "__main__":
    main()
