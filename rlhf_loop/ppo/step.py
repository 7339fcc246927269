"""One PPO step on one rollout batch: score -> token rewards -> GAE -> clipped updates.

The math lives in ``rlhf_loop.ppo.math``; this module only wires the policy's tensors through it,
in TRL's order, and gathers the statistics an operator plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlhf_loop.ppo.distributed import World
from rlhf_loop.ppo.math import (
    AdaptiveKL,
    FixedKL,
    RunningMoments,
    ema_update,
    gae,
    kl_per_token,
    masked_mean,
    masked_whiten,
    minibatch_indices,
    normalise_scores,
    policy_loss,
    token_rewards,
    value_loss,
)
from rlhf_loop.ppo.packing import reference_logprobs, response_outputs
from rlhf_loop.ppo.policy import REFERENCE, Policy, forward
from rlhf_loop.ppo.ptx import PtxSource
from rlhf_loop.ppo.rollout import Rollout
from rlhf_loop.sft.loss import mean_response_nll


@dataclass(frozen=True)
class PPOHyper:
    epochs: int = 2
    minibatch: int = 16
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    missing_eos_penalty: float = 1.0
    ema_reference: float = 0.0  # 0: frozen base reference
    kl_budget: float = 0.0  # nats per response; a batch whose KL passes it is not trained on
    max_grad_norm: float = 1.0
    ptx_coef: float = 0.0  # weight of the supervised loss mixed into each update (PPO-ptx)


@dataclass
class Optimisation:
    """What persists across the steps of a round."""

    optimiser: torch.optim.Optimizer
    kl_control: FixedKL | AdaptiveKL
    moments: RunningMoments
    generator: torch.Generator
    world: World = field(default_factory=World)
    ptx: PtxSource | None = None  # what PPO-ptx mixes in; None: plain PPO


def old_outputs(policy: Policy, batch: Rollout) -> tuple[torch.Tensor, ...]:
    """Log-probs and values of the rollout under the policy as it was, and under the reference.

    Log-probs are taken at the rollout's sampling temperature (as TRL does), so the first ratio
    is 1 and the KL compares the distributions the samples came from. Top-k / top-p truncation
    is not applied: the updated policy's nucleus differs from the sampler's, and a token outside
    it would get probability 0 and an undefined ratio (TRL and OpenRLHF make the same choice);
    ``ppo_step`` reports the gap to the sampler's truncated log-probs.

    Where the rollout kept the policy's log-probs and values from its decode (no dropout, a
    float32 base) they are used as they are, sparing a forward pass over the batch; the
    reference's always takes one.
    """
    with torch.no_grad():
        if batch.policy_logprobs is not None and batch.values is not None:
            old_logp = batch.policy_logprobs.to(policy.device)
            old_values = batch.values.to(policy.device)
        else:
            outputs = response_outputs(policy, batch, None, with_values=True)
            old_logp, old_values = outputs.logprobs, outputs.values
        ref_logp = reference_logprobs(policy, batch)
    return old_logp, old_values, ref_logp


def ppo_step(
    policy: Policy, batch: Rollout, scores: torch.Tensor, state: Optimisation, hyper: PPOHyper
) -> dict[str, float]:
    device = policy.device
    mask = batch.response_mask.to(device)
    # step 1: the rollout's log-probs and values before any update, and the reference's
    old_logp, old_values, ref_logp = old_outputs(policy, batch)
    # step 2: per-token KL to the reference, penalised in the reward at every token; a policy
    # already past the KL budget is not moved further (the round stops, see ppo.round)
    kl = kl_per_token(old_logp, ref_logp, "k1")
    sequence_kl = state.world.mean({"kl": (kl * mask).sum(-1).mean().item()})["kl"]
    if hyper.kl_budget and sequence_kl > hyper.kl_budget:
        return {"kl": sequence_kl, "over_kl_budget": 1.0}
    # step 3: the sequence score (scaled by the running spread of every process's scores)
    # added at the last token
    everyone, mine = state.world.gather(scores.to(device))
    normalised = normalise_scores(everyone, state.moments)[mine : mine + len(scores)]
    rewards = token_rewards(
        normalised,
        kl,
        mask,
        state.kl_control.value,
        eos_found=batch.eos_found.to(device),
        missing_eos_penalty=hyper.missing_eos_penalty,
    )
    # step 4: advantages by GAE, whitened over the whole batch (not per minibatch)
    advantages, returns = gae(rewards, old_values, mask, hyper.gamma, hyper.lam)
    advantages = masked_whiten(advantages, mask)
    # step 5: several epochs of clipped policy and value updates on shuffled minibatches. Every
    # process steps as often as the one with the most minibatches, since gradients are averaged
    # at each step and batches can differ (an uneven split of the prompts, unscorable rows out).
    steps = state.world.most(math.ceil(len(scores) / hyper.minibatch))
    stats: dict[str, list[float]] = {}
    for _ in range(hyper.epochs):
        minibatches = minibatch_indices(
            len(scores), hyper.minibatch, state.generator, batch.prompt_index()
        )
        for idx in minibatches:
            minibatch_stats = _update(
                policy, batch, idx, old_logp, old_values, advantages, returns, state, hyper
            )
            for name, value in minibatch_stats.items():
                stats.setdefault(name, []).append(value)
        for _ in range(steps - len(minibatches)):  # out of data: join the others' steps
            state.optimiser.zero_grad(set_to_none=True)
            _averaged_step(state, hyper)
    # step 6: the KL controller sees the batch's KL (all processes'); an EMA reference trails
    state.kl_control.update(sequence_kl, len(everyone))
    if hyper.ema_reference:
        ema_update(
            policy.adapter_parameters(REFERENCE),
            policy.adapter_parameters("default"),
            hyper.ema_reference,
        )
    sampler_gap = masked_mean(batch.sample_logprobs.to(device) - old_logp, mask)
    local = {name: sum(v) / len(v) for name, v in stats.items()} | {
        # log nucleus mass the truncation kept (0 untruncated): how far top-k/top-p sampling
        # sits from the distribution PPO optimises
        "sampler_logp_gap": sampler_gap.item(),
        "reward": scores.mean().item(),
        "response_length": mask.sum(-1).float().mean().item(),
        "ended": batch.eos_found.float().mean().item(),
    }
    return state.world.mean(local) | {
        "kl": sequence_kl,
        "kl_coef": state.kl_control.value,
        "sequences": float(len(everyone)),  # optimised this step, all processes together
    }


def _update(
    policy: Policy,
    batch: Rollout,
    idx: torch.Tensor,
    old_logp: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    state: Optimisation,
    hyper: PPOHyper,
) -> dict[str, float]:
    mask = batch.response_mask[idx].to(policy.device)
    outputs = response_outputs(policy, batch, idx, with_values=True, with_entropy=True)
    new_logp, new_values = outputs.logprobs, outputs.values
    pg_loss, pg_stats = policy_loss(new_logp, old_logp[idx], advantages[idx], mask, hyper.clip)
    vf_loss, vf_stats = value_loss(
        new_values, old_values[idx], returns[idx], mask, hyper.clip_value
    )
    loss = pg_loss + hyper.vf_coef * vf_loss
    ptx_stats = {}
    if state.ptx is not None and hyper.ptx_coef:
        # PPO-ptx: the supervised loss on a fresh draw of demonstrations, same backward pass
        ptx = state.ptx.next(policy.device)
        ptx_logits, _ = forward(policy, ptx["input_ids"], ptx["attention_mask"], False)
        ptx_loss = mean_response_nll(ptx_logits, ptx["input_ids"], ptx["response_mask"])
        loss = loss + hyper.ptx_coef * ptx_loss
        ptx_stats = {"ptx_loss": ptx_loss.item()}
    state.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    _averaged_step(state, hyper)
    entropy = masked_mean(outputs.entropy, mask)
    return ptx_stats | {
        "policy_loss": pg_loss.item(),
        "value_loss": vf_loss.item(),
        "entropy": entropy.item(),
        "clip_frac": pg_stats["clip_frac"].item(),
        "approx_kl": pg_stats["approx_kl"].item(),
        "value_clip_frac": vf_stats["value_clip_frac"].item(),
    }


def _averaged_step(state: Optimisation, hyper: PPOHyper) -> None:
    """Average the gradients over the processes, clip and step: every replica takes the same
    step and they stay identical."""
    params = [p for group in state.optimiser.param_groups for p in group["params"]]
    state.world.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, hyper.max_grad_norm)
    state.optimiser.step()
