"""Inter-annotator agreement over rankings with ties: pure functions over plain data.

A judgement is ``(comparison_id, annotator, ranks)`` with dense ranks per shown response
(1 = best, equal numbers = a tie), as ``rlhf_loop.ranking`` stores them. The statistics come from
maintained libraries rather than hand-written formulas: Kendall's tau-b (which corrects for ties)
from ``scipy.stats.kendalltau`` and Krippendorff's alpha for ordinal data from ``krippendorff``.

These numbers are shown to an operator to spot careless or confused annotators; nothing here
bans or down-weights anyone automatically. Few shared items make every figure noisy, so each
comes with the count it rests on.

Design choices, in one place:

* **One ordinal scale across items (alpha).** Dense rank 2 means different things in different
  items: in ``A > B = C = D`` (1, 2, 2, 2) it is "worst", in ``A > B > C > D`` it is "second".
  Pooling dense ranks would count a tie-heavy annotator who agrees that D is worst as
  disagreeing about D. So each response gets its *position score*: the share of the other
  responses ranked strictly better, ties counted half, ``(mid-rank - 1) / (K - 1)``: 0 = best,
  1 = worst, 0.5 = the middle, whatever K is and however many ties the item has. Alpha is
  computed on these scores at the ordinal level (only their order and frequencies matter), so
  for a fixed K this is the usual mid-rank treatment of ties, and items with different K still
  share one scale. Kendall's tau only looks at order within an item, so it is the same on dense
  ranks or scores.
* **Undefined tau.** Tau-b is undefined (scipy returns NaN) when either side has no order at all:
  an annotator who ties every response, or a consensus that comes out all ties (two others who
  exactly disagree). Such an item neither agrees nor disagrees; it is left out of the mean and
  counted apart (``items`` vs ``scored``), never averaged in as 0 or NaN. A mean over no scored
  item is None. Items with fewer than two responses carry no order and are skipped everywhere.
* **Gold pair accuracy.** On each strictly ordered pair of a gold item, an annotator scores 1 for
  the right direction, 0 for the wrong one, and 1/2 for a tie: the expected score of a coin
  flip, so neither tying everything nor guessing looks better than the other (both give 0.5).
  Pairs the gold itself ties assert no order and are not counted (tau-b still sees them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import krippendorff
import numpy as np
from scipy.stats import kendalltau, rankdata


class Judgement(NamedTuple):
    """One live ranking; a plain ``(comparison_id, annotator, ranks)`` tuple works as well."""

    comparison_id: int
    annotator: str
    ranks: Sequence[int]


JudgementLike = tuple[int, str, Sequence[int]]
# comparison id -> annotator -> mid-ranks (ties share the mean of their places), items with K >= 2.
# Mid-ranks are half-integers, exact in floating point, so sums of them keep ties exact.
_Items = dict[int, dict[str, np.ndarray]]


@dataclass(frozen=True)
class ConsensusAgreement:
    """An annotator against the leave-one-out consensus of the others on shared items."""

    annotator: str
    items: int  # items this annotator shares with at least one other annotator
    scored: int  # of those, items where tau-b is defined
    tau: float | None  # mean tau-b over the scored items; None when none is scored


@dataclass(frozen=True)
class GoldAgreement:
    """An annotator against the known order of gold items."""

    annotator: str
    items: int  # gold items answered
    scored: int  # of those, items where tau-b is defined
    tau: float | None  # mean tau-b vs the gold order over the scored items
    pairs: int  # strictly ordered gold pairs seen
    pair_accuracy: float | None  # share in the right direction, a tie counting 1/2


@dataclass(frozen=True)
class PairwiseTau:
    """Mean tau-b between every two annotators over the items both ranked (for a heatmap).

    ``tau[i][j]`` and ``items[i][j]`` are symmetric; the diagonal is None / 0 since an annotator
    is never compared with itself. ``tau`` is None where no shared item has a defined tau.
    """

    annotators: list[str]
    tau: list[list[float | None]]
    items: list[list[int]]

    def rows(self) -> list[dict[str, Any]]:
        """Long form, one row per ordered pair of different annotators that share an item."""
        return [
            {"annotator": a, "other": b, "tau": self.tau[i][j], "items": self.items[i][j]}
            for i, a in enumerate(self.annotators)
            for j, b in enumerate(self.annotators)
            if i != j and self.items[i][j] > 0
        ]


@dataclass(frozen=True)
class SecondsSummary:
    """Time spent per item by one annotator."""

    n: int
    median: float | None
    p90: float | None


def mid_ranks(ranks: Sequence[float]) -> np.ndarray:
    """Dense ranks -> mid-ranks: tied responses share the mean of the places they take.

    [1, 2, 2, 3] -> [1, 2.5, 2.5, 4]. Same order as the dense ranks, so the same tau-b.
    """
    return rankdata(ranks, method="average")


def position_scores(ranks: Sequence[float]) -> np.ndarray:
    """Dense ranks -> share of the other responses ranked strictly better, ties counted half.

    [1, 2, 2, 3] -> [0, 0.5, 0.5, 1]; [1, 1, 1, 2] -> [1/3, 1/3, 1/3, 1]. The scale alpha pools
    across items (see the module docstring). Needs at least two responses. Division is
    correctly rounded, so equal shares from different K are equal floats.
    """
    return (mid_ranks(ranks) - 1.0) / (len(ranks) - 1)


def tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties corrected); None where it is undefined, i.e. a side is all ties."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(kendalltau(x, y, variant="b").statistic)


def _mean(values: Iterable[float | None]) -> tuple[int, float | None]:
    """Number of defined values and their mean (None when there is none)."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return len(defined), (sum(defined) / len(defined) if defined else None)


def _by_item(judgements: Iterable[JudgementLike]) -> _Items:
    """Group by comparison, checking what a database index guarantees for live rankings."""
    items: _Items = defaultdict(dict)
    for comparison_id, annotator, ranks in judgements:
        if len(ranks) < 2:
            continue
        item = items[comparison_id]
        if annotator in item:
            raise ValueError(f"{annotator!r} judged comparison {comparison_id} twice")
        if item and len(next(iter(item.values()))) != len(ranks):
            raise ValueError(f"comparison {comparison_id} has rankings of different lengths")
        item[annotator] = mid_ranks(ranks)
    return dict(items)


def overall_alpha(judgements: Iterable[JudgementLike]) -> float | None:
    """Krippendorff's alpha, ordinal level, over all items that two or more annotators ranked.

    Units are (comparison, response position), coders are annotators, values are position
    scores (module docstring). The positions of one item are not independent (they form one
    ranking), which alpha does not model: fine for a dashboard figure, not a significance test.
    None where alpha is undefined: no item with two annotators, or no variation at all (every
    pairable ranking ties every response).
    """
    shared = {c: item for c, item in _by_item(judgements).items() if len(item) >= 2}
    if not shared:
        return None
    annotators = sorted({a for item in shared.values() for a in item})
    row = {a: i for i, a in enumerate(annotators)}
    n_units = sum(len(next(iter(item.values()))) for item in shared.values())
    data = np.full((len(annotators), n_units), np.nan)
    start = 0
    for item in shared.values():
        k = len(next(iter(item.values())))
        for annotator, ranks in item.items():
            data[row[annotator], start : start + k] = position_scores(ranks)
        start += k
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def shared_items(judgements: Iterable[JudgementLike]) -> int:
    """Items ranked by at least two annotators: what the agreement figures rest on."""
    return sum(len(item) >= 2 for item in _by_item(judgements).values())


def consensus_agreement(judgements: Iterable[JudgementLike]) -> dict[str, ConsensusAgreement]:
    """Per annotator: mean tau-b against the mean rank the *other* annotators gave.

    Leave-one-out, so an annotator's own ranking never pulls the consensus towards itself (with
    two annotators it is simply the other one). The consensus is the sum of the others' mid-ranks
    (same order as their mean, and exact, so equal means stay a tie). Keyed and ordered by name.
    """
    taus: dict[str, list[float | None]] = defaultdict(list)
    for item in _by_item(judgements).values():
        if len(item) < 2:
            continue
        for annotator, ranks in item.items():
            others = np.sum([r for a, r in item.items() if a != annotator], axis=0)
            taus[annotator].append(tau_b(ranks, others))
    result = {}
    for annotator in sorted(taus):
        scored, mean = _mean(taus[annotator])
        result[annotator] = ConsensusAgreement(annotator, len(taus[annotator]), scored, mean)
    return result


def pairwise_tau(judgements: Iterable[JudgementLike]) -> PairwiseTau:
    """Mean tau-b for every pair of annotators over the items both ranked, with counts."""
    items = _by_item(judgements)
    annotators = sorted({a for item in items.values() for a in item})
    index = {a: i for i, a in enumerate(annotators)}
    n = len(annotators)
    taus: list[list[list[float | None]]] = [[[] for _ in range(n)] for _ in range(n)]
    for item in items.values():
        names = sorted(item)
        for x, a in enumerate(names):
            for b in names[x + 1 :]:
                t = tau_b(item[a], item[b])
                taus[index[a]][index[b]].append(t)
                taus[index[b]][index[a]].append(t)
    return PairwiseTau(
        annotators=annotators,
        tau=[[_mean(taus[i][j])[1] for j in range(n)] for i in range(n)],
        items=[[len(taus[i][j]) for j in range(n)] for i in range(n)],
    )


def _pair_credit(ranks: Sequence[int], gold: Sequence[int]) -> tuple[int, float]:
    """(strictly ordered gold pairs, credit: 1 right direction, 1/2 tie, 0 wrong)."""
    pairs, credit = 0, 0.0
    for i in range(len(gold)):
        for j in range(len(gold)):
            if gold[i] < gold[j]:
                pairs += 1
                credit += 1.0 if ranks[i] < ranks[j] else 0.5 if ranks[i] == ranks[j] else 0.0
    return pairs, credit


def gold_agreement(
    judgements_on_gold: Iterable[JudgementLike],
    gold_ranks_by_comparison: dict[int, Sequence[int]],
) -> dict[str, GoldAgreement]:
    """Per annotator: how their rankings of gold items match the known order.

    Judgements on comparisons without a gold order are ignored, so all judgements may be passed.
    Keyed and ordered by annotator name.
    """
    taus: dict[str, list[float | None]] = defaultdict(list)
    pairs: dict[str, int] = defaultdict(int)
    credit: dict[str, float] = defaultdict(float)
    for comparison_id, annotator, ranks in judgements_on_gold:
        gold = gold_ranks_by_comparison.get(comparison_id)
        if gold is None or len(gold) < 2:
            continue
        if len(gold) != len(ranks):
            raise ValueError(f"comparison {comparison_id}: gold order and ranking differ in length")
        taus[annotator].append(tau_b(ranks, gold))
        n_pairs, got = _pair_credit(ranks, gold)
        pairs[annotator] += n_pairs
        credit[annotator] += got
    result = {}
    for annotator in sorted(taus):
        scored, mean = _mean(taus[annotator])
        n_pairs = pairs[annotator]
        result[annotator] = GoldAgreement(
            annotator=annotator,
            items=len(taus[annotator]),
            scored=scored,
            tau=mean,
            pairs=n_pairs,
            pair_accuracy=credit[annotator] / n_pairs if n_pairs else None,
        )
    return result


def seconds_summary(seconds: Sequence[float]) -> SecondsSummary:
    """Median and 90th percentile (linear interpolation) of the seconds spent per item.

    The median is the typical pace; p90 shows long stalls without one abandoned tab dominating
    as it would a mean. Very fast items next to a high gold error rate hint at careless ranking.
    """
    if not seconds:
        return SecondsSummary(0, None, None)
    values = np.asarray(seconds, dtype=float)
    return SecondsSummary(len(values), float(np.median(values)), float(np.percentile(values, 90)))
