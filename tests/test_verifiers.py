"""Reward functions (verifiable rewards): the built-ins, the settings that name them, every bad
function a user can write, and PPO rounds on functions alone (no reward model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from job_helpers import job_context
from store_helpers import add_texts, fresh_db

from rlhf_loop.config import ConfigError, Settings
from rlhf_loop.job_runner import JobError
from rlhf_loop.model.demo_corpus import ARITHMETIC, demo_prompts
from rlhf_loop.ppo import round as ppo_round
from rlhf_loop.store import jobs
from rlhf_loop.store.generations import prompts_to_sample
from rlhf_loop.store.versions import live_policy
from rlhf_loop.verifiers import (
    FUNCTION_METRIC,
    RewardFunction,
    VerifierFailed,
    arithmetic,
    for_people,
    function_values,
    reward_functions,
)

ARITHMETIC_FN = "rlhf_loop.verifiers:arithmetic"


def explodes(prompt: str, response: str) -> float | None:  # named by the tests below
    raise ZeroDivisionError("checker bug")


def not_a_number(prompt: str, response: str) -> float | None:
    return math.nan if "7" in prompt else 1.0


NOT_CALLABLE = 3


def test_arithmetic_pays_only_the_one_right_number_and_skips_other_prompts() -> None:
    prompt = "What is 7 + 5?"
    assert arithmetic(prompt, "7 + 5 is 12.") == 1.0
    assert arithmetic(prompt, "It is 13.") == 0.0
    assert arithmetic(prompt, "7 + 5") == 0.0  # the echoed question is not an answer
    assert arithmetic(prompt, "12 or 13") == 0.0  # hedging does not pay
    assert arithmetic(prompt, "") == 0.0
    assert arithmetic("Tell me about tea.", "12") is None


def test_built_ins_read_their_settings_and_refuse_without_them() -> None:
    settings = Settings(
        reward_functions="rlhf_loop.verifiers:format_check=0.5, rlhf_loop.verifiers:length_budget",
        verifier_format_pattern=r"^[A-Z].*\.$",
        verifier_max_words=4,
    )
    check, budget = reward_functions(settings)
    assert (check.weight, budget.weight) == (0.5, 1.0)
    assert check.fn("q", "Fine.") == 1.0 and check.fn("q", "fine") == 0.0
    assert budget.fn("q", "one two three four") == 0.0
    assert budget.fn("q", "one two three four five six") == -0.5
    assert budget.fn("q", "word " * 40) == -1.0
    with pytest.raises(ConfigError, match="verifier_format_pattern"):
        reward_functions(Settings(reward_functions="rlhf_loop.verifiers:format_check"))
    with pytest.raises(ConfigError, match="verifier_format_pattern: "):
        reward_functions(
            Settings(
                reward_functions="rlhf_loop.verifiers:format_check", verifier_format_pattern="(["
            )
        )
    with pytest.raises(ConfigError, match="verifier_max_words"):
        reward_functions(Settings(reward_functions="rlhf_loop.verifiers:length_budget"))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("arithmetic", "not module:attribute"),
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
        ("rlhf_loop.verifiers:nothing_here", "has no 'nothing_here'"),
        (f"{ARITHMETIC_FN}=heavy", "weight of 'rlhf_loop.verifiers:arithmetic' is not a number"),
        (f"{ARITHMETIC_FN}=nan", "must be finite"),
        ("test_verifiers:NOT_CALLABLE", "is not callable"),
        (f"{ARITHMETIC_FN}, {ARITHMETIC_FN}=2", "named twice"),
    ],
)
def test_a_bad_reward_functions_setting_is_refused_naming_the_entry(
    spec: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        reward_functions(Settings(reward_functions=spec))


def test_values_are_weighted_summed_where_they_apply_and_averaged_per_function() -> None:
    functions = [
        RewardFunction("a", arithmetic, 2.0),
        RewardFunction("len", lambda p, r: -float(len(r.split()) > 3), 0.5),
    ]
    prompts = ["What is 2 * 3?", "What is 2 * 3?", "Say hi."]
    totals, means = function_values(functions, prompts, ["6", "5 or so", "hi there you all"])
    assert totals == [2.0, 0.0, -0.5]
    assert means == {"a": 0.5, "len": pytest.approx(-1 / 3)}
    assert function_values([RewardFunction("a", arithmetic, 1.0)], ["Hi"], ["x"])[1] == {"a": None}


@pytest.mark.parametrize(
    "fn, message",
    [(explodes, "raised ZeroDivisionError: checker bug"), (not_a_number, "returned nan")],
)
def test_a_function_that_raises_or_returns_nan_is_named_with_the_prompt(fn, message) -> None:
    with pytest.raises(VerifierFailed, match=message) as caught:
        function_values([RewardFunction("mine", fn, 1.0)], ["What is 7 + 1?"], ["8"])
    assert "mine" in str(caught.value) and "What is 7 + 1?" in str(caught.value)


def _arithmetic_db(tmp_path: Path):
    db = fresh_db(tmp_path)
    add_texts(db, demo_prompts(60, kinds=(ARITHMETIC,)))
    return db


def test_a_round_on_the_arithmetic_function_alone_needs_no_reward_model(
    tmp_path: Path, demo_model_path: Path
) -> None:
    db = _arithmetic_db(tmp_path)
    ctx = job_context(
        db,
        tmp_path,
        demo_model_path,
        "ppo_round",
        reward_functions=ARITHMETIC_FN,
        reward_model_weight=0.0,
    )
    result = ppo_round.run_ppo_round(ctx)
    live = live_policy(db, "demo")
    assert live["version"] == result["version"] and live["metrics"]["reward_version"] is None
    assert live["metrics"]["reward_functions"] == ARITHMETIC_FN
    after = live["metrics"]["functions_after"][ARITHMETIC_FN]
    assert 0.0 <= after <= 1.0
    logged = [
        m for m in jobs.job_metrics(db, ctx.job.id) if m["name"] == FUNCTION_METRIC + ARITHMETIC_FN
    ]
    assert len(logged) == ctx.settings.ppo_steps and all(0 <= m["value"] <= 1 for m in logged)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reward_model_weight": 0.0}, "nothing to reward"),
        (
            {"reward_functions": "test_verifiers:explodes", "reward_model_weight": 0.0},
            "test_verifiers:explodes raised ZeroDivisionError: checker bug on the prompt 'What",
        ),
        ({"reward_functions": ARITHMETIC_FN}, "no reward model yet.*or name reward_functions"),
    ],
)
def test_a_round_with_nothing_to_reward_or_a_failing_function_says_why_and_changes_nothing(
    tmp_path: Path, demo_model_path: Path, overrides: dict, message: str
) -> None:
    db = _arithmetic_db(tmp_path)
    before = live_policy(db, "demo")["version"]
    with pytest.raises(JobError, match=message):
        ppo_round.run_ppo_round(
            job_context(db, tmp_path, demo_model_path, "ppo_round", **overrides)
        )
    assert live_policy(db, "demo")["version"] == before


def test_prompts_a_program_checks_can_be_kept_out_of_the_human_queue(tmp_path: Path) -> None:
    db = fresh_db(tmp_path)
    add_texts(db, ["What is 2 + 3?", "Tell me about tea.", "What is 4 * 5?", "Say hi."])
    checked = Settings(reward_functions=ARITHMETIC_FN, verified_prompts_to_humans=False)
    people = [text for _, text in prompts_to_sample(db, 0, 10, for_people(checked))]
    assert people == ["Tell me about tea.", "Say hi."]
    assert [t for _, t in prompts_to_sample(db, 0, 1, for_people(checked))] == [
        "Tell me about tea."
    ]
    assert for_people(checked.replace(verified_prompts_to_humans=True)) is None
    assert for_people(Settings(verified_prompts_to_humans=False)) is None  # no functions named
    failing = Settings(reward_functions="test_verifiers:explodes", verified_prompts_to_humans=False)
    assert for_people(failing)("Say hi.") is False  # failing on the probe: left to the program
