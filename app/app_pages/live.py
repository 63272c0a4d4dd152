"""Live SLA (on-call): SLO status, burn rate and budget left per model × site, stale feeds and
open alerts, redrawn every `VIGIL_LIVE_REFRESH_SECONDS`. Deep link: ?model=…&site=…."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app import charts, data, links, ui
from vigil.config import get_settings

MONITORS = ("latency_slo", "availability_slo")
EVERY = "All"
settings = get_settings()


def slo_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per SLO × site: status, SLI, burn rates, budget left and the rule firing."""
    if points.empty:
        return pd.DataFrame()
    details = points["detail"].map(lambda d: d or {})
    burn = details.map(lambda d: d.get("burn") or {})
    return pd.DataFrame(
        {
            "model": points["model"],
            "SLO": points["metric"],
            "site": points["site"],
            "status": points["status"],
            "SLI (30 d)": points["value"],
            "target": details.map(lambda d: d.get("target")),
            "burn 5m": burn.map(lambda b: b.get("5m")),
            "burn 1h": burn.map(lambda b: b.get("1h")),
            "burn 6h": burn.map(lambda b: b.get("6h")),
            "budget left": details.map(lambda d: d.get("budget_remaining")),
            "rule firing": details.map(lambda d: d.get("rule") or ""),
            "n": points["n"],
            "as of": points["window_end"],
        }
    ).reset_index(drop=True)


st.title("Live SLA")
st.caption(
    "Are the scoring paths inside their service levels right now? Latency and availability "
    "SLOs per model × site with their burn rates and 30-day error budget, stale feeds and open "
    f"alerts. This view redraws itself every {settings.live_refresh_seconds} s."
)

models = data.registry_overview()["models"]
sites = data.site_directory()
left, right = st.columns(2)
model = links.pick(
    "Model",
    [EVERY, *sorted(models["name"])] if not models.empty else [EVERY],
    param=links.MODEL,
    where=left,
)
site = links.pick(
    "Site",
    [EVERY, *sorted(sites["code"])] if not sites.empty else [EVERY],
    param=links.SITE,
    where=right,
)


@st.fragment(run_every=settings.live_refresh_seconds)
def live_view(model: str | None, site: str | None) -> None:
    try:
        points = data.latest_points(MONITORS, None if model == EVERY else model)
        feeds = data.feed_status()
        alerts = data.incident_alerts()
        volumes = data.volumes()
        beat = data.heartbeat()
    except SQLAlchemyError as exc:
        ui.database_unreachable(exc)
        return
    now = datetime.now(UTC)
    if site and site != EVERY:
        points = points[points["site"] == site] if not points.empty else points
        feeds = feeds[feeds["site"] == site] if not feeds.empty else feeds
        alerts = alerts[alerts["site"] == site] if not alerts.empty else alerts
    if model and model != EVERY and not alerts.empty:
        alerts = alerts[alerts["model"] == model]
    points = points[points["site"] != "all"] if not points.empty else points
    table = slo_table(points)

    burning = table[table["status"] == "breach"] if not table.empty else table
    stale = feeds[feeds["status"] != "ok"] if not feeds.empty else feeds
    cols = st.columns(5)
    cols[0].metric("SLOs breaching", len(burning))
    cols[1].metric("SLOs evaluated", len(table))
    cols[2].metric("Stale feeds", len(stale))
    cols[3].metric("Open alerts", len(alerts))
    # The page banner is drawn once per full run; this redraws with the view.
    late = ui.heartbeat_late(beat, now=now, late_after=settings.heartbeat_late_seconds)
    cols[4].metric(
        "Scheduler heartbeat",
        ui.age(beat.get("beat_at") if beat else None, now=now),
        delta="late" if late else "on time",
        delta_color="inverse" if late else "normal",
        delta_arrow="off",
    )

    st.subheader("Service levels per model × site")
    if table.empty:
        scope = (
            f"{model if model != EVERY else 'any model'} at {site if site != EVERY else 'any site'}"
        )
        st.info(
            f"No SLO has been evaluated for {scope} yet: the scheduler evaluates them every "
            "minute once predictions arrive.",
            icon=":material/hourglass_empty:",
        )
    else:
        grid = (
            table.drop(columns=["model"])
            .rename(columns={"SLO": "model", "SLI (30 d)": "value"})[
                ["model", "site", "status", "value"]
            ]
            .assign(ci_low=None, ci_high=None)
        )
        st.plotly_chart(charts.status_grid_figure(grid), width="stretch", key="live_grid")
        for _, row in burning.iterrows():
            st.error(
                f"**{row['SLO']} at {row['site']}**: {row['rule firing'] or 'breaching'} — burn "
                f"1 h {row['burn 1h']}×, 6 h {row['burn 6h']}×; "
                f"{(row['budget left'] or 0):.0%} of the 30-day budget left.",
                icon=":material/local_fire_department:",
            )
        if burning.empty:
            st.success("No SLO is burning its budget fast.", icon=":material/check_circle:")
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            key="live_slo_table",
            column_config={
                "SLI (30 d)": st.column_config.NumberColumn(format="%.4f"),
                "budget left": st.column_config.NumberColumn(format="percent"),
            },
        )
        ui.small_sample_caution(table, what="scores", keys=("SLO", "site"))
        quiet = [
            ui.no_predictions_since(volumes, model=str(r["model"]), site=str(r["site"]))
            for _, r in table.drop_duplicates(["model", "site"]).iterrows()
            if not volumes.empty
            and _last_seen_hours(volumes, str(r["model"]), str(r["site"]), now) > 2
        ]
        if quiet:
            st.info(
                "Quiet for over two hours — their SLOs have little or nothing to measure:\n"
                + "\n".join(f"- {sentence}" for sentence in quiet),
                icon=":material/signal_disconnected:",
            )

    st.subheader("Stale feeds")
    if feeds.empty:
        st.caption("No deployed model depends on a feed yet, so there is nothing to go stale.")
    elif stale.empty:
        st.success("Every feed is fresh.", icon=":material/check_circle:")
    else:
        st.dataframe(
            stale[["site", "feed", "status", "event_lag_min", "staleness_min", "reason", "models"]],
            hide_index=True,
            width="stretch",
            key="live_stale_feeds",
        )

    st.subheader("Open alerts")
    if alerts.empty:
        st.success("No open alerts.", icon=":material/check_circle:")
    else:
        st.dataframe(
            alerts[["severity", "status", "model", "site", "monitor", "summary", "opened_at"]],
            hide_index=True,
            width="stretch",
            key="live_alerts",
        )
        st.page_link(
            "app_pages/incidents.py",
            label="Work them in the incident console",
            icon=":material/emergency:",
            query_params={k: v for k, v in (("model", model), ("site", site)) if v and v != EVERY},
        )
    st.caption(f"Updated {now:%H:%M:%S} UTC.")


def _last_seen_hours(volumes: pd.DataFrame, model: str, site: str, now: datetime) -> float:
    rows = volumes[(volumes["model"] == model) & (volumes["site"] == site)]
    if rows.empty or pd.isna(rows["last_hour"].max()):
        return float("inf")
    return now.timestamp() / 3600 - float(rows["last_hour"].max()) - 1


live_view(model, site)
