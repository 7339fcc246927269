"""Smoke test of ``python -m rlhf_loop demo`` on the tests' small model: one iteration, a few
rankings. The learning claim itself lives in bench/ and the README's measured figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlhf_loop.__main__ import main
from rlhf_loop.simulate import parse_arithmetic
from rlhf_loop.store.db import open_db


def test_demo_prints_one_line_per_iteration_and_writes_json(
    tmp_path: Path, demo_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "demo"
    argv = ["demo", "--iterations", "1", "--rankings", "12", "--seed", "0"]
    code = main([*argv, "--model", str(demo_model_path), "--data-dir", str(data_dir)])
    assert code == 0
    out = capsys.readouterr().out
    line = re.search(
        r"^iteration 1: (\d+) rankings; reward model v1 held-out accuracy (\S+) (\S+, \S+|n/a) "
        r"on (\d+) pairs; (.+); live v(\d+) arithmetic correctness ([0-9.]+) \(±[0-9.]+\); "
        r"KL (\S+)$",
        out,
        re.MULTILINE,
    )
    assert line, out
    assert int(line[1]) == 12
    result = json.loads((data_dir / "demo.json").read_text())
    assert result["oracle"] == "arithmetic" and result["seed"] == 0
    before, first = result["iterations"]
    assert before["iteration"] == 0 and before["rankings"] == 0
    assert first["iteration"] == 1 and first["rankings"] == 12
    assert first["reward_version"] == 1 and first["heldout_pairs"] == int(line[4])
    assert first["oracle_metric"] == "arithmetic correctness"
    assert 0.0 <= first["oracle_value"] <= 1.0
    assert f"{first['oracle_value']:.3f}" == line[7]
    assert first["round_ran"] == (first["kl"] is not None)
    assert result["summary"]["start"] == before["oracle_value"]
    assert result["summary"]["end"] == first["oracle_value"]
    assert result["summary"]["kl_within_budget"]
    # the arithmetic demo ranks arithmetic only: other prompts would dilute its oracle's signal
    db = open_db(data_dir / "rlhf.db")
    texts = [r["text"] for r in db["prompts"].rows]
    assert len(texts) == 180 and all(parse_arithmetic(t) for t in texts)
    plotted = (data_dir / "demo.png").exists()
    assert plotted == ("plot: " in out), out


def test_demo_refuses_a_used_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rlhf.db").write_text("")
    assert main(["demo", "--data-dir", str(tmp_path), "--model", "unused"]) == 2
    assert "fresh --data-dir" in capsys.readouterr().out


def test_a_refused_round_is_a_reason_not_a_crash(
    tmp_path: Path, demo_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live policy already past the KL budget makes the round refuse (``JobError``): the loop
    records why, fails the job as the worker would, and goes on to the next iteration."""
    import rlhf_loop.simulate_loop as loop
    from rlhf_loop.config import Settings
    from rlhf_loop.demo_command import add_demo_prompts
    from rlhf_loop.job_runner import JobError
    from rlhf_loop.simulate import ArithmeticOracle, SimulatedAnnotator

    def refuse(ctx):
        raise JobError("the live policy v3 is already 8.64 nats per response from the reference")

    monkeypatch.setattr(loop, "run_ppo_round", refuse)
    db = open_db(tmp_path / "rlhf.db")
    add_demo_prompts(db, 40)
    settings = Settings(data_dir=str(tmp_path), **loop.DEMO_LOOP_SETTINGS)
    annotator = SimulatedAnnotator(ArithmeticOracle(), noise=0.3, tie_threshold=0.5, seed=0)
    curve = loop.run_loop(db, settings, str(demo_model_path), annotator, 2, 8, force_rounds=True)
    assert (
        curve.events
        == ["no round: the live policy v3 is already 8.64 nats per response from the reference"] * 2
    )
    assert [j["status"] for j in db["jobs"].rows_where("kind = 'ppo_round'")] == ["failed"] * 2
    assert len(curve.live_versions) == 3 and curve.kl == []
