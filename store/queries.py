"""Read queries for the app and reports: keyword-only functions that aggregate in the database."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from store.models import (
    MetricPoint,
    Model,
    Prediction,
    PredictionRollup,
    Quarantine,
    SchedulerHeartbeat,
    Site,
    table_of,
)

MP = table_of(MetricPoint)
M = table_of(Model)
S = table_of(Site)
R = table_of(PredictionRollup)
HB = table_of(SchedulerHeartbeat)


def latest_status_grid(*, engine: Engine, monitor: str, metric: str) -> pd.DataFrame:
    """The latest conclusive point of one metric per model × site (all versions and arms).

    Conclusive means ok, warn or breach; where a model × site has none yet (labels not
    settled, too little data), its latest point of any status is shown instead.
    """
    scope = sa.and_(
        MP.c.monitor == monitor, MP.c.metric == metric, MP.c.version_id == 0, MP.c.arm == "all"
    )

    def newest(condition: sa.ColumnElement[bool], name: str) -> sa.Subquery:
        return (
            sa.select(MP.c.model_id, MP.c.site_id, sa.func.max(MP.c.window_end).label("at"))
            .where(condition)
            .group_by(MP.c.model_id, MP.c.site_id)
            .subquery(name)
        )

    any_point = newest(scope, "any_point")
    conclusive = newest(sa.and_(scope, MP.c.status != "insufficient-data"), "conclusive")
    chosen = (
        sa.select(
            any_point.c.model_id,
            any_point.c.site_id,
            sa.func.coalesce(conclusive.c.at, any_point.c.at).label("at"),
        )
        .select_from(any_point)
        .outerjoin(
            conclusive,
            sa.and_(
                conclusive.c.model_id == any_point.c.model_id,
                conclusive.c.site_id == any_point.c.site_id,
            ),
        )
        .subquery("chosen")
    )
    query = (
        sa.select(
            M.c.name.label("model"),
            M.c.title.label("model_title"),
            S.c.code.label("site"),
            S.c.name.label("site_name"),
            S.c.kind.label("site_kind"),
            MP.c.status,
            MP.c.value,
            MP.c.ci_low,
            MP.c.ci_high,
            MP.c.n,
            MP.c.window_start,
            MP.c.window_end,
            MP.c.threshold,
            MP.c.detail,
            MP.c.computed_at,
        )
        .join(
            chosen,
            sa.and_(
                MP.c.model_id == chosen.c.model_id,
                MP.c.site_id == chosen.c.site_id,
                MP.c.window_end == chosen.c.at,
            ),
        )
        .join(M, M.c.id == MP.c.model_id)
        .join(S, S.c.id == MP.c.site_id)
        .where(scope)
        .order_by(M.c.name, S.c.code)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def metric_series(
    *, engine: Engine, monitor: str, metric: str, model: str, since: datetime | None = None
) -> pd.DataFrame:
    """Every point of one metric for one model, per site, oldest first."""
    query = (
        sa.select(
            S.c.code.label("site"),
            MP.c.window_start,
            MP.c.window_end,
            MP.c.value,
            MP.c.ci_low,
            MP.c.ci_high,
            MP.c.status,
            MP.c.n,
        )
        .join(M, M.c.id == MP.c.model_id)
        .join(S, S.c.id == MP.c.site_id)
        .where(
            MP.c.monitor == monitor,
            MP.c.metric == metric,
            M.c.name == model,
            MP.c.version_id == 0,
            MP.c.arm == "all",
        )
        .order_by(S.c.code, MP.c.window_end)
    )
    if since is not None:
        query = query.where(MP.c.window_end >= since)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def scheduler_heartbeat(*, engine: Engine) -> dict[str, object] | None:
    """The scheduler's heartbeat row, or None if it has never run."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(HB).order_by(HB.c.beat_at.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def volume_summary(*, engine: Engine) -> pd.DataFrame:
    """Predictions, alerts and the newest scored hour per model × site, from the rollups."""
    query = (
        sa.select(
            M.c.name.label("model"),
            S.c.code.label("site"),
            sa.func.sum(R.c.n).label("predictions"),
            sa.func.sum(R.c.n_alert).label("alerts"),
            sa.func.max(R.c.hour).label("last_hour"),
        )
        .join(M, M.c.id == R.c.model_id)
        .join(S, S.c.id == R.c.site_id)
        .group_by(M.c.name, S.c.code)
        .order_by(M.c.name, S.c.code)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def quarantine_counts(*, engine: Engine) -> pd.DataFrame:
    """Quarantined rows per source kind and reason."""
    Q = table_of(Quarantine)
    query = (
        sa.select(Q.c.source_kind, Q.c.reason, sa.func.count().label("rows"))
        .group_by(Q.c.source_kind, Q.c.reason)
        .order_by(sa.func.count().desc())
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def prediction_count(*, engine: Engine) -> int:
    """Stored predictions (estimated from the rollups, so it stays cheap at scale)."""
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(R.c.n), 0))).scalar()
    return int(total or 0)


__all__ = [
    "Prediction",
    "latest_status_grid",
    "metric_series",
    "prediction_count",
    "quarantine_counts",
    "scheduler_heartbeat",
    "volume_summary",
]
