"""A real browser on a real ``streamlit run``: the app starts its worker, an item appears, an
annotator ranks it with a tie from the keyboard, and the row is in SQLite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_PRETRAIN_STEPS

from rlhf_loop.store import leases
from rlhf_loop.store.db import open_db
from rlhf_loop.worker import LEASE

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(
        "Debian chromium is not installed (apt-get install chromium)", allow_module_level=True
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("streamlit did not become healthy")


@pytest.fixture
def app_url(tmp_path: Path, demo_model_path: Path) -> Iterator[tuple[str, Path]]:
    """``streamlit run app.py`` on loopback with a fresh database and the cached test model."""
    (tmp_path / "empty.toml").write_text("")
    env = os.environ | {
        "RLHF_LOOP_CONFIG": str(tmp_path / "empty.toml"),
        "RLHF_LOOP_DATA_DIR": str(tmp_path),
        "RLHF_LOOP_MODEL_CACHE_DIR": str(demo_model_path.parent),
        "RLHF_LOOP_DEMO_PRETRAIN_STEPS": str(TEST_PRETRAIN_STEPS),
        "RLHF_LOOP_DEVICE": "cpu",
        "RLHF_LOOP_K": "3",
        "RLHF_LOOP_MAX_NEW_TOKENS": "16",
        "RLHF_LOOP_QUEUE_DEPTH": "4",
        "RLHF_LOOP_SAMPLE_BATCH_PROMPTS": "4",
    }
    port = _free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    command += ["--browser.gatherUsageStats", "false"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, tmp_path / "rlhf.db"
    finally:
        process.terminate()
        process.wait(timeout=20)
        holder = leases.live_holder(open_db(tmp_path / "rlhf.db"), LEASE, 60)
        if holder:
            os.kill(holder["pid"], signal.SIGTERM)  # the worker outlives the app by design


def test_rank_one_item_with_a_tie_in_chromium(app_url: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, db_path = app_url
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.get_by_label("Your name").fill("ada")
        page.get_by_role("button", name="Start ranking").click()
        ranking = page.get_by_label("Ranking")
        expect(ranking).to_be_visible(timeout=120_000)  # the worker loads the model and samples
        ranking.fill("2 1 1")
        ranking.press("Enter")
        expect(page.get_by_text("Saved B = C > A")).to_be_visible(timeout=15_000)
        page.screenshot(path=str(db_path.parent / "ranked.png"), full_page=True)
        browser.close()

    db = open_db(db_path)
    (row,) = list(db["rankings"].rows)
    assert json.loads(row["ranks"]) == [2, 1, 1] and row["status"] == "ranked"
    assert db["annotators"].get(row["annotator_id"])["name"] == "ada"
    assert row["seconds"] > 0
