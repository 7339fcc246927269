"""Operator sign-in: the one page besides Rank that an annotator's session can open."""

import streamlit as st

from pages.common import enter_through_app, sign_in
from rlhf_loop.plain_text import markdown_escaped

enter_through_app()

st.title("Operator sign-in")
st.caption(
    "Operators start training rounds, review flags and export or restore data. "
    "Annotators do not need to sign in: the Rank page is open to them."
)
with st.form("sign-in"):
    name = st.text_input("Your name (kept in the audit log)", max_chars=64)
    password = st.text_input("Operator password", type="password")
    if st.form_submit_button("Sign in", type="primary", icon=":material/login:"):
        problem = sign_in(name, password)
        if problem:
            st.error(markdown_escaped(problem), icon=":material/error:")
        else:
            st.rerun()
