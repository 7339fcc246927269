"""Simulated annotators: oracles score what they claim, ranks carry ties, noise degrades agreement
measurably, and annotation goes through the real store like a person's."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from rlhf_loop.ranking import validate_ranks
from rlhf_loop.simulate import (
    ArithmeticOracle,
    CombinedOracle,
    KeywordOracle,
    LengthOracle,
    Oracle,
    SimulatedAnnotator,
    agreement_counts,
    agreement_with_oracle,
    annotate,
    held_out_score,
    ranks_with_ties,
)
from tests.store_helpers import fresh_db, make_comparisons

ARITH = ArithmeticOracle()


# --- ArithmeticOracle -------------------------------------------------------------------------


def test_right_result_beats_wrong_beats_no_number() -> None:
    prompt = "What is 7 + 5?"
    right = ARITH.score(prompt, "7 + 5 = 12.")
    assert right == ARITH.score(prompt, "The answer is 12. I hope this helps.")
    assert right > ARITH.score(prompt, "I think it is 13.") > ARITH.score(prompt, "No idea.")


@pytest.mark.parametrize(
    ("prompt", "right", "wrong"),
    [
        ("What is 9 - 4?", "9 - 4 = 5.", "9 - 4 = 6."),
        ("What is 3 - 8?", "It is -5.", "It is 5."),
        ("What is 3 * 4?", "3 * 4 is 12.", "3 * 4 is 7."),
        ("What is 7 * 1?", "7.", "7 * 1 = 8."),  # the echoed operand 7 is not an answer
        ("what is 2+2 ?", "4", "22"),
    ],
)
def test_minus_and_times(prompt: str, right: str, wrong: str) -> None:
    assert ARITH.score(prompt, right) == ARITH.correct
    assert ARITH.score(prompt, wrong) == ARITH.wrong


def test_listing_candidates_does_not_pay() -> None:
    prompt = "What is 7 + 5?"
    assert ARITH.wrong < ARITH.score(prompt, "It is 11 or 12 or 13.") < ARITH.correct


@pytest.mark.parametrize(
    "text",
    ["", "   ", "<script>alert(1)</script>", "😀 ünïcödé ٣ 中文", "What is 1e999 + ?", "\x00"],
)
def test_arbitrary_text_never_crashes(text: str) -> None:
    for prompt, response in [(text, text), ("What is 7 + 5?", text), (text, "12")]:
        assert math.isfinite(ARITH.score(prompt, response))
    assert ARITH.score("What is 7 + 5?", "") == ARITH.no_answer


def test_huge_operands_are_exact() -> None:
    a = 10**30
    assert ARITH.score(f"What is {a} * {a}?", f"{a * a}") == ARITH.correct


def test_non_arithmetic_prompts_are_neutral_with_mild_length_preference() -> None:
    prompt = "Write a short sentence about the sea."
    near = ARITH.score(prompt, "The sea is blue and deep and calm and very wide today.")
    far = ARITH.score(prompt, "Blue.")
    assert ARITH.wrong < far < near <= ARITH.neutral < ARITH.correct


# --- Other oracles ----------------------------------------------------------------------------


def test_length_keyword_and_combined_oracles() -> None:
    words = LengthOracle(target_words=3)
    assert words.score("p", "one two three") == 0
    assert words.score("p", "one") == -2 == words.score("p", "a b c d e")
    tokens = LengthOracle(target_tokens=4)
    assert tokens.score("p", "It is 12.") == 0  # It, is, 12, .
    assert LengthOracle(target_tokens=2, count_tokens=len).score("p", "abcd") == -2
    with pytest.raises(ValueError):
        LengthOracle()
    keyword = KeywordOracle("Blue")
    assert keyword.score("p", "the sky is BLUE") == 1 and keyword.score("p", "green") == 0
    combined = CombinedOracle({ARITH: 1.0, LengthOracle(target_words=1): 0.1})
    prompt = "What is 7 + 5?"
    assert combined.score(prompt, "12.") > combined.score(prompt, "The answer is 12.")
    assert combined.score(prompt, "The answer is 12.") > combined.score(prompt, "13.")
    assert CombinedOracle([(keyword, 2.0), (keyword, 1.0)]).score("p", "blue") == 3.0
    assert all(isinstance(o, Oracle) for o in [ARITH, words, keyword, combined])


# --- Ranking ----------------------------------------------------------------------------------


def test_ranks_with_ties_chains_and_dense() -> None:
    assert ranks_with_ties([0.2, 1.0, 0.5], 0.0) == [3, 1, 2]
    assert ranks_with_ties([1.0, 0.9, 0.8, 0.1], 0.15) == [1, 1, 1, 2]  # chain: 1.0 ~ 0.8
    assert ranks_with_ties([1.0, 0.8, 0.6], 0.15) == [1, 2, 3]
    assert ranks_with_ties([0.5, 0.5, 0.1], 0.0) == [1, 1, 2]  # equal scores always tie
    assert ranks_with_ties([], 0.3) == []
    with pytest.raises(ValueError):
        ranks_with_ties([math.nan, 1.0], 0.1)


def test_zero_noise_reproduces_oracle_order() -> None:
    oracle = LengthOracle(target_words=4)
    responses = ["a", "a b c d e f g", "a b c d", "a b c", "a b c d e f g h i j"]
    annotator = SimulatedAnnotator(oracle, noise=0.0, tie_threshold=0.0, seed=1)
    ranks = annotator.rank("p", responses)
    assert ranks == [3, 3, 1, 2, 4]  # -3, -3, 0, -1, -6
    assert validate_ranks(ranks, len(ranks)) == ranks


def test_tie_threshold_groups_close_scores() -> None:
    oracle = LengthOracle(target_words=10)
    responses = [" ".join(["w"] * n) for n in (10, 9, 5, 4)]  # scores 0, -1, -5, -6
    no_ties = SimulatedAnnotator(oracle, tie_threshold=0.0).rank("p", responses)
    assert no_ties == [1, 2, 3, 4]
    assert SimulatedAnnotator(oracle, tie_threshold=1.5).rank("p", responses) == [1, 1, 2, 2]
    assert SimulatedAnnotator(oracle, tie_threshold=10).rank("p", responses) == [1, 1, 1, 1]


def _random_items(n: int, k: int = 4) -> list[list[str]]:
    rng = random.Random(0)
    return [[" ".join(["w"] * rng.randint(0, 20)) for _ in range(k)] for _ in range(n)]


def _pooled_agreement(oracle: Oracle, noise: float, items: list[list[str]]) -> float:
    annotator = SimulatedAnnotator(oracle, noise=noise, tie_threshold=0.0, seed=7)
    agree = total = 0
    for responses in items:
        ranks = annotator.rank("p", responses)
        a, t = agreement_counts(ranks, [oracle.score("p", r) for r in responses])
        agree, total = agree + a, total + t
    return agree / total


def test_noise_is_seeded_and_agreement_falls_as_noise_grows() -> None:
    oracle = LengthOracle(target_words=10)
    items = _random_items(400)
    first = [SimulatedAnnotator(oracle, noise=2.0, seed=3).rank("p", r) for r in items[:20]]
    again = [SimulatedAnnotator(oracle, noise=2.0, seed=3).rank("p", r) for r in items[:20]]
    assert first == again
    agreement = [_pooled_agreement(oracle, noise, items) for noise in (0.0, 1.0, 3.0, 10.0)]
    assert agreement[0] == 1.0
    assert agreement == sorted(agreement, reverse=True) and len(set(agreement)) == 4
    assert agreement[-1] < 0.8


def test_agreement_with_oracle() -> None:
    assert agreement_with_oracle([1, 2, 3], [3.0, 2.0, 1.0]) == 1.0
    assert agreement_with_oracle([3, 2, 1], [3.0, 2.0, 1.0]) == 0.0
    assert agreement_with_oracle([1, 1, 2], [3.0, 2.0, 1.0]) == 1.0  # the tie orders nothing
    assert agreement_with_oracle([1, 2], [1.0, 1.0]) == 0.0  # an order the oracle does not hold
    assert math.isnan(agreement_with_oracle([1, 1], [1.0, 2.0]))


def test_held_out_score_is_the_mean() -> None:
    prompts = ["What is 7 + 5?", "What is 2 * 3?"]
    assert held_out_score(ARITH, prompts, [["12.", "13."], ["6.", "6"]]) == 0.75
    with pytest.raises(ValueError):
        held_out_score(ARITH, prompts, [["12."]])


# --- Through the store ------------------------------------------------------------------------


def _live_rankings(db) -> list[dict]:
    return list(db["rankings"].rows_where("retracted_at IS NULL", order_by="id"))


def test_annotate_ranks_each_task_once_and_stops_when_empty(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    ids = make_comparisons(db, 5, k=4)
    annotator = SimulatedAnnotator(ARITH, noise=0.1, tie_threshold=0.05, seed=0)
    stats = annotate(db, "sim", annotator, n=50)
    assert (stats.ranked, stats.skipped, stats.flagged) == (5, 0, 0)
    rows = _live_rankings(db)
    assert sorted(r["comparison_id"] for r in rows) == sorted(ids)
    for row in rows:
        ranks = json.loads(row["ranks"])
        assert row["status"] == "ranked" and len(ranks) == 4
        assert sorted(set(ranks)) == list(range(1, max(ranks) + 1))  # dense, 1 = best
    assert stats.ties_seen == sum(len(set(json.loads(r["ranks"]))) < 4 for r in rows)
    assert annotate(db, "sim", annotator, n=50).handled == 0


def test_annotate_respects_n_and_exercises_skip_and_flag(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 6, k=3)
    assert annotate(db, "a", SimulatedAnnotator(ARITH, seed=0), n=2).ranked == 2
    skipper = SimulatedAnnotator(ARITH, seed=0, skip_rate=0.5, flag_rate=0.5)
    stats = annotate(db, "b", skipper, n=10)
    assert stats.ranked == 0 and stats.skipped + stats.flagged == stats.handled > 0
    statuses = {r["status"] for r in _live_rankings(db) if r["status"] != "ranked"}
    assert statuses <= {"skipped", "flagged"} and len(statuses) == 2


def test_overlap_two_annotators_rank_the_same_comparisons(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    ids = make_comparisons(db, 4, k=4)
    for name, seed in [("ann", 1), ("bob", 2)]:
        stats = annotate(db, name, SimulatedAnnotator(ARITH, noise=0.2, seed=seed), 10, overlap=2)
        assert stats.ranked == 4
    by_comparison: dict[int, set[int]] = {}
    for row in _live_rankings(db):
        by_comparison.setdefault(row["comparison_id"], set()).add(row["annotator_id"])
    assert sorted(by_comparison) == sorted(ids)
    assert all(len(who) == 2 for who in by_comparison.values())
    assert annotate(db, "cid", SimulatedAnnotator(ARITH), 10, overlap=2).handled == 0
