"""rlhf-loop: the Streamlit entry point. Run with ``streamlit run app.py``."""

import streamlit as st

from pages.common import start_worker_if_needed

st.set_page_config(page_title="rlhf-loop", page_icon=":material/sort:", layout="wide")
navigation = st.navigation(
    [
        st.Page("pages/rank.py", title="Rank", icon=":material/sort:", default=True),
        st.Page("pages/data.py", title="Data", icon=":material/database:"),
        st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    ]
)
start_worker_if_needed()
navigation.run()
