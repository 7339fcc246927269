"""Sampling K responses per prompt from the policy, in batches, with the parameters recorded.

One sampler serves the annotators' queue and PPO's rollouts (``draw_responses``, on
``rlhf_loop.ppo.rollout_sampling``): left padding, one prefill per prompt shared by its K rows,
and one decode loop over the batch, so the per-token Python overhead, which dominates small
models on a CPU, is shared across B*K sequences, and the queue's items come as fast as rollouts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_loop.config import Settings
from rlhf_loop.model.prompting import format_prompt
from rlhf_loop.ppo.rollout_sampling import RolloutTokens, SampleConfig, ValueHead, sample_tokens
from rlhf_loop.store.generations import Sample


@dataclass(frozen=True)
class SamplingParams:
    k: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SamplingParams:
        return cls(
            settings.k,
            settings.temperature,
            settings.top_p,
            settings.top_k,
            settings.max_new_tokens,
        )

    def record(self, model_name: str) -> dict[str, object]:
        """What is stored with each generation, so a response can be reproduced in kind."""
        return {**asdict(self), "model": model_name}

    def sample_config(self) -> SampleConfig:
        return SampleConfig(self.max_new_tokens, self.temperature, self.top_p, self.top_k)


def prompt_budget(model: PreTrainedModel, max_new_tokens: int) -> int | None:
    """Prompt tokens that fit beside the response in the model's context, if it has a limit."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    return None if limit is None else max(1, limit - max_new_tokens)


@dataclass(frozen=True)
class DrawnResponses:
    """Responses to prompts repeated K times (row i is prompt i // K), with the query batch they
    were sampled from: what PPO slices and the queue stores."""

    prompts: list[str]  # one per row
    query_ids: torch.Tensor  # [B, P] left-padded
    query_mask: torch.Tensor
    tokens: RolloutTokens
    texts: list[str]


def draw_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    samples_per_prompt: int,
    config: SampleConfig,
    generator: torch.Generator | None = None,
    value_head: ValueHead | None = None,
) -> DrawnResponses:
    """K responses to each prompt; over-long prompts keep their end (where the question is).

    Without a ``generator`` the draw uses torch's global RNG, as ``generate`` did.
    """
    budget = prompt_budget(model, config.max_new_tokens)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    query = tokenizer(
        [format_prompt(tokenizer, p) for p in prompts],
        return_tensors="pt",
        padding=True,
        truncation=budget is not None,
        max_length=budget,
        add_special_tokens=False,
    ).to(model.device)
    ids = query["input_ids"].repeat_interleave(samples_per_prompt, 0)
    mask = query["attention_mask"].repeat_interleave(samples_per_prompt, 0)
    tokens = sample_tokens(
        model,
        ids,
        mask,
        config,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        generator=generator,
        value_head=value_head,
    )
    texts = [
        tokenizer.decode(row[kept.bool()], skip_special_tokens=True).strip()
        for row, kept in zip(tokens.response_ids, tokens.response_mask, strict=True)
    ]
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    return DrawnResponses(rows, ids, mask, tokens, texts)


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> list[list[Sample]]:
    """K samples for each prompt, drawn as PPO draws its rollouts."""
    if not prompts:
        return []
    drawn = draw_responses(model, tokenizer, prompts, params.k, params.sample_config(), generator)
    counts = drawn.tokens.response_mask.sum(1).tolist()
    samples = [
        Sample(text=text, token_count=count, finished=finished)
        for text, count, finished in zip(
            drawn.texts, counts, drawn.tokens.eos_found.tolist(), strict=True
        )
    ]
    return [samples[i * params.k : (i + 1) * params.k] for i in range(len(prompts))]


class LivePolicy:
    """The sampler's copy of the live policy version, reloaded when an operator or a PPO round
    changes it. The adapter is merged into the base for sampling: same outputs, no LoRA cost
    per token. A version whose files are gone keeps the previous model serving."""

    def __init__(self, base_path: str, device: str, dtype: str = "auto") -> None:
        self.base_path, self.device, self.dtype = base_path, device, dtype
        self.version: int | None = None
        self.unloadable: set[int] = set()  # tried once; not reloaded on every batch
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._other: tuple[int, PreTrainedModel] | None = None

    def current(self, live: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, int]:
        """Model, tokenizer and version to sample with, given the live policy's registry row."""
        if live["version"] != self.version and live["version"] not in self.unloadable:
            self._load(live)
        assert self.model is not None and self.tokenizer is not None
        return self.model, self.tokenizer, self.version  # type: ignore[return-value]

    def other(self, row: dict) -> PreTrainedModel:
        """The model of a version that is not live, for blind comparison items (a candidate, or
        the live version's parent). One such version is kept loaded beside the live one, so
        blind items cost a second copy of the weights while they are being made."""
        if self._other is None or self._other[0] != row["version"]:
            self._other = None  # free the previous one before loading the next
            self._other = (row["version"], self._merged(row)[0])
        return self._other[1]

    def _merged(self, row: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from peft import PeftModel

        from rlhf_loop.model.loader import load_causal_lm

        model, tokenizer = load_causal_lm(self.base_path, self.device, self.dtype)
        if row["path"] is not None:
            model = PeftModel.from_pretrained(model, row["path"]).merge_and_unload().eval()
        return model, tokenizer

    def _load(self, live: dict) -> None:
        from rlhf_loop.model.loader import ModelLoadError

        try:
            model, tokenizer = self._merged(live)
        except (ModelLoadError, OSError, ValueError) as exc:
            if self.model is None:
                raise
            self.unloadable.add(live["version"])
            print(
                f"policy v{live['version']} cannot be loaded ({exc}); still serving "
                f"v{self.version}",
                flush=True,
            )
            return
        self.model, self.tokenizer, self.version = model, tokenizer, live["version"]
