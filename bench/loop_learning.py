"""The whole online loop against a simulated annotator, judged the way the app judges it.

Each iteration ranks the live policy's samples (some blind items mixing two versions), applies
people's verdict (promote / reject a candidate, or roll back), retrains the reward model and, when
it passes its gate, runs a PPO round, on the app's demo model. The oracle (the simulated
annotator's hidden preference) scores every version on held-out prompts.

    python bench/loop_learning.py --oracle length --seeds 3 [--iterations 5] [--rankings 64]

Oracles (scenarios of issue 10):
- ``length``: prefers ~5-word answers; ``keyword``: answers containing "thank" (learnable);
- ``arithmetic``: correct arithmetic, which the demo backbone's reward model cannot learn;
  ``hash``: a preference on a hash of the text, which no model can learn;
- ``misleading``: ordinary items ranked by a proxy (long answers) that trains the reward model,
  blind items by the real preference (short answers): the reward model misleads PPO.

Writes bench/out/loop_<oracle>_<adoption>.json and .png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from rlhf_loop.arena.degeneration import (  # noqa: E402
    VersionSignal,
    overoptimisation_warning,
    proxy_disagreement,
    round_proxy_gain,
)
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.demo_command import add_demo_prompts  # noqa: E402
from rlhf_loop.human_verdicts import standings  # noqa: E402
from rlhf_loop.model.loader import resolve_model_path  # noqa: E402
from rlhf_loop.simulate import (  # noqa: E402
    ArithmeticOracle,
    KeywordOracle,
    LengthOracle,
    SimulatedAnnotator,
)
from rlhf_loop.simulate_loop import DEMO_LOOP_SETTINGS, LoopCurve, run_loop  # noqa: E402
from rlhf_loop.store.annotators import annotator_id  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.submissions import submit  # noqa: E402
from rlhf_loop.store.tasks import next_task  # noqa: E402
from rlhf_loop.store.versions import list_versions  # noqa: E402

OUT = REPO / "bench" / "out"


class HashOracle:
    """Prefers texts whose hash is even: a preference no reward model can learn from text."""

    def score(self, prompt: str, response: str) -> float:
        return float(hashlib.sha256(response.encode()).digest()[0] % 2 == 0)


ORACLES = {
    "length": lambda: LengthOracle(target_words=5),
    "keyword": lambda: KeywordOracle("thank"),
    "arithmetic": lambda: ArithmeticOracle(),
    "hash": lambda: HashOracle(),
    "misleading": lambda: LengthOracle(target_words=3),
}


def split_annotator(true: SimulatedAnnotator, proxy: SimulatedAnnotator):
    """Blind items judged by the real preference, ordinary ones by the proxy."""

    def rank(db, n: int) -> None:
        who = annotator_id(db, "simulated")
        for _ in range(n):
            task = next_task(db, who, 1, 1800)
            if task is None:
                return
            blind = db["comparisons"].get(task.comparison_id)["blind_versions"] is not None
            judge = true if blind else proxy
            judgement = judge.judge(task.prompt, [r.text for r in task.responses])
            submit(db, who, task.comparison_id, judgement.status, judgement.ranks)

    return rank


def summarise(db, settings: Settings, curve: LoopCurve) -> dict:
    """The issue's figures for one run: verdicts against the oracle's own scores."""
    rows = {s.version: s for s in standings(db, settings.model, settings.eval_max_comparisons)}
    versions = {v["version"]: v for v in list_versions(db, "policy")}
    final = rows[curve.live_versions[-1]]
    base = curve.live_versions[0]
    judged = [  # the base's win rate against itself is 0.5 by definition
        (0.5 if v == base else rows[v].win_vs_base, curve.version_scores[v][0])
        for v in curve.version_scores
        if v in rows and (v == base or rows[v].win_vs_base is not None)
    ]
    human, oracle = [h for h, _ in judged], [o for _, o in judged]
    spearman = float(spearmanr(human, oracle).statistic) if len(judged) >= 3 else None
    # every change of the live version, oracle-checked against the version it replaced
    drops = []
    for before, after in zip(curve.live_versions, curve.live_versions[1:], strict=False):
        if before != after:
            (m0, s0), (m1, s1) = curve.version_scores[before], curve.version_scores[after]
            drops.append(
                {"from": before, "to": after, "change": m1 - m0, "se": (s0**2 + s1**2) ** 0.5}
            )
    history = [
        VersionSignal(
            v,
            versions[v]["metrics"].get("reward_after") or 0.0,
            rows[v].win_vs_base,
            rows[v].win_vs_base_interval,
        )
        for v in sorted(curve.version_scores)
        if versions[v]["path"] is not None and v in rows
    ]
    return {
        "final_live": final.version,
        "final_win_vs_base": final.win_vs_base,
        "final_interval": final.win_vs_base_interval,
        "final_pairs": final.pairs,
        "spearman_human_vs_oracle": spearman,
        "live_changes": drops,
        "worse_went_live": any(d["change"] < -2 * d["se"] for d in drops),
        "max_kl": max(curve.kl, default=None),
        "warning": overoptimisation_warning(history),
        "disagreements": [
            text
            for v in sorted(curve.version_scores)
            if v in rows
            and (
                text := proxy_disagreement(
                    v,
                    round_proxy_gain(versions[v]["metrics"]),
                    rows[v].parent,
                    rows[v].win_vs_parent_interval,
                )
            )
        ],
        "events": curve.events,
        "oracle_live": curve.oracle_scores,
        "live_versions": curve.live_versions,
        "version_scores": curve.version_scores,
        "adoption": {v: versions[v]["adoption"] for v in versions},
    }


def one_run(args: argparse.Namespace, seed: int) -> dict:
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=tmp,
            **DEMO_LOOP_SETTINGS
            | {
                "policy_adoption": args.adoption,
                "eval_share": args.eval_share,
                "eval_max_comparisons": args.max_comparisons,
            },
        )
        db = open_db(settings.resolved_db_path)
        add_demo_prompts(db, 200)
        annotator = SimulatedAnnotator(
            ORACLES[args.oracle](), noise=0.3, tie_threshold=0.5, seed=seed
        )
        rank = None
        if args.oracle == "misleading":
            proxy = SimulatedAnnotator(LengthOracle(target_words=15), noise=0.3, seed=seed)
            rank = split_annotator(annotator, proxy)

        def show(iteration: int, curve: LoopCurve) -> None:
            print(
                f"  seed {seed} iteration {iteration}: live v{curve.live_versions[-1]} oracle "
                f"{curve.oracle_scores[-1]:.3f}; {'; '.join(curve.events[-2:])}",
                flush=True,
            )

        curve = run_loop(
            db,
            settings,
            resolve_model_path(Settings()),
            annotator,
            args.iterations,
            args.rankings,
            show,
            force_rounds=args.force_rounds,
            annotate_items=rank,
            reject_undecided=True,
        )
        return {"seed": seed, **summarise(db, settings, curve)}


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (live_ax, judge_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in runs:
        live_ax.plot(run["oracle_live"], marker="o", label=f"seed {run['seed']}")
        scores = run["version_scores"]
        for v, (mean, se) in scores.items():
            colour = {"adopted": "tab:green", "rejected": "tab:red", "candidate": "tab:orange"}
            judge_ax.errorbar(
                v, mean, yerr=2 * se, fmt="o", color=colour.get(run["adoption"].get(v), "grey")
            )
    live_ax.set_xlabel("loop iteration")
    live_ax.set_ylabel("oracle score of the live policy (held-out)")
    live_ax.legend()
    judge_ax.set_xlabel("policy version (green adopted, red rejected, orange pending)")
    judge_ax.set_ylabel("oracle score ± 2 SE")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", choices=sorted(ORACLES), default="length")
    parser.add_argument("--adoption", choices=["human", "immediate"], default="human")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rankings", type=int, default=64)
    parser.add_argument("--eval-share", type=float, default=0.3)
    parser.add_argument(
        "--max-comparisons",
        type=int,
        default=160,
        help="pairs after which the simulated operator rejects a candidate without a verdict",
    )
    parser.add_argument("--force-rounds", action="store_true", help="run PPO past the gate")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        runs.append(one_run(args, seed))
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in {"events"}}), flush=True)
    name = f"loop_{args.oracle}_{args.adoption}{'_forced' if args.force_rounds else ''}"
    result = {"args": vars(args), "runs": runs, "wall_s": time.perf_counter() - started}
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    plot(runs, OUT / f"{name}.png", name)
    print(f"{name}: {result['wall_s']:.0f} s; wrote bench/out/{name}.json and .png")


if __name__ == "__main__":
    main()
