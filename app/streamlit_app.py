"""Dashboard entrypoint: routes only. Pages live in app/app_pages/, grouped by who uses them.

Every page passes the same gate first: sign-in (OIDC in production, demo accounts in demo
mode), then the health banners (database unreachable, scheduler heartbeat late).
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app import session, ui

st.set_page_config(page_title="Vigil", page_icon=":material/monitor_heart:", layout="wide")


def page(path: str, title: str, icon: str, *, default: bool = False) -> st.Page:
    return st.Page(f"app_pages/{path}", title=title, icon=f":material/{icon}:", default=default)


pages = {
    "Vigil": [page("home.py", "Needs attention", "home", default=True)],
    "On-call": [
        page("live.py", "Live SLA", "monitor_heart"),
        page("slo.py", "Service levels", "speed"),
        page("feeds.py", "Feeds", "sync_problem"),
        page("quarantine.py", "Quarantine", "block"),
    ],
    "Clinical lead": [
        page("sites.py", "Sites", "scatter_plot"),
        page("calibration.py", "Calibration", "tune"),
        page("discrimination.py", "Discrimination", "leaderboard"),
        page("drift.py", "Drift", "stacked_line_chart"),
        page("alert_burden.py", "Alert burden", "notifications"),
    ],
    "Releases": [page("canary.py", "Canary", "compare_arrows")],
    "Incident response": [page("incidents.py", "Incidents", "emergency")],
    "Registry": [page("models.py", "Models", "model_training")],
    "Governance": [page("governance.py", "Governance report", "summarize")],
}
navigation = st.navigation(pages, position="sidebar" if session.signed_in() else "hidden")
session.require_sign_in()
if ui.health_banner():
    try:
        navigation.run()
    except SQLAlchemyError as exc:  # the database went away mid-page: a banner, not a traceback
        ui.database_unreachable(exc)
