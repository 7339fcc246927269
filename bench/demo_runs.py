"""Issue 12's learning claim: ``python -m rlhf_loop demo`` over several seeds, in one figure.

Each seed runs the demo command as a user would (fresh data dir in a temp folder, shipped demo
model, ArithmeticOracle annotators with noise 0.3, 4 iterations of 64 rankings, people's verdict
adopting candidates, or ``--adoption immediate``) and writes
bench/out/demo_<oracle>_<adoption>_seed<N>.json and .png. This script then
draws every seed's live-policy correctness per iteration in one plot and prints the summary.

    python bench/demo_runs.py [--seeds 3] [--first-seed 0] [--oracle arithmetic]
                              [--adoption human] [--reuse]

``--reuse`` plots the JSON files already there instead of running the demo again.
Writes bench/out/demo_<oracle>_<adoption>.png and .json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"


def run_seed(oracle: str, seed: int, iterations: int, adoption: str) -> dict:
    out = OUT / f"demo_{oracle}_{adoption}_seed{seed}.png"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rlhf_loop",
                "demo",
                "--oracle",
                oracle,
                "--seed",
                str(seed),
                "--iterations",
                str(iterations),
                "--adoption",
                adoption,
                "--data-dir",
                f"{tmp}/data",
                "--out",
                str(out),
            ],
            cwd=REPO,
            check=True,
        )
    return json.loads(out.with_suffix(".json").read_text())


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for result in results:
        rows = result["iterations"]
        ax.plot(
            [r["iteration"] for r in rows],
            [r["oracle_value"] for r in rows],
            marker="o",
            label=f"seed {result['seed']}: {rows[0]['oracle_value']:.2f} -> "
            f"{rows[-1]['oracle_value']:.2f}, max KL {result['summary']['max_kl'] or 0:.1f}",
        )
    metric = results[0]["iterations"][0]["oracle_metric"]
    ax.set_xlabel("loop iteration (64 simulated rankings each)")
    ax.set_ylabel(f"live policy: held-out {metric}")
    ax.set_title(path.stem.replace("_", " "))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed .. first-seed + seeds - 1 (e.g. 3 to confirm on seeds not tuned on)",
    )
    parser.add_argument("--oracle", default="arithmetic")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--adoption", choices=["human", "immediate"], default="human")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        saved = OUT / f"demo_{args.oracle}_{args.adoption}_seed{seed}.json"
        results.append(
            json.loads(saved.read_text())
            if args.reuse
            else run_seed(args.oracle, seed, args.iterations, args.adoption)
        )
    summary = {
        "oracle": args.oracle,
        "per_seed": [{"seed": r["seed"], **r["summary"], "wall_s": r["wall_s"]} for r in results],
        "min_change": min(r["summary"]["change"] for r in results),
    }
    name = f"demo_{args.oracle}_{args.adoption}"
    if args.first_seed:
        name += f"_seeds{args.first_seed}-{args.first_seed + args.seeds - 1}"
    (OUT / f"{name}.json").write_text(json.dumps(summary, indent=2))
    plot(results, OUT / f"{name}.png")
    for row in summary["per_seed"]:
        print(
            f"seed {row['seed']}: {row['metric']} {row['start']:.3f} -> {row['end']:.3f} "
            f"({row['change']:+.3f}), max KL {row['max_kl']}, {row['rounds']} rounds, "
            f"{row['wall_s']:.0f} s"
        )
    print(f"wrote bench/out/{name}.json and .png")


if __name__ == "__main__":
    main()
