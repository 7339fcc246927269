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
from transformers.utils.peft_utils import find_adapter_config_file

from rlhf_loop.config import Settings
from rlhf_loop.model.demo_build import ProgressFn, ensure_demo_model, spec_from_settings
from rlhf_loop.model.shipped import shipped_demo_model

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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The dtype frozen weights are held and run in; trainable ones are always float32.

    The policy: "auto" is bfloat16 on a GPU that does it natively (half the memory, the GPU's
    fast path) and float32 elsewhere (CPUs are slow or inexact in half types). Whatever this
    gives, LoRA adapters, the value head, the reward head and every loss stay float32: the
    backbone's half-precision outputs are cast up where they enter them.
    """
    if name == "auto":
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use 'auto' or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_model_path(settings: Settings, on_progress: ProgressFn | None = None) -> str:
    """What to hand to ``load_causal_lm``: "demo" becomes the shipped model when the configured
    spec is the one shipped, else its cache dir, built on first use."""
    if settings.model != DEMO_MODEL:
        return settings.model
    spec = spec_from_settings(settings)
    shipped = shipped_demo_model(spec)
    if shipped is not None:
        return str(shipped)
    return str(ensure_demo_model(settings.resolved_model_cache_dir, spec, on_progress))


def load_causal_lm(
    name_or_path: str, device: str = "auto", dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode on ``device`` and a left-padding tokenizer, ready for batched generate.

    Left padding because decoder-only models continue from the last position of each row; a pad
    token (eos when the model has none) because batches of prompts must be padded.
    """
    target = resolve_device(device)
    source = _local_or_hub(name_or_path)
    try:
        model, tokenizer_source = _load_weights(source, resolve_dtype(dtype, target))
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        model.to(target)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {exc}") from exc
    _prepare_padding(tokenizer, model, name_or_path)
    return model.eval(), tokenizer


def _load_weights(source: str, dtype: torch.dtype) -> tuple[PreTrainedModel, str]:
    """The model, and where its tokenizer is.

    A model shipped as a PEFT adapter directory (its base named in ``adapter_config.json``) is
    loaded with that adapter merged into the base: the merged weights are then the one frozen
    base that the queue sampler serves, a new PPO adapter starts from and the KL reference is.
    Left as an adapter named "default", PPO's own adapter would replace it and policy and
    reference would fall back to the bare base while the sampler still served the shipped one.
    """
    if find_adapter_config_file(source) is None:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype), source
    from peft import PeftConfig, PeftModel

    base_name = PeftConfig.from_pretrained(source).base_model_name_or_path
    if not base_name:
        raise ModelLoadError(f"adapter {source!r} does not name its base model")
    base = AutoModelForCausalLM.from_pretrained(_local_or_hub(base_name), dtype=dtype)
    merged = PeftModel.from_pretrained(base, source).merge_and_unload()
    has_tokenizer = Path(source, "tokenizer_config.json").is_file() or not Path(source).is_dir()
    return merged, source if has_tokenizer else base_name


def _local_or_hub(name_or_path: str) -> str:
    """An existing directory, or a hub id; a path-looking name that is missing fails here, with a
    clearer message than the hub client's complaint about repo id syntax."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or "\\" in name_or_path:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: path {path} does not exist")
    return name_or_path


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
