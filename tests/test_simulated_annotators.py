"""Simulated annotators beside people (issue 12): their rankings are marked by their annotator's
role, stay out of every agreement figure, train and judge versions only when the operator opts
in, are removed in one action; a real background process ranks at the chosen pace, waits for
items, and stops on request or when its app is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlite_utils
from app_helpers import operator_page
from store_helpers import add_texts, fresh_db, make_comparisons, old_schema
from streamlit.testing.v1 import AppTest
from worker_helpers import REPO, wait_for

from rlhf_loop import parent_watch
from rlhf_loop.config import Settings
from rlhf_loop.export import ranking_records
from rlhf_loop.human_verdicts import blind_ranking_count, blind_rankings
from rlhf_loop.reward.job import retrain_due
from rlhf_loop.simulate import BUILT_IN_ORACLES, ArithmeticOracle, SimulatedAnnotator, answer_next
from rlhf_loop.simulate_launch import LOG_FILE, start_simulation
from rlhf_loop.simulate_process import annotator_name
from rlhf_loop.store.annotator_table import annotator_table
from rlhf_loop.store.annotators import SIMULATED, AnnotatorNameError, annotator_id
from rlhf_loop.store.db import open_db
from rlhf_loop.store.generations import Sample, add_comparisons
from rlhf_loop.store.quality import annotator_report, judgements, overall
from rlhf_loop.store.schema import SCHEMA_VERSION, schema_version
from rlhf_loop.store.simulated import (
    REMOVED_EVENT,
    RankingCounts,
    SimulationRunning,
    ranking_counts,
    remove_simulated,
    set_simulated_included,
    simulated_annotators,
    simulated_included,
)
from rlhf_loop.store.simulation_runs import (
    STOPPED,
    PlanError,
    SimulationPlan,
    create_run,
    finish,
    get_run,
    request_stop,
    shown_state,
)
from rlhf_loop.store.submissions import submit
from rlhf_loop.store.tasks import next_task, tasks_left_for
from rlhf_loop.store.training_rankings import training_ranking_count

TIMEOUT = 600
OVERLAP = 2  # a person and a simulated annotator rank the same items


def _person_ranks(db: sqlite_utils.Database, name: str, n: int) -> None:
    who = annotator_id(db, name)
    for _ in range(n):
        task = next_task(db, who, OVERLAP, TIMEOUT)
        submit(db, who, task.comparison_id, "ranked", list(range(1, task.k + 1)))


def _simulated(db: sqlite_utils.Database, index: int = 1, run: int | None = None) -> int:
    run = run or create_run(db, SimulationPlan("arithmetic"), "olga")
    return annotator_id(db, annotator_name("arithmetic", run, index), SIMULATED, run)


def _sim_ranks(db: sqlite_utils.Database, who: int, n: int, seed: int = 0) -> None:
    annotator = SimulatedAnnotator(ArithmeticOracle(), noise=0.5, seed=seed)
    for _ in range(n):
        assert answer_next(db, who, annotator, OVERLAP, TIMEOUT).status == "ranked"


@pytest.fixture
def mixed(tmp_path: Path) -> sqlite_utils.Database:
    """Four items, each ranked by a person ('ada') and by a simulated annotator of run 1,
    which has ended."""
    db = fresh_db(tmp_path)
    make_comparisons(db, 4, k=3)
    _person_ranks(db, "ada", 4)
    _sim_ranks(db, _simulated(db), 4)
    finish(db, 1, STOPPED, "done")
    return db


def test_simulated_rankings_train_only_once_the_operator_opts_in(mixed) -> None:
    settings = Settings(reward_retrain_every=5)
    assert ranking_counts(mixed) == RankingCounts(4, 4, False)
    assert not simulated_included(mixed)
    assert training_ranking_count(mixed) == 4
    assert {r["annotator"] for r in ranking_records(mixed)} == {"ada"}
    assert not retrain_due(mixed, settings)  # 4 < 5: the simulated four do not count

    set_simulated_included(mixed, True, "olga")
    assert training_ranking_count(mixed) == len(list(ranking_records(mixed))) == 8
    assert retrain_due(mixed, settings)
    set_simulated_included(mixed, True, "olga")  # no change: no new row, no event
    assert mixed["simulated_opt_in"].count == 1

    set_simulated_included(mixed, False, "olga")
    assert training_ranking_count(mixed) == 4
    kinds = [e["kind"] for e in mixed["events"].rows_where("kind = 'simulated_opt_in_changed'")]
    assert len(kinds) == 2


def test_agreement_figures_never_count_a_simulated_annotator(mixed) -> None:
    for included in (False, True):
        set_simulated_included(mixed, included, "olga")
        assert {j.annotator for j in judgements(mixed, gold=False)} == {"ada"}
        assert {j.annotator for j in judgements(mixed)} == {"ada"}
        assert overall(mixed) == {"alpha": None, "items_shared": 0, "annotators": 1}
        assert [r["annotator"] for r in annotator_report(mixed)] == ["ada"]
        table = annotator_table(mixed)
        assert [r["annotator"] for r in table.rows] == ["ada"] and table.without_answers == []
    assert simulated_annotators(mixed) == [
        {"annotator": "sim-arithmetic-run1-1", "run": 1, "ranked": 4}
    ]


def test_people_and_simulations_cannot_take_each_others_names(mixed) -> None:
    with pytest.raises(AnnotatorNameError, match="simulated annotator"):
        annotator_id(mixed, "sim-arithmetic-run1-1")
    with pytest.raises(AnnotatorNameError, match="simulated annotator"):
        annotator_id(mixed, "sim-arithmetic-run1-1", role="operator")
    with pytest.raises(AnnotatorNameError, match="a person"):
        annotator_id(mixed, "ada", SIMULATED, 1)
    assert annotator_id(mixed, "sim-arithmetic-run1-1", SIMULATED, 1) == _simulated(mixed, 1, 1)


def test_version_comparisons_count_simulated_blind_answers_only_when_opted_in(tmp_path) -> None:
    db = fresh_db(tmp_path)
    add_texts(db, [f"blind {i}" for i in range(3)])
    prompts = [r["id"] for r in db["prompts"].rows]
    samples = [
        [Sample(f"v{v} answer {j} to {p}", 5, True, policy_version=v) for j, v in enumerate(mix)]
        for p in prompts
        for mix in [(1, 2, 1, 2)]
    ]
    add_comparisons(db, 2, prompts, samples, {}, blind_versions=(1, 2))
    _person_ranks(db, "ada", 3)
    _sim_ranks(db, _simulated(db), 3)
    assert blind_ranking_count(db) == len(blind_rankings(db)) == 3
    set_simulated_included(db, True, "olga")
    assert blind_ranking_count(db) == len(blind_rankings(db)) == 6


def test_removal_waits_for_running_simulations_then_retracts_every_simulated_answer(
    mixed,
) -> None:
    settings = Settings()
    set_simulated_included(mixed, True, "olga")
    run = create_run(mixed, SimulationPlan("arithmetic"), "olga")
    held = _simulated(mixed, 1, run)
    make_comparisons(mixed, 1, k=3)
    assert next_task(mixed, held, OVERLAP, TIMEOUT) is not None  # an item it holds
    with pytest.raises(SimulationRunning, match=f"still running \\(run {run}\\)"):
        remove_simulated(mixed, "olga", settings.lease_timeout_s)
    assert ranking_counts(mixed).simulated == 4

    finish(mixed, run, STOPPED, "test")
    assert remove_simulated(mixed, "olga", settings.lease_timeout_s) == 4
    assert ranking_counts(mixed) == RankingCounts(4, 0, True)
    assert training_ranking_count(mixed) == 4  # people's only, though simulated ones may train
    assert mixed["assignments"].count_where("closed_at IS NULL AND annotator_id = ?", [held]) == 0
    assert mixed["rankings"].count == 8  # retracted, not deleted
    event = next(mixed["events"].rows_where("kind = ?", [REMOVED_EVENT]))
    assert json.loads(event["payload"])["removed"] == 4
    # the items the simulation answered return to the queue for a person
    assert tasks_left_for(mixed, annotator_id(mixed, "bob"), OVERLAP, TIMEOUT) == 5
    assert remove_simulated(mixed, "olga", settings.lease_timeout_s) == 0


def test_a_run_that_stopped_beating_is_lost_and_does_not_block_removal(tmp_path) -> None:
    db = fresh_db(tmp_path)
    run = create_run(db, SimulationPlan("length"), "olga")
    row = get_run(db, run)
    assert shown_state(row, 30.0) == "starting"
    assert shown_state(row, 30.0, at=row["heartbeat_at"] + 31) == "lost"
    assert request_stop(db, run, "olga")
    assert shown_state(get_run(db, run), 30.0) == "stopping"
    assert remove_simulated(db, "olga", timeout_s=0.0) == 0  # its heartbeat is already stale


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"oracle": "kindness"}, "unknown oracle"),
        ({"annotators": 0}, "between 1 and"),
        ({"noise": -0.1}, "noise"),
        ({"pace_s": 0.0}, "pace"),
    ],
)
def test_a_plan_that_cannot_run_is_refused(changes, message) -> None:
    plan = SimulationPlan(**({"oracle": "arithmetic"} | changes))
    with pytest.raises(PlanError, match=message):
        plan.checked(frozenset(BUILT_IN_ORACLES))


def test_a_schema_v6_database_migrates_with_its_people_unsimulated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = old_schema(sqlite_utils.Database(path), 6)
    old["annotators"].insert({"name": "ada", "role": "annotator", "created_at": 1.0})
    old.conn.close()
    db = open_db(path)
    assert schema_version(db) == SCHEMA_VERSION
    assert db["annotators"].get(1)["simulation_run"] is None
    assert not simulated_included(db) and ranking_counts(db) == RankingCounts(0, 0, False)
    assert annotator_id(db, "ada") == 1


# --- the background process ------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a spawned process: this data dir, no settings file of the repository."""
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("RLHF_LOOP_CONFIG", str(tmp_path / "empty.toml"))
    return Settings(data_dir=str(tmp_path), overlap=1, lease_timeout_s=5.0)


def _created(db: sqlite_utils.Database) -> list[float]:
    return [r["created_at"] for r in db["rankings"].rows_where(order_by="id")]


def test_a_run_ranks_at_its_pace_waits_for_items_and_stops_on_request(
    tmp_path: Path, config_file: Settings
) -> None:
    db = fresh_db(tmp_path)
    make_comparisons(db, 6, k=3)
    plan = SimulationPlan("arithmetic", annotators=2, pace_s=0.6)
    started = start_simulation(db, config_file, plan, "olga")
    try:
        wait_for(lambda: db["rankings"].count == 6, 20, "six rankings")
        times = _created(db)
        # two annotators, each one ranking per 0.6 s, staggered: the sixth 1.5 s after the first
        assert times[-1] - times[0] >= 1.5 * 0.9
        assert times[-1] - times[0] < 1.5 + 6  # slack for a loaded machine
        wait_for(
            lambda: "2 waiting for items" in (get_run(db, started.run)["message"] or ""),
            10,
            "the annotators to wait",
        )
        assert started.process.poll() is None  # an empty queue is waited on, not an exit
        make_comparisons(db, 2, k=3)
        wait_for(lambda: db["rankings"].count == 8, 10, "the new items ranked")
        names = {r["name"] for r in db["annotators"].rows_where("role = ?", [SIMULATED])}
        assert names == {f"sim-arithmetic-run{started.run}-{i}" for i in (1, 2)}
        assert ranking_counts(db) == RankingCounts(0, 8, False)
        assert request_stop(db, started.run, "olga")
        assert started.process.wait(10) == 0
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()
    row = get_run(db, started.run)
    assert (row["state"], row["message"]) == (STOPPED, "stopped on request")
    assert db["assignments"].count_where("closed_at IS NULL") == 0
    assert "stopped: stopped on request" in (tmp_path / LOG_FILE).read_text()


APP = """
import sys, time
from rlhf_loop.config import Settings
from rlhf_loop.simulate_launch import start_simulation
from rlhf_loop.store.db import open_db
from rlhf_loop.store.simulation_runs import SimulationPlan
settings = Settings(data_dir=sys.argv[1], lease_timeout_s=5.0)
started = start_simulation(open_db(settings.resolved_db_path), settings,
                           SimulationPlan("keyword", annotators=1, pace_s=0.2), "olga")
print(started.process.pid, flush=True)
time.sleep(600)
"""


def test_a_run_stops_when_the_app_that_started_it_is_killed(
    tmp_path: Path, config_file: Settings
) -> None:
    db = fresh_db(tmp_path)
    app = subprocess.Popen(
        [sys.executable, "-c", APP, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    pid = int(app.stdout.readline())
    simulation = parent_watch.identity(pid)
    try:
        wait_for(lambda: "waiting for items" in (get_run(db, 1)["message"] or ""), 20, "a beat")
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait()
    try:
        wait_for(lambda: not parent_watch.is_running(simulation), 10, "the simulation to exit")
    finally:
        if parent_watch.is_running(simulation):
            os.kill(pid, signal.SIGKILL)  # started by this test's stand-in app
    row = get_run(db, 1)
    assert (row["state"], row["message"]) == (STOPPED, "the app that started it has exited")
    assert time.time() - row["ended_at"] < 15


# --- the pages -------------------------------------------------------------------------------

PAGE = "pages/simulated.py"


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_the_page_starts_stops_opts_in_and_removes_simulated_rankings(data_dir: Path) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 3, k=3)
    at = operator_page(PAGE)
    assert not at.exception and at.title[0].value == "Simulated annotators"
    at.number_input(key="sim-annotators").set_value(1)
    at.number_input(key="sim-pace").set_value(0.2)
    _button(at, "Start simulated annotators").click().run()
    try:
        assert "Run 1 started with 1 annotator(s)" in at.success[0].value
        wait_for(lambda: db["rankings"].count == 3, 20, "the queued items ranked")
        at.run()
        assert _button(at, "Remove simulated rankings").disabled  # a run is live
        _button(at, "Stop run 1").click().run()
        assert "Run 1 stops after its current ranking" in at.info[0].value
        wait_for(lambda: get_run(db, 1)["state"] == STOPPED, 10, "the run to stop")
    finally:
        pid = get_run(db, 1)["pid"]
        if get_run(db, 1)["state"] != STOPPED and pid:
            os.kill(pid, signal.SIGKILL)  # the process this test started
    at.run()
    assert "Stop run 1" not in [b.label for b in at.button]
    assert at.dataframe[0].value["rankings"].tolist() == [3]

    at.toggle[0].set_value(True).run()
    assert simulated_included(db) and training_ranking_count(db) == 3
    assert at.toggle[0].value

    _button(at, "Remove simulated rankings").click().run()  # not confirmed
    assert "Tick the box" in at.error[0].value and ranking_counts(db).simulated == 3
    at.checkbox(key="sim-remove-sure").check()
    _button(at, "Remove simulated rankings").click().run()
    assert "3 simulated answer(s) removed" in at.success[0].value
    assert ranking_counts(db).simulated == training_ranking_count(db) == 0


def test_the_dashboard_shows_simulated_rankings_apart_from_people(
    data_dir: Path,
) -> None:
    db = fresh_db(data_dir)
    make_comparisons(db, 4, k=3)
    _person_ranks(db, "ada", 4)
    _sim_ranks(db, _simulated(db), 4)
    at = operator_page("pages/dashboard.py")
    assert not at.exception
    assert at.metric[2].label == "Annotators" and at.metric[2].value == "1"
    assert at.dataframe[0].value["annotator"].tolist() == ["ada"]
    assert "4 by people, 4 by simulated annotators" in " ".join(c.value for c in at.caption)
    assert at.dataframe[1].value["annotator"].tolist() == ["sim-arithmetic-run1-1"]
