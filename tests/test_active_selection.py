"""Smoke test of bench/active_selection.py, which measures whether active selection needs fewer
human rankings than random order for the same held-out accuracy (3 seeds × 8 rounds there; its
figures and plot are in bench/out/active_selection.*). Here: one seed, two rounds, checking that
both arms start from the same rankings, grow by one batch a round, and learn the preference."""

from pathlib import Path

from bench.active_selection import compare

BATCH = 8


def test_both_arms_start_alike_and_learn_the_hidden_preference(demo_model_path: Path) -> None:
    curves = compare(str(demo_model_path), seeds=1, rounds=2, batch=BATCH, pool="policy")
    (random_curve,), (active_curve,) = curves["random"], curves["active"]
    print({"random": random_curve, "active": active_curve})
    assert [n for n, _ in random_curve] == [n for n, _ in active_curve] == [BATCH, 2 * BATCH]
    assert random_curve[0] == active_curve[0]  # the same first rankings, the same model
    for _, accuracy in random_curve + active_curve:
        assert 0.6 < accuracy <= 1.0  # far above chance (0.5) on held-out prompts
