"""Cached loaders for the pages: the engine once per process, queries for a short time."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import streamlit as st
from sqlalchemy.engine import Engine

from store import queries
from store.db import make_engine
from vigil.config import get_settings


@st.cache_resource
def engine() -> Engine:
    return make_engine(get_settings().database_url)


@st.cache_data(ttl=30, show_spinner=False)
def status_grid(monitor: str, metric: str) -> pd.DataFrame:
    return queries.latest_status_grid(engine=engine(), monitor=monitor, metric=metric)


@st.cache_data(ttl=30, show_spinner=False)
def metric_series(monitor: str, metric: str, model: str) -> pd.DataFrame:
    return queries.metric_series(engine=engine(), monitor=monitor, metric=metric, model=model)


@st.cache_data(ttl=10, show_spinner=False)
def heartbeat() -> dict[str, object] | None:
    return queries.scheduler_heartbeat(engine=engine())


@st.cache_data(ttl=30, show_spinner=False)
def volumes() -> pd.DataFrame:
    return queries.volume_summary(engine=engine())


@st.cache_data(ttl=30, show_spinner=False)
def quarantine() -> pd.DataFrame:
    return queries.quarantine_counts(engine=engine())


# ---------------------------------------------------------------- incident response


@st.cache_data(ttl=5, show_spinner=False)
def incident_alerts(include_resolved: bool = False) -> pd.DataFrame:
    from incidents.console import alerts_frame

    return alerts_frame(engine(), include_resolved=include_resolved)


@st.cache_data(ttl=5, show_spinner=False)
def score_statuses() -> pd.DataFrame:
    from incidents.console import statuses_frame

    return statuses_frame(engine())


@st.cache_data(ttl=5, show_spinner=False)
def disabled_switches() -> pd.DataFrame:
    from incidents.console import disabled_switches_frame

    return disabled_switches_frame(engine())


@st.cache_data(ttl=5, show_spinner=False)
def open_incidents() -> pd.DataFrame:
    from incidents.console import incidents_frame

    return incidents_frame(engine())


@st.cache_data(ttl=5, show_spinner=False)
def audit_timeline(target_contains: str | None = None) -> pd.DataFrame:
    from incidents.console import timeline_frame

    return timeline_frame(engine(), target_contains=target_contains)


@st.cache_data(ttl=30, show_spinner=False)
def audit_chain() -> dict[str, object]:
    from incidents.audit import verify_chain

    report = verify_chain(engine())
    return {"ok": report.ok, "text": str(report), "events": report.events}


@st.cache_data(ttl=5, show_spinner=False)
def undeliverable_pages() -> pd.DataFrame:
    from incidents.console import undeliverable_frame

    return undeliverable_frame(engine())


def clear_incident_caches() -> None:
    """After an action: the console must show its effect at once, not after the TTL."""
    for loader in (
        incident_alerts,
        score_statuses,
        disabled_switches,
        open_incidents,
        audit_timeline,
        audit_chain,
        undeliverable_pages,
    ):
        loader.clear()


@st.cache_data(ttl=60, show_spinner=False)
def registry_overview() -> dict[str, pd.DataFrame]:
    return queries.registry_overview(engine=engine())


# ---------------------------------------------------------------- canary


@st.cache_data(ttl=30, show_spinner=False)
def canary_overview() -> pd.DataFrame:
    return queries.canary_overview(engine=engine())


@st.cache_data(ttl=30, show_spinner=False)
def canary_judgements(model: str, site: str, version: str) -> pd.DataFrame:
    return queries.canary_judgements(engine=engine(), model=model, site=site, version=version)


@st.cache_data(ttl=60, show_spinner=False)
def canary_histograms(
    model: str, site: str, version: str, control_version: str, start: datetime, end: datetime
) -> dict[str, pd.DataFrame]:
    return queries.canary_histograms(
        engine=engine(),
        model=model,
        site=site,
        version=version,
        control_version=control_version,
        start=start,
        end=end,
    )


@st.cache_data(ttl=30, show_spinner=False)
def stage_history(model: str) -> pd.DataFrame:
    from incidents.promotion import stage_history as history

    return pd.DataFrame(
        history(engine(), model=model),
        columns=["version", "from_stage", "to_stage", "actor", "role", "at", "reason"],
    )


def clear_canary_caches() -> None:
    """After promote or roll back, show the new stage and switch state at once."""
    for loader in (canary_overview, canary_judgements, stage_history):
        loader.clear()
    clear_incident_caches()


# ---------------------------------------------------------------- operational monitors


def _days_ago(days: float) -> datetime:
    from datetime import UTC, timedelta

    return datetime.now(UTC) - timedelta(days=days)


@st.cache_data(ttl=30, show_spinner=False)
def latest_points(monitors: tuple[str, ...], model: str | None = None) -> pd.DataFrame:
    return queries.latest_points(
        engine=engine(), monitors=monitors, model=model, since=_days_ago(60)
    )


@st.cache_data(ttl=30, show_spinner=False)
def points_since(monitors: tuple[str, ...], model: str, days: float) -> pd.DataFrame:
    return queries.points_since(
        engine=engine(), monitors=monitors, model=model, since=_days_ago(days)
    )


def _before(frame: pd.DataFrame, column: str, end: datetime | None) -> pd.DataFrame:
    if end is None or frame.empty:
        return frame
    return frame[pd.to_datetime(frame[column], utc=True) < end].reset_index(drop=True)


def _range_bounds(
    days: int | None, first: date | None, last: date | None
) -> tuple[datetime, datetime | None]:
    """[start, end) of a page's time range (`app.links.TimeRange`); end None: up to now."""
    from datetime import UTC

    from app.links import TimeRange

    span = TimeRange(days=days, first=first, last=last)
    start, end = span.bounds(datetime.now(UTC))
    return start, (end if first is not None else None)


@st.cache_data(ttl=30, show_spinner=False)
def points_in(
    monitors: tuple[str, ...],
    model: str,
    days: int | None,
    first: date | None = None,
    last: date | None = None,
) -> pd.DataFrame:
    """Points whose window ends in a page's time range (the last `days`, or first..last)."""
    start, end = _range_bounds(days, first, last)
    frame = queries.points_since(engine=engine(), monitors=monitors, model=model, since=start)
    return _before(frame, "window_end", end)


@st.cache_data(ttl=15, show_spinner=False)
def feed_status() -> pd.DataFrame:
    from monitors.config import MonitorConfig
    from monitors.freshness import feed_status_table

    return feed_status_table(engine(), MonitorConfig.from_file())


@st.cache_data(ttl=60, show_spinner=False)
def feed_history(site: str, days: float) -> pd.DataFrame:
    return queries.feed_history(engine=engine(), site=site, since=_days_ago(days))


@st.cache_data(ttl=60, show_spinner=False)
def feed_history_in(
    site: str, days: int | None, first: date | None = None, last: date | None = None
) -> pd.DataFrame:
    """Heartbeats received in a page's time range (the last `days`, or first..last)."""
    start, end = _range_bounds(days, first, last)
    return _before(
        queries.feed_history(engine=engine(), site=site, since=start), "received_at", end
    )


@st.cache_data(ttl=60, show_spinner=False)
def degraded_scores(days: float) -> pd.DataFrame:
    return queries.degraded_scores(engine=engine(), since=_days_ago(days))


@st.cache_data(ttl=60, show_spinner=False)
def alert_hours(model: str, site: str, days: float) -> pd.DataFrame:
    return queries.alert_hours(engine=engine(), model=model, site=site, since=_days_ago(days))


@st.cache_data(ttl=300, show_spinner=False)
def site_directory() -> pd.DataFrame:
    return queries.site_directory(engine=engine())


# ---------------------------------------------------------------- clinical-quality monitors


@st.cache_data(ttl=30, show_spinner=False)
def clinical_latest(monitor: str, model: str) -> pd.DataFrame:
    return queries.latest_conclusive_points(engine=engine(), monitor=monitor, model=model)


@st.cache_data(ttl=30, show_spinner=False)
def clinical_series(monitor: str, metrics: tuple[str, ...], model: str) -> pd.DataFrame:
    return queries.metric_points(
        engine=engine(), monitor=monitor, metrics=list(metrics), model=model
    )


@st.cache_data(ttl=300, show_spinner=False)
def cusum_limits(model: str) -> pd.DataFrame:
    return queries.cusum_limits(engine=engine(), model=model)


@st.cache_data(ttl=60, show_spinner=False)
def drift_histograms(
    model: str, site: str, feature: str, since: datetime, until: datetime
) -> pd.DataFrame:
    return queries.drift_histograms(
        engine=engine(), model=model, site=site, feature=feature, since=since, until=until
    )


def evidently_report(model: str, site: str, until: datetime | None = None) -> str:
    """A fresh Evidently data-drift report (HTML) of one model x site; not cached."""
    from monitors.drift_report import build_drift_report

    return build_drift_report(engine(), model=model, site=site, now=until)


@st.cache_data(ttl=300, show_spinner=False)
def model_input_edges(model: str) -> dict[str, list[float]]:
    return queries.model_input_edges(engine=engine(), model=model)
