"""The "ppo_round" worker job: improve the live policy against the newest reward model and the
reward functions the settings name (``rlhf_loop.ppo.rewards``).

Roll out on training prompts, score, optimise, for ``ppo_steps`` batches; evaluate on held-out
prompts before and after (mean reward, KL to the reference); save the adapter as a new version
and make it live in one transaction. A round killed part-way registers nothing, so the previous
policy stays live and the job is retried by the next worker.
"""

from __future__ import annotations

import random
from typing import Any

import sqlite_utils
import torch

from rlhf_loop.arena.degeneration import length_correlation, repeated_ngram_share
from rlhf_loop.config import ConfigError, Settings
from rlhf_loop.job_runner import JobContext, JobError
from rlhf_loop.model.loader import ModelLoadError
from rlhf_loop.ppo.distributed import World
from rlhf_loop.ppo.math import AdaptiveKL, FixedKL, RunningMoments, kl_per_token
from rlhf_loop.ppo.policy import Policy
from rlhf_loop.ppo.ptx import PtxUnavailable, ptx_source
from rlhf_loop.ppo.publish import load_live_policy, publish_policy
from rlhf_loop.ppo.rewards import SampleRewards
from rlhf_loop.ppo.rollout import rollout
from rlhf_loop.ppo.rollout_sampling import SampleConfig
from rlhf_loop.ppo.scoring import UnscorableBatch, usable
from rlhf_loop.ppo.step import Optimisation, PPOHyper, old_outputs, ppo_step
from rlhf_loop.reward.data import is_held_out
from rlhf_loop.reward.model import load_reward_model
from rlhf_loop.store.prompts import prompt_texts_in_use
from rlhf_loop.store.versions import latest_version, live_policy
from rlhf_loop.verifiers import FUNCTION_METRIC, VerifierFailed, reward_functions

SAMPLES_KEPT = 8  # eval samples stored with a version, for the side-by-side view
KL_HORIZON = 10_000  # steps over which the adaptive controller closes its error (Ziegler et al.)


def hyper(settings: Settings) -> PPOHyper:
    return PPOHyper(
        epochs=settings.ppo_epochs,
        minibatch=settings.ppo_minibatch,
        clip=settings.ppo_clip,
        clip_value=settings.ppo_clip_value,
        vf_coef=settings.ppo_vf_coef,
        gamma=settings.ppo_gamma,
        lam=settings.ppo_lambda,
        missing_eos_penalty=settings.ppo_missing_eos_penalty,
        ema_reference=settings.ppo_ema_reference,
        kl_budget=settings.ppo_kl_budget,
        ptx_coef=settings.ppo_ptx_coef,
    )


def sample_config(settings: Settings) -> SampleConfig:
    return SampleConfig(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
    )


def split_prompts(db: sqlite_utils.Database, settings: Settings) -> tuple[list[str], list[str]]:
    """Training prompts, and held-out ones: the reward model's held-out share, so neither the
    reward model nor PPO has trained on what a round is judged by."""
    texts = prompt_texts_in_use(db)
    held = [t for t in texts if is_held_out(t, settings.reward_heldout_fraction)]
    train = [t for t in texts if not is_held_out(t, settings.reward_heldout_fraction)]
    return train, held[: settings.ppo_eval_prompts]


@torch.no_grad()
def evaluate_policy(
    policy: Policy, rewards: SampleRewards, prompts: list[str], config: SampleConfig, seed: int
) -> dict[str, Any]:
    """Mean reward and KL to the reference of one sample per held-out prompt (a fixed seed, so
    before and after see the same sampling noise), and the cheap signs of reward hacking:
    repeated phrases and how much the reward follows length."""
    if not prompts:
        return {"mean_reward": None, "kl": None, "samples": []}
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    batch = rollout(policy, prompts, 1, config, generator)
    scores, function_means = _rewards(rewards, batch.prompts, batch.texts)
    old_logp, _, ref_logp = old_outputs(policy, batch)
    mask = batch.response_mask.to(policy.device)
    kl = (kl_per_token(old_logp, ref_logp, "k1") * mask).sum(-1)
    finite = torch.isfinite(scores)
    lengths = mask.sum(-1).float()
    return {
        "mean_reward": scores[finite].mean().item() if finite.any() else None,
        "functions": function_means,
        "kl": kl.mean().item(),
        "response_length": lengths.mean().item(),
        "repeated_ngrams": repeated_ngram_share(batch.texts),
        "length_correlation": length_correlation(
            scores[finite].tolist(), lengths[finite.to(lengths.device)].tolist()
        ),
        "samples": [
            {"prompt": p, "response": t, "reward": s}
            for p, t, s in zip(batch.prompts, batch.texts, scores.tolist(), strict=True)
        ][:SAMPLES_KEPT],
    }


def _rewards(
    rewards: SampleRewards, prompts: list[str], responses: list[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    try:
        return rewards(prompts, responses)
    except VerifierFailed as exc:
        raise JobError(str(exc)) from None


def _ptx(ctx: JobContext, policy: Policy, seed: int):
    try:
        return ptx_source(ctx.db, ctx.settings, policy.tokenizer, seed)
    except PtxUnavailable as exc:
        raise JobError(str(exc)) from None


def _sample_rewards(
    db: sqlite_utils.Database, settings: Settings, device: str
) -> tuple[dict[str, Any] | None, SampleRewards]:
    """The reward model's registry row (None when the round uses functions only) and the
    scorer of samples; refuses a round with nothing to reward or a bad function setting."""
    try:
        functions = reward_functions(settings)
    except ConfigError as exc:
        raise JobError(str(exc)) from None
    row = None
    model = None
    if settings.reward_model_weight > 0:
        row = latest_version(db, "reward")
        if row is None:
            raise JobError(
                "no reward model yet: train one before a PPO round, or name reward_functions "
                "and set reward_model_weight = 0 to train on them alone"
            )
        try:
            model = load_reward_model(row["path"], device, settings.dtype)
        except ModelLoadError as exc:
            raise JobError(f"reward model v{row['version']}: {exc}") from None
    elif not functions:
        raise JobError("reward_model_weight = 0 and no reward_functions: nothing to reward")
    return row, SampleRewards(
        model, settings.reward_model_weight, functions, settings.reward_max_length
    )


def run_ppo_round(ctx: JobContext, world: World | None = None) -> dict[str, Any]:
    """One round; under ``accelerate launch`` / ``torchrun`` each process runs this with its
    ``world`` and only rank 0 evaluates, reports and saves."""
    world = world or World()
    settings, db = ctx.settings, ctx.db
    device = world.device(settings.device)
    report = ctx.progress if world.is_main else (lambda fraction, message: None)
    reward_row, rewards = _sample_rewards(db, settings, device)
    train_prompts, eval_prompts = split_prompts(db, settings)
    if not train_prompts:
        raise JobError("no prompts to train on: import some on the Data page")
    batch_prompts = min(settings.ppo_batch_prompts, len(train_prompts))
    if batch_prompts < world.size:
        raise JobError(
            f"a batch of {batch_prompts} prompt(s) cannot be split over {world.size} processes: "
            "raise ppo_batch_prompts (or import prompts), or launch fewer processes"
        )
    live = live_policy(db, settings.model)
    report(0.0, f"loading policy v{live['version']}")
    policy = load_live_policy(ctx, live, device)
    config = sample_config(settings)
    seed = ctx.job.id

    def held_out(label: str) -> dict[str, Any]:
        if not (world.is_main and eval_prompts):
            return {"mean_reward": None, "kl": None, "samples": []}
        report(
            0.0 if label == "live" else 1.0, f"evaluating the {label} policy on held-out prompts"
        )
        return evaluate_policy(policy, rewards, eval_prompts, config, seed)

    before = held_out("live")
    kl_control = (
        AdaptiveKL(settings.ppo_kl_coef, settings.ppo_kl_target, KL_HORIZON)
        if settings.ppo_kl_target > 0
        else FixedKL(settings.ppo_kl_coef)
    )
    state = Optimisation(
        torch.optim.AdamW(
            policy.optimiser_groups(settings.ppo_lr, settings.ppo_norm_lr),
            lr=settings.ppo_lr,
            weight_decay=0.0,
        ),
        kl_control,
        RunningMoments(),
        torch.Generator(device=policy.device).manual_seed(seed * 1000 + world.rank),
        world,
        _ptx(ctx, policy, seed * 1000 + world.rank),
    )
    rng = random.Random(seed)  # the same draw on every process, which rolls out its share
    # the trainable weights before the last update, and before this one: when a rollout shows
    # the KL budget passed, the weights that produced it are over it, so the round keeps the
    # ones before them
    last_good = current = _trainable_state(policy)
    stopped = None
    for step in range(1, settings.ppo_steps + 1):
        prompts = world.share(rng.sample(train_prompts, batch_prompts))
        batch = rollout(policy, prompts, settings.ppo_samples_per_prompt, config, state.generator)
        scores, function_means = _rewards(rewards, batch.prompts, batch.texts)
        try:
            keep = usable(scores)
        except UnscorableBatch as exc:
            raise JobError(f"reward model v{reward_row['version']}: {exc}") from None
        if not keep.all():
            batch, scores = batch.select(keep), scores[keep]
        stats = ppo_step(policy, batch, scores, state, hyper(settings))
        if stats.get("over_kl_budget"):
            stopped = _stop_at_budget(ctx, policy, last_good, step, stats["kl"], live)
            break
        last_good, current = current, _trainable_state(policy)
        stats["unscorable"] = float((~keep).sum())
        stats |= {FUNCTION_METRIC + name: mean for name, mean in function_means.items()}
        if world.is_main:
            ctx.metrics(step, stats)
        report(
            step / settings.ppo_steps,
            f"step {step}/{settings.ppo_steps}: reward {stats['reward']:.3f}, KL {stats['kl']:.3f}",
        )
    if not world.is_main:
        world.barrier()  # rank 0 saves; the others' replicas are identical
        return {}
    after = held_out("new")
    result = _publish(ctx, policy, live, reward_row, len(eval_prompts), before, after, stopped)
    world.barrier()
    return result


def _publish(
    ctx: JobContext,
    policy: Policy,
    live: dict[str, Any],
    reward_row: dict[str, Any] | None,
    eval_count: int,
    before: dict[str, Any],
    after: dict[str, Any],
    stopped: dict[str, Any] | None,
) -> dict[str, Any]:
    """The round's figures, published as the next version (``ppo.publish``)."""
    settings = ctx.settings
    metrics = {
        "parent_version": live["version"],
        "reward_version": None if reward_row is None else reward_row["version"],
        "reward_functions": settings.reward_functions or None,
        "reward_model_weight": settings.reward_model_weight,
        "functions_before": before.get("functions"),
        "functions_after": after.get("functions"),
        "eval_prompts": eval_count,
        "reward_before": before["mean_reward"],
        "reward_after": after["mean_reward"],
        "kl_before": before["kl"],
        "kl_after": after["kl"],
        "length_after": after.get("response_length"),
        "repeated_ngrams_after": after.get("repeated_ngrams"),
        "length_correlation_after": after.get("length_correlation"),
        "stopped_early": stopped,
    }
    samples = (before["samples"], after["samples"])
    return publish_policy(ctx, policy, live, "ppo", metrics, samples)


def _trainable_state(policy: Policy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in policy.trainable_parameters()]


def _stop_at_budget(
    ctx: JobContext,
    policy: Policy,
    last_good: list[torch.Tensor],
    step: int,
    kl: float,
    live: dict[str, Any],
) -> dict[str, Any]:
    """Put back the weights from before the update that passed the KL budget, and say so."""
    budget = ctx.settings.ppo_kl_budget
    if step == 1:
        raise JobError(
            f"the live policy v{live['version']} is already {kl:.2f} nats per response from the "
            f"reference, past ppo_kl_budget = {budget}: nothing was trained. Roll back to an "
            "earlier version, or raise the budget if that drift is wanted"
        )
    with torch.no_grad():
        for param, kept in zip(policy.trainable_parameters(), last_good, strict=True):
            param.copy_(kept)
    ctx.progress(step / ctx.settings.ppo_steps, f"stopped at step {step}: KL {kl:.2f} > {budget}")
    return {"step": step, "kl": kl, "budget": budget, "updates_kept": step - 2}
