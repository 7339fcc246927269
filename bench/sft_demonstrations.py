"""Issue 13's SFT claim: one SFT round on 100 simulated demonstrations (oracle-best answers)
lowers the held-out demonstrations' NLL and raises the oracle score, before any PPO.

Per seed, on a fresh data dir with the shipped demo model and the demo's loop settings
(``simulate_loop.DEMO_LOOP_SETTINGS``: held-out share 0.3) and the default SFT settings: the demo
world's 180 arithmetic prompts; the oracle's answer ("7 + 5 is 12.", in the corpus's phrasing,
``simulate_demonstrations``) imported as a demonstration on 100 of the training prompts, drawn
by the seed, and on every held-out prompt (which the round never trains on: the job measures
its before/after NLL on them); one "sft_round" job. Before and after: the job's held-out
demonstration NLL per response token, and the live policy's arithmetic correctness (8 samples
at T=1 per prompt, a fixed seed) on the held-out arithmetic prompts and on the 100 trained ones.

    python bench/sft_demonstrations.py [--seeds 3]

Writes bench/out/sft_demonstrations.json and, with matplotlib, a .png beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.figures import pyplot, save  # noqa: E402
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.demo_command import (  # noqa: E402
    add_demo_prompts,
    arithmetic_correctness,
    held_out_arithmetic,
)
from rlhf_loop.model.demo_corpus import ARITHMETIC  # noqa: E402
from rlhf_loop.model.loader import resolve_model_path  # noqa: E402
from rlhf_loop.ppo.round import split_prompts  # noqa: E402
from rlhf_loop.sampler import LivePolicy  # noqa: E402
from rlhf_loop.sft.job import JOB_KIND, run_sft_round  # noqa: E402
from rlhf_loop.simulate_demonstrations import add_oracle_demonstrations  # noqa: E402
from rlhf_loop.simulate_loop import DEMO_LOOP_SETTINGS, run_job  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.versions import live_policy  # noqa: E402

OUT = REPO / "bench" / "out"
DEMONSTRATIONS = 100


def correctness(db, settings: Settings, policy: LivePolicy, prompts: dict[str, list[str]]):
    model, tokenizer, version = policy.current(live_policy(db, settings.model))
    return {"version": version} | {
        name: arithmetic_correctness(model, tokenizer, group, settings.max_new_tokens)
        for name, group in prompts.items()
    }


def run_seed(seed: int, model_path: str) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, **DEMO_LOOP_SETTINGS)
        db = open_db(settings.resolved_db_path)
        add_demo_prompts(db, None, (ARITHMETIC,))
        train, _ = split_prompts(db, settings)
        held = held_out_arithmetic(db, settings)
        trained = random.Random(seed).sample(train, DEMONSTRATIONS)
        add_oracle_demonstrations(db, trained + held)
        prompts = {"held_out": held, "trained": trained}
        policy = LivePolicy(model_path, settings.device, settings.dtype)
        before = correctness(db, settings, policy, prompts)
        result = run_job(db, settings, JOB_KIND, run_sft_round, model_path)
        after = correctness(db, settings, policy, prompts)
    row = {
        "seed": seed,
        "train_demonstrations": result["train_demonstrations"],
        "heldout_demonstrations": result["heldout_demonstrations"],
        "steps": result["steps"],
        "nll_before": result["nll_before"],
        "nll_after": result["nll_after"],
        "correct_held_out_before": before["held_out"],
        "correct_held_out_after": after["held_out"],
        "correct_trained_before": before["trained"],
        "correct_trained_after": after["trained"],
        "version_after": after["version"],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def plot(rows: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (nll, correct) = plt.subplots(1, 2, figsize=(8, 3.6))
    for row in rows:
        line = nll.plot([0, 1], [row["nll_before"], row["nll_after"]], marker="o")[0]
        colour, label = line.get_color(), f"seed {row['seed']}"
        for name, style in (("held_out", "-"), ("trained", "--")):
            values = [row[f"correct_{name}_before"], row[f"correct_{name}_after"]]
            correct.plot([0, 1], values, marker="o", linestyle=style, color=colour, label=label)
            label = None
    correct.legend(fontsize=8)
    nll.set_ylabel("held-out demonstration NLL / token")
    correct.set_ylabel("arithmetic correctness (solid: held-out)")
    for ax in (nll, correct):
        ax.set_xticks([0, 1], ["before SFT", "after SFT"])
    save(fig, path)
    return True


def main(seeds: int) -> None:
    model_path = resolve_model_path(Settings())
    rows = [run_seed(seed, model_path) for seed in range(seeds)]

    def mean_change(name: str) -> float:
        return statistics.mean(r[f"{name}_after"] - r[f"{name}_before"] for r in rows)

    summary = {
        "seeds": seeds,
        "demonstrations": DEMONSTRATIONS,
        "mean_nll_change": mean_change("nll"),
        "mean_held_out_correctness_change": mean_change("correct_held_out"),
        "mean_trained_correctness_change": mean_change("correct_trained"),
        "nll_lower_every_seed": all(r["nll_after"] < r["nll_before"] for r in rows),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "sft_demonstrations.json"
    out.write_text(json.dumps({"summary": summary, "runs": rows}, indent=2))
    print(json.dumps(summary))
    if plot(rows, out.with_suffix(".png")):
        print(f"plot: {out.with_suffix('.png')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    main(parser.parse_args().seeds)
