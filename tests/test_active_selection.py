"""Active selection needs fewer human rankings than random order to reach the same held-out
accuracy, on the pool the app serves (policy samples): bench/active_selection.py's experiment at
its default size. (On the cleaner corpus pool the two arms are within one batch of each other;
see the benchmark's --pool corpus.)"""

from pathlib import Path

from bench.active_selection import compare, mean_curve, rankings_to_reach

TARGET = 0.93


def test_active_selection_reaches_the_target_with_fewer_rankings(demo_model_path: Path) -> None:
    curves = compare(str(demo_model_path), seeds=3, rounds=8, batch=8, pool="policy")
    needed = {arm: rankings_to_reach(mean_curve(runs), TARGET) for arm, runs in curves.items()}
    print(f"rankings to reach held-out pairwise accuracy {TARGET}: {needed}")
    for arm, runs in curves.items():
        print(arm, [(n, round(a, 3)) for n, a in mean_curve(runs)])
    assert needed["active"] is not None
    assert needed["random"] is None or needed["active"] < needed["random"]
