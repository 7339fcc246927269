"""How often is people's verdict wrong, and how many blind rankings does a real gain need?

Blind items are simulated without a model: each of K = 4 responses (two per version) is right
with its version's correctness, a simulated annotator (ArithmeticOracle's 1 / 0 scores, Gaussian
noise 0.3, ties within 0.5: the demo's annotator) ranks them, and the verdict is read after every
``--look`` new rankings, as the worker reads it whenever rankings arrive. Two rules:

- ``interval``: the rule before the sequential test, a 95% bootstrap interval of the Davidson win
  rate excluding 0.5 (``arena.strengths.verdict``), read again at every look;
- ``sequential``: ``arena.sequential``, a continuous-monitoring boundary over the budget.

Per effect (the candidate's correctness against the live version's 0.59, the demo base's), the
share of runs with any verdict by each number of rankings and, at no effect, the share with a
wrong one. Runs in about a minute on 2 cores.

    python bench/verdict_power.py [--runs 200] [--look 16] [--max-rankings 256] [--budget 512]

Writes bench/out/verdict_power.json and, with matplotlib, verdict_power.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.figures import pyplot, save  # noqa: E402
from rlhf_loop.arena.fit import Ranking  # noqa: E402
from rlhf_loop.arena.sequential import MIN_RANKINGS, sequential_evidence  # noqa: E402
from rlhf_loop.arena.strengths import (  # noqa: E402
    MIN_PAIRS,
    NO_EVIDENCE,
    bootstrap_strengths,
    direct_comparisons,
    verdict,
    win_rate_interval,
)
from rlhf_loop.simulate import ranks_with_ties  # noqa: E402

LIVE, CANDIDATE = 0, 1
BASE_CORRECTNESS = 0.59  # the demo base on held-out arithmetic (bench/out/demo_arithmetic_*)
NOISE, TIE = 0.3, 0.5
BOOTSTRAP = 400


def blind_ranking(rng: random.Random, p_live: float, p_candidate: float) -> Ranking:
    """Two responses per version, each right with its version's correctness, ranked by a noisy
    annotator who prefers right answers."""
    versions = [LIVE, LIVE, CANDIDATE, CANDIDATE]
    right = [rng.random() < (p_candidate if v == CANDIDATE else p_live) for v in versions]
    noisy = [float(r) + rng.gauss(0.0, NOISE) for r in right]
    return list(zip(versions, ranks_with_ties(noisy, TIE), strict=True))


def interval_verdict(rankings: list[Ranking], budget: int) -> str:
    """The former rule: a 95% bootstrap interval of the win rate, read as it stands."""
    if len(rankings) < MIN_RANKINGS:
        return NO_EVIDENCE
    boot = bootstrap_strengths(rankings, LIVE, BOOTSTRAP, len(rankings))
    pairs = direct_comparisons(rankings, CANDIDATE, LIVE).pairs
    return verdict(win_rate_interval(boot, CANDIDATE, LIVE), MIN_PAIRS, pairs)


def sequential_verdict(rankings: list[Ranking], budget: int) -> str:
    return sequential_evidence(rankings, CANDIDATE, LIVE, budget).verdict


RULES = {"interval": interval_verdict, "sequential": sequential_verdict}


def first_verdict(rule, p_candidate: float, seed: int, look: int, most: int, budget: int):
    """(rankings read, verdict) at the first look with a verdict, or (None, NO_EVIDENCE)."""
    rng = random.Random(seed)
    rankings: list[Ranking] = []
    while len(rankings) < most:
        rankings += [blind_ranking(rng, BASE_CORRECTNESS, p_candidate) for _ in range(look)]
        said = rule(rankings, budget)
        if said != NO_EVIDENCE:
            return len(rankings), said
    return None, NO_EVIDENCE


def decided_by(outcomes: list[tuple[int | None, str]], n: int, which: str | None = None) -> float:
    """Share of runs with a verdict (``which``, or any) by ``n`` rankings."""
    hits = [
        at is not None and at <= n and (which is None or said == which) for at, said in outcomes
    ]
    return sum(hits) / len(hits)


def measure(runs: int, look: int, most: int, budget: int, gains: list[float]) -> dict:
    checkpoints = list(range(look, most + 1, look))
    result: dict = {"checkpoints": checkpoints, "rules": {}}
    for name, rule in RULES.items():
        per_gain = {}
        for gain in gains:
            outcomes = [
                first_verdict(rule, BASE_CORRECTNESS + gain, seed, look, most, budget)
                for seed in range(runs)
            ]
            per_gain[f"{gain:+.2f}"] = {
                "any_verdict": [decided_by(outcomes, n) for n in checkpoints],
                "better": [decided_by(outcomes, n, "better") for n in checkpoints],
                "worse": [decided_by(outcomes, n, "worse") for n in checkpoints],
            }
            curves = per_gain[f"{gain:+.2f}"]
            at = {n: i for i, n in enumerate(checkpoints)}
            shares = ", ".join(
                f"{n}: better {curves['better'][i]:.2f} worse {curves['worse'][i]:.2f}"
                for n, i in at.items()
                if n in (64, 128, most)
            )
            print(f"{name:>10} gain {gain:+.2f}: by rankings {shares}", flush=True)
        result["rules"][name] = per_gain
    return result


def plot(result: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (name, per_gain) in zip(axes, result["rules"].items(), strict=True):
        for gain, curves in per_gain.items():
            key = "any_verdict" if float(gain) == 0 else "better"
            label = "no gain: any verdict (wrong)" if float(gain) == 0 else f"gain {gain}: better"
            ax.plot(result["checkpoints"], curves[key], marker="o", label=label)
        ax.axhline(0.05, color="grey", linestyle=":")
        ax.set_title(f"{name} rule")
        ax.set_xlabel("blind rankings read (a look every 16)")
    axes[0].set_ylabel("share of runs with a verdict")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"People's verdict, live policy {BASE_CORRECTNESS:.2f} correct, {result['runs']} runs"
    )
    save(fig, path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--look", type=int, default=16, help="rankings between two looks")
    parser.add_argument("--max-rankings", type=int, default=256)
    parser.add_argument("--budget", type=int, default=512, help="eval_max_comparisons (pairs)")
    args = parser.parse_args()
    gains = [0.0, 0.08, 0.16, 0.26]
    result = measure(args.runs, args.look, args.max_rankings, args.budget, gains)
    result |= {
        "runs": args.runs,
        "budget_pairs": args.budget,
        "live_correctness": BASE_CORRECTNESS,
        "noise": NOISE,
        "tie_threshold": TIE,
    }
    out = REPO / "bench" / "out" / "verdict_power.json"
    out.write_text(json.dumps(result, indent=2))
    if plot(result, out.with_suffix(".png")):
        print(f"plot: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
