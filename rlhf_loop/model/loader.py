"""One loading path for every policy: the built demo model and any Hugging Face causal LM.

Why one path: the demo model is saved as an ordinary model directory, so the sampler, the reward
model and PPO never special-case it, and swapping in a real model is a settings change.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_loop.config import Settings
from rlhf_loop.model.demo_build import ProgressFn, ensure_demo_model, spec_from_settings

DEMO_MODEL = "demo"
# What from_pretrained raises for a missing path, an unreachable hub, a bad config or checkpoint,
# a missing optional dependency, or a model that does not fit on the device.
_LOAD_ERRORS = (OSError, ValueError, KeyError, ImportError, RuntimeError)


class ModelLoadError(ValueError):
    """A model could not be loaded; the message names it, so the app can show it as is."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown torch device {name!r}") from None


def resolve_model_path(settings: Settings, on_progress: ProgressFn | None = None) -> str:
    """What to hand to ``load_causal_lm``: "demo" becomes its cache dir, built on first use."""
    if settings.model != DEMO_MODEL:
        return settings.model
    spec = spec_from_settings(settings)
    return str(ensure_demo_model(settings.resolved_model_cache_dir, spec, on_progress))


def load_causal_lm(
    name_or_path: str, device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode on ``device`` and a left-padding tokenizer, ready for batched generate.

    Left padding because decoder-only models continue from the last position of each row; a pad
    token (eos when the model has none) because batches of prompts must be padded.
    """
    target = resolve_device(device)
    source = _local_or_hub(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype_for(target))
        model.to(target)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {exc}") from exc
    _prepare_padding(tokenizer, model, name_or_path)
    return model.eval(), tokenizer


def _local_or_hub(name_or_path: str) -> str:
    """An existing directory, or a hub id; a path-looking name that is missing fails here, with a
    clearer message than the hub client's complaint about repo id syntax."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or "\\" in name_or_path:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: path {path} does not exist")
    return name_or_path


def _dtype_for(device: torch.device) -> torch.dtype:
    """bf16 halves memory on GPUs that do it natively; CPUs are slow or inexact in half types."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _prepare_padding(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, name_or_path: str
) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"model {name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
