"""Feed freshness per feed × site, and the scores made on stale inputs marked degraded.

Each interface-engine heartbeat (`feedstatus`) reports the feed's newest event. Two ages:

- event-time lag = received_at - last_event_at of the newest heartbeat: the feed stopped
  carrying events (the interface is up but the lab system behind it is not);
- load staleness = now - received_at of the newest heartbeat: heartbeats stopped arriving
  (the interface engine or our collector is down).

Each has dbt-style tiers, `warn_after` and `error_after` (config/monitors.yaml,
`feed_freshness`); no heartbeat at all is an error. "Now" is a parameter everywhere.

A model's result covers the feeds its inputs come from, one metric per feed. Once a feed it
depends on reaches the error tier, every score of the model at that site since the feed's last
event is marked `degraded` (it was computed without that feed's data), until the first
heartbeat back below the error tier; the rollup hours touched are rebuilt.

Detection delay: a feed whose events stop is an error at its first heartbeat after
`error_after` has passed since its last event, so within error_after + one heartbeat interval
(15 min in the demo) + one collect and one monitor interval (1 min each).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status, worst
from monitors.config import MonitorConfig
from monitors.durations import EPOCH, floor_hour, format_duration, parse_duration
from monitors.runner import write_results
from store.models import Deployment, FeedStatus, Model, Prediction, Site, table_of, utcnow
from store.rollups import get_state, rebuild_hours, set_state

logger = logging.getLogger(__name__)

MONITOR = "feed_freshness"
RUNBOOK = "stale-feed"
WM_DEGRADED = "feed_freshness.degraded_through"
FS = table_of(FeedStatus)
P = table_of(Prediction)


@dataclass(frozen=True)
class Tier:
    """dbt-style freshness tiers: older than `warn_after` warns, older than `error_after` errors."""

    warn_after: timedelta
    error_after: timedelta

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Tier:
        tier = cls(parse_duration(raw["warn_after"]), parse_duration(raw["error_after"]))
        if tier.error_after < tier.warn_after:
            raise ValueError(f"freshness tier {raw}: error_after is shorter than warn_after")
        return tier

    def describe(self) -> str:
        return (
            f"warn after {format_duration(self.warn_after)}, "
            f"error after {format_duration(self.error_after)}"
        )


@dataclass(frozen=True)
class FreshnessConfig:
    """Per model (and site): the feeds its inputs come from, and each feed's tiers."""

    feeds: list[str] = field(default_factory=list)
    event_lag: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_staleness: dict[str, Any] = field(
        default_factory=lambda: {"warn_after": "30m", "error_after": "1h"}
    )

    def lag_tier(self, feed: str) -> Tier:
        if feed not in self.event_lag:
            raise ValueError(f"feed_freshness: no event_lag tiers for feed {feed!r}")
        return Tier.parse(self.event_lag[feed])

    def staleness_tier(self) -> Tier:
        return Tier.parse(self.load_staleness)


@dataclass(frozen=True)
class Heartbeat:
    received_at: datetime
    last_event_at: datetime | None
    messages: int = 0


@dataclass(frozen=True)
class FeedAssessment:
    status: Status
    lag_status: Status
    staleness_status: Status
    event_lag: timedelta | None
    staleness: timedelta | None
    reason: str


# ---------------------------------------------------------------- pure


def tier_status(age: timedelta | None, tier: Tier) -> Status:
    """dbt source freshness: at or past error_after is an error, past warn_after a warning;
    an unknown age (no data) is an error."""
    if age is None or age >= tier.error_after:
        return Status.BREACH
    if age >= tier.warn_after:
        return Status.WARN
    return Status.OK


def event_lag(beat: Heartbeat) -> timedelta | None:
    """How far the feed's newest event trails its heartbeat (received - last event)."""
    return None if beat.last_event_at is None else beat.received_at - beat.last_event_at


def assess_feed(
    latest: Heartbeat | None, *, now: datetime, lag_tier: Tier, staleness_tier: Tier
) -> FeedAssessment:
    """Both ages of one feed at one site as of `now`, from its newest heartbeat."""
    if latest is None:
        return FeedAssessment(
            Status.BREACH, Status.BREACH, Status.BREACH, None, None, "no heartbeat received"
        )
    lag = event_lag(latest)
    staleness = now - latest.received_at
    lag_status = tier_status(lag, lag_tier)
    staleness_status = tier_status(staleness, staleness_tier)
    reasons = []
    if lag is None:
        reasons.append("the heartbeat reports no event at all")
    elif lag_status != Status.OK:
        reasons.append(f"newest event {_minutes(lag)} before its heartbeat ({lag_tier.describe()})")
    if staleness_status != Status.OK:
        reasons.append(f"no heartbeat for {_minutes(staleness)} ({staleness_tier.describe()})")
    return FeedAssessment(
        worst([lag_status, staleness_status]),
        lag_status,
        staleness_status,
        lag,
        staleness,
        "; ".join(reasons) or "fresh",
    )


def stale_intervals(
    beats: Sequence[Heartbeat], *, error_after: timedelta, now: datetime
) -> list[tuple[datetime, datetime]]:
    """When a feed's data was missing, from heartbeats sorted by received_at: each heartbeat at
    the error tier covers from its last event (or itself, if it has none) to the next heartbeat
    (or `now`). Overlaps are merged."""
    spans: list[tuple[datetime, datetime]] = []
    for index, beat in enumerate(beats):
        lag = event_lag(beat)
        if lag is not None and lag < error_after:
            continue
        start = beat.last_event_at or beat.received_at
        end = beats[index + 1].received_at if index + 1 < len(beats) else now
        if end <= start:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


# ---------------------------------------------------------------- I/O


FeedKey = tuple[int, str]  # (site_id, feed)
_CHUNK = 400  # keys per statement: 2 parameters each, well inside both databases' limits


def _keys(chunk: Sequence[FeedKey]) -> sa.CTE:
    """The (site_id, feed) keys as a VALUES list."""
    return (
        sa.values(
            sa.column("site_id", FS.c.site_id.type), sa.column("feed", FS.c.feed.type), name="k"
        )
        .data(list(chunk))
        .cte("k")
    )


def _chunks(keys: Sequence[FeedKey]) -> list[Sequence[FeedKey]]:
    return [keys[start : start + _CHUNK] for start in range(0, len(keys), _CHUNK)]


def _latest_query(chunk: Sequence[FeedKey], now: datetime) -> sa.Select[Any]:
    """Each key's newest heartbeat received by `now` (NULLs where none).

    Each column is a correlated subquery in the select list, one backward seek per key of the
    index (site_id, feed, received_at): a subquery there runs once per key on both databases,
    where a join back to the table may be planned as a scan of it. received_at is unique per
    key, so the three seeks find the same row.
    """
    k = _keys(chunk)
    n = FS.alias("n")

    def newest(column: str) -> Any:
        return (
            sa.select(n.c[column])
            .where(n.c.site_id == k.c.site_id, n.c.feed == k.c.feed, n.c.received_at <= now)
            .order_by(n.c.received_at.desc())
            .limit(1)
            .scalar_subquery()
            .label(column)
        )

    return sa.select(
        k.c.site_id, k.c.feed, *[newest(c) for c in ("received_at", "last_event_at", "messages")]
    )


def _window_query(chunk: Sequence[FeedKey], start: datetime, end: datetime) -> sa.Select[Any]:
    """Every heartbeat of each key received in [start, end], by key and time. The join is one
    range of the index (site_id, feed, received_at) per key."""
    k = _keys(chunk)
    return (
        sa.select(FS.c.site_id, FS.c.feed, FS.c.received_at, FS.c.last_event_at, FS.c.messages)
        .select_from(k)
        .join(
            FS,
            sa.and_(
                FS.c.site_id == k.c.site_id,
                FS.c.feed == k.c.feed,
                FS.c.received_at >= start,
                FS.c.received_at <= end,
            ),
        )
        .order_by(FS.c.site_id, FS.c.feed, FS.c.received_at)
    )


def latest_heartbeats(
    conn: Connection, keys: Sequence[FeedKey], now: datetime
) -> dict[FeedKey, Heartbeat | None]:
    """The newest heartbeat received by `now` of each (site, feed), None where there is none:
    one statement per 400 keys instead of one per key (each statement costs far more in
    overhead than its index probes)."""
    unique = sorted(set(keys))
    found: dict[FeedKey, Heartbeat | None] = dict.fromkeys(unique)
    for chunk in _chunks(unique):
        for row in conn.execute(_latest_query(chunk, now)).all():
            if row.received_at is not None:
                found[(int(row.site_id), str(row.feed))] = Heartbeat(
                    row.received_at, row.last_event_at, row.messages
                )
    return found


def heartbeats_in_window(
    conn: Connection, keys: Sequence[FeedKey], start: datetime, end: datetime
) -> dict[FeedKey, list[Heartbeat]]:
    """Each (site, feed)'s heartbeats received in [start, end], sorted by received_at: one
    statement per 400 keys."""
    unique = sorted(set(keys))
    found: dict[FeedKey, list[Heartbeat]] = {key: [] for key in unique}
    for chunk in _chunks(unique):
        for row in conn.execute(_window_query(chunk, start, end)).all():
            found[(int(row.site_id), str(row.feed))].append(
                Heartbeat(row.received_at, row.last_event_at, row.messages)
            )
    return found


def mark_degraded(
    conn: Connection,
    model: Model,
    site_id: int,
    spans: Sequence[tuple[datetime, datetime]],
) -> set[int]:
    """Mark the model's scores at the site inside `spans` degraded; returns the hours touched."""
    hours: set[int] = set()
    for start, end in spans:
        hours.update(
            conn.execute(
                sa.update(P)
                .where(
                    P.c.model_id == model.id,
                    P.c.site_id == site_id,
                    P.c.scored_at >= start,
                    P.c.scored_at < end,
                    P.c.degraded.is_(False),
                )
                .values(degraded=True)
                .returning(P.c.scored_hour)
            ).scalars()
        )
    return hours


def _deployments(conn: Connection) -> dict[int, list[int]]:
    D = table_of(Deployment)
    found: dict[int, list[int]] = {}
    for model_id, site_id in conn.execute(sa.select(D.c.model_id, D.c.site_id).distinct()):
        found.setdefault(model_id, []).append(site_id)
    return {k: sorted(v) for k, v in found.items()}


def _site_configs(
    config: MonitorConfig,
    models: Sequence[Model],
    deployed: dict[int, list[int]],
    codes: dict[int, str],
) -> dict[tuple[int, int], FreshnessConfig]:
    """Each deployment's (model id, site id) freshness config, resolved once so that the feeds
    to read are known before any is read."""
    return {
        (model.id, site_id): config.for_monitor(
            MONITOR, FreshnessConfig, model=model.name, site=codes[site_id]
        )
        for model in models
        if model.id is not None
        for site_id in deployed.get(model.id, [])
    }


def run_feed_freshness(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Assess every feed each deployed model depends on, and mark scores on stale inputs."""
    now = now or utcnow()
    results: list[MonitorResult] = []
    degraded = 0
    with engine.begin() as conn:
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        S = table_of(Site)
        codes = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        deployed = _deployments(conn)
        since = datetime.fromisoformat(get_state(conn, WM_DEGRADED, EPOCH.isoformat()))
        configs = _site_configs(config, models, deployed, codes)
        keys = [(site_id, feed) for (_, site_id), cfg in configs.items() for feed in cfg.feeds]
        # Nothing below writes heartbeats, so every feed's reads can be made up front.
        latest = latest_heartbeats(conn, keys, now)
        # Scores since the previous run (and the heartbeat before it, whose span the newer
        # heartbeats close) are checked against the error tier.
        beats = heartbeats_in_window(conn, keys, since - timedelta(hours=1), now)
        for model in models:
            assert model.id is not None
            hours: set[int] = set()
            for site_id in deployed.get(model.id, []):
                cfg = configs[(model.id, site_id)]
                staleness_tier = cfg.staleness_tier()
                for feed in cfg.feeds:
                    key = (site_id, feed)
                    tier = cfg.lag_tier(feed)
                    assessment = assess_feed(
                        latest[key], now=now, lag_tier=tier, staleness_tier=staleness_tier
                    )
                    results.append(
                        _result(
                            assessment,
                            latest[key],
                            model=model,
                            site=(site_id, codes[site_id]),
                            feed=feed,
                            tiers=(tier, staleness_tier),
                            now=now,
                        )
                    )
                    spans = stale_intervals(beats[key], error_after=tier.error_after, now=now)
                    if spans:
                        hours |= mark_degraded(conn, model, site_id, spans)
            if hours:
                # Rollups are stamped with processing time so incremental readers see them.
                rebuild_hours(conn, model, hours, now=utcnow())
                degraded += len(hours)
        write_results(conn, results, now=now)
        set_state(conn, WM_DEGRADED, max(since, now).isoformat())
    logger.info("feed_freshness: %d points, %d rollup hours rebuilt", len(results), degraded)
    return results


def _result(
    assessment: FeedAssessment,
    latest: Heartbeat | None,
    *,
    model: Model,
    site: tuple[int, str],
    feed: str,
    tiers: tuple[Tier, Tier],
    now: datetime,
) -> MonitorResult:
    assert model.id is not None
    lag = assessment.event_lag
    summary = f"{feed} feed at {site[1]} ({model.name} input): {assessment.reason}"
    return MonitorResult(
        monitor=MONITOR,
        metric=f"feed:{feed}",
        model_id=model.id,
        site_id=site[0],
        window_start=floor_hour(now),  # one point per hour, the latest assessment in it
        window_end=now,
        status=assessment.status,
        value=None if lag is None else round(lag.total_seconds() / 60, 2),
        n=0 if latest is None else latest.messages,
        threshold=f"event-time lag: {tiers[0].describe()}; load staleness: {tiers[1].describe()}",
        runbook=RUNBOOK,
        detail={
            "feed": feed,
            "event_lag_minutes": None if lag is None else round(lag.total_seconds() / 60, 2),
            "load_staleness_minutes": (
                None
                if assessment.staleness is None
                else round(assessment.staleness.total_seconds() / 60, 2)
            ),
            "lag_status": assessment.lag_status.value,
            "staleness_status": assessment.staleness_status.value,
            "last_event_at": None
            if latest is None or latest.last_event_at is None
            else latest.last_event_at.isoformat(),
            "received_at": None if latest is None else latest.received_at.isoformat(),
            "severity": "page" if assessment.status == Status.BREACH else None,
            "summary": summary,
        },
    )


def feed_status_table(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> pd.DataFrame:
    """Every feed × site a deployed model reads, assessed as of `now` without writing anything
    (the dashboard shows it live, even when the scheduler is down)."""
    now = now or utcnow()
    rows: list[dict[str, Any]] = []
    with engine.connect() as conn:
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        S = table_of(Site)
        codes = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        deployed = _deployments(conn)
        configs = _site_configs(config, models, deployed, codes)
        newest = latest_heartbeats(
            conn, [(site_id, feed) for (_, site_id), c in configs.items() for feed in c.feeds], now
        )
        seen: dict[tuple[int, str], dict[str, Any]] = {}
        for model in models:
            for site_id in deployed.get(model.id or 0, []):
                cfg = configs[(model.id or 0, site_id)]
                for feed in cfg.feeds:
                    if (site_id, feed) in seen:
                        seen[(site_id, feed)]["models"].append(model.name)
                        continue
                    latest = newest[(site_id, feed)]
                    tier, stale_tier = cfg.lag_tier(feed), cfg.staleness_tier()
                    verdict = assess_feed(latest, now=now, lag_tier=tier, staleness_tier=stale_tier)
                    row = {
                        "site": codes[site_id],
                        "feed": feed,
                        "status": verdict.status.value,
                        "event_lag_min": None
                        if verdict.event_lag is None
                        else round(verdict.event_lag.total_seconds() / 60, 1),
                        "lag_status": verdict.lag_status.value,
                        "staleness_min": None
                        if verdict.staleness is None
                        else round(verdict.staleness.total_seconds() / 60, 1),
                        "staleness_status": verdict.staleness_status.value,
                        "last_event_at": None if latest is None else latest.last_event_at,
                        "received_at": None if latest is None else latest.received_at,
                        "messages": None if latest is None else latest.messages,
                        "lag_tiers": tier.describe(),
                        "staleness_tiers": stale_tier.describe(),
                        "reason": verdict.reason,
                        "models": [model.name],
                    }
                    seen[(site_id, feed)] = row
                    rows.append(row)
    for row in rows:
        row["models"] = ", ".join(row["models"])
    return (
        pd.DataFrame(rows).sort_values(["site", "feed"]).reset_index(drop=True)
        if rows
        else (pd.DataFrame(columns=["site", "feed", "status"]))
    )
