"""Data and prediction drift: each site's score and inputs against its own reference window."""

from __future__ import annotations

from itertools import pairwise

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links
from store.models import SCORE_BIN_EDGES


def _labels(edges: list[float], *, open_ends: bool) -> list[str]:
    inner = [f"{a:g}–{b:g}" for a, b in pairwise(edges)]
    if not open_ends:
        return inner
    return [f"<{edges[0]:g}", *inner, f"≥{edges[-1]:g}"]


st.title("Drift")
st.caption(
    "PSI, Kolmogorov–Smirnov and Wasserstein distance of the score and each named input, "
    "current window against the site's own reference window, from the rollups' histograms. "
    "PSI flags drift only above 0.1 / 0.25 and above its own sampling noise."
)

try:
    models = data.registry_overview()["models"]
    model = links.pick(
        "Model", models["name"].tolist() if not models.empty else [], param=links.MODEL
    )
    latest = data.clinical_latest("drift", model) if model else pd.DataFrame()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if latest.empty:
    st.info(
        "No drift results for this model yet: each site needs its reference window "
        "(its first weeks of history) first."
    )
    st.stop()

psi = latest[latest["metric"].str.startswith("psi:")].copy()
psi["feature"] = psi["metric"].str.removeprefix("psi:")
st.plotly_chart(
    charts.drift_heatmap_figure(psi[["feature", "site", "status", "value", "ci_low", "ci_high"]]),
    width="stretch",
    key="drift_grid",
)
flagged = psi[psi["status"].isin(["warn", "breach"])]
for _, row in flagged.sort_values("status").iterrows():
    detail = row["detail"] or {}
    st.warning(
        f"**{row['feature']}** at **{row['site']}** ({row['status']}): {detail.get('reason', '')}"
        f"; missing {detail.get('missing_reference', 0):.1%} in the reference, "
        f"{detail.get('missing_current', 0):.1%} now.",
        icon=":material/stacked_line_chart:",
    )

site = links.pick("Site", sorted(psi["site"].unique()), param=links.SITE)
features = sorted(psi["feature"].unique(), key=lambda f: (f != "score", f))
feature = st.selectbox("Feature", features)
point = psi[(psi["site"] == site) & (psi["feature"] == feature)].iloc[0]
end = pd.Timestamp(point["window_end"]).to_pydatetime()
start = pd.Timestamp(point["window_start"]).to_pydatetime()
hist = data.drift_histograms(model, site, feature, start, end)
if feature == "score":
    labels = _labels(list(SCORE_BIN_EDGES), open_ends=False)
    frame = pd.DataFrame({"bin": range(len(labels))}).merge(hist, on="bin", how="left").fillna(0)
else:
    edges = data.model_input_edges(model).get(feature, [])
    labels = ["missing", *_labels(edges, open_ends=True)]
    frame = (
        pd.DataFrame({"bin": range(-1, len(edges) + 1)}).merge(hist, on="bin", how="left").fillna(0)
    )
st.plotly_chart(
    charts.histogram_compare_figure(
        frame,
        labels=labels,
        title=f"{feature} at {site}: reference vs {start:%Y-%m-%d} to {end:%Y-%m-%d}",
    ),
    width="stretch",
    key="drift_histogram",
)
series = data.clinical_series("drift", (f"psi:{feature}",), model)
st.plotly_chart(
    charts.metric_band_figure(series, title=f"PSI of {feature} over time", reference=0.25),
    width="stretch",
    key="psi_over_time",
)

st.subheader("A deep look with Evidently")
st.caption(
    "Samples raw predictions of the site's reference window and of the current window (ending "
    "where the drift monitor's latest window ends) and runs Evidently's DataDriftPreset."
)
if st.button("Build the Evidently report", key="build_report"):
    try:
        with st.spinner("Sampling predictions and running Evidently…"):
            html = data.evidently_report(model, site, end)
            st.session_state["drift_report"] = (model, site, html)
    except ValueError as exc:
        st.error(str(exc))
report = st.session_state.get("drift_report")
if report and report[:2] == (model, site):
    st.download_button(
        "Download the report (HTML)",
        data=report[2],
        file_name=f"drift-{model}-{site}.html",
        mime="text/html",
        key="download_report",
    )
