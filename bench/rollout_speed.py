"""Rollout sampling speed: our sampler against ``model.generate`` on the same batch.

For each model, batch (P prompts x K samples, the rows repeated as a rollout does) and response
budget, both samplers get the same left-padded batch and the same parameters:
- sample: temperature 1, top-p 0.95 (``generate(do_sample=True, top_k=0, ...)``);
- greedy: both must give identical tokens (checked), the fairest comparison of the two loops.
Models: "base", the bare demo model; "policy", PPO's policy on it (``new_policy``: a LoRA
adapter on every linear layer, rank ``--lora-r``), which ``generate`` samples through the
adapter (as TRL's trainers do without vLLM) and ours as ``rollout`` does: adapter merged for the
batch, value head read at every step.
Ablations of ours (sampled only), each with one of its parts off:
- "prefill per row": no shared prefill, each of a prompt's K rows prefilled on its own;
- "rows kept": ended rows decoded as padding to the end, as ``generate`` does;
- "unmerged" (policy): sampled through the adapter.
Generated tokens are counted up to and including each row's end token, for both. Each case runs
once to warm up, then ``--repeats`` times with the arms interleaved (so load on a shared machine
hits both alike); reported are medians of tokens/s, of wall time per batch, and of the peak RSS
growth during a batch (VmHWM reset before each, after handing freed heap back). Run with
``nice -n 10``; OMP_WAIT_POLICY=PASSIVE is set here when unset. The load average before and
after is recorded.

    nice -n 10 python bench/rollout_speed.py [--device cpu|cuda] [--prompts 16 8]
        [--samples 4] [--max-new-tokens 48 64] [--repeats 5] [--lora-r 8] [--threads N]

Writes bench/out/rollout_speed.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import transformers  # noqa: E402

from bench import probes  # noqa: E402
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.model.demo_build import ensure_demo_model, spec_from_settings  # noqa: E402
from rlhf_loop.model.demo_corpus import demo_examples  # noqa: E402
from rlhf_loop.model.loader import load_causal_lm  # noqa: E402
from rlhf_loop.model.prompting import format_prompt  # noqa: E402
from rlhf_loop.ppo import rollout_sampling  # noqa: E402
from rlhf_loop.ppo.policy import Policy, merged_adapter, new_policy  # noqa: E402
from rlhf_loop.ppo.rollout_sampling import SampleConfig, sample_tokens  # noqa: E402

TOP_P = 0.95
TEMPERATURE = 1.0


@dataclass(frozen=True)
class Ours:
    """One arm of ours: which of its parts are on."""

    share_prefill: bool = True
    cut_rows: bool = True
    merge: bool = True


# the sampled arms of ours besides the full one; greedy runs only the full one, as a rollout
# does: the ablations are about sampled batches, whose lengths spread widely
ABLATIONS = {
    "ours, prefill per row": Ours(share_prefill=False),
    "ours, rows kept": Ours(cut_rows=False),
}
POLICY_ABLATIONS = {"ours, unmerged": Ours(merge=False)}


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


def run_ours(
    model, policy: Policy | None, batch, greedy: bool, max_new: int, tok, seed: int, arm: Ours
) -> torch.Tensor:
    """``sample_tokens`` as ``rollout`` calls it: on the policy, the adapter merged and the
    value head read at every step."""
    config = SampleConfig(max_new, temperature=TEMPERATURE, top_p=TOP_P, greedy=greedy)
    generator = torch.Generator(device=batch["input_ids"].device).manual_seed(seed)
    never = math.inf  # a share of ended rows that is never reached: rows are kept
    fraction = rollout_sampling._CUT_MIN_SHARE if arm.cut_rows else never
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(rollout_sampling, "_CUT_MIN_SHARE", fraction))
        if not arm.share_prefill:
            stack.enter_context(
                mock.patch.object(rollout_sampling, "prompt_groups", lambda ids, mask: None)
            )
        if policy is not None and arm.merge:
            stack.enter_context(merged_adapter(policy))
        out = sample_tokens(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            config,
            tok.eos_token_id,
            tok.pad_token_id,
            generator,
            value_head=None if policy is None else policy.values,
        )
    return out.response_ids


def timed(fn: Callable[[], torch.Tensor], device: torch.device, eos_id: int) -> dict[str, float]:
    sync(device)
    probes.trim_heap()
    rss_before = probes.rss_mib()
    probes.reset_peak_rss()
    started = time.perf_counter()
    tokens = fn()
    sync(device)
    seconds = time.perf_counter() - started
    n_tokens = int(response_lengths(tokens, eos_id).sum())
    return {
        "seconds": seconds,
        "tokens": n_tokens,
        "tokens_per_s": n_tokens / seconds,
        "peak_rss_delta_mib": probes.peak_rss_mib() - rss_before,
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "seconds_per_batch": statistics.median(r["seconds"] for r in runs),
        "tokens_per_batch": statistics.median(r["tokens"] for r in runs),
        "peak_rss_delta_mib": statistics.median(r["peak_rss_delta_mib"] for r in runs),
        "repeats": len(runs),
    }


def bench_case(
    model, policy, tok, device, prompts, samples, max_new, greedy, repeats
) -> dict[str, Any]:
    rows = [format_prompt(tok, p) for p in prompts for _ in range(samples)]
    batch = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    ours = {"ours": Ours()}
    if not greedy:
        ours |= ABLATIONS | (POLICY_ABLATIONS if policy is not None else {})
    arms: dict[str, Callable[[int], torch.Tensor]] = {
        "generate": lambda s: run_generate(model, batch, greedy, max_new, tok, s)
    }
    for name, arm in ours.items():
        arms[name] = lambda s, arm=arm: run_ours(model, policy, batch, greedy, max_new, tok, s, arm)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for arm in arms.values():  # warm-up
        arm(0)
    for r in range(repeats):
        for name, arm in arms.items():
            runs[name].append(timed(lambda arm=arm, r=r: arm(1 + r), device, tok.eos_token_id))
    result: dict[str, Any] = {name: summarise(v) for name, v in runs.items()}
    if greedy:
        mine = arms["ours"](0)
        theirs = run_generate(model, batch, True, max_new, tok, 0)
        result["identical_tokens"] = mine.shape == theirs.shape and bool(torch.equal(mine, theirs))
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'model':6s} {'mode':7s} {'rows':>4s} {'new':>4s}  {'arm':22s} {'tok/s':>8s} "
        f"{'s/batch':>8s} {'tok/batch':>9s} {'ΔRSS MiB':>8s} {'speed-up':>8s}"
    )
    print(header)
    print("-" * len(header))
    for case in results:
        base = case["arms"]["generate"]["tokens_per_s"]
        for arm, r in case["arms"].items():
            if not isinstance(r, dict):
                continue
            print(
                f"{case['model']:6s} {case['mode']:7s} {case['rows']:4d} "
                f"{case['max_new_tokens']:4d}  {arm:22s} {r['tokens_per_s']:8.0f} "
                f"{r['seconds_per_batch']:8.3f} {r['tokens_per_batch']:9.0f} "
                f"{r['peak_rss_delta_mib']:8.1f} {r['tokens_per_s'] / base:7.2f}x"
            )
        if "identical_tokens" in case["arms"]:
            print(f"{'':26s}greedy tokens identical: {case['arms']['identical_tokens']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[48, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lora-r", type=int, default=8, help="the policy's adapter rank")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both arms)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    settings = Settings()
    path = ensure_demo_model(settings.resolved_model_cache_dir, spec_from_settings(settings))
    base, tok = load_causal_lm(str(path), args.device)
    policy = new_policy(str(path), args.device, args.lora_r)
    policy.model.eval()
    models = {"base": (base, None), "policy": (policy.model, policy)}
    device = base.device
    results = []
    for name, (model, owner) in models.items():
        for n_prompts in args.prompts:
            prompts = distinct_prompts(n_prompts)
            for max_new in args.max_new_tokens:
                for mode in ("sample", "greedy"):
                    arms = bench_case(
                        model,
                        owner,
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
                            "model": name,
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
        "command": " ".join(["python", *sys.argv]),
        "model": str(path),
        "lora_r": args.lora_r,
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "niceness": os.nice(0),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "top_p": TOP_P,
        "temperature": TEMPERATURE,
        "cases": results,
    }
    print(f"load average before {load_before}, after {record['load_average_after']}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rollout_speed.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
