"""A real browser on a real ``streamlit run``: the app starts its worker, an item appears, an
annotator ranks it with a tie from the keyboard, and the row is in SQLite."""

from __future__ import annotations

import json
import os
import re
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
from store_helpers import make_comparisons
from worker_helpers import wait_for

from rlhf_loop.store import leases
from rlhf_loop.store.db import open_db
from rlhf_loop.worker import LEASE

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# The app between script runs (Streamlit marks its root with the script's state).
IDLE_APP = "[data-testid=stApp][data-test-script-state=notRunning]"
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


class StreamlitApp:
    """``streamlit run app.py`` on loopback, which a test can kill and start again on the same
    port (as a crash and a restart would); the open browser pages reconnect by themselves."""

    def __init__(self, data_dir: Path, settings: dict[str, str]) -> None:
        (data_dir / "empty.toml").write_text("")
        self.env = os.environ | {
            "RLHF_LOOP_CONFIG": str(data_dir / "empty.toml"),
            "RLHF_LOOP_DATA_DIR": str(data_dir),
            **settings,
        }
        self.db_path = data_dir / "rlhf.db"
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
        command += ["--server.address", "127.0.0.1", "--server.port", port]
        self.log = self.db_path.parent / "streamlit.log"
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )
        _wait_healthy(self.url, self.process)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        # The worker the app started stops by itself once the app has exited, and frees its
        # lease (which would otherwise stay fresh for as long as the worker ran on).
        db = open_db(self.db_path)
        wait_for(lambda: leases.live_holder(db, LEASE, 60) is None, 60, "the worker to stop")


@pytest.fixture
def app_url(tmp_path: Path, demo_model_path: Path) -> Iterator[tuple[str, Path]]:
    """The app with a fresh database, its own worker and the cached test model."""
    app = StreamlitApp(
        tmp_path,
        {
            "RLHF_LOOP_MODEL_CACHE_DIR": str(demo_model_path.parent),
            "RLHF_LOOP_DEMO_PRETRAIN_STEPS": str(TEST_PRETRAIN_STEPS),
            "RLHF_LOOP_DEVICE": "cpu",
            "RLHF_LOOP_K": "3",
            "RLHF_LOOP_MAX_NEW_TOKENS": "16",
            "RLHF_LOOP_QUEUE_DEPTH": "4",
            "RLHF_LOOP_SAMPLE_BATCH_PROMPTS": "4",
        },
    )
    app.start()
    try:
        yield app.url, app.db_path
    finally:
        app.stop()


@pytest.fixture
def seeded_app(tmp_path: Path) -> Iterator[StreamlitApp]:
    """The app on a database that already holds 10 items (no worker, no model): for what
    happens between annotators and the server, not the model."""
    make_comparisons(open_db(tmp_path / "rlhf.db"), 10, k=3)
    app = StreamlitApp(tmp_path, {"RLHF_LOOP_AUTO_START_WORKER": "false"})
    app.start()
    try:
        yield app
    finally:
        app.stop()


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


PROMPT = re.compile(r"^prompt \d+$")  # make_comparisons' prompt texts


def _open_ranking(browser, url: str, name: str):
    page = browser.new_context().new_page()  # a context each: two separate browser sessions
    page.goto(f"{url}/?annotator={name}")
    return page


def _shown_prompt(page) -> str:
    from playwright.sync_api import expect

    prompt = page.get_by_text(PROMPT)
    expect(prompt).to_be_visible(timeout=30_000)
    return prompt.inner_text()


def _rank(page, typed: str, saved: str) -> None:
    from playwright.sync_api import expect

    ranking = page.get_by_label("Ranking")
    ranking.fill(typed)
    ranking.press("Enter")
    expect(page.get_by_text(saved)).to_be_visible(timeout=15_000)


@pytest.fixture
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_two_annotators_in_two_pages_at_once_get_different_items(
    seeded_app: StreamlitApp, chromium
) -> None:
    from playwright.sync_api import expect

    ada = _open_ranking(chromium, seeded_app.url, "ada")
    bob = _open_ranking(chromium, seeded_app.url, "bob")
    first = {"ada": _shown_prompt(ada), "bob": _shown_prompt(bob)}
    assert first["ada"] != first["bob"]
    for page in (ada, bob):  # both submit before either result is awaited
        page.get_by_label("Ranking").fill("1 2 2")
        page.get_by_label("Ranking").press("Enter")
    for page, name in ((ada, "ada"), (bob, "bob")):
        expect(page.get_by_text("Saved A > B = C")).to_be_visible(timeout=15_000)
        expect(page.get_by_text(first[name])).to_have_count(0)  # moved on to a next item
    second = {"ada": _shown_prompt(ada), "bob": _shown_prompt(bob)}

    assert len(set(first.values()) | set(second.values())) == 4  # nobody got the other's item
    db = open_db(seeded_app.db_path)
    rows = list(db["rankings"].rows)
    assert len(rows) == 2 and len({r["comparison_id"] for r in rows}) == 2
    assert {db["annotators"].get(r["annotator_id"])["name"] for r in rows} == {"ada", "bob"}


def test_the_app_restarted_mid_session_loses_nothing_and_shows_the_same_item(
    seeded_app: StreamlitApp, chromium
) -> None:
    from playwright.sync_api import expect

    page = _open_ranking(chromium, seeded_app.url, "ada")
    _shown_prompt(page)
    # No credential configured: the first page load printed a one-off operator password.
    assert "operator password for this run: " in seeded_app.log.read_text()
    _rank(page, "1 2 3", "Saved A > B > C")
    on_screen = _shown_prompt(page)
    seeded_app.kill()  # the server dies mid-session, with the next item on screen
    connection = page.get_by_test_id("stConnectionStatus")
    expect(connection).to_be_visible(timeout=30_000)  # the page says it lost the server
    seeded_app.start()
    expect(connection).to_have_count(0, timeout=60_000)  # and reconnects by itself
    # The new server session does not know the old page's widgets, so a submit typed now would
    # only redraw the page; reloading is what makes the page live again.
    page.reload()
    assert _shown_prompt(page) == on_screen  # the served item survived the restart
    _rank(page, "3 2 1", "Saved C > B > A")

    db = open_db(seeded_app.db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ranks = [json.loads(r["ranks"]) for r in db["rankings"].rows_where(order_by="id")]
    assert ranks == [[1, 2, 3], [3, 2, 1]]


def test_an_operator_signs_in_with_the_printed_password_and_uses_every_operator_page(
    seeded_app: StreamlitApp, chromium, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = chromium.new_context(accept_downloads=True).new_page()
    # The server's first session opens on an operator page's URL: Streamlit would run that file
    # alone (its pages/ folder mode); the page sends it through app.py, which shows the roles'
    # navigation, not a list of the files in pages/.
    page.goto(f"{seeded_app.url}/training")
    expect(page.get_by_role("heading", name="Rank", level=1)).to_be_visible(timeout=30_000)
    links = page.get_by_test_id("stSidebarNav").get_by_role("link")
    expect(links).to_have_text([re.compile("Rank$"), re.compile("Operator sign-in$")])
    links.get_by_text("Operator sign-in").click()
    expect(page.get_by_role("heading", name="Operator sign-in")).to_be_visible(timeout=30_000)
    printed = seeded_app.log.read_text().split("operator password for this run: ")[1]
    page.get_by_label("Your name (kept in the audit log)").fill("olga")
    page.get_by_label("Operator password").fill(printed.split()[0])
    page.get_by_role("button", name="Sign in").click()
    for title in ("Dashboard", "Training", "Data", "Settings"):
        page.get_by_role("link", name=title).click()
        expect(page.get_by_role("heading", name=title, level=1)).to_be_visible(timeout=30_000)
        page.wait_for_timeout(500)  # let the page finish its run (charts, fragments)
        expect(page.get_by_test_id("stException")).to_have_count(0)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download a snapshot").click()
    snapshot = tmp_path / "snapshot.db"
    download.value.save_as(snapshot)
    copy = open_db(snapshot)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy["comparisons"].count == 10


def test_an_annotator_writes_a_better_answer_from_the_keyboard(
    seeded_app: StreamlitApp, chromium
) -> None:
    """Alt+W from the ranking box opens the editor with the caret in it; the typed answer, HTML
    and all, is submitted with Ctrl+Enter and stored as typed."""
    from playwright.sync_api import expect

    page = _open_ranking(chromium, seeded_app.url, "ada")
    first = _shown_prompt(page)
    expect(page.get_by_label("Ranking")).to_be_focused(timeout=30_000)
    # Streamlit binds a button's shortcut once the button is drawn; on a busy machine that can
    # come after the box has the focus, so the key waits for the button and an idle script.
    expect(page.get_by_role("button", name="Write a better answer")).to_be_visible()
    page.wait_for_selector(IDLE_APP, timeout=30_000)
    page.keyboard.press("Alt+w")
    editor = page.get_by_label("Your answer")
    expect(editor).to_be_focused(timeout=30_000)
    expect(page.get_by_text("also counts as a ranking in which it beats all 3")).to_be_visible()
    page.keyboard.type("A <b>better</b> answer")
    page.keyboard.press("Control+Enter")
    saved = page.get_by_text("Saved your answer as a ranking above every response")
    expect(saved).to_be_visible(timeout=15_000)
    expect(page.get_by_text(first, exact=True)).to_have_count(0)  # the next item is on screen

    db = open_db(seeded_app.db_path)
    [row] = db["demonstrations"].rows
    assert row["text"] == "A <b>better</b> answer" and row["source"] == "rank page"
    assert db["rankings"].get(row["ranking_id"])["status"] == "demonstrated"
