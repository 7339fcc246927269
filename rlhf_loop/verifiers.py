"""Reward functions: programs that score an answer they can check (RLVR), beside the reward model.

An arithmetic result, an output format, a length limit are cheaper and surer checked by a program
than ranked by people. The settings name them, ``reward_functions = "rlhf_loop.verifiers:
arithmetic=1.0, my_package.checks:has_citation=0.5"`` (module:attribute=weight), each a callable
``fn(prompt, response) -> float | None``, None meaning "not applicable to this prompt". A PPO
sample's reward is the reward model's score times ``reward_model_weight`` plus the weighted
values of the functions that apply. An attribute with a ``from_settings`` method (the format
check, the length budget) is built from the settings first.

A function that raises or returns NaN / infinity stops the round with its name and the prompt:
one silent NaN would poison every advantage of its batch.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_loop.config import ConfigError, Settings
from rlhf_loop.simulate import parse_arithmetic, stated_numbers

Verifier = Callable[[str, str], float | None]
FUNCTION_METRIC = "fn:"  # per-step metric name of a function's mean value: fn:module:attribute


def arithmetic(prompt: str, response: str) -> float | None:
    """1 when the response states exactly one number and it is the result of the prompt's
    "What is a op b?", else 0; None for prompts that are not such a question."""
    parsed = parse_arithmetic(prompt)
    if parsed is None:
        return None
    a, op, b, result = parsed
    return float(stated_numbers(response, a, op, b) == {result})


@dataclass(frozen=True)
class FormatCheck:
    """1 when the response matches ``verifier_format_pattern`` (a Python regular expression,
    searched), else 0; applies to every prompt."""

    pattern: re.Pattern[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> FormatCheck:
        if not settings.verifier_format_pattern:
            raise ConfigError("format_check needs verifier_format_pattern (a regular expression)")
        try:
            return cls(re.compile(settings.verifier_format_pattern))
        except re.error as exc:
            raise ConfigError(f"verifier_format_pattern: {exc}") from None

    def __call__(self, prompt: str, response: str) -> float | None:
        return float(self.pattern.search(response) is not None)


@dataclass(frozen=True)
class LengthBudget:
    """0 within ``verifier_max_words`` words, then minus the share over it, down to -1."""

    max_words: int

    @classmethod
    def from_settings(cls, settings: Settings) -> LengthBudget:
        if settings.verifier_max_words < 1:
            raise ConfigError("length_budget needs verifier_max_words >= 1")
        return cls(settings.verifier_max_words)

    def __call__(self, prompt: str, response: str) -> float | None:
        over = len(response.split()) - self.max_words
        return -min(1.0, max(0, over) / self.max_words)


format_check = FormatCheck
length_budget = LengthBudget


@dataclass(frozen=True)
class RewardFunction:
    name: str  # as the settings name it: module:attribute
    fn: Verifier
    weight: float


class VerifierFailed(RuntimeError):
    """A reward function raised or returned a non-finite value; the message says which, where."""


def _entry(text: str, settings: Settings) -> RewardFunction:
    target, _, weight_text = text.partition("=")
    target = target.strip()
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"reward_functions: {text.strip()!r} is not module:attribute[=weight]")
    try:
        weight = float(weight_text) if weight_text.strip() else 1.0
    except ValueError:
        raise ConfigError(f"reward_functions: weight of {target!r} is not a number") from None
    if not math.isfinite(weight):
        raise ConfigError(f"reward_functions: weight of {target!r} must be finite")
    try:
        found: Any = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        raise ConfigError(f"reward_functions: cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ConfigError(f"reward_functions: {module_name!r} has no {attribute!r}") from None
    fn = found.from_settings(settings) if hasattr(found, "from_settings") else found
    if not callable(fn):
        raise ConfigError(f"reward_functions: {target!r} is not callable")
    return RewardFunction(target, fn, weight)


def reward_functions(settings: Settings) -> list[RewardFunction]:
    """The functions the settings name, imported and built; ConfigError names a bad entry."""
    entries = [e for e in settings.reward_functions.split(",") if e.strip()]
    functions = [_entry(e, settings) for e in entries]
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ConfigError("reward_functions: a function is named twice")
    return functions


def function_values(
    functions: Sequence[RewardFunction], prompts: Sequence[str], responses: Sequence[str]
) -> tuple[list[float], dict[str, float | None]]:
    """Per response, the weighted sum of the applicable functions' values; per function, its
    mean over the responses it applied to (None where it applied to none)."""
    totals = [0.0] * len(prompts)
    means: dict[str, float | None] = {}
    for function in functions:
        applied = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            try:
                value = function.fn(prompt, response)
            except Exception as exc:  # a user's function: any failure stops the round, named
                raise VerifierFailed(
                    f"reward function {function.name} raised {type(exc).__name__}: {exc} "
                    f"on the prompt {prompt[:200]!r}"
                ) from exc
            if value is None:
                continue
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise VerifierFailed(
                    f"reward function {function.name} returned {value!r} (not a finite number) "
                    f"on the prompt {prompt[:200]!r}"
                )
            applied.append(float(value))
            totals[i] += function.weight * float(value)
        means[function.name] = sum(applied) / len(applied) if applied else None
    return totals, means


def for_people(settings: Settings) -> Callable[[str], bool] | None:
    """With ``verified_prompts_to_humans = false``, the test that keeps a prompt in the human
    queue: no reward function applies to it (probed with an empty response; a function that
    fails on that probe counts as applying, so the prompt goes to the program, not to people).
    None when every prompt goes to people."""
    if settings.verified_prompts_to_humans:
        return None
    functions = reward_functions(settings)
    if not functions:
        return None

    def applies(function: RewardFunction, prompt: str) -> bool:
        try:
            return function.fn(prompt, "") is not None
        except Exception:  # a user's function; the round will name its failure
            return True

    return lambda prompt: not any(applies(f, prompt) for f in functions)
