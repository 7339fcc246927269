"""Versioned schema migrations, tracked in ``PRAGMA user_version``.

Each migration is a function applied once, in order, inside one write transaction, so a database
is always at a whole version. Append new migrations; never edit a released one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def _v1_labeling(db: sqlite_utils.Database) -> None:
    """Prompts, sampled generations, ranking tasks and the rankings with ties."""
    db["annotators"].create(
        {"id": int, "name": str, "role": str, "created_at": float},
        pk="id",
        not_null={"name", "role", "created_at"},
    )
    db["annotators"].create_index(["name"], unique=True)

    db["prompts"].create(
        {
            "id": int,
            "text": str,
            "text_hash": str,
            "label": str,
            "meta": str,
            "source": str,
            "created_at": float,
        },
        pk="id",
        not_null={"text", "text_hash", "created_at"},
    )
    db["prompts"].create_index(["text_hash"], unique=True)

    db["model_versions"].create(
        {
            "id": int,
            "kind": str,
            "version": int,
            "parent_id": int,
            "base_model": str,
            "path": str,
            "metrics": str,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("parent_id", "model_versions", "id")],
        not_null={"kind", "version", "base_model", "created_at"},
    )
    db["model_versions"].create_index(["kind", "version"], unique=True)

    db["generations"].create(
        {
            "id": int,
            "prompt_id": int,
            "policy_version": int,
            "text": str,
            "token_count": int,
            "finished": int,
            "params": str,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        not_null={"prompt_id", "policy_version", "text", "token_count", "finished", "params"},
    )
    db["generations"].create_index(["prompt_id"])

    db["comparisons"].create(
        {
            "id": int,
            "prompt_id": int,
            "policy_version": int,
            "k": int,
            "generation_ids": str,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        not_null={"prompt_id", "policy_version", "k", "generation_ids", "created_at"},
    )
    db["comparisons"].create_index(["prompt_id"])

    db["assignments"].create(
        {
            "id": int,
            "comparison_id": int,
            "annotator_id": int,
            "served_at": float,
            "closed_at": float,
        },
        pk="id",
        foreign_keys=[("comparison_id", "comparisons", "id"), ("annotator_id", "annotators", "id")],
        not_null={"comparison_id", "annotator_id", "served_at"},
    )
    db["assignments"].create_index(["comparison_id", "annotator_id"], unique=True)
    db["assignments"].create_index(["annotator_id", "closed_at"])

    db["rankings"].create(
        {
            "id": int,
            "comparison_id": int,
            "annotator_id": int,
            "status": str,
            "ranks": str,
            "reason": str,
            "seconds": float,
            "created_at": float,
            "retracted_at": float,
            "supersedes": int,
        },
        pk="id",
        foreign_keys=[
            ("comparison_id", "comparisons", "id"),
            ("annotator_id", "annotators", "id"),
            ("supersedes", "rankings", "id"),
        ],
        not_null={"comparison_id", "annotator_id", "status", "seconds", "created_at"},
    )
    # One live submission per annotator and task; a retracted one (undo) leaves room for the redo.
    # A partial index has no table-API form in sqlite-utils, hence the one SQL string.
    db.execute(
        "CREATE UNIQUE INDEX idx_rankings_live ON rankings(comparison_id, annotator_id) "
        "WHERE retracted_at IS NULL"
    )
    db["rankings"].create_index(["annotator_id", "created_at"])

    db["events"].create(
        {"id": int, "at": float, "kind": str, "annotator_id": int, "payload": str},
        pk="id",
        not_null={"at", "kind"},
    )

    db["leases"].create(
        {
            "name": str,
            "holder": str,
            "pid": int,
            "acquired_at": float,
            "heartbeat_at": float,
            "status": str,
            "progress": float,
        },
        pk="name",
        not_null={"holder", "pid", "acquired_at", "heartbeat_at"},
    )


def _v2_jobs(db: sqlite_utils.Database) -> None:
    """Worker jobs with their live metrics, and a serving priority for active selection."""
    db["jobs"].create(
        {
            "id": int,
            "kind": str,
            "status": str,
            "params": str,
            "attempts": int,
            "claimed_by": str,
            "heartbeat_at": float,
            "progress": float,
            "message": str,
            "result": str,
            "error": str,
            "created_at": float,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
        not_null={"kind", "status", "params", "attempts", "created_at"},
        defaults={"attempts": 0, "params": "{}"},
    )
    db["jobs"].create_index(["status", "id"])
    db["job_metrics"].create(
        {"job_id": int, "step": int, "name": str, "value": float, "at": float},
        foreign_keys=[("job_id", "jobs", "id")],
        not_null={"job_id", "step", "name", "value", "at"},
    )
    db["job_metrics"].create_index(["job_id", "name", "step"])
    db["comparisons"].add_column("priority", float, not_null_default=0.0)
    db["comparisons"].create_index(["priority"])


def _v3_live_policy(db: sqlite_utils.Database) -> None:
    """Which policy version the sampler serves: the newest, unless an operator rolled back."""
    db["model_versions"].add_column("live", int, not_null_default=0)
    db.execute(
        "UPDATE model_versions SET live = 1 WHERE kind = 'policy' AND version IN "
        "(SELECT max(version) FROM model_versions WHERE kind = 'policy' GROUP BY base_model)"
    )


def _v4_quality(db: sqlite_utils.Database) -> None:
    """Gold items (a known order to check annotators against), retired prompts, flag reviews,
    and annotators' invite keys."""
    # sha256 of an annotator's invite key (a random token, so no slow hash is needed).
    db["annotators"].add_column("key_hash", str)
    # JSON dense ranks of a gold item's responses; NULL for items sampled from the policy.
    db["comparisons"].add_column("gold_ranks", str)
    # The few gold items, found without scanning every comparison on each item served.
    db.execute("CREATE INDEX idx_comparisons_gold ON comparisons(id) WHERE gold_ranks IS NOT NULL")
    # A prompt an operator retired (e.g. after a flag): no longer sampled nor served.
    db["prompts"].add_column("retired_at", float)
    db["flag_reviews"].create(
        {
            "id": int,
            "ranking_id": int,
            "decision": str,
            "note": str,
            "reviewer": str,
            "at": float,
        },
        pk="id",
        foreign_keys=[("ranking_id", "rankings", "id")],
        not_null={"ranking_id", "decision", "reviewer", "at"},
    )
    db["flag_reviews"].create_index(["ranking_id"], unique=True)


def _v5_adoption(db: sqlite_utils.Database) -> None:
    """Policies judged by people before they serve: a candidate's adoption state, and the blind
    comparison items that mix two versions' responses."""
    # 'candidate' (shown only in blind items), 'adopted' or 'rejected'; NULL for versions made
    # before this migration, which were adopted by being made live.
    db["model_versions"].add_column("adoption", str)
    # JSON [a, b]: the two policy versions whose responses this item mixes; NULL otherwise.
    db["comparisons"].add_column("blind_versions", str)
    db.execute(
        "CREATE INDEX idx_comparisons_blind ON comparisons(id) WHERE blind_versions IS NOT NULL"
    )


def _v6_annotator_aids(db: sqlite_utils.Database) -> None:
    """What an annotator has beside the item: a free comment stored with each answer, and the
    operators' guidelines with a daily target. Every edit of the guidelines is a new row (the
    newest applies), so what annotators were told at the time of a ranking stays readable."""
    db["rankings"].add_column("comment", str)
    db["guidelines"].create(
        {"id": int, "text": str, "daily_target": int, "author": str, "created_at": float},
        pk="id",
        not_null={"text", "daily_target", "author", "created_at"},
    )


def _v7_simulated_annotators(db: sqlite_utils.Database) -> None:
    """Simulated annotators beside people: the background runs that hold them, which run each
    belongs to, and the operator's choice whether their rankings train and judge versions.

    A simulated annotator is a row of ``annotators`` with role 'simulated' (every ranking it
    gives is thereby simulated, with no flag on the ranking to forget); ``simulation_run`` names
    its run. No foreign key there: adding one to an existing table makes SQLite rebuild it, and
    ``annotators`` is referenced by every ranking.
    """
    db["simulation_runs"].create(
        {
            "id": int,
            "oracle": str,
            "annotators": int,
            "noise": float,
            "tie_threshold": float,
            "pace_s": float,
            "seed": int,
            # 'starting', 'running', 'stopped' or 'failed'; a live one beats 'heartbeat_at'.
            "state": str,
            "pid": int,
            "message": str,
            "started_by": str,
            "created_at": float,
            "heartbeat_at": float,
            "stop_requested_at": float,
            "ended_at": float,
        },
        pk="id",
        not_null={
            "oracle",
            "annotators",
            "noise",
            "tie_threshold",
            "pace_s",
            "seed",
            "state",
            "started_by",
            "created_at",
            "heartbeat_at",
        },
    )
    db["annotators"].add_column("simulation_run", int)
    # One row per change (the newest applies), like the guidelines: who opted in, and when.
    db["simulated_opt_in"].create(
        {"id": int, "included": int, "author": str, "created_at": float},
        pk="id",
        not_null={"included", "author", "created_at"},
    )


def _v8_demonstrations(db: sqlite_utils.Database) -> None:
    """Answers written by people (InstructGPT's demonstrations), from the Rank page or imported.

    A Rank-page demonstration answers its item through a row of ``rankings`` (status 'ranked'
    when the annotator also ranked the K responses, 'demonstrated' when not) named in
    ``ranking_id``, so double submits, undo, reopening and the queue's overlap count work as they
    do for rankings, and a demonstration is live exactly while that row is. An imported one has
    no ranking, annotator, item nor seconds. ``counts_as_ranking`` records what the page told the
    annotator when they wrote it (the setting ``demonstrations_count_as_rankings`` then): that the
    written answer also counts as a ranking above all K responses of the item.
    """
    db["demonstrations"].create(
        {
            "id": int,
            "prompt_id": int,
            "text": str,
            "annotator_id": int,
            "seconds": float,
            # The response the editor was prefilled with; NULL when it started empty.
            "generation_id": int,
            "ranking_id": int,
            "counts_as_ranking": int,
            # "rank page", or "import:<file name>".
            "source": str,
            "created_at": float,
        },
        pk="id",
        # Each names its table (sqlite-utils finds "prompts" for "prompt_id", and so on).
        foreign_keys=["prompt_id", "annotator_id", "generation_id", "ranking_id"],
        not_null={"prompt_id", "text", "counts_as_ranking", "source", "created_at"},
        defaults={"counts_as_ranking": 0},
    )
    db["demonstrations"].create_index(["prompt_id"])
    # One demonstration per answer row; imported ones (NULL) are not constrained by it.
    db["demonstrations"].create_index(["ranking_id"], unique=True)


def _v9_sign_in_limits(db: sqlite_utils.Database) -> None:
    """Operator sign-in attempts and the locks they led to, so a lock-out holds across browser
    sessions and restarts (``rlhf_loop.store.sign_in_limits``). ``client`` is the address
    Streamlit saw, NULL when it reports none (a loopback connection); ``ok`` is NULL while the
    password is being checked, then 0 or 1."""
    db["sign_in_attempts"].create(
        {"id": int, "name": str, "client": str, "at": float, "ok": int},
        pk="id",
        not_null={"name", "at"},
    )
    db["sign_in_attempts"].create_index(["name", "at"])
    db["sign_in_attempts"].create_index(["client", "at"])
    # One row per name and per client: how many locks in a row, and until when the last holds.
    db["sign_in_locks"].create(
        {"scope": str, "key": str, "strikes": int, "locked_until": float},
        pk=("scope", "key"),
        not_null={"strikes", "locked_until"},
    )


# A ranking row that holds one of its item's slots: live, and an answer (not a skip).
_HOLDS_SLOT = "{row}.retracted_at IS NULL AND {row}.status != 'skipped'"

# Kept by SQLite itself on every write to the tables, so no code path (submit, undo, a bulk
# retraction, a restore's migration) can leave them out of date.
_V10_TRIGGERS = [
    f"""CREATE TRIGGER rankings_slot_taken AFTER INSERT ON rankings
        WHEN {_HOLDS_SLOT.format(row="NEW")}
        BEGIN UPDATE comparisons SET live_answers = live_answers + 1
              WHERE id = NEW.comparison_id; END""",
    f"""CREATE TRIGGER rankings_slot_moved AFTER UPDATE ON rankings BEGIN
          UPDATE comparisons SET live_answers = live_answers - 1
          WHERE id = OLD.comparison_id AND {_HOLDS_SLOT.format(row="OLD")};
          UPDATE comparisons SET live_answers = live_answers + 1
          WHERE id = NEW.comparison_id AND {_HOLDS_SLOT.format(row="NEW")};
          INSERT INTO ranking_changes (comparison_id)
          SELECT OLD.comparison_id UNION SELECT NEW.comparison_id;
        END""",
    f"""CREATE TRIGGER rankings_slot_freed AFTER DELETE ON rankings BEGIN
          UPDATE comparisons SET live_answers = live_answers - 1
          WHERE id = OLD.comparison_id AND {_HOLDS_SLOT.format(row="OLD")};
          INSERT INTO ranking_changes (comparison_id) VALUES (OLD.comparison_id);
        END""",
    """CREATE TRIGGER prompts_retirement_changed AFTER UPDATE OF retired_at ON prompts
        WHEN OLD.retired_at IS NOT NEW.retired_at
        BEGIN INSERT INTO ranking_changes (prompt_id) VALUES (NEW.id); END""",
    """CREATE TRIGGER comparisons_item_changed AFTER UPDATE OF gold_ranks, prompt_id
        ON comparisons
        BEGIN INSERT INTO ranking_changes (comparison_id) VALUES (NEW.id); END""",
]


def _v10_store_at_scale(db: sqlite_utils.Database) -> None:
    """What serving an item and the Dashboard need to stay fast at 10^6 rankings
    (bench/store_scale.py), where every query that walked all comparisons or rankings took
    seconds.

    - ``comparisons.live_answers``: the rankings and flags holding a slot of the item (live, not
      skips), kept by triggers, indexed: the queue looks only at items with a slot left
      (``live_answers < overlap``), a few hundred, not at every item ever ranked.
    - ``ranking_changes``: every change to rankings already written (a retraction), to a prompt's
      retirement or to an item's gold order, as the items (or prompt) whose judgements changed,
      so the Dashboard's agreement figures (``store.agreement_cache``) redo just those items;
      new rankings need no row here, their ids are above the last one the figures saw.
    - indexes for the lookups that scanned: retired prompts, one annotator's retracted rankings
      of an item (submit looks for the answer it supersedes), an annotator's newest answer,
      flags, live answers by annotator, status and seconds (the Dashboard's counts and time
      figures), an annotator's assignments in serving order, restores (which make the figures
      start again).
    """
    db["comparisons"].add_column("live_answers", int, not_null_default=0)
    db.execute(
        "UPDATE comparisons SET live_answers = (SELECT count(*) FROM rankings r "
        f"WHERE r.comparison_id = comparisons.id AND {_HOLDS_SLOT.format(row='r')})"
    )
    db["comparisons"].create_index(["live_answers"])
    db["ranking_changes"].create({"id": int, "comparison_id": int, "prompt_id": int}, pk="id")
    for trigger in _V10_TRIGGERS:
        db.execute(trigger)
    # Partial indexes have no table-API form in sqlite-utils, hence SQL strings.
    for index in [
        "idx_prompts_retired ON prompts(id) WHERE retired_at IS NOT NULL",
        "idx_rankings_retracted ON rankings(comparison_id, annotator_id)"
        " WHERE retracted_at IS NOT NULL",
        "idx_rankings_flagged ON rankings(id) WHERE status = 'flagged'",
        # Live answers per annotator and status, with their seconds: the Dashboard's counts and
        # time figures read this index alone, not the rows. retracted_at, NULL throughout, makes
        # it cover queries that name it: SQLite 3.40 does not drop a term the index implies.
        "idx_rankings_answers ON rankings(annotator_id, status, seconds, retracted_at)"
        " WHERE retracted_at IS NULL",
        "idx_events_restored ON events(id) WHERE kind = 'database_restored'",
    ]:
        db.execute(f"CREATE INDEX {index}")
    db["rankings"].create_index(["annotator_id"])
    db["assignments"].create_index(["annotator_id"])


MIGRATIONS: list[Migration] = [
    _v1_labeling,
    _v2_jobs,
    _v3_live_policy,
    _v4_quality,
    _v5_adoption,
    _v6_annotator_aids,
    _v7_simulated_annotators,
    _v8_demonstrations,
    _v9_sign_in_limits,
    _v10_store_at_scale,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(
    db: sqlite_utils.Database,
    write_txn: Callable[[sqlite_utils.Database], AbstractContextManager[sqlite_utils.Database]],
) -> None:
    """Apply the migrations this file lacks; safe when several processes open it at once."""
    if schema_version(db) == SCHEMA_VERSION:
        return
    with write_txn(db):
        current = schema_version(db)  # re-read under the write lock: another process may have won
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema v{current} is newer than this code (v{SCHEMA_VERSION}); "
                "upgrade rlhf-loop"
            )
        for version in range(current, SCHEMA_VERSION):
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
