"""Every table of the store.

Timestamps are timezone-aware UTC everywhere: `UTCDateTime` refuses naive values on the
way in and returns aware values on the way out, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

# Named constraints, so migrations can alter them on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer primary keys that are BIGINT on PostgreSQL and the rowid on SQLite.
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC; naive datetimes are refused rather than guessed."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: Vigil stores timezone-aware UTC only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite has no time zone type; store naive UTC so text order is time order.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def ts_field(*, nullable: bool = False, index: bool = False, default_now: bool = False) -> Any:
    """A UTC timestamp column."""
    kwargs: dict[str, Any] = {}
    if default_now:
        kwargs["default_factory"] = utcnow
    elif nullable:
        kwargs["default"] = None
    return Field(sa_type=UTCDateTime, nullable=nullable, index=index, **kwargs)


# ---------------------------------------------------------------- registry


class Site(SQLModel, table=True):
    """A hospital where models are deployed."""

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, max_length=32)
    name: str
    kind: str = Field(max_length=32)  # academic, community, critical-access
    timezone: str = Field(default="UTC", max_length=64)
    beds: int = 0


class Model(SQLModel, table=True):
    """A clinical prediction model (all of its versions)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=64)
    title: str
    outcome: str = Field(max_length=64)
    horizon_hours: float
    label_lag_hours: float = 48.0
    settles_on_closure: bool = True
    latency_slo_seconds: float = 300.0
    scoring_interval_minutes: int = 0
    # Named inputs monitored for drift: {name: {"unit": str, "edges": [bin edges]}}
    inputs: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)


class ModelVersion(SQLModel, table=True):
    """One released version of a model, with its lineage."""

    __table_args__ = (sa.UniqueConstraint("model_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    version: str = Field(max_length=32)  # semver
    stage: str = Field(default="development", max_length=16)
    threshold: float
    artifact_sha256: str = Field(default="", max_length=64)
    training_data: str = ""
    feature_set: str = ""
    calibration: str = ""
    approver: str = ""
    created_at: datetime = ts_field(default_now=True)


class Deployment(SQLModel, table=True):
    """A model version running at a site (optionally one unit) in an arm."""

    __table_args__ = (sa.UniqueConstraint("model_id", "version_id", "site_id", "unit", "arm"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    version_id: int = Field(foreign_key="modelversion.id")
    site_id: int = Field(foreign_key="site.id", index=True)
    unit: str = Field(default="", max_length=32)  # empty: every unit of the site
    arm: str = Field(default="control", max_length=16)  # control, canary, shadow
    alert_threshold: float
    enabled: bool = True
    started_at: datetime = ts_field(default_now=True)


# ---------------------------------------------------------------- facts


class Prediction(SQLModel, table=True):
    """One score as logged by the scoring service; the encounter id only as a keyed hash."""

    __table_args__ = (
        sa.Index("ix_prediction_model_site_scored", "model_id", "site_id", "scored_at"),
        sa.Index("ix_prediction_hour", "model_id", "scored_hour"),
        sa.Index(
            "ix_prediction_pending",
            "model_id",
            "horizon_end",
            sqlite_where=sa.text("label IS NULL"),
            postgresql_where=sa.text("label IS NULL"),
        ),
        sa.Index(  # alert burden: a patient's earlier alerts, covering (migration 0007)
            "ix_prediction_alerts",
            "model_id",
            "encounter_key",
            "scored_at",
            "scored_hour",
            "site_id",
            "unit",
            "arm",
            "alert",  # SQLite counts an index as covering only if it holds every column named
            sqlite_where=sa.text("alert = 1"),
            postgresql_where=sa.text("alert"),
        ),
        # This run's settlements (settled_at = the run's time). Partial: a new prediction is
        # pending, so inserting it leaves this index alone (migration 0007_ingest).
        sa.Index(
            "ix_prediction_settled",
            "settled_at",
            sqlite_where=sa.text("settled_at IS NOT NULL"),
            postgresql_where=sa.text("settled_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    prediction_id: str = Field(unique=True, max_length=128)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="modelversion.id")
    site_id: int = Field(foreign_key="site.id")
    unit: str = Field(default="", max_length=32)
    arm: str = Field(default="control", max_length=16)
    encounter_key: str = Field(max_length=64, index=True)
    trigger_at: datetime = ts_field()
    scored_at: datetime = ts_field()
    delivered_at: datetime | None = ts_field(nullable=True)
    scored_hour: int  # hours since the Unix epoch, UTC: the rollup bucket
    horizon_end: datetime = ts_field()  # scored_at + the model's horizon
    score: float | None = None
    score_bin: int | None = None  # histogram bucket, see SCORE_BIN_EDGES
    score_logit: float | None = None  # log(p / (1 - p)), p clipped to [1e-6, 1 - 1e-6]
    threshold: float | None = None
    alert: bool = False
    status: str = Field(default="ok", max_length=16)  # ok, error, timeout, suppressed
    latency_seconds: float | None = None  # delivered_at - trigger_at
    latency_bin: int | None = None  # histogram bucket, see LATENCY_BIN_EDGES
    degraded: bool = False  # scored on stale or missing inputs
    inputs: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    content_hash: str = Field(max_length=32)
    label: int | None = None  # 1 outcome within horizon, 0 settled negative, NULL pending
    settled_at: datetime | None = ts_field(nullable=True)
    ingested_at: datetime = ts_field(default_now=True)


class Outcome(SQLModel, table=True):
    """An outcome that happened to an encounter (positive labels arrive this way)."""

    __table_args__ = (sa.UniqueConstraint("encounter_key", "outcome", "outcome_at"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    encounter_key: str = Field(max_length=64, index=True)
    site_id: int = Field(foreign_key="site.id")
    outcome: str = Field(max_length=64)
    outcome_at: datetime = ts_field()
    recorded_at: datetime = ts_field()
    ingested_at: datetime = ts_field(default_now=True, index=True)


class Encounter(SQLModel, table=True):
    """An encounter closure (discharge); it settles in-stay negatives."""

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    encounter_key: str = Field(max_length=64, unique=True)
    site_id: int = Field(foreign_key="site.id")
    unit: str = Field(default="", max_length=32)
    admitted_at: datetime | None = ts_field(nullable=True)
    discharged_at: datetime = ts_field(index=True)  # closures due by time, for settlement
    recorded_at: datetime = ts_field()
    ingested_at: datetime = ts_field(default_now=True, index=True)


class FeedStatus(SQLModel, table=True):
    """One heartbeat of a data feed at a site, as reported by the interface engine."""

    __table_args__ = (
        sa.UniqueConstraint("feed", "site_id", "received_at"),
        sa.Index("ix_feedstatus_site_feed_received", "site_id", "feed", "received_at"),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    feed: str = Field(max_length=32)  # ADT, LAB, VITALS, ...
    site_id: int = Field(foreign_key="site.id")
    last_event_at: datetime | None = ts_field(nullable=True)
    received_at: datetime = ts_field()
    messages: int = 0
    errors: int = 0
    source: str = Field(default="heartbeat", max_length=16)  # heartbeat, hl7


# ---------------------------------------------------------------- rollups


class PredictionRollup(SQLModel, table=True):
    """Hourly aggregate per model x version x site x unit x arm; monitors read these."""

    __table_args__ = (
        sa.UniqueConstraint("model_id", "version_id", "site_id", "unit", "arm", "hour"),
        sa.Index("ix_rollup_model_site_hour", "model_id", "site_id", "hour"),
        sa.Index("ix_rollup_updated", "updated_at"),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="modelversion.id")
    site_id: int = Field(foreign_key="site.id")
    unit: str = Field(default="", max_length=32)
    arm: str = Field(max_length=16)
    hour: int  # hours since the Unix epoch, UTC
    n: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_timeout: int = 0
    n_alert: int = 0
    n_degraded: int = 0
    n_on_time: int = 0  # delivered within the model's latency SLO of the trigger
    sum_score: float = 0.0
    sum_score2: float = 0.0
    sum_latency: float = 0.0
    n_settled: int = 0
    n_positive: int = 0
    sum_p_settled: float = 0.0  # expected events among settled predictions
    sum_p2_settled: float = 0.0
    sum_yp_settled: float = 0.0
    n_alert_settled: int = 0
    n_alert_positive: int = 0
    updated_at: datetime = ts_field(default_now=True)


class ScoreHistogram(SQLModel, table=True):
    """Hourly score histogram (SCORE_BINS bins) with settled outcomes per bin."""

    __table_args__ = (
        sa.UniqueConstraint("model_id", "version_id", "site_id", "arm", "hour", "bin"),
        sa.Index("ix_hist_model_site_hour", "model_id", "site_id", "hour"),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="modelversion.id")
    site_id: int = Field(foreign_key="site.id")
    arm: str = Field(max_length=16)
    hour: int
    bin: int
    n: int = 0
    n_settled: int = 0
    n_positive: int = 0
    sum_p_settled: float = 0.0
    sum_logit_settled: float = 0.0  # for calibration intercept and slope on grouped data


class LatencyHistogram(SQLModel, table=True):
    """Hourly histogram of trigger-to-delivery latency (LATENCY_BIN_EDGES, seconds)."""

    __table_args__ = (
        sa.UniqueConstraint("model_id", "version_id", "site_id", "arm", "hour", "bin"),
        sa.Index("ix_latency_model_site_hour", "model_id", "site_id", "hour"),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="modelversion.id")
    site_id: int = Field(foreign_key="site.id")
    arm: str = Field(max_length=16)
    hour: int
    bin: int
    n: int = 0


class InputHistogram(SQLModel, table=True):
    """Hourly histogram of one named model input (edges from the registry); bin -1 is missing."""

    __table_args__ = (
        sa.UniqueConstraint("model_id", "version_id", "site_id", "arm", "hour", "feature", "bin"),
        sa.Index("ix_input_model_site_hour", "model_id", "site_id", "hour"),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="modelversion.id")
    site_id: int = Field(foreign_key="site.id")
    arm: str = Field(max_length=16)
    hour: int
    feature: str = Field(max_length=64)
    bin: int
    n: int = 0


# ---------------------------------------------------------------- monitoring


CONCLUSIVE = "status <> 'insufficient-data'"  # a metric point that can decide an alert


class MetricPoint(SQLModel, table=True):
    """One monitor result: a point of a metric's time series."""

    __table_args__ = (
        sa.UniqueConstraint(
            "monitor", "metric", "model_id", "version_id", "site_id", "arm", "window_start"
        ),
        sa.Index("ix_metricpoint_lookup", "monitor", "model_id", "site_id", "window_end"),
        # The newest conclusive point of a key (alert sync): one index seek, however many
        # insufficient-data points lie between it and now (migration 0010).
        sa.Index(
            "ix_metricpoint_conclusive",
            "monitor",
            "model_id",
            "site_id",
            "arm",
            "window_end",
            sqlite_where=sa.text(CONCLUSIVE),
            postgresql_where=sa.text(CONCLUSIVE),
        ),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    monitor: str = Field(max_length=64)
    metric: str = Field(max_length=64)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(default=0)  # 0: all versions together
    site_id: int = Field(default=0)  # 0: all sites together
    arm: str = Field(default="all", max_length=16)
    window_start: datetime = ts_field()
    window_end: datetime = ts_field()
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    status: str = Field(max_length=24)  # ok, warn, breach, insufficient-data
    threshold: str = ""  # human-readable rule, e.g. "breach if CI outside 0.80-1.25"
    detail: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    monitor_version: str = Field(default="1", max_length=16)
    computed_at: datetime = ts_field(default_now=True)


class Alert(SQLModel, table=True):
    """An alert raised by a monitor; one open alert per dedup key."""

    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(max_length=256, index=True)
    monitor: str = Field(max_length=64)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(default=0)
    arm: str = Field(default="all", max_length=16)
    severity: str = Field(max_length=16)  # page, ticket
    status: str = Field(default="open", max_length=16)  # open, acknowledged, resolved
    summary: str
    runbook: str = Field(max_length=64)
    opened_at: datetime = ts_field(default_now=True)
    acknowledged_at: datetime | None = ts_field(nullable=True)
    acknowledged_by: str | None = None
    resolved_at: datetime | None = ts_field(nullable=True)


class Incident(SQLModel, table=True):
    """A human-declared incident grouping alerts and actions."""

    id: int | None = Field(default=None, primary_key=True)
    title: str
    model_id: int | None = Field(default=None, foreign_key="model.id")
    site_id: int | None = None
    status: str = Field(default="open", max_length=16)
    opened_by: str
    opened_at: datetime = ts_field(default_now=True)
    closed_at: datetime | None = ts_field(nullable=True)


class AuditEvent(SQLModel, table=True):
    """Append-only, hash-chained record of every action that changes clinical behaviour."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = ts_field(default_now=True)
    actor: str
    role: str = Field(max_length=32)
    action: str = Field(max_length=64)
    target: str
    detail: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)


class PageOutbox(SQLModel, table=True):
    """A Slack page waiting to be delivered (or delivered), keyed for exactly-once."""

    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(max_length=256, unique=True)
    alert_id: int | None = Field(default=None, foreign_key="alert.id")
    channel: str
    payload: dict[str, Any] = Field(sa_type=sa.JSON)
    status: str = Field(default="pending", max_length=16)  # pending, sent, failed
    attempts: int = 0
    next_attempt_at: datetime = ts_field(default_now=True)
    last_error: str | None = None
    slack_ts: str | None = None
    created_at: datetime = ts_field(default_now=True)
    sent_at: datetime | None = ts_field(nullable=True)


class Quarantine(SQLModel, table=True):
    """An input row that broke its contract, with the reason and where it came from."""

    __table_args__ = (sa.UniqueConstraint("source_file", "location"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    source_kind: str = Field(max_length=32)  # predictions, outcomes, encounters, heartbeats
    source_file: str
    location: str = Field(max_length=64)  # "line 12" or "byte 4096"
    reason: str = Field(max_length=64, index=True)
    detail: str = ""
    raw: str = ""  # the offending row with identifiers removed, truncated
    quarantined_at: datetime = ts_field(default_now=True)


class IngestCheckpoint(SQLModel, table=True):
    """How far a source file has been ingested, so a rerun resumes and adds nothing."""

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(unique=True)
    size: int = 0
    content_hash: str = Field(max_length=64)  # sha256 of the bytes up to `offset`
    offset: int = 0
    lines: int = 0
    complete: bool = False
    updated_at: datetime = ts_field(default_now=True)


class JobState(SQLModel, table=True):
    """Small key/value state of scheduled jobs (watermarks)."""

    key: str = Field(primary_key=True, max_length=128)
    value: str
    updated_at: datetime = ts_field(default_now=True)


class SchedulerHeartbeat(SQLModel, table=True):
    """The scheduler's pulse and its last completed job runs; the dashboard checks it."""

    id: int | None = Field(default=None, primary_key=True)
    process: str = Field(unique=True, max_length=64)
    host: str
    pid: int
    started_at: datetime = ts_field()
    beat_at: datetime = ts_field()
    last_job: str | None = None
    last_job_at: datetime | None = ts_field(nullable=True)
    last_monitor_run_at: datetime | None = ts_field(nullable=True)


# Tables added by later capabilities go in their own section below, one per area.

# ---------------------------------------------------------------- collectors

# ---------------------------------------------------------------- clinical-quality monitors


class CusumLimit(SQLModel, table=True):
    """A risk-adjusted CUSUM's control limit per model x site x direction, set by simulation."""

    __table_args__ = (sa.UniqueConstraint("model_id", "site_id", "direction"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    direction: str = Field(max_length=8)  # upper (under-prediction), lower (over-prediction)
    odds_ratio: float
    target_arl_days: float
    limit: float
    simulated_arl_days: float
    out_of_control_arl_days: float | None = None
    predictions_per_day: float
    design_effect: float
    reference_start: datetime = ts_field()
    reference_end: datetime = ts_field()
    paths: int
    seed: int
    computed_at: datetime = ts_field(default_now=True)


class DriftReference(SQLModel, table=True):
    """A site's reference histogram of the score or of one input, frozen once its window ends."""

    __table_args__ = (sa.UniqueConstraint("model_id", "site_id", "feature", "bin"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    feature: str = Field(max_length=64)  # "score" or a named input
    bin: int  # -1: missing
    n: int = 0
    reference_start: datetime = ts_field()
    reference_end: datetime = ts_field()


# ---------------------------------------------------------------- operational monitors


class AlertBurdenHour(SQLModel, table=True):
    """Hourly alerts per model × site × unit × arm, with a patient's repeat alerts suppressed."""

    __table_args__ = (
        sa.UniqueConstraint("model_id", "site_id", "unit", "arm", "hour"),
        sa.Index("ix_alertburden_model_site_hour", "model_id", "site_id", "hour"),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    unit: str = Field(default="", max_length=32)
    arm: str = Field(max_length=16)
    hour: int  # hours since the Unix epoch, UTC (the prediction rollup's bucket)
    n_alert: int = 0  # alerting scores
    n_shown: int = 0  # alerts a clinician sees: repeats within the snooze window suppressed
    updated_at: datetime = ts_field(default_now=True)


# ---------------------------------------------------------------- incident response


class KillSwitch(SQLModel, table=True):
    """Whether a model's score may be shown: per model × site (0: every site) × version (0: all)."""

    __table_args__ = (sa.UniqueConstraint("model_id", "site_id", "version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(default=0)  # 0: every site of the model
    version_id: int = Field(default=0)  # 0: every version
    enabled: bool = True
    reason: str
    incident_id: int = Field(foreign_key="incident.id")
    actor: str
    role: str = Field(max_length=32)
    changed_at: datetime = ts_field(default_now=True)
    revision: int = 1  # state changes so far; part of the consumer API's ETag


class AuditHead(SQLModel, table=True):
    """The audit chain's head (one row): every append locks it, and it holds the count and
    last hash so that a deleted tail is detected as surely as an edited row."""

    id: int | None = Field(default=None, primary_key=True)
    events: int = 0
    hash: str = Field(max_length=64)
    updated_at: datetime = ts_field(default_now=True)


# ---------------------------------------------------------------- canary


class CanaryJudgement(SQLModel, table=True):
    """The canary judge's verdict for one canary version at one site, per hour (its history)
    and once for the planned analysis, with the metric table, the always-valid test and the
    recommendation in `detail`."""

    __table_args__ = (
        sa.UniqueConstraint("model_id", "site_id", "version_id", "kind", "evaluated_hour"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    version_id: int = Field(foreign_key="modelversion.id")  # the canary version
    control_version_id: int
    kind: str = Field(max_length=16)  # interim (the period so far) or planned (the decision)
    evaluated_hour: int  # hours since the Unix epoch, UTC
    window_start: datetime = ts_field()
    window_end: datetime = ts_field()
    verdict: str = Field(max_length=16)  # Pass, Marginal, Fail, No data
    score: float | None = None
    recommendation: str = Field(max_length=16)  # promote, hold, rollback
    sequential_rejected: bool = False
    detail: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    computed_at: datetime = ts_field(default_now=True)


class CanaryEncounter(SQLModel, table=True):
    """One encounter's event counts in one arm of a canary's period so far, kept up to date
    by the canary monitor (monitors/canary_clusters.py): what the judge's design effects sum,
    read from the encounters that changed instead of from every raw row of the period.
    `encounter_key` is the keyed hash the collectors stored, never a raw identifier."""

    __table_args__ = (
        sa.UniqueConstraint(
            "model_id",
            "site_id",
            "version_id",
            "control_version_id",
            "period",
            "encounter_key",
            "arm",
        ),
    )

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    version_id: int  # the canary version
    control_version_id: int
    period: str = Field(max_length=16)  # so_far (the period so far) or planned (its window)
    encounter_key: str = Field(max_length=64)
    arm: str = Field(max_length=16)  # canary or control
    scores: int = 0
    alerts: int = 0
    errors: int = 0
    late: int = 0
    degraded: int = 0
    positives: int = 0
    alerts_settled: int = 0
    alert_positives: int = 0


class StageChange(SQLModel, table=True):
    """A model version moving between release stages: who, when, why and on what evidence."""

    __table_args__ = (sa.Index("ix_stagechange_model_version", "model_id", "version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="modelversion.id")
    from_stage: str = Field(max_length=16)
    to_stage: str = Field(max_length=16)
    actor: str
    role: str = Field(max_length=32)
    at: datetime = ts_field(default_now=True)
    reason: str = ""
    evidence: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    audit_hash: str = Field(max_length=64)


# Score histogram edges: fine at the low end, where most clinical risks live.
SCORE_BIN_EDGES: tuple[float, ...] = (
    0.0, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075,
    0.09, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.4,
    0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0,
)  # fmt: skip
SCORE_BINS = len(SCORE_BIN_EDGES) - 1

# Latency histogram edges in seconds (trigger to delivery); the last bin is open-ended.
LATENCY_BIN_EDGES: tuple[float, ...] = (
    0, 5, 10, 15, 20, 30, 45, 60, 90, 120, 150, 180, 240, 300, 360, 420, 600, 900,
    1200, 1800, 2700, 3600, 7200,
)  # fmt: skip
LATENCY_BINS = len(LATENCY_BIN_EDGES)  # the last bin holds everything >= the last edge


def score_bin(score: float) -> int:
    """Histogram bucket of a score in [0, 1] (left-closed bins; 1.0 falls in the last)."""
    return min(bisect_right(SCORE_BIN_EDGES, score) - 1, SCORE_BINS - 1)


def score_logit(score: float) -> float:
    """The log-odds of a score, clipped so 0 and 1 stay finite."""
    p = min(max(score, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def latency_bin(seconds: float) -> int:
    """Histogram bucket of a latency (left-closed bins; negatives clock-skew into bin 0)."""
    return max(bisect_right(LATENCY_BIN_EDGES, seconds) - 1, 0)


def table_of(model: type[SQLModel]) -> sa.Table:
    """The Core table behind a SQLModel class (typed, for bulk SQL)."""
    return model.__table__  # type: ignore[attr-defined]


# ---------------------------------------------------------------- daily sums of the rollups


class DailyRollup(SQLModel, table=True):
    """Daily sums of the prediction rollup per model × site (all versions, units and arms).

    A cache of `predictionrollup` that monitors read whole-day windows from (28 rows a site
    instead of 672 x units): store/rollups.py `sync_daily` keeps it equal to the hourly rows.
    """

    __table_args__ = (sa.UniqueConstraint("model_id", "site_id", "day"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    day: int  # days since the Unix epoch, UTC
    n_ok: int = 0
    n_on_time: int = 0
    n_failed: int = 0  # n_error + n_timeout
    n_settled: int = 0
    n_positive: int = 0
    sum_p_settled: float = 0.0
    sum_p2_settled: float = 0.0
    sum_yp_settled: float = 0.0
    n_alert_settled: int = 0
    n_alert_positive: int = 0


class DailyScoreHistogram(SQLModel, table=True):
    """Daily sums of the score histogram per model × site × bin (all versions and arms)."""

    __table_args__ = (sa.UniqueConstraint("model_id", "site_id", "day", "bin"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    day: int
    bin: int
    n: int = 0
    n_settled: int = 0
    n_positive: int = 0
    sum_p_settled: float = 0.0
    sum_logit_settled: float = 0.0


class DailyInputHistogram(SQLModel, table=True):
    """Daily sums of the input histograms per model × site × feature × bin."""

    __table_args__ = (sa.UniqueConstraint("model_id", "site_id", "day", "feature", "bin"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    site_id: int = Field(foreign_key="site.id")
    day: int
    feature: str = Field(max_length=64)
    bin: int
    n: int = 0
