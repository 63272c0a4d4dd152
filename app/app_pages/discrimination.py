"""Discrimination: does the model still rank patients, and how do its alerts perform?"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links, ui

METRICS = [
    ("auroc", "AUROC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ppv", "PPV"),
    ("alert_rate", "alert rate"),
]

st.title("Discrimination")
st.caption(
    "AUROC from the score histogram (ties within a bin count one half) with a DeLong "
    "interval; sensitivity, specificity and PPV of the alerts as fired at the deployed "
    "threshold, with Wilson intervals. Settled labels only, each site's trailing window."
)

try:
    models = data.registry_overview()["models"]
    model = links.pick(
        "Model", models["name"].tolist() if not models.empty else [], param=links.MODEL
    )
    latest = data.clinical_latest("discrimination", model) if model else pd.DataFrame()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if latest.empty:
    st.info(
        "No discrimination results for this model yet. " + ui.LABELS_PENDING,
        icon=":material/hourglass_empty:",
    )
    st.stop()

all_sites = sorted(latest["site"].unique())
sites = st.multiselect("Sites", all_sites, default=all_sites)
if not sites:
    st.info("Choose at least one site to compare.")
    st.stop()
ui.small_sample_caution(
    latest[latest["site"].isin(sites)].drop_duplicates("site"),
    what="predictions with settled labels",
)

for _, row in latest[(latest["status"] == "breach") & latest["site"].isin(sites)].iterrows():
    st.error(
        f"**{model} at {row['site']}** — {row['metric']} {row['value']:.3f}: "
        f"{(row['detail'] or {}).get('reason', '')}. {row['threshold']}.",
        icon=":material/warning:",
    )

table = []
for site in sites:
    part = latest[latest["site"] == site].set_index("metric")
    entry: dict[str, object] = {"site": site}
    for metric, label in METRICS:
        if metric not in part.index or pd.isna(part.loc[metric, "value"]):
            entry[label] = "—"
            continue
        point = part.loc[metric]
        entry[label] = f"{point['value']:.3f} [{point['ci_low']:.3f}, {point['ci_high']:.3f}]"
    if "auroc" in part.index:
        entry["AUROC status"] = part.loc["auroc", "status"]
        detail = part.loc["auroc", "detail"] or {}
        entry["positives"] = detail.get("positives")
        entry["labels settled"] = detail.get("label_completeness")
        entry["window end"] = part.loc["auroc", "window_end"]
    table.append(entry)
st.subheader("Latest settled window per site")
st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")

series = data.clinical_series("discrimination", ("auroc", "ppv"), model)
series = series[series["site"].isin(sites)]
left, right = st.columns(2)
left.plotly_chart(
    charts.metric_band_figure(series[series["metric"] == "auroc"], title="AUROC", reference=0.5),
    width="stretch",
    key="auroc_over_time",
)
right.plotly_chart(
    charts.metric_band_figure(series[series["metric"] == "ppv"], title="PPV at the threshold"),
    width="stretch",
    key="ppv_over_time",
)
