"""Does active selection need fewer human rankings than random order for the same accuracy?

A pool of comparisons is ranked on request by a simulated annotator with a hidden preference
(answers near five words), noise and ties. The pool is what the app serves: K=4 samples of the
demo policy per demo prompt (``--pool policy``, the default), or K=4 distinct demo-corpus
answers per prompt (``--pool corpus``, cleaner data, no near-duplicates). Both
arms start from the same random rankings; each round retrains the reward model from scratch on
all rankings so far, measures pairwise accuracy on held-out prompts (ranked without noise), and
asks for the next batch: the items ``selection_priority`` ranks first (active), or random ones.
Repeated over seeds; the figure is the number of rankings each arm needs to reach the target.

    python bench/active_selection.py [--pool policy] [--seeds 3] [--rounds 8] [--batch 8]
                                     [--target 0.93]

Writes bench/out/active_selection.json and bench/out/active_selection.png.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rlhf_loop.model.demo_corpus import demo_examples, demo_prompts  # noqa: E402
from rlhf_loop.model.loader import load_causal_lm  # noqa: E402
from rlhf_loop.reward.active import score_responses, selection_priority  # noqa: E402
from rlhf_loop.reward.data import RankingExample  # noqa: E402
from rlhf_loop.reward.model import load_backbone  # noqa: E402
from rlhf_loop.reward.train import RewardTrainConfig, evaluate, train_reward_model  # noqa: E402
from rlhf_loop.sampler import SamplingParams, sample_responses  # noqa: E402
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator  # noqa: E402

K = 4
HELD_OUT = 60
CONFIG = RewardTrainConfig(epochs=4, lr=1e-3, batch_rankings=8, max_length=64)
Item = tuple[str, list[str]]


def corpus_items(backbone: str) -> list[Item]:
    groups: dict[str, list[str]] = {}
    for prompt, response in demo_examples(20_000, seed=3):
        group = groups.setdefault(prompt, [])
        if response not in group:
            group.append(response)
    return [(p, rs[:K]) for p, rs in groups.items() if len(rs) >= K]


def policy_items(backbone: str) -> list[Item]:
    """K samples of the policy per demo prompt, as the worker would queue them."""
    model, tokenizer = load_causal_lm(backbone, "cpu")
    torch.manual_seed(0)
    params = SamplingParams(k=K, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=24)
    prompts = demo_prompts(220)
    items: list[Item] = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start : start + 32]
        groups = sample_responses(model, tokenizer, chunk, params)
        items += [(p, [s.text for s in g]) for p, g in zip(chunk, groups, strict=True)]
    return items


POOLS = {"policy": policy_items, "corpus": corpus_items}


def shuffled(items: list[Item], seed: int) -> list[Item]:
    items = items[:]
    random.Random(seed).shuffle(items)
    return items


def learning_curve(
    backbone: str, items: list[Item], arm: str, seed: int, batch: int, rounds: int
) -> list[tuple[int, float]]:
    """(rankings so far, held-out pairwise accuracy) after each round of one arm."""
    oracle = LengthOracle(target_words=5)
    annotator = SimulatedAnnotator(oracle, noise=0.3, tie_threshold=0.5, seed=seed)
    truth = SimulatedAnnotator(oracle, tie_threshold=0.5)
    held_out = [RankingExample(p, rs, truth.rank(p, rs)) for p, rs in items[:HELD_OUT]]
    pool = items[HELD_OUT:]
    rng = random.Random(seed)
    chosen = rng.sample(range(len(pool)), batch)  # the same start for both arms
    labels = {i: annotator.rank(*pool[i]) for i in chosen}
    curve = []
    for round_ in range(rounds):
        torch.manual_seed(1000 * seed + round_)
        model, tokenizer = load_backbone(backbone, "cpu")
        train = [RankingExample(pool[i][0], pool[i][1], labels[i]) for i in chosen]
        outcome = train_reward_model(model, tokenizer, train, CONFIG)
        accuracy = evaluate(model, tokenizer, held_out, outcome.log_nu, CONFIG)
        curve.append((len(chosen), accuracy["pairwise_accuracy"]))
        rest = [i for i in range(len(pool)) if i not in labels]
        if arm == "active":
            rewards = [score_responses(model, tokenizer, *pool[i], CONFIG.max_length) for i in rest]
            ranked = sorted(zip(selection_priority(rewards), rest, strict=True), reverse=True)
            picked = [i for _, i in ranked[:batch]]
        else:
            picked = rng.sample(rest, batch)
        labels |= {i: annotator.rank(*pool[i]) for i in picked}
        chosen += picked
    return curve


def rankings_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, accuracy in curve if accuracy >= target), None)


def compare(
    backbone: str, seeds: int, rounds: int, batch: int, pool: str = "policy"
) -> dict[str, list]:
    items = POOLS[pool](backbone)
    return {
        arm: [
            learning_curve(backbone, shuffled(items, seed), arm, seed, batch, rounds)
            for seed in range(seeds)
        ]
        for arm in ("random", "active")
    }


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    return [
        (points[0][0], statistics.fmean(a for _, a in points))
        for points in zip(*curves, strict=True)
    ]


def plot(curves: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, runs in curves.items():
        xs, ys = zip(*mean_curve(runs), strict=True)
        ax.plot(xs, ys, marker="o", label=f"{arm} (mean of {len(runs)} seeds)")
    ax.set_xlabel("human rankings")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from rlhf_loop.config import Settings
    from rlhf_loop.model.loader import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", choices=sorted(POOLS), default="policy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--backbone", default=None, help="default: the app's demo model")
    args = parser.parse_args()
    backbone = args.backbone or resolve_model_path(Settings())
    curves = compare(backbone, args.seeds, args.rounds, args.batch, args.pool)
    result = {
        "pool": args.pool,
        "target": args.target,
        "curves": curves,
        "mean_curve": {arm: mean_curve(runs) for arm, runs in curves.items()},
        "rankings_to_target": {
            arm: rankings_to_reach(mean_curve(runs), args.target) for arm, runs in curves.items()
        },
    }
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "active_selection.json").write_text(json.dumps(result, indent=2))
    for arm, curve in result["mean_curve"].items():
        print(f"{arm:7s}", " ".join(f"{n}:{a:.3f}" for n, a in curve))
    print(f"rankings to reach {args.target}: {result['rankings_to_target']}")
    try:
        plot(curves, out / "active_selection.png")
    except ImportError:
        print("(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
