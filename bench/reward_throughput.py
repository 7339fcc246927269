"""Reward-model training throughput: our whole-ranking trainer against TRL's pairwise one.

For each K, N rankings of K responses (demo corpus prompts, responses drawn from the corpus's
own answers, ranked by a noisy length-preferring simulated annotator with ties) are trained for
one epoch by
- ours: ``train_reward_model``, B rankings (B*K sequences) per step, Davidson loss over all
  C(K, 2) pairs of each ranking, tokenising on the fly (inside the timing), each ranking one
  packed row that reads its prompt once (``reward.shared_prefix``);
- ours_plain: the same with one padded row per response (``share_prompts=False``), to show what
  packing buys and that it trains to the same held-out accuracy;
- TRL: ``RewardTrainer`` on the same backbone and the same rankings expanded to every strictly
  ordered (chosen, rejected) pair, ties dropped (TRL has no tie outcome), B*K/2 pairs (B*K
  sequences) per step. Its tokenisation happens in ``__init__``, outside the timing.
Throughput is rankings per second: N / wall time of the training call, and sequences (scored
responses) per second. Targets (issue 14): ours >= 1.5x TRL per sequence, so >= 1.5*(K-1)x in
rankings/s. Each (arm, K) runs in
its own child process (OMP_WAIT_POLICY=PASSIVE, torch's default thread count) so peak RSS is
its own; before the timed run each child trains a throwaway copy of the model for a couple of
steps (warm-up), and both arms start from the same initial weights (seeded score head).

    nice -n 10 python bench/reward_throughput.py [--ks 4 8] [--n 4=960,8=320] [--repeats 1]

The machine may be shared: each child waits for a quiet machine first, measures the CPU time
other processes took during its timed run, and is rerun (up to --retries times) when that
exceeded --max-contention of the CPUs; the least contended attempt is kept. With --repeats R,
the table shows each arm's fastest run (contention only slows runs down) and the JSON the medians.

Writes bench/out/reward_throughput.json. Needs trl (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import PreTrainedModel, PreTrainedTokenizerBase  # noqa: E402

from bench import probes  # noqa: E402
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.model.demo_build import ensure_demo_model, spec_from_settings  # noqa: E402
from rlhf_loop.model.demo_corpus import demo_examples  # noqa: E402
from rlhf_loop.model.prompting import format_prompt  # noqa: E402
from rlhf_loop.ranking import strict_pairs  # noqa: E402
from rlhf_loop.reward.data import RankingExample, exchange_text, is_held_out  # noqa: E402
from rlhf_loop.reward.losses import pairwise_accuracy  # noqa: E402
from rlhf_loop.reward.model import flat_rewards, load_backbone  # noqa: E402
from rlhf_loop.reward.train import RewardTrainConfig, train_reward_model  # noqa: E402
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator  # noqa: E402

CORPUS_SIZE = 20_000  # every one of the 220 demo prompts gets >= 30 distinct answers
CORPUS_SEED = 1  # the demo model pre-trained on seed 0's corpus
HELD_OUT_FRACTION = 0.2  # of prompts, by hash (rlhf_loop.reward.data.is_held_out)
HELD_OUT_RANKINGS = 64
DEFAULT_N = {4: 960, 8: 320}
WARMUP_STEPS = 2
INIT_SEED = 0  # the score head is fresh: same seed, same initial weights in both arms
ARMS = ("ours", "ours_plain", "trl")
SEQUENCE_TARGET = 1.5  # ours per sequence over TRL's (issue 14)


# ---------------------------------------------------------------------------------------------
# Data, shared by both arms
# ---------------------------------------------------------------------------------------------


def response_pools() -> dict[str, list[str]]:
    """Distinct corpus answers per prompt, in first-seen order (deterministic across processes)."""
    pools: dict[str, dict[str, None]] = {}
    for prompt, response in demo_examples(CORPUS_SIZE, seed=CORPUS_SEED):
        pools.setdefault(prompt, {})[response] = None
    return {prompt: list(answers) for prompt, answers in pools.items()}


def build_rankings(
    k: int, n_train: int, n_held_out: int, tie_threshold: float = 0.5
) -> tuple[list, list]:
    """N training rankings cycling over training prompts (each visit draws K new answers), and
    held-out rankings on prompts that never appear in training."""
    pools = {p: r for p, r in response_pools().items() if len(r) >= k}
    prompts = sorted(pools)
    annotator = SimulatedAnnotator(
        LengthOracle(target_words=5), noise=0.3, tie_threshold=tie_threshold, seed=0
    )
    rng = random.Random(0)

    def draw(pool_prompts: list[str], n: int) -> list[RankingExample]:
        out: list[RankingExample] = []
        queue: list[str] = []
        for _ in range(n):
            if not queue:
                queue = pool_prompts[:]
                rng.shuffle(queue)
            prompt = queue.pop()
            responses = rng.sample(pools[prompt], k)
            out.append(RankingExample(prompt, responses, annotator.rank(prompt, responses)))
        return out

    train = draw([p for p in prompts if not is_held_out(p, HELD_OUT_FRACTION)], n_train)
    held_out = draw([p for p in prompts if is_held_out(p, HELD_OUT_FRACTION)], n_held_out)
    return train, held_out


def to_pairs(examples: list[RankingExample], tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    """TRL's explicit-prompt preference rows; prompt + chosen is exactly our ``exchange_text``."""
    rows = []
    for e in examples:
        prompt = format_prompt(tokenizer, e.prompt)
        for better, worse in strict_pairs(e.ranks):
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": " " + e.responses[better],
                    "rejected": " " + e.responses[worse],
                }
            )
    return rows


@torch.inference_mode()
def held_out_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[RankingExample],
    suffix: str,
    batch: int,
    max_length: int,
) -> float:
    """Pairwise accuracy over strict pairs (ties excluded), the same code for both arms; each
    model reads texts as it trained on them (``suffix``: TRL appends the eos token)."""
    model.eval()
    correct = total = 0.0
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        texts = [exchange_text(tokenizer, e.prompt, r) + suffix for e in chunk for r in e.responses]
        tokenizer.truncation_side = "left"
        inputs = tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        rewards = flat_rewards(model, dict(inputs)).view(len(chunk), -1)
        ranks = torch.tensor([e.ranks for e in chunk], device=rewards.device)
        c, t = pairwise_accuracy(rewards, ranks)
        correct, total = correct + c.item(), total + t.item()
    return correct / total


# ---------------------------------------------------------------------------------------------
# Memory and timing probes
# ---------------------------------------------------------------------------------------------


class Window(probes.Window):
    """The shared window, plus the load average either side and other processes' CPU seconds."""

    def start(self) -> None:
        self.load_before = os.getloadavg()[0]

    def stop(self) -> None:
        self.load_after = os.getloadavg()[0]

    def record(self) -> dict[str, float]:
        return {
            **super().record(),
            "others_cpu_s": self.others,
            "loadavg_1m_before": self.load_before,
            "loadavg_1m_after": self.load_after,
        }


def first_loss(losses: list[float]) -> float:
    return losses[0] if losses else math.nan


def end_loss(losses: list[float]) -> float:
    """Mean over the last tenth of steps (at least 3): one step's loss is too noisy."""
    tail = losses[-max(3, len(losses) // 10) :]
    return sum(tail) / len(tail) if tail else math.nan


# ---------------------------------------------------------------------------------------------
# The two arms (each runs in a child process)
# ---------------------------------------------------------------------------------------------


def fresh_backbone(path: str, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    torch.manual_seed(INIT_SEED)
    return load_backbone(path, device)


def run_ours(args: argparse.Namespace, path: str, train: list, held_out: list) -> dict[str, Any]:
    model, tokenizer = fresh_backbone(path, args.device)
    config = RewardTrainConfig(
        epochs=1,
        lr=args.lr,
        batch_rankings=args.batch,
        max_length=args.max_length,
        seed=0,
        share_prompts=args.arm == "ours",
    )
    # warm-up: a throwaway copy trains WARMUP_STEPS steps (allocator, thread pool, lazy imports)
    train_reward_model(copy.deepcopy(model), tokenizer, train[: WARMUP_STEPS * args.batch], config)
    acc0 = held_out_accuracy(model, tokenizer, held_out, "", args.batch, args.max_length)
    with Window() as window:
        outcome = train_reward_model(model, tokenizer, train, config)
    losses = [point["loss"] for point in outcome.history]
    return {
        **window.record(),
        "steps": outcome.steps,
        "sequences": sum(len(e.responses) for e in train),
        "loss_kind": "Davidson NLL per ranking (ties scored), learnt nu",
        "loss_first": first_loss(losses),
        "loss_end": end_loss(losses),
        "nu_end": math.exp(outcome.log_nu) if outcome.log_nu is not None else None,
        "held_out_accuracy_init": acc0,
        "held_out_accuracy": held_out_accuracy(
            model, tokenizer, held_out, "", args.batch, args.max_length
        ),
    }


def run_trl(args: argparse.Namespace, path: str, train: list, held_out: list) -> dict[str, Any]:
    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import RewardConfig, RewardTrainer

    datasets.disable_progress_bars()
    model, tokenizer = fresh_backbone(path, args.device)
    rows = to_pairs(train, tokenizer)
    pairs_per_step = args.batch * args.k // 2  # = B*K sequences per step, like ours
    scratch = tempfile.mkdtemp(prefix="trl-bench-")  # output_dir; nothing is saved there
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)

    def trainer_for(m: PreTrainedModel, data: list[dict], logging_steps: int) -> RewardTrainer:
        config = RewardConfig(
            output_dir=scratch,
            per_device_train_batch_size=pairs_per_step,
            num_train_epochs=1,
            learning_rate=args.lr,
            lr_scheduler_type="constant",  # ours has no schedule
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,  # ours clips at 1.0 too
            optim="adamw_torch",  # torch.optim.AdamW, as ours (the default may pick fused)
            max_length=args.max_length,
            # TRL's default gradient_checkpointing=True (an alias of this in transformers 5)
            # recomputes activations: slower, and not what ours does
            activation_checkpointing=False,
            bf16=False,  # TRL's default is True; ours trains in float32
            use_cpu=args.device == "cpu",
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=logging_steps,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = RewardTrainer(
            model=m,
            args=config,
            train_dataset=datasets.Dataset.from_list(data),
            processing_class=tokenizer,
        )
        for callback in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(callback)
        return trainer

    # warm-up: a throwaway copy trains WARMUP_STEPS steps (allocator, thread pool, Trainer setup)
    trainer_for(copy.deepcopy(model), rows[: WARMUP_STEPS * pairs_per_step], 1).train()
    acc0 = held_out_accuracy(
        model, tokenizer, held_out, tokenizer.eos_token, args.batch, args.max_length
    )
    tokenise_started = time.perf_counter()
    trainer = trainer_for(model, rows, args.trl_logging_steps)  # tokenises: not timed
    tokenise_s = time.perf_counter() - tokenise_started
    check_same_text(train, trainer, tokenizer)
    with Window() as window:
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        **window.record(),
        "steps": trainer.state.global_step,
        "pairs": len(rows),
        "pairs_trained": len(trainer.train_dataset),  # after TRL's max_length filter
        "sequences": 2 * len(trainer.train_dataset),
        "init_and_tokenise_s_untimed": tokenise_s,
        "loss_kind": "Bradley-Terry NLL per pair (ties dropped)",
        "loss_first": first_loss(losses),
        "loss_end": end_loss(losses),
        "logging_steps": args.trl_logging_steps,
        "activation_checkpointing": bool(trainer.model.is_activation_checkpointing),
        "optimizer": type(trainer.optimizer.optimizer).__name__,
        "held_out_accuracy_init": acc0,
        "held_out_accuracy": held_out_accuracy(
            trainer.model, tokenizer, held_out, tokenizer.eos_token, args.batch, args.max_length
        ),
    }


def check_same_text(train: list, trainer: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """TRL's first chosen sequence is our tokenisation of the same exchange plus one eos."""
    first = next(e for e in train if strict_pairs(e.ranks))
    better, _ = strict_pairs(first.ranks)[0]
    ours = tokenizer(exchange_text(tokenizer, first.prompt, first.responses[better]))["input_ids"]
    theirs = trainer.train_dataset[0]["chosen_ids"]
    assert theirs == [*ours, tokenizer.eos_token_id], (ours, theirs)


def child(args: argparse.Namespace) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    settings = Settings()
    path = str(ensure_demo_model(settings.resolved_model_cache_dir, spec_from_settings(settings)))
    train, held_out = build_rankings(args.k, args.n, HELD_OUT_RANKINGS, args.tie_threshold)
    run = run_trl if args.arm == "trl" else run_ours
    result = run(args, path, train, held_out)
    n = len(train)
    result |= {
        "arm": args.arm,
        "k": args.k,
        "n_rankings": n,
        "rankings_per_s": n / result["train_wall_s"],
        "sequences_per_s": result["sequences"] / result["train_wall_s"],
        "peak_rss_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "model": path,
    }
    Path(args.result).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# Parent: one child per (K, repeat, arm), then the table
# ---------------------------------------------------------------------------------------------


def run_child(arm: str, k: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--arm",
        arm,
        "--k",
        str(k),
        "--rankings",
        str(n),
        "--batch",
        str(args.batch),
        "--lr",
        str(args.lr),
        "--max-length",
        str(args.max_length),
        "--trl-logging-steps",
        str(args.trl_logging_steps),
        "--tie-threshold",
        str(args.tie_threshold),
        "--device",
        args.device,
        "--result",
        result_path,
    ]
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    best: dict[str, Any] | None = None
    for attempt in range(1, args.retries + 2):
        waited = probes.wait_for_quiet(args.quiet_wait, threshold=0.1)
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        result = json.loads(Path(result_path).read_text())
        result["child_wall_s"] = time.perf_counter() - started
        result["waited_for_quiet_s"] = waited
        result["attempt"] = attempt
        print(
            f"  K={k} {arm:4s}: {result['rankings_per_s']:7.1f} rankings/s "
            f"({result['train_wall_s']:.1f} s, cpu {result['train_cpu_s']:.1f} s; "
            f"others used {100 * result['contention']:.0f}% of the CPUs meanwhile; "
            f"waited {waited:.0f} s for quiet)",
            flush=True,
        )
        if best is None or result["contention"] < best["contention"]:
            best = result
        if result["contention"] <= args.max_contention or attempt > args.retries:
            break
        print(f"    contended (> {100 * args.max_contention:.0f}%): run again", flush=True)
    os.unlink(result_path)
    assert best is not None
    return best


def summarise(k: int, n: int, runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Headline rates are each arm's fastest run: other processes only ever slow a run down,
    so the fastest is the least disturbed; medians are kept beside them."""
    trl = runs["trl"][0]  # pair counts are deterministic
    fastest = {arm: max(rs, key=lambda r: r["rankings_per_s"]) for arm, rs in runs.items()}
    rate = {arm: r["rankings_per_s"] for arm, r in fastest.items()}
    per_sequence = {arm: r["sequences_per_s"] for arm, r in fastest.items()}
    median = {arm: statistics.median(r["rankings_per_s"] for r in rs) for arm, rs in runs.items()}
    total_pairs = n * k * (k - 1) // 2
    sequence_ratio = per_sequence["ours"] / per_sequence["trl"]
    return {
        "k": k,
        "n_rankings": n,
        "pairs_all": total_pairs,
        "pairs_strict": trl["pairs"],
        "pairs_dropped_ties": total_pairs - trl["pairs"],
        "pairs_filtered_by_trl_max_length": trl["pairs"] - trl["pairs_trained"],
        **{f"{arm}_rankings_per_s": rate[arm] for arm in ARMS},
        "ratio": rate["ours"] / rate["trl"],
        "target_ratio": SEQUENCE_TARGET * (k - 1),
        "target_met": rate["ours"] / rate["trl"] >= SEQUENCE_TARGET * (k - 1),
        "packing_speedup": rate["ours"] / rate["ours_plain"],
        **{f"{arm}_rankings_per_s_median": median[arm] for arm in ARMS},
        "ratio_medians": median["ours"] / median["trl"],
        **{f"{arm}_sequences_per_s": per_sequence[arm] for arm in ARMS},
        "sequence_ratio": sequence_ratio,
        "sequence_ratio_plain": per_sequence["ours_plain"] / per_sequence["trl"],
        "sequence_target": SEQUENCE_TARGET,
        "sequence_target_met": sequence_ratio >= SEQUENCE_TARGET,
        "strict_pair_share": trl["pairs"] / total_pairs,
        "held_out_accuracy": {arm: r["held_out_accuracy"] for arm, r in fastest.items()},
        "contention_of_fastest": {arm: r["contention"] for arm, r in fastest.items()},
        "max_contention": max(r["contention"] for r in fastest.values()),
        # memory: medians over repeats (the allocator makes the growth vary by ~±20%)
        **{
            f"{arm}_{key}_mib": statistics.median(r[field] for r in runs[arm])
            for arm in ARMS
            for key, field in (
                ("peak_rss", "peak_rss_process_mib"),
                ("rss_delta", "rss_delta_train_mib"),
            )
        },
        **runs,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'K':>2} {'N':>5} {'pairs':>11} {'ours r/s':>9} {'plain r/s':>9} {'TRL r/s':>8} "
        f"{'ratio':>6} {'target':>6} {'ours RSS/Δ MiB':>15} {'TRL RSS/Δ MiB':>14} "
        f"{'ours loss':>12} {'TRL loss':>12} {'ours acc':>11} {'plain acc':>11} "
        f"{'TRL acc':>11} {'busy':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        o, plain, t = r["ours"][0], r["ours_plain"][0], r["trl"][0]
        print(
            f"{r['k']:>2} {r['n_rankings']:>5} "
            f"{r['pairs_strict']:>5}/{r['pairs_all']:<5} "
            f"{r['ours_rankings_per_s']:>9.1f} {r['ours_plain_rankings_per_s']:>9.1f} "
            f"{r['trl_rankings_per_s']:>8.1f} "
            f"{r['ratio']:>6.2f} {r['target_ratio']:>6.1f} "
            f"{r['ours_peak_rss_mib']:>8.0f}/{r['ours_rss_delta_mib']:<6.1f} "
            f"{r['trl_peak_rss_mib']:>7.0f}/{r['trl_rss_delta_mib']:<6.1f} "
            f"{o['loss_first']:>5.3f}->{o['loss_end']:<5.3f} "
            f"{t['loss_first']:>5.3f}->{t['loss_end']:<5.3f} "
            + " ".join(
                f"{a['held_out_accuracy_init']:>4.2f}->{a['held_out_accuracy']:<5.2f}"
                for a in (o, plain, t)
            )
            + f" {100 * r['max_contention']:>4.0f}%"
        )
    print(
        "pairs = strictly ordered pairs TRL trains on / all C(K,2) pairs ours trains on (the rest "
        "are ties, dropped for TRL).\nr/s = rankings per second of training, fastest run per arm "
        "(ours: packed rankings, plain: one padded row per response, both incl. "
        "tokenisation; TRL: trainer.train() only, tokenised in __init__ beforehand).\n"
        "RSS/Δ = child's peak RSS / peak RSS growth during training. loss: first step -> mean "
        "of the last tenth of steps (ours: Davidson with ties; TRL: Bradley-Terry).\n"
        "acc = held-out pairwise accuracy before -> after training "
        f"({HELD_OUT_RANKINGS} rankings on unseen prompts, ties excluded).\n"
        "busy = the CPU other processes took during the fastest runs (share of all cores, the "
        "worst of the arms)."
    )
    for r in rows:
        print(
            f"K={r['k']}: ratio {r['ratio']:.2f} (fastest of {len(r['ours'])} run(s) per arm; "
            f"medians {r['ratio_medians']:.2f}) vs target {r['target_ratio']:.1f}: "
            f"{'MET' if r['target_met'] else 'NOT met'}. Per sequence ours is "
            f"{r['sequence_ratio']:.2f}x TRL (target {SEQUENCE_TARGET}: "
            f"{'MET' if r['sequence_target_met'] else 'NOT met'}; unpacked "
            f"{r['sequence_ratio_plain']:.2f}x; packing {r['packing_speedup']:.2f}x). TRL trains "
            f"{100 * r['strict_pair_share']:.0f}% of the C(K,2) pairs, so ratio = "
            f"{r['sequence_ratio']:.2f} x {r['strict_pair_share']:.2f} x (K-1)."
        )


def parse_n(text: str) -> dict[int, int]:
    return {int(k): int(n) for k, n in (item.split("=") for item in text.split(",") if item)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--n", type=parse_n, default=DEFAULT_N, help="rankings per K: 4=960,8=320")
    parser.add_argument("--batch", type=int, default=RewardTrainConfig.batch_rankings)
    parser.add_argument("--lr", type=float, default=RewardTrainConfig.lr)
    parser.add_argument("--max-length", type=int, default=RewardTrainConfig.max_length)
    parser.add_argument("--repeats", type=int, default=1, help="children per (arm, K); median")
    parser.add_argument(
        "--tie-threshold",
        type=float,
        default=0.5,
        help="the simulated annotator's tie threshold; 0 gives rankings without ties, where TRL "
        "gets every pair and the K-1 ratio is like for like",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where both arms train (float32 either way: a fully trained reward model's "
        "weights are float32 by design)",
    )
    parser.add_argument(
        "--trl-logging-steps", type=int, default=1, help="TRL logs the loss every this many steps"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each child, wait up to this many seconds for the machine to be 90%% idle",
    )
    parser.add_argument(
        "--max-contention",
        type=float,
        default=0.15,
        help="rerun a child whose timing saw other processes use more than this share of CPUs",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="reruns per child at most; the least contended wins"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rankings", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.n = args.rankings
        child(args)
        return

    # build (or find) the demo model once, before any child races for it
    loadavg_start = os.getloadavg()
    settings = Settings()
    ensure_demo_model(settings.resolved_model_cache_dir, spec_from_settings(settings))
    rows = []
    for k in args.ks:
        n = args.n.get(k) or DEFAULT_N.get(k) or 480
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for _ in range(args.repeats):
            for arm in ARMS:
                runs[arm].append(run_child(arm, k, n, args))
        rows.append(summarise(k, n, runs))
    result = {
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
        "batch_rankings": args.batch,
        "lr": args.lr,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "warmup_steps": WARMUP_STEPS,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    name = "reward_throughput" if args.tie_threshold else "reward_throughput_no_ties"
    (OUT / f"{name}.json").write_text(
        json.dumps(result | {"tie_threshold": args.tie_threshold}, indent=2)
    )
    print_table(rows)


if __name__ == "__main__":
    main()
