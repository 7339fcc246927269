"""The app process SIGKILLed while several annotators rank, with their submits in flight, and
started again on the same port: every page reconnects by itself, shows an item again after a
reload and takes the next ranking; every acknowledged ranking is stored once, and a submit the
kill cut off is either stored (the page moved on) or not (the page shows the same item again).
The 10-session version, with timings, is the restart scenario of bench/many_browsers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from store_helpers import make_comparisons
from test_browser import (  # noqa: F401  (chromium: a fixture)
    StreamlitApp,
    _shown_prompt,
    chromium,
)

from rlhf_loop.store.db import open_db

pytestmark = pytest.mark.browser

NAMES = ("ada", "bob", "cy")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[StreamlitApp]:
    """The app (no worker) over items enough for every page to be served a next one each time,
    a submit the kill cut off included."""
    make_comparisons(open_db(tmp_path / "rlhf.db"), 6 * len(NAMES), k=3)
    server = StreamlitApp(tmp_path, {"RLHF_LOOP_AUTO_START_WORKER": "false"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _press_ranking(page) -> None:
    page.get_by_label("Ranking").fill("1 2 3")
    page.get_by_label("Ranking").press("Enter")


def _acknowledged(page, before: str) -> str:
    """Waits for the page to say it saved and to show the next item; returns that item."""
    expect(page.get_by_text("Saved A > B > C")).to_be_visible(timeout=60_000)
    expect(page.get_by_text(before, exact=True)).to_have_count(0, timeout=60_000)
    return _shown_prompt(page)


def _stored(app: StreamlitApp) -> dict[str, list[str]]:
    db = open_db(app.db_path)
    rows = db.execute(
        "SELECT a.name, p.text FROM rankings r JOIN annotators a ON a.id = r.annotator_id"
        " JOIN comparisons c ON c.id = r.comparison_id JOIN prompts p ON p.id = c.prompt_id"
        " ORDER BY r.id"
    ).fetchall()
    return {name: [text for who, text in rows if who == name] for name in NAMES}


def test_app_killed_with_submits_in_flight_reconnects_every_page_and_loses_nothing(
    app: StreamlitApp,
    chromium,  # noqa: F811  (the fixture)
) -> None:
    pages = {name: chromium.new_context().new_page() for name in NAMES}
    for name, page in pages.items():
        page.goto(f"{app.url}/?annotator={name}")
    on_screen = {name: _shown_prompt(page) for name, page in pages.items()}
    acknowledged: dict[str, list[str]] = {name: [] for name in NAMES}
    for name, page in pages.items():  # one acknowledged ranking each before the crash
        _press_ranking(page)
        acknowledged[name].append(on_screen[name])
        on_screen[name] = _acknowledged(page, on_screen[name])

    for page in pages.values():  # all three submit; the server dies before answering all
        _press_ranking(page)
    app.kill()
    app.start()
    for name, page in pages.items():
        expect(page.get_by_test_id("stConnectionStatus")).to_have_count(0, timeout=60_000)
        page.reload()  # the restarted server does not know the old page's widgets
        shown = _shown_prompt(page)
        stored = _stored(app)[name]
        if shown == on_screen[name]:  # the cut-off submit was not stored: same item again
            assert stored == acknowledged[name]
        else:  # it was stored before the kill, unacknowledged: the page moved on
            assert stored == [*acknowledged[name], on_screen[name]]
            acknowledged[name].append(on_screen[name])
        _press_ranking(page)  # the next submit works on the restarted server
        acknowledged[name].append(shown)
        on_screen[name] = _acknowledged(page, shown)

    assert _stored(app) == acknowledged  # each once, under the prompt shown
    db = open_db(app.db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
