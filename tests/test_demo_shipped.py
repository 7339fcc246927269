"""The demo model shipped in the repository: intact, loadable, used without a build, and only for
the spec it was built from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import TEST_MODEL_CACHE, TEST_PRETRAIN_STEPS

from rlhf_loop.__main__ import main
from rlhf_loop.config import Settings
from rlhf_loop.model import shipped
from rlhf_loop.model.demo_build import SPEC_FILE, DemoSpec, ensure_demo_model, spec_from_settings
from rlhf_loop.model.demo_corpus import demo_prompts
from rlhf_loop.model.loader import load_causal_lm, resolve_model_path
from rlhf_loop.model.prompting import format_prompt
from rlhf_loop.model.shipped import (
    HASHES_FILE,
    SHIPPED_DIR,
    file_hashes,
    recorded_hashes,
    shipped_demo_model,
    write_shipped_demo,
)
from rlhf_loop.simulate import ArithmeticOracle, parse_arithmetic

TINY = DemoSpec(n_layer=1, n_embd=32, n_head=2, n_positions=64, pretrain_steps=20, n_examples=300)


def test_shipped_files_match_their_recorded_hashes() -> None:
    recorded = recorded_hashes(SHIPPED_DIR)
    assert recorded == file_hashes(SHIPPED_DIR)
    assert {"model.safetensors", "config.json", "tokenizer.json", SPEC_FILE} <= set(recorded)
    total = sum((SHIPPED_DIR / name).stat().st_size for name in recorded)
    assert total < 20_000_000


def test_shipped_model_loads_as_float32_and_knows_its_arithmetic() -> None:
    """The real loading path; greedy answers to the corpus's sums, products and differences are
    mostly right (the reason for shipping 4000 steps instead of building 500)."""
    model, tokenizer = load_causal_lm(str(SHIPPED_DIR), "cpu")
    assert model.dtype == torch.float32 and tokenizer.padding_side == "left"
    prompts = [p for p in demo_prompts(80, seed=5) if parse_arithmetic(p)]
    batch = tokenizer(
        [format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True
    )
    out = model.generate(**batch, do_sample=False, max_new_tokens=24)
    responses = tokenizer.batch_decode(
        out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    oracle = ArithmeticOracle()
    right = [oracle.score(p, r) == oracle.correct for p, r in zip(prompts, responses, strict=True)]
    assert sum(right) / len(right) >= 0.75


def test_default_settings_use_the_shipped_model_without_building(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    settings = Settings(model_cache_dir=str(cache))
    started = time.monotonic()
    assert resolve_model_path(settings) == str(SHIPPED_DIR)
    assert time.monotonic() - started < 1.0
    assert not cache.exists()
    record = json.loads((SHIPPED_DIR / SPEC_FILE).read_text())
    assert record["key"] == spec_from_settings(settings).key()


def test_another_step_count_is_built_into_the_cache(demo_model_path: Path) -> None:
    settings = Settings(
        model_cache_dir=str(TEST_MODEL_CACHE), demo_pretrain_steps=TEST_PRETRAIN_STEPS
    )
    assert shipped_demo_model(spec_from_settings(settings)) is None
    assert resolve_model_path(settings) == str(demo_model_path)


def test_a_missing_or_foreign_directory_is_not_used(tmp_path: Path) -> None:
    assert shipped_demo_model(TINY, tmp_path / "absent") is None
    (tmp_path / SPEC_FILE).write_text("{not json")
    assert shipped_demo_model(TINY, tmp_path) is None
    (tmp_path / SPEC_FILE).write_text(json.dumps({"key": TINY.key()}))
    assert shipped_demo_model(TINY, tmp_path) == tmp_path


def test_write_shipped_demo_is_the_cached_build_in_float16_with_hashes(tmp_path: Path) -> None:
    out = tmp_path / "repo" / "demo_shipped"
    out.mkdir(parents=True)
    (out / "stale.bin").write_text("from an older build")

    assert write_shipped_demo(TINY, tmp_path / "cache", out) == out

    assert not (out / "stale.bin").exists()
    assert [p.name for p in out.parent.iterdir()] == ["demo_shipped"]  # no temp dir left
    assert recorded_hashes(out) == file_hashes(out) and HASHES_FILE not in file_hashes(out)
    assert shipped_demo_model(TINY, out) == out
    built = ensure_demo_model(tmp_path / "cache", TINY)
    assert (out / SPEC_FILE).read_bytes() == (built / SPEC_FILE).read_bytes()
    shipped_model, _ = load_causal_lm(str(out), "cpu")
    built_model, _ = load_causal_lm(str(built), "cpu")
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    for (name, a), (_, b) in zip(
        shipped_model.state_dict().items(), built_model.state_dict().items(), strict=True
    ):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.half().float(), rtol=0, atol=0, msg=name)


def test_build_demo_command_ships_the_default_spec_not_the_configured_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A developer's own step count must not end up in the repository."""
    (tmp_path / "none.toml").write_text("")
    monkeypatch.setenv("RLHF_LOOP_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("RLHF_LOOP_DEMO_PRETRAIN_STEPS", str(TEST_PRETRAIN_STEPS))
    monkeypatch.setenv("RLHF_LOOP_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[tuple[DemoSpec, Path]] = []

    def fake_write(spec: DemoSpec, cache_dir: Path, **_: object) -> Path:
        calls.append((spec, cache_dir))
        return tmp_path

    monkeypatch.setattr(shipped, "write_shipped_demo", fake_write)
    assert main(["build-demo"]) == 0
    assert calls == [(spec_from_settings(Settings()), tmp_path / "cache")]
