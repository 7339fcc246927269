"""The operator lock-out in Chromium (issue 15): five failed sign-ins in one browser session
lock the name for a new session too, since the count is in the database, not the session.

The app, the browser and the password come from tests/test_browser_operator.py."""

from __future__ import annotations

import pytest
from test_browser import chromium  # noqa: F401  (a fixture)
from test_browser_operator import PASSWORD, SLOW, Operator, operator, password_hash  # noqa: F401
from worker_helpers import wait_for

from rlhf_loop.store.db import open_db
from rlhf_loop.store.sign_in_limits import LIMITS

pytestmark = pytest.mark.browser


def sign_in_page(browser, url: str):
    """The sign-in page of a new browser context: a session that shares nothing with others."""
    from playwright.sync_api import expect

    page = browser.new_context().new_page()
    page.goto(url)
    page.get_by_test_id("stSidebarNav").get_by_role("link").get_by_text("Operator sign-in").click()
    expect(page.get_by_role("heading", name="Operator sign-in")).to_be_visible(timeout=SLOW)
    return page


def submit(page, name: str, password: str) -> None:
    page.get_by_label("Your name (kept in the audit log)").fill(name)
    page.get_by_label("Operator password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_five_failures_in_one_browser_context_lock_the_name_in_a_new_one(
    operator: Operator,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    app = operator.start()
    db = open_db(app.db_path)
    first = sign_in_page(operator.browser, app.url)
    for tries in range(1, LIMITS["name"] + 1):
        submit(first, "mallory", f"guess number {tries}")
        wait_for(lambda t=tries: db["sign_in_attempts"].count == t, 30, f"attempt {tries}")
    locked = "Too many failed sign-ins for 'mallory': try again in"
    expect(first.get_by_text(locked)).to_be_visible(timeout=SLOW)

    second = sign_in_page(operator.browser, app.url)  # a fresh session, the right password
    submit(second, "mallory", PASSWORD)
    expect(second.get_by_text(locked)).to_be_visible(timeout=SLOW)
    expect(second.get_by_role("link", name="Training")).to_have_count(0)
    assert db["sign_in_attempts"].count == LIMITS["name"]  # refused before any password check
    refused = db["events"].count_where(
        "kind = 'operator_sign_in_failed' AND payload LIKE ?", ["%locked (name)%"]
    )
    assert refused == 1
