"""Issue 14: incremental reward retraining keeps the time per retrain flat from 1k to 50k
rankings held, at the held-out accuracy of a full retrain.

Simulated rankings, cheap: demo-corpus prompts, K=4 of each prompt's corpus answers, ranked by
the noisy length-preferring simulated annotator of ``reward_throughput.py`` (with ties),
written straight into the store's tables (no serving, no model sampling). Every retrain is the
worker's own "train_reward" job (``reward.job.run_train_reward``) on the shipped demo model with
the default reward form (likelihood prior), timed end to end: loading the rankings, training,
scoring the held-out sample, saving, registering. Settings: ``--new`` rankings arrive between
retrains, ``--replay`` older ones replayed, a full retrain every ``--cycle`` versions, held-out
scoring capped at ``--eval-max`` rankings.

1. A whole cycle at small scale (accuracy): v1 is a full retrain on ``sizes[0] - new``
   rankings; then ``cycle - 1`` incremental retrains, ``new`` rankings apart; then a full
   retrain on the same rankings as the last incremental one. The last incremental version has
   drifted the most a cycle allows; its held-out accuracy is compared with the full retrain's
   on the same held-out rankings (paired bootstrap over rankings, 95% interval of the
   difference).
2. Larger stores (time): for each further size N the store grows to N - new, then ``new``
   rankings arrive and one incremental retrain is timed. Its starting point: at the sizes in
   ``--full-sizes`` a real one, a full retrain on the N - new rankings (timed too), and after
   the incremental retrain a full one on all N is timed and the two compared as above (one
   step, like for like). At the other sizes a stand-in: the newest full model registered again,
   its record saying it trained on every ranking then held (a real lineage would have got
   there by N/new incremental retrains, which this CPU cannot run in minutes; a retrain's time
   does not depend on where its weights came from, but its accuracy does, so none is compared
   there). A full retrain at the larger sizes would take far too long here, so its time there
   is EXTRAPOLATED: a straight line through the measured full retrains' time against training
   rankings (each epoch reads every one), marked as such in the JSON and drawn dashed.

One torch thread, passive OpenMP waiting: the machine is shared, and a process's CPU seconds
then measure its own work whatever else runs (wall seconds are recorded beside them).

    nice -n 10 python bench/reward_incremental.py [--sizes 1000 5000 20000 50000]

Writes bench/out/reward_incremental.json (with the load average) and .png.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.figures import pyplot, save  # noqa: E402
from bench.reward_throughput import response_pools  # noqa: E402
from rlhf_loop.arena.resample import percentile_interval, resample_indices  # noqa: E402
from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.job_runner import JobContext  # noqa: E402
from rlhf_loop.model.demo_build import ensure_demo_model, spec_from_settings  # noqa: E402
from rlhf_loop.prompt_import import ParsedPrompts, PromptRow  # noqa: E402
from rlhf_loop.reward.data import (  # noqa: E402
    RankingExample,
    collate,
    heldout_sample,
    load_rankings,
    split_held_out,
)
from rlhf_loop.reward.job import run_train_reward  # noqa: E402
from rlhf_loop.reward.losses import pairwise_accuracy  # noqa: E402
from rlhf_loop.reward.model import META_FILE, flat_rewards, load_reward_model  # noqa: E402
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator  # noqa: E402
from rlhf_loop.store import jobs  # noqa: E402
from rlhf_loop.store.annotators import annotator_id  # noqa: E402
from rlhf_loop.store.db import now, open_db  # noqa: E402
from rlhf_loop.store.generations import Sample, add_comparisons  # noqa: E402
from rlhf_loop.store.prompts import add_prompts  # noqa: E402
from rlhf_loop.store.versions import latest_version, next_version, register_version  # noqa: E402

K = 4
SEED = 0


# ---------------------------------------------------------------------------------------------
# Simulated rankings, written straight into the store
# ---------------------------------------------------------------------------------------------


def simulated_rankings(n: int) -> list[tuple[str, list[str], list[int]]]:
    """n (prompt, K answers, ranks) drawn with a fixed seed: the same rankings on every run."""
    pools = {p: r for p, r in response_pools().items() if len(r) >= K}
    prompts = sorted(pools)
    annotator = SimulatedAnnotator(
        LengthOracle(target_words=5), noise=0.3, tie_threshold=0.5, seed=SEED
    )
    rng = random.Random(SEED)
    out = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        responses = rng.sample(pools[prompt], K)
        out.append((prompt, responses, annotator.rank(prompt, responses)))
    return out


class Store:
    """The data dir's database, grown to a number of rankings held."""

    def __init__(self, db: Any, rankings: list[tuple[str, list[str], list[int]]]) -> None:
        self.db, self.rankings, self.held = db, rankings, 0
        texts = sorted({p for p, _, _ in rankings})
        rows = [PromptRow(text=t, line=i + 1) for i, t in enumerate(texts)]
        add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "bench")
        self.prompt_ids = {r["text"]: r["id"] for r in db["prompts"].rows}
        self.annotator = annotator_id(db, "bench-annotator")

    def grow(self, upto: int, chunk: int = 2000) -> None:
        while self.held < upto:
            batch = self.rankings[self.held : min(upto, self.held + chunk)]
            comparisons = add_comparisons(
                self.db,
                0,
                [self.prompt_ids[p] for p, _, _ in batch],
                [[Sample(t, len(t.split()), True) for t in rs] for _, rs, _ in batch],
                {"model": "bench"},
            )
            stamp = now()
            self.db["rankings"].insert_all(
                {
                    "comparison_id": c,
                    "annotator_id": self.annotator,
                    "status": "ranked",
                    "ranks": json.dumps(ranks),
                    "seconds": 5.0,
                    "created_at": stamp,
                }
                for c, (_, _, ranks) in zip(comparisons, batch, strict=True)
            )
            self.held += len(batch)


# ---------------------------------------------------------------------------------------------
# One retrain: the worker's job, timed by phase
# ---------------------------------------------------------------------------------------------


class Phases:
    """The job's progress reports with the time each came: the first comes once the rankings
    are loaded and the retrain planned, "evaluating" once training ends."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = []

    def report(self, status: str, progress: float | None = None) -> None:
        self.marks.append((time.perf_counter(), status))


def retrain(db: Any, settings: Settings, model_path: str, held: int) -> dict[str, Any]:
    jobs.enqueue(db, "train_reward", {"reason": "bench"})
    job = jobs.claim(db, "bench", 600)
    phases = Phases()
    load0, cpu0 = os.getloadavg()[0], time.process_time()
    started = time.perf_counter()
    result = run_train_reward(JobContext(db, settings, job, phases, model_path))
    ended = time.perf_counter()
    planned = phases.marks[0][0]
    evaluating = next(t for t, s in phases.marks if s.startswith("evaluating"))
    row = {
        "held": held,
        "version": result["version"],
        "kind": result["retrain"]["kind"],
        "reason": result["retrain"]["reason"],
        "train_rankings": result["train_rankings"],
        "new_rankings": result["retrain"]["new_rankings"],
        "replay_rankings": result["retrain"]["replay_rankings"],
        "wall_s": ended - started,
        "cpu_s": time.process_time() - cpu0,
        "load_and_plan_s": planned - started,
        "model_and_train_s": evaluating - planned,
        "evaluate_save_register_s": ended - evaluating,
        "heldout_rankings_scored": result["heldout_rankings"],
        "heldout_rankings_all": result["heldout_rankings_all"],
        "pairwise_accuracy": result["pairwise_accuracy"],
        "accuracy_interval": result["accuracy_interval"],
        "loadavg_1m_before": load0,
        "loadavg_1m_after": os.getloadavg()[0],
    }
    print(
        f"  {held:>6} held, v{row['version']} {row['kind']:<11} on {row['train_rankings']:>6}: "
        f"{row['wall_s']:6.1f} s (cpu {row['cpu_s']:6.1f}; load {row['load_and_plan_s']:.1f}, "
        f"train {row['model_and_train_s']:.1f}, eval+save {row['evaluate_save_register_s']:.1f}) "
        f"acc {row['pairwise_accuracy']:.3f} {row['accuracy_interval']}  [{row['reason']}]",
        flush=True,
    )
    return row


def register_stand_in(db: Any, settings: Settings, source: dict[str, Any]) -> int:
    """A copy of version ``source`` registered as the newest, its record saying it trained on
    every training ranking held now (see the module docstring: a stand-in for a lineage)."""
    version = next_version(db, "reward")
    path = settings.runs_dir / "reward" / f"v{version}"
    shutil.copytree(source["path"], path)
    train, _ = split_held_out(load_rankings(db), settings.reward_heldout_fraction)
    meta = json.loads((path / META_FILE).read_text())
    meta["rankings_seen"] = sorted(e.ranking_id for e in train)
    (path / META_FILE).write_text(json.dumps(meta))
    metrics = source["metrics"] | {"retrain": {"kind": "stand-in", "versions_since_full": 0}}
    register_version(db, "reward", version, path, source["base_model"], metrics)
    return version


# ---------------------------------------------------------------------------------------------
# Accuracy: incremental against full on the same held-out rankings
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def per_ranking_accuracy(path: str, examples: list[RankingExample]) -> np.ndarray:
    """[n, 2]: correctly ordered strict pairs and strict pairs, per held-out ranking."""
    model, tokenizer, _ = load_reward_model(path, "cpu")
    out = []
    for start in range(0, len(examples), 32):
        ranked = collate(examples[start : start + 32], tokenizer, 256)
        rewards = ranked.reward_grid(flat_rewards(model, ranked.inputs)).cpu()
        for i in range(len(rewards)):
            c, t = pairwise_accuracy(rewards[i : i + 1], ranked.rank_grid[i : i + 1])
            out.append((c.item(), t.item()))
    return np.array(out, dtype=np.float64)


def paired_difference(db: Any, settings: Settings, incremental: int, full: int) -> dict:
    """Accuracy of version ``incremental`` minus version ``full`` on the held-out sample both
    were scored on, with a 95% bootstrap interval over rankings (paired: one draw for both)."""
    _, held_out = split_held_out(load_rankings(db), settings.reward_heldout_fraction)
    scored = heldout_sample(held_out, settings.reward_eval_max_rankings)
    paths = {v["version"]: v["path"] for v in db["model_versions"].rows_where("kind = 'reward'")}
    a = per_ranking_accuracy(paths[incremental], scored)
    b = per_ranking_accuracy(paths[full], scored)
    keep = a[:, 1] > 0
    a, b = a[keep], b[keep]
    idx = resample_indices(len(a), 2000, SEED)
    diffs = a[idx, 0].sum(1) / a[idx, 1].sum(1) - b[idx, 0].sum(1) / b[idx, 1].sum(1)
    interval = percentile_interval(diffs)
    return {
        "incremental_version": incremental,
        "full_version": full,
        "heldout_rankings": int(keep.sum()),
        "incremental_accuracy": a[:, 0].sum() / a[:, 1].sum(),
        "full_accuracy": b[:, 0].sum() / b[:, 1].sum(),
        "difference": a[:, 0].sum() / a[:, 1].sum() - b[:, 0].sum() / b[:, 1].sum(),
        "difference_interval_95": interval,
        "within_noise": interval is not None and interval[0] <= 0 <= interval[1],
    }


# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------


def extrapolate(full: list[dict], sizes: list[int], heldout_fraction: float) -> list[dict]:
    """Full-retrain time at ``sizes`` from a least-squares line through the measured ones
    (time against training rankings)."""
    x = np.array([r["train_rankings"] for r in full], dtype=float)
    slope, intercept = np.polyfit(x, [r["wall_s"] for r in full], 1)
    cpu_slope, cpu_intercept = np.polyfit(x, [r["cpu_s"] for r in full], 1)
    out = []
    for held in sizes:
        train = held * (1 - heldout_fraction)
        out.append(
            {
                "held": held,
                "train_rankings_approx": round(train),
                "wall_s": intercept + slope * train,
                "cpu_s": cpu_intercept + cpu_slope * train,
                "extrapolated": True,
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    defaults = Settings()
    model_path = str(
        ensure_demo_model(defaults.resolved_model_cache_dir, spec_from_settings(defaults))
    )
    torch.manual_seed(SEED)
    generated = time.perf_counter()
    rankings = simulated_rankings(max(args.sizes))
    data_dir = Path(tempfile.mkdtemp(prefix="reward-incremental-"))
    try:
        settings = Settings(
            data_dir=str(data_dir),
            device="cpu",
            reward_retrain_every=0,
            ppo_after_reward=False,
            reward_replay_rankings=args.replay,
            reward_full_retrain_every=args.cycle,
            reward_eval_max_rankings=args.eval_max,
        )
        full_settings = settings.replace(reward_full_retrain_every=1)
        db = open_db(settings.resolved_db_path)
        store = Store(db, rankings)
        print(f"{len(rankings)} simulated rankings in {time.perf_counter() - generated:.0f} s")

        print(f"1. a whole cycle: full, {args.cycle - 1} incremental, full on the same rankings")
        store.grow(args.sizes[0] - args.new)
        cycle = [retrain(db, settings, model_path, store.held)]
        for _ in range(args.cycle - 1):
            store.grow(store.held + args.new)
            cycle.append(retrain(db, settings, model_path, store.held))
        cycle.append(retrain(db, full_settings, model_path, store.held))
        comparisons = [
            {"where": f"end of a cycle ({args.cycle - 1} incremental retrains), {store.held} held"}
            | paired_difference(db, settings, cycle[-2]["version"], cycle[-1]["version"])
        ]
        source = latest_version(db, "reward")

        print("2. larger stores: one incremental retrain each (full ones where measured)")
        at_sizes = [cycle[1]]  # the first incremental retrain: sizes[0] held
        full_runs = [cycle[0], cycle[-1]]
        for held in args.sizes[1:]:
            store.grow(held - args.new)
            if held in args.full_sizes:
                full_runs.append(retrain(db, full_settings, model_path, store.held))
            else:
                register_stand_in(db, settings, source)
            store.grow(held)
            at_sizes.append(retrain(db, settings, model_path, held))
            if held in args.full_sizes:
                full_runs.append(retrain(db, full_settings, model_path, held))
                source = latest_version(db, "reward")
                comparisons.append(
                    {"where": f"one incremental retrain from a full one, {held} held"}
                    | paired_difference(
                        db, settings, at_sizes[-1]["version"], full_runs[-1]["version"]
                    )
                )
            at_sizes[-1]["start"] = "full" if held in args.full_sizes else "stand-in"
        beyond = [h for h in args.sizes if h > max(r["held"] for r in full_runs)]
        return {
            "settings": {
                "k": K,
                "new_rankings_per_retrain": args.new,
                "reward_replay_rankings": args.replay,
                "reward_full_retrain_every": args.cycle,
                "reward_eval_max_rankings": args.eval_max,
                "reward_epochs": settings.reward_epochs,
                "reward_heldout_fraction": settings.reward_heldout_fraction,
                "model": model_path,
                "reward_form": "likelihood prior (default)",
            },
            "cycle": cycle,
            "incremental_at_sizes": at_sizes,
            "full_measured": full_runs,
            "full_extrapolated": extrapolate(full_runs, beyond, settings.reward_heldout_fraction),
            "accuracy_incremental_minus_full": comparisons,
        }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (times, accuracy) = plt.subplots(1, 2, figsize=(12, 4.5))
    inc = result["incremental_at_sizes"]
    full = sorted(result["full_measured"], key=lambda r: r["held"])
    extra = result["full_extrapolated"]
    times.plot([r["held"] for r in inc], [r["cpu_s"] for r in inc], "o-", label="incremental")
    times.plot([r["held"] for r in full], [r["cpu_s"] for r in full], "s-", label="full, measured")
    if extra:
        line = [full[-1], *extra]
        times.plot(
            [r["held"] for r in line],
            [r["cpu_s"] for r in line],
            "s--",
            color=times.lines[-1].get_color(),
            mfc="none",
            label="full, extrapolated",
        )
    times.set(
        xscale="log",
        yscale="log",
        xlabel="rankings held",
        ylabel="CPU seconds per retrain (1 thread, end to end)",
        title="Time per reward retrain",
    )
    times.legend()
    cycle = result["cycle"]
    for kind, marker in (("full", "s"), ("incremental", "o")):
        rows = [r for r in cycle if r["kind"] == kind]
        low = [r["pairwise_accuracy"] - r["accuracy_interval"][0] for r in rows]
        high = [r["accuracy_interval"][1] - r["pairwise_accuracy"] for r in rows]
        accuracy.errorbar(
            [r["held"] for r in rows],
            [r["pairwise_accuracy"] for r in rows],
            yerr=[low, high],
            fmt=marker,
            capsize=3,
            label=kind,
        )
    accuracy.set(
        xlabel="rankings held",
        ylabel="held-out pairwise accuracy (95% interval)",
        title=f"One cycle: full, {len(cycle) - 2} incremental, full",
    )
    accuracy.legend()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 50000])
    parser.add_argument("--full-sizes", type=int, nargs="*", default=[5000])
    parser.add_argument("--new", type=int, default=100, help="rankings between retrains")
    parser.add_argument("--replay", type=int, default=300)
    parser.add_argument("--cycle", type=int, default=10, help="reward_full_retrain_every")
    parser.add_argument("--eval-max", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), os.getloadavg()
    result = run(args) | {
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "total_s": time.perf_counter() - started,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reward_incremental.json").write_text(json.dumps(result, indent=2))
    plot(result, OUT / "reward_incremental.png")
    inc = result["incremental_at_sizes"]
    print(
        "incremental s/retrain: "
        + ", ".join(f"{r['held']}: {r['wall_s']:.1f} (cpu {r['cpu_s']:.1f})" for r in inc)
    )
    print(
        "full s/retrain: "
        + ", ".join(
            f"{r['held']}: {r['wall_s']:.1f} (cpu {r['cpu_s']:.1f})"
            for r in result["full_measured"]
        )
        + "; extrapolated "
        + ", ".join(
            f"{r['held']}: {r['wall_s']:.0f} (cpu {r['cpu_s']:.0f})"
            for r in result["full_extrapolated"]
        )
    )
    for c in result["accuracy_incremental_minus_full"]:
        print(
            f"{c['where']}: incremental {c['incremental_accuracy']:.3f} vs full "
            f"{c['full_accuracy']:.3f}, difference {c['difference']:+.3f} "
            f"{c['difference_interval_95']} -> {'within' if c['within_noise'] else 'OUTSIDE'} noise"
        )
    print(f"total {result['total_s']:.0f} s, load average {load_start} -> {result['loadavg_end']}")


if __name__ == "__main__":
    main()
