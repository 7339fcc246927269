"""A tiny, seeded question/answer world for the demo model.

Why it looks like this: the loop is only worth watching when the policy's samples differ in ways a
ranker can prefer. So the corpus mixes closed questions (arithmetic, facts: right or wrong) with
open-ended ones, and answers are phrased several ways, with and without extra sentences, so that
samples from the pre-trained model vary in correctness, length and wording. Arithmetic prompts
always read "What is A op B?" so a simulated annotator can recompute the answer.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable

ARITHMETIC, FACT, OPEN = "arithmetic", "fact", "open"
# How often each kind is drawn; closed questions dominate because they carry the clearest signal.
KIND_WEIGHTS = {ARITHMETIC: 0.55, FACT: 0.25, OPEN: 0.20}
# Share of arithmetic and fact answers that are right; the rest are plausible mistakes.
P_CORRECT = 0.7

_OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}

_COLOURS = {
    "the sky": "blue",
    "grass": "green",
    "snow": "white",
    "a banana": "yellow",
    "a tomato": "red",
    "coal": "black",
    "an orange": "orange",
    "a lemon": "yellow",
}
_ALL_COLOURS = sorted(set(_COLOURS.values()) | {"purple", "pink", "brown"})

_ABILITIES = {
    "fly": ["bird", "bat", "bee", "eagle", "owl"],
    "swim": ["fish", "duck", "seal", "dolphin", "frog"],
    "climb trees": ["cat", "monkey", "squirrel", "koala"],
    "live on a farm": ["cow", "pig", "sheep", "goat", "hen"],
}

_LEGS = {"a dog": 4, "a spider": 8, "a bird": 2, "an ant": 6, "a cow": 4, "a snake": 0}

_TOPICS = {
    "sea": ["blue", "deep", "wide", "salty", "calm"],
    "sun": ["bright", "warm", "hot", "yellow"],
    "rain": ["wet", "cold", "soft", "grey"],
    "moon": ["pale", "round", "quiet", "bright"],
    "forest": ["green", "dark", "quiet", "old"],
    "city": ["busy", "loud", "big", "bright"],
    "snow": ["white", "cold", "soft", "quiet"],
    "wind": ["strong", "cold", "fast", "wild"],
}
_CREATURES = {
    "cat": ["small", "soft", "quiet", "curious"],
    "dog": ["friendly", "loyal", "happy", "fast"],
    "horse": ["big", "strong", "fast", "brown"],
    "rabbit": ["small", "soft", "quick", "shy"],
    "mouse": ["tiny", "grey", "quick", "shy"],
    "fish": ["small", "shiny", "quick", "silver"],
}
_HABITS = {
    "cat": "likes to sleep in the sun",
    "dog": "likes to play outside",
    "horse": "likes to run in the field",
    "rabbit": "likes to eat carrots",
    "mouse": "likes to eat cheese",
    "fish": "likes to swim all day",
}

_OPENERS = ["Sure! ", "Okay. ", "Good question. ", "Let me see. "]
_EXTRAS = [
    "That was easy.",
    "I hope this helps.",
    "Let me know if you have more questions.",
    "Thank you for asking.",
    "I checked it twice.",
    "It is a nice question.",
    "Have a good day!",
]


def _arithmetic_prompts() -> list[str]:
    """Small operands keep the answers few enough for a tiny model to learn some of them."""
    plus = [f"What is {a} + {b}?" for a in range(1, 11) for b in range(1, 11)]
    minus = [f"What is {a} - {b}?" for a in range(1, 11) for b in range(1, a + 1)]
    times = [f"What is {a} * {b}?" for a in range(1, 6) for b in range(1, 6)]
    return plus + minus + times


def _fact_prompts() -> list[str]:
    return (
        [f"What colour is {thing}?" for thing in _COLOURS]
        + [f"Name an animal that can {ability}." for ability in _ABILITIES]
        + [f"How many legs does {animal} have?" for animal in _LEGS]
    )


def _open_prompts() -> list[str]:
    return (
        [f"Write a short sentence about the {topic}." for topic in _TOPICS]
        + [f"Tell me about the {topic}." for topic in _TOPICS]
        + [f"Describe a {creature}." for creature in _CREATURES]
    )


def _prompt_pools() -> dict[str, list[str]]:
    return {ARITHMETIC: _arithmetic_prompts(), FACT: _fact_prompts(), OPEN: _open_prompts()}


def demo_prompts(n: int | None, seed: int = 0, kinds: tuple[str, ...] | None = None) -> list[str]:
    """Distinct prompts of mixed kinds (or only ``kinds``), so a freshly seeded prompt table
    covers every kind asked for; ``n=None`` gives all there are."""
    rng = random.Random(seed)
    pools = {k: v for k, v in _prompt_pools().items() if kinds is None or k in kinds}
    available = sum(len(pool) for pool in pools.values())
    n = available if n is None else n
    if n > available:
        raise ValueError(f"the demo world has fewer than {n} distinct prompts")
    for pool in pools.values():
        rng.shuffle(pool)
    prompts: list[str] = []
    while len(prompts) < n:
        kinds = [kind for kind, pool in pools.items() if pool]
        kind = rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]
        prompts.append(pools[kind].pop())
    return prompts


def demo_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs for pre-training; prompts repeat, responses vary."""
    rng = random.Random(seed)
    pools = _prompt_pools()
    kinds = list(KIND_WEIGHTS)
    examples = []
    for kind in rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds], k=n):
        prompt = rng.choice(pools[kind])
        examples.append((prompt, _response(prompt, rng)))
    return examples


def _response(prompt: str, rng: random.Random) -> str:
    """One plausible answer; the prompt's wording says which world fact it asks about."""
    words = prompt.rstrip("?.").split()
    if prompt.startswith("What is "):
        core = _arithmetic_answer(rng, int(words[2]), words[3], int(words[4]))
    elif prompt.startswith("What colour is "):
        core = _colour_answer(rng, " ".join(words[3:]))
    elif prompt.startswith("Name an animal that can "):
        core = _ability_answer(rng, " ".join(words[5:]))
    elif prompt.startswith("How many legs does "):
        core = _legs_answer(rng, " ".join(words[4:-1]))
    elif prompt.startswith("Describe a "):
        core = _creature_answer(rng, words[2])
    else:
        core = _topic_answer(rng, words[-1])
    return _decorate(rng, core)


def _maybe_wrong(rng: random.Random, right: int, spread: int = 3) -> int:
    if rng.random() < P_CORRECT:
        return right
    return right + rng.choice([d for d in range(-spread, spread + 1) if d])


def _arithmetic_answer(rng: random.Random, a: int, op: str, b: int) -> str:
    value = _maybe_wrong(rng, _OPERATIONS[op](a, b))
    return rng.choice(
        [
            f"{a} {op} {b} = {value}.",
            f"{a} {op} {b} is {value}.",
            f"The answer is {value}.",
            f"It is {value}.",
            f"I think it is {value}.",
            f"{value}.",
        ]
    )


def _colour_answer(rng: random.Random, thing: str) -> str:
    right = _COLOURS[thing]
    colour = right if rng.random() < P_CORRECT else rng.choice(_ALL_COLOURS)
    subject = thing[0].upper() + thing[1:]
    return rng.choice(
        [
            f"{subject} is {colour}.",
            f"{colour.capitalize()}.",
            f"It is {colour}.",
            f"I think {thing} is {colour}.",
            f"{subject} is usually {colour}.",
        ]
    )


def _ability_answer(rng: random.Random, ability: str) -> str:
    if rng.random() < P_CORRECT:
        animal = rng.choice(_ABILITIES[ability])
    else:
        animal = rng.choice(
            [a for key, group in _ABILITIES.items() if key != ability for a in group]
        )
    return rng.choice(
        [
            f"A {animal} can {ability}.",
            f"{animal.capitalize()}.",
            f"The {animal}.",
            f"I think a {animal} can {ability}.",
        ]
    )


def _legs_answer(rng: random.Random, animal: str) -> str:
    legs = max(0, _maybe_wrong(rng, _LEGS[animal], spread=2))
    subject = animal[0].upper() + animal[1:]
    return rng.choice(
        [
            f"{subject} has {legs} legs.",
            f"{legs}.",
            f"It has {legs} legs.",
            f"I think {animal} has {legs} legs.",
        ]
    )


def _topic_answer(rng: random.Random, topic: str) -> str:
    first, second = rng.sample(_TOPICS[topic], 2)
    return rng.choice(
        [
            f"The {topic} is {first}.",
            f"The {topic} is {first} and {second}.",
            f"I love the {topic} because it is {first}.",
            f"The {topic} can be {first} and {second} at the same time.",
        ]
    )


def _creature_answer(rng: random.Random, creature: str) -> str:
    first, second = rng.sample(_CREATURES[creature], 2)
    habit = _HABITS[creature]
    return rng.choice(
        [
            f"A {creature} is {first}.",
            f"A {creature} is {first} and {second}.",
            f"A {creature} is {first}. It {habit}.",
            f"My {creature} is {first} and {second}, and it {habit}.",
        ]
    )


def _decorate(rng: random.Random, core: str) -> str:
    """Optional opener and trailing sentences spread response lengths from 1 to ~30 tokens."""
    opener = rng.choice(_OPENERS) if rng.random() < 0.2 else ""
    n_extra = rng.choices([0, 1, 2], weights=[0.5, 0.35, 0.15])[0]
    return " ".join([opener + core, *rng.sample(_EXTRAS, n_extra)])
