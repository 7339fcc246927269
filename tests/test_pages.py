"""The pages through AppTest: ranking with ties, refusals, skip/undo/flag, import, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from app_helpers import operator_page, rank_page
from store_helpers import add_texts, fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.generations import Sample, add_comparisons, live_policy_version
from rlhf_loop.store.versions import register_version

SCRIPT = "<script>alert('x')</script>"


def shown_texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def test_name_form_puts_the_annotator_in_the_url(data_dir: Path) -> None:
    at = rank_page(annotator=None)
    at.text_input[0].input("   ")
    at.button[0].click().run()
    assert "enter a name" in at.error[0].value
    at.text_input[0].input("ada")
    at.button[0].click().run()
    assert at.query_params["annotator"] == "ada"


def test_rank_with_a_tie_by_typing(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    at = rank_page()
    first_prompt = shown_texts(at)[1]  # after the annotator's name
    assert first_prompt.startswith("prompt ")
    at.text_input(key="typed-1").input("1 1 2 3")
    at.button[0].click().run()  # the form's submit button: Enter in the field does the same
    row = db["rankings"].get(1)
    assert json.loads(row["ranks"]) == [1, 1, 2, 3] and row["status"] == "ranked"
    assert "Saved A = B > C > D" in at.success[0].value
    assert shown_texts(at)[1] != first_prompt  # the next item is on screen
    assert at.metric[0].value == "1"


def test_rank_by_picking_and_a_missing_rank_is_refused(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 1, k=3)
    at = rank_page()
    at.segmented_control(key="pick-1-0").set_value(2)
    at.segmented_control(key="pick-1-2").set_value(1)
    at.button[0].click().run()
    assert "B has no rank" in at.error[0].value
    assert db["rankings"].count == 0
    at.segmented_control(key="pick-1-1").set_value(2)
    at.button[0].click().run()
    assert json.loads(db["rankings"].get(1)["ranks"]) == [2, 2, 1]


def test_html_in_prompts_and_responses_is_shown_as_text(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    add_texts(db, [SCRIPT])
    version = live_policy_version(db, "fixed")
    add_comparisons(
        db, version, [1], [[Sample(SCRIPT, 3, True), Sample("<b>bold</b>", 3, True)]], {}
    )
    at = rank_page()
    assert SCRIPT in shown_texts(at) and "<b>bold</b>" in shown_texts(at)
    assert not any("<script>" in m.value for m in at.markdown)
    # The only HTML is the page's own focus script, which carries no user text.
    assert [h.proto.body.startswith("<script>") for h in at.get("html")] == [True]
    assert not any("bold" in h.proto.body or "alert" in h.proto.body for h in at.get("html"))


def test_skip_then_undo_brings_the_item_back(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    at = rank_page()
    first = shown_texts(at)[1]
    next(b for b in at.button if b.label == "Skip").click().run()
    assert shown_texts(at)[1] != first
    assert db["rankings"].get(1)["status"] == "skipped"
    next(b for b in at.button if b.label == "Undo last submission").click().run()
    assert shown_texts(at)[1] == first
    assert db["rankings"].get(1)["retracted_at"] is not None


def test_flag_needs_no_ranking(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 1)
    at = rank_page()
    at.selectbox[0].select("All responses are bad")
    next(b for b in at.button if b.label == "Flag this item").click().run()
    row = db["rankings"].get(1)
    assert row["status"] == "flagged" and row["reason"].startswith("All responses are bad")


def test_a_reload_shows_the_same_item_and_a_stale_double_submit_is_refused(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 3)
    tab1, tab2 = rank_page(), rank_page()  # one annotator, the page open twice (or reloaded)
    assert shown_texts(tab1)[1] == shown_texts(tab2)[1]
    tab1.text_input(key="typed-1").input("1234")
    tab1.button[0].click().run()
    tab2.text_input(key="typed-1").input("4321")
    tab2.button[0].click().run()
    assert "first answer was kept" in tab2.warning[0].value
    assert db["rankings"].count == 1 and json.loads(db["rankings"].get(1)["ranks"]) == [1, 2, 3, 4]


def test_empty_queue_says_so(data_dir: Path) -> None:
    fresh_db(data_dir)
    at = rank_page()
    messages = [i.value for i in at.info]
    assert "No items ready yet" in messages[0]
    assert "start one with: python -m rlhf_loop worker" in messages[1]


def test_data_page_imports_and_refuses_a_malformed_file_whole(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    at = operator_page("pages/data.py")
    at.file_uploader[0].set_value(("p.jsonl", b'{"prompt": "a"}\n{"prompt": 3}\n', "text/plain"))
    at.button[0].click().run()
    assert "line 2" in at.error[0].value and "Nothing was imported" in at.error[0].value
    assert db["prompts"].count == 0
    at.file_uploader[0].set_value(("p.txt", b"a\nb\na\n\n" + SCRIPT.encode(), "text/plain"))
    at.button[0].click().run()
    assert "3 prompt(s) added" in at.success[0].value and "duplicate" in at.success[0].value
    assert db["prompts"].count == 3


def test_data_page_counts_and_offers_its_exports(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    annotator_id(db, "ada")
    at = operator_page("pages/data.py")
    # prompts, responses, annotators, rankings, demonstrations
    assert [m.value for m in at.metric] == ["2", "8", "2", "0", "0"]
    assert [b.label for b in at.get("download_button")] == [
        "Full rankings (JSONL)",
        "Chosen/rejected pairs for TRL (JSONL)",
        "Demonstrations for TRL's SFT (JSONL)",
    ]


def test_training_page_queues_a_retrain_once_and_lists_versions(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    at = operator_page("pages/training.py")
    assert any("No reward model yet" in c.value for c in at.caption)
    button = next(b for b in at.button if b.label == "Train reward model now")
    button.click().run()
    next(b for b in at.button if b.label == "Train reward model now").click().run()
    assert [(j["kind"], j["status"]) for j in db["jobs"].rows] == [("train_reward", "queued")]
    next(b for b in at.button if b.label == "Run a PPO round now").click().run()
    assert [j["kind"] for j in db["jobs"].rows] == ["train_reward", "ppo_round"]
    register_version(db, "reward", 1, data_dir / "v1", "demo", {"pairwise_accuracy": 0.9})
    at.run()
    versions = next(d.value for d in at.dataframe if "pairwise accuracy" in d.value.columns)
    assert list(versions["version"]) == [1] and list(versions["pairwise accuracy"]) == [0.9]


def test_a_locked_database_refuses_the_submit_and_keeps_the_typed_ranking(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 2)
    monkeypatch.setattr("rlhf_loop.store.db.BUSY_TIMEOUT_S", 0.2)
    at = rank_page()
    blocker = sqlite3.connect(data_dir / "rlhf.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    at.text_input(key="typed-1").input("1 2 2 3")
    at.button[0].click().run()
    assert "database is busy" in at.error[0].value
    blocker.execute("COMMIT")
    assert db["rankings"].count == 0
    assert at.text_input(key="typed-1").value == "1 2 2 3"  # nothing the annotator typed is lost
    at.button[0].click().run()
    assert json.loads(db["rankings"].get(1)["ranks"]) == [1, 2, 2, 3]


def test_training_page_compares_policy_versions_and_refuses_a_rollback_to_missing_files(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    base = register_version(db, "policy", 0, None, "demo", {}, live=True)
    for version, answer in ((1, "It is 4."), (2, "Four, I think.")):
        path = data_dir / f"v{version}"
        path.mkdir()
        meta = {
            "metrics": {"parent_version": version - 1},
            "samples_before": [{"prompt": "What is 2 + 2?", "response": "<b>2</b>"}],
            "samples_after": [{"prompt": "What is 2 + 2?", "response": answer}],
        }
        (path / "policy_meta.json").write_text(json.dumps(meta))
        register_version(db, "policy", version, path, "demo", meta["metrics"], base, live=True)
    at = operator_page("pages/training.py")
    assert "Side by side" in [h.value for h in at.subheader]
    texts = [t.value for t in at.text]
    assert "It is 4." in texts and "Four, I think." in texts  # v1 beside v2, as plain text
    (data_dir / "v1" / "policy_meta.json").unlink()
    (data_dir / "v1").rmdir()
    rollback = next(s for s in at.selectbox if s.label.startswith("Make a version live"))
    rollback.select(1)
    next(b for b in at.button if b.label == "Make live").click().run()
    assert "files are missing" in at.error[0].value
    assert [r["version"] for r in db["model_versions"].rows_where("live = 1")] == [2]


def test_settings_page_snapshot_then_restore_needs_a_tick_and_brings_the_data_back(
    data_dir: Path,
) -> None:
    from rlhf_loop.store.backup import snapshot_bytes

    db = fresh_db(data_dir)
    make_comparisons(db, 3)
    snapshot = snapshot_bytes(data_dir / "rlhf.db")
    make_comparisons(db, 2)  # made after the snapshot: the restore takes it away
    at = operator_page("pages/settings.py")
    assert [b.label for b in at.get("download_button")] == ["Download a snapshot"]
    at.file_uploader[0].set_value(("backup.db", snapshot, "application/vnd.sqlite3"))
    next(b for b in at.button if b.label == "Restore").click().run()
    assert "Tick the box" in at.error[0].value and db["comparisons"].count == 5
    at.file_uploader[0].set_value(("backup.db", snapshot, "application/vnd.sqlite3"))
    at.checkbox[0].check()
    next(b for b in at.button if b.label == "Restore").click().run()
    assert "Database restored" in at.success[0].value
    assert db["comparisons"].count == 3
    at.file_uploader[0].set_value(("junk.db", b"not a database", "application/vnd.sqlite3"))
    at.checkbox[0].check()
    next(b for b in at.button if b.label == "Restore").click().run()
    assert "Nothing was changed" in at.error[0].value and db["comparisons"].count == 3


def test_a_worker_failure_is_detailed_to_operators_only(data_dir: Path) -> None:
    from rlhf_loop.store.events import log_event
    from rlhf_loop.worker import FAILED_EVENT

    db = fresh_db(data_dir)
    secret = "ModelLoadError: cannot read /srv/models/private-checkpoint"
    log_event(db, FAILED_EVENT, error=secret)
    annotator = rank_page()
    assert "please tell an operator" in annotator.error[0].value
    assert secret not in [t.value for t in annotator.text]
    operator = operator_page("pages/training.py")
    assert secret in [t.value for t in operator.text]


def test_a_file_name_and_quoted_content_in_a_message_stay_plain_text(data_dir: Path) -> None:
    """Message boxes render Markdown: an upload's name and a quoted label are user text."""
    fresh_db(data_dir)
    at = operator_page("pages/data.py")
    name = "**[win](http://x.example)**.jsonl"
    at.file_uploader[0].set_value((name, b'{"prompt": "a", "label": "_hi_"}\n', "text/plain"))
    at.button[0].click().run()
    shown = at.error[0].value
    assert r"\*\*\[win\]\(http\://x\.example\)\*\*\.jsonl" in shown
    assert r"\_hi\_" in shown


def test_markdown_escaped_reads_back_as_typed() -> None:
    from rlhf_loop.plain_text import markdown_escaped

    assert markdown_escaped("a*b_c [d](e) `f` #g :material/x: $y$") == (
        r"a\*b\_c \[d\]\(e\) \`f\` \#g \:material/x\: \$y\$"
    )
    assert markdown_escaped("plain words") == "plain words"
