"""Roles: the operator credential (a scrypt hash, never a password in clear), and an annotator's
session that cannot reach operator pages until it signs in."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from app_helpers import APP, as_read
from store_helpers import fresh_db, make_comparisons
from streamlit.testing.v1 import AppTest

from pages.common import VIA_APP
from rlhf_loop.auth import (
    HASH_ENV,
    CredentialError,
    configured_hash,
    hash_password,
    verify_password,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
OPERATOR_PAGES = {"Dashboard", "Training", "Data", "Settings"}


def test_a_hash_verifies_its_password_only_and_is_salted() -> None:
    encoded = hash_password(PASSWORD)
    assert PASSWORD not in encoded
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + " ", encoded)
    assert not verify_password("", encoded)
    assert hash_password(PASSWORD) != encoded  # a fresh salt each time


@pytest.mark.parametrize(
    "bad",
    [
        PASSWORD,  # a password pasted where the hash belongs is refused, not compared in clear
        "scrypt$16384$8$1$not-base64$abc",
        "scrypt$3$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==",  # n not a power of two
        "scrypt$1073741824$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==",  # n that would exhaust memory
        "bcrypt$whatever",
    ],
)
def test_a_configured_value_that_is_not_a_sound_hash_is_refused(bad: str) -> None:
    with pytest.raises(CredentialError, match="hash"):
        configured_hash({HASH_ENV: bad}, {})


def test_environment_wins_over_secrets_and_none_is_none() -> None:
    from_env, from_secrets = hash_password("one password"), hash_password("two password")
    both = configured_hash({HASH_ENV: from_env}, {"operator_password_hash": from_secrets})
    assert both == from_env
    assert configured_hash({}, {"operator_password_hash": from_secrets}) == from_secrets
    assert configured_hash({}, {}) is None


def test_short_passwords_are_refused() -> None:
    with pytest.raises(CredentialError, match="at least 8"):
        hash_password("short")


def test_hash_password_command_reads_a_pipe_and_prints_a_usable_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_loop", "hash-password"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    encoded = result.stdout.strip()
    assert verify_password(PASSWORD, encoded) and "secrets.toml" in result.stderr


@pytest.fixture
def app_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(HASH_ENV, hash_password(PASSWORD))
    return data_dir


def _page_titles(at: AppTest) -> set[str]:
    """The pages st.navigation registered in the first run (AppTest keeps no public list, and
    this private one is only right before any session state is set from the test)."""
    return {info["page_name"] for info in at._registered_pages.values()}


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.switch_page("pages/sign_in.py").run()
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    return at.button[0].click().run()


def test_an_annotator_sees_no_operator_page_and_cannot_open_one(app_env: Path) -> None:
    fresh_db(app_env)
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert _page_titles(at) == {"Rank", "Operator sign-in"}
    for page in ("training", "data", "dashboard", "settings", "simulated"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(f"pages/{page}.py")


def test_wrong_passwords_lock_the_name_for_a_new_session_too_and_are_logged(
    app_env: Path,
) -> None:
    db = fresh_db(app_env)
    at = AppTest.from_file(APP, default_timeout=30).run()
    for _ in range(4):
        _sign_in(at, "mallory", "guess guess")
        assert as_read(at.error[0].value) == "Wrong password."
    _sign_in(at, "mallory", "guess guess")
    locked = r"Too many failed sign-ins for 'mallory': try again in (60|59) s\."
    assert re.fullmatch(r"Wrong password\. " + locked, as_read(at.error[0].value))
    # A new browser session, with the right password: still locked, and the password unchecked.
    fresh = _sign_in(AppTest.from_file(APP, default_timeout=30).run(), "mallory", PASSWORD)
    assert as_read(fresh.error[0].value).startswith("Too many failed sign-ins for 'mallory'")
    assert "operator" not in fresh.session_state
    # Another name from the same (loopback, so unknown) client is not locked by mallory's.
    _sign_in(fresh, "olga", PASSWORD)
    assert not fresh.error and fresh.session_state["operator"] == "olga"
    reasons = [
        json.loads(e["payload"])["reason"]
        for e in db["events"].rows_where("kind = 'operator_sign_in_failed'", order_by="id")
    ]
    assert reasons == ["wrong password"] * 5 + ["locked (name)"]
    assert not any(PASSWORD in e["payload"] or "guess" in e["payload"] for e in db["events"].rows)
    settings_page = fresh.switch_page("pages/settings.py").run()
    log = settings_page.dataframe[-1].value
    assert list(log["outcome"][:2]) == ["signed in", "locked (name)"]
    assert list(log["name"][:2]) == ["olga", "mallory"] and len(log) == 7


def test_an_operator_signs_in_sees_the_operator_pages_and_is_recorded(app_env: Path) -> None:
    db = fresh_db(app_env)
    make_comparisons(db, 1)
    at = AppTest.from_file(APP, default_timeout=30).run()
    _sign_in(at, "olga", PASSWORD)
    assert not at.error
    for page in OPERATOR_PAGES:
        at.switch_page(f"pages/{page.lower()}.py").run()
        assert not at.exception and at.title[0].value == page
    at.switch_page("pages/training.py").run()
    assert "Train reward model now" in [b.label for b in at.button]
    olga = next(db["annotators"].rows_where("name = 'olga'"))
    assert olga["role"] == "operator"
    assert db["events"].count_where("kind = 'operator_signed_in'") == 1


def test_without_a_configured_hash_the_printed_one_off_password_signs_in(
    data_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from pages.common import _one_off_hash

    fresh_db(data_dir)
    _one_off_hash.clear()  # a fresh server start
    at = AppTest.from_file(APP, default_timeout=30).run()
    printed = capfd.readouterr().err
    password = printed.split("operator password for this run: ")[1].split()[0]
    _sign_in(at, "olga", password + "x")
    assert as_read(at.error[0].value) == "Wrong password."
    _sign_in(at, "olga", password)
    assert not at.error and at.session_state["operator"] == "olga"


def test_invite_only_ranking_needs_the_current_personal_link(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import parse_qs, urlsplit

    from app_helpers import operator_page

    monkeypatch.setenv("RLHF_LOOP_ANNOTATOR_ACCESS", "invite")
    db = fresh_db(app_env)
    make_comparisons(db, 2)
    operator = operator_page("pages/settings.py")
    operator.text_input(key="invite-name").input("ada")
    next(b for b in operator.button if b.label == "Make a ranking link").click().run()
    link = parse_qs(urlsplit(operator.code[0].value).query)
    assert link["annotator"] == ["ada"] and "ada" in [t.value for t in operator.text]

    def rank_as(name: str, key: str | None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=30)
        at.query_params["annotator"] = name
        if key is not None:
            at.query_params["key"] = key
        return at.run()

    for name, key in (("ada", None), ("ada", "guess"), ("bob", link["key"][0])):
        refused = rank_as(name, key)
        assert "not valid" in refused.error[0].value and not refused.text_input
    at = rank_as("ada", link["key"][0])
    at.text_input(key="typed-1").input("1 2 3 4")
    at.button[0].click().run()
    (row,) = db["rankings"].rows
    assert db["annotators"].get(row["annotator_id"])["name"] == "ada"
    # A new link for ada replaces the old one.
    operator.text_input(key="invite-name").input("ada")
    next(b for b in operator.button if b.label == "Make a ranking link").click().run()
    assert "not valid" in rank_as("ada", link["key"][0]).error[0].value


@pytest.mark.parametrize("page", ["dashboard", "training", "data", "settings"])
def test_an_operator_page_run_on_its_own_stops_for_a_session_without_sign_in(
    app_env: Path, page: str
) -> None:
    """Defence in depth: a page file run without app.py's navigation (Streamlit does that for a
    server's first session on a page URL, which enter_through_app then sends through app.py;
    tests/test_browser.py checks that) still shows nothing to a session that did not sign in."""
    fresh_db(app_env)
    at = AppTest.from_file(str(REPO / "pages" / f"{page}.py"), default_timeout=30)
    at.session_state[VIA_APP] = True  # past the redirect, as if app.py had run before
    at.run()
    assert "This page is for operators" in at.error[0].value
    assert not at.button and not at.get("download_button") and not at.dataframe


def test_a_simulated_annotators_name_cannot_sign_in_as_an_operator(app_env: Path) -> None:
    from rlhf_loop.store.annotators import SIMULATED, annotator_id

    db = fresh_db(app_env)
    annotator_id(db, "sim-keyword-run1-1", SIMULATED, 1)
    at = AppTest.from_file(APP, default_timeout=30).run()
    _sign_in(at, "sim-keyword-run1-1", PASSWORD)
    assert "belongs to a simulated annotator" in at.error[0].value
    assert "operator" not in at.session_state
    assert next(db["annotators"].rows_where("id = 1"))["role"] == SIMULATED
