"""Parsing and validating rankings with ties (pure functions)."""

import pytest

from rlhf_loop.ranking import (
    RankingError,
    dense_ranks,
    describe_ranking,
    parse_ranking,
    ranks_from_inputs,
    strict_pairs,
    validate_ranks,
)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("1 2 2 3", [1, 2, 2, 3]),
        ("1223", [1, 2, 2, 3]),
        ("1,3,3,4", [1, 2, 2, 3]),
        ("B > A = C > D", [2, 1, 2, 3]),
        ("b>a=c>d", [2, 1, 2, 3]),
        ("A=B=C=D", [1, 1, 1, 1]),
        ("D>C>B>A", [4, 3, 2, 1]),
    ],
)
def test_parse_ranking_notations(typed: str, expected: list[int]) -> None:
    assert parse_ranking(typed, 4) == expected


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "no ranking"),
        ("1 2 3", "each of the 4"),
        ("1 2 3 5", "from 1 to 4"),
        ("1 2 3 0", "from 1 to 4"),
        ("A > B > C", "D has no rank"),
        ("A > B > A > C", "twice"),
        ("A > E > B > C", "'E' is not one of"),
        ("best: A", "type one rank per response"),
        ("<script>alert(1)</script>", "type one rank per response"),
    ],
)
def test_parse_ranking_errors_say_what_to_fix(typed: str, message: str) -> None:
    with pytest.raises(RankingError, match=message):
        parse_ranking(typed, 4)


def test_validate_ranks_rejects_a_skipped_response_and_non_integers() -> None:
    with pytest.raises(RankingError, match="B has no rank"):
        validate_ranks([1, None, 2], 3)
    with pytest.raises(RankingError):
        validate_ranks([1, True, 2], 3)  # type: ignore[list-item]
    with pytest.raises(RankingError):
        validate_ranks([1.5, 1, 2], 3)  # type: ignore[list-item]


def test_dense_ranks_and_description_keep_ties() -> None:
    assert dense_ranks([2, 9, 2, 5]) == [1, 3, 1, 2]
    assert describe_ranking([2, 1, 2, 3]) == "B > A = C > D"


def test_strict_pairs_skip_ties() -> None:
    assert sorted(strict_pairs([1, 2, 2, 3])) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert strict_pairs([1, 1, 1]) == []


def test_typed_ranking_wins_over_picks_and_picks_need_all_ranks() -> None:
    assert ranks_from_inputs("2 1", [1, 2]) == [2, 1]
    assert ranks_from_inputs("", [1, 1]) == [1, 1]
    with pytest.raises(RankingError, match="type a ranking"):
        ranks_from_inputs("  ", [None, None])
    with pytest.raises(RankingError, match="B has no rank"):
        ranks_from_inputs("", [1, None])
