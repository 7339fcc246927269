"""Issue 13's verifiable-rewards claim: PPO rounds on the arithmetic check, with no rankings.

Per seed, on a fresh data dir holding the demo world's 180 arithmetic prompts and the shipped demo
model: ``--rounds`` PPO rounds (the demo's loop settings: 120 steps of 16 prompts x 4 samples)
whose only reward is ``rlhf_loop.verifiers:arithmetic`` (``reward_model_weight = 0``: no reward
model, no rankings). Before and after each round, the live policy's arithmetic correctness (8
samples at T=1 per prompt, a fixed seed) on the prompts the rounds train on and, apart, on the
held-out prompts they never see, with the round's KL to the base.

    python bench/verifier_rounds.py [--seeds 3] [--rounds 3]

Writes bench/out/verifier_rounds.json and, with matplotlib, verifier_rounds.png.
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

from bench.figures import pyplot, save  # noqa: E402
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.demo_command import add_demo_prompts, arithmetic_correctness  # noqa: E402
from rlhf_loop.model.demo_corpus import ARITHMETIC  # noqa: E402
from rlhf_loop.model.loader import resolve_model_path  # noqa: E402
from rlhf_loop.ppo.round import run_ppo_round, split_prompts  # noqa: E402
from rlhf_loop.sampler import LivePolicy  # noqa: E402
from rlhf_loop.simulate_loop import DEMO_LOOP_SETTINGS, run_job  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.versions import live_policy  # noqa: E402

OUT = REPO / "bench" / "out"
VERIFIER_SETTINGS = DEMO_LOOP_SETTINGS | {
    "reward_functions": "rlhf_loop.verifiers:arithmetic",
    "reward_model_weight": 0.0,
}


def correctness(db, settings: Settings, policy: LivePolicy, train, held_out) -> dict:
    model, tokenizer, version = policy.current(live_policy(db, settings.model))
    return {
        "version": version,
        "train": arithmetic_correctness(model, tokenizer, train, settings.max_new_tokens),
        "held_out": arithmetic_correctness(model, tokenizer, held_out, settings.max_new_tokens),
    }


def run_seed(seed: int, rounds: int, model_path: str) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, **VERIFIER_SETTINGS)
        db = open_db(settings.resolved_db_path)
        add_demo_prompts(db, None, (ARITHMETIC,))
        train, held_out = split_prompts(db, settings)
        policy = LivePolicy(model_path, settings.device, settings.dtype)
        rows = [correctness(db, settings, policy, train, held_out) | {"round": 0, "kl": None}]
        for number in range(1, rounds + 1):
            result = run_job(db, settings, "ppo_round", run_ppo_round, model_path)
            row = correctness(db, settings, policy, train, held_out)
            row |= {"round": number, "kl": result.get("kl_after"), "job": result}
            rows.append(row)
            print(
                f"seed {seed} round {number}: correctness on training prompts "
                f"{rows[0]['train']:.3f} -> {row['train']:.3f}, held-out {rows[0]['held_out']:.3f}"
                f" -> {row['held_out']:.3f}, KL {row['kl']}",
                flush=True,
            )
    return {
        "seed": seed,
        "train_prompts": len(train),
        "held_out_prompts": len(held_out),
        "rounds": [{k: v for k, v in r.items() if k != "job"} for r in rows],
        "refused": [r["job"]["refused"] for r in rows[1:] if "refused" in r["job"]],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def plot(results: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for result in results:
        rounds = [r["round"] for r in result["rounds"]]
        line = ax.plot(rounds, [r["train"] for r in result["rounds"]], marker="o")[0]
        ax.plot(
            rounds,
            [r["held_out"] for r in result["rounds"]],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"seed {result['seed']}",
        )
    ax.set_xlabel("PPO round (reward: the arithmetic check only)")
    ax.set_ylabel("arithmetic correctness (solid: trained, dashed: held-out)")
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_path = resolve_model_path(Settings())
    results = [run_seed(seed, args.rounds, model_path) for seed in range(args.seeds)]
    gains = [r["rounds"][-1]["train"] - r["rounds"][0]["train"] for r in results]
    held = [r["rounds"][-1]["held_out"] - r["rounds"][0]["held_out"] for r in results]
    summary = {"train_gain": gains, "held_out_change": held, "min_train_gain": min(gains)}
    out = OUT / "verifier_rounds.json"
    out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    print(json.dumps(summary))
    if plot(results, out.with_suffix(".png")):
        print(f"plot: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
