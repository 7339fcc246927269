"""Build, pre-train and cache the embedded demo model, offline.

Why build instead of download: the demo must run with no network and no hub account, and a model
trained on the project's own question/answer world gives samples that differ in the ways the
simulated annotators judge (right or wrong, short or long, with or without a keyword). The result
is an ordinary Hugging Face model directory, so everything downstream loads it like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_loop.config import Settings
from rlhf_loop.model.demo_corpus import demo_examples
from rlhf_loop.model.prompting import PROMPT_TEMPLATE, format_prompt

ProgressFn = Callable[[str, float], None]

EOS_TOKEN = "<|endoftext|>"
# A pad distinct from eos, so code that strips padding never strips the end of a response.
PAD_TOKEN = "<|pad|>"
SPEC_FILE = "demo_spec.json"
# Bump when the corpus, tokenizer or training code changes what a given spec builds, so caches
# built by older code are not reused.
BUILD_VERSION = 1
_PROGRESS_POINTS = 50


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines the built model; its hash names the cache directory.

    Defaults: ~0.9 M parameters (the BPE stops near 760 tokens: the demo world has few words), so
    sampling stays cheap. 4000 steps (as ``Settings.demo_pretrain_steps``) are what it takes to
    know most of the corpus (greedy arithmetic ~0.9 right, ~0.5 after 500 steps; examples seen is
    what counts, not width or lr), and they take ~9 min on 2 busy CPU cores (~4.5 idle): that build
    is shipped in the repository instead (``shipped.py``).
    """

    vocab_size: int = 1024
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    pretrain_steps: int = 4000
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    seed: int = 0
    n_examples: int = 8000

    def key(self) -> str:
        payload = json.dumps({"build": BUILD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def spec_from_settings(settings: Settings) -> DemoSpec:
    """Only the step count is a setting; the rest stays fixed so caches are shared."""
    return DemoSpec(pretrain_steps=settings.demo_pretrain_steps)


def ensure_demo_model(
    cache_dir: Path, spec: DemoSpec, on_progress: ProgressFn | None = None
) -> Path:
    """The cached model directory for ``spec``, built first if no finished build exists.

    A build goes to a temp dir and is renamed into place only when complete, so a killed build
    never looks finished. A lock file makes concurrent callers (app and worker starting together)
    build once: the others wait, then reuse. ``on_progress`` hears the stages "corpus",
    "tokenizer", "pretrain", "save", or "wait" while another process holds the build lock.
    """
    final = cache_dir / f"demo-{spec.key()}"
    if _is_complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f"demo-{spec.key()}.lock", on_progress):
        if _is_complete(final):
            return final
        _remove_leftovers(cache_dir, spec.key(), final)
        tmp = Path(tempfile.mkdtemp(prefix=f".demo-{spec.key()}.tmp-", dir=cache_dir))
        try:
            build_demo_model(spec, tmp, on_progress)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / SPEC_FILE).is_file()


def _remove_leftovers(cache_dir: Path, key: str, final: Path) -> None:
    """Temp dirs of killed builds; safe only while holding the lock, when nobody else builds."""
    for stale in cache_dir.glob(f".demo-{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)


@contextlib.contextmanager
def _exclusive_lock(path: Path, on_progress: ProgressFn | None) -> Iterator[None]:
    """flock, released by the kernel if the holder dies, so a crash never wedges the cache."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_progress:
                on_progress("wait", 0.0)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_demo_model(spec: DemoSpec, out_dir: Path, on_progress: ProgressFn | None = None) -> None:
    """Tokenizer, model and a brief pre-training, saved as a Hugging Face model directory."""
    report = on_progress or (lambda stage, fraction: None)
    started = time.monotonic()
    report("corpus", 0.0)
    examples = demo_examples(spec.n_examples, seed=spec.seed)
    report("corpus", 1.0)

    report("tokenizer", 0.0)
    tokenizer = _train_tokenizer(spec, examples)
    report("tokenizer", 1.0)

    texts = [f"{format_prompt(tokenizer, p)} {r}{tokenizer.eos_token}" for p, r in examples]
    model = _new_model(spec, tokenizer)
    losses = _pretrain(model, tokenizer, texts, spec, report)

    report("save", 0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_spec(out_dir, spec, model, losses, time.monotonic() - started)
    report("save", 1.0)


def _train_tokenizer(spec: DemoSpec, examples: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """Byte-level BPE, so any text (not only the demo world's) encodes without unknown tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(
        (f"{PROMPT_TEMPLATE.format(prompt=p)} {r}" for p, r in examples), trainer
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=spec.n_positions,
        clean_up_tokenization_spaces=False,
    )


def _new_model(spec: DemoSpec, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """No dropout: pre-training is too brief to over-fit, and PPO later wants a deterministic
    policy whose log-probs match between rollout and update."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return GPT2LMHeadModel(config)


def _pretrain(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    spec: DemoSpec,
    report: ProgressFn,
) -> list[float]:
    """Plain AdamW with warmup and cosine decay; returns the loss of every step."""
    encoded = tokenizer(texts, truncation=True, max_length=spec.seq_len)["input_ids"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, spec.pretrain_steps)
    )
    generator = torch.Generator().manual_seed(spec.seed)
    every = max(1, spec.pretrain_steps // _PROGRESS_POINTS)
    losses: list[float] = []
    model.train()
    report("pretrain", 0.0)
    for step in range(1, spec.pretrain_steps + 1):
        picks = torch.randint(len(encoded), (spec.batch_size,), generator=generator).tolist()
        loss = model(**_batch([encoded[i] for i in picks], tokenizer.pad_token_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % every == 0 or step == spec.pretrain_steps:
            report("pretrain", step / spec.pretrain_steps)
    model.eval()
    return losses


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch whose padding is masked out of both attention and loss."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _write_spec(
    out_dir: Path, spec: DemoSpec, model: GPT2LMHeadModel, losses: list[float], seconds: float
) -> None:
    """Written last: its presence is what marks a build as complete."""
    tail = losses[-max(1, len(losses) // 10) :]
    record = {
        "key": spec.key(),
        "build_version": BUILD_VERSION,
        "spec": dataclasses.asdict(spec),
        "n_params": sum(p.numel() for p in model.parameters()),
        "initial_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if losses else None,
        "build_seconds": round(seconds, 2),
    }
    (out_dir / SPEC_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
