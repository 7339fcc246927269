"""Job rows: atomic claims, heartbeats, and retry after a dead worker (store level)."""

from pathlib import Path

from store_helpers import fresh_db

from rlhf_loop.store import jobs


def test_enqueue_does_not_pile_up_and_claims_are_exclusive(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    first = jobs.enqueue(db, "train_reward")
    assert jobs.enqueue(db, "train_reward") == first  # the button pressed twice
    job = jobs.claim(db, "worker-a", stale_after_s=30)
    assert job is not None and job.id == first and job.attempts == 1
    assert jobs.claim(db, "worker-b", stale_after_s=30) is None  # running with a fresh heartbeat
    assert jobs.beat(db, first, "worker-a", progress=0.5, message="epoch 1")
    assert not jobs.beat(db, first, "worker-b")  # not b's job
    jobs.record_metrics(db, first, 3, {"loss": 0.7, "nu": 1.0})
    jobs.finish(db, first, {"version": 1})
    row = db["jobs"].get(first)
    assert (row["status"], row["progress"], row["message"]) == ("done", 1.0, "done")
    assert {m["name"] for m in jobs.job_metrics(db, first)} == {"loss", "nu"}
    assert jobs.enqueue(db, "train_reward") != first  # a finished job does not block a new one


def test_a_dead_workers_job_is_retried_then_failed(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    job_id = jobs.enqueue(db, "train_reward")
    for attempt in (1, 2):
        job = jobs.claim(db, f"worker-{attempt}", stale_after_s=30, max_attempts=2)
        assert job.id == job_id and job.attempts == attempt
        db["jobs"].update(job_id, {"heartbeat_at": 0.0})  # the worker was SIGKILLed
    assert jobs.claim(db, "worker-3", stale_after_s=30, max_attempts=2) is None
    row = db["jobs"].get(job_id)
    assert row["status"] == "failed" and "died during all 2 attempts" in row["error"]


def test_a_job_abandoned_on_purpose_is_queued_again_without_counting_the_attempt(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path)
    job_id = jobs.enqueue(db, "train_reward")
    jobs.claim(db, "worker-a", stale_after_s=30)
    jobs.record_metrics(db, job_id, 1, {"loss": 0.7})
    assert not jobs.requeue(db, job_id, "worker-b")  # not b's job
    assert jobs.requeue(db, job_id, "worker-a")
    row = db["jobs"].get(job_id)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("queued", 0, None)
    assert jobs.job_metrics(db, job_id) == []  # the abandoned attempt's curve is gone
    job = jobs.claim(db, "worker-b", stale_after_s=30, max_attempts=1)
    assert job is not None and job.id == job_id and job.attempts == 1
    jobs.finish(db, job_id, {})
    assert not jobs.requeue(db, job_id, "worker-b")  # finished first: stays done
    assert db["jobs"].get(job_id)["status"] == "done"
