"""Keyboard-first ranking in Chromium (issue 11, items 1-5): what only a browser shows. The
ranking box has the focus whenever an item is shown, ten items are ranked with the keyboard
alone, the Flag popover closes with its item, a refusal is drawn at the box, undo puts the old
ranking back in it, and Tab goes through the rank pickers A, B, C, D."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import make_comparisons
from test_browser import StreamlitApp, chromium  # noqa: F401  (chromium: a fixture)

from rlhf_loop.store.db import open_db
from rlhf_loop.store.guidelines import set_guidelines

pytestmark = pytest.mark.browser

ITEMS = 16
# Generous for a busy 2-core machine, bounded so that a lost focus fails instead of hanging.
WAIT_MS = 30_000
FOCUSED = "document.activeElement?.getAttribute('aria-label')"
# The box of the item on screen has the focus, and it is empty (not the last item's box, which
# is drawn under the new prompt for a moment and keeps what was typed in it).
READY = (
    "(() => { const boxes = document.querySelectorAll('input[aria-label=\"Ranking\"]');"
    " return boxes.length === 1 && document.activeElement === boxes[0]"
    " && boxes[0].value === ''; })()"
)

PICKERS_DRAWN = (
    'document.querySelectorAll(\'[class*="st-key-pick-"] [role="radio"]\').length === 16'
)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[StreamlitApp]:
    """The app on 16 ready items of 4 responses, with guidelines and a daily target."""
    db = open_db(tmp_path / "rlhf.db")
    make_comparisons(db, ITEMS, k=4)
    set_guidelines(db, "Prefer **correct** answers. <b>raw</b>", 10, "olga")
    server = StreamlitApp(tmp_path, {"RLHF_LOOP_AUTO_START_WORKER": "false"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _page(browser, url: str):  # -> a Playwright page
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{url}/?annotator=ada")
    return page


def _prompt_shown(page, n: int) -> None:
    page.get_by_text(f"prompt {n}", exact=True).wait_for(timeout=WAIT_MS)


def _ranks(db_path: Path) -> list[tuple[str, list[int] | None, str | None]]:
    rows = open_db(db_path)["rankings"].rows_where(order_by="id")
    return [(r["status"], r["ranks"] and json.loads(r["ranks"]), r["retracted_at"]) for r in rows]


def test_ten_items_ranked_with_ranks_and_enter_only(app: StreamlitApp, chromium) -> None:  # noqa: F811
    """No click and no Tab: the box has the focus on the first load and after every submit."""
    page = _page(chromium, app.url)
    typed = ["1234", "4321", "1 1 2 3", "B > A = C > D", "2 1 1 1"] * 2
    per_item, to_ready = [], []
    page.wait_for_function(READY, timeout=WAIT_MS)
    for n, ranks in enumerate(typed):
        _prompt_shown(page, n)
        started = time.perf_counter()
        page.keyboard.type(ranks)
        page.keyboard.press("Enter")
        entered = time.perf_counter()
        _prompt_shown(page, n + 1)
        page.wait_for_function(READY, timeout=WAIT_MS)
        to_ready.append(time.perf_counter() - entered)
        per_item.append(time.perf_counter() - started)
    stored = _ranks(app.db_path)
    assert [s for s, _, _ in stored] == ["ranked"] * 10
    assert [r for _, r, _ in stored] == [
        [1, 2, 3, 4],
        [4, 3, 2, 1],
        [1, 1, 2, 3],
        [2, 1, 2, 3],
        [2, 1, 1, 1],
    ] * 2
    assert page.get_by_test_id("stMetricValue").first.inner_text() == "10 / 10"
    print(
        f"\nkeyboard only, 10 items: typing + Enter -> next item ready, median "
        f"{statistics.median(per_item) * 1000:.0f} ms (max {max(per_item) * 1000:.0f}); "
        f"Enter -> next box focused and empty, median {statistics.median(to_ready) * 1000:.0f} ms"
    )


def test_focus_after_skip_flag_refusal_and_undo(app: StreamlitApp, chromium) -> None:  # noqa: F811
    page = _page(chromium, app.url)
    _prompt_shown(page, 0)
    page.wait_for_function(READY, timeout=WAIT_MS)

    # A refusal: the message is at the box, and the box keeps the focus and what was typed.
    page.keyboard.type("1 2")
    page.keyboard.press("Enter")
    error = page.get_by_test_id("stAlert").filter(has_text="expected a rank for each")
    error.wait_for(timeout=WAIT_MS)
    box = page.get_by_label("Ranking").bounding_box()
    at = error.bounding_box()
    first_response = page.get_by_text("response 0 to prompt", exact=False).bounding_box()
    assert 0 <= at["y"] - (box["y"] + box["height"]) < 40  # right under the box
    assert at["y"] + at["height"] < first_response["y"]  # above the responses, not below Submit
    assert page.evaluate(FOCUSED) == "Ranking"
    assert page.get_by_label("Ranking").input_value() == "1 2"
    page.keyboard.type(" 3 4")  # the caret is at the end of what was typed
    page.keyboard.press("Enter")
    _prompt_shown(page, 1)
    page.wait_for_function(READY, timeout=WAIT_MS)

    # Skip by its button: the next item's box has the focus.
    page.get_by_role("button", name="Skip").click()
    _prompt_shown(page, 2)
    page.wait_for_function(READY, timeout=WAIT_MS)

    # Flag: the popover closes with its item, nothing covers the next item's responses.
    page.get_by_role("button", name="Flag…").click()
    page.get_by_role("button", name="Flag this item").click()
    _prompt_shown(page, 3)
    page.wait_for_function(READY, timeout=WAIT_MS)
    assert not page.get_by_role("button", name="Flag this item").is_visible()
    page.wait_for_timeout(1000)  # and it does not come back once the page has settled
    assert not page.get_by_role("button", name="Flag this item").is_visible()
    page.get_by_text("response 3 to prompt", exact=False).click(trial=True)  # D can be reached
    assert page.evaluate(FOCUSED) == "Ranking"

    # Rank, then undo: the item comes back with its ranking in the box, focused, and says so.
    page.keyboard.type("B > A = C > D")
    page.keyboard.press("Enter")
    _prompt_shown(page, 4)
    page.wait_for_function(READY, timeout=WAIT_MS)
    page.get_by_role("button", name="Undo last submission").click()
    _prompt_shown(page, 3)
    page.wait_for_function(
        "document.activeElement?.getAttribute('aria-label') === 'Ranking'"
        " && document.activeElement.value === '2 1 2 3'",
        timeout=WAIT_MS,
    )
    assert page.get_by_text("Undone: your ranking B > A = C > D is retracted").is_visible()
    page.keyboard.press("End")
    page.keyboard.press("Backspace")
    page.keyboard.type("2")  # B > A = C = D, corrected in place
    page.keyboard.press("Enter")
    _prompt_shown(page, 4)
    page.wait_for_function(READY, timeout=WAIT_MS)

    assert _ranks(app.db_path) == [
        ("ranked", [1, 2, 3, 4], None),
        ("skipped", None, None),
        ("flagged", None, None),
        ("ranked", [2, 1, 2, 3], pytest.approx(time.time(), abs=600)),  # kept, retracted
        ("ranked", [2, 1, 2, 2], None),
    ]


def test_tab_goes_through_the_rank_pickers_a_b_c_d(app: StreamlitApp, chromium) -> None:  # noqa: F811
    page = _page(chromium, app.url)
    _prompt_shown(page, 0)
    # Streamlit loads the pickers' code on first use and draws a skeleton (nothing to tab to)
    # until it arrives: on a busy machine, after the box already has the focus.
    page.wait_for_function(PICKERS_DRAWN, timeout=WAIT_MS)
    page.wait_for_function(READY, timeout=WAIT_MS)
    reached = []  # the picker (0 = A) each Tab lands in, from the ranking box to Submit
    for _ in range(40):
        page.keyboard.press("Tab")
        where = page.evaluate(
            "(() => { const c = document.activeElement?.closest('[class*=\"st-key-pick-\"]');"
            " if (c) return +c.className.match(/st-key-pick-\\d+-(\\d+)/)[1];"
            " return document.activeElement?.innerText?.trim() || ''; })()"
        )
        if isinstance(where, int):
            if not reached or reached[-1] != where:
                reached.append(where)
        elif where.endswith("Submit"):
            break
    assert reached == [0, 1, 2, 3]


def test_guidelines_beside_the_item_are_markdown_without_html(app: StreamlitApp, chromium) -> None:  # noqa: F811
    page = _page(chromium, app.url)
    _prompt_shown(page, 0)
    guidelines = page.get_by_test_id("stSidebar").get_by_test_id("stExpander")
    assert guidelines.locator("strong", has_text="correct").is_visible()
    assert guidelines.locator("b").count() == 0  # the raw HTML tag is not rendered
    page.screenshot(path=str(app.db_path.parent / "rank.png"))
