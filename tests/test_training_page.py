"""The Training page's view of issue 10 through AppTest: people's verdict on each policy
version, the operator's promote/reject of a candidate, the reward model's gate, the
over-optimisation warning and the adoption events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from app_helpers import operator_page
from store_helpers import fresh_db
from streamlit.testing.v1 import AppTest
from verdict_helpers import add_blind_rankings, add_chain, add_policy

from rlhf_loop.store.adoption import reject
from rlhf_loop.store.events import log_event
from rlhf_loop.store.versions import register_version

PAGE = "pages/training.py"
RATE = re.compile(r"^0\.\d\d \(0\.\d\d–[01]\.\d\d\)$")  # "0.74 (0.62–0.85)"


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The page's dataframe that has ``column``."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def verdicts(at: AppTest) -> pd.DataFrame:
    return table(at, "verdict vs parent").set_index("version")


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def events(db, kind: str) -> list[dict]:
    return [json.loads(e["payload"]) for e in db["events"].rows_where("kind = ?", [kind])]


def policy(db, version: int) -> dict:
    return next(db["model_versions"].rows_where("kind = 'policy' AND version = ?", [version]))


def test_a_clearly_better_candidate_shows_better_with_its_evidence_and_promote_makes_it_live(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    add_blind_rankings(db, (1, 0), 60, "mostly first")
    at = operator_page(PAGE)
    row = verdicts(at).loc[1]
    assert row["verdict vs parent"] == "better"
    assert RATE.match(row["win rate vs parent (95% interval)"])
    assert row["pairs vs parent"] == 240 and row["rankings vs parent"] == 60
    assert row["adoption"] == "candidate" and not row["live"]
    assert verdicts(at).loc[0, "win rate vs base (95% interval)"] == "(the base)"
    assert any("60 blind rankings so far" in c.value for c in at.caption)
    assert any("errs at most 5% of the time" in c.value for c in at.caption)
    # 45 of 60 rankings for v1, 15 against: z 4.43 against ±2.33·√(400 / 240) = ±3.00
    assert row["z vs parent (needed now)"] == "+4.43 (±3.00)"
    assert any("eval_share = 20%" in c.value for c in at.caption)
    shown = " ".join(t.value for t in at.text)
    assert "v1 serves only in blind items against the live version v0" in shown
    assert "over 240 blind pairs in 60 rankings; z +4.43 (±3.00); verdict: better" in shown

    button(at, "Promote v1").click().run()
    assert "Policy v1 promoted" in at.success[0].value
    assert policy(db, 1)["live"] == 1 and policy(db, 1)["adoption"] == "adopted"
    [promoted] = events(db, "policy_promoted")
    assert promoted["by"] == "olga" and promoted["version"] == 1
    assert promoted["pairs"] == 240 and promoted["rankings"] == 60
    assert promoted["verdict"] == "better"
    assert promoted["interval"][0] > 0.5
    log = table(at, "event")
    assert list(log["event"]) == ["promoted"] and list(log["by"]) == ["olga"]
    assert "over 240 pairs against v0" in log["win rate (95% interval)"][0]
    assert verdicts(at).loc[1, "live"]
    assert not any(b.label.startswith("Promote") for b in at.button)


def test_rejecting_a_candidate_without_evidence_marks_it_rejected(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None)
    add_policy(db, data_dir, 1, 0, "adopted", live=True)
    add_policy(db, data_dir, 2, 1, "candidate")
    at = operator_page(PAGE)
    row = verdicts(at).loc[2]
    # never compared blind: said in words, never 0.5 or 0
    assert row["win rate vs parent (95% interval)"] == "no evidence"
    assert row["win rate vs base (95% interval)"] == "no evidence"
    assert row["verdict vs parent"] == "no evidence yet" and row["pairs vs parent"] == 0
    assert any("allows 400 more blind pairs" in i.value for i in at.info)
    button(at, "Reject v2").click().run()
    assert "Policy v2 rejected" in at.success[0].value
    assert policy(db, 2)["adoption"] == "rejected" and policy(db, 1)["live"] == 1
    [rejected] = events(db, "policy_rejected")
    assert rejected["by"] == "olga" and rejected["pairs"] == 0 and rejected["win_rate"] is None
    assert any("No candidate awaits a verdict" in c.value for c in at.caption)


def test_a_stale_page_cannot_act_on_a_candidate_that_changed(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    at = operator_page(PAGE)
    assert any(b.label == "Promote v1" for b in at.button)
    reject(db, 1, "people", {})  # meanwhile people decided, and a new round made v2
    add_policy(db, data_dir, 2, 0, "candidate")
    button(at, "Promote v1").click().run()  # the click of the page drawn before
    assert "v1 is no longer the pending candidate (v2 is now" in at.error[0].value
    assert policy(db, 1)["live"] == 0 and policy(db, 1)["adoption"] == "rejected"
    assert policy(db, 2)["adoption"] == "candidate" and policy(db, 0)["live"] == 1
    assert events(db, "policy_promoted") == []
    assert any(b.label == "Promote v2" for b in at.button)  # the page now shows the new one


def test_a_candidate_undecided_within_the_budget_is_left_to_the_operator(data_dir: Path) -> None:
    (data_dir / "none.toml").write_text("eval_max_comparisons = 40\n")
    db = fresh_db(data_dir)
    add_policy(db, data_dir, 0, None, None, live=True)
    add_policy(db, data_dir, 1, 0, "candidate")
    add_blind_rankings(db, (1, 0), 30, "even")
    at = operator_page(PAGE)
    assert verdicts(at).loc[1, "verdict vs parent"] == "no evidence yet"
    assert RATE.match(verdicts(at).loc[1, "win rate vs parent (95% interval)"])
    [warning] = [w.value for w in at.warning if "People have not decided" in w.value]
    assert "within eval_max_comparisons = 40 blind pairs (120 so far" in warning
    assert "the decision is yours" in warning


def test_reward_versions_show_their_evidence_and_the_gate_reason(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    reason = (
        "held-out accuracy 0.55 (95% interval 0.40-0.70, 19 pairs) is not above chance; "
        "about 120 more rankings are likely needed"
    )
    gate = {"passed": False, "reason": reason, "rankings_needed": 120}
    metrics = {
        "pairwise_accuracy": 0.55,
        "accuracy_interval": [0.4, 0.7],
        "heldout_pairs": 19,
        "heldout_rankings": 6,
        "accuracy_evidence_enough": False,
        "ppo_gate": gate,
    }
    register_version(db, "reward", 1, data_dir / "r1", "demo", metrics)
    passed = {"passed": True, "reason": "held-out accuracy lies above chance", "rankings_needed": 0}
    good = metrics | {
        "pairwise_accuracy": 0.81,
        "accuracy_interval": [0.74, 0.87],
        "heldout_pairs": 310,
        "accuracy_evidence_enough": True,
        "ppo_gate": passed,
    }
    register_version(db, "reward", 2, data_dir / "r2", "demo", good)
    log_event(db, "ppo_gated", reward_version=1, **gate)
    at = operator_page(PAGE)
    rows = table(at, "PPO gate").set_index("version")
    assert rows.loc[1, "PPO gate"] == f"gated: {reason}"
    assert rows.loc[1, "evidence"] == "too few to mean anything"
    assert rows.loc[1, "accuracy 95% interval"] == "0.40–0.70"
    assert rows.loc[1, "held-out pairs"] == 19
    assert rows.loc[2, "PPO gate"] == "passed" and rows.loc[2, "evidence"] == "enough"
    log = table(at, "event")
    assert list(log["event"]) == ["PPO round gated"] and list(log["version"]) == ["reward v1"]
    assert list(log["detail"]) == [reason]
    assert any("skips the reward model's gate, and is safe" in c.value for c in at.caption)


def test_the_warning_shows_when_the_reward_rises_and_people_see_no_gain(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    stopped = {"step": 7, "kl": 6.4, "budget": 6.0, "updates_kept": 5}
    add_chain(
        db,
        data_dir,
        [0.1, 0.4, 0.9],
        lambda version: {
            "kl_after": {1: 1.0, 2: 2.5, 3: 5.0}[version],
            "reward_version": version,
            "eval_prompts": 16,
            "length_after": 20.0 + 10 * version,
            "repeated_ngrams_after": 0.05 * version,
            "length_correlation_after": 0.3 * version,
            "stopped_early": stopped if version == 3 else None,
        },
    )
    for version in (1, 2, 3):
        add_blind_rankings(db, (version, version - 1), 24, "even")
    at = operator_page(PAGE)
    [warning] = [w.value for w in at.warning if "over-optimisation" in w.value]
    assert "from version 1 to 3 the reward model's score rose by +0.800" in warning
    rows = table(at, "score~length Spearman").set_index("version")
    assert rows.loc[3, "stopped at KL budget"] == "yes" and rows.loc[3, "held-out prompts"] == 16
    assert rows.loc[3, "repeated 3-grams"] == "0.150"
    assert RATE.match(rows.loc[3, "human win rate vs base (95% interval)"])
    policies = table(at, "stopped early").set_index("version")
    assert policies.loc[3, "stopped early"].startswith("at step 7: KL 6.40 passed the budget 6.00")
    assert policies.loc[2, "stopped early"] == ""
    specs = [chart.proto.spec for chart in at.get("vega_lite_chart")]
    assert any("KL to the reference" in s and "human win rate vs base" in s for s in specs)
    assert any("policy version" in s and "reward-model score" in s for s in specs)
    assert any("different reward models" in c.value for c in at.caption)


def test_no_warning_while_people_prefer_each_new_version(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_chain(db, data_dir, [0.1, 0.4, 0.9])
    for version in (1, 2, 3):
        add_blind_rankings(db, (version, version - 1), 24, "mostly first")
    at = operator_page(PAGE)
    assert not [w for w in at.warning if "over-optimisation" in w.value]
    assert not any("different reward models" in c.value for c in at.caption)
