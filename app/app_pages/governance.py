"""Governance: the monthly report for the board — status by model and site, what went wrong,
what the data cannot say, and the HTML and PDF to download (generated on demand, audited)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from app import data, links, session
from incidents.auth import Action, PermissionDenied, can
from reports.export import PdfError, export_report
from reports.governance import GovernanceReport, Month, gather_report
from store.models import utcnow

ALL_MODELS = "All models"
FILES_KEY = "governance_files"  # {(month, model): {"html": bytes, "pdf": bytes}}

st.title("Governance report")
st.caption(
    "One document a month per model across sites: service levels, incidents and "
    "disablements, calibration and discrimination, drift, alert burden, canary decisions "
    "and the change log, with the model card's HTI-1 source attributes."
)


@st.cache_data(ttl=300, show_spinner="Gathering the month …")
def _report(month: str, model: str | None) -> GovernanceReport:
    return gather_report(data.engine(), Month.parse(month), model=model)


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
report = _report(month, model)

st.subheader(f"Status in {report.month.title}")
rows = [{"model": m.model, **{s.site: s.rag.upper() for s in m.status}} for m in report.models]
if rows:
    st.dataframe(pd.DataFrame(rows).fillna("—"), hide_index=True, width="stretch")
else:
    st.info("No models are registered.")
st.caption(report.rag_rules)

for m in report.models:
    with st.expander(f"{m.title} ({m.model})", expanded=len(report.models) == 1):
        kinds: dict[str, int] = {}
        for episode in m.episodes:
            kinds[episode.kind] = kinds.get(episode.kind, 0) + 1
        st.markdown(
            "**Incidents, alerts and disablements:** "
            + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none")
        )
        reasons = [{"site": s.site, "status": s.rag, "why": "; ".join(s.reasons)} for s in m.status]
        if reasons:
            st.dataframe(pd.DataFrame(reasons), hide_index=True, width="stretch")
        if m.card_missing:
            st.warning("The model card does not state: " + ", ".join(m.card_missing))
        for statement in m.missing:
            st.markdown(f"- {statement}")

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
