"""Home: what needs attention now — the models × sites status grid and the scheduler's pulse."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, ui

OE = ("observed_expected", "oe_ratio")
SLO_MONITORS = ("latency_slo", "availability_slo")


st.title("Vigil — what needs attention now")

try:
    beat = data.heartbeat()
    grid = data.status_grid(*OE)
    volumes = data.volumes()
    quarantined = data.quarantine()
    open_alerts = data.incident_alerts()
    slo_points = data.latest_points(SLO_MONITORS)
    feeds = data.feed_status()
except DBAPIError as exc:
    st.error(
        "The Vigil database is unreachable, so nothing below is current. "
        f"({type(exc.orig).__name__ if exc.orig else 'database error'})",
        icon=":material/database_off:",
    )
    st.stop()

if beat is not None:
    beat_at = beat["beat_at"]
    cols = st.columns(3)
    cols[0].metric("Scheduler heartbeat", ui.age(beat_at))
    cols[1].metric("Last monitor run", ui.age(beat.get("last_monitor_run_at")))
    cols[2].metric(
        "Predictions stored", f"{int(volumes['predictions'].sum()) if not volumes.empty else 0:,}"
    )

st.subheader("Right now")
breaching = slo_points[slo_points["status"] == "breach"] if not slo_points.empty else slo_points
stale = feeds[feeds["status"] == "breach"] if not feeds.empty else feeds
left, middle, right = st.columns(3)
with left:
    st.markdown(
        f"**{len(breaching)} SLO(s) burning their budget**"
        + (": " + ", ".join(sorted(f"{r.metric} at {r.site}" for r in breaching.itertuples()))
           if not breaching.empty else "")
    )  # fmt: skip
    st.page_link("app_pages/live.py", label="Live SLA (on-call)", icon=":material/monitor_heart:")
with middle:
    st.markdown(
        f"**{len(stale)} feed(s) past their error tier**"
        + (": " + ", ".join(sorted({f"{r.feed} at {r.site}" for r in stale.itertuples()}))
           if not stale.empty else "")
    )  # fmt: skip
    st.page_link("app_pages/feeds.py", label="Feeds", icon=":material/sync_problem:")
with right:
    st.markdown("**Is the model as good at my site?**")
    st.page_link(
        "app_pages/sites.py", label="Sites (clinical lead)", icon=":material/scatter_plot:"
    )

st.subheader("Open alerts")
if open_alerts.empty:
    st.success("No open alerts.", icon=":material/check_circle:")
else:
    pages = open_alerts[open_alerts["severity"] == "page"]
    st.markdown(
        f"**{len(open_alerts)} open alert(s)**, {len(pages)} paging. "
        "Act on them in the Incidents console, where each links its runbook."
    )
    st.dataframe(
        open_alerts[["severity", "status", "model", "site", "monitor", "summary", "opened_at"]],
        hide_index=True,
        width="stretch",
    )
    st.page_link(
        "app_pages/incidents.py", label="Open the incident console", icon=":material/emergency:"
    )

st.subheader("Calibration: observed ÷ expected outcomes, latest settled window")
if grid.empty:
    st.info(
        "No monitor results yet. Once predictions are collected and their labels settle, "
        "the scheduler fills this grid (every 5 minutes). " + ui.LABELS_PENDING,
        icon=":material/hourglass_empty:",
    )
else:
    st.plotly_chart(charts.status_grid_figure(grid), width="stretch", key="status_grid")
    ui.small_sample_caution(grid, what="predictions with settled labels")
    needs = grid[grid["status"].isin(["breach", "warn"])]
    if needs.empty:
        st.success(
            "Every model × site is within its calibration tolerance.",
            icon=":material/check_circle:",
        )
    else:
        st.markdown("**Needs attention**")
        for _, row in needs.sort_values("status").iterrows():
            detail = row["detail"] or {}
            st.markdown(
                f"- **{row['status'].upper()}** · {row['model']} at {row['site']} "
                f"({row['site_name']}): O:E {row['value']:.2f} "
                f"[{row['ci_low']:.2f}–{row['ci_high']:.2f}], "
                f"{detail.get('observed', '?')} observed vs "
                f"{detail.get('expected', 0):.1f} expected "
                f"over the window ending {row['window_end']:%Y-%m-%d}. {row['threshold']}."
            )
    with st.expander("Window details per model × site"):
        table = grid[
            [
                "model",
                "site",
                "status",
                "value",
                "ci_low",
                "ci_high",
                "n",
                "window_start",
                "window_end",
            ]
        ].copy()
        table["label completeness"] = [(d or {}).get("label_completeness") for d in grid["detail"]]
        table["why"] = [(d or {}).get("reason", "") for d in grid["detail"]]
        st.dataframe(table, hide_index=True, width="stretch")

st.subheader("Volume")
if volumes.empty:
    st.info("No predictions collected yet.")
else:
    shown = volumes.copy()
    shown["last scored hour (UTC)"] = pd.to_datetime(
        shown.pop("last_hour") * 3600, unit="s", utc=True
    )
    st.dataframe(shown, hide_index=True, width="stretch")

st.subheader("Quarantined input")
if quarantined.empty:
    st.caption("No input rows have been quarantined.")
else:
    st.dataframe(quarantined, hide_index=True, width="stretch")
