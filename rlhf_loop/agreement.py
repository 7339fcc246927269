"""Inter-annotator agreement over rankings with ties: pure functions over plain data.

A judgement is ``(comparison_id, annotator, ranks)`` with dense ranks per shown response
(1 = best, equal numbers = a tie), as ``rlhf_loop.ranking`` stores them. Kendall's tau-b (which
corrects for ties) is ``scipy.stats.kendalltau``'s formula, computed here pair by pair (a test
holds the two equal to the last bit): an item has a handful of responses, on which one scipy call
cost a third of a millisecond, seconds on a Dashboard's first render. Krippendorff's alpha for
ordinal data is the ``krippendorff`` package's formula applied to a coincidence matrix summed
here item by item (a test holds the two equal): every figure is a sum over items
(``AgreementTally``), so the Dashboard adds the items that changed instead of going over 10^6
rankings on every render.

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

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np


class Judgement(NamedTuple):
    """One live ranking; a plain ``(comparison_id, annotator, ranks)`` tuple works as well."""

    comparison_id: int
    annotator: str
    ranks: Sequence[int]


JudgementLike = tuple[int, str, Sequence[int]]


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
    return np.array(_mid_ranks(tuple(ranks)))


@functools.lru_cache(maxsize=1 << 12)
def _mid_ranks(ranks: tuple[float, ...]) -> tuple[float, ...]:
    """``mid_ranks`` on a tuple: the responses ranked strictly better, plus the middle of the
    tied ones' places (halves, so exact in floating point). Memoised: rankings repeat (75 with
    ties at K = 4)."""
    return tuple(
        sum(other < rank for other in ranks) + (sum(other == rank for other in ranks) + 1) / 2
        for rank in ranks
    )


def position_scores(ranks: Sequence[float]) -> np.ndarray:
    """Dense ranks -> share of the other responses ranked strictly better, ties counted half.

    [1, 2, 2, 3] -> [0, 0.5, 0.5, 1]; [1, 1, 1, 2] -> [1/3, 1/3, 1/3, 1]. The scale alpha pools
    across items (see the module docstring). Needs at least two responses. Division is
    correctly rounded, so equal shares from different K are equal floats.
    """
    return np.array(_position_scores(tuple(ranks)))


@functools.lru_cache(maxsize=1 << 12)
def _position_scores(ranks: tuple[float, ...]) -> tuple[float, ...]:
    return tuple((mid - 1.0) / (len(ranks) - 1) for mid in _mid_ranks(ranks))


def tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties corrected); None where it is undefined, i.e. a side is all ties.

    scipy's formula: (concordant - discordant pairs) / sqrt(pairs untied in x) / sqrt(pairs
    untied in y), clipped to [-1, 1]. Counted over every pair, O(n^2): meant for one item's
    handful of responses.
    """
    concordant_minus_discordant = untied_x = untied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            concordant_minus_discordant += dx * dy
            untied_x += dx != 0
            untied_y += dy != 0
    if not untied_x or not untied_y:
        return None
    tau = concordant_minus_discordant / math.sqrt(untied_x) / math.sqrt(untied_y)
    return min(1.0, max(-1.0, tau))


def _mean(values: Iterable[float | None]) -> tuple[int, float | None]:
    """Number of defined values and their mean (None when there is none)."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return len(defined), (sum(defined) / len(defined) if defined else None)


class Item(NamedTuple):
    """One item's judgements: the annotators in name order and each one's dense ranks (of the
    same K responses). Hashable, so equal items are counted together."""

    names: tuple[str, ...]
    ranks: tuple[tuple[int, ...], ...]


def items_of(judgements: Iterable[JudgementLike]) -> dict[int, Item]:
    """Group by comparison, checking what a database index guarantees for live rankings."""
    grouped: dict[int, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for comparison_id, annotator, ranks in judgements:
        item = grouped[comparison_id]
        if annotator in item:
            raise ValueError(f"{annotator!r} judged comparison {comparison_id} twice")
        if item and len(next(iter(item.values()))) != len(ranks):
            raise ValueError(f"comparison {comparison_id} has rankings of different lengths")
        item[annotator] = tuple(ranks)
    return {c: item_from(item) for c, item in grouped.items()}


def item_from(ranks_by_annotator: dict[str, tuple[int, ...]]) -> Item:
    """The item of these judgements (at least one)."""
    names, ranks = zip(*sorted(ranks_by_annotator.items()), strict=True)
    return Item(names, ranks)


@dataclass(frozen=True)
class _Contribution:
    """What one item adds to the figures, by position of its judgements in the item."""

    consensus: tuple[float | None, ...]  # each judgement's tau-b vs the others' consensus
    pairs: tuple[tuple[int, int, float | None], ...]  # (i, j, tau-b) for i < j
    # ((coders on the unit, value, other value), ordered pairs of coders with those values)
    coincidences: tuple[tuple[tuple[int, float, float], int], ...]


@functools.lru_cache(maxsize=1 << 16)
def _contribution(pattern: tuple[tuple[int, ...], ...]) -> _Contribution:
    """An item's contribution, from its rankings alone (names only say where it goes).

    Memoised: with K = 4 there are 75 rankings with ties, so two annotators' items repeat a few
    thousand patterns whatever the number of items.
    """
    mids = [_mid_ranks(r) for r in pattern]
    # the others' consensus: the sum of their mid-ranks (halves, so the sum is exact)
    others = [
        tuple(map(sum, zip(*(r for j, r in enumerate(mids) if j != i), strict=True)))
        for i in range(len(mids))
    ]
    consensus = tuple(tau_b(ranks, rest) for ranks, rest in zip(mids, others, strict=True))
    pairs = tuple(
        (i, j, tau_b(mids[i], mids[j])) for i in range(len(mids)) for j in range(i + 1, len(mids))
    )
    m = len(pattern)
    scores = [_position_scores(r) for r in pattern]
    counts: dict[tuple[int, float, float], int] = defaultdict(int)
    for unit in range(len(pattern[0])):
        for i in range(m):
            for j in range(m):
                if i != j:
                    counts[(m, scores[i][unit], scores[j][unit])] += 1
    return _Contribution(consensus, pairs, tuple(counts.items()))


def _bump(counter: dict, key: Any, by: int) -> None:
    """Add ``by`` to ``counter[key]``, dropping keys that reach 0 (so equal tallies hold equal
    keys however they were reached)."""
    if not by:
        return
    value = counter.get(key, 0) + by
    if value:
        counter[key] = value
    else:
        del counter[key]


def _exact_mean(taus: dict[float | None, int]) -> tuple[int, float | None]:
    """Number of defined taus and their mean, the sum taken exactly: the same float whatever
    order the items came in, so a tally kept up to date equals one built from scratch."""
    defined = {t: n for t, n in taus.items() if t is not None}
    scored = sum(defined.values())
    if not scored:
        return 0, None
    return scored, float(sum(Fraction(t) * n for t, n in defined.items()) / scored)


def ordinal_alpha(coincidences: dict[tuple[int, float, float], int]) -> float | None:
    """Krippendorff's alpha (ordinal) from coincidence counts; None when undefined.

    ``coincidences[(m, c, k)]`` counts ordered pairs of coders giving values c and k to a unit
    that m coders valued; each weighs 1 / (m - 1) in the coincidence matrix. Then alpha is the
    ``krippendorff`` package's formula (``1 - sum(o d) / sum(e d)`` with ordinal distances over
    the values' frequencies), which tests/test_agreement.py holds it to on random data. Kept as
    counts so that items can be added and removed exactly.
    """
    values = sorted({c for _, c, _ in coincidences})
    if len(values) < 2:  # no variation at all
        return None
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for (m, c, k), count in sorted(coincidences.items()):
        o[index[c], index[k]] += count / (m - 1)
    n_v = o.sum(axis=0)
    e = (np.outer(n_v, n_v) - np.diag(n_v)) / (n_v.sum() - 1)
    cumulative = np.concatenate([[0.0], np.cumsum(n_v)])
    low = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
    high = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
    d = (cumulative[high + 1] - cumulative[low] - (n_v[low] + n_v[high]) / 2) ** 2
    return float(1 - (o * d).sum() / (e * d).sum())


@dataclass(frozen=True)
class AgreementFigures:
    """Agreement between annotators over a set of judgements: what the Dashboard shows."""

    alpha: float | None  # Krippendorff's alpha, ordinal (``overall_alpha``)
    shared_items: int  # items ranked by two or more annotators
    annotators: int  # annotators with at least one judgement
    consensus: dict[str, ConsensusAgreement]
    pairwise: PairwiseTau


class AgreementTally:
    """The agreement figures as sums over items, so adding or removing an item's judgements
    updates them exactly, without going over the other items again.

    Every figure here is a sum over items (counts, taus, coincidences), kept as exact counts of
    each value: a tally brought up to date item by item equals, to the last bit, one built from
    all items at once. That is what lets the Dashboard keep up with 10^6 rankings.
    """

    def __init__(self) -> None:
        self._judged: dict[str, int] = {}  # annotator -> judgements
        self._ordered: dict[str, int] = {}  # annotator -> judgements of K >= 2 responses
        self._shared = 0
        self._consensus: dict[str, dict[float | None, int]] = defaultdict(dict)
        self._pairs: dict[tuple[str, str], dict[float | None, int]] = defaultdict(dict)
        self._coincidences: dict[tuple[int, float, float], int] = {}

    def update(self, changes: Mapping[Item, int]) -> None:
        """Add each item as many times as it maps to (a negative count takes back items added
        before). Equal items are worked out once: at K = 4 most items repeat one of a few
        thousand rankings patterns, and names and patterns are tallied apart."""
        by_names: dict[tuple[tuple[str, ...], bool], int] = defaultdict(int)
        by_pattern: dict[tuple[tuple[int, ...], ...], int] = defaultdict(int)
        for (names, ranks), times in changes.items():
            if not times or not names:
                continue
            ordered = len(ranks[0]) >= 2  # one response carries no order
            by_names[(names, ordered)] += times
            if not ordered or len(names) < 2:
                continue
            by_pattern[ranks] += times
            added = _contribution(ranks)
            for name, tau in zip(names, added.consensus, strict=True):
                _bump(self._consensus[name], tau, times)
            for i, j, tau in added.pairs:
                _bump(self._pairs[(names[i], names[j])], tau, times)
        for (names, ordered), times in by_names.items():
            for name in names:
                _bump(self._judged, name, times)
                if ordered:
                    _bump(self._ordered, name, times)
        for pattern, times in by_pattern.items():
            self._shared += times
            for key, count in _contribution(pattern).coincidences:
                _bump(self._coincidences, key, times * count)

    def consensus(self) -> dict[str, ConsensusAgreement]:
        result = {}
        for annotator in sorted(a for a, taus in self._consensus.items() if taus):
            taus = self._consensus[annotator]
            scored, mean = _exact_mean(taus)
            result[annotator] = ConsensusAgreement(annotator, sum(taus.values()), scored, mean)
        return result

    def pairwise(self) -> PairwiseTau:
        annotators = sorted(self._ordered)
        n = len(annotators)
        tau: list[list[float | None]] = [[None] * n for _ in range(n)]
        items = [[0] * n for _ in range(n)]
        index = {a: i for i, a in enumerate(annotators)}
        for (a, b), taus in self._pairs.items():
            i, j = index[a], index[b]
            items[i][j] = items[j][i] = sum(taus.values())
            tau[i][j] = tau[j][i] = _exact_mean(taus)[1]
        return PairwiseTau(annotators, tau, items)

    def state(self) -> dict[str, Any]:
        """Everything the tally holds, as JSON-able data (floats round-trip exactly), so a new
        process can take it up instead of going over every item again."""
        return {
            "judged": self._judged,
            "ordered": self._ordered,
            "shared": self._shared,
            "consensus": {a: list(taus.items()) for a, taus in self._consensus.items()},
            "pairs": [[a, b, list(taus.items())] for (a, b), taus in self._pairs.items()],
            "coincidences": [[*key, n] for key, n in self._coincidences.items()],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AgreementTally:
        """The tally ``state()`` described."""
        tally = cls()
        tally._judged, tally._ordered = dict(state["judged"]), dict(state["ordered"])
        tally._shared = int(state["shared"])
        for a, taus in state["consensus"].items():
            tally._consensus[a] = {tau: n for tau, n in taus}
        for a, b, taus in state["pairs"]:
            tally._pairs[(a, b)] = {tau: n for tau, n in taus}
        tally._coincidences = {(m, c, k): n for m, c, k, n in state["coincidences"]}
        return tally

    def figures(self) -> AgreementFigures:
        return AgreementFigures(
            alpha=ordinal_alpha(self._coincidences) if self._shared else None,
            shared_items=self._shared,
            annotators=len(self._judged),
            consensus=self.consensus(),
            pairwise=self.pairwise(),
        )


def tally(judgements: Iterable[JudgementLike]) -> AgreementTally:
    """The tally of all these judgements at once."""
    result = AgreementTally()
    result.update(Counter(items_of(judgements).values()))
    return result


def overall_alpha(judgements: Iterable[JudgementLike]) -> float | None:
    """Krippendorff's alpha, ordinal level, over all items that two or more annotators ranked.

    Units are (comparison, response position), coders are annotators, values are position
    scores (module docstring). The positions of one item are not independent (they form one
    ranking), which alpha does not model: fine for a dashboard figure, not a significance test.
    None where alpha is undefined: no item with two annotators, or no variation at all (every
    pairable ranking ties every response).
    """
    return tally(judgements).figures().alpha


def shared_items(judgements: Iterable[JudgementLike]) -> int:
    """Items ranked by at least two annotators: what the agreement figures rest on."""
    return tally(judgements).figures().shared_items


def consensus_agreement(judgements: Iterable[JudgementLike]) -> dict[str, ConsensusAgreement]:
    """Per annotator: mean tau-b against the mean rank the *other* annotators gave.

    Leave-one-out, so an annotator's own ranking never pulls the consensus towards itself (with
    two annotators it is simply the other one). The consensus is the sum of the others' mid-ranks
    (same order as their mean, and exact, so equal means stay a tie). Keyed and ordered by name.
    """
    return tally(judgements).consensus()


def pairwise_tau(judgements: Iterable[JudgementLike]) -> PairwiseTau:
    """Mean tau-b for every pair of annotators over the items both ranked, with counts."""
    return tally(judgements).pairwise()


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
    ordered = sorted(seconds)
    return sorted_summary(len(ordered), ordered.__getitem__)


def sorted_summary(n: int, value_at: Callable[[int], float]) -> SecondsSummary:
    """``seconds_summary`` of n values known by their order (``value_at(i)``: the i-th smallest).

    Both figures rest on at most four of the values, so the store reads just those from an index
    rather than every ranking's seconds.
    """
    if n == 0:
        return SecondsSummary(0, None, None)
    half = n // 2
    median = value_at(half) if n % 2 else (value_at(half - 1) + value_at(half)) / 2
    position = 0.9 * (n - 1)
    low = math.floor(position)
    fraction = position - low
    p90 = value_at(low)
    if fraction:
        p90 += (value_at(low + 1) - p90) * fraction
    return SecondsSummary(n, float(median), float(p90))
