"""PPO-ptx: the supervised loss on demonstrations mixed into every PPO update keeps what people
demonstrated while the reward pulls elsewhere; and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from job_helpers import job_context
from store_helpers import fresh_db

from rlhf_loop.demonstration_import import parse_demonstration_file
from rlhf_loop.job_runner import JobError
from rlhf_loop.model.demo_corpus import ARITHMETIC, demo_prompts
from rlhf_loop.ppo import round as ppo_round
from rlhf_loop.ppo.ptx import training_demonstrations
from rlhf_loop.sampler import LivePolicy
from rlhf_loop.sft.evaluate import demonstration_nll
from rlhf_loop.simulate import parse_arithmetic
from rlhf_loop.store import jobs
from rlhf_loop.store.demonstrations import add_imported
from rlhf_loop.store.versions import live_policy

# The reward: answers of one word at most (the demonstrations have four), so PPO alone moves
# the policy away from them.
SHORT = {
    "reward_functions": "rlhf_loop.verifiers:length_budget",
    "verifier_max_words": 1,
    "reward_model_weight": 0.0,
    "ppo_steps": 6,
    "ppo_lr": 3e-3,
    "ppo_kl_coef": 0.0,
    "ppo_kl_budget": 0.0,  # no early stop: the drift is what is measured
}


def _with_demonstrations(tmp_path: Path):
    db = fresh_db(tmp_path)
    lines = []
    for prompt in demo_prompts(60, kinds=(ARITHMETIC,)):
        a, op, b, result = parse_arithmetic(prompt)
        lines.append(json.dumps({"prompt": prompt, "response": f"{a} {op} {b} is {result}."}))
    add_imported(db, parse_demonstration_file("d.jsonl", "\n".join(lines).encode(), 2000), "d")
    return db


def _nll_after_round(tmp_path: Path, model_path: Path, **overrides) -> tuple[float, float, dict]:
    db = _with_demonstrations(tmp_path)
    ctx = job_context(db, tmp_path, model_path, "ppo_round", **(SHORT | overrides))
    prompts, answers = training_demonstrations(db, 0.0)  # all of them, held-out ones too
    policy = LivePolicy(str(model_path), "cpu")

    def nll() -> float:
        model, tokenizer, _ = policy.current(live_policy(db, "demo"))
        return demonstration_nll(model, tokenizer, prompts, answers, 64)

    before = nll()
    torch.manual_seed(0)
    ppo_round.run_ppo_round(ctx)
    logged = {(m["name"], m["step"]) for m in jobs.job_metrics(db, ctx.job.id)}
    return before, nll(), {"logged": logged}


def test_ptx_keeps_the_demonstrations_where_the_reward_alone_forgets_them(
    tmp_path: Path, demo_model_path: Path
) -> None:
    before, plain, _ = _nll_after_round(tmp_path / "plain", demo_model_path)
    same, mixed, seen = _nll_after_round(tmp_path / "ptx", demo_model_path, ppo_ptx_coef=1.0)
    assert same == pytest.approx(before)
    print(f"NLL per token: before {before:.3f}, PPO {plain:.3f}, PPO-ptx {mixed:.3f}")
    # measured: 1.07 before, 1.96 after PPO alone, 0.63 after PPO-ptx (it trains on most of them)
    assert plain > before + 0.1  # the reward alone moved the policy off the demonstrations
    assert mixed < before + 0.05  # with ptx, within 0.05 nats per token of where it was
    assert ("ptx_loss", 1) in seen["logged"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ppo_ptx_coef": 1.0}, "no demonstrations on training prompts"),
        ({"ppo_ptx_coef": 1.0, "ppo_ptx_file": "/nonexistent/ptx.txt"}, "ppo_ptx_file"),
    ],
)
def test_ptx_without_anything_to_mix_in_refuses_the_round(
    tmp_path: Path, demo_model_path: Path, overrides: dict, message: str
) -> None:
    db = fresh_db(tmp_path)
    from store_helpers import add_texts

    add_texts(db, demo_prompts(20, kinds=(ARITHMETIC,)))
    with pytest.raises(JobError, match=message):
        ppo_round.run_ppo_round(
            job_context(db, tmp_path, demo_model_path, "ppo_round", **(SHORT | overrides))
        )


def test_ptx_from_a_text_file_trains_on_its_lines(tmp_path: Path, demo_model_path: Path) -> None:
    db = fresh_db(tmp_path)
    from store_helpers import add_texts

    add_texts(db, demo_prompts(20, kinds=(ARITHMETIC,)))
    text = tmp_path / "ptx.txt"
    text.write_text("The cat sat on the mat.\n\nTea is a drink.\n", encoding="utf-8")
    ctx = job_context(
        db,
        tmp_path,
        demo_model_path,
        "ppo_round",
        **(SHORT | {"ppo_ptx_coef": 0.5, "ppo_ptx_file": str(text)}),
    )
    ppo_round.run_ppo_round(ctx)
    losses = [m["value"] for m in jobs.job_metrics(db, ctx.job.id) if m["name"] == "ptx_loss"]
    assert len(losses) == ctx.settings.ppo_steps and all(loss > 0 for loss in losses)
