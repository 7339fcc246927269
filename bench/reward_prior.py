"""Can a reward model learn arithmetic correctness from 200 noisy rankings? (issue 12)

Per seed: the demo policy samples K=4 answers for 200 training prompts (mixed demo kinds, drawn
from the prompts the loop trains on), a simulated annotator with ArithmeticOracle ranks them
(noise 0.3, tie threshold 0.5), and a reward model trains on those rankings through the app's
own code (``load_backbone`` + ``train_reward_model``). It is then scored on every pair of a
correct and a wrong answer the policy sampled (8 per prompt) for the held-out arithmetic prompts,
which no ranking touched: the share of pairs where the correct answer gets the higher reward.

Arms: ``head`` is a scalar head on the last token (the form before issue 12); ``prior`` starts
from the backbone's mean log-likelihood of the response (``reward.likelihood``); ``prior_only``
is that starting point before any training, to show what the rankings add.

    python bench/reward_prior.py [--seeds 3] [--lrs 1e-3,3e-4,1e-4]

Writes bench/out/reward_prior.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rlhf_loop.arena.accuracy import accuracy_interval  # noqa: E402
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.model.demo_corpus import demo_prompts  # noqa: E402
from rlhf_loop.model.loader import load_causal_lm, resolve_model_path  # noqa: E402
from rlhf_loop.reward.data import RankingExample, is_held_out, reward_inputs  # noqa: E402
from rlhf_loop.reward.model import flat_rewards, load_backbone  # noqa: E402
from rlhf_loop.reward.train import RewardTrainConfig, train_reward_model  # noqa: E402
from rlhf_loop.sampler import SamplingParams, sample_responses  # noqa: E402
from rlhf_loop.simulate import ArithmeticOracle, SimulatedAnnotator, parse_arithmetic  # noqa: E402

RANKINGS, K, EVAL_K = 200, 4, 8
NOISE, TIE = 0.3, 0.5
HELD_OUT_FRACTION = Settings().reward_heldout_fraction
Pair = tuple[str, str, str]  # prompt, correct answer, wrong answer


def world(policy: str, seed: int) -> tuple[list[RankingExample], list[Pair]]:
    """Simulated rankings of policy samples, and held-out correct-vs-wrong pairs."""
    model, tokenizer = load_causal_lm(policy, "cpu", "float32")
    torch.manual_seed(seed)
    prompts = demo_prompts(200)
    train_prompts = [p for p in prompts if not is_held_out(p, HELD_OUT_FRACTION)]
    rng = random.Random(seed)
    chosen = [rng.choice(train_prompts) for _ in range(RANKINGS)]
    params = SamplingParams(K, 1.0, 1.0, 0, 24)
    groups = [
        g
        for i in range(0, RANKINGS, 25)
        for g in sample_responses(model, tokenizer, chosen[i : i + 25], params)
    ]
    oracle = ArithmeticOracle()
    annotator = SimulatedAnnotator(oracle, noise=NOISE, tie_threshold=TIE, seed=seed)
    rankings = []
    for prompt, group in zip(chosen, groups, strict=True):
        texts = [s.text for s in group]
        rankings.append(RankingExample(prompt, texts, annotator.rank(prompt, texts)))
    held = [  # every held-out arithmetic prompt of the demo world (220 prompts in all)
        p for p in demo_prompts(220) if is_held_out(p, HELD_OUT_FRACTION) and parse_arithmetic(p)
    ]
    samples = sample_responses(model, tokenizer, held, SamplingParams(EVAL_K, 1.0, 1.0, 0, 24))
    pairs = []
    for prompt, group in zip(held, samples, strict=True):
        scored = [(s.text, oracle.score(prompt, s.text)) for s in group]
        right = [t for t, v in scored if v == oracle.correct]
        wrong = [t for t, v in scored if v == oracle.wrong]
        pairs += [(prompt, r, w) for r in right for w in wrong]
    return rankings, pairs


@torch.inference_mode()
def pair_accuracy(model, tokenizer, pairs: list[Pair]) -> dict:
    """Share of pairs with the correct answer rewarded higher, and a 95% interval by prompt."""
    model.eval()
    by_prompt: dict[str, list[int]] = {}
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        prompts = [p for p, _, _ in chunk] * 2
        responses = [r for _, r, _ in chunk] + [w for _, _, w in chunk]
        rewards = flat_rewards(model, reward_inputs(tokenizer, prompts, responses, 64))
        good, bad = rewards[: len(chunk)], rewards[len(chunk) :]
        for (prompt, _, _), g, b in zip(chunk, good, bad, strict=True):
            by_prompt.setdefault(prompt, []).append(int(g > b))
    wins = [(float(sum(v)), len(v)) for v in by_prompt.values()]
    evidence = accuracy_interval(wins)
    return {
        "accuracy": sum(w for w, _ in wins) / sum(n for _, n in wins),
        "interval": evidence.interval,
        "pairs": len(pairs),
        "prompts": len(wins),
    }


def run_arm(policy: str, rankings, pairs, prior: bool, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model, tokenizer = load_backbone(policy, "cpu", likelihood_prior=prior)
    if lr == 0:
        return pair_accuracy(model, tokenizer, pairs)
    config = RewardTrainConfig(epochs=3, lr=lr, batch_rankings=8, max_length=64, seed=seed)
    started = time.perf_counter()
    outcome = train_reward_model(model, tokenizer, rankings, config)
    result = pair_accuracy(model, tokenizer, pairs) | {
        "train_s": round(time.perf_counter() - started, 1),
        "final_loss": outcome.history[-1]["loss"],
    }
    if prior:
        result["likelihood_weight"] = outcome.history[-1]["likelihood_weight"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lrs", default="1e-3,3e-4,1e-4")
    args = parser.parse_args()
    policy = resolve_model_path(Settings())
    lrs = [float(x) for x in args.lrs.split(",")]
    results = []
    for seed in range(args.seeds):
        rankings, pairs = world(policy, seed)
        arms = [("prior_only", True, 0.0)] + [
            (name, prior, lr) for lr in lrs for name, prior in (("head", False), ("prior", True))
        ]
        for name, prior, lr in arms:
            row = {"seed": seed, "arm": name, "lr": lr}
            row |= run_arm(policy, rankings, pairs, prior, lr, seed)
            print(json.dumps(row), flush=True)
            results.append(row)
    summary = {}
    for row in results:
        summary.setdefault(f"{row['arm']} lr={row['lr']:g}", []).append(row["accuracy"])
    out = {
        "rankings": RANKINGS,
        "noise": NOISE,
        "tie_threshold": TIE,
        "summary": {
            k: {"mean": statistics.fmean(v), "min": min(v), "per_seed": v}
            for k, v in summary.items()
        },
        "runs": results,
    }
    path = REPO / "bench" / "out" / "reward_prior.json"
    path.write_text(json.dumps(out, indent=2))
    for key, value in out["summary"].items():
        print(f"{key:>20}: mean {value['mean']:.3f}, min {value['min']:.3f}")


if __name__ == "__main__":
    main()
