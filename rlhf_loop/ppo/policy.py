"""The PPO policy: one copy of the base weights carrying a trainable LoRA adapter and a value head.

- policy    = base + adapter "default" (trainable)
- reference = the same model with the adapter disabled (or, with an EMA reference, a second
              adapter "reference" that trails the policy's), so no second copy of the base
- value     = a linear head on the policy's last hidden state (shared backbone)
- the final norm (``train_norm``): trained beside the adapter (peft's ``modules_to_save``).
  Its gain scales every logit, so it is the policy's temperature, and behind a final
  LayerNorm/RMSNorm no LoRA update can change that scale: a base that knows the answer but
  samples widely could only become decisive prompt by prompt. On the demo, one 60-step round
  against the same reward model raised held-out arithmetic correctness 0.58 -> 0.71-0.80 (3
  seeds) with the norm trained on its own, larger step, and to 0.60 without it; with the
  adapter alone even the oracle's own score as the reward raised the training prompts' to 0.80
  and the held-out ones' to 0.60: the adapter memorised, the norm generalises.

A saved version is the adapter (peft's own format, loadable by ``PeftModel.from_pretrained``),
the value head's weights and a metadata file, written to a temporary directory and renamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedTokenizerBase

from rlhf_loop.artefacts import write_directory
from rlhf_loop.model.loader import ModelLoadError, load_causal_lm

VALUE_HEAD_FILE = "value_head.pt"
META_FILE = "policy_meta.json"
REFERENCE = "reference"


@dataclass
class Policy:
    model: PeftModel
    value_head: torch.nn.Linear
    tokenizer: PreTrainedTokenizerBase
    ema_reference: bool = False

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self._trainable()] + list(self.value_head.parameters())

    def optimiser_groups(self, lr: float, norm_lr: float) -> list[dict[str, Any]]:
        """The trained final norm on ``norm_lr`` (a few gains that set the temperature move
        too slowly at an adapter's rate), everything else on ``lr``."""
        trainable = self._trainable()
        norm = [p for n, p in trainable if _SAVED in n]
        rest = [p for n, p in trainable if _SAVED not in n]
        rest += list(self.value_head.parameters())
        return [{"params": rest, "lr": lr}] + ([{"params": norm, "lr": norm_lr}] if norm else [])

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [
            (n, p)
            for n, p in self.model.named_parameters()
            if p.requires_grad and REFERENCE not in n
        ]

    def adapter_parameters(self, name: str) -> list[torch.Tensor]:
        return [
            p
            for n, p in self.model.named_parameters()
            if ("lora_" in n or _SAVED in n) and f".{name}." in n
        ]

    def values(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """The value head on the last hidden state ([..., H] -> [...]), read in the head's
        float32 (the backbone may run in bfloat16)."""
        return self.value_head(last_hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    @property
    def float32_base(self) -> bool:
        """Whether the base runs in float32: then a merged adapter and a cached decode compute
        the policy's forward pass to float rounding (see ``merged_adapter``)."""
        return all(
            p.dtype == torch.float32 for p in self.model.parameters() if p.is_floating_point()
        )


_SAVED = "modules_to_save"  # peft's name for a module trained whole beside the adapter


def final_norm_name(model: torch.nn.Module) -> str | None:
    """The full name of the norm right before the LM head (GPT-2 ``transformer.ln_f``, Llama
    and Qwen2 ``model.norm``): the last norm module registered, or None when there is none."""
    names = [n for n, m in model.named_modules() if type(m).__name__.endswith("Norm") and n]
    return names[-1] if names else None


def _lora_config(r: int, final_norm: str | None = None) -> LoraConfig:
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,  # PPO's ratio needs the same log-probs at rollout and update
        target_modules="all-linear",
        modules_to_save=[final_norm] if final_norm else None,
    )


def _value_head(model: PeftModel, device: torch.device) -> torch.nn.Linear:
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)  # start at value 0: no false confidence at round start
    torch.nn.init.zeros_(head.bias)
    return head.to(device)


def new_policy(
    base_path: str,
    device: str,
    lora_r: int,
    ema_reference: bool = False,
    dtype: str = "auto",
    train_norm: bool = False,
) -> Policy:
    """Base (in ``dtype``) + a fresh float32 adapter (the identity at first: LoRA's B is zero,
    the trained norm a copy of the base's)."""
    base, tokenizer = load_causal_lm(base_path, device, dtype)
    config = _lora_config(lora_r, final_norm_name(base) if train_norm else None)
    model = get_peft_model(base, config)
    if train_norm:
        _float32_copies(model)
    policy = Policy(model, _value_head(model, base.device), tokenizer, ema_reference)
    if ema_reference:
        _add_reference_adapter(policy, config)
    return policy


def _float32_copies(model: PeftModel) -> None:
    """The trained copy of the norm in float32 over a half-precision base, like the adapter:
    it reads its input in float32 and hands the base's dtype on to the LM head. (A saved copy
    is loaded into a copy in the base's dtype first, so it comes back rounded to it: a 0.1%
    change of a gain, harmless.)"""
    for name, module in model.named_modules():
        base_dtype = next(module.parameters(), torch.empty(0)).dtype
        if not name.endswith(f"{_SAVED}.default") or base_dtype == torch.float32:
            continue
        module.float()
        module.register_forward_pre_hook(
            lambda _, args: tuple(a.float() if torch.is_tensor(a) else a for a in args)
        )
        module.register_forward_hook(lambda _, __, out, dtype=base_dtype: out.to(dtype))


def load_policy(
    base_path: str,
    version_dir: str | Path,
    device: str,
    ema_reference: bool = False,
    dtype: str = "auto",
) -> Policy:
    """A saved version, trainable again (a round continues from the live policy); peft keeps
    the adapter in float32 over a half-precision base."""
    version_dir = Path(version_dir)
    if not (version_dir / META_FILE).is_file():
        raise ModelLoadError(f"policy files are missing at {version_dir}")
    base, tokenizer = load_causal_lm(base_path, device, dtype)
    model = PeftModel.from_pretrained(base, version_dir, is_trainable=True)
    _float32_copies(model)
    head = _value_head(model, base.device)
    head.load_state_dict(torch.load(version_dir / VALUE_HEAD_FILE, map_location=base.device))
    policy = Policy(model, head, tokenizer, ema_reference)
    if ema_reference:
        _add_reference_adapter(policy, policy.model.peft_config["default"])
    return policy


def _add_reference_adapter(policy: Policy, config: LoraConfig) -> None:
    """A frozen copy of the policy's adapter that an EMA will move slowly after it."""
    policy.model.add_adapter(REFERENCE, config)
    with torch.no_grad():
        for ref, cur in zip(
            policy.adapter_parameters(REFERENCE), policy.adapter_parameters("default"), strict=True
        ):
            ref.copy_(cur)
            ref.requires_grad_(False)
    policy.model.set_adapter("default")


def save_policy(policy: Policy, final_dir: Path, meta: dict[str, Any]) -> Path:
    """Adapter + value head + metadata, complete before it appears under its final name."""

    def write(tmp: Path) -> None:
        policy.model.save_pretrained(tmp, selected_adapters=["default"])
        torch.save(policy.value_head.state_dict(), tmp / VALUE_HEAD_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    return write_directory(final_dir, write)


def merged_model(base_path: str, version_dir: str | Path, out_dir: Path) -> Path:
    """Base with the version's adapter merged in, saved as a plain transformers model."""
    base, tokenizer = load_causal_lm(base_path, "cpu")
    merged = PeftModel.from_pretrained(base, version_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def no_dropout(policy: Policy) -> None:
    """PPO never trains with dropout: rollout, old and new log-probs, the reference and every
    evaluation must see one distribution (with dropout 0.1 a fresh adapter's KL read -1.4)."""
    if policy.model.training:
        policy.model.eval()


def forward(
    policy: Policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_values: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and values) at every position of query+response, under the policy's adapter.

    The value head reads the last hidden state in float32 (the backbone may run in bfloat16).
    """
    no_dropout(policy)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = policy.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=with_values,
    )
    return out.logits, policy.values(out.hidden_states[-1]) if with_values else None


@contextmanager
def merged_adapter(policy: Policy) -> Iterator[None]:
    """The policy's adapter merged into the base weights while sampling; the base's exact bits
    back after.

    Unmerged, every adapted linear layer costs two more small matmuls per decode step; merged, a
    step is the bare base's. peft's ``unmerge_adapter`` subtracts the update again, which is not
    exact: one round trip moved a quarter of a float32 base's weights by an ulp (a bfloat16
    base's by 1e-3), a drift that would build up over a round in the frozen base, and so in the
    reference. So the merged weights are new tensors (``W + get_delta_weight``, what peft's safe
    merge writes) and the originals are put back afterwards; a copy of the adapted weights is
    held while sampling. Done per layer rather than by peft's ``merge_adapter``, whose model-wide
    checks took 5-9 ms a rollout on the demo model against 1.3 ms; the layer's
    ``merged_adapters`` is what its forward reads to skip the adapter. Plain LoRA only (what
    ``_lora_config`` makes: no DoRA, no LoRA bias).

    Only a float32 base is merged: rounding the float32 update into bfloat16 weights moved
    log-probs by up to 0.05 nats from the policy PPO optimises (float32: 4e-6).
    """
    if not policy.float32_base:
        yield
        return
    name = policy.model.active_adapter
    originals: list[tuple[LoraLayer, torch.nn.Parameter, torch.Tensor]] = []
    try:
        for layer in policy.model.modules():
            if isinstance(layer, LoraLayer) and name in layer.lora_A:
                weight = layer.get_base_layer().weight
                originals.append((layer, weight, weight.data))
                with torch.no_grad():
                    delta = layer.get_delta_weight(name).to(weight.dtype)
                weight.data = weight.data + delta
                layer.merged_adapters.append(name)
        yield
    finally:
        for layer, weight, data in originals:
            weight.data = data
            layer.merged_adapters.remove(name)


@contextmanager
def reference_weights(policy: Policy) -> Iterator[None]:
    """The reference active for the forward passes inside: the bare base (adapter disabled), or
    the EMA adapter when that option is on."""
    if not policy.ema_reference:
        # peft's own ``disable_adapter`` first surveys every layer's state (2 ms a call on the
        # demo model, twice a step); the policy's layers are all enabled, so switch them alone
        policy.model.base_model.disable_adapter_layers()
        try:
            yield
        finally:
            policy.model.base_model.enable_adapter_layers()
        return
    policy.model.set_adapter(REFERENCE)
    try:
        yield
    finally:
        policy.model.set_adapter("default")
        for p in policy.adapter_parameters(REFERENCE):  # set_adapter made them trainable
            p.requires_grad_(False)
