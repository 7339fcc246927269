"""Training and evaluating a reward model on whole rankings.

One optimiser step takes a batch of rankings, runs ONE forward pass over all their responses
(K per ranking, not 2 per pair as pair-based trainers do) and scores every pair of each ranking
at once: Davidson's tie-aware likelihood by default, the prompt-aware utility when asked.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_loop.arena.accuracy import accuracy_interval, enough_evidence
from rlhf_loop.reward.data import RankingBatch, RankingExample, collate
from rlhf_loop.reward.likelihood import LikelihoodReward
from rlhf_loop.reward.losses import (
    OPENNESS_LABELS,
    PerRankingLoss,
    openness_to_utility,
    pairwise_accuracy,
    prompt_aware_loss,
    ranking_nll,
    three_way_accuracy,
    tie_margin_from_nu,
)
from rlhf_loop.reward.model import flat_rewards
from rlhf_loop.reward.shared_prefix import shares_prefixes

StepCallback = Callable[[int, int, dict[str, float]], None]
UNLABELLED_OPENNESS = 0.5  # no label: the log utility, halfway, close to Bradley-Terry


@dataclass(frozen=True)
class RewardTrainConfig:
    epochs: int = 4
    lr: float = 3e-4
    batch_rankings: int = 8
    max_length: int = 256
    learn_ties: bool = True
    prompt_aware: bool = False
    seed: int = 0
    # Read each ranking's prompt once for its K responses (``shared_prefix``; same rewards).
    share_prompts: bool = True


@dataclass
class TrainOutcome:
    log_nu: float | None
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def _utilities(batch: list[RankingExample]) -> tuple[list[str], list[float]]:
    # Lower-cased here too: rows imported before labels were normalised may say "Open".
    labels = [(e.prompt_label or "").strip().lower() for e in batch]
    pairs = [
        openness_to_utility(label if label in OPENNESS_LABELS else UNLABELLED_OPENNESS)
        for label in labels
    ]
    return [k for k, _ in pairs], [g for _, g in pairs]


def _collate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[RankingExample],
    config: RewardTrainConfig,
) -> RankingBatch:
    packed = config.share_prompts and shares_prefixes(model)
    end_id = model.end_id if isinstance(model, LikelihoodReward) else None
    return collate(batch, tokenizer, config.max_length, packed, end_id)


def batch_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[RankingExample],
    config: RewardTrainConfig,
    log_nu: torch.Tensor | None,
) -> PerRankingLoss:
    # step 1: one forward pass over every response of every ranking in the batch
    ranked = _collate(model, tokenizer, batch, config)
    scores = ranked.reward_grid(flat_rewards(model, ranked.inputs))
    ranks = ranked.rank_grid.to(scores.device)
    # step 2: all C(K,2) pairs of each ranking in one loss term
    if config.prompt_aware:
        kinds, gammas = _utilities(batch)
        return prompt_aware_loss(scores, ranks, kinds, gammas)
    return ranking_nll(scores, ranks, log_nu)


def train_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: list[RankingExample],
    config: RewardTrainConfig,
    on_step: StepCallback | None = None,
    start_log_nu: float | None = None,
) -> TrainOutcome:
    """Optimise the model (and Davidson's ν, if learnt, from ``start_log_nu``: a model trained
    further keeps its own) on ``train``; returns ν and the curve."""
    device = next(model.parameters()).device
    log_nu = (
        # ν = 1 by default: P(tie | equal) = 1/3
        torch.nn.Parameter(torch.tensor(start_log_nu or 0.0, device=device))
        if config.learn_ties and not config.prompt_aware
        else None
    )
    groups = (
        model.optimiser_groups(config.lr)
        if isinstance(model, LikelihoodReward)
        else [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
    )
    groups += [{"params": [log_nu], "lr": config.lr}] if log_nu is not None else []
    params = [p for group in groups for p in group["params"]]
    optimiser = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.0)
    rng = random.Random(config.seed)
    per_epoch = math.ceil(len(train) / config.batch_rankings)
    total = per_epoch * config.epochs
    outcome = TrainOutcome(log_nu=None, steps=total)
    model.train()
    step = 0
    for _ in range(config.epochs):
        order = train[:]
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_rankings):
            loss = batch_loss(
                model, tokenizer, order[start : start + config.batch_rankings], config, log_nu
            ).batch_mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            step += 1
            point = {"loss": loss.item()}
            if isinstance(model, LikelihoodReward):
                point["likelihood_weight"] = model.lm_weight.item()
            if log_nu is not None:
                point["nu"] = math.exp(log_nu.item())
            outcome.history.append(point)
            if on_step:
                on_step(step, total, point)
    model.eval()
    outcome.log_nu = None if log_nu is None else log_nu.item()
    return outcome


@torch.inference_mode()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[RankingExample],
    log_nu: float | None,
    config: RewardTrainConfig,
) -> dict[str, float | None]:
    """Held-out pairwise accuracy (ties excluded) with its bootstrap interval over held-out
    rankings, 3-way accuracy (ties as a class), and NLL."""
    model.eval()
    margin = tie_margin_from_nu(log_nu)
    correct = total = correct3 = total3 = nll_sum = nll_count = 0.0
    per_ranking: list[tuple[float, int]] = []
    for start in range(0, len(examples), config.batch_rankings):
        batch = examples[start : start + config.batch_rankings]
        ranked = _collate(model, tokenizer, batch, config)
        rewards = ranked.reward_grid(flat_rewards(model, ranked.inputs)).cpu()
        per_ranking += [
            (c.item(), int(t.item()))
            for c, t in (
                pairwise_accuracy(rewards[i : i + 1], ranked.rank_grid[i : i + 1])
                for i in range(len(batch))
            )
        ]
        c, t = pairwise_accuracy(rewards, ranked.rank_grid)
        c3, t3 = three_way_accuracy(rewards, ranked.rank_grid, margin)
        per = ranking_nll(rewards, ranked.rank_grid, log_nu)
        correct, total = correct + c.item(), total + t.item()
        correct3, total3 = correct3 + c3.item(), total3 + t3.item()
        nll_sum += (per.loss * per.has_pairs).sum().item()
        nll_count += per.has_pairs.sum().item()
    evidence = accuracy_interval(per_ranking)
    return {  # None where the held-out set has nothing to measure
        "heldout_rankings": len(examples),
        "heldout_pairs": int(total),
        "pairwise_accuracy": correct / total if total else None,
        "accuracy_interval": None if evidence.interval is None else list(evidence.interval),
        "accuracy_lower_bound": evidence.lower_bound,
        "accuracy_evidence_enough": enough_evidence(evidence),
        "three_way_accuracy": correct3 / total3 if total3 else None,
        "heldout_nll": nll_sum / nll_count if nll_count else None,
        "tie_margin": margin,
    }
