"""Gold items (parsed, served one in every n, kept out of training) and flag review (dismiss, or
retire the prompt out of sampling, serving and training), through the store and the pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import as_read, operator_page
from store_helpers import fresh_db, make_comparisons

from rlhf_loop.export import ranking_records
from rlhf_loop.gold_import import GoldImportError, GoldItem, parse_gold_file
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.flags import ReviewError, flag_counts, open_flags, review_flag
from rlhf_loop.store.generations import prompts_to_sample
from rlhf_loop.store.gold import add_gold_items, recount_gold_tokens
from rlhf_loop.store.quality import annotator_report
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import free_slots, next_task, tasks_left_for

SCRIPT = "<script>alert('x')</script>"


def gold_line(prompt: str, ranks: object, responses: object = None) -> str:
    responses = responses if responses is not None else [f"{prompt} answer {i}" for i in range(3)]
    return json.dumps({"prompt": prompt, "responses": responses, "ranks": ranks})


def test_gold_file_parses_with_ties_and_dense_ranks() -> None:
    data = gold_line("two plus two?", [1, 3, 3]) + "\n\n" + gold_line("capital?", [2, 1, 3])
    items = parse_gold_file("g.jsonl", data.encode(), 1000)
    assert [(i.prompt, i.ranks, i.line) for i in items] == [
        ("two plus two?", [1, 2, 2], 1),
        ("capital?", [2, 1, 3], 3),
    ]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("g.csv", "x", "not a .jsonl file"),
        ("g.jsonl", "", "no gold items"),
        ("g.jsonl", gold_line("p", [1, 1, 1]), "line 1: the ranks are all tied"),
        ("g.jsonl", gold_line("p", [1, 2]), "line 1: 'ranks': expected a rank for each of the 3"),
        ("g.jsonl", gold_line("p", [1, 2, 7]), "rank must be a whole number from 1 to 3"),
        ("g.jsonl", gold_line("p", "1 2 3"), "'ranks' must be a list of numbers, found text"),
        ("g.jsonl", gold_line("p", [1], ["only one"]), "2 to 9 responses, found 1"),
        ("g.jsonl", gold_line("p", [1, 2], ["a", 5]), "response 2 must be text, found a number"),
        ("g.jsonl", gold_line(" ", [1, 2, 3]), "'prompt' is empty"),
        ("g.jsonl", f"{gold_line('p', [1, 2, 3])}\n{gold_line('p', [3, 2, 1])}", "on line 1"),
        ("g.jsonl", '{"prompt": "p", "responses": [', "line 1: not valid JSON"),
        ("g.jsonl", "\ufeff[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_gold_files_are_refused_with_the_line(name: str, data: str, message: str) -> None:
    with pytest.raises(GoldImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_gold_file(name, data.encode(), 1000)


def _gold(db, n: int) -> None:
    items = [GoldItem(f"gold prompt {i}", ["good", "fine", "bad"], [1, 2, 3], i) for i in range(n)]
    assert add_gold_items(db, items, "gold:test").added == n


def _answer(db, who: int, ranks_for_gold: list[int] | None = None, gold_every: int = 3) -> dict:
    task = next_task(db, who, overlap=2, assignment_timeout_s=600, gold_every=gold_every)
    gold = db["comparisons"].get(task.comparison_id)["gold_ranks"]
    ranks = ranks_for_gold if gold and ranks_for_gold else list(range(1, task.k + 1))
    submit(db, who, task.comparison_id, "ranked", ranks)
    return {"comparison": task.comparison_id, "gold": gold is not None, "prompt": task.prompt}


def test_gold_items_come_one_in_every_n_once_each_and_stay_out_of_training(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 12, k=3)
    _gold(db, 2)
    slots_before = free_slots(db, overlap=2, assignment_timeout_s=600)
    assert slots_before == 24  # gold items take no policy slot: the sampler does not top them up
    ada, bob = annotator_id(db, "ada"), annotator_id(db, "bob")
    ada_seen = [_answer(db, ada, ranks_for_gold=[1, 2, 3]) for _ in range(9)]
    bob_seen = [_answer(db, bob, ranks_for_gold=[3, 2, 1]) for _ in range(9)]
    for seen in (ada_seen, bob_seen):
        assert [s["gold"] for s in seen] == [False, False, True] * 2 + [False] * 3  # 2 golds only
        assert len({s["comparison"] for s in seen}) == 9
    assert tasks_left_for(db, ada, 2, 600) == 12 - 7  # gold items are not in the queue figure
    # No gold prompt is sampled from the policy, and no answer to a gold item is training data.
    sampled = {text for _, text in prompts_to_sample(db, 0, 100)}
    assert not any(text.startswith("gold prompt") for text in sampled)
    records = list(ranking_records(db))
    assert len(records) == 14 and not any(r["prompt"].startswith("gold") for r in records)
    report = {row["annotator"]: row for row in annotator_report(db)}
    assert report["ada"]["gold_items"] == 2 and report["ada"]["gold_tau"] == 1.0
    assert report["bob"]["gold_tau"] == -1.0 and report["bob"]["gold_pair_accuracy"] == 0.0


def test_a_retired_gold_prompt_is_no_longer_served(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 3, k=3)
    _gold(db, 1)
    ada = annotator_id(db, "ada")
    gold = next_task(db, ada, overlap=2, assignment_timeout_s=600, gold_every=1)
    assert db["comparisons"].get(gold.comparison_id)["gold_ranks"] is not None
    flag = submit(db, ada, gold.comparison_id, "flagged", reason="Prompt is broken.")
    review_flag(db, flag, "retired_prompt", "olga")
    bob = annotator_id(db, "bob")
    served = next_task(db, bob, overlap=2, assignment_timeout_s=600, gold_every=1)
    assert db["comparisons"].get(served.comparison_id)["gold_ranks"] is None


def test_gold_import_twice_keeps_the_first_known_order(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    _gold(db, 1)
    again = add_gold_items(db, [GoldItem("gold prompt 0", ["x", "y"], [2, 1], 1)], "gold:again")
    assert (again.added, again.already_present) == (0, 1)
    assert json.loads(next(db["comparisons"].rows)["gold_ranks"]) == [1, 2, 3]


def test_gold_token_estimates_are_recounted_once(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    _gold(db, 2)
    assert recount_gold_tokens(db, len) == 6  # 2 items x 3 responses
    assert recount_gold_tokens(db, lambda text: 0) == 0  # already exact: nothing to do
    assert sorted(g["token_count"] for g in db["generations"].rows) == [3, 3, 4, 4, 4, 4]


def _flag(db, who: str = "ada", reason: str = "Prompt is broken. " + SCRIPT) -> int:
    person = annotator_id(db, who)
    task = next_task(db, person, overlap=1, assignment_timeout_s=600)
    return submit(db, person, task.comparison_id, "flagged", reason=reason)


def test_retiring_a_flagged_prompt_takes_it_out_of_sampling_serving_and_training(
    tmp_path: Path,
) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 2, k=3)
    flagged = _flag(db)
    retired_prompt = db["comparisons"].get(db["rankings"].get(flagged)["comparison_id"])
    # Another comparison of the same prompt, already ranked, and one not yet served.
    other = annotator_id(db, "bob")
    task = next_task(db, other, overlap=1, assignment_timeout_s=600)
    submit(db, other, task.comparison_id, "ranked", [1, 2, 3])
    assert [f["ranking_id"] for f in open_flags(db)] == [flagged]
    assert open_flags(db)[0]["reason"].endswith(SCRIPT)

    review_flag(db, flagged, "retired_prompt", "olga", "broken")
    assert flag_counts(db) == {"open": 0, "reviewed": 1}
    with pytest.raises(ReviewError, match="already reviewed"):
        review_flag(db, flagged, "dismissed", "olga")
    pid = retired_prompt["prompt_id"]
    assert db["prompts"].get(pid)["retired_at"] is not None
    assert pid not in {p for p, _ in prompts_to_sample(db, 0, 100)}
    assert db["rankings"].get(flagged)["status"] == "flagged"  # the flag row itself stays
    assert len(list(ranking_records(db))) == 1  # bob's ranking of the other prompt only


def test_dismissing_keeps_the_prompt(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 1, k=3)
    flagged = _flag(db)
    review_flag(db, flagged, "dismissed", "olga")
    assert all(p["retired_at"] is None for p in db["prompts"].rows)
    with pytest.raises(ReviewError, match="no flag"):
        review_flag(db, 999, "dismissed", "olga")


def test_data_page_imports_gold_items_and_refuses_a_bad_file_whole(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    at = operator_page("pages/data.py")
    bad = gold_line("a", [1, 2, 3]) + "\n" + gold_line("b", [1, 1, 1])
    at.file_uploader[1].set_value(("g.jsonl", bad.encode(), "application/jsonl"))
    next(b for b in at.button if b.label == "Import gold file").click().run()
    assert "line 2: the ranks are all tied" in as_read(at.error[0].value)
    assert db["comparisons"].count == 0
    good = gold_line(SCRIPT, [1, 2, 3]) + "\n" + gold_line("b", [2, 1, 1])
    at.file_uploader[1].set_value(("g.jsonl", good.encode(), "application/jsonl"))
    next(b for b in at.button if b.label == "Import gold file").click().run()
    assert "2 gold item(s) added" in at.success[0].value
    assert db["comparisons"].count_where("gold_ranks IS NOT NULL") == 2


def test_dashboard_shows_agreement_and_reviews_a_flag_as_plain_text(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 4, k=3)
    for name, ranks in (
        ("ada", [1, 2, 3]),
        ("bob", [1, 2, 3]),
        ("cal", [1, 2, 3]),
        ("cy", [3, 2, 1]),
    ):
        person = annotator_id(db, name)
        for _ in range(2):
            task = next_task(db, person, overlap=4, assignment_timeout_s=600)
            submit(db, person, task.comparison_id, "ranked", ranks)
    flagged = _flag(db, "dee")
    at = operator_page("pages/dashboard.py")
    assert not at.exception
    table = next(d.value for d in at.dataframe if "agreement_tau" in d.value.columns)
    tau = dict(zip(table["annotator"], table["agreement_tau"], strict=True))
    assert tau["ada"] > 0 > tau["cy"]
    assert f"Prompt is broken. {SCRIPT}" in [t.value for t in at.text]  # the reason, as text
    next(b for b in at.button if b.label == "Retire the prompt").click().run()
    review = next(db["flag_reviews"].rows)
    assert (review["ranking_id"], review["decision"], review["reviewer"]) == (
        flagged,
        "retired_prompt",
        "olga",
    )
    assert "Nothing flagged is waiting." in [t.value for t in at.text]
