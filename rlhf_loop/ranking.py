"""Rankings with ties as plain data: parse what an annotator typed, validate, derive pairs.

A ranking is a rank per shown response, 1 = best, equal numbers = a tie. Ranks are stored dense
(1, 2, 2, 3), so "1 3 3 4" and "1 2 2 3" are the same judgement and compare equal.
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase


class RankingError(ValueError):
    """The submission cannot be stored as it is; the message tells the annotator what to fix."""


def response_labels(k: int) -> list[str]:
    """Letters shown beside the responses: A, B, C..."""
    return list(LETTERS[:k])


def dense_ranks(ranks: list[int]) -> list[int]:
    """Renumber ranks 1, 2, 3... keeping order and ties: [1, 3, 3, 4] -> [1, 2, 2, 3]."""
    order = {value: i + 1 for i, value in enumerate(sorted(set(ranks)))}
    return [order[r] for r in ranks]


def validate_ranks(ranks: list[int | None], k: int) -> list[int]:
    """Check one rank per shown response, each between 1 and k; return them dense."""
    labels = response_labels(k)
    if len(ranks) != k:
        raise RankingError(f"expected a rank for each of the {k} responses, got {len(ranks)}")
    missing = [labels[i] for i, r in enumerate(ranks) if r is None]
    if missing:
        raise RankingError(f"response {', '.join(missing)} has no rank yet")
    for label, rank in zip(labels, ranks, strict=True):
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= k:
            raise RankingError(f"response {label}: rank must be a whole number from 1 to {k}")
    return dense_ranks([int(r) for r in ranks])  # type: ignore[arg-type]


_ORDER_SYNTAX = re.compile(r"^[A-Za-z](\s*[>=]\s*[A-Za-z])*$")


def _parse_order(text: str, k: int) -> list[int]:
    """'B > A = C > D' -> ranks per response [2, 1, 2, 3]."""
    labels = response_labels(k)
    compact = re.sub(r"\s+", "", text).upper()
    ranks: list[int | None] = [None] * k
    rank = 1
    for i, token in enumerate(re.split(r"([>=])", compact)):
        if i % 2 == 1:
            rank += token == ">"
            continue
        if token not in labels:
            raise RankingError(f"'{token}' is not one of the responses {', '.join(labels)}")
        index = labels.index(token)
        if ranks[index] is not None:
            raise RankingError(f"response {token} appears twice")
        ranks[index] = rank
    return validate_ranks(ranks, k)


def _parse_digits(text: str, k: int) -> list[int]:
    """'1 2 2 3', '1,2,2,3' or '1223' -> ranks in the order the responses are shown."""
    parts = re.split(r"[\s,;]+", text.strip())
    digits = list(parts[0]) if len(parts) == 1 else parts
    # isdecimal, not isdigit: "²" or "①" are digits to Unicode but int() refuses them with a
    # ValueError the page would show as a traceback. Decimal digits of any script ("١", "１")
    # are what int() reads, so ranks typed with an Arabic or a full-width layout still work.
    if not all(d.isdecimal() for d in digits):
        raise RankingError(
            "type one rank per response (e.g. '1 2 2 3') or an order (e.g. 'B > A = C > D')"
        )
    try:
        ranks = [int(d) for d in digits]
    except ValueError:  # past int()'s 4,300-digit limit: no rank is anywhere near that long
        raise RankingError(f"a rank must be a whole number from 1 to {k}") from None
    return validate_ranks(ranks, k)


def parse_ranking(text: str, k: int) -> list[int]:
    """Read a ranking typed in either notation; the error says how to type it right."""
    text = text.strip()
    if not text:
        raise RankingError("no ranking entered")
    if _ORDER_SYNTAX.match(text):
        return _parse_order(text, k)
    return _parse_digits(text, k)


def describe_ranking(ranks: list[int]) -> str:
    """Ranks per response -> 'B > A = C > D': the order an annotator reads back."""
    labels = response_labels(len(ranks))
    tiers: dict[int, list[str]] = {}
    for label, rank in zip(labels, ranks, strict=True):
        tiers.setdefault(rank, []).append(label)
    return " > ".join(" = ".join(tiers[r]) for r in sorted(tiers))


def strict_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """Index pairs (better, worse) of every strictly ordered pair; ties give none."""
    return [(i, j) for i, ri in enumerate(ranks) for j, rj in enumerate(ranks) if ri < rj]


def ranks_from_inputs(typed: str, picked: list[int | None]) -> list[int]:
    """The Rank page's two inputs: the typed ranking wins when there is one, else the picks."""
    if typed.strip():
        return parse_ranking(typed, len(picked))
    if all(p is None for p in picked):
        raise RankingError(
            "type a ranking (e.g. '1 2 2 3' or 'B > A = C > D') or pick a rank under each response"
        )
    return validate_ranks(picked, len(picked))
