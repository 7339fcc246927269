"""The learning curve of the whole online loop: oracle score per iteration, saved as a plot.

The simulated annotator prefers answers near five words (with noise and ties); each iteration
ranks the live policy's samples, retrains the reward model and runs a PPO round on the app's
demo model (default settings, 500 pre-training steps). The oracle scores held-out prompts.

    python bench/loop_learning.py [--iterations 6] [--rankings 64]

Writes bench/out/loop_learning.json and bench/out/loop_learning.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.model.demo_corpus import demo_prompts  # noqa: E402
from rlhf_loop.model.loader import resolve_model_path  # noqa: E402
from rlhf_loop.prompt_import import ParsedPrompts, PromptRow  # noqa: E402
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator  # noqa: E402
from rlhf_loop.simulate_loop import DEMO_LOOP_SETTINGS, LoopCurve, run_loop  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.prompts import add_prompts  # noqa: E402

OUT = REPO / "bench" / "out"


def plot(curve: LoopCurve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (score_ax, kl_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    score_ax.plot(range(len(curve.oracle_scores)), curve.oracle_scores, marker="o")
    score_ax.set_xlabel("loop iteration (rank -> reward model -> PPO)")
    score_ax.set_ylabel("oracle score, held-out prompts")
    kl_ax.plot(range(1, len(curve.kl) + 1), curve.kl, marker="o", color="tab:red")
    kl_ax.set_xlabel("loop iteration")
    kl_ax.set_ylabel("KL to the base model (nats/response)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--rankings", type=int, default=64)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, **DEMO_LOOP_SETTINGS)
        db = open_db(settings.resolved_db_path)
        rows = [PromptRow(text=p, line=i + 1) for i, p in enumerate(demo_prompts(200))]
        add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "demo")
        annotator = SimulatedAnnotator(
            LengthOracle(target_words=5), noise=0.3, tie_threshold=0.5, seed=0
        )

        def show(iteration: int, curve: LoopCurve) -> None:
            print(
                f"iteration {iteration}: oracle {curve.oracle_scores[-1]:.3f}, "
                f"KL {curve.kl[-1]:.3f}, rankings {curve.rankings[-1]}",
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
        )
    result = {
        "oracle_scores": curve.oracle_scores,
        "kl": curve.kl,
        "rankings": curve.rankings,
        "wall_s": time.perf_counter() - started,
        "settings": DEMO_LOOP_SETTINGS,
    }
    (OUT / "loop_learning.json").write_text(json.dumps(result, indent=2))
    plot(curve, OUT / "loop_learning.png")
    print(
        f"oracle score {curve.oracle_scores[0]:.3f} -> {curve.oracle_scores[-1]:.3f} over "
        f"{args.iterations} iterations; max KL {max(curve.kl):.3f}; {result['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
