"""GPU check (issue 14): the three speed ratios, peak GPU memory and the PPO step's MFU, on CUDA
in bfloat16, for the demo model and a ~300M model of the same family.

Why one driver: a GPU is lent rarely and briefly, so everything the issue asks of one runs in
a single process under 8 minutes, reusing each bench's own measuring functions:
- sampler: ``rollout_speed.bench_case`` (sampled, our sampler vs ``model.generate``);
- reward training: ``reward_throughput.run_ours`` / ``run_trl`` (sequences/s, ours vs TRL's
  RewardTrainer; both float32: a fully trained reward model's weights are float32 by design);
- PPO step: ``ppo_speed.run_ours`` / ``run_grpo`` (s/step, TRL GRPO vs ours);
- the worker's real jobs: a reward retrain (``reward.job``) on simulated rankings, then a PPO
  round (``ppo.round``), each with its peak GPU memory.
The larger model is the demo builder's GPT-2 with 24 layers of width 1024 (~300M parameters,
the demo tokenizer), random-initialised: right for speed, memory and MFU, not for quality.

    bash bench/gpu_check.sh                       # on the GPU machine
    nice -n 10 python bench/gpu_check.py --device cpu --quick   # the same paths, tiny, on CPU

Writes bench/out/gpu_check.json (bench/out/gpu_check_quick.json with --quick).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rlhf_loop.model.demo_build import DemoSpec  # noqa: E402

# Peak dense bf16 tensor FLOP/s (no sparsity) from the vendors' data sheets, by a substring of
# torch.cuda.get_device_name; --peak-tflops overrides (e.g. a PCIe H100 is 756).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
# The demo family at GPT-2 medium's shape: 12 * 24 * 1024^2 ~ 302M weights (the vocabulary is
# the demo's ~760 tokens). Not pre-trained (0 steps).
LARGE_SPEC = DemoSpec(n_layer=24, n_embd=1024, n_head=16, pretrain_steps=0)
SMALL_SPEC = DemoSpec(n_layer=6, n_embd=256, n_head=4, pretrain_steps=0)  # ~4.8M, --quick


@dataclass(frozen=True)
class Sizes:
    """How much each section does; the full sizes fit both models in ~8 minutes on an H200."""

    sampler_prompts: int = 16
    sampler_samples: int = 4
    sampler_new_tokens: int = 64
    sampler_repeats: int = 3
    reward_k: int = 4
    reward_rankings: int = 256
    reward_batch: int = 8
    reward_held_out: int = 32
    ppo_steps: int = 3  # timed, after one warm-up
    ppo_prompts: int = 16
    ppo_samples: int = 2
    ppo_new_tokens: int = 32
    ppo_minibatch: int = 16
    job_rankings: int = 300
    job_reward_epochs: int = 1
    job_ppo_steps: int = 2


QUICK = Sizes(
    sampler_prompts=2,
    sampler_samples=2,
    sampler_new_tokens=8,
    sampler_repeats=1,
    reward_rankings=8,
    reward_batch=4,
    reward_held_out=4,
    ppo_steps=1,
    ppo_prompts=4,
    ppo_new_tokens=8,
    ppo_minibatch=8,
    job_rankings=40,
    job_ppo_steps=1,
)


# ---------------------------------------------------------------------------------------------
# Pure arithmetic: FLOPs and MFU
# ---------------------------------------------------------------------------------------------


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The GPU's dense bf16 peak in TFLOP/s: the override, else the table's, else None."""
    if override:
        return override
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return tflops
    return None


def ppo_step_flops(
    params: int, reward_params: int, step: dict[str, Any], epochs: int
) -> dict[str, float]:
    """Model FLOPs of one of our PPO steps (``ppo_speed.run_ours``'s step record), by phase.

    Convention: 2*N FLOPs per token for a forward-only pass, 6*N for a training pass (forward
    + backward), N = the model's parameters; attention's own FLOPs are left out (sequences of
    <= ~100 tokens). With LoRA the backward skips the frozen weights' gradients, so the
    hardware does ~4*N of the 6*N counted: MFU here is the usual convention, not work done.
    Tokens are the real ones each pass needs: every distinct prompt once (the sampler's
    prefill, the scoring and the update passes read a prompt once for all its samples) plus the
    responses; padding is not counted.
    - rollout: 2*N*tokens, prefill + decode;
    - score: 2*N_reward*tokens, one reward-model forward;
    - update: (old_forward_passes*2 + epochs*6)*N*tokens: the reference's forward (and the
      policy's where the sampler kept no log-probs), then ``epochs`` training passes.
    """
    tokens = step["distinct_prompt_tokens"] + step["rollout_tokens"]
    rollout = 2 * params * tokens
    score = 2 * reward_params * tokens
    update = (2 * step["old_forward_passes"] + 6 * epochs) * params * tokens
    return {"rollout": rollout, "score": score, "update": update}


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (TFLOP/s); None without a peak."""
    return None if not peak or seconds <= 0 else flops / seconds / (peak * 1e12)


def ppo_mfu(
    steps: list[dict[str, Any]], params: int, reward_params: int, epochs: int, peak: float | None
) -> dict[str, Any]:
    """Median over the timed steps (the first is the warm-up) of the whole step's MFU and of
    the update phase's (the training passes, where MFU means most)."""
    timed = steps[1:] or steps
    flops = [ppo_step_flops(params, reward_params, s, epochs) for s in timed]
    return {
        "step_flops": statistics.median(sum(f.values()) for f in flops),
        "step_mfu": _median_or_none(
            [mfu(sum(f.values()), s["step_s"], peak) for f, s in zip(flops, timed, strict=True)]
        ),
        "update_mfu": _median_or_none(
            [mfu(f["update"], s["update_s"], peak) for f, s in zip(flops, timed, strict=True)]
        ),
        "formula": "tokens = distinct prompts' + responses'; rollout 2N*tokens + score "
        "2N_r*tokens + update (2*fwd_passes + 6*epochs)*N*tokens",
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


# ---------------------------------------------------------------------------------------------
# Measuring a section: wall time and peak GPU memory
# ---------------------------------------------------------------------------------------------


def measured(device: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """fn's result, its wall time and (CUDA) peak allocated memory, the peak reset before."""
    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    record = {
        "seconds": time.perf_counter() - started,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    return result, record


def params_of(path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def sampler_section(path: str, args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    from bench.rollout_speed import bench_case, distinct_prompts
    from rlhf_loop.model.loader import load_causal_lm

    model, tok = load_causal_lm(path, args.device, args.dtype)
    arms = bench_case(
        model,
        None,
        tok,
        model.device,
        distinct_prompts(sizes.sampler_prompts),
        sizes.sampler_samples,
        sizes.sampler_new_tokens,
        False,
        sizes.sampler_repeats,
    )
    return {
        "arms": arms,
        "ratio": arms["ours"]["tokens_per_s"] / arms["generate"]["tokens_per_s"],
    }


def reward_section(
    path: str, args: argparse.Namespace, sizes: Sizes, with_trl: bool
) -> dict[str, Any]:
    from bench import reward_throughput as rt

    train, held_out = rt.build_rankings(
        sizes.reward_k, sizes.reward_rankings, sizes.reward_held_out
    )
    arms: dict[str, Any] = {}
    for arm, run in (("ours", rt.run_ours), ("trl", rt.run_trl))[: 2 if with_trl else 1]:
        ns = argparse.Namespace(
            arm=arm,
            k=sizes.reward_k,
            batch=sizes.reward_batch,
            lr=rt.RewardTrainConfig.lr,
            max_length=rt.RewardTrainConfig.max_length,
            trl_logging_steps=1,
            device=args.device,
        )
        result, record = measured(
            args.device, lambda run=run, ns=ns: run(ns, path, train, held_out)
        )
        arms[arm] = (
            result | record | {"sequences_per_s": result["sequences"] / result["train_wall_s"]}
        )
    ratio = arms["ours"]["sequences_per_s"] / arms["trl"]["sequences_per_s"] if with_trl else None
    return {"arms": arms, "ratio": ratio, "dtype": "float32 (trained weights)"}


def ppo_section(
    path: str, args: argparse.Namespace, sizes: Sizes, with_trl: bool, peak: float | None
) -> dict[str, Any]:
    from bench import ppo_speed as ps

    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-ppo-"))
    ns = argparse.Namespace(
        prompts=sizes.ppo_prompts,
        samples=sizes.ppo_samples,
        max_new_tokens=sizes.ppo_new_tokens,
        epochs=2,
        minibatch=sizes.ppo_minibatch,
        lr=1e-3,
        lora_r=8,
        kl_coef=0.05,
        missing_eos_penalty=1.0,
        steps=sizes.ppo_steps,
    )
    cfg = ps.prepare(ns, scratch, path) | {"device": args.device, "dtype": args.dtype}
    arms: dict[str, Any] = {}
    for arm, run in (("ours", ps.run_ours), ("grpo", ps.run_grpo))[: 2 if with_trl else 1]:
        result, record = measured(args.device, lambda run=run: run(cfg))
        arms[arm] = {"summary": ps.summarise_run(result), "steps": result["steps"]} | record
    params = params_of(path)
    out: dict[str, Any] = {
        "arms": arms,
        "ratio": arms["grpo"]["summary"]["step_s_median"] / arms["ours"]["summary"]["step_s_median"]
        if with_trl
        else None,
        "mfu": ppo_mfu(arms["ours"]["steps"], params, params, ns.epochs, peak),
    }
    return out


def jobs_section(path: str, args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    """The worker's reward retrain on simulated rankings, then its PPO round on that model."""
    from bench.reward_incremental import Phases, Store, retrain, simulated_rankings
    from rlhf_loop.config import Settings
    from rlhf_loop.job_runner import JobContext
    from rlhf_loop.ppo.round import run_ppo_round
    from rlhf_loop.store import jobs
    from rlhf_loop.store.db import open_db

    data_dir = Path(tempfile.mkdtemp(prefix="gpu-check-jobs-"))
    db = open_db(data_dir / "rlhf.db")
    Store(db, simulated_rankings(sizes.job_rankings)).grow(sizes.job_rankings)
    settings = Settings(
        data_dir=str(data_dir),
        device=args.device,
        dtype=args.dtype,
        reward_epochs=sizes.job_reward_epochs,
        reward_max_length=128,
        ppo_after_reward=False,
        ppo_steps=sizes.job_ppo_steps,
        ppo_batch_prompts=sizes.ppo_prompts,
        ppo_samples_per_prompt=sizes.ppo_samples,
        ppo_minibatch=sizes.ppo_minibatch,
        max_new_tokens=sizes.ppo_new_tokens,
        ppo_eval_prompts=8,
        policy_adoption="immediate",
    )
    reward, reward_record = measured(
        args.device, lambda: retrain(db, settings, path, sizes.job_rankings)
    )
    jobs.enqueue(db, "ppo_round", {"reason": "gpu_check"})
    ctx = JobContext(db, settings, jobs.claim(db, "gpu_check", 600), Phases(), path)
    ppo, ppo_record = measured(args.device, lambda: run_ppo_round(ctx))
    return {
        "reward_retrain": reward_record
        | {k: reward[k] for k in ("kind", "train_rankings", "pairwise_accuracy")},
        "ppo_round": ppo_record | {"version": ppo.get("version")},
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def model_paths(args: argparse.Namespace) -> dict[str, str]:
    from rlhf_loop.config import Settings
    from rlhf_loop.model.demo_build import ensure_demo_model
    from rlhf_loop.model.loader import resolve_model_path

    larger = SMALL_SPEC if args.quick else LARGE_SPEC
    return {
        "demo": resolve_model_path(Settings()),
        "larger": str(ensure_demo_model(Path(args.model_cache), larger)),
    }


def check_model(
    name: str, path: str, args: argparse.Namespace, sizes: Sizes, peak: float | None, t0: float
) -> dict[str, Any]:
    with_trl = name == "demo" or time.perf_counter() - t0 < args.trl_cutoff_s
    out: dict[str, Any] = {"path": path, "params": params_of(path), "trl_arms": with_trl}
    if not with_trl:
        out["trl_skipped"] = f"past {args.trl_cutoff_s:.0f} s of the budget: ours only"
    sections = {
        "sampler": lambda: sampler_section(path, args, sizes),
        "reward_throughput": lambda: reward_section(path, args, sizes, with_trl),
        "ppo": lambda: ppo_section(path, args, sizes, with_trl, peak),
        "jobs": lambda: jobs_section(path, args, sizes),
    }
    for section, run in sections.items():
        print(f"--- {name}: {section}", flush=True)
        out[section], record = measured(args.device, run)
        out[section]["section"] = record
        print(f"    {record['seconds']:.1f} s", flush=True)
    return out


def summary_lines(record: dict[str, Any]) -> list[str]:
    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = []
    for name, m in record["models"].items():
        ppo, jobs = m["ppo"], m["jobs"]
        lines += [
            f"{name} ({m['params'] / 1e6:.1f}M params, {record['dtype']} on {record['device']}):",
            "  reward training, ours/TRL per sequence: "
            f"{num(m['reward_throughput']['ratio'], '.2f')}x",
            f"  sampler, ours/generate tokens/s:        {num(m['sampler']['ratio'], '.2f')}x",
            f"  PPO step, TRL GRPO/ours time:           {num(ppo['ratio'], '.2f')}x",
            f"  PPO step MFU {num(ppo['mfu']['step_mfu'], '.2%')} (update phase "
            f"{num(ppo['mfu']['update_mfu'], '.2%')}), "
            f"{ppo['arms']['ours']['summary']['step_s_median']:.3f} s/step",
            "  peak GPU GiB: "
            + ", ".join(
                f"{k} {num(v, '.2f')}"
                for k, v in (
                    ("sampler", m["sampler"]["section"]["peak_gpu_mem_gib"]),
                    ("reward ours", m["reward_throughput"]["arms"]["ours"]["peak_gpu_mem_gib"]),
                    ("PPO ours", ppo["arms"]["ours"]["peak_gpu_mem_gib"]),
                    ("reward job", jobs["reward_retrain"]["peak_gpu_mem_gib"]),
                    ("PPO round", jobs["ppo_round"]["peak_gpu_mem_gib"]),
                )
            ),
            f"  worker jobs: reward retrain {jobs['reward_retrain']['seconds']:.1f} s, "
            f"PPO round {jobs['ppo_round']['seconds']:.1f} s",
        ]
        if not m["trl_arms"]:
            lines.append(f"  TRL arms skipped: {m['trl_skipped']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="frozen weights' dtype (all arms)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a ~5M larger model")
    parser.add_argument(
        "--models", nargs="+", choices=("demo", "larger"), default=["demo", "larger"]
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the table")
    parser.add_argument(
        "--trl-cutoff-s",
        type=float,
        default=240.0,
        help="the larger model's TRL arms run only if fewer seconds than this have passed",
    )
    parser.add_argument(
        "--model-cache", default=str(Path(tempfile.gettempdir()) / "rlhf-gpu-check-models")
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device (use --device cpu --quick)")
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    sizes = QUICK if args.quick else Sizes()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 arms (reward training) alike
        gpu = torch.cuda.get_device_name()
    else:
        gpu = platform.processor() or platform.machine()
    peak = peak_tflops(gpu, args.peak_tflops)
    paths = model_paths(args)
    models = {name: check_model(name, paths[name], args, sizes, peak, t0) for name in args.models}
    record = {
        "command": " ".join(["python", *sys.argv]),
        "device": args.device,
        "device_name": gpu,
        "peak_bf16_tflops": peak,
        "dtype": args.dtype,
        "quick": args.quick,
        "sizes": asdict(sizes),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "niceness": os.nice(0),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        "models": models,
    }
    lines = summary_lines(record)
    print("\n".join(["", *lines, f"total {record['wall_s']:.0f} s"]))
    OUT.mkdir(parents=True, exist_ok=True)
    name = "gpu_check_quick.json" if args.quick else "gpu_check.json"
    (OUT / name).write_text(json.dumps(record | {"summary": lines}, indent=2, default=str) + "\n")
    print(f"wrote bench/out/{name}")


if __name__ == "__main__":
    main()
