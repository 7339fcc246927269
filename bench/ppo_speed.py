"""PPO step speed and memory: our LoRA PPO against TRL 1.12's PPOTrainer and TRL 1.16's GRPOTrainer.

Every arm trains the same policy (the default demo model + a rank-8 LoRA, same learning rate)
against the same frozen reward model (``load_backbone(<demo path>)``: a sequence-classification
head on the same backbone, seeded, saved once to a temp dir), on the same prompt pool
(``demo_prompts``), with the same rollout shape (P prompts x K samples, at most T new tokens,
temperature 1, no top-p/top-k: TRL's PPO cannot truncate) and the same update shape (2 epochs
over minibatches of 16 sequences):

- ours: ``round.py``'s loop without the database: ``new_policy`` + ``Optimisation``, then per
  step ``rollout`` -> ``score`` -> ``ppo_step`` (value head on the shared backbone, reference =
  adapter disabled, fixed KL coefficient);
- trl_ppo: ``trl.experimental.ppo.PPOTrainer`` from trl==1.12.0 (the last release with PPO),
  LoRA through ``peft_config`` with ``ref_model=None``; its value model is TRL's usual separate,
  fully trainable ``AutoModelForSequenceClassification`` (a copy of the reward model). It runs
  in its own virtual environment, ``bench/.venv-trl112`` (created here when missing: torch
  2.13.0 CPU from the local wheel, trl==1.12.0, peft, transformers);
- grpo: trl 1.16's ``GRPOTrainer`` with ``peft_config``, ``num_generations`` = K, the reward
  model as ``reward_funcs``, ``num_iterations`` = 2 epochs, ``steps_per_generation`` = P*K/16
  minibatches, ``beta`` = our KL coefficient (so it runs the reference pass too). One "step"
  here is one generation batch = ``steps_per_generation * num_iterations`` optimizer steps.

Each arm runs in its own child process (OMP_WAIT_POLICY=PASSIVE, torch's default thread count
or ``--threads``: on a shared machine where another process holds a core, one thread per arm
spares every arm the stalls of waiting on a descheduled thread) so its peak RSS is its own.
A step is timed from the end of the previous one (TRL: a callback's ``on_step_end``); the first
step is a warm-up and left out of the median. Peak RSS delta = peak
RSS during training (all steps, warm-up included) minus RSS just before it (models loaded).
Rollout tokens/s = response tokens (up to and including the end token) / time in the sampler.

    nice -n 10 python bench/ppo_speed.py [--steps 10] [--prompts 16] [--samples 2]
        [--max-new-tokens 32] [--repeats 3] [--arms ours trl_ppo grpo] [--profile]
        [--quiet-wait 10] [--threads N]

Writes bench/out/ppo_speed.json (and bench/out/ppo_speed_profile.txt with --profile).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
VENV = REPO / "bench" / ".venv-trl112"
VENV_PYTHON = VENV / "bin" / "python"
VENV_PACKAGES = ["torch==2.13.0", "trl==1.12.0", "peft", "transformers"]
sys.path.insert(0, str(REPO))

from bench import probes  # noqa: E402
from bench.probes import PAGE  # noqa: E402

ARMS = ("ours", "trl_ppo", "grpo")
SEED = 0
REWARD_SEED = 1234  # the reward model's fresh score head
PROMPT_POOL = 128  # distinct demo prompts every arm draws its batches from

# ---------------------------------------------------------------------------------------------
# Memory and contention probes (stdlib only: the TRL 1.12 child imports this file too)
# ---------------------------------------------------------------------------------------------


def rss_parts_mib() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory: heap and tensors vs. mapped library code."""
    with open("/proc/self/statm") as f:
        _size, resident, shared = (int(x) for x in f.read().split()[:3])
    return (resident - shared) * PAGE / 2**20, shared * PAGE / 2**20


class AnonPeak(threading.Thread):
    """Samples anonymous RSS every few ms: VmHWM also counts library code paged in on first use
    (a training step touches backward kernels never run before), which is not the arm's data."""

    def __init__(self, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = rss_parts_mib()[0]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            self.peak = max(self.peak, rss_parts_mib()[0])

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, rss_parts_mib()[0])


class Window(probes.Window):
    """The shared window, plus anonymous and file-backed RSS: their split shows how much of the
    growth is heap rather than mapped weights."""

    def start(self) -> None:
        self.anon_before, self.file_before = rss_parts_mib()
        self.sampler = AnonPeak()
        self.sampler.start()

    def stop(self) -> None:
        self.anon_peak = self.sampler.stop()
        self.file_after = rss_parts_mib()[1]

    def record(self) -> dict[str, float]:
        return {
            **super().record(),
            "anon_rss_before_train_mib": self.anon_before,
            "anon_rss_peak_delta_mib": self.anon_peak - self.anon_before,
            "file_rss_delta_train_mib": self.file_after - self.file_before,
        }


def response_tokens(responses: Any, eos_id: int) -> int:
    """Tokens per row up to and including the first end token (all of them where none), summed."""
    is_end = (responses == eos_id).long()
    return int(((is_end.cumsum(1) - is_end) == 0).sum())


def quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()


def lora_config(r: int) -> Any:
    """Same adapter as ``rlhf_loop.ppo.policy._lora_config``."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules="all-linear",
    )


def trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# Arm: ours
# ---------------------------------------------------------------------------------------------


def run_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from rlhf_loop.config import Settings
    from rlhf_loop.ppo.math import FixedKL, RunningMoments
    from rlhf_loop.ppo.policy import new_policy
    from rlhf_loop.ppo.rollout import rollout
    from rlhf_loop.ppo.round import hyper, sample_config
    from rlhf_loop.ppo.scoring import score, usable
    from rlhf_loop.ppo.step import Optimisation, ppo_step
    from rlhf_loop.reward.model import load_reward_model

    device, dtype = cfg.get("device", "cpu"), cfg.get("dtype", "auto")
    settings = Settings(
        device=device,
        dtype=dtype,
        temperature=1.0,
        top_p=cfg["top_p"],
        top_k=0,
        max_new_tokens=cfg["max_new_tokens"],
        reward_max_length=cfg["reward_max_length"],
        ppo_batch_prompts=cfg["prompts"],
        ppo_samples_per_prompt=cfg["samples"],
        ppo_epochs=cfg["epochs"],
        ppo_minibatch=cfg["minibatch"],
        ppo_lr=cfg["lr"],
        ppo_lora_r=cfg["lora_r"],
        ppo_kl_coef=cfg["kl_coef"],
        ppo_kl_target=0.0,
        ppo_missing_eos_penalty=cfg["missing_eos_penalty"],
    )
    torch.manual_seed(SEED)
    policy = new_policy(cfg["model"], device, settings.ppo_lora_r, dtype=dtype)
    model, tokenizer, meta = load_reward_model(cfg["reward_model"], device, dtype)
    state = Optimisation(
        torch.optim.AdamW(policy.trainable_parameters(), lr=settings.ppo_lr, weight_decay=0.0),
        FixedKL(settings.ppo_kl_coef),
        RunningMoments(),
        torch.Generator(device=policy.device).manual_seed(SEED),
    )
    config, ppo_hyper, pool = sample_config(settings), hyper(settings), cfg["prompts_raw"]
    rng = random.Random(SEED)
    steps: list[dict[str, float]] = []

    def one_step() -> None:
        t0 = time.perf_counter()
        prompts = rng.sample(pool, settings.ppo_batch_prompts)
        batch = rollout(policy, prompts, settings.ppo_samples_per_prompt, config, state.generator)
        t1 = time.perf_counter()
        scores = score(
            model, tokenizer, meta, batch.prompts, batch.texts, settings.reward_max_length
        )
        keep = usable(scores)
        if not keep.all():
            batch, scores = batch.select(keep), scores[keep]
        t2 = time.perf_counter()
        stats = ppo_step(policy, batch, scores, state, ppo_hyper)
        t3 = time.perf_counter()
        steps.append(
            {
                "step_s": t3 - t0,
                "rollout_s": t1 - t0,
                "score_s": t2 - t1,
                "update_s": t3 - t2,
                "rollout_tokens": int(batch.response_mask.sum()),
                "rollout_positions": batch.response_ids.shape[1],
                "prompt_positions": batch.query_ids.shape[1],
                "distinct_prompt_tokens": distinct_prompt_tokens(batch),
                # the update's forward passes before its epochs: the reference's, plus the
                # policy's where the sampler kept no log-probs (a half-precision base)
                "old_forward_passes": 1 if batch.policy_logprobs is not None else 2,
                "sequences": len(scores),
                "reward": stats["reward"],
            }
        )

    profile_path = cfg.get("profile")
    with Window() as window:
        for _ in range(cfg["steps"] + 1):
            if profile_path and steps:  # profile the steps after the warm-up
                profile_steps(one_step, cfg["steps"], profile_path)
                break
            one_step()
    return {
        **window.record(),
        "steps": steps,
        "trainable_params": sum(p.numel() for p in policy.trainable_parameters()),
        "value_model": "linear head on the policy's shared backbone",
        "reference": "same model, adapter disabled",
    }


def distinct_prompt_tokens(batch: Any) -> int:
    """Real prompt tokens, each distinct prompt counted once: what the packed passes read."""
    first: dict[int, int] = {}
    for row, prompt in enumerate(batch.prompt_index().tolist()):
        first.setdefault(prompt, row)
    return int(batch.query_mask[list(first.values())].sum())


def profile_steps(one_step: Callable[[], None], n: int, path: str) -> None:
    """cProfile over n steps, then torch.profiler's op table over one more."""
    import cProfile
    import io
    import pstats

    import torch

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        one_step()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        one_step()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    Path(path).write_text(f"{text.getvalue()}\n\ntorch.profiler, one step:\n{ops}\n")


# ---------------------------------------------------------------------------------------------
# TRL arms (clock callback, shared)
# ---------------------------------------------------------------------------------------------


def step_clock(optimizer_steps_per_step: int) -> Any:
    """A callback stamping the end of each step; one of our steps = that many Trainer steps."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.global_steps = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.global_steps += 1
            if self.global_steps % optimizer_steps_per_step == 0:
                self.stamps.append(time.perf_counter())

        def durations(self) -> list[float]:
            return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]

    return StepClock()


def merge_steps(durations: list[float], gen: list[tuple[float, int, int, int]]) -> list[dict]:
    """Step times with the sampler's (seconds, tokens, positions decoded, sequences) per step."""
    if len(durations) != len(gen):
        raise RuntimeError(f"{len(durations)} steps timed but {len(gen)} rollouts seen")
    keys = ("rollout_s", "rollout_tokens", "rollout_positions", "sequences")
    return [
        {"step_s": d, **dict(zip(keys, g, strict=True))}
        for d, g in zip(durations, gen, strict=True)
    ]


def trl_model(auto_class: Any, path: str, cfg: dict[str, Any]) -> Any:
    """A model in float32 (bfloat16 when ``cfg["dtype"]`` says so) whatever its checkpoint's
    dtype (see ``training_args``)."""
    import torch

    dtype = torch.bfloat16 if cfg.get("dtype") == "bfloat16" else torch.float32
    return auto_class.from_pretrained(path, dtype=dtype)


def training_args(cfg: dict[str, Any], scratch: str) -> dict[str, Any]:
    """What both TRL configs share: float32, no checkpointing, constant lr, plain AdamW.

    The models are loaded in float32 too (``dtype=torch.float32``, as ``load_causal_lm`` does on
    a CPU): ``from_pretrained``'s default keeps the checkpoint's dtype, and the shipped demo
    model is float16, whose CPU matmuls made a GRPO step ~8x slower than in float32.
    """
    return {
        "output_dir": scratch,
        "learning_rate": cfg["lr"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "gradient_checkpointing": False,  # TRL's default is True: recomputes, ours does not
        "bf16": cfg.get("dtype") == "bfloat16",  # TRL's default is True; ours: float32 on a CPU
        "use_cpu": cfg.get("device", "cpu") == "cpu",
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": SEED,
        "temperature": 1.0,
    }


def drop_printer(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)


# ---------------------------------------------------------------------------------------------
# Arm: TRL 1.12 PPOTrainer (runs in bench/.venv-trl112)
# ---------------------------------------------------------------------------------------------


def run_trl_ppo(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    batch = cfg["prompts"] * cfg["samples"]
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    tokenizer.padding_side = "left"
    torch.manual_seed(SEED)
    policy = trl_model(AutoModelForCausalLM, cfg["model"], cfg)
    reward = trl_model(AutoModelForSequenceClassification, cfg["reward_model"], cfg)
    value = trl_model(AutoModelForSequenceClassification, cfg["reward_model"], cfg)
    # each prompt K times, so the pool of prompt texts and the batch size match ours
    rows = [p for p in cfg["prompts_formatted"] for _ in range(cfg["samples"])]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rows]
    dataset = Dataset.from_dict({"input_ids": ids})
    scratch = tempfile.mkdtemp(prefix="trl-ppo-bench-")
    args = PPOConfig(
        **training_args(cfg, scratch),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_mini_batches=batch // cfg["minibatch"],
        num_ppo_epochs=cfg["epochs"],
        total_episodes=batch * (cfg["steps"] + 1),
        local_rollout_forward_batch_size=batch,
        response_length=cfg["max_new_tokens"],
        stop_token="eos",
        missing_eos_penalty=cfg["missing_eos_penalty"],
        kl_coef=cfg["kl_coef"],
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        num_sample_generations=0,  # no sample completions on the eval set mid-training
    )
    clock = step_clock(1)
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
        eval_dataset=dataset.select(range(batch)),  # required by __init__, never used here
        peft_config=lora_config(cfg["lora_r"]),
        callbacks=[clock],
    )
    drop_printer(trainer)
    generations: list[tuple[float, int, int, int]] = []
    original = ppo_module.batch_generation

    def timed_generation(model, queries, *rest, **kwargs):
        t0 = time.perf_counter()
        query_responses, logits = original(model, queries, *rest, **kwargs)
        response = query_responses[:, queries.shape[1] :]
        tokens = response_tokens(response, tokenizer.eos_token_id)
        seconds = time.perf_counter() - t0
        generations.append((seconds, tokens, response.shape[1], len(queries)))
        return query_responses, logits

    ppo_module.batch_generation = timed_generation
    with Window() as window:
        trainer.train()
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        **window.record(),
        "steps": merge_steps(clock.durations(), generations),
        "trainable_params": trainable(trainer.model),
        "value_model": "separate AutoModelForSequenceClassification, all parameters trained",
        "reference": "same model, adapter disabled (ref_model=None)",
        "grad_clipping": "none (TRL 1.12's PPO loop does not clip)",
    }


# ---------------------------------------------------------------------------------------------
# Arm: TRL 1.16 GRPOTrainer
# ---------------------------------------------------------------------------------------------


def run_grpo(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl import GRPOConfig, GRPOTrainer

    batch = cfg["prompts"] * cfg["samples"]
    minibatches = batch // cfg["minibatch"]
    per_step = minibatches * cfg["epochs"]  # optimizer steps per generation batch
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    torch.manual_seed(SEED)
    policy = trl_model(AutoModelForCausalLM, cfg["model"], cfg)
    reward = trl_model(AutoModelForSequenceClassification, cfg["reward_model"], cfg)
    reward_tokenizer = AutoTokenizer.from_pretrained(cfg["reward_model"])
    dataset = Dataset.from_dict({"prompt": cfg["prompts_formatted"]})
    scratch = tempfile.mkdtemp(prefix="grpo-bench-")
    args = GRPOConfig(
        **training_args(cfg, scratch),
        per_device_train_batch_size=cfg["minibatch"],
        gradient_accumulation_steps=1,
        steps_per_generation=minibatches,
        num_generations=cfg["samples"],
        num_iterations=cfg["epochs"],
        max_completion_length=cfg["max_new_tokens"],
        top_p=cfg["top_p"],
        top_k=0,
        beta=cfg["kl_coef"],
        epsilon=0.2,
        max_grad_norm=1.0,
        max_steps=per_step * (cfg["steps"] + 1),
        disable_dropout=True,
        log_completions=False,
    )
    clock = step_clock(per_step)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
        peft_config=lora_config(cfg["lora_r"]),
        callbacks=[clock],
    )
    drop_printer(trainer)
    generations: list[tuple[float, int, int, int]] = []
    original = trainer._generate

    def timed_generate(prompts):
        t0 = time.perf_counter()
        out = original(prompts)
        completion_ids = out[1]
        tokens = sum(len(c) for c in completion_ids)
        positions = max(len(c) for c in completion_ids)
        generations.append((time.perf_counter() - t0, tokens, positions, len(completion_ids)))
        return out

    trainer._generate = timed_generate
    with Window() as window:
        trainer.train()
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        **window.record(),
        "steps": merge_steps(clock.durations(), generations),
        "optimizer_steps_per_step": per_step,
        "trainable_params": trainable(trainer.model),
        "value_model": "none (group-relative advantages)",
        "reference": "same model, adapter disabled (beta > 0)",
    }


# ---------------------------------------------------------------------------------------------
# Child entry
# ---------------------------------------------------------------------------------------------


def child(arm: str, config_path: str, result_path: str) -> None:
    import torch

    quiet_libraries()
    cfg = json.loads(Path(config_path).read_text())
    run = {"ours": run_ours, "trl_ppo": run_trl_ppo, "grpo": run_grpo}[arm]
    result = run(cfg)
    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate"):
        with contextlib.suppress(ImportError):
            versions[name] = __import__(name).__version__
    result |= {
        "arm": arm,
        "python": sys.executable,
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def venv_trl_version() -> str | None:
    if not VENV_PYTHON.exists():
        return None
    probe = subprocess.run(
        [str(VENV_PYTHON), "-c", "import trl.experimental.ppo, trl; print(trl.__version__)"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_trl112_venv() -> dict[str, Any]:
    """bench/.venv-trl112 with trl==1.12.0: a clean venv (no system site-packages)."""
    found = venv_trl_version()
    if found == "1.12.0":
        return {"ok": True, "created": False, "python": str(VENV_PYTHON)}
    print(f"creating {VENV.relative_to(REPO)} ({' '.join(VENV_PACKAGES)}) ...", flush=True)
    started = time.perf_counter()
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(VENV_PYTHON), "-m", "pip", "install", "-q", *VENV_PACKAGES],
    ]
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            error = (done.stderr or done.stdout)[-4000:]
            return {"ok": False, "command": " ".join(command), "error": error}
    found = venv_trl_version()
    if found != "1.12.0":
        return {"ok": False, "error": f"trl in the new venv reports {found!r}, not 1.12.0"}
    return {
        "ok": True,
        "created": True,
        "python": str(VENV_PYTHON),
        "install_s": time.perf_counter() - started,
    }


def prepare(args: argparse.Namespace, scratch: Path, path: str | None = None) -> dict[str, Any]:
    """The shared inputs: the model path (the demo model's unless given), the seeded reward
    model on disk, the prompt pool."""
    import torch
    from transformers import AutoTokenizer

    from rlhf_loop.config import Settings
    from rlhf_loop.model.demo_corpus import demo_prompts
    from rlhf_loop.model.loader import resolve_model_path
    from rlhf_loop.model.prompting import format_prompt
    from rlhf_loop.reward.model import load_backbone, save_reward_model

    quiet_libraries()
    settings = Settings()
    path = path or resolve_model_path(settings)
    torch.manual_seed(REWARD_SEED)
    model, tokenizer = load_backbone(path, "cpu")
    reward_dir = save_reward_model(
        model, tokenizer, {"bench": "ppo_speed", "seed": REWARD_SEED}, scratch / "reward"
    )
    prompts = demo_prompts(PROMPT_POOL, seed=SEED)
    policy_tokenizer = AutoTokenizer.from_pretrained(path)
    return {
        "model": path,
        "reward_model": str(reward_dir),
        "prompts_raw": prompts,
        # ours formats inside rollout(); TRL gets the same text already formatted
        "prompts_formatted": [format_prompt(policy_tokenizer, p) for p in prompts],
        "prompts": args.prompts,
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "reward_max_length": settings.reward_max_length,
        "epochs": args.epochs,
        "minibatch": args.minibatch,
        "lr": args.lr,
        "lora_r": args.lora_r,
        "kl_coef": args.kl_coef,
        "missing_eos_penalty": args.missing_eos_penalty,
        "top_p": 1.0,
        "steps": args.steps,
    }


def run_child(arm: str, python: str, config_path: Path, args: argparse.Namespace) -> dict:
    fd, result_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    command = [python, str(Path(__file__).resolve()), "--child", arm, "--config", str(config_path)]
    env = os.environ | {
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    waited = probes.wait_for_quiet(args.quiet_wait, threshold=0.15)
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--result", result_path], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        os.unlink(result_path)
        tail = (done.stderr or done.stdout)[-3000:]
        print(f"  {arm}: FAILED (exit {done.returncode})\n{tail}", flush=True)
        return {"arm": arm, "failed": True, "returncode": done.returncode, "error": tail}
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["child_wall_s"] = time.perf_counter() - started
    result["waited_for_quiet_s"] = waited
    summary = summarise_run(result)
    result["summary"] = summary
    print(
        f"  {arm:8s}: {summary['step_s_median']:.3f} s/step (median of "
        f"{summary['timed_steps']}), peak RSS {result['peak_rss_process_mib']:.0f} MiB "
        f"(+{result['rss_delta_train_mib']:.0f} in training); others used "
        f"{100 * result['contention']:.0f}% of the CPUs; child {result['child_wall_s']:.0f} s",
        flush=True,
    )
    return result


def summarise_run(result: dict[str, Any]) -> dict[str, Any]:
    timed = result["steps"][1:]  # the first step is the warm-up
    rollout_s = sum(s["rollout_s"] for s in timed)
    tokens = sum(s["rollout_tokens"] for s in timed)
    sequences = [s["sequences"] for s in timed]
    return {
        "timed_steps": len(timed),
        "step_s_median": statistics.median(s["step_s"] for s in timed),
        "step_s_mean": statistics.fmean(s["step_s"] for s in timed),
        "warmup_step_s": result["steps"][0]["step_s"],
        "rollout_s_median": statistics.median(s["rollout_s"] for s in timed),
        "rollout_share": rollout_s / sum(s["step_s"] for s in timed),
        "rollout_tokens_per_s": tokens / rollout_s,
        "response_tokens_mean": tokens / sum(sequences),
        "sequences_per_step": statistics.median(sequences),
        "rollout_positions_mean": statistics.fmean(s["rollout_positions"] for s in timed),
    } | {
        f"{phase}_median": statistics.median(s[phase] for s in timed)
        for phase in ("score_s", "update_s")
        if phase in timed[0]
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of one arm."""
    ok = [r for r in runs if not r.get("failed")]
    if not ok:
        return {"failed": True, "error": runs[0].get("error")}

    def med(key: str, source: str = "summary") -> float:
        return statistics.median((r[source] if source else r)[key] for r in ok)

    return {
        "failed": False,
        "step_s_median": med("step_s_median"),
        "rollout_s_median": med("rollout_s_median"),
        "rollout_share": med("rollout_share"),
        "rollout_tokens_per_s": med("rollout_tokens_per_s"),
        "response_tokens_mean": med("response_tokens_mean"),
        "sequences_per_step": med("sequences_per_step"),
        "peak_rss_process_mib": med("peak_rss_process_mib", ""),
        "rss_before_train_mib": med("rss_before_train_mib", ""),
        "rss_delta_train_mib": med("rss_delta_train_mib", ""),
        "anon_rss_peak_delta_mib": med("anon_rss_peak_delta_mib", ""),
        "file_rss_delta_train_mib": med("file_rss_delta_train_mib", ""),
        "contention_max": max(r["contention"] for r in ok),
        "trainable_params": ok[0]["trainable_params"],
        "versions": ok[0]["versions"],
    } | {  # ours only: where the step's time goes besides the rollout
        phase: med(phase)
        for phase in ("score_s_median", "update_s_median")
        if phase in ok[0]["summary"]
    }


LABELS = {
    "ours": "ours (rlhf_loop.ppo)",
    "trl_ppo": "TRL 1.12 PPOTrainer",
    "grpo": "TRL 1.16 GRPOTrainer",
}


def print_table(arms: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'arm':22s} {'s/step':>7s} {'rollout s':>9s} {'share':>6s} {'seq/step':>8s} "
        f"{'resp tok':>8s} {'tok/s':>7s} {'peak RSS':>9s} {'Δ train':>8s} {'Δ anon':>7s} "
        f"{'trainable':>10s} "
        f"{'busy':>5s}"
    )
    print(header)
    print("-" * len(header))
    for arm, r in arms.items():
        if r["failed"]:
            print(f"{LABELS[arm]:22s} FAILED: {str(r.get('error'))[-200:]}")
            continue
        print(
            f"{LABELS[arm]:22s} {r['step_s_median']:7.3f} {r['rollout_s_median']:9.3f} "
            f"{100 * r['rollout_share']:5.0f}% {r['sequences_per_step']:8.0f} "
            f"{r['response_tokens_mean']:8.1f} {r['rollout_tokens_per_s']:7.0f} "
            f"{r['peak_rss_process_mib']:8.0f}M {r['rss_delta_train_mib']:7.1f}M "
            f"{r['anon_rss_peak_delta_mib']:6.1f}M {r['trainable_params']:10,d} "
            f"{100 * r['contention_max']:4.0f}%"
        )
    print(
        "s/step: median wall time per PPO step (GRPO: per generation batch) after the warm-up "
        "step. rollout s / share: time in the sampler.\nresp tok: response tokens per sequence "
        "(to the end token). tok/s: rollout tokens per second of sampling.\npeak RSS: the "
        "child's peak; Δ train: peak RSS during training minus RSS before it (VmHWM: includes "
        "library code paged in on first use);\nΔ anon: peak anonymous RSS (heap, tensors; "
        "sampled every 5 ms) during training minus before it. busy: CPU share other processes "
        "took during the timing (max over repeats)."
    )


MEMORY_KEYS = {
    "peak RSS": "peak_rss_process_mib",
    "training RSS delta": "rss_delta_train_mib",
    "anonymous RSS delta": "anon_rss_peak_delta_mib",
}


def compare_memory(ours: float, theirs: float) -> str:
    """'lower', 'higher' or 'tied' (within 2 MiB: the allocator moves RSS by that run to run)."""
    if abs(ours - theirs) <= 2.0:
        return "tied"
    return "lower" if ours < theirs else "higher"


def paired_speedups(runs: dict[str, list[dict]], other: str) -> list[float]:
    """Their step time over ours, repeat by repeat: the arms run interleaved, so a repeat's
    pair saw the same state of the machine, and the spread says how much the ratio moves."""
    pairs = zip(runs.get("ours", []), runs.get(other, []), strict=False)
    return [
        theirs["summary"]["step_s_median"] / ours["summary"]["step_s_median"]
        for ours, theirs in pairs
        if not ours.get("failed") and not theirs.get("failed")
    ]


def verdict(arms: dict[str, dict[str, Any]], runs: dict[str, list[dict]]) -> dict[str, Any]:
    """The issue's target: ours at least as fast per step as each TRL arm, with less memory."""
    ours = arms.get("ours", {"failed": True})
    out: dict[str, Any] = {}
    for other in ("trl_ppo", "grpo"):
        r = arms.get(other, {"failed": True})
        if ours["failed"] or r["failed"]:
            continue
        memory = {
            name: {
                "ours_mib": ours[key],
                "theirs_mib": r[key],
                "ours_is": compare_memory(ours[key], r[key]),
            }
            for name, key in MEMORY_KEYS.items()
        }
        speedup = r["step_s_median"] / ours["step_s_median"]
        paired = paired_speedups(runs, other)
        out[other] = {
            "speedup": speedup,
            "paired_speedups": paired,
            # per response token sampled: the policies' answers differ in length as they learn
            "speedup_per_response_token": speedup
            * ours["response_tokens_mean"]
            / r["response_tokens_mean"],
            "faster_or_equal": ours["step_s_median"] <= r["step_s_median"],
            "memory": memory,
        }
        memory_text = ", ".join(
            f"{name} {m['ours_is']} ({m['ours_mib']:.0f} vs {m['theirs_mib']:.0f} MiB)"
            for name, m in memory.items()
        )
        print(
            f"ours vs {LABELS[other]}: {speedup:.2f}x its speed per step "
            f"({'at least as fast' if out[other]['faster_or_equal'] else 'SLOWER'}; repeat by "
            f"repeat {min(paired):.2f}-{max(paired):.2f}x; per response token "
            f"{out[other]['speedup_per_response_token']:.2f}x); {memory_text}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after 1 warm-up")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minibatch", type=int, default=16, help="sequences per minibatch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="children per arm, interleaved")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--profile", action="store_true", help="also profile our steps")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each child, wait up to this many seconds for the machine to be 85%% idle",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per arm (default: torch's own)"
    )
    parser.add_argument(
        "--model", default=None, help="a causal LM's path or id (default: the demo model)"
    )
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config, args.result)
        return
    if (args.prompts * args.samples) % args.minibatch:
        parser.error("prompts * samples must be a multiple of --minibatch")

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="ppo-speed-"))
    load_before = os.getloadavg()
    try:
        cfg = prepare(args, scratch, args.model)
        config_path = scratch / "config.json"
        config_path.write_text(json.dumps(cfg))
        venv = ensure_trl112_venv() if "trl_ppo" in args.arms else {"ok": False}
        if "trl_ppo" in args.arms and not venv["ok"]:
            print(f"TRL 1.12 venv unavailable: {venv.get('error')}", flush=True)
        pythons = {"ours": sys.executable, "grpo": sys.executable, "trl_ppo": str(VENV_PYTHON)}
        runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
        for _ in range(args.repeats):
            for arm in args.arms:
                if arm == "trl_ppo" and not venv["ok"]:
                    runs[arm].append({"failed": True, "error": venv.get("error")})
                    continue
                runs[arm].append(run_child(arm, pythons[arm], config_path, args))
        if args.profile and "ours" in args.arms:
            profile_cfg = scratch / "profile.json"
            profile_path = OUT / "ppo_speed_profile.txt"
            OUT.mkdir(parents=True, exist_ok=True)
            profile_cfg.write_text(json.dumps(cfg | {"profile": str(profile_path)}))
            print("profiling ours ...", flush=True)
            run_child("ours", sys.executable, profile_cfg, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    arms = {arm: combine(rs) for arm, rs in runs.items()}
    print()
    print_table(arms)
    checks = verdict(arms, runs)
    settings = {k: v for k, v in cfg.items() if not k.startswith("prompts_")}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": settings | {"prompt_pool": len(cfg["prompts_raw"]), "repeats": args.repeats},
        "cpu_count": os.cpu_count(),
        "threads_per_arm": args.threads or "torch default",
        "niceness": os.nice(0),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "total_wall_s": time.perf_counter() - started,
        "trl112_venv": venv,
        "arms": arms,
        "verdict": checks,
        "runs": runs,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ppo_speed.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {(OUT / 'ppo_speed.json').relative_to(REPO)} in {result['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
