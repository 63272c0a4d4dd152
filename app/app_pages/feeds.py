"""Feeds: freshness of every data feed at every site, live, and the scores made on stale inputs."""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import DBAPIError

from app import charts, data, links
from app.ui import markdown_text as md

st.title("Feeds")
st.caption(
    "Event-time lag: how far a feed's newest event trails its heartbeat (the source system "
    "stopped). Load staleness: how long since the last heartbeat (the interface engine or "
    "the collector stopped). Tiers per feed and site in config/monitors.yaml; no heartbeat "
    "at all is an error. Assessed now, from the store, whether or not the scheduler runs."
)

try:
    status = data.feed_status()
except DBAPIError:
    st.error("The Vigil database is unreachable.", icon=":material/database_off:")
    st.stop()

if status.empty:
    st.info("No deployed model depends on a feed yet, or nothing is registered.")
    st.stop()

grid = status.rename(columns={"feed": "model", "event_lag_min": "value"})[
    ["model", "site", "status", "value"]
].assign(ci_low=None, ci_high=None)
st.plotly_chart(
    charts.status_grid_figure(grid, title="Event-time lag (min) by feed × site"),
    width="stretch",
    key="feed_grid",
)
bad = status[status["status"] != "ok"]
if bad.empty:
    st.success("Every feed is fresh.", icon=":material/check_circle:")
for _, row in bad.iterrows():
    message = (
        f"**{md(row['feed'])} at {md(row['site'])}** ({md(row['models'])}): {md(row['reason'])}"
    )
    if row["status"] == "breach":
        st.error(message + " Runbook: `stale-feed`.", icon=":material/sync_problem:")
    else:
        st.warning(message, icon=":material/schedule:")
st.dataframe(
    status[
        [
            "site",
            "feed",
            "status",
            "event_lag_min",
            "lag_status",
            "staleness_min",
            "staleness_status",
            "last_event_at",
            "received_at",
            "messages",
            "lag_tiers",
            "models",
        ]
    ],
    hide_index=True,
    width="stretch",
)

st.subheader("Event-time lag over time")
left, right = st.columns(2)
site = links.pick("Site", sorted(status["site"].unique()), param=links.SITE, where=left)
span = links.time_range(low=1, high=14, default=2, where=right)
history = data.feed_history_in(site, span.days, span.first, span.last)
if history.empty:
    st.caption(f"No heartbeats from {site} in {span.describe()}.")
else:
    st.plotly_chart(
        charts.feed_lag_figure(history, title=f"{site}: event-time lag per feed"),
        width="stretch",
        key="lag_chart",
    )

st.subheader("Degraded scores")
st.caption(
    "Scores made while a feed the model reads was at its error tier, from the feed's last "
    "event until it recovered: they were computed without that feed's data."
)
degraded = data.degraded_scores(30.0)
if degraded.empty or not degraded["degraded"].fillna(0).astype(int).any():
    st.caption("No degraded scores in the last 30 days.")
else:
    shown = degraded[degraded["degraded"] > 0].copy()
    shown["share"] = shown["degraded"] / shown["scores"].replace(0, float("nan"))
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={"share": st.column_config.NumberColumn(format="percent")},
    )
