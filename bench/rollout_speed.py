"""Rollout sampling speed: ``sample_tokens`` against ``model.generate`` on the same batch.

For each batch (P prompts x K samples, the rows repeated as a rollout does) and response budget,
both samplers get the same left-padded batch and the same parameters:
- sample: temperature 1, top-p 0.95 (``generate(do_sample=True, top_k=0, ...)``);
- greedy: both must give identical tokens (checked), the fairest comparison of the two loops;
- ours, rows kept: ours with ended rows decoded as padding to the end, as ``generate`` does
  (row cutting off), to show what cutting rows is worth apart from the leaner step.
Generated tokens are counted up to and including each row's end token, for both. Each case runs
once to warm up, then ``--repeats`` times with the arms interleaved (so load on a shared machine
hits both alike); reported are medians of tokens/s and of wall time per batch. Run with
OMP_WAIT_POLICY=PASSIVE (set here when unset) on a shared CPU.

    python bench/rollout_speed.py [--device cpu|cuda] [--prompts 16 8] [--samples 4]
                                  [--max-new-tokens 48 64] [--repeats 5]

Writes bench/out/rollout_speed.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import transformers  # noqa: E402

from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.model.demo_build import ensure_demo_model, spec_from_settings  # noqa: E402
from rlhf_loop.model.demo_corpus import demo_examples  # noqa: E402
from rlhf_loop.model.loader import load_causal_lm  # noqa: E402
from rlhf_loop.model.prompting import format_prompt  # noqa: E402
from rlhf_loop.ppo import rollout_sampling  # noqa: E402
from rlhf_loop.ppo.rollout_sampling import SampleConfig, sample_tokens  # noqa: E402

TOP_P = 0.95
TEMPERATURE = 1.0
# (name, cut ended rows); the generate arm is always run beside these, and greedy runs only
# "ours", as a rollout runs it: the ablation is about sampled lengths, which spread widely.
OUR_ARMS = [("ours", True), ("ours, rows kept", False)]


def distinct_prompts(n: int) -> list[str]:
    seen: dict[str, None] = {}
    for prompt, _ in demo_examples(20 * n, seed=7):
        seen.setdefault(prompt, None)
        if len(seen) == n:
            break
    return list(seen)


def response_lengths(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens up to and including the first end token, or all of them where there is none."""
    is_end = tokens == eos_id
    ended_before = is_end.long().cumsum(1) - is_end.long()
    return (ended_before == 0).sum(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_generate(model, batch, greedy: bool, max_new: int, tok, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": TEMPERATURE, "top_p": TOP_P, "top_k": 0}
    with torch.inference_mode():
        out = model.generate(
            **batch,
            do_sample=not greedy,
            max_new_tokens=max_new,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **sampling,
        )
    return out[:, batch["input_ids"].shape[1] :]


def run_ours(model, batch, greedy: bool, max_new: int, tok, seed: int, cut: bool) -> torch.Tensor:
    config = SampleConfig(max_new, temperature=TEMPERATURE, top_p=TOP_P, greedy=greedy)
    generator = torch.Generator(device=batch["input_ids"].device).manual_seed(seed)
    never = math.inf  # a share of ended rows that is never reached: rows are kept
    fraction = rollout_sampling._CUT_MIN_SHARE if cut else never
    with mock.patch.object(rollout_sampling, "_CUT_MIN_SHARE", fraction):
        out = sample_tokens(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            config,
            tok.eos_token_id,
            tok.pad_token_id,
            generator,
        )
    return out.response_ids


def timed(fn: Callable[[], torch.Tensor], device: torch.device, eos_id: int) -> dict[str, float]:
    sync(device)
    started = time.perf_counter()
    tokens = fn()
    sync(device)
    seconds = time.perf_counter() - started
    n_tokens = int(response_lengths(tokens, eos_id).sum())
    return {"seconds": seconds, "tokens": n_tokens, "tokens_per_s": n_tokens / seconds}


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "seconds_per_batch": statistics.median(r["seconds"] for r in runs),
        "tokens_per_batch": statistics.median(r["tokens"] for r in runs),
        "repeats": len(runs),
    }


def bench_case(model, tok, device, prompts, samples, max_new, greedy, repeats) -> dict[str, Any]:
    rows = [format_prompt(tok, p) for p in prompts for _ in range(samples)]
    batch = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    arms: dict[str, Callable[[int], torch.Tensor]] = {
        "generate": lambda s: run_generate(model, batch, greedy, max_new, tok, s)
    }
    for name, cut in OUR_ARMS if not greedy else OUR_ARMS[:1]:
        arms[name] = lambda s, cut=cut: run_ours(model, batch, greedy, max_new, tok, s, cut)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for arm in arms.values():  # warm-up
        arm(0)
    for r in range(repeats):
        for name, arm in arms.items():
            runs[name].append(timed(lambda arm=arm, r=r: arm(1 + r), device, tok.eos_token_id))
    result: dict[str, Any] = {name: summarise(v) for name, v in runs.items()}
    if greedy:
        ours = run_ours(model, batch, True, max_new, tok, 0, cut=True)
        theirs = run_generate(model, batch, True, max_new, tok, 0)
        result["identical_tokens"] = ours.shape == theirs.shape and bool(torch.equal(ours, theirs))
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'mode':7s} {'rows':>4s} {'new':>4s}  {'arm':16s} {'tok/s':>8s} {'s/batch':>8s} "
        f"{'tok/batch':>9s} {'speed-up':>8s}"
    )
    print(header)
    print("-" * len(header))
    for case in results:
        base = case["arms"]["generate"]["tokens_per_s"]
        for arm, r in case["arms"].items():
            if not isinstance(r, dict):
                continue
            print(
                f"{case['mode']:7s} {case['rows']:4d} {case['max_new_tokens']:4d}  {arm:16s} "
                f"{r['tokens_per_s']:8.0f} {r['seconds_per_batch']:8.3f} "
                f"{r['tokens_per_batch']:9.0f} {r['tokens_per_s'] / base:7.2f}x"
            )
        if "identical_tokens" in case["arms"]:
            print(f"{'':19s}greedy tokens identical: {case['arms']['identical_tokens']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[48, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    path = ensure_demo_model(settings.resolved_model_cache_dir, spec_from_settings(settings))
    model, tok = load_causal_lm(str(path), args.device)
    device = model.device
    results = []
    for n_prompts in args.prompts:
        prompts = distinct_prompts(n_prompts)
        for max_new in args.max_new_tokens:
            for mode in ("sample", "greedy"):
                arms = bench_case(
                    model,
                    tok,
                    device,
                    prompts,
                    args.samples,
                    max_new,
                    mode == "greedy",
                    args.repeats,
                )
                results.append(
                    {
                        "mode": mode,
                        "prompts": n_prompts,
                        "samples": args.samples,
                        "rows": n_prompts * args.samples,
                        "max_new_tokens": max_new,
                        "arms": arms,
                    }
                )
    print_table(results)
    record = {
        "model": str(path),
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
        "top_p": TOP_P,
        "temperature": TEMPERATURE,
        "cases": results,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rollout_speed.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
