"""The online loop learns: rank -> reward model -> PPO -> new samples, twice, on the demo model.

A simulated annotator with a hidden preference (answers near five words) ranks the live policy's
samples through the store; each iteration retrains the reward model and runs a PPO round. The
oracle's mean score on held-out prompts must rise while the KL to the base model stays bounded.
The longer run with a plot is bench/loop_learning.py.
"""

from __future__ import annotations

from pathlib import Path

import sqlite_utils
import torch
from store_helpers import fresh_db

from rlhf_loop.config import Settings
from rlhf_loop.demo_command import HUMAN_DEMO_SETTINGS, add_demo_prompts
from rlhf_loop.simulate import LengthOracle, SimulatedAnnotator
from rlhf_loop.simulate_loop import DEMO_LOOP_SETTINGS, LoopCurve, run_loop

# The demo's rounds are sized for arithmetic on the shipped model; a length preference on the
# tests' small model is learnt in a fraction of them.
SHORT_ROUNDS = {"ppo_steps": 10, "ppo_samples_per_prompt": 2, "ppo_minibatch": 16}


def _two_iterations(
    tmp_path: Path, model: Path, settings: dict
) -> tuple[LoopCurve, sqlite_utils.Database]:
    """Two loop iterations of 64 rankings by an annotator who prefers ~5-word answers."""
    torch.manual_seed(0)
    db = fresh_db(tmp_path)
    add_demo_prompts(db)
    annotator = SimulatedAnnotator(
        LengthOracle(target_words=5), noise=0.3, tie_threshold=0.5, seed=0
    )
    config = Settings(data_dir=str(tmp_path), **(settings | SHORT_ROUNDS))
    return run_loop(db, config, str(model), annotator, 2, 64), db


def test_loop_raises_the_oracle_score_with_bounded_kl(
    tmp_path: Path, demo_model_path: Path
) -> None:
    curve, _ = _two_iterations(tmp_path, demo_model_path, DEMO_LOOP_SETTINGS)
    print(f"oracle score per iteration: {curve.oracle_scores}; KL: {curve.kl}")
    assert curve.oracle_scores[-1] > curve.oracle_scores[0] + 0.5  # a word closer to the target
    assert all(kl < 10.0 for kl in curve.kl), curve.kl  # nats per response, against the base


def test_loop_under_human_adoption_promotes_the_candidate_people_prefer(
    tmp_path: Path, demo_model_path: Path
) -> None:
    """The smoke test of bench/loop_learning.py: the round's version is a candidate, blind
    items compare it with the base, and people's rankings (the oracle's) make it live."""
    curve, db = _two_iterations(tmp_path, demo_model_path, HUMAN_DEMO_SETTINGS)
    print(f"live versions {curve.live_versions}; events {curve.events}")
    assert curve.live_versions[1] == curve.live_versions[0]  # a candidate does not serve at once
    assert curve.live_versions[-1] != curve.live_versions[0]
    assert any("promoted: people prefer it" in e for e in curve.events)
    new, base = curve.live_versions[-1], curve.live_versions[0]
    assert curve.version_scores[new][0] > curve.version_scores[base][0]  # the oracle agrees
    assert db["comparisons"].count_where("blind_versions IS NOT NULL") > 0
