"""Governance: the monthly report for the board — status by model and site, what went wrong,
what the data cannot say, and the HTML and PDF to download (generated on demand, audited).

The status shown is the month's stored summary (`reports.summary`), with its age."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import data, links, session
from app.ui import markdown_text as md
from incidents.auth import Action, PermissionDenied, can
from reports import summary as governance_summary
from reports.export import PdfError, export_report
from reports.governance import Month
from store.models import utcnow

ALL_MODELS = "All models"
FILES_KEY = "governance_files"  # {(month, model): {"html": bytes, "pdf": bytes}}

st.title("Governance report")
st.caption(
    "One document a month per model across sites: service levels, incidents and "
    "disablements, calibration and discrimination, drift, alert burden, canary decisions "
    "and the change log, with the model card's HTI-1 source attributes."
)


@st.cache_data(ttl=30, show_spinner="Reading the month's summary …")
def _summary(month: str, model: str | None) -> dict[str, Any]:
    return governance_summary.current(data.engine(), month, model, now=utcnow())


def _age(since: datetime, now: datetime) -> str:
    minutes = max(int((now - since).total_seconds() // 60), 0)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h" if minutes < 48 * 60 else f"{minutes // 1440} days"


def _month_options(count: int = 24) -> list[str]:
    month = Month.containing(utcnow())
    options = []
    for _ in range(count):
        options.append(month.label)
        month = month.previous()
    return options


# An unreachable database raises here; the entrypoint turns it into its banner.
names = list(data.registry_overview()["models"]["name"])

months = _month_options()
left, right = st.columns(2)
month = str(
    left.selectbox("Month", months, index=1, key="governance_month", help="Calendar months in UTC.")
)
picked = links.pick("Model", [ALL_MODELS, *names], param=links.MODEL, where=right)
model = None if picked in (None, ALL_MODELS) else picked
summary = _summary(month, model)
now = utcnow()
period = Month.parse(month)
left, right = st.columns([4, 1])
if right.button("Recompute now", key="governance_recompute", icon=":material/refresh:"):
    with st.spinner("Gathering the month …"):
        summary = governance_summary.rebuild(data.engine(), month, model, now=now)
    _summary.clear()
made = datetime.fromisoformat(summary["generated_at"])
left.caption(
    f"Summary as of {made:%Y-%m-%d %H:%M} UTC ({_age(made, now)} ago)"
    + (
        ": the month is still running, so it covers the data up to then. "
        if period.end > now
        else ". "
    )
    + f"Recomputed when older than {governance_summary.max_age(period, now) // timedelta(hours=1)} "
    "h on opening; the download below is always gathered afresh."
)

st.subheader(f"Status in {summary['title']}")
rows = [
    {"model": m["model"], **{s["site"]: s["rag"].upper() for s in m["status"]}}
    for m in summary["models"]
]
if rows:
    st.dataframe(pd.DataFrame(rows).fillna("—"), hide_index=True, width="stretch")
else:
    st.info("No models are registered.")
st.caption(summary["rag_rules"])

for m in summary["models"]:
    with st.expander(f"{md(m['title'])} ({md(m['model'])})", expanded=len(summary["models"]) == 1):
        kinds = m["episodes"]
        st.markdown(
            "**Incidents, alerts and disablements:** "
            + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none")
        )
        reasons = [
            {"site": s["site"], "status": s["rag"], "why": "; ".join(s["reasons"])}
            for s in m["status"]
        ]
        if reasons:
            st.dataframe(pd.DataFrame(reasons), hide_index=True, width="stretch")
        if m["card_missing"]:
            st.warning("The model card does not state: " + ", ".join(m["card_missing"]))
        for statement in m["missing"]:
            st.markdown(f"- {md(statement)}")

st.subheader("Download")
actor = session.current_actor()
key = (month, model or ALL_MODELS)
files: dict[tuple[str, str], dict[str, bytes]] = st.session_state.setdefault(FILES_KEY, {})
if actor is None or not can(actor, Action.EXPORT_REPORT):
    st.info("Sign in to export the report.")
elif key not in files and st.button("Generate the HTML and PDF", type="primary"):
    with st.spinner("Writing the report and printing the PDF …"):
        try:
            with tempfile.TemporaryDirectory(prefix="vigil-governance-") as folder:
                result = export_report(
                    data.engine(),
                    actor,
                    month=Month.parse(month),
                    out_dir=Path(folder),
                    model=model,
                )
                assert result.pdf is not None
                files[key] = {"html": result.html.read_bytes(), "pdf": result.pdf.read_bytes()}
        except (PermissionDenied, PdfError) as exc:
            st.error(str(exc))
if key in files:
    stem = f"governance-{month}" + (f"-{model}" if model else "")
    first, second = st.columns(2)
    first.download_button(
        "Download HTML", files[key]["html"], file_name=f"{stem}.html", mime="text/html"
    )
    second.download_button(
        "Download PDF", files[key]["pdf"], file_name=f"{stem}.pdf", mime="application/pdf"
    )
