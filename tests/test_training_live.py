"""The Training page follows the database (issue 11, item 8): what redraws it, and a "Make live"
from a page drawn before the versions changed is refused. The redraw itself, which only a
browser shows, is in tests/test_browser_operator.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import operator_page
from store_helpers import fresh_db
from verdict_helpers import add_blind_rankings, add_policy

from rlhf_loop.reports_live import (
    VERDICT_REFRESH_S,
    StalePage,
    make_live_as_seen,
    page_state,
    policy_choice,
    redraw_needed,
)
from rlhf_loop.store.adoption import reject
from rlhf_loop.store.jobs import enqueue
from rlhf_loop.store.versions import register_version

BASE = "demo"


def live_versions(db) -> list[int]:
    return [r["version"] for r in db["model_versions"].rows_where("kind = 'policy' AND live = 1")]


def test_a_job_ending_or_a_version_appearing_redraws_at_once_progress_does_not(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path)
    add_policy(db, tmp_path, 0, None, None, live=True)
    drawn = page_state(db, BASE)
    assert not redraw_needed(drawn, page_state(db, BASE), 0.0)
    job = enqueue(db, "train_reward", {"reason": "operator"})
    queued = page_state(db, BASE)
    assert redraw_needed(drawn, queued, 0.0)
    db["jobs"].update(job, {"status": "running", "progress": 0.1})
    running = page_state(db, BASE)
    assert redraw_needed(queued, running, 0.0)
    db["jobs"].update(job, {"progress": 0.7, "message": "step 40"})
    assert not redraw_needed(running, page_state(db, BASE), 100.0)  # the fragment shows it
    register_version(db, "reward", 1, tmp_path / "r1", BASE, {"pairwise_accuracy": 0.8})
    assert redraw_needed(running, page_state(db, BASE), 0.0)
    registered = page_state(db, BASE)
    db["jobs"].update(job, {"status": "done"})
    assert redraw_needed(registered, page_state(db, BASE), 0.0)
    done = page_state(db, BASE)
    add_policy(db, tmp_path, 1, 0, "candidate")
    assert redraw_needed(done, page_state(db, BASE), 0.0)
    with_candidate = page_state(db, BASE)
    reject(db, 1, "olga", {})
    assert redraw_needed(with_candidate, page_state(db, BASE), 0.0)


def test_blind_rankings_alone_redraw_at_most_every_verdict_refresh(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    add_policy(db, tmp_path, 0, None, None, live=True)
    add_policy(db, tmp_path, 1, 0, "candidate")
    drawn = page_state(db, BASE)
    add_blind_rankings(db, (1, 0), 3, "even")
    now = page_state(db, BASE)
    assert now.structure == drawn.structure and now.verdict != drawn.verdict
    assert not redraw_needed(drawn, now, VERDICT_REFRESH_S - 1)
    assert redraw_needed(drawn, now, VERDICT_REFRESH_S)


def test_make_live_acts_only_on_the_versions_the_operator_saw(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    add_policy(db, tmp_path, 0, None, None, live=True)
    seen = policy_choice(db)
    assert seen == ((0, True, ""),)
    add_policy(db, tmp_path, 1, 0, "adopted", live=True)  # a round finished meanwhile
    with pytest.raises(StalePage) as refused:
        make_live_as_seen(db, 0, seen, "olga")
    assert "v1 was added; v1 is live now, not v0" in str(refused.value)
    assert "nothing was done" in str(refused.value) and live_versions(db) == [1]

    seen = policy_choice(db)
    assert make_live_as_seen(db, 0, seen, "olga").startswith("Policy v0 is live")
    assert live_versions(db) == [0]
    made = [json.loads(e["payload"]) for e in db["events"].rows_where("kind = 'policy_made_live'")]
    assert made == [{"by": "olga", "version": 0}]
    assert "already live" in make_live_as_seen(db, 0, policy_choice(db), "olga")
    add_policy(db, tmp_path, 2, 0, "candidate")
    seen = policy_choice(db)
    reject(db, 2, "people", {})
    with pytest.raises(StalePage, match="v2 is rejected now"):
        make_live_as_seen(db, 1, seen, "olga")


def test_a_stale_make_live_on_the_page_is_refused_and_the_page_shows_the_new_versions(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    at = operator_page("pages/training.py")
    assert any("No reward model yet" in c.value for c in at.caption)
    choice = next(s for s in at.selectbox if s.label.startswith("Make a version live"))
    assert choice.options == ["v0 (live)"] and choice.value == 0
    # Meanwhile the jobs the operator started finish: a reward model and a live v1.
    register_version(db, "reward", 1, data_dir / "r1", BASE, {"pairwise_accuracy": 0.8})
    add_policy(db, data_dir, 1, 0, "adopted", live=True)
    next(b for b in at.button if b.label == "Make live").click().run()  # the old page's click
    assert "The policy versions changed since this page was drawn" in at.error[0].value
    assert live_versions(db) == [1]  # no rollback to v0
    choice = next(s for s in at.selectbox if s.label.startswith("Make a version live"))
    assert choice.options == ["v1 (live)", "v0"] and choice.value == 1  # preset to the live one
    assert not any("No reward model yet" in c.value for c in at.caption)
    choice.select(0)
    next(b for b in at.button if b.label == "Make live").click().run()
    assert "Policy v0 is live" in at.success[0].value and live_versions(db) == [0]


def test_the_training_page_reads_policy_files_without_loading_transformers(
    tmp_path: Path,
) -> None:
    """The page thread must not import transformers: an export's download thread does, and
    the two raced (tests/test_browser_operator.py clicks both exports at once)."""
    import subprocess
    import sys

    from rlhf_loop.ppo.policy import META_FILE
    from rlhf_loop.reports import POLICY_META_FILE

    assert POLICY_META_FILE == META_FILE
    db = fresh_db(tmp_path)
    add_policy(db, tmp_path, 0, None, None, live=True)
    add_policy(db, tmp_path, 1, 0, "candidate")
    meta = {"metrics": {"parent_version": 0}, "samples_before": [], "samples_after": []}
    (tmp_path / "policy-v1" / META_FILE).write_text(json.dumps(meta))
    probe = (
        "import sys; from rlhf_loop.store.db import open_db; "
        "import rlhf_loop.reports as r, rlhf_loop.reports_live, rlhf_loop.reports_export; "
        f"print(r.policy_samples(open_db({str(tmp_path / 'rlhf.db')!r})), "
        "'transformers' in sys.modules, 'peft' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["{0:", "{},", "1:", "{}}", "False", "False"]
