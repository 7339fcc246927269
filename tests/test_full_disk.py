"""The database on a small disk that fills up in the middle of a shift: a real tmpfs, a ballast
file leaving a little room, three annotators ranking and a worker writing (items, jobs, metrics,
heartbeats, events) until nothing fits. Every answer is either acknowledged and then found in the
database, or refused with ``DiskError`` and not stored at all; integrity_check passes while the
disk is full and after; a snapshot cannot be written there and leaves nothing behind; and once
the ballast is deleted the same connections write again, without a restart.

The Rank page turns the refusal into words, keeps the ranking typed, and saves it once there is
space again.

Figures (refusals, recovery time, WAL size) are printed: ``pytest tests/test_full_disk.py -s``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from app_helpers import rank_page
from disk_helpers import fill_up, small_disk
from store_helpers import add_texts, make_comparisons
from worker_helpers import REPO, wait_for, worker_env

from rlhf_loop.store import jobs, leases
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.backup import snapshot_to
from rlhf_loop.store.db import DiskError, StoreError, open_db, write_txn
from rlhf_loop.store.events import log_event
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import next_task

ANNOTATORS = 3
TIMEOUT = 600.0
HOLDER = "test-worker"
ROOM_BYTES = 512 * 1024  # what the ballast leaves: some answers' worth of WAL frames
THINK_S = 0.01  # an annotator reads the item this long before submitting
WORKER_PAUSE_S = 0.05  # between the worker's passes, as it samples only when the queue runs low


@dataclass
class Writer:
    """What one thread did: its acknowledged answers and its refusals, by phase."""

    acknowledged: dict[int, tuple[int, int, list[int]]] = field(default_factory=dict)
    refused: int = 0  # DiskError on a write (a submit, or the worker's)
    refused_serving: int = 0  # DiskError claiming the next item
    done_after_space: int = 0
    first_done_after_space: float | None = None
    error: BaseException | None = None  # anything else stops the thread, and fails the test

    @property
    def refusals(self) -> int:
        return self.refused + self.refused_serving


@dataclass
class Shift:
    path: Path
    stop: threading.Event = field(default_factory=threading.Event)
    space_back_at: float | None = None  # time.monotonic() when the ballast was deleted

    def done(self, writer: Writer) -> None:
        if self.space_back_at is not None:
            writer.done_after_space += 1
            if writer.first_done_after_space is None:
                writer.first_done_after_space = time.monotonic()


def _annotate(shift: Shift, name: str, writer: Writer) -> None:
    """As the Rank page: the item on screen (a read), then a submit bound to it; a refused
    submit keeps the ranking and sends it again, as the page keeps it in its box."""
    db = open_db(shift.path)
    me = annotator_id(db, name)
    while not shift.stop.is_set():
        try:
            task = next_task(db, me, 1, TIMEOUT)
        except DiskError:
            writer.refused_serving += 1
            time.sleep(0.01)
            continue
        assert task is not None, "the queue ran dry"
        time.sleep(THINK_S)  # reading the item
        ranks = [1 + (task.comparison_id + i) % task.k for i in range(task.k)]
        try:
            ranking = submit(db, me, task.comparison_id, "ranked", ranks, served_at=task.served_at)
        except DiskError:
            writer.refused += 1
            time.sleep(0.01)
            continue
        writer.acknowledged[ranking] = (me, task.comparison_id, ranks)
        shift.done(writer)
    db.conn.close()


def _work(shift: Shift, writer: Writer) -> None:
    """The worker's kinds of writes, each through the store: sampled items, a job claimed,
    beaten, its metrics and its end, the lease's heartbeat, an event."""
    db = open_db(shift.path)
    step = 0
    while not shift.stop.is_set():
        try:
            make_comparisons(db, 2)
            leases.heartbeat(db, "worker", HOLDER, "sampling")
            jobs.enqueue(db, "train_reward")
            # Stale at once: a job a full disk left running is taken up again, as a worker does
            # once its heartbeat has gone stale.
            job = jobs.claim(db, HOLDER, stale_after_s=0.0, max_attempts=10**6)
            assert job is not None
            jobs.beat(db, job.id, HOLDER, 0.5, "training")
            step += 1
            jobs.record_metrics(db, job.id, step, {"loss": 1.0 / step})
            jobs.finish(db, job.id, {"step": step})
            with write_txn(db):
                log_event(db, "test_worker_pass", step=step)
        except DiskError:
            writer.refused += 1
            time.sleep(0.01)
            continue
        shift.done(writer)
        time.sleep(WORKER_PAUSE_S)
    db.conn.close()


def _thread(target, shift: Shift, *args) -> threading.Thread:
    writer = args[-1]

    def run() -> None:
        try:
            target(shift, *args)
        except BaseException as exc:
            writer.error = exc
            raise

    return threading.Thread(target=run)


def _wait(condition, timeout_s: float, writers: list[Writer], what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert [w.error for w in writers if w.error] == []
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {writers}"
        time.sleep(0.02)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "8m") as path:
        yield path


def test_a_full_disk_refuses_answers_clearly_loses_none_and_recovers_by_itself(
    disk: Path,
) -> None:
    path = disk / "rlhf.db"
    db = open_db(path)
    make_comparisons(db, 300)
    names = [f"annotator{i}" for i in range(ANNOTATORS)]
    for name in names:
        annotator_id(db, name)
    assert leases.acquire(db, "worker", HOLDER, 0, 60)
    # One more annotator, whose item is on screen when the disk fills: her submit is refused
    # for sure, then sent again as the page keeps it.
    dora = annotator_id(db, "dora")
    doras_item = next_task(db, dora, 1, TIMEOUT)
    doras_answer = (dora, doras_item.comparison_id, [2, 1, 3, 4])

    def doras_submit() -> int:
        return submit(
            db, *doras_answer[:2], "ranked", doras_answer[2], served_at=doras_item.served_at
        )

    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an empty WAL: it grows from here
    ballast = fill_up(disk / "ballast", leave_bytes=ROOM_BYTES)

    shift = Shift(path)
    annotators = [Writer() for _ in names]
    worker = Writer()
    threads = [_thread(_annotate, shift, n, w) for n, w in zip(names, annotators, strict=True)]
    threads.append(_thread(_work, shift, worker))
    for thread in threads:
        thread.start()
    try:
        everyone = [*annotators, worker]
        _wait(lambda: all(w.refusals >= 2 for w in everyone), 60, everyone, "a full disk")
        acknowledged_before = sum(len(w.acknowledged) for w in annotators)
        wal_full = (disk / "rlhf.db-wal").stat().st_size

        # While it is full: readable and sound; a submit is refused; a snapshot fails whole.
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with pytest.raises(DiskError, match=r"disk is full.*nothing was saved"):
            doras_submit()
        with pytest.raises(StoreError, match="cannot write the snapshot"):
            snapshot_to(path, disk / "backups" / "snap.db")
        assert list((disk / "backups").iterdir()) == []  # no half file left

        ballast.unlink()
        shift.space_back_at = time.monotonic()
        doras_ranking = doras_submit()  # the same answer, kept on her page, sent again
        _wait(lambda: all(w.done_after_space >= 3 for w in everyone), 60, everyone, "writes")
    finally:
        shift.stop.set()
        for thread in threads:
            thread.join(60)

    acknowledged = {k: v for w in annotators for k, v in w.acknowledged.items()}
    acknowledged[doras_ranking] = doras_answer
    stored = {
        r["id"]: (r["annotator_id"], r["comparison_id"], json.loads(r["ranks"]))
        for r in db["rankings"].rows
    }
    assert stored == acknowledged  # none lost, none stored unacknowledged
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    open_assignments = db["assignments"].count_where("closed_at IS NULL")
    assert db["assignments"].count_where("closed_at IS NOT NULL") == len(stored)
    assert open_assignments <= ANNOTATORS  # at most the item on each screen
    assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # not busy
    assert snapshot_to(path, disk / "backups" / "snap.db").is_file()
    recovery = max(w.first_done_after_space - shift.space_back_at for w in everyone)
    print(
        f"\nfull disk: {acknowledged_before} answers acknowledged before it filled, "
        f"{sum(w.refused for w in annotators)} submits and "
        f"{sum(w.refused_serving for w in annotators)} item claims refused with DiskError, "
        f"{worker.refused} worker passes refused; {len(stored)} acknowledged in all, 0 lost; "
        f"WAL {wal_full / 1024:.0f} KiB when full; integrity ok; every writer wrote again "
        f"{recovery * 1000:.0f} ms after the ballast went"
    )


def test_the_rank_page_says_the_disk_is_full_keeps_the_ranking_and_saves_it_later(
    data_dir: Path, disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLHF_LOOP_DATA_DIR", str(disk))
    db = open_db(disk / "rlhf.db")
    make_comparisons(db, 2)
    at = rank_page()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the submit's frames need new space
    ballast = fill_up(disk / "ballast")
    at.text_input(key="typed-1").input("1 2 2 3")
    at.button[0].click().run()
    said = at.error[0].value
    assert "The server's disk is full" in said and "nothing was saved" in said
    assert "kept on this page: submit it again" in said
    assert at.text_input(key="typed-1").value == "1 2 2 3"  # what the annotator typed stays
    assert db["rankings"].count == 0

    ballast.unlink()  # space is back: the same session, nothing restarted
    at.button[0].click().run()
    assert "Saved A > B = C > D" in at.success[0].value
    assert json.loads(db["rankings"].get(1)["ranks"]) == [1, 2, 2, 3]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_worker_waits_out_a_full_disk_and_samples_again_in_the_same_process(
    disk: Path, demo_model_path: Path
) -> None:
    """The real worker process, its database and its log on the disk that fills up while it
    samples: it neither dies nor loses its lease for good, and fills the queue again, as the
    same process, once the ballast is gone."""
    db = open_db(disk / "rlhf.db")
    add_texts(db, [f"What is {i} + {i}?" for i in range(200)])
    env = worker_env(
        disk,
        demo_model_path,
        k=2,
        max_new_tokens=4,
        queue_depth=400,
        sample_batch_prompts=2,
        lease_timeout_s=2.0,
    )
    with open(disk / "worker.log", "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "rlhf_loop", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: db["comparisons"].count >= 4, 120, "the worker to sample")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ballast = fill_up(disk / "ballast")
        full_since = time.monotonic()
        items_when_full = db["comparisons"].count
        # Longer than the lease timeout: its heartbeats and its batches are all refused.
        wait_for(lambda: time.monotonic() - full_since > 3.0, 10, "the full disk to last")
        assert worker.poll() is None, "the worker died on the full disk"
        assert db["comparisons"].count == items_when_full
        assert leases.live_holder(db, "worker", 2.0) is None  # its lease went stale meanwhile

        ballast.unlink()
        space_back = time.monotonic()
        wait_for(lambda: db["comparisons"].count > items_when_full, 60, "sampling to resume")
        resumed_s = time.monotonic() - space_back
        wait_for(lambda: leases.live_holder(db, "worker", 2.0) is not None, 10, "a heartbeat")
        assert leases.live_holder(db, "worker", 2.0)["pid"] == worker.pid  # the same process
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "Traceback" not in (disk / "worker.log").read_text()
    print(f"\nworker: sampling resumed {resumed_s:.1f} s after the ballast went, same pid")
