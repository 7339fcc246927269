"""What every page needs from Streamlit: settings, a database handle, the annotator's name.

The only module in pages/ that is not a page; it holds the Streamlit glue so that the pages
themselves only render and delegate to ``rlhf_loop``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

import sqlite_utils
import streamlit as st

from rlhf_loop.auth import CredentialError, configured_hash, one_off_password, verify_password
from rlhf_loop.config import ConfigError, Settings, load_settings
from rlhf_loop.store.annotators import (
    AnnotatorNameError,
    annotator_id,
    check_key,
    clean_name,
    record_operator_sign_in,
)
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.leases import live_holder
from rlhf_loop.store.sign_in_limits import Lock, begin_attempt, finish_attempt
from rlhf_loop.worker import LEASE
from rlhf_loop.worker_launch import ensure_worker, recent_failure

# Set by app.py on every run. Streamlit runs the file of pages/ named by the URL directly, without
# app.py, in a server's first session if it opens on a page URL (its pre-navigation multipage
# mode, which a folder named pages/ turns on until st.navigation is first called).
VIA_APP = "_via_app"


def enter_through_app() -> None:
    """First line of every page: a run that skipped app.py goes back through it, so the roles'
    navigation, the worker start and the operator password always come first."""
    if not st.session_state.get(VIA_APP):  # keep ?annotator=...: it says who is ranking
        st.switch_page("app.py", query_params=st.query_params.to_dict())


def settings() -> Settings:
    """Read on every run (a small file): an edited config applies without a restart."""
    try:
        return load_settings()
    except ConfigError as exc:
        st.error(f"Configuration error: {exc}")
        st.stop()


def database() -> sqlite_utils.Database:
    """This browser session's connection, opened once and reused across reruns."""
    if "_db" not in st.session_state:
        try:
            st.session_state["_db"] = open_db(settings().resolved_db_path)
        except StoreError as exc:
            st.error(str(exc))
            st.stop()
    return st.session_state["_db"]


_modules_frozen = 0


def settle_heap() -> None:
    """Leave the long-lived objects out of the garbage collection Streamlit runs after every
    script run (``runner.postScriptGC``). Over the ~90,000 objects of the imported modules
    (streamlit, numpy, pandas, pyarrow) that full collection took 65-80 ms on a loaded 2-core
    machine, on every submit: longer than the Rank page's whole run, and the annotator waits for
    it. So once per process, and again whenever modules were imported since (an operator page
    brings its own), collect and then freeze what is left: later collections skip frozen
    objects. Reference counting still frees them; only cycles among them stay, which at import
    time are modules and classes that live as long as the process anyway."""
    global _modules_frozen
    if len(sys.modules) != _modules_frozen:
        gc.collect()
        gc.freeze()
        _modules_frozen = len(sys.modules)


def start_worker_if_needed() -> None:
    """Called on every run of every page: the app's liveness check of the worker. A database
    that cannot take the lease now (a full disk) is tried again on the next run."""
    config = settings()
    if config.auto_start_worker:
        with contextlib.suppress(StoreError):
            ensure_worker(database(), config)


def worker_status() -> dict | None:
    return live_holder(database(), LEASE, settings().lease_timeout_s)


def show_worker_state() -> None:
    """The worker's status line and progress, or why it is not running (and start it)."""
    status = worker_status()
    if status is None:
        failure = recent_failure(database())
        if failure and is_operator():
            st.error("The background worker stopped with an error (see worker.log):")
            st.text(failure)
        elif failure:  # the details (paths, tracebacks) are for operators
            st.error("Items cannot be prepared right now; please tell an operator.")
        elif settings().auto_start_worker:
            st.info("No worker is running; starting one…")
        else:
            st.info("No worker is running; start one with: python -m rlhf_loop worker")
        start_worker_if_needed()
        return
    label = status.get("status") or "working"
    progress = status.get("progress")
    if progress is None:
        st.text(label)
    else:
        st.progress(min(max(float(progress), 0.0), 1.0), text=label)


def current_annotator() -> tuple[int, str] | None:
    """(id, name) of the annotator, kept in the URL so a reload keeps who is ranking; with
    ``annotator_access = "invite"`` the URL must also hold their current invite key."""
    name = st.query_params.get("annotator")
    if not name:
        return None
    if settings().annotator_access == "invite":
        person = check_key(database(), name, st.query_params.get("key", ""))
        if person is None:
            st.error("This ranking link is not valid, or it was replaced by a newer one.")
            return None
        return person, name
    try:
        return annotator_id(database(), name), name
    except AnnotatorNameError as exc:
        st.error(str(exc))
        del st.query_params["annotator"]
        return None


def ask_annotator_name() -> None:
    if settings().annotator_access == "invite":
        st.info("Open the personal ranking link an operator gave you.")
        return
    with st.form("who"):
        name = st.text_input("Your name", max_chars=64, placeholder="e.g. ada")
        if st.form_submit_button("Start ranking", type="primary"):
            try:
                st.query_params["annotator"] = clean_name(name)
            except AnnotatorNameError as exc:
                st.error(str(exc))
            else:
                st.rerun()


def operator_hash() -> str:
    """The configured hash, read on every call (an edited secrets.toml applies at once), or
    this server's one-off one."""
    try:
        secrets = dict(st.secrets)
    except FileNotFoundError:  # no secrets.toml anywhere: Streamlit raises on first access
        secrets = {}
    return configured_hash(os.environ, secrets) or _one_off_hash()


@st.cache_resource(show_spinner=False)
def _one_off_hash() -> str:
    """Made once per server start and printed to the terminal that runs ``streamlit run``
    (only whoever started the app can read it)."""
    password, encoded = one_off_password()
    print(
        f"\n  rlhf-loop operator password for this run: {password}\n"
        "  (set a lasting one: python -m rlhf_loop hash-password, see README)\n",
        file=sys.stderr,
        flush=True,
    )
    return encoded


def announce_operator_password() -> None:
    """Called on every page load (cached after the first), so a one-off password is in the
    terminal from the first visit on, not only after someone tries to sign in."""
    with contextlib.suppress(CredentialError):  # the sign-in page says what is wrong with it
        operator_hash()


def is_operator() -> bool:
    return bool(st.session_state.get("operator"))


def require_operator() -> None:
    """Every operator page starts here: navigation hides these pages from annotators, and this
    stops one that is reached anyway (an old link, a session that signed out in another tab)."""
    if not is_operator():
        st.error("This page is for operators. Sign in on the Operator sign-in page.")
        st.stop()


def sign_in(name: str, password: str) -> str | None:
    """Check the credential; returns why it failed, or None when the session is an operator.

    Failed attempts are counted in the database per name and per client address, not in this
    session, so a new browser session gets no fresh tries (``rlhf_loop.store.sign_in_limits``).
    """
    try:
        name = clean_name(name)
        encoded = operator_hash()
        db, client = database(), client_address()
        attempt = begin_attempt(db, name, client)
        if isinstance(attempt, Lock):
            return attempt.message()
        password_ok = verify_password(password, encoded)
        lock = finish_attempt(db, attempt, password_ok)
        if not password_ok:
            return "Wrong password." + (f" {lock.message()}" if lock else "")
        record_operator_sign_in(db, name, client)
    except (AnnotatorNameError, CredentialError, StoreError) as exc:
        return str(exc)
    st.session_state["operator"] = name
    return None


def client_address() -> str | None:
    """The address of this session's connection, as the server saw it (a proxy's, behind one).
    None when Streamlit reports none: on loopback, and outside a server (AppTest has a mock
    there, not an address); the sign-in limits then count by name alone."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else None


def sign_out() -> None:
    st.session_state.pop("operator", None)
