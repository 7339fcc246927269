"""Load: 20 simulated annotators, each in its own process, rank at once against one database
while a real worker process trains the reward model on it. Every acknowledged ranking is stored
exactly once (none lost, none phantom, none duplicated), no item gets more rankings than its
overlap, and every double click leaves one row.

Why a real worker: its heartbeats, metric rows and final registration are writes that compete
for the same lock as the annotators' submits, and its training keeps both cores busy, which is
what stretches lock hold times in production.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlite_utils
from store_helpers import fresh_db, make_comparisons, oracle_rankings
from worker_helpers import wait_for, worker_env

from rlhf_loop.crowd import CrowdAudit, CrowdReport, audit, run_crowd
from rlhf_loop.store import jobs

REPO = Path(__file__).resolve().parent.parent
ANNOTATORS = 20
RANKINGS_EACH = 25
OVERLAP = 2  # two annotators per item: they race for the same items' slots
# ~0.7 s per epoch alone on 2 cores (51 training rankings, tiny demo model): training outlasts
# the annotators' start and their submitting phase several times over, even on a loaded machine.
REWARD_EPOCHS = 20


def _env(tmp_path: Path, model_path: Path) -> dict[str, str]:
    settings = {"active_selection": False, "reward_epochs": REWARD_EPOCHS, "overlap": OVERLAP}
    # queue_depth 1 (worker_env's), far fewer than the free slots: the worker trains, not samples
    return worker_env(tmp_path, model_path, **settings) | {"OMP_NUM_THREADS": "1"}


def _check_stored_exactly_once(db: sqlite_utils.Database, report: CrowdReport) -> CrowdAudit:
    """What the annotators were told against what the database holds, field by field."""
    found = audit(db, report, OVERLAP)
    assert not found.lost, f"acknowledged but not stored: {found.lost}"
    assert not found.phantom, f"stored but never acknowledged: {found.phantom}"
    assert found.duplicated == 0
    assert not found.over_overlap, f"items ranked more often than the overlap: {found.over_overlap}"
    assert not found.double_clicks_not_one_row, found.double_clicks_not_one_row
    refused = sum(len(c) for c in report.refused_duplicates.values())
    assert refused == report.double_clicks > 0  # each double click: one stored, one refused
    assert found.open_assignments == 0  # every item served was answered
    assert found.integrity == "ok"
    assert found.clean
    assert report.child_heavy_imports == []  # annotator processes stay light (no torch)
    return found


def _print_figures(title: str, report: CrowdReport, checked: CrowdAudit) -> None:
    f = report.figures()
    print(
        f"\n{title}: {f['annotators']} annotators, {f['rankings']} rankings in {f['wall_s']} s "
        f"= {f['rankings_per_s']} rankings/s; lost {len(checked.lost)}, duplicated "
        f"{checked.duplicated}; double clicks {f['double_clicks']} (refused "
        f"{f['duplicates_refused']}); busy retries {f['busy_retries']}; submit latency p50 "
        f"{f['submit_p50_ms']} ms, p95 {f['submit_p95_ms']} ms, max {f['submit_max_ms']} ms"
    )


def test_twenty_annotators_rank_at_once_while_the_worker_trains(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 60)  # the reward model's training data
    make_comparisons(db, ANNOTATORS * RANKINGS_EACH // OVERLAP + 30)  # enough for every quota
    job_id = jobs.enqueue(db, "train_reward", {"reason": "load test"})
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "rlhf_loop", "worker", "--idle-exit", "1"],
        env=_env(tmp_path, demo_model_path),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def training() -> bool:
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        return len(jobs.job_metrics(db, job_id)) >= 1

    try:
        report = run_crowd(
            tmp_path / "rlhf.db",
            ANNOTATORS,
            RANKINGS_EACH,
            overlap=OVERLAP,
            # released only once the worker is past loading and into its training steps
            when_ready=lambda: wait_for(training, 120, "the worker's first training step"),
            timeout_s=180,
        )
        assert worker.wait(timeout=180) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()

    job = db["jobs"].get(job_id)
    assert job["status"] == "done", job["error"]
    # Training ran through the whole submitting window, with steps recorded inside it.
    assert job["started_at"] < report.started_at and job["finished_at"] > report.finished_at
    steps_inside = [
        m
        for m in jobs.job_metrics(db, job_id)
        if report.started_at <= m["at"] <= report.finished_at
    ]
    assert steps_inside, "no training step was recorded while the annotators submitted"
    assert report.rankings == ANNOTATORS * RANKINGS_EACH  # every quota met
    checked = _check_stored_exactly_once(db, report)
    _print_figures("with the worker training", report, checked)
    print(
        f"reward training ran from {report.started_at - job['started_at']:.1f} s before the "
        f"window to {job['finished_at'] - report.finished_at:.1f} s after it, "
        f"{len(steps_inside)} metric rows inside it"
    )


def test_a_busy_database_is_retried_without_loss_or_duplicates(tmp_path: Path) -> None:
    """No busy wait at all: every contended write fails at once with StoreError, as a very busy
    database does to a page, and the annotator submits again. Retrying must neither lose a
    ranking nor store one twice."""
    db = fresh_db(tmp_path)
    make_comparisons(db, ANNOTATORS * 10 // OVERLAP + 10)
    report = run_crowd(
        tmp_path / "rlhf.db", ANNOTATORS, 10, overlap=OVERLAP, busy_timeout_s=0, seed=1
    )
    assert report.busy_retries > 0  # the retry path really ran
    assert report.rankings == ANNOTATORS * 10
    checked = _check_stored_exactly_once(db, report)
    _print_figures("no busy timeout", report, checked)
