"""Inter-annotator agreement: the statistics on plain data, then the store queries feeding them."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import krippendorff
import numpy as np
import pytest
import sqlite_utils
from scipy.stats import kendalltau, rankdata
from store_helpers import fresh_db, make_comparisons

from rlhf_loop.agreement import (
    AgreementTally,
    ConsensusAgreement,
    Item,
    Judgement,
    SecondsSummary,
    consensus_agreement,
    gold_agreement,
    items_of,
    mid_ranks,
    overall_alpha,
    pairwise_tau,
    position_scores,
    seconds_summary,
    shared_items,
    tally,
    tau_b,
)
from rlhf_loop.ranking import dense_ranks
from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.quality import (
    annotator_report,
    gold_orders,
    judgements,
    overall,
    seconds_summaries,
)
from rlhf_loop.store.submissions import Status, submit, undo_last
from rlhf_loop.store.tasks import next_task

TIMEOUT = 600.0


def reversed_ranks(ranks: list[int]) -> list[int]:
    return [max(ranks) + 1 - r for r in ranks]


def random_ranking(rng: random.Random, k: int, ties: bool = False) -> list[int]:
    """A random dense ranking of k responses; with ties, ranks drawn with repeats."""
    if ties:
        return dense_ranks([rng.randint(1, k - 1) for _ in range(k)])
    ranks = list(range(1, k + 1))
    rng.shuffle(ranks)
    return ranks


# --- the statistics on plain data ---------------------------------------------------------------


def test_identical_annotators_have_alpha_one_and_tau_one() -> None:
    rng = random.Random(0)
    truths = {c: random_ranking(rng, 4, ties=c % 2 == 0) for c in range(30)}
    data = [(c, name, ranks) for c, ranks in truths.items() for name in ["ada", "bob", "cat"]]
    assert overall_alpha(data) == pytest.approx(1.0)
    for name, agree in consensus_agreement(data).items():
        assert (agree.items, agree.tau) == (30, pytest.approx(1.0)), name
        assert agree.scored == sum(len(set(r)) > 1 for r in truths.values())  # all-tie items
    matrix = pairwise_tau(data)
    assert matrix.annotators == ["ada", "bob", "cat"]
    off_diagonal = [matrix.tau[i][j] for i in range(3) for j in range(3) if i != j]
    assert off_diagonal == [pytest.approx(1.0)] * 6


def test_a_reversed_annotator_gets_tau_minus_one_and_lowers_alpha() -> None:
    rng = random.Random(1)
    truths = {c: random_ranking(rng, 4) for c in range(20)}
    agreeing = [(c, n, r) for c, r in truths.items() for n in ["ada", "bob", "dan"]]
    reversing = [(c, "cat", reversed_ranks(r)) for c, r in truths.items()]
    assert overall_alpha(agreeing) == pytest.approx(1.0)
    alpha = overall_alpha(agreeing + reversing)
    assert alpha is not None and alpha < 0.5
    agree = consensus_agreement(agreeing + reversing)
    assert agree["cat"].tau == pytest.approx(-1.0)
    # ada's consensus is bob, dan and cat: two for the order, one against, still the order
    assert agree["ada"].tau == pytest.approx(1.0)
    assert pairwise_tau(agreeing + reversing).rows()[0] == {
        "annotator": "ada", "other": "bob", "tau": pytest.approx(1.0), "items": 20
    }  # fmt: skip


def test_leave_one_out_never_compares_an_annotator_with_itself() -> None:
    # With itself in the consensus, ada's and bob's mean rank would be all ties (undefined tau),
    # and with three annotators an outlier would look half right.
    data = [(1, "ada", [1, 2, 3]), (1, "bob", [3, 2, 1])]
    agree = consensus_agreement(data)
    assert agree["ada"].tau == agree["bob"].tau == pytest.approx(-1.0)
    # ada vs (bob + cat) who exactly disagree: no consensus order, so not scored, but counted
    data.append((1, "cat", [1, 2, 3]))
    agree = consensus_agreement(data)
    assert (agree["bob"].items, agree["bob"].scored, agree["bob"].tau) == (1, 1, -1.0)
    assert (agree["ada"].items, agree["ada"].scored, agree["ada"].tau) == (1, 0, None)


def test_random_annotators_have_alpha_near_zero() -> None:
    rng = random.Random(2)
    data = [(c, n, random_ranking(rng, 4)) for c in range(400) for n in ["ada", "bob", "cat"]]
    alpha = overall_alpha(data)
    assert alpha is not None and abs(alpha) < 0.05
    for agree in consensus_agreement(data).values():
        assert agree.tau is not None and abs(agree.tau) < 0.1


def test_a_tie_against_a_strict_order_is_partial_agreement() -> None:
    data = [(1, "ada", [1, 2, 2, 3]), (1, "bob", [1, 2, 3, 4])]
    tau = consensus_agreement(data)["ada"].tau
    assert tau is not None and 0.0 < tau < 1.0
    assert tau == pytest.approx(5 / math.sqrt(5 * 6))  # tau-b: 5 concordant, one tie in x
    gold = gold_agreement([(1, "ada", [1, 1, 2])], {1: [1, 2, 3]})["ada"]
    assert (gold.pairs, gold.pair_accuracy) == (3, pytest.approx(2.5 / 3))  # the tie counts 1/2
    assert 0.0 < gold.tau < 1.0


def test_all_tie_rankings_leave_tau_and_alpha_undefined() -> None:
    data = [(c, n, [1, 1, 1]) for c in range(3) for n in ["ada", "bob"]]
    assert overall_alpha(data) is None  # no variation at all
    assert consensus_agreement(data)["ada"] == ConsensusAgreement("ada", 3, 0, None)
    tying = gold_agreement(data, {0: [1, 2, 3], 1: [1, 2, 3]})["bob"]
    assert (tying.items, tying.scored, tying.tau, tying.pairs) == (2, 0, None, 6)
    assert tying.pair_accuracy == pytest.approx(0.5)  # like a coin flip, not better


def test_alpha_needs_two_annotators_on_an_item() -> None:
    assert overall_alpha([]) is None
    assert overall_alpha([(1, "ada", [1, 2]), (2, "bob", [2, 1])]) is None
    assert shared_items([(1, "ada", [1, 2]), (2, "bob", [2, 1]), (2, "ada", [1, 2])]) == 1


def test_alpha_matches_hand_computed_examples() -> None:
    # K = 3, one item: values 0, 1/2, 1. Coincidences o(0,0)=2, o(.5,1)=o(1,.5)=2, n_v = 2 each.
    # Ordinal distances: d(0,.5) = d(.5,1) = (2+2-2)^2 = 4, d(0,1) = (2+2+2-2)^2 = 16.
    # D_o = 2*2*4/6, D_e = 2*(2*2*4 + 2*2*4 + 2*2*16)/(6*5); alpha = 1 - D_o/D_e = 7/12.
    data = [(1, "ada", [1, 2, 3]), (1, "bob", [1, 3, 2])]
    assert overall_alpha(data) == pytest.approx(7 / 12)
    # K = 2, two items, agreeing on one and opposite on the other: binary values, n = 8,
    # n_0 = n_1 = 4, o(0,1) = 2, alpha = 1 - (n-1) o(0,1) / (n_0 n_1) = 1 - 14/16.
    data = [(1, "ada", [1, 2]), (1, "bob", [1, 2]), (2, "ada", [1, 2]), (2, "bob", [2, 1])]
    assert overall_alpha(data) == pytest.approx(1 / 8)


def test_position_scores_put_every_item_on_one_scale() -> None:
    assert list(position_scores([1, 2, 2, 3])) == [0.0, 0.5, 0.5, 1.0]
    assert list(position_scores([1, 1, 1, 2])) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert position_scores([3, 1, 2])[1] == position_scores([1, 2, 3, 4, 5])[0] == 0.0
    assert position_scores([1, 2, 3])[1] == position_scores([1, 2, 3, 4, 5])[2] == 0.5
    # A tie-heavy and a strict annotator who agree that D is worst: dense ranks 2 and 4 would
    # count D as a disagreement, position scores (1 and 1) do not, so alpha comes out higher.
    data = [(1, "ada", [1, 1, 1, 2]), (1, "bob", [1, 2, 3, 4]), (2, "ada", [1, 2, 3, 4])]
    data.append((2, "bob", [2, 1, 3, 4]))
    dense = krippendorff.alpha(
        reliability_data=[[1, 1, 1, 2, 1, 2, 3, 4], [1, 2, 3, 4, 2, 1, 3, 4]],
        level_of_measurement="ordinal",
    )
    assert overall_alpha(data) > dense


def test_tau_b_and_mid_ranks_are_scipys_to_the_last_bit() -> None:
    """Computed pair by pair for speed; held to scipy's kendalltau and rankdata on rankings with
    and without ties, K = 2..8, including the undefined (all-tie) cases."""
    rng = random.Random(11)
    undefined = 0
    for _ in range(3000):
        k = rng.randint(2, 8)
        x = random_ranking(rng, k, ties=rng.random() < 0.5)
        y = [rng.choice([1.0, 2.5, 3.0, 4.5]) for _ in range(k)]
        assert list(mid_ranks(x)) == list(rankdata(x, method="average"))
        expected = kendalltau(x, y, variant="b").statistic
        if math.isnan(expected):
            undefined += 1
            assert tau_b(x, y) is None
        else:
            assert tau_b(x, y) == float(expected)  # equal floats, not approximately
    assert 0 < undefined < 3000


def test_a_careless_annotator_is_spotted_by_gold_items() -> None:
    rng = random.Random(3)
    gold = {c: random_ranking(rng, 4) for c in range(40)}

    def careful(ranks: list[int]) -> list[int]:
        """The known order, now and then with two neighbours swapped or tied."""
        ranks = list(ranks)
        if rng.random() < 0.3:
            i = ranks.index(rng.randint(1, 3))
            j = ranks.index(ranks[i] + 1)
            ranks[i], ranks[j] = (ranks[j], ranks[i]) if rng.random() < 0.5 else (ranks[i],) * 2
        return dense_ranks(ranks)

    data = [(c, n, careful(r)) for c, r in gold.items() for n in ["ada", "bob", "cat"]]
    data += [(c, "zed", random_ranking(rng, 4)) for c in gold]
    data.append((999, "zed", [1, 2, 3, 4]))  # not a gold item: ignored
    result = gold_agreement(data, gold)
    for name in ["ada", "bob", "cat"]:
        assert result[name].items == 40
        assert result[name].tau > 0.8 and result[name].pair_accuracy > 0.9
    assert result["zed"].items == 40 and result["zed"].pairs == 40 * 6
    assert result["zed"].tau < 0.3 and result["zed"].pair_accuracy < 0.65
    # the careless one also stands out against the consensus of the others
    agree = consensus_agreement(data)
    assert agree["zed"].tau < 0.3
    assert min(agree[n].tau for n in ["ada", "bob", "cat"]) > 0.7


def test_pairwise_matrix_is_symmetric_with_counts() -> None:
    data = [
        (1, "ada", [1, 2, 3]), (1, "bob", [1, 2, 3]), (1, "cat", [3, 2, 1]),
        (2, "ada", [1, 2, 3]), (2, "bob", [1, 1, 1]),
        (3, "cat", [1, 2, 3]),
    ]  # fmt: skip
    m = pairwise_tau(data)
    ada, bob, cat = range(3)
    assert m.items == [[0, 2, 1], [2, 0, 1], [1, 1, 0]]
    assert m.tau[ada][bob] == m.tau[bob][ada] == 1.0  # item 2 is all ties for bob: not scored
    assert m.tau[ada][cat] == m.tau[bob][cat] == -1.0
    assert m.tau[ada][ada] is None
    assert {(r["annotator"], r["other"]) for r in m.rows()} == {
        (a, b) for a in ["ada", "bob", "cat"] for b in ["ada", "bob", "cat"] if a != b
    }


def test_malformed_judgements_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        overall_alpha([(1, "ada", [1, 2]), (1, "ada", [2, 1])])
    with pytest.raises(ValueError, match="lengths"):
        consensus_agreement([(1, "ada", [1, 2]), (1, "bob", [1, 2, 3])])
    with pytest.raises(ValueError, match="length"):
        gold_agreement([(1, "ada", [1, 2])], {1: [1, 2, 3]})
    assert consensus_agreement([(1, "ada", [1]), (1, "bob", [1])]) == {}  # one response: no order


def test_seconds_summary() -> None:
    summary = seconds_summary([float(s) for s in range(1, 11)])
    assert (summary.n, summary.median, summary.p90) == (10, 5.5, pytest.approx(9.1))
    assert seconds_summary([]) == SecondsSummary(0, None, None)
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 10, 11, 99, 1000]:  # from the order statistics alone, as numpy has it
        values = rng.lognormal(3, 1, n).tolist()
        summary = seconds_summary(values)
        assert summary.median == np.median(values)
        assert summary.p90 == pytest.approx(np.percentile(values, 90), rel=1e-12)


def random_judgements(rng: random.Random, items: int) -> list[tuple[int, str, list[int]]]:
    """Items of K = 2..5 responses ranked (with ties) by 1-4 of five annotators."""
    names = ["ada", "bob", "cat", "dan", "eve"]
    data = []
    for c in range(items):
        k = rng.randint(2, 5)
        data += [
            (c, n, random_ranking(rng, k, ties=True)) for n in rng.sample(names, rng.randint(1, 4))
        ]
    return data


def test_alpha_from_coincidences_is_the_krippendorff_packages() -> None:
    rng = random.Random(5)
    for _ in range(20):
        data = random_judgements(rng, rng.randint(3, 30))
        items = [item for item in items_of(data).values() if len(item.names) >= 2]
        if not items:
            continue
        names = sorted({n for item in items for n in item.names})
        columns = []
        for item in items:
            scores = {n: position_scores(r) for n, r in zip(item.names, item.ranks, strict=True)}
            for unit in range(len(item.ranks[0])):
                columns.append([scores[n][unit] if n in scores else np.nan for n in names])
        reliability = np.array(columns).T
        if len(np.unique(reliability[~np.isnan(reliability)])) < 2:
            continue
        expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement="ordinal")
        assert overall_alpha(data) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_a_tally_kept_up_to_date_equals_one_built_from_scratch() -> None:
    rng = random.Random(6)
    data = random_judgements(rng, 200)
    items = items_of(data)
    kept = AgreementTally()
    order = list(items)
    rng.shuffle(order)
    for c in order:  # every item in another order, some added wrong first and then redone
        if rng.random() < 0.3:
            wrong = Item(items[c].names, tuple(r[::-1] for r in items[c].ranks))
            kept.update({wrong: 1})
            redo = defaultdict(int)  # wrong may equal the item: all ties reverse to themselves
            redo[wrong] -= 1
            redo[items[c]] += 1
            kept.update(redo)
        else:
            kept.update({items[c]: 1})
    assert kept.figures() == tally(data).figures()
    dropped = set(order[:50])
    kept.update({items[c]: -1 for c in dropped})
    assert kept.figures() == tally([j for j in data if j[0] not in dropped]).figures()
    kept.update({items[c]: 1 for c in dropped})
    assert kept.figures() == tally(data).figures()


# --- the store: live rankings through the real serving and submitting code ----------------------


def quality_db(tmp_path: Path) -> sqlite_utils.Database:
    return fresh_db(tmp_path)


def rank_next(
    db: sqlite_utils.Database,
    annotator: int,
    ranks: list[int | None] | None,
    status: Status = "ranked",
    reason: str = "",
) -> int:
    """Serve this annotator's next item (overlap 4) and answer it: the app's code path."""
    task = next_task(db, annotator, overlap=4, assignment_timeout_s=TIMEOUT)
    assert task is not None
    return submit(db, annotator, task.comparison_id, status, ranks, reason)


def test_store_feeds_live_rankings_only(tmp_path: Path) -> None:
    db = quality_db(tmp_path)
    items = make_comparisons(db, 6, k=3)
    truth, reverse = [1, 2, 3], [3, 2, 1]
    ada, bob, cat, dan = (annotator_id(db, n) for n in ["ada", "bob", "cat", "dan"])
    ada_ids = [rank_next(db, ada, truth) for _ in range(5)]
    retracted = rank_next(db, ada, reverse)  # a slip on the last item...
    assert undo_last(db, ada) == items[5]
    ada_ids.append(rank_next(db, ada, truth))  # ...undone and ranked again
    bob_ids = [rank_next(db, bob, truth) for _ in range(4)]
    bob_skip = rank_next(db, bob, None, status="skipped")
    bob_flag = rank_next(db, bob, reverse, status="flagged", reason="both answers are wrong")
    for _ in range(6):
        rank_next(db, cat, reverse)
        rank_next(db, dan, truth)
    db.execute("UPDATE comparisons SET gold_ranks = ? WHERE id = ?", ["[1, 2, 3]", items[0]])

    live = judgements(db)
    assert len(live) == 6 + 4 + 6 + 6
    assert Judgement(items[5], "ada", truth) in live
    assert Judgement(items[5], "ada", reverse) not in live
    assert not [j for j in live if j.annotator == "bob" and j.comparison_id in items[4:]]
    assert {j.comparison_id for j in judgements(db, gold=True)} == {items[0]}
    assert {j.comparison_id for j in judgements(db, gold=False)} == set(items[1:])
    assert gold_orders(db) == {items[0]: truth}

    # Time per item is the stored seconds of live rankings: not the retraction, skip or flag.
    for i, ranking in enumerate(ada_ids):
        db["rankings"].update(ranking, {"seconds": float(i + 1)})
    for ranking in [retracted, bob_skip, bob_flag]:
        db["rankings"].update(ranking, {"seconds": 1000.0})
    for ranking in bob_ids:
        db["rankings"].update(ranking, {"seconds": 2.0})
    assert seconds_summaries(db)["ada"] == SecondsSummary(6, 3.5, pytest.approx(5.5))

    report = {row["annotator"]: row for row in annotator_report(db)}
    assert list(report) == ["ada", "bob", "cat", "dan"]
    assert report["ada"] == {
        "annotator": "ada", "ranked": 6, "skipped": 0, "flagged": 0, "written": 0,
        "median_s": 3.5, "p90_s": pytest.approx(5.5),
        # policy items 1-5: on 1-3 bob, dan (order) and cat (reverse) make a consensus order;
        # on 4-5 only dan and cat, exactly opposed: no consensus, counted but not scored
        "agreement_tau": 1.0, "agreement_items": 5, "agreement_scored": 3,
        "gold_items": 1, "gold_tau": 1.0, "gold_pair_accuracy": 1.0,
    }  # fmt: skip
    assert (report["bob"]["ranked"], report["bob"]["skipped"], report["bob"]["flagged"]) == (
        4, 1, 1,
    )  # fmt: skip
    assert (report["bob"]["median_s"], report["bob"]["p90_s"]) == (2.0, 2.0)
    assert (report["bob"]["agreement_items"], report["bob"]["agreement_tau"]) == (3, 1.0)
    cat_row = report["cat"]
    assert (cat_row["agreement_tau"], cat_row["agreement_scored"]) == (-1.0, 5)
    assert (cat_row["gold_tau"], cat_row["gold_pair_accuracy"]) == (-1.0, 0.0)

    summary = overall(db)
    assert summary["alpha"] == pytest.approx(overall_alpha(judgements(db, gold=False)))
    assert summary["alpha"] < 0.5
    assert (summary["items_shared"], summary["annotators"]) == (5, 4)


def test_report_lists_annotators_before_any_overlap(tmp_path: Path) -> None:
    db = quality_db(tmp_path)
    make_comparisons(db, 2, k=2)
    ada = annotator_id(db, "ada")
    annotator_id(db, "newcomer")
    annotator_id(db, "operator who does not rank", role="operator")
    rank_next(db, ada, [1, 2])
    rows = annotator_report(db)
    assert [r["annotator"] for r in rows] == ["ada", "newcomer"]
    assert rows[1] == {
        "annotator": "newcomer", "ranked": 0, "skipped": 0, "flagged": 0, "written": 0,
        "median_s": None, "p90_s": None,
        "agreement_tau": None, "agreement_items": 0, "agreement_scored": 0,
        "gold_items": 0, "gold_tau": None, "gold_pair_accuracy": None,
    }  # fmt: skip
    assert rows[0]["ranked"] == 1 and rows[0]["agreement_tau"] is None
    assert overall(db) == {"alpha": None, "items_shared": 0, "annotators": 1}
