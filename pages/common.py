"""What every page needs from Streamlit: settings, a database handle, the annotator's name.

The only module in pages/ that is not a page; it holds the Streamlit glue so that the pages
themselves only render and delegate to ``rlhf_loop``.
"""

from __future__ import annotations

import sqlite_utils
import streamlit as st

from rlhf_loop.config import ConfigError, Settings, load_settings
from rlhf_loop.store.annotators import AnnotatorNameError, annotator_id, clean_name
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.leases import live_holder
from rlhf_loop.worker import LEASE
from rlhf_loop.worker_launch import ensure_worker, recent_failure


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


def start_worker_if_needed() -> None:
    config = settings()
    if config.auto_start_worker:
        ensure_worker(database(), config)


def worker_status() -> dict | None:
    return live_holder(database(), LEASE, settings().lease_timeout_s)


def show_worker_state() -> None:
    """The worker's status line and progress, or why it is not running (and start it)."""
    status = worker_status()
    if status is None:
        failure = recent_failure(database())
        if failure:
            st.error("The background worker stopped with an error (see worker.log):")
            st.text(failure)
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
    """(id, name) of the annotator, kept in the URL so a reload keeps who is ranking."""
    name = st.query_params.get("annotator")
    if not name:
        return None
    try:
        return annotator_id(database(), name), name
    except AnnotatorNameError as exc:
        st.error(str(exc))
        del st.query_params["annotator"]
        return None


def ask_annotator_name() -> None:
    with st.form("who"):
        name = st.text_input("Your name", max_chars=64, placeholder="e.g. ada")
        if st.form_submit_button("Start ranking", type="primary"):
            try:
                st.query_params["annotator"] = clean_name(name)
            except AnnotatorNameError as exc:
                st.error(str(exc))
            else:
                st.rerun()
