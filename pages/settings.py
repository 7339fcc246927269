"""Settings page (operators): the settings in force, annotator links, the guidelines annotators
see beside every item, the database snapshot and its restore, and the log of operator sign-ins."""

import dataclasses
from urllib.parse import urlencode

import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings, sign_out
from rlhf_loop.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX
from rlhf_loop.plain_text import markdown_escaped
from rlhf_loop.store.annotators import AnnotatorNameError, clean_name, invite, invited
from rlhf_loop.store.backup import RestoreError, restore, snapshot_bytes, snapshot_name
from rlhf_loop.store.db import StoreError
from rlhf_loop.store.guidelines import (
    MAX_DAILY_TARGET,
    MAX_GUIDELINES_CHARS,
    GuidelinesError,
    current_guidelines,
    set_guidelines,
)
from rlhf_loop.store.sign_in_limits import (
    FIRST_LOCK_S,
    LIMITS,
    MAX_LOCK_S,
    WINDOW_S,
    sign_in_log,
)

enter_through_app()

require_operator()
config = settings()
db = database()
st.title("Settings")

top_col, out_col = st.columns([4, 1])
top_col.caption(f"Signed in as operator {st.session_state['operator']}.")
out_col.button("Sign out", icon=":material/logout:", on_click=sign_out)

st.subheader("In force")
st.caption(
    f"Edit {DEFAULT_CONFIG_FILE} (or the file named by {CONFIG_ENV}), or set "
    f"{ENV_PREFIX}<NAME>; pages read them on every run, a running worker on its next start."
)
st.dataframe(
    [{"setting": k, "value": str(v)} for k, v in dataclasses.asdict(config).items()],
    hide_index=True,
    width="stretch",
)

st.subheader("Annotator links")
st.caption(
    f"Annotator access is {config.annotator_access!r}. With 'invite', only these personal links "
    "open the Rank page, so nobody ranks under another's name. Making a new link for a name "
    "replaces the old one (a leaked link stops working); the key is shown only now."
)


def on_invite() -> None:
    try:
        name = clean_name(st.session_state.get("invite-name", ""))
        key = invite(db, name)
    except AnnotatorNameError as exc:
        st.session_state["invite-result"] = ("error", str(exc))
    else:
        query = urlencode({"annotator": name, "key": key})
        st.session_state["invite-result"] = (
            "link",
            f"{(st.context.url or '').split('?')[0]}?{query}",
        )


with st.form("invite", clear_on_submit=True):
    st.text_input("Annotator's name", max_chars=64, key="invite-name")
    st.form_submit_button("Make a ranking link", icon=":material/link:", on_click=on_invite)
kind, made = st.session_state.pop("invite-result", (None, None))
if kind == "link":
    st.code(made, language=None)
elif kind == "error":
    st.error(made)
st.caption("Names with a link")
st.text(", ".join(invited(db)) or "none yet")  # names are user text: never Markdown

st.subheader("Guidelines for annotators")
st.caption(
    "Shown beside every item on the Rank page, in a panel annotators can collapse. Markdown "
    "(headings, lists, bold, links); HTML is not rendered. The daily target is shown as "
    "'done today / target' (0: no target). Every save is kept, with who made it."
)


def on_guidelines() -> None:
    try:
        set_guidelines(
            db,
            st.session_state.get("guidelines-text", ""),
            int(st.session_state.get("guidelines-target", 0)),
            st.session_state["operator"],
        )
    except (GuidelinesError, StoreError) as exc:
        st.session_state["guidelines-result"] = ("error", str(exc))
    else:
        st.session_state["guidelines-result"] = ("saved", "Saved; annotators see it from now on.")


guide = current_guidelines(db)
with st.form("guidelines"):
    st.text_area(
        "Guidelines (Markdown, no HTML)",
        value=guide.text,
        height=200,
        max_chars=MAX_GUIDELINES_CHARS,
        key="guidelines-text",
    )
    st.number_input(
        "Daily target per annotator (0: none)",
        min_value=0,
        max_value=MAX_DAILY_TARGET,
        value=guide.daily_target,
        step=10,
        key="guidelines-target",
    )
    st.form_submit_button("Save guidelines", icon=":material/save:", on_click=on_guidelines)
kind, said = st.session_state.pop("guidelines-result", (None, None))
if kind == "saved":
    st.success(said, icon=":material/check:")
elif kind == "error":
    st.error(said)
if guide.author:
    st.caption("Last saved by")
    st.text(guide.author)  # a name is user text: never Markdown

st.subheader("Database backup")
st.caption(
    "A consistent snapshot of the whole database (SQLite's online backup API), taken while "
    "annotators and the worker keep writing. Model files under runs/ are not in it."
)
st.download_button(
    "Download a snapshot",
    data=lambda: snapshot_bytes(config.resolved_db_path),  # on click, in the download thread
    file_name=snapshot_name(),
    mime="application/vnd.sqlite3",
    icon=":material/download:",
)

st.subheader("Restore")
st.caption(
    "Replaces the whole database with a snapshot, for everyone at once. The current database is "
    f"saved first to {config.resolved_data_dir / 'backups'}, so a restore can be undone by "
    "restoring that file."
)
with st.form("restore", clear_on_submit=True):
    upload = st.file_uploader("Snapshot (.db)", type=["db", "sqlite", "sqlite3"])
    sure = st.checkbox("Replace the current database with this snapshot")
    if st.form_submit_button("Restore", type="primary", icon=":material/restore:") and upload:
        if not sure:
            st.error("Tick the box to confirm: a restore replaces everything for everyone.")
        else:
            try:
                report = restore(db, upload.getvalue(), config.resolved_data_dir / "backups")
            except (RestoreError, StoreError) as exc:
                message = markdown_escaped(f"{upload.name}: {exc}")
                st.error(f"{message}. Nothing was changed.", icon=":material/error:")
            else:
                st.success(report.summary(), icon=":material/check:")

st.subheader("Operator sign-ins")
st.caption(
    f"The newest attempts, from any browser session. {LIMITS['name']} failed sign-ins for a name "
    f"within {WINDOW_S / 60:.0f} min lock that name (and {LIMITS['client']} from one address lock "
    f"the address) for {FIRST_LOCK_S / 60:.0f} min, twice as long at each lock after, up to "
    f"{MAX_LOCK_S / 60:.0f} min; a right password resets it. Passwords are never stored."
)
attempts = sign_in_log(db)
if attempts:
    st.dataframe(attempts, hide_index=True, width="stretch")
else:
    st.info("No sign-ins yet.")
