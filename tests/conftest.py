"""Shared fixtures: one demo model per machine, reused by every test run.

The model lives in a cache outside the test's tmp dirs so that only the first run on a machine pays
for pre-training; its spec is the one ``Settings(demo_pretrain_steps=TEST_PRETRAIN_STEPS)`` gives,
so an app or worker started with ``RLHF_LOOP_DEMO_PRETRAIN_STEPS=TEST_PRETRAIN_STEPS`` and
``RLHF_LOOP_MODEL_CACHE_DIR=<demo_model_path.parent>`` finds the same model instead of building.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Tests start workers and Streamlit beside this process on 2 cores: spinning OpenMP threads
# would starve them (see rlhf_loop/__main__.py). Set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from rlhf_loop.config import Settings
from rlhf_loop.model.demo_build import DemoSpec, ensure_demo_model, spec_from_settings

# Fewer steps than the app's default (fast first run), still enough to answer in the Q/A format.
TEST_PRETRAIN_STEPS = 300
TEST_MODEL_CACHE = Path(
    os.environ.get("RLHF_LOOP_TEST_MODEL_CACHE", Path.home() / ".cache" / "rlhf-loop-test")
).expanduser()


@pytest.fixture(scope="session")
def demo_spec() -> DemoSpec:
    return spec_from_settings(Settings(demo_pretrain_steps=TEST_PRETRAIN_STEPS))


@pytest.fixture(scope="session")
def demo_model_path(demo_spec: DemoSpec) -> Path:
    return ensure_demo_model(TEST_MODEL_CACHE, demo_spec)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test, restored after it (for tests on tiny tensors)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def keep_main_module() -> Iterator[None]:
    """AppTest leaves ``sys.modules["__main__"]`` pointing at the app script; a later
    multiprocessing "spawn" child would then re-run the app as its main module and start a
    worker on the default data dir. Put the real main module back after every test."""
    import sys

    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's settings for an AppTest: this test's data dir, defaults, no worker."""
    monkeypatch.setenv("RLHF_LOOP_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    monkeypatch.setenv("RLHF_LOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RLHF_LOOP_AUTO_START_WORKER", "false")
    return tmp_path


@pytest.fixture
def trained(tmp_path: Path, demo_model_path: Path):
    """A database with 40 oracle rankings and a reward model v1 trained on them."""
    import torch
    from job_helpers import job_context
    from store_helpers import fresh_db, oracle_rankings

    from rlhf_loop.reward.job import run_train_reward

    torch.manual_seed(0)
    db = fresh_db(tmp_path)
    oracle_rankings(db, 40)
    run_train_reward(job_context(db, tmp_path, demo_model_path, "train_reward"))
    return db
