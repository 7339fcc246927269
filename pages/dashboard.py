"""Dashboard page (operators): annotation quality: agreement, gold checks, time, flags."""

import streamlit as st

from pages.common import require_operator

require_operator()
st.title("Dashboard")
