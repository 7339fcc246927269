"""Two ``streamlit run`` servers on one data dir (one SQLite file, WAL), as behind a reverse proxy
with sticky sessions: annotators in real browsers on both rank at once; every acknowledged ranking
is stored once, and no item is served to more annotators than the overlap allows, whichever
server served it."""

from __future__ import annotations

import json
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

ROUNDS = 5
NAMES = ("ada", "bob", "cy", "dee")  # ada and cy on the first server, bob and dee on the second


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[StreamlitApp, StreamlitApp]]:
    make_comparisons(open_db(tmp_path / "rlhf.db"), len(NAMES) * (ROUNDS + 1) + 4, k=3)
    servers = tuple(
        StreamlitApp(tmp_path, {"RLHF_LOOP_AUTO_START_WORKER": "false", "RLHF_LOOP_OVERLAP": "1"})
        for _ in range(2)
    )
    try:
        for server in servers:
            server.start()
        assert servers[0].url != servers[1].url and servers[0].db_path == servers[1].db_path
        yield servers
    finally:
        for server in servers:
            if server.process is not None:
                server.stop()


def test_annotators_on_two_servers_over_one_file_lose_nothing_and_share_no_item(
    two_servers: tuple[StreamlitApp, StreamlitApp],
    chromium,  # noqa: F811  (the fixture)
) -> None:
    pages = {
        name: chromium.new_context().new_page() for name in NAMES
    }  # a context each: separate sessions
    for i, (name, page) in enumerate(pages.items()):
        page.goto(f"{two_servers[i % 2].url}/?annotator={name}")
    shown = {name: [_shown_prompt(page)] for name, page in pages.items()}
    acknowledged = dict.fromkeys(NAMES, 0)
    for _ in range(ROUNDS):
        for page in pages.values():  # all four submit before any answer is awaited
            page.get_by_label("Ranking").fill("1 2 2")
            page.get_by_label("Ranking").press("Enter")
        for name, page in pages.items():
            expect(page.get_by_text("Saved A > B = C")).to_be_visible(timeout=30_000)
            expect(page.get_by_text(shown[name][-1], exact=True)).to_have_count(0)
            shown[name].append(_shown_prompt(page))
            acknowledged[name] += 1

    everything_shown = [prompt for prompts in shown.values() for prompt in prompts]
    assert len(everything_shown) == len(set(everything_shown))  # overlap 1: no item served twice
    db = open_db(two_servers[0].db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute(
        "SELECT a.name, p.text, r.ranks FROM rankings r JOIN annotators a ON a.id = r.annotator_id"
        " JOIN comparisons c ON c.id = r.comparison_id JOIN prompts p ON p.id = c.prompt_id"
    ).fetchall()
    for name in NAMES:  # each acknowledged ranking stored once, under the prompt it was given for
        theirs = sorted(text for who, text, _ in rows if who == name)
        assert theirs == sorted(shown[name][:-1]) and len(theirs) == acknowledged[name] == ROUNDS
    assert all(json.loads(ranks) == [1, 2, 2] for *_, ranks in rows)
    per_item = db.execute(
        "SELECT max(n) FROM (SELECT count(DISTINCT annotator_id) AS n FROM assignments"
        " GROUP BY comparison_id)"
    ).fetchone()[0]
    assert per_item == 1
