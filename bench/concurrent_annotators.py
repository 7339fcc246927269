"""Rankings per second sustained by one SQLite file when many annotators submit at once.

N simulated annotators, each in its own process with its own connection (as N browser sessions
are), rank M items each through the store's own calls (``rlhf_loop.crowd``), with double clicks
and busy retries; afterwards the database is audited against what each annotator was told was
stored: lost and duplicated must both be 0. With ``--with-worker`` a real worker process trains
the reward model (the app's demo model, torch's default threads) through the whole submitting
window, so its writes and its CPU compete with the annotators as in production.

    python bench/concurrent_annotators.py [--annotators 20] [--rankings-each 30] [--with-worker]

Writes bench/out/concurrent_annotators.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Only light imports at the top: each annotator process ("spawn") re-imports this file first.
from rlhf_loop.crowd import CrowdReport, audit, run_crowd  # noqa: E402

OUT = REPO / "bench" / "out"
K = 4
TRAINING_RANKINGS = 60
# Far more epochs than the window needs: the worker is stopped once the annotators are done.
WORKER_EPOCHS = 500


def fill(db_path: Path, items: int) -> None:
    """``items`` rankable items, plus, ranked already, the reward model's training data."""
    from rlhf_loop.prompt_import import ParsedPrompts, PromptRow
    from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator, annotate
    from rlhf_loop.store.db import open_db
    from rlhf_loop.store.generations import Sample, add_comparisons, live_policy_version
    from rlhf_loop.store.prompts import add_prompts

    db = open_db(db_path)
    total = items + TRAINING_RANKINGS
    rows = [PromptRow(text=f"bench prompt {i}", line=i + 1) for i in range(total)]
    add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "bench")
    ids = [r["id"] for r in db["prompts"].rows_where(order_by="id")]
    samples = [
        [
            Sample(f"answer {j} to {pid}: " + "word " * (2 + 3 * j), 4 + 3 * j, True)
            for j in range(K)
        ]
        for pid in ids
    ]
    add_comparisons(db, live_policy_version(db, "bench"), ids, samples, {"model": "bench"})
    oracle = SimulatedAnnotator(LengthOracle(target_words=5), noise=0.3, tie_threshold=0.5, seed=0)
    annotate(db, "oracle", oracle, TRAINING_RANKINGS)


def start_worker(workdir: Path) -> tuple[subprocess.Popen, int]:
    """A real worker training the reward model (app defaults otherwise); returns it and the job."""
    from rlhf_loop.config import Settings
    from rlhf_loop.store import jobs
    from rlhf_loop.store.db import open_db
    from rlhf_loop.worker_launch import settings_env

    settings = Settings(
        data_dir=str(workdir),
        seed_demo_prompts=False,
        reward_retrain_every=0,
        ppo_after_reward=False,
        active_selection=False,
        reward_epochs=WORKER_EPOCHS,
        queue_depth=1,  # the items are there already: the worker trains, it does not sample
    )
    (workdir / "empty.toml").write_text("")
    env = os.environ | settings_env(settings) | {"RLHF_LOOP_CONFIG": str(workdir / "empty.toml")}
    job_id = jobs.enqueue(open_db(workdir / "rlhf.db"), "train_reward", {"reason": "bench"})
    with open(workdir / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "rlhf_loop", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return worker, job_id


def wait_for_training(worker: subprocess.Popen, workdir: Path, job_id: int) -> None:
    """Until the worker has recorded a training step (the first run builds the demo model)."""
    from rlhf_loop.store import jobs
    from rlhf_loop.store.db import open_db

    db = open_db(workdir / "rlhf.db")
    deadline = time.monotonic() + 900
    while not jobs.job_metrics(db, job_id):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                "the worker never started training:\n"
                + (workdir / "worker.log").read_text()[-3000:]
            )
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--rankings-each", type=int, default=30)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--with-worker", action="store_true", help="a worker trains meanwhile")
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=None,
        help="seconds a write waits for the lock before StoreError (default: the app's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from rlhf_loop.store.db import BUSY_TIMEOUT_S, open_db

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # One quota over the minimum: with overlap > 1 the last annotator still ranking cannot
        # take the second slot of items it ranked itself; this many always leaves it enough.
        items = -(-args.annotators * args.rankings_each // args.overlap) + args.rankings_each
        fill(workdir / "rlhf.db", items)
        worker = job_id = None
        if args.with_worker:
            worker, job_id = start_worker(workdir)
        try:
            report = run_crowd(
                workdir / "rlhf.db",
                args.annotators,
                args.rankings_each,
                overlap=args.overlap,
                busy_timeout_s=args.busy_timeout,
                seed=args.seed,
                when_ready=(
                    (lambda: wait_for_training(worker, workdir, job_id)) if worker else None
                ),
                timeout_s=1200,
            )
            db = open_db(workdir / "rlhf.db")
            overlapped = None
            if worker is not None:
                job = db["jobs"].get(job_id)
                overlapped = (
                    job["status"] == "running"
                    and job["started_at"] < report.started_at
                    and worker.poll() is None
                )
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
        found = audit(db, report, args.overlap)
    result = report.figures() | {
        "rankings_each": args.rankings_each,
        "overlap": args.overlap,
        "busy_timeout_s": BUSY_TIMEOUT_S if args.busy_timeout is None else args.busy_timeout,
        "with_worker": args.with_worker,
        "worker_trained_throughout": overlapped,
        "lost": len(found.lost),
        "phantom": len(found.phantom),
        "duplicated": found.duplicated,
        "over_overlap": len(found.over_overlap),
        "integrity": found.integrity,
        "cpus": os.cpu_count(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "concurrent_annotators.json").write_text(json.dumps(result, indent=2))
    print_figures(report, result)
    if not found.clean:
        raise SystemExit(f"the store lost or duplicated rankings: {found}")


def print_figures(report: CrowdReport, result: dict) -> None:
    worker = "with the worker training" if result["with_worker"] else "no worker"
    print(
        f"{result['annotators']} annotators x {result['rankings_each']} rankings ({worker}): "
        f"{result['rankings']} rankings in {result['wall_s']} s = {result['rankings_per_s']} "
        f"rankings/s; lost {result['lost']}, duplicated {result['duplicated']}"
    )
    print(
        f"submit latency p50 {result['submit_p50_ms']} ms, p95 {result['submit_p95_ms']} ms, "
        f"max {result['submit_max_ms']} ms; next item p50 {result['next_item_p50_ms']} ms, p95 "
        f"{result['next_item_p95_ms']} ms, max {result['next_item_max_ms']} ms"
    )
    print(
        f"double clicks {report.double_clicks} (refused {result['duplicates_refused']}); "
        f"busy retries {result['busy_retries']}"
    )


if __name__ == "__main__":
    main()
