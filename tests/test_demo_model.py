"""The demo model: corpus, offline build, crash- and race-safe cache, and the shared loader."""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import re
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import torch
from conftest import TEST_PRETRAIN_STEPS
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rlhf_loop.config import Settings, load_settings
from rlhf_loop.model.demo_build import SPEC_FILE, DemoSpec, ensure_demo_model, spec_from_settings
from rlhf_loop.model.demo_corpus import demo_examples, demo_prompts
from rlhf_loop.model.loader import (
    ModelLoadError,
    load_causal_lm,
    resolve_device,
    resolve_model_path,
)
from rlhf_loop.model.prompting import PROMPT_TEMPLATE, format_prompt

SMALL = DemoSpec(
    n_layer=2,
    n_embd=64,
    n_head=2,
    n_positions=128,
    pretrain_steps=100,
    batch_size=16,
    seq_len=48,
    n_examples=1000,
)
TINY = DemoSpec(n_layer=1, n_embd=32, n_head=2, n_positions=64, pretrain_steps=20, n_examples=300)
ARITHMETIC = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def __call__(self, stage: str, fraction: float) -> None:
        self.events.append((stage, fraction))


@pytest.fixture(scope="module")
def small_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recorder]:
    recorder = Recorder()
    path = ensure_demo_model(tmp_path_factory.mktemp("cache"), SMALL, recorder)
    return path, recorder


def _answer(prompt: str) -> int:
    a, op, b = ARITHMETIC.fullmatch(prompt).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_demo_prompts_are_distinct_mixed_and_seeded() -> None:
    prompts = demo_prompts(100, seed=3)
    assert len(set(prompts)) == 100
    assert prompts == demo_prompts(100, seed=3) != demo_prompts(100, seed=4)
    assert any(ARITHMETIC.fullmatch(p) for p in prompts)
    assert any(p.startswith(("What colour", "Name an animal", "How many legs")) for p in prompts)
    assert any(p.startswith(("Write a short sentence", "Describe a", "Tell me")) for p in prompts)
    assert all("Question:" not in p and p == p.strip() for p in prompts)
    with pytest.raises(ValueError):
        demo_prompts(100_000)


def test_demo_examples_vary_in_correctness_and_length() -> None:
    examples = demo_examples(2000, seed=1)
    arithmetic = [(p, r) for p, r in examples if ARITHMETIC.fullmatch(p)]
    right = [str(_answer(p)) in re.sub(r"\d+ [-+*] \d+ (=|is)", "", r) for p, r in arithmetic]
    assert 0.6 < sum(right) / len(right) < 0.8
    lengths = [len(r.split()) for _, r in examples]
    assert min(lengths) == 1 and max(lengths) >= 15


def test_build_reports_progress_and_loss_falls(small_build: tuple[Path, Recorder]) -> None:
    path, recorder = small_build
    stages = list(dict.fromkeys(stage for stage, _ in recorder.events))
    assert stages == ["corpus", "tokenizer", "pretrain", "save"]
    pretrain = [fraction for stage, fraction in recorder.events if stage == "pretrain"]
    assert pretrain == sorted(pretrain) and pretrain[-1] == 1.0
    assert max(b - a for a, b in itertools.pairwise(pretrain)) <= 0.02 + 1e-9
    record = json.loads((path / SPEC_FILE).read_text())
    assert record["spec"] == dataclasses.asdict(SMALL)
    assert record["final_loss"] < 0.5 * record["initial_loss"]


def test_loads_through_auto_classes_ready_for_batched_generation(
    small_build: tuple[Path, Recorder],
) -> None:
    model, tokenizer = load_causal_lm(str(small_build[0]), "cpu")
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert len(tokenizer) <= model.config.vocab_size


def test_session_model_answers_in_the_corpus_format(demo_model_path: Path) -> None:
    model, tokenizer = load_causal_lm(str(demo_model_path), "cpu")
    prompts = demo_prompts(6, seed=7)
    batch = tokenizer(
        [format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True
    )
    out = model.generate(**batch, do_sample=False, max_new_tokens=40)
    width = batch["input_ids"].shape[1]
    for prompt, row in zip(prompts, out, strict=True):
        assert tokenizer.eos_token_id in row[width:].tolist(), "response never ends"
        full = tokenizer.decode(row, skip_special_tokens=True)
        assert full.startswith(PROMPT_TEMPLATE.format(prompt=prompt) + " ")
        response = tokenizer.decode(row[width:], skip_special_tokens=True).strip()
        assert response and response[-1] in ".!?" and "Question" not in response


def test_sampled_responses_differ(demo_model_path: Path) -> None:
    model, tokenizer = load_causal_lm(str(demo_model_path), "cpu")
    batch = tokenizer([format_prompt(tokenizer, "What is 7 + 5?")] * 8, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**batch, do_sample=True, top_p=0.95, max_new_tokens=40)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(set(texts)) >= 4
    assert len({len(t) for t in texts}) >= 3


def test_second_call_reuses_the_cache(small_build: tuple[Path, Recorder]) -> None:
    path, _ = small_build
    before = (path / SPEC_FILE).stat().st_mtime_ns
    recorder = Recorder()
    assert ensure_demo_model(path.parent, SMALL, recorder) == path
    assert recorder.events == []
    assert (path / SPEC_FILE).stat().st_mtime_ns == before


def test_leftovers_of_a_killed_build_are_not_mistaken_for_a_model(tmp_path: Path) -> None:
    stale = tmp_path / f".demo-{TINY.key()}.tmp-killed"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    unfinished = tmp_path / f"demo-{TINY.key()}"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{")

    path = ensure_demo_model(tmp_path, TINY)

    assert path == unfinished and (path / SPEC_FILE).is_file()
    assert not stale.exists()
    load_causal_lm(str(path), "cpu")


def _build_in_child(cache_dir: str, log: str, barrier: Barrier) -> None:
    def note(stage: str, fraction: float) -> None:
        if fraction == 0.0 and stage in ("corpus", "wait"):
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(("build" if stage == "corpus" else "wait") + "\n")

    barrier.wait()
    ensure_demo_model(Path(cache_dir), TINY, note)


def test_two_processes_starting_together_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    log = tmp_path / "events.log"
    args = (str(tmp_path / "cache"), str(log), barrier)
    children = [ctx.Process(target=_build_in_child, args=args) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]
    assert sorted(log.read_text().split()) == ["build", "wait"]
    assert (tmp_path / "cache" / f"demo-{TINY.key()}" / SPEC_FILE).is_file()


def test_missing_model_raises_model_load_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match=re.escape(missing)):
        load_causal_lm(missing, "cpu")
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="empty-dir"):
        load_causal_lm(str(empty), "cpu")


def test_resolve_model_path(tmp_path: Path) -> None:
    assert resolve_model_path(Settings(model="org/some-model")) == "org/some-model"
    settings = Settings(model_cache_dir=str(tmp_path), demo_pretrain_steps=0)
    path = resolve_model_path(settings)
    assert path == str(tmp_path / f"demo-{spec_from_settings(settings).key()}")
    assert json.loads((Path(path) / SPEC_FILE).read_text())["final_loss"] is None


def test_test_model_is_what_an_app_with_the_same_env_finds(
    demo_spec: DemoSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"RLHF_LOOP_DEMO_PRETRAIN_STEPS": str(TEST_PRETRAIN_STEPS)}
    assert spec_from_settings(load_settings(environ=env)) == demo_spec


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="nonsense"):
        resolve_device("nonsense")


def test_format_prompt_uses_chat_template_when_present(demo_model_path: Path) -> None:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(demo_model_path)
    assert format_prompt(tokenizer, "Hi?") == "Question: Hi?\nAnswer:"
    tokenizer.chat_template = (
        "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    assert format_prompt(tokenizer, "Hi?") == "<u>Hi?</u><a>"
