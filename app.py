"""rlhf-loop: the Streamlit entry point. Run with ``streamlit run app.py``.

Annotators see the Rank page (and the operator sign-in); a signed-in operator also sees the
operator pages. A page that is not in the navigation cannot be opened by its URL either.
"""

import streamlit as st

from pages.common import VIA_APP, announce_operator_password, is_operator, start_worker_if_needed

# An emoji, not a Material icon: Streamlit fetches a Material page icon as an SVG from
# fonts.gstatic.com, which fails offline (icons on buttons and pages use its bundled font).
st.set_page_config(page_title="rlhf-loop", page_icon="🥇", layout="wide")
announce_operator_password()
rank = st.Page("pages/rank.py", title="Rank", icon=":material/sort:", default=True)
if is_operator():
    pages = {
        "Annotate": [rank],
        "Operate": [
            st.Page("pages/dashboard.py", title="Dashboard", icon=":material/monitoring:"),
            st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
            st.Page("pages/data.py", title="Data", icon=":material/database:"),
            st.Page(
                "pages/simulated.py", title="Simulated annotators", icon=":material/smart_toy:"
            ),
            st.Page("pages/settings.py", title="Settings", icon=":material/settings:"),
        ],
    }
else:
    pages = [
        rank,
        st.Page("pages/sign_in.py", title="Operator sign-in", icon=":material/lock:"),
    ]
navigation = st.navigation(pages)
start_worker_if_needed()
st.session_state[VIA_APP] = True
navigation.run()
