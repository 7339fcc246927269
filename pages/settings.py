"""Settings page (operators): the settings in force, the database snapshot and its restore."""

import dataclasses

import streamlit as st

from pages.common import database, require_operator, settings, sign_out
from rlhf_loop.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX

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
