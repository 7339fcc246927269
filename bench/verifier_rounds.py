"""Issue 13's verifiable-rewards claims: PPO rounds on the arithmetic check, with and without
rankings of another preference beside it.

Per seed, on a fresh data dir with the shipped demo model, ``--rounds`` PPO rounds (the demo's
loop settings: 120 steps of 16 prompts x 4 samples) rewarded by ``rlhf_loop.verifiers:arithmetic``:

- ``--arm verifier`` (default): the demo world's 180 arithmetic prompts, the check alone
  (``reward_model_weight = 0``: no reward model, no rankings);
- ``--arm mixed-verifier``: 200 prompts of every demo kind, the check alone;
- ``--arm mixed-rankings``: the same prompts, and before each round 64 rankings by simulated
  annotators who prefer answers saying "thank" (noise 0.3, ties within 0.5) train the reward
  model, whose score is added to the check's.

Before and after each round: the live policy's arithmetic correctness (8 samples at T=1 per
prompt, a fixed seed) on the arithmetic prompts the rounds train on and, apart, on held-out ones
they never see; the share of answers saying "thank" on held-out prompts (4 samples each); and
the round's KL to the base.

    python bench/verifier_rounds.py [--arm verifier] [--seeds 3] [--rounds 3]

Writes bench/out/verifier_rounds_<arm>.json and, with matplotlib, a .png beside it.
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
from rlhf_loop.simulate import KeywordOracle, SimulatedAnnotator, parse_arithmetic  # noqa: E402
from rlhf_loop.simulate_loop import (  # noqa: E402
    DEMO_LOOP_SETTINGS,
    oracle_scores,
    run_job,
    run_loop,
)
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.versions import live_policy  # noqa: E402

OUT = REPO / "bench" / "out"
ARITHMETIC_CHECK = {"reward_functions": "rlhf_loop.verifiers:arithmetic"}
ARMS = {  # prompts, settings, whether simulated people rank before each round
    "verifier": ("arithmetic", ARITHMETIC_CHECK | {"reward_model_weight": 0.0}, False),
    "mixed-verifier": ("mixed", ARITHMETIC_CHECK | {"reward_model_weight": 0.0}, False),
    "mixed-rankings": ("mixed", ARITHMETIC_CHECK, True),
}
KEYWORD = KeywordOracle("thank")
RANKINGS, NOISE, TIE = 64, 0.3, 0.5


def measure(db, settings: Settings, policy: LivePolicy, train, held_out) -> dict:
    """Arithmetic correctness on trained and held-out arithmetic prompts; "thank" share."""
    model, tokenizer, version = policy.current(live_policy(db, settings.model))
    tokens = settings.max_new_tokens
    sums = [p for p in train if parse_arithmetic(p)], [p for p in held_out if parse_arithmetic(p)]
    thanks = oracle_scores(model, tokenizer, KEYWORD, held_out, tokens)
    return {
        "version": version,
        "train": arithmetic_correctness(model, tokenizer, sums[0], tokens),
        "held_out": arithmetic_correctness(model, tokenizer, sums[1], tokens),
        "thank_share": sum(thanks) / len(thanks),
    }


def run_seed(arm: str, seed: int, rounds: int, model_path: str) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    kind, overrides, ranked = ARMS[arm]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, **(DEMO_LOOP_SETTINGS | overrides))
        db = open_db(settings.resolved_db_path)
        add_demo_prompts(db, *((None, (ARITHMETIC,)) if kind == "arithmetic" else ()))
        train, held_out = split_prompts(db, settings)
        policy = LivePolicy(model_path, settings.device, settings.dtype)
        rows = [measure(db, settings, policy, train, held_out) | {"round": 0, "kl": None}]

        def record(number: int, kl: float | None) -> None:
            rows.append(
                measure(db, settings, policy, train, held_out) | {"round": number, "kl": kl}
            )
            row = rows[-1]
            print(
                f"{arm} seed {seed} round {number}: arithmetic correctness trained "
                f"{rows[0]['train']:.3f} -> {row['train']:.3f}, held-out "
                f"{rows[0]['held_out']:.3f} -> {row['held_out']:.3f}; 'thank' "
                f"{rows[0]['thank_share']:.3f} -> {row['thank_share']:.3f}; KL {kl}",
                flush=True,
            )

        if ranked:
            annotator = SimulatedAnnotator(KEYWORD, noise=NOISE, tie_threshold=TIE, seed=seed)
            run_loop(
                db,
                settings,
                model_path,
                annotator,
                rounds,
                RANKINGS,
                lambda number, curve: record(number, curve.kl[-1] if curve.kl else None),
                force_rounds=True,
            )
        else:
            for number in range(1, rounds + 1):
                record(
                    number,
                    run_job(db, settings, "ppo_round", run_ppo_round, model_path).get("kl_after"),
                )
    return {
        "arm": arm,
        "seed": seed,
        "train_prompts": len(train),
        "held_out_prompts": len(held_out),
        "rounds": rows,
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
    ax.set_xlabel(f"PPO round ({results[0]['arm']})")
    ax.set_ylabel("arithmetic correctness (solid: trained, dashed: held-out)")
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=sorted(ARMS), default="verifier")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_path = resolve_model_path(Settings())
    results = [run_seed(args.arm, seed, args.rounds, model_path) for seed in range(args.seeds)]
    gains = [r["rounds"][-1]["train"] - r["rounds"][0]["train"] for r in results]
    held = [r["rounds"][-1]["held_out"] - r["rounds"][0]["held_out"] for r in results]
    thanks = [r["rounds"][-1]["thank_share"] - r["rounds"][0]["thank_share"] for r in results]
    summary = {
        "arm": args.arm,
        "train_gain": gains,
        "held_out_change": held,
        "thank_share_change": thanks,
        "min_train_gain": min(gains),
    }
    out = OUT / f"verifier_rounds_{args.arm}.json"
    out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    print(json.dumps(summary))
    if plot(results, out.with_suffix(".png")):
        print(f"plot: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
