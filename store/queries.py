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


def registry_overview(*, engine: Engine) -> dict[str, pd.DataFrame]:
    """Models, their versions with lineage, and deployments per site (for the registry page)."""
    from store.models import Deployment, ModelVersion, table_of

    V, D = table_of(ModelVersion), table_of(Deployment)
    with engine.connect() as conn:
        models = pd.DataFrame(conn.execute(
            sa.select(M.c.name, M.c.title, M.c.outcome, M.c.horizon_hours,
                      M.c.label_lag_hours, M.c.latency_slo_seconds, M.c.scoring_interval_minutes)
            .order_by(M.c.name)
        ).mappings().all())  # fmt: skip
        versions = pd.DataFrame(conn.execute(
            sa.select(M.c.name.label("model"), V.c.version, V.c.stage, V.c.threshold,
                      V.c.artifact_sha256, V.c.training_data, V.c.feature_set,
                      V.c.calibration, V.c.approver, V.c.created_at)
            .join(M, M.c.id == V.c.model_id)
            .order_by(M.c.name, V.c.version)
        ).mappings().all())  # fmt: skip
        deployments = pd.DataFrame(conn.execute(
            sa.select(M.c.name.label("model"), V.c.version, S.c.code.label("site"),
                      S.c.name.label("site_name"), D.c.unit, D.c.arm, D.c.alert_threshold,
                      D.c.enabled, D.c.started_at)
            .join(M, M.c.id == D.c.model_id)
            .join(V, V.c.id == D.c.version_id)
            .join(S, S.c.id == D.c.site_id)
            .order_by(M.c.name, S.c.code, V.c.version, D.c.unit)
        ).mappings().all())  # fmt: skip
    return {"models": models, "versions": versions, "deployments": deployments}


# ---------------------------------------------------------------- canary


def canary_overview(*, engine: Engine) -> pd.DataFrame:
    """Every canary deployment with its control version, stage and latest judgement."""
    from store.models import CanaryJudgement, Deployment, ModelVersion, table_of

    V, D, CJ = table_of(ModelVersion), table_of(Deployment), table_of(CanaryJudgement)
    control, cv = D.alias("control"), V.alias("cv")
    latest = (
        sa.select(
            CJ.c.model_id,
            CJ.c.site_id,
            CJ.c.version_id,
            sa.func.max(CJ.c.evaluated_hour).label("hour"),
        )
        .where(CJ.c.kind == "interim")
        .group_by(CJ.c.model_id, CJ.c.site_id, CJ.c.version_id)
        .subquery("latest")
    )
    query = (
        sa.select(
            M.c.name.label("model"),
            S.c.code.label("site"),
            D.c.unit,
            V.c.version,
            V.c.stage,
            cv.c.version.label("control_version"),
            D.c.enabled,
            CJ.c.verdict,
            CJ.c.score,
            CJ.c.recommendation,
            CJ.c.window_start,
            CJ.c.window_end,
        )
        .join(M, M.c.id == D.c.model_id)
        .join(S, S.c.id == D.c.site_id)
        .join(V, V.c.id == D.c.version_id)
        .join(
            control,
            sa.and_(
                control.c.model_id == D.c.model_id,
                control.c.site_id == D.c.site_id,
                control.c.arm == "control",
                control.c.version_id != D.c.version_id,
            ),
        )
        .join(cv, cv.c.id == control.c.version_id)
        .outerjoin(
            latest,
            sa.and_(
                latest.c.model_id == D.c.model_id,
                latest.c.site_id == D.c.site_id,
                latest.c.version_id == D.c.version_id,
            ),
        )
        .outerjoin(
            CJ,
            sa.and_(
                CJ.c.model_id == latest.c.model_id,
                CJ.c.site_id == latest.c.site_id,
                CJ.c.version_id == latest.c.version_id,
                CJ.c.kind == "interim",
                CJ.c.evaluated_hour == latest.c.hour,
            ),
        )
        .where(D.c.arm == "canary")
        .order_by(M.c.name, S.c.code, V.c.version)
    )
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).mappings().all())
    if frame.empty:
        return frame
    return frame.drop_duplicates(["model", "site", "version"]).reset_index(drop=True)


def canary_judgements(*, engine: Engine, model: str, site: str, version: str) -> pd.DataFrame:
    """The judge's verdicts for one canary, oldest first (interim per hour, and planned)."""
    from store.models import CanaryJudgement, ModelVersion, table_of

    V, CJ = table_of(ModelVersion), table_of(CanaryJudgement)
    query = (
        sa.select(
            CJ.c.kind,
            CJ.c.evaluated_hour,
            CJ.c.window_start,
            CJ.c.window_end,
            CJ.c.verdict,
            CJ.c.score,
            CJ.c.recommendation,
            CJ.c.sequential_rejected,
            CJ.c.detail,
            CJ.c.computed_at,
        )
        .join(M, M.c.id == CJ.c.model_id)
        .join(S, S.c.id == CJ.c.site_id)
        .join(V, V.c.id == CJ.c.version_id)
        .where(M.c.name == model, S.c.code == site, V.c.version == version)
        .order_by(CJ.c.window_end, CJ.c.kind)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def canary_histograms(
    *,
    engine: Engine,
    model: str,
    site: str,
    version: str,
    control_version: str,
    start: datetime,
    end: datetime,
) -> dict[str, pd.DataFrame]:
    """Score and latency histograms of the canary and control arms at the site (per bin)."""
    from store.models import LatencyHistogram, ModelVersion, ScoreHistogram, table_of

    V = table_of(ModelVersion)
    first, last = int(start.timestamp() // 3600), int(end.timestamp() // 3600)
    out: dict[str, pd.DataFrame] = {}
    with engine.connect() as conn:
        ids = dict(
            conn.execute(
                sa.select(V.c.version, V.c.id)
                .join(M, M.c.id == V.c.model_id)
                .where(M.c.name == model, V.c.version.in_([version, control_version]))
            ).all()
        )
        site_id = conn.execute(sa.select(S.c.id).where(S.c.code == site)).scalar()
        model_id = conn.execute(sa.select(M.c.id).where(M.c.name == model)).scalar()
        for name, table in (("score", ScoreHistogram), ("latency", LatencyHistogram)):
            T = table_of(table)
            arm_of = sa.case(
                (sa.and_(T.c.arm == "canary", T.c.version_id == ids.get(version, -1)), "canary"),
                else_="control",
            )
            query = (
                sa.select(arm_of.label("arm"), T.c.bin, sa.func.sum(T.c.n).label("n"))
                .where(
                    T.c.model_id == model_id,
                    T.c.site_id == site_id,
                    T.c.hour >= first,
                    T.c.hour <= last,
                    sa.or_(
                        sa.and_(T.c.arm == "canary", T.c.version_id == ids.get(version, -1)),
                        sa.and_(
                            T.c.arm == "control", T.c.version_id == ids.get(control_version, -1)
                        ),
                    ),
                )
                .group_by(arm_of, T.c.bin)
                .order_by(arm_of, T.c.bin)
            )
            out[name] = pd.DataFrame(conn.execute(query).all(), columns=["arm", "bin", "n"])
    return out


# ---------------------------------------------------------------- operational monitors


def latest_points(
    *,
    engine: Engine,
    monitors: list[str] | tuple[str, ...],
    model: str | None = None,
    since: datetime | None = None,
) -> pd.DataFrame:
    """The newest point of each monitor × metric × model × site × arm (all versions together),
    with model name and site code (site "all" for model-wide points); `since` bounds the scan."""
    scope = sa.and_(MP.c.monitor.in_(list(monitors)), MP.c.version_id == 0)
    if since is not None:
        scope = sa.and_(scope, MP.c.window_end >= since)
    keys = [MP.c.monitor, MP.c.metric, MP.c.model_id, MP.c.site_id, MP.c.arm]
    newest = (
        sa.select(*keys, sa.func.max(MP.c.window_end).label("at"))
        .where(scope)
        .group_by(*keys)
        .subquery("newest")
    )
    query = (
        sa.select(
            MP.c.monitor,
            MP.c.metric,
            M.c.name.label("model"),
            sa.func.coalesce(S.c.code, "all").label("site"),
            MP.c.arm,
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
            newest,
            sa.and_(
                *(MP.c[k.name] == newest.c[k.name] for k in keys),
                MP.c.window_end == newest.c.at,
            ),
        )
        .join(M, M.c.id == MP.c.model_id)
        .outerjoin(S, S.c.id == MP.c.site_id)
        .where(MP.c.version_id == 0)
        .order_by(MP.c.monitor, M.c.name, MP.c.metric, S.c.code)
    )
    if model is not None:
        query = query.where(M.c.name == model)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def points_since(
    *, engine: Engine, monitors: list[str] | tuple[str, ...], model: str, since: datetime
) -> pd.DataFrame:
    """Every point of some monitors for one model since a moment, per site, oldest first."""
    query = (
        sa.select(
            MP.c.monitor,
            MP.c.metric,
            sa.func.coalesce(S.c.code, "all").label("site"),
            MP.c.window_start,
            MP.c.window_end,
            MP.c.status,
            MP.c.value,
            MP.c.ci_low,
            MP.c.ci_high,
            MP.c.n,
            MP.c.detail,
        )
        .join(M, M.c.id == MP.c.model_id)
        .outerjoin(S, S.c.id == MP.c.site_id)
        .where(
            MP.c.monitor.in_(list(monitors)),
            M.c.name == model,
            MP.c.version_id == 0,
            MP.c.window_end >= since,
        )
        .order_by(S.c.code, MP.c.window_end)
    )
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def feed_history(*, engine: Engine, site: str, since: datetime) -> pd.DataFrame:
    """Heartbeats of every feed at one site since a moment, with their event-time lag."""
    from store.models import FeedStatus

    F = table_of(FeedStatus)
    query = (
        sa.select(F.c.feed, F.c.received_at, F.c.last_event_at, F.c.messages, F.c.errors)
        .join(S, S.c.id == F.c.site_id)
        .where(S.c.code == site, F.c.received_at >= since)
        .order_by(F.c.feed, F.c.received_at)
    )
    with engine.connect() as conn:
        frame = pd.DataFrame(
            conn.execute(query).mappings().all(),
            columns=["feed", "received_at", "last_event_at", "messages", "errors"],
        )
    if not frame.empty:
        lag = pd.to_datetime(frame["received_at"], utc=True) - pd.to_datetime(
            frame["last_event_at"], utc=True
        )
        frame["event_lag_min"] = lag.dt.total_seconds() / 60
    return frame


def degraded_scores(*, engine: Engine, since: datetime) -> pd.DataFrame:
    """Scores and scores marked degraded (stale inputs) per model × site since a moment."""
    first_hour = int(since.timestamp() // 3600)
    query = (
        sa.select(
            M.c.name.label("model"),
            S.c.code.label("site"),
            sa.func.sum(R.c.n).label("scores"),
            sa.func.sum(R.c.n_degraded).label("degraded"),
        )
        .join(M, M.c.id == R.c.model_id)
        .join(S, S.c.id == R.c.site_id)
        .where(R.c.hour >= first_hour)
        .group_by(M.c.name, S.c.code)
        .order_by(M.c.name, S.c.code)
    )
    with engine.connect() as conn:
        return pd.DataFrame(
            conn.execute(query).mappings().all(), columns=["model", "site", "scores", "degraded"]
        )


def alert_hours(*, engine: Engine, model: str, site: str, since: datetime) -> pd.DataFrame:
    """Hourly scores, alerting scores and shown alerts per unit at one site since a moment."""
    from store.models import AlertBurdenHour

    AB = table_of(AlertBurdenHour)
    first_hour = int(since.timestamp() // 3600)
    scored = (
        sa.select(R.c.hour, R.c.unit, sa.func.sum(R.c.n_ok).label("n_scored"))
        .join(M, M.c.id == R.c.model_id)
        .join(S, S.c.id == R.c.site_id)
        .where(M.c.name == model, S.c.code == site, R.c.hour >= first_hour)
        .group_by(R.c.hour, R.c.unit)
    )
    alerts = (
        sa.select(
            AB.c.hour,
            AB.c.unit,
            sa.func.sum(AB.c.n_alert).label("n_alert"),
            sa.func.sum(AB.c.n_shown).label("n_shown"),
        )
        .join(M, M.c.id == AB.c.model_id)
        .join(S, S.c.id == AB.c.site_id)
        .where(M.c.name == model, S.c.code == site, AB.c.hour >= first_hour)
        .group_by(AB.c.hour, AB.c.unit)
    )
    with engine.connect() as conn:
        left = pd.DataFrame(
            conn.execute(scored).mappings().all(), columns=["hour", "unit", "n_scored"]
        )
        right = pd.DataFrame(
            conn.execute(alerts).mappings().all(), columns=["hour", "unit", "n_alert", "n_shown"]
        )
    frame = left.merge(right, on=["hour", "unit"], how="outer").fillna(0)
    return frame.astype({"hour": int}).sort_values(["hour", "unit"]).reset_index(drop=True)


def site_directory(*, engine: Engine) -> pd.DataFrame:
    """Every site: code, name, kind, beds and time zone."""
    query = sa.select(S.c.code, S.c.name, S.c.kind, S.c.beds, S.c.timezone).order_by(S.c.code)
    with engine.connect() as conn:
        return pd.DataFrame(
            conn.execute(query).mappings().all(),
            columns=["code", "name", "kind", "beds", "timezone"],
        )


# ---------------------------------------------------------------- clinical-quality monitors


def latest_conclusive_points(*, engine: Engine, monitor: str, model: str) -> pd.DataFrame:
    """Per metric × site of one monitor and model: the newest point with a verdict (ok, warn,
    breach), or the newest of any status where there is none yet (all versions and arms)."""
    scope = sa.and_(
        MP.c.monitor == monitor, MP.c.version_id == 0, MP.c.arm == "all", M.c.name == model
    )
    keys = [MP.c.metric, MP.c.site_id]

    def newest(condition: sa.ColumnElement[bool], name: str) -> sa.Subquery:
        return (
            sa.select(*keys, sa.func.max(MP.c.window_end).label("at"))
            .select_from(MP.join(M, M.c.id == MP.c.model_id))
            .where(condition)
            .group_by(*keys)
            .subquery(name)
        )

    any_point = newest(scope, "any_point")
    conclusive = newest(sa.and_(scope, MP.c.status != "insufficient-data"), "conclusive")
    chosen = (
        sa.select(
            any_point.c.metric,
            any_point.c.site_id,
            sa.func.coalesce(conclusive.c.at, any_point.c.at).label("at"),
        )
        .select_from(any_point)
        .outerjoin(
            conclusive,
            sa.and_(
                conclusive.c.metric == any_point.c.metric,
                conclusive.c.site_id == any_point.c.site_id,
            ),
        )
        .subquery("chosen")
    )
    query = (
        sa.select(
            MP.c.metric,
            S.c.code.label("site"),
            MP.c.status,
            MP.c.value,
            MP.c.ci_low,
            MP.c.ci_high,
            MP.c.n,
            MP.c.window_start,
            MP.c.window_end,
            MP.c.threshold,
            MP.c.detail,
        )
        .join(
            chosen,
            sa.and_(
                MP.c.metric == chosen.c.metric,
                MP.c.site_id == chosen.c.site_id,
                MP.c.window_end == chosen.c.at,
            ),
        )
        .join(M, M.c.id == MP.c.model_id)
        .join(S, S.c.id == MP.c.site_id)
        .where(scope)
        .order_by(MP.c.metric, S.c.code)
    )
    columns = [
        "metric", "site", "status", "value", "ci_low", "ci_high", "n", "window_start",
        "window_end", "threshold", "detail",
    ]  # fmt: skip
    with engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).mappings().all(), columns=columns)
    # Two windows can end at the same moment (a day and the partial day after it, both cut at
    # "now"): keep the later-starting, i.e. the newest, one.
    frame = frame.sort_values(["metric", "site", "window_start"])
    return frame.drop_duplicates(["metric", "site"], keep="last").reset_index(drop=True)


def metric_points(
    *, engine: Engine, monitor: str, metrics: list[str], model: str, since: datetime | None = None
) -> pd.DataFrame:
    """Every point of some metrics of one monitor and model, per site, oldest first, with detail."""
    query = (
        sa.select(
            MP.c.metric,
            S.c.code.label("site"),
            MP.c.window_start,
            MP.c.window_end,
            MP.c.value,
            MP.c.ci_low,
            MP.c.ci_high,
            MP.c.status,
            MP.c.n,
            MP.c.detail,
        )
        .join(M, M.c.id == MP.c.model_id)
        .join(S, S.c.id == MP.c.site_id)
        .where(
            MP.c.monitor == monitor,
            MP.c.metric.in_(metrics),
            M.c.name == model,
            MP.c.version_id == 0,
            MP.c.arm == "all",
        )
        .order_by(S.c.code, MP.c.metric, MP.c.window_start)
    )
    if since is not None:
        query = query.where(MP.c.window_end >= since)
    columns = [
        "metric", "site", "window_start", "window_end", "value", "ci_low", "ci_high", "status",
        "n", "detail",
    ]  # fmt: skip
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=columns)


def cusum_limits(*, engine: Engine, model: str) -> pd.DataFrame:
    """The CUSUM control limits per site and direction of one model, with their design."""
    from store.models import CusumLimit

    CL = table_of(CusumLimit)
    query = (
        sa.select(
            S.c.code.label("site"),
            CL.c.direction,
            CL.c.odds_ratio,
            CL.c.limit,
            CL.c.target_arl_days,
            CL.c.simulated_arl_days,
            CL.c.out_of_control_arl_days,
            CL.c.predictions_per_day,
            CL.c.reference_start,
            CL.c.reference_end,
        )
        .join(M, M.c.id == CL.c.model_id)
        .join(S, S.c.id == CL.c.site_id)
        .where(M.c.name == model)
        .order_by(S.c.code, CL.c.direction)
    )
    columns = [
        "site", "direction", "odds_ratio", "limit", "target_arl_days", "simulated_arl_days",
        "out_of_control_arl_days", "predictions_per_day", "reference_start", "reference_end",
    ]  # fmt: skip
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=columns)


def drift_histograms(
    *, engine: Engine, model: str, site: str, feature: str, since: datetime, until: datetime
) -> pd.DataFrame:
    """A feature's reference histogram (frozen) beside its counts in [since, until), per bin."""
    from store.models import DriftReference, InputHistogram, ScoreHistogram

    DR, H, I = table_of(DriftReference), table_of(ScoreHistogram), table_of(InputHistogram)  # noqa: E741
    first = int(since.timestamp() // 3600)
    last = int(until.timestamp() // 3600)
    reference = (
        sa.select(DR.c.bin, DR.c.n.label("reference"))
        .join(M, M.c.id == DR.c.model_id)
        .join(S, S.c.id == DR.c.site_id)
        .where(M.c.name == model, S.c.code == site, DR.c.feature == feature)
    )
    source = H if feature == "score" else I
    current = (
        sa.select(source.c.bin, sa.func.sum(source.c.n).label("current"))
        .join(M, M.c.id == source.c.model_id)
        .join(S, S.c.id == source.c.site_id)
        .where(M.c.name == model, S.c.code == site, source.c.hour >= first, source.c.hour < last)
        .group_by(source.c.bin)
    )
    if feature != "score":
        current = current.where(I.c.feature == feature)
    with engine.connect() as conn:
        ref = pd.DataFrame(conn.execute(reference).all(), columns=["bin", "reference"])
        cur = pd.DataFrame(conn.execute(current).all(), columns=["bin", "current"])
    frame = ref.merge(cur, on="bin", how="outer").fillna(0)
    return frame.astype({"bin": int}).sort_values("bin").reset_index(drop=True)


def model_input_edges(*, engine: Engine, model: str) -> dict[str, list[float]]:
    """The histogram edges of each named input of one model (from the registry)."""
    with engine.connect() as conn:
        inputs = conn.execute(sa.select(M.c.inputs).where(M.c.name == model)).scalar()
    return {name: list(spec["edges"]) for name, spec in (inputs or {}).items()}
