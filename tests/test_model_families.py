"""The whole loop on Llama- and Qwen2-family chat models, in float32 and in bfloat16 (the GPU's
default dtype, which torch also runs on a CPU): queue sampling through the chat template, a
reward retrain with the family's sequence-classification head and pad id, a PPO round, and the
merged export reloaded with plain transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from chat_models import build_chat_model
from job_helpers import job_context
from store_helpers import add_texts, fresh_db
from transformers import AutoModelForCausalLM

from rlhf_loop.model.demo_corpus import demo_examples
from rlhf_loop.model.prompting import format_prompt
from rlhf_loop.ppo import round as ppo_round
from rlhf_loop.ppo.policy import forward, load_policy, merged_model
from rlhf_loop.ppo.scoring import score
from rlhf_loop.reward.job import run_train_reward
from rlhf_loop.reward.model import load_reward_model
from rlhf_loop.sampler import LivePolicy, SamplingParams, sample_responses
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator, annotate
from rlhf_loop.store import jobs
from rlhf_loop.store.generations import add_comparisons
from rlhf_loop.store.versions import latest_version, live_policy

TURN_START = {"llama": "<|start_header_id|>user<|end_header_id|>", "qwen2": "<|im_start|>user"}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def family_model(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, build_chat_model(family, tmp_path_factory.mktemp(family))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_whole_loop_on_a_chat_model(family_model, dtype: str, tmp_path: Path) -> None:
    family, model_dir = family_model
    model_name = str(model_dir)
    db = fresh_db(tmp_path)
    prompts = sorted({p for p, _ in demo_examples(200, seed=1)})[:24]
    add_texts(db, prompts)
    ctx = job_context(db, tmp_path, model_dir, "train_reward", model=model_name, dtype=dtype)
    settings = ctx.settings

    # queue sampling: the live policy (the bare base) through the family's chat template
    sampler = LivePolicy(model_name, "cpu", dtype)
    model, tokenizer, version = sampler.current(live_policy(db, model_name))
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    assert TURN_START[family] in format_prompt(tokenizer, prompts[0])
    params = SamplingParams.from_settings(settings)
    samples = sample_responses(model, tokenizer, prompts, params)
    ids = [r["id"] for r in db["prompts"].rows_where(order_by="id")]
    add_comparisons(db, version, ids, samples, params.record(model_name))
    annotate(db, "oracle", SimulatedAnnotator(LengthOracle(target_words=5), seed=0), len(ids))

    # a reward retrain on the same backbone, with its scalar head and pad id
    reward = run_train_reward(ctx)
    assert reward["version"] == 1 and torch.isfinite(torch.tensor(reward["final_loss"]))
    reward_model, reward_tokenizer, meta = load_reward_model(
        latest_version(db, "reward")["path"], "cpu", dtype
    )
    assert reward_model.config.pad_token_id == reward_tokenizer.pad_token_id is not None
    assert reward_model.score.weight.dtype == torch.float32
    # the head reads the last real token whatever the padding: scored alone or beside a
    # longer response, a response gets the same reward
    short, long = "Yes.", "It is a long answer with many words in it, " * 3
    alone = score(reward_model, reward_tokenizer, meta, [prompts[0]], [short], 128)
    padded = score(reward_model, reward_tokenizer, meta, [prompts[0]] * 2, [short, long], 128)
    assert torch.allclose(alone[0], padded[0], atol=1e-2 if dtype == "bfloat16" else 1e-5)

    # a PPO round: finite losses, a new live version
    ppo_ctx = job_context(db, tmp_path, model_dir, "ppo_round", model=model_name, dtype=dtype)
    result = ppo_round.run_ppo_round(ppo_ctx)
    live = live_policy(db, model_name)
    assert live["version"] == result["version"] and Path(live["path"]).is_dir()
    logged = jobs.job_metrics(db, ppo_ctx.job.id)
    assert logged and all(torch.isfinite(torch.tensor(m["value"])) for m in logged)

    # the merged export loads with plain transformers and is the policy it came from
    merged = AutoModelForCausalLM.from_pretrained(
        merged_model(model_name, live["path"], tmp_path / "merged"), dtype=torch.float32
    )
    policy = load_policy(model_name, live["path"], "cpu", dtype="float32")
    batch = policy.tokenizer([format_prompt(policy.tokenizer, prompts[1])], return_tensors="pt")
    theirs = merged(**batch).logits
    ours, _ = forward(policy, batch["input_ids"], batch["attention_mask"], with_values=False)
    assert torch.allclose(theirs, ours, atol=1e-4)
