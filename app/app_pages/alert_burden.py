"""Alert burden: alerts clinicians see per 100 patient-days, per unit per shift, PPV and NNE."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links
from monitors.alert_burden import AlertBurdenConfig, by_unit_and_shift
from monitors.config import MonitorConfig

MONITORS = ("alert_burden",)

st.title("Alert burden")
st.caption(
    "Shown alerts: alerting scores minus a patient's repeats within the snooze window. "
    "Control limits are Poisson (quasi-Poisson where counts vary more) around the site's own "
    "rate over the previous 28 days: a spike over 24 h pages, a drop over 7 days opens a "
    "ticket. PPV and number needed to evaluate (NNE) count settled alerting scores."
)

try:
    models = data.registry_overview()["models"]
    model = links.pick(
        "Model", models["name"].tolist() if not models.empty else [], param=links.MODEL
    )
    points = data.latest_points(MONITORS, model) if model else pd.DataFrame()
    sites = data.site_directory()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if points.empty:
    st.info("No alert burden computed for this model yet; the scheduler does it every 15 min.")
    st.stop()

details = points["detail"].map(lambda d: d or {})
per = next((d.get("per") for d in details if d.get("per")), "patient-days")
table = pd.DataFrame(
    {
        "site": points["site"],
        "status": points["status"],
        f"per 100 {per} (24 h)": points["value"],
        "CI low": points["ci_low"],
        "CI high": points["ci_high"],
        "shown": details.map(lambda d: d.get("shown")),
        "expected": details.map(lambda d: d.get("expected")),
        "upper limit": details.map(lambda d: (d.get("spike_limits") or [None, None])[1]),
        "alerting scores": details.map(lambda d: d.get("alerting_scores")),
        "duplicates suppressed": details.map(lambda d: d.get("duplicates_suppressed")),
        "PPV (28 d)": details.map(lambda d: d.get("ppv")),
        "NNE": details.map(lambda d: d.get("nne")),
        "why": details.map(lambda d: d.get("reason", "")),
        "window end": points["window_end"],
    }
)
grid = (
    table.rename(columns={f"per 100 {per} (24 h)": "value"})
    .assign(model=model)[["model", "site", "status", "value", "CI low", "CI high"]]
    .rename(columns={"CI low": "ci_low", "CI high": "ci_high"})
)
st.plotly_chart(charts.status_grid_figure(grid), width="stretch", key="burden_grid")
for _, row in table[table["status"] == "breach"].iterrows():
    st.error(
        f"**{model} at {row['site']}**: {row['why']}. Runbook: `alert-volume`.",
        icon=":material/notifications_active:",
    )
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={"PPV (28 d)": st.column_config.NumberColumn(format="percent")},
)

st.subheader("Over time")
span = links.time_range(low=2, high=60, default=14)
series = data.points_in(MONITORS, model, span.days, span.first, span.last)
if series.empty:
    st.caption(f"No alert burden points in {span.describe()}.")
else:
    # The upper control limit is a count over the window; as a rate, per 100 of exposure.
    series["upper_rate"] = [
        100 * limits[1] / exposure if limits and limits[1] is not None and exposure else None
        for limits, exposure in zip(
            series["detail"].map(lambda d: (d or {}).get("spike_limits")),
            series["detail"].map(lambda d: (d or {}).get("exposure")),
            strict=True,
        )
    ]
    st.plotly_chart(
        charts.alert_rate_figure(series, title=f"{model}: shown alerts, trailing 24 h", per=per),
        width="stretch",
        key="burden_chart",
    )

st.subheader("Per unit and shift")
site = links.pick("Site", sorted(points["site"].unique()), param=links.SITE)
cfg = MonitorConfig.from_file().for_monitor(
    "alert_burden", AlertBurdenConfig, model=model, site=site
)
zones = dict(zip(sites["code"], sites["timezone"], strict=True)) if not sites.empty else {}
interval = models.loc[models["name"] == model, "scoring_interval_minutes"].iloc[0]
hours = data.alert_hours(model, site, 7.0)
shifts = by_unit_and_shift(
    hours,
    tz=zones.get(site, "UTC"),
    starts=cfg.shift_starts,
    scoring_interval_minutes=int(interval),
)
if shifts.empty:
    st.caption("No scores at this site in the last 7 days.")
else:
    st.caption(
        f"Shifts start at {', '.join(f'{h:02d}:00' for h in cfg.shift_starts)} "
        f"local time ({zones.get(site, 'UTC')}); the last 7 days, newest first."
    )
    st.dataframe(
        shifts.sort_values(["shift_date", "shift"], ascending=False),
        hide_index=True,
        width="stretch",
        column_config={"per_100_patient_days": st.column_config.NumberColumn(format="%.1f")},
    )
