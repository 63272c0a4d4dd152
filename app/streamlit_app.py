"""Dashboard entrypoint: routes only. Pages live in app/app_pages/."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Vigil", page_icon=":material/monitor_heart:", layout="wide")

pages = [
    st.Page("app_pages/home.py", title="Needs attention", icon=":material/home:", default=True),
]
st.navigation(pages).run()
