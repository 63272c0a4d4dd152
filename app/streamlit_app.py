"""Dashboard entrypoint: routes only. Pages live in app/app_pages/, grouped by who uses them."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Vigil", page_icon=":material/monitor_heart:", layout="wide")


def page(path: str, title: str, icon: str, *, default: bool = False) -> st.Page:
    return st.Page(f"app_pages/{path}", title=title, icon=f":material/{icon}:", default=default)


pages = {
    "Vigil": [page("home.py", "Needs attention", "home", default=True)],
    "On-call": [
        page("slo.py", "Service levels", "speed"),
        page("feeds.py", "Feeds", "sync_problem"),
        page("quarantine.py", "Quarantine", "block"),
    ],
    "Clinical": [
        page("sites.py", "Sites", "scatter_plot"),
        page("calibration.py", "Calibration", "tune"),
        page("discrimination.py", "Discrimination", "leaderboard"),
        page("drift.py", "Drift", "stacked_line_chart"),
        page("alert_burden.py", "Alert burden", "notifications"),
    ],
    "Incidents": [page("incidents.py", "Incidents", "emergency")],
    "Releases": [
        page("canary.py", "Canary", "compare_arrows"),
        page("models.py", "Models", "model_training"),
    ],
}
st.navigation(pages).run()
