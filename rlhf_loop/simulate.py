"""Simulated annotators: a hidden preference (an oracle) that ranks tasks like a person would.

Why: the loop can only be tested and benchmarked end to end when someone ranks its samples, and a
person is neither reproducible nor fast. A simulated annotator knows a hidden utility (correct
arithmetic, a target length, a keyword...), perturbs it with Gaussian noise, turns near-equal
scores into ties, and submits through the same store calls as the Rank page (``next_task`` then
``submit``), so the tests exercise the real serving, overlap and validation code. Because the
utility is known, the loop's success is measurable: the oracle's mean score on held-out prompts
must rise (``held_out_score``), and how well rankings track it (``agreement_with_oracle``) tells
how much the noise blurred the signal.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, runtime_checkable

import sqlite_utils

from rlhf_loop.store.annotators import annotator_id
from rlhf_loop.store.submissions import Status, submit
from rlhf_loop.store.tasks import next_task

# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Oracle(Protocol):
    """A hidden utility: higher is better. Only differences within one prompt drive rankings;
    the absolute level matters for ``held_out_score``, which averages over prompts."""

    def score(self, prompt: str, response: str) -> float: ...


def count_words(text: str) -> int:
    """Whitespace words: the length unit a reader perceives, independent of any tokenizer."""
    return len(text.split())


_TOKEN_LIKE = re.compile(r"\w+|[^\w\s]")


def approx_tokens(text: str) -> int:
    """Words plus punctuation marks: close to what a byte-level BPE gives on plain short English,
    for when no tokenizer is at hand. Pass a real tokenizer's count for exact figures."""
    return len(_TOKEN_LIKE.findall(text))


_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
_ARITHMETIC_PROMPT = re.compile(
    rf"what\s+is\s+({_NUMBER})\s*([-+*])\s*({_NUMBER})\s*\?", re.IGNORECASE
)
# A number not glued to a longer one: "12" in "12." yes, "2" inside "123" no.
_STANDALONE_NUMBER = re.compile(rf"(?<![0-9.]){_NUMBER}(?![0-9])")
_APPLY: dict[str, Callable[[Fraction, Fraction], Fraction]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


def parse_arithmetic(prompt: str) -> tuple[str, str, str, Fraction] | None:
    """('7', '+', '5', 12) for "What is 7 + 5?"; None when the prompt asks something else.

    Exact fractions, so huge or decimal operands never overflow or round."""
    match = _ARITHMETIC_PROMPT.search(prompt)
    if match is None:
        return None
    a, op, b = match.groups()
    return a, op, b, _APPLY[op](Fraction(a), Fraction(b))


def stated_numbers(response: str, a: str, op: str, b: str) -> set[Fraction]:
    """The numbers a response offers as its answer, with the echoed question "a op b" removed.

    Why remove the echo: "7 * 1 = 8." contains 7, the right result, only because it repeats the
    question; counting it would reward wrong answers."""
    echo = re.compile(rf"(?<![0-9.]){re.escape(a)}\s*{re.escape(op)}\s*{re.escape(b)}(?![0-9])")
    rest = echo.sub(" ", response)
    return {Fraction(n) for n in _STANDALONE_NUMBER.findall(rest)}


@dataclass(frozen=True)
class ArithmeticOracle:
    """Prefers the right result for "What is a op b?" prompts (op in + - *), the demo world's
    clearest signal; on other prompts it is neutral apart from a mild length preference.

    Scores on arithmetic prompts: the right number alone ``correct``; the right number among
    others ``hedged`` (so listing candidates does not pay); only wrong numbers ``wrong``; no
    number at all, or an empty response on any prompt, ``no_answer``. Correct answers of any
    wording tie on purpose: the oracle cares about the result, and ties must reach the store.
    """

    correct: float = 1.0
    hedged: float = 0.25
    wrong: float = 0.0
    no_answer: float = -1.0
    neutral: float = 0.5
    # Non-arithmetic prompts: neutral minus length_weight per word away from preferred_words,
    # capped at max_length_penalty, so length nudges but never outweighs a wrong answer.
    preferred_words: int = 10
    length_weight: float = 0.02
    max_length_penalty: float = 0.4

    def score(self, prompt: str, response: str) -> float:
        if not response.strip():
            return self.no_answer
        parsed = parse_arithmetic(prompt)
        if parsed is None:
            return self._open_score(response)
        a, op, b, result = parsed
        numbers = stated_numbers(response, a, op, b)
        if not numbers:
            return self.no_answer
        if result not in numbers:
            return self.wrong
        return self.correct if len(numbers) == 1 else self.hedged

    def _open_score(self, response: str) -> float:
        distance = abs(count_words(response) - self.preferred_words)
        return self.neutral - min(self.length_weight * distance, self.max_length_penalty)


@dataclass(frozen=True)
class LengthOracle:
    """Prefers responses of a target length: score = -|length - target|.

    Give exactly one of ``target_words`` or ``target_tokens``. Tokens are counted with
    ``count_tokens`` (e.g. ``lambda s: len(tokenizer.encode(s))``), by default approximately
    (``approx_tokens``), so the oracle stays usable without a model."""

    target_words: int | None = None
    target_tokens: int | None = None
    count_tokens: Callable[[str], int] = approx_tokens

    def __post_init__(self) -> None:
        if (self.target_words is None) == (self.target_tokens is None):
            raise ValueError("give exactly one of target_words or target_tokens")
        if (self.target_words or 0) < 0 or (self.target_tokens or 0) < 0:
            raise ValueError("a target length cannot be negative")

    def score(self, prompt: str, response: str) -> float:
        if self.target_words is not None:
            return -float(abs(count_words(response) - self.target_words))
        return -float(abs(self.count_tokens(response) - (self.target_tokens or 0)))


@dataclass(frozen=True)
class KeywordOracle:
    """1 when the response contains ``keyword``, else 0: the simplest preference a policy can
    learn, and an easy one to reward-hack, which makes it a good KL-penalty test."""

    keyword: str
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        if not self.keyword:
            raise ValueError("the keyword cannot be empty")

    def score(self, prompt: str, response: str) -> float:
        if self.case_sensitive:
            return float(self.keyword in response)
        return float(self.keyword.casefold() in response.casefold())


@dataclass(frozen=True, init=False)
class CombinedOracle:
    """A weighted sum of oracles, e.g. correctness first and a length preference to break ties:
    ``CombinedOracle({ArithmeticOracle(): 1.0, LengthOracle(target_words=6): 0.05})``."""

    weights: tuple[tuple[Oracle, float], ...]

    def __init__(self, weights: Mapping[Oracle, float] | Iterable[tuple[Oracle, float]]) -> None:
        pairs = tuple(weights.items() if isinstance(weights, Mapping) else weights)
        if not pairs:
            raise ValueError("combine at least one oracle")
        object.__setattr__(self, "weights", pairs)

    def score(self, prompt: str, response: str) -> float:
        return sum(w * oracle.score(prompt, response) for oracle, w in self.weights)


# The preferences an operator can give simulated annotators, by name; the demo command offers
# the same (its DEMO_ORACLES is this table).
BUILT_IN_ORACLES: dict[str, Callable[[], Oracle]] = {
    "arithmetic": lambda: ArithmeticOracle(),
    "length": lambda: LengthOracle(target_words=5),
    "keyword": lambda: KeywordOracle("thank"),
}

# ---------------------------------------------------------------------------------------------
# Ranking with noise and ties
# ---------------------------------------------------------------------------------------------


def ranks_with_ties(scores: Sequence[float], tie_threshold: float) -> list[int]:
    """Dense ranks, 1 = best, with ties for close scores.

    Grouping is a chain: sort descending and start a new tier only when the gap to the previous
    (next higher) score exceeds ``tie_threshold``. So 1.0, 0.9, 0.8 with threshold 0.15 form one
    tier although 1.0 and 0.8 are 0.2 apart: a person who cannot tell neighbours apart cannot
    order the ends either without a third item. Equal scores always tie, even at threshold 0.
    """
    if any(math.isnan(s) for s in scores):
        raise ValueError("an oracle score is NaN; it cannot be ranked")
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    ranks = [0] * len(scores)
    tier = 0
    previous: float | None = None
    for i in order:
        if previous is None or previous - scores[i] > tie_threshold:
            tier += 1
        ranks[i] = tier
        previous = scores[i]
    return ranks


@dataclass(frozen=True)
class Judgement:
    """What an annotator answers for one task: the arguments of ``submit``."""

    status: Status
    ranks: list[int] | None = None
    reason: str = ""


@dataclass
class SimulatedAnnotator:
    """An oracle seen through noise: Gaussian noise of std ``noise`` on each score, ties within
    ``tie_threshold`` (see ``ranks_with_ties``), and optional skips and flags at the given rates
    so the loop's skip/flag paths get traffic. Seeded: the same seed and calls give the same
    answers, so a failing end-to-end test can be replayed."""

    oracle: Oracle
    noise: float = 0.0
    tie_threshold: float = 0.0
    seed: int | None = None
    skip_rate: float = 0.0
    flag_rate: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.noise < 0 or self.tie_threshold < 0:
            raise ValueError("noise and tie_threshold cannot be negative")
        if min(self.skip_rate, self.flag_rate) < 0 or self.skip_rate + self.flag_rate > 1:
            raise ValueError("skip_rate and flag_rate must be >= 0 and sum to at most 1")
        self._rng = random.Random(self.seed)

    def noisy_scores(self, prompt: str, responses: Sequence[str]) -> list[float]:
        scores = [self.oracle.score(prompt, r) for r in responses]
        if self.noise == 0:
            return scores
        return [s + self._rng.gauss(0.0, self.noise) for s in scores]

    def rank(self, prompt: str, responses: Sequence[str]) -> list[int]:
        """Dense ranks per response, 1 = best, ties allowed: what a person types on the page."""
        return ranks_with_ties(self.noisy_scores(prompt, responses), self.tie_threshold)

    def judge(self, prompt: str, responses: Sequence[str]) -> Judgement:
        """Skip, flag or rank one task; the skip/flag draw comes first so rates stay exact."""
        draw = self._rng.random() if self.skip_rate or self.flag_rate else 1.0
        if draw < self.skip_rate:
            return Judgement("skipped")
        if draw < self.skip_rate + self.flag_rate:
            return Judgement("flagged", reason="simulated annotator: flagged as unrankable")
        return Judgement("ranked", self.rank(prompt, responses))


# ---------------------------------------------------------------------------------------------
# Driving the store
# ---------------------------------------------------------------------------------------------


@dataclass
class AnnotationStats:
    """Counts from one ``annotate`` run; ``ties_seen`` counts rankings with at least one tie."""

    ranked: int = 0
    skipped: int = 0
    flagged: int = 0
    ties_seen: int = 0

    @property
    def handled(self) -> int:
        return self.ranked + self.skipped + self.flagged


def annotate(
    db: sqlite_utils.Database,
    annotator_name: str,
    annotator: SimulatedAnnotator,
    n: int,
    overlap: int = 1,
    assignment_timeout_s: float = 1800,
) -> AnnotationStats:
    """Answer up to ``n`` tasks as ``annotator_name`` through the Rank page's own store calls;
    stops early when the queue has nothing left for this annotator."""
    who = annotator_id(db, annotator_name)
    stats = AnnotationStats()
    for _ in range(n):
        judgement = answer_next(db, who, annotator, overlap, assignment_timeout_s)
        if judgement is None:
            break
        _count(stats, judgement)
    return stats


def answer_next(
    db: sqlite_utils.Database,
    who: int,
    annotator: SimulatedAnnotator,
    overlap: int = 1,
    assignment_timeout_s: float = 1800,
) -> Judgement | None:
    """Take annotator ``who``'s next task and answer it at once, as the Rank page would; None
    when the queue has nothing for them. Nothing is held between the two calls but the judging,
    so a caller that stops between calls never leaves an item assigned."""
    task = next_task(db, who, overlap, assignment_timeout_s)
    if task is None:
        return None
    judgement = annotator.judge(task.prompt, [r.text for r in task.responses])
    submit(db, who, task.comparison_id, judgement.status, judgement.ranks, judgement.reason)
    return judgement


def _count(stats: AnnotationStats, judgement: Judgement) -> None:
    if judgement.status == "skipped":
        stats.skipped += 1
    elif judgement.status == "flagged":
        stats.flagged += 1
    else:
        stats.ranked += 1
        ranks = judgement.ranks or []
        stats.ties_seen += len(set(ranks)) < len(ranks)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def agreement_counts(ranks: Sequence[int], true_scores: Sequence[float]) -> tuple[int, int]:
    """(agreeing, total) over the strictly ordered pairs of ``ranks``; pool these over many
    rankings, since one ranking has few pairs. A pair the oracle scores equal does not agree:
    the annotator claimed an order the oracle does not hold."""
    if len(ranks) != len(true_scores):
        raise ValueError("one true score per ranked response")
    agree = total = 0
    for i, ri in enumerate(ranks):
        for j, rj in enumerate(ranks):
            if ri < rj:
                total += 1
                agree += true_scores[i] > true_scores[j]
    return agree, total


def agreement_with_oracle(ranks: Sequence[int], true_scores: Sequence[float]) -> float:
    """Share of the ranking's strictly ordered pairs that the noiseless oracle orders the same
    way; NaN when the ranking orders nothing (all tied), since there is nothing to judge."""
    agree, total = agreement_counts(ranks, true_scores)
    return agree / total if total else math.nan


def held_out_score(
    oracle: Oracle, prompts: Sequence[str], responses_per_prompt: Sequence[Sequence[str]]
) -> float:
    """Mean oracle score over every (prompt, response) pair: the number the loop must raise on
    prompts it never trained on. Each prompt's responses are its samples from one policy."""
    if len(prompts) != len(responses_per_prompt):
        raise ValueError("one list of responses per prompt")
    scores = [
        oracle.score(prompt, response)
        for prompt, responses in zip(prompts, responses_per_prompt, strict=True)
        for response in responses
    ]
    if not scores:
        raise ValueError("no responses to score")
    return sum(scores) / len(scores)
