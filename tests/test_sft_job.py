"""The SFT round job on the demo model: oracle demonstrations on demo arithmetic prompts lower
the held-out demonstrations' NLL, the new version is served and can be rolled back, the bad
inputs are refused with what to do, and the worker starts a round every sft_retrain_every new
demonstrations (and not again after one failed on the same ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from job_helpers import Progress, job_context
from store_helpers import fresh_db

from rlhf_loop.config import Settings
from rlhf_loop.job_runner import JobError
from rlhf_loop.model.demo_corpus import ARITHMETIC, demo_prompts
from rlhf_loop.ppo.round import run_ppo_round
from rlhf_loop.reward.data import is_held_out
from rlhf_loop.sampler import LivePolicy
from rlhf_loop.sft import data as sft_data
from rlhf_loop.sft import job as sft_job
from rlhf_loop.simulate_demonstrations import add_oracle_demonstrations
from rlhf_loop.store import jobs
from rlhf_loop.store.versions import list_versions, live_policy, set_live_policy
from rlhf_loop.worker import _run_one_job

SMALL = {"sft_epochs": 3, "sft_batch": 8, "sft_lr": 1e-3}


def _arithmetic(n: int, seed: int = 0) -> list[str]:
    return demo_prompts(n, seed=seed, kinds=(ARITHMETIC,))


class Beat(Progress):
    """The worker's heartbeat as ``worker._run_one_job`` uses it."""

    holder, job_id = "test", None


def _worker_settings(db, tmp_path: Path, model_path: Path, **overrides) -> Settings:
    """The tests' small settings, with no job queued: only what the worker queues runs."""
    settings = job_context(db, tmp_path, model_path, "none", **overrides).settings
    db["jobs"].delete_where()
    return settings


def _worker_pass(db, settings: Settings, model_path: Path) -> bool:
    return _run_one_job(db, settings, Beat(), str(model_path))


def test_a_round_lowers_held_out_nll_and_its_version_is_served_then_rolled_back(
    tmp_path: Path, demo_model_path: Path
) -> None:
    torch.manual_seed(0)
    db = fresh_db(tmp_path)
    prompts = _arithmetic(30)
    add_oracle_demonstrations(db, prompts)
    held = [p for p in prompts if is_held_out(p, 0.15)]
    assert 0 < len(held) < len(prompts)  # both sides of the split are exercised
    base = live_policy(db, "demo")
    ctx = job_context(db, tmp_path, demo_model_path, "sft_round", **SMALL)
    result = sft_job.run_sft_round(ctx)

    assert result["train_demonstrations"] == len(prompts) - len(held)
    assert result["heldout_demonstrations"] == len(held)
    assert result["nll_after"] < result["nll_before"]
    live = live_policy(db, "demo")
    assert live["version"] == result["version"] > base["version"]
    assert live["metrics"]["trained_by"] == "sft"
    assert live["metrics"]["parent_version"] == base["version"]
    assert live["metrics"]["nll_after"] == result["nll_after"]
    assert db["jobs"].get(ctx.job.id)["status"] == "done"  # ended with its registration

    losses = [m["value"] for m in jobs.job_metrics(db, ctx.job.id) if m["name"] == "sft_loss"]
    assert len(losses) == result["steps"] == 3 * 4  # 3 epochs of ceil(train / 8) steps
    assert sum(losses[-3:]) < sum(losses[:3])  # the loss falls over the round
    steps = [status for status, _ in ctx.reporter.reports if status.startswith("step ")]
    assert len(steps) == result["steps"]

    sampler = LivePolicy(str(demo_model_path), "cpu")
    assert sampler.current(live)[2] == result["version"]  # the sampler switches to it
    set_live_policy(db, base["version"])  # roll back
    assert live_policy(db, "demo")["version"] == base["version"]
    assert sampler.current(live_policy(db, "demo"))[2] == base["version"]


def test_a_ppo_round_after_sft_continues_its_version_and_says_it_is_ppo(
    trained, tmp_path: Path, demo_model_path: Path
) -> None:
    add_oracle_demonstrations(trained, _arithmetic(12))
    sft = sft_job.run_sft_round(job_context(trained, tmp_path, demo_model_path, "sft_round"))
    ppo = run_ppo_round(job_context(trained, tmp_path, demo_model_path, "ppo_round"))
    assert (ppo["trained_by"], ppo["parent_version"]) == ("ppo", sft["version"])
    by = {v["version"]: v["metrics"].get("trained_by") for v in list_versions(trained, "policy")}
    assert by[sft["version"]] == "sft" and by[ppo["version"]] == "ppo"


def test_under_human_adoption_a_round_makes_a_candidate(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    add_oracle_demonstrations(db, _arithmetic(10))
    base = live_policy(db, "demo")["version"]
    ctx = job_context(db, tmp_path, demo_model_path, "sft_round", policy_adoption="human")
    result = sft_job.run_sft_round(ctx)
    assert result["adoption"] == "candidate"
    assert live_policy(db, "demo")["version"] == base


def test_no_demonstrations_is_refused_with_how_to_add_some(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    ctx = job_context(db, tmp_path, demo_model_path, "sft_round")
    with pytest.raises(JobError, match="no demonstrations to train on: write some on the Rank"):
        sft_job.run_sft_round(ctx)
    assert len(list_versions(db, "policy")) == 0  # refused before loading anything


def test_only_held_out_demonstrations_is_refused(
    tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = fresh_db(tmp_path)
    add_oracle_demonstrations(db, _arithmetic(5))
    monkeypatch.setattr(sft_data, "is_held_out", lambda prompt, fraction: True)
    ctx = job_context(db, tmp_path, demo_model_path, "sft_round")
    with pytest.raises(JobError, match=r"all 5 demonstration\(s\) are on held-out prompts"):
        sft_job.run_sft_round(ctx)


def test_the_worker_starts_a_round_every_sft_retrain_every_demonstrations(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = fresh_db(tmp_path)
    prompts = _arithmetic(16)
    settings = _worker_settings(db, tmp_path, demo_model_path, sft_retrain_every=8)

    def worker_pass() -> bool:
        return _worker_pass(db, settings, demo_model_path)

    add_oracle_demonstrations(db, prompts[:7])
    assert sft_job.sft_due(db, settings) is None and not worker_pass()  # 7 < 8
    add_oracle_demonstrations(db, prompts[7:8])
    assert worker_pass()  # the 8th queued a round and the worker ran it
    [first] = list_versions(db, "policy")[:1]
    assert first["metrics"]["trained_by"] == "sft"
    assert first["metrics"]["demonstrations_used"] == 8
    assert not worker_pass()  # counted from that version now
    add_oracle_demonstrations(db, prompts[8:16])
    assert sft_job.sft_due(db, settings) == {"reason": "new demonstrations", "count": 16}
    assert sft_job.sft_due(db, settings.replace(sft_retrain_every=0)) is None  # 0 = never


def test_a_failed_automatic_round_is_not_queued_again_on_the_same_demonstrations(
    tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = fresh_db(tmp_path)
    prompts = _arithmetic(4)
    add_oracle_demonstrations(db, prompts[:3])
    settings = _worker_settings(db, tmp_path, demo_model_path, sft_retrain_every=3)
    monkeypatch.setattr(sft_data, "is_held_out", lambda prompt, fraction: True)
    assert _worker_pass(db, settings, demo_model_path)
    [failed] = db["jobs"].rows
    assert failed["status"] == "failed" and "held-out prompts" in failed["error"]
    assert sft_job.sft_due(db, settings) is None
    add_oracle_demonstrations(db, prompts[3:])  # new data: due again
    assert sft_job.sft_due(db, settings) == {"reason": "new demonstrations", "count": 4}


def test_the_training_page_shows_an_sft_round_and_queues_one(
    data_dir: Path, demo_model_path: Path
) -> None:
    from app_helpers import operator_page

    db = fresh_db(data_dir)
    add_oracle_demonstrations(db, _arithmetic(30))
    ctx = job_context(db, data_dir, demo_model_path, "sft_round", **SMALL)
    result = sft_job.run_sft_round(ctx)
    at = operator_page("pages/training.py")
    rows = next(d.value for d in at.dataframe if "trained by" in d.value.columns)
    row = rows.set_index("version").loc[result["version"]]
    assert row["trained by"] == "sft"
    assert row["held-out demonstration NLL"] == (
        f"{result['nll_before']:.3f} -> {result['nll_after']:.3f} "
        f"({result['heldout_demonstrations']} held out)"
    )
    assert any(f"last SFT round (job {ctx.job.id})" in c.value for c in at.caption)
    assert "sft_loss" in [c.value for c in at.caption]  # its curve's title
    next(b for b in at.button if b.label == "Run an SFT round now").click().run()
    assert [j["status"] for j in db["jobs"].rows_where("kind = 'sft_round'")] == ["done", "queued"]
