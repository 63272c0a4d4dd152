"""Calibration: is each model still telling clinicians the truth at each site?

Reliability curves, O:E and the calibration slope over time, and the risk-adjusted CUSUM with
the change point of every signal, per site side by side. Settled labels only; the share of
predictions whose label has settled is shown beside every window.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links, ui

METRICS = [
    ("label_completeness", "labels settled", "{:.0%}"),
    ("calibration_intercept", "intercept", "{:+.2f}"),
    ("calibration_slope", "slope", "{:.2f}"),
    ("spiegelhalter_z", "Spiegelhalter Z", "{:+.1f}"),
    ("brier", "Brier", "{:.4f}"),
    ("scaled_brier", "scaled Brier", "{:.3f}"),
    ("ece", "ECE", "{:.4f}"),
    ("ici", "ICI", "{:.4f}"),
    ("e50", "E50", "{:.4f}"),
    ("e90", "E90", "{:.4f}"),
]


def _cell(row: pd.Series | None, fmt: str) -> str:
    if row is None or pd.isna(row["value"]):
        return "—"
    text = fmt.format(row["value"])
    if not pd.isna(row.get("ci_low")) and not pd.isna(row.get("ci_high")):
        text += f" [{fmt.format(row['ci_low'])}, {fmt.format(row['ci_high'])}]"
    return text


st.title("Calibration")
st.caption(
    "Observed outcomes against predicted risk on settled labels, per site over each site's "
    "trailing window (config/monitors.yaml). Intercept and slope: logistic recalibration "
    "(Cox 1958) on the score histogram; ICI/E50/E90: Austin & Steyerberg 2019. CUSUM: "
    "risk-adjusted Bernoulli CUSUM (Steiner et al. 2000) against the odds doubling or halving."
)

try:
    models = data.registry_overview()["models"]
    model = links.pick(
        "Model", models["name"].tolist() if not models.empty else [], param=links.MODEL
    )
    latest = data.clinical_latest("calibration", model) if model else pd.DataFrame()
    oe_latest = data.clinical_latest("observed_expected", model) if model else pd.DataFrame()
    drift_latest = data.clinical_latest("calibration_drift", model) if model else pd.DataFrame()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if latest.empty:
    st.info(
        "No calibration results for this model yet: they appear once predictions are "
        "collected and their labels settle (the scheduler runs every 5 minutes). "
        + ui.LABELS_PENDING,
        icon=":material/hourglass_empty:",
    )
    st.stop()

all_sites = sorted(latest["site"].unique())
sites = st.multiselect("Sites", all_sites, default=all_sites)
if not sites:
    st.info("Choose at least one site to compare.")
    st.stop()
if not oe_latest.empty:
    ui.small_sample_caution(
        oe_latest[oe_latest["site"].isin(sites)].drop_duplicates("site"),
        what="predictions with settled labels",
    )

# Needs attention: anything in breach, in words.
for frame, name in ((oe_latest, "O:E"), (latest, "calibration"), (drift_latest, "CUSUM")):
    if frame.empty:
        continue
    for _, breach in frame[(frame["status"] == "breach") & frame["site"].isin(sites)].iterrows():
        detail = breach["detail"] or {}
        st.error(
            f"**{model} at {breach['site']}** — {name} {breach['metric']}: "
            f"{detail.get('reason', '')}. {breach['threshold']}.",
            icon=":material/warning:",
        )

by_key = {(r["metric"], r["site"]): r for _, r in latest.iterrows()}
oe_by_site = {r["site"]: r for _, r in oe_latest.iterrows()} if not oe_latest.empty else {}
cusum_by_key = (
    {(r["metric"], r["site"]): r for _, r in drift_latest.iterrows()}
    if not drift_latest.empty
    else {}
)
rows = []
for site in sites:
    oe = oe_by_site.get(site)
    row: dict[str, object] = {
        "site": site,
        "O:E": _cell(oe, "{:.2f}"),
        "O:E status": oe["status"] if oe is not None else "—",
    }
    for metric, label, fmt in METRICS:
        point = by_key.get((metric, site))
        row[label] = _cell(point, fmt)
        if metric in ("calibration_intercept", "calibration_slope"):
            row[f"{label} status"] = point["status"] if point is not None else "—"
    for metric, label in (("cusum_upper", "CUSUM under"), ("cusum_lower", "CUSUM over")):
        point = cusum_by_key.get((metric, site))
        row[label] = point["status"] if point is not None else "—"
    window = by_key.get(("brier", site))
    row["window"] = (
        f"{window['window_start']:%Y-%m-%d} to {window['window_end']:%Y-%m-%d}"
        if window is not None
        else "—"
    )
    rows.append(row)
st.subheader("Latest settled window per site")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

st.subheader("Reliability")
curves = {
    site: (by_key[("ece", site)]["detail"] or {}).get("curve", {})
    for site in sites
    if ("ece", site) in by_key
}
st.plotly_chart(charts.reliability_figure(curves), width="stretch", key="reliability")
st.caption(
    "Groups of about equal size from the score histogram; bars are 95% Wilson intervals on "
    "counts divided by the design effect (outcomes shared by successive scores)."
)

st.subheader("Over time")
oe_series = data.clinical_series("observed_expected", ("oe_ratio",), model)
slope_series = data.clinical_series("calibration", ("calibration_slope",), model)
left, right = st.columns(2)
left.plotly_chart(
    charts.metric_band_figure(
        oe_series[oe_series["site"].isin(sites)], title="Observed ÷ expected", reference=1.0
    ),
    width="stretch",
    key="oe_over_time",
)
right.plotly_chart(
    charts.metric_band_figure(
        slope_series[slope_series["site"].isin(sites)], title="Calibration slope", reference=1.0
    ),
    width="stretch",
    key="slope_over_time",
)

st.subheader("CUSUM and the change point")
cusum = data.clinical_series("calibration_drift", ("cusum_upper", "cusum_lower"), model)
st.plotly_chart(charts.cusum_figure(cusum[cusum["site"].isin(sites)]), width="stretch", key="cusum")
limits = data.cusum_limits(model)
if not limits.empty:
    shown = limits[limits["site"].isin(sites)].rename(
        columns={
            "limit": "h",
            "target_arl_days": "in-control ARL target (days)",
            "simulated_arl_days": "in-control ARL (days)",
            "out_of_control_arl_days": "ARL at the odds ratio (days)",
        }
    )
    st.dataframe(shown, hide_index=True, width="stretch")
changes = (
    drift_latest[(drift_latest["metric"] == "adwin") & drift_latest["site"].isin(sites)]
    if not drift_latest.empty
    else drift_latest
)
for _, change in changes.iterrows():
    found = change["detail"] or {}
    if found.get("change_began"):
        st.markdown(
            f"- **{change['site']}**: the adaptive window last detected a change that began "
            f"{pd.Timestamp(found['change_began']):%Y-%m-%d} "
            f"(O:E {found.get('oe_before') or float('nan'):.2f} before, "
            f"{change['value']:.2f} since)."
        )
