"""The Training page's rows for issue 10, without Streamlit: verdicts, the candidate and the
operator's decision on it, over-optimisation points and the warning's lineage, events, and the
reward/policy tables' evidence columns."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from store_helpers import fresh_db
from verdict_helpers import add_blind_rankings, add_chain, add_policy

from rlhf_loop.arena.sequential import SequentialEvidence
from rlhf_loop.config import Settings
from rlhf_loop.human_verdicts import Standing
from rlhf_loop.reports import (
    gate_text,
    policy_versions_table,
    retrain_text,
    reward_accuracy_points,
    reward_versions_table,
    stopped_early_text,
)
from rlhf_loop.reports_verdicts import (
    StaleDecision,
    adoption_events,
    candidate_view,
    decide_candidate,
    lineage,
    overoptimisation_check,
    overoptimisation_points,
    overoptimisation_table,
    rate_text,
    scored_by_several_reward_models,
    verdict_fingerprint,
    verdict_rows,
)
from rlhf_loop.store.adoption import reject
from rlhf_loop.store.events import log_event
from rlhf_loop.store.versions import register_version


def standing(
    version: int, parent: int | None, parent_pairs: int = 0, parent_rankings: int = 0, **fields
) -> Standing:
    """A standing with the given figures; pairs against the parent carry an even test (z 0)."""
    against = (
        SequentialEvidence(parent_rankings, parent_pairs, 0.0, 0.0, math.inf)
        if parent_pairs
        else None
    )
    defaults = {
        "adoption": None,
        "live": False,
        "win_vs_base": None,
        "win_vs_base_interval": None,
        "win_vs_parent": None,
        "win_vs_parent_interval": None,
        "pairs": 0,
        "against_parent": against,
        "verdict": "no evidence yet",
    }
    return Standing(version=version, parent=parent, **(defaults | fields))


def test_rate_text_says_no_evidence_in_words() -> None:
    assert rate_text(None, None) == "no evidence"
    assert rate_text(0.6234, (0.551, 0.689)) == "0.62 (0.55–0.69)"
    assert rate_text(0.5, None) == "0.50 (none)"


def test_verdict_rows_newest_first_with_the_base_and_missing_figures_named() -> None:
    rows = verdict_rows(
        [
            standing(0, None, live=True, pairs=80),
            standing(
                1,
                0,
                adoption="candidate",
                win_vs_base=0.71,
                win_vs_base_interval=(0.6, 0.8),
                win_vs_parent=0.71,
                win_vs_parent_interval=(0.6, 0.8),
                pairs=80,
                parent_pairs=80,
                parent_rankings=20,
                verdict="better",
            ),
            standing(2, 1, adoption="rejected"),
        ]
    )
    assert [r["version"] for r in rows] == [2, 1, 0]
    newest, candidate, base = rows
    assert newest["win rate vs base (95% interval)"] == "no evidence"
    assert newest["win rate vs parent (95% interval)"] == "no evidence"
    assert newest["parent"] == "v1" and newest["pairs vs parent"] == 0
    assert candidate["win rate vs parent (95% interval)"] == "0.71 (0.60–0.80)"
    assert candidate["verdict vs parent"] == "better" and candidate["pairs vs parent"] == 80
    assert candidate["rankings vs parent"] == 20
    assert base["adoption"] == "base" and base["verdict vs parent"] == "(the base)"
    assert base["win rate vs base (95% interval)"] == "(the base)" and base["live"]


def test_candidate_view_counts_the_budget_left_and_says_when_it_is_spent(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    settings = Settings(eval_max_comparisons=100)
    base = standing(0, None, live=True)
    view = candidate_view(
        db, settings, [base, standing(1, 0, adoption="candidate", parent_pairs=60)]
    )
    assert view is not None and view.version == 1 and view.live_version == 0
    assert view.comparisons_left == 40 and not view.undecided and view.parent_is_live
    spent = candidate_view(
        db, settings, [base, standing(1, 0, adoption="candidate", parent_pairs=120)]
    )
    assert spent.comparisons_left == 0 and spent.undecided
    assert spent.figures == {
        "win_rate": None,
        "interval": None,
        "pairs": 120,
        "rankings": 0,
        "against": 0,
        "z": 0.0,
        "z_needed": "inf",
        "verdict": "no evidence yet",
    }
    assert candidate_view(db, settings, [base]) is None  # registered after the standings


def test_decide_candidate_acts_only_on_the_candidate_shown(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    figures = {"win_rate": 0.7, "interval": [0.6, 0.8], "pairs": 80, "against": 0}
    with pytest.raises(ValueError, match="unknown action"):
        decide_candidate(db, "demo", 1, "approve", "olga", figures)
    with pytest.raises(StaleDecision, match="v2 is no longer the pending candidate"):
        decide_candidate(db, "demo", 2, "promote", "olga", figures)
    assert "promoted" in decide_candidate(db, "demo", 1, "promote", "olga", figures)
    rows = {r["version"]: r for r in db["model_versions"].rows_where("kind = 'policy'")}
    assert rows[1]["live"] == 1 and rows[1]["adoption"] == "adopted"
    with pytest.raises(StaleDecision, match="no candidate is pending"):
        decide_candidate(db, "demo", 1, "reject", "olga", figures)
    assert db["events"].count_where("kind = 'policy_rejected'") == 0


def test_a_promotion_refused_by_the_store_changes_nothing(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    (data_dir / "policy-v1").rmdir()  # its files are gone
    with pytest.raises(ValueError, match="files are missing"):
        decide_candidate(db, "demo", 1, "promote", "olga", {})
    rows = {r["version"]: r for r in db["model_versions"].rows_where("kind = 'policy'")}
    assert rows[1]["adoption"] == "candidate" and rows[0]["live"] == 1
    assert db["events"].count_where("kind = 'policy_promoted'") == 0


def test_the_fingerprint_changes_with_rankings_and_adoption(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    first = verdict_fingerprint(db, "demo")
    assert first[0] == (0, None)
    add_blind_rankings(db, (1, 0), 2, "first")
    second = verdict_fingerprint(db, "demo")
    assert second[0][0] == 2 and second != first
    reject(db, 1, "olga", {})
    assert verdict_fingerprint(db, "demo") != second


def test_overoptimisation_points_pair_the_proxy_with_the_gold(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_chain(db, data_dir, [0.1, 0.5, 0.9], lambda version: {"eval_prompts": 8})
    flat = [
        standing(0, None),
        *(
            standing(v, v - 1, win_vs_base=0.5, win_vs_base_interval=(0.4, 0.6), pairs=40)
            for v in (1, 2, 3)
        ),
    ]
    points = overoptimisation_points(db, "demo", flat)
    assert [p["version"] for p in points] == [0, 1, 2, 3]
    expected = {"reward": 0.9, "kl": 3.0, "win": 0.5, "low": 0.4, "high": 0.6, "pairs": 40}
    assert {k: points[3][k] for k in expected} == expected
    assert [p["version"] for p in lineage(points)] == [0, 1, 2, 3]
    assert "rose by +0.800" in overoptimisation_check(points)
    assert not scored_by_several_reward_models(points)
    table = overoptimisation_table(points)
    assert [r["version"] for r in table] == [3, 2, 1]  # the base has no round to show
    assert table[0]["human win rate vs base (95% interval)"] == "0.50 (0.40–0.60)"
    assert table[0]["mean length (tokens)"] == "not measured"
    rising = [
        standing(0, None),
        standing(1, 0, win_vs_base=0.55, win_vs_base_interval=(0.5, 0.6)),
        standing(2, 1, win_vs_base=0.65, win_vs_base_interval=(0.6, 0.7)),
        standing(3, 2, win_vs_base=0.8, win_vs_base_interval=(0.7, 0.9)),
    ]
    assert overoptimisation_check(overoptimisation_points(db, "demo", rising)) is None
    unjudged = overoptimisation_points(db, "demo", [])
    assert overoptimisation_check(unjudged) is None  # no human figures: silent, not alarmed
    assert overoptimisation_table(unjudged)[0]["human win rate vs base (95% interval)"] == (
        "no evidence"
    )


def test_the_lineage_follows_the_newest_version_past_a_side_branch(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_chain(db, data_dir, [0.1, 0.5], lambda v: {"reward_version": v, "eval_prompts": 8})
    add_policy(db, data_dir, 3, 1, "candidate", reward_after=0.2, reward_version=3)
    points = overoptimisation_points(db, "demo", [])
    assert [p["version"] for p in lineage(points)] == [0, 1, 3]
    assert scored_by_several_reward_models(points)


def test_adoption_events_carry_their_figures(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    log_event(db, "model_registered", model_kind="policy", version=1)  # not an adoption event
    log_event(db, "ppo_gated", reward_version=4, passed=False, reason="too few", rankings_needed=9)
    log_event(db, "candidate_undecided", version=2, win_rate=0.52, interval=[0.45, 0.6], pairs=400)
    log_event(
        db,
        "policy_rejected",
        version=3,
        by="people (auto rollback)",
        rolled_back_to=2,
        win_rate=0.3,
        interval=[0.2, 0.4],
        pairs=90,
        against=2,
    )
    log_event(db, "policy_rejected", version=5, by="superseded by v6")
    superseded, rolled_back, undecided, gated = adoption_events(db)
    assert superseded["win rate (95% interval)"] == "" and superseded["by"] == "superseded by v6"
    assert rolled_back["detail"] == "rolled back to v2"
    assert rolled_back["win rate (95% interval)"] == "0.30 (0.20–0.40) over 90 pairs against v2"
    assert undecided["event"] == "undecided: left to the operator" and undecided["by"] == "people"
    assert gated["version"] == "reward v4" and gated["detail"] == "too few"


def test_reward_rows_show_interval_evidence_and_gate(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    register_version(db, "reward", 1, data_dir / "r1", "demo", {"pairwise_accuracy": 0.9})
    metrics = {
        "pairwise_accuracy": 0.6,
        "accuracy_interval": [0.45, 0.74],
        "heldout_pairs": 40,
        "accuracy_evidence_enough": True,
        "ppo_gate": {"passed": False, "reason": "not above chance", "rankings_needed": 80},
    }
    register_version(db, "reward", 2, data_dir / "r2", "demo", metrics)
    new, old = reward_versions_table(db)
    assert new["accuracy 95% interval"] == "0.45–0.74" and new["held-out pairs"] == 40
    assert new["PPO gate"] == "gated: not above chance (about 80 more rankings)"
    assert new["evidence"] == "enough"
    assert old["evidence"] == "not measured" and old["PPO gate"] == "not recorded"
    assert old["accuracy 95% interval"] == "none"
    assert old["retrain"] == "full"  # trained before incremental retraining: always in full
    incremental = {"kind": "incremental", "started_from": 2, "new_rankings": 80}
    assert retrain_text({"retrain": incremental | {"replay_rankings": 300, "reason": ""}}) == (
        "incremental from v2: 80 new + 300 replayed"
    )
    full = {"kind": "full", "reason": "no reward model yet"}
    assert retrain_text({"retrain": full}) == "full: no reward model yet"
    assert reward_accuracy_points(db) == [
        {"version": 1, "accuracy": 0.9, "low": None, "high": None, "pairs": None},
        {"version": 2, "accuracy": 0.6, "low": 0.45, "high": 0.74, "pairs": 40},
    ]
    assert gate_text({"ppo_gate": {"passed": True, "reason": "ok", "rankings_needed": 0}}) == (
        "passed"
    )


def test_policy_rows_say_a_round_stopped_at_the_kl_budget(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None)
    stopped = {"step": 3, "kl": 7.25, "budget": 6.0, "updates_kept": 1}
    add_policy(db, data_dir, 1, 0, "candidate", stopped_early=stopped, eval_prompts=12)
    new, base = policy_versions_table(db)
    assert new["stopped early"] == "at step 3: KL 7.25 passed the budget 6.00; kept 1 updates"
    assert new["adoption"] == "candidate" and new["held-out prompts"] == 12
    assert base["stopped early"] == "" and base["adoption"] == ""
    assert stopped_early_text(None) == ""


def test_a_round_whose_reward_model_and_people_disagree_is_warned_about(data_dir: Path) -> None:
    """One version deep, no lineage to climb: the round's own reward model scored it above its
    parent (same model, same prompts), people prefer the parent."""
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(
        db, data_dir, 1, 0, "rejected", reward_before=0.2, reward_after=0.9, reward_version=1
    )
    people = [
        standing(0, None),
        standing(1, 0, win_vs_parent=0.3, win_vs_parent_interval=(0.22, 0.38), parent_pairs=80),
    ]
    warning = overoptimisation_check(overoptimisation_points(db, "demo", people))
    assert "disagree on version 1" in warning and "+0.700 above version 0" in warning
    undecided_people = [standing(0, None), standing(1, 0, win_vs_parent_interval=(0.4, 0.6))]
    assert overoptimisation_check(overoptimisation_points(db, "demo", undecided_people)) is None
