"""The canary monitor's I/O edge: find canaries, read their arms, judge, watch, recommend, write.

For every enabled canary deployment (arm `canary`), the canary period runs from the first hour
the canary arm scored at its site to now. Each run reads, aggregated in the database:

- the prediction rollups, score histograms and latency histograms of the canary arm and of
  the control arm at the same site over the period (the judge's inputs);
- the same rollups per hour (the always-valid test's looks);
- per-encounter event counts over the period, summed to sum(c) and sum(c^2) per arm (the
  design effects: rollups cannot know which scores share a patient). These are kept per
  encounter in `canaryencounter` and each run recounts only what arrived or settled since
  the last (monitors/canary_clusters.py), so a run reads the new rows, not the period's.

It writes one metric point per judged metric and one for the verdict (monitor `canary`,
version = the canary version, arm `canary`, window = the canary period), and one
`canaryjudgement` row per canary and hour, which is the verdict over time. The planned
analysis (the stage's exit evaluation) is judged once, over a fixed window, and kept.

`aa_comparison` builds two arms from raw predictions (two halves of the control arm by
encounter, or two control units) to check the judge against a comparison with no real
difference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status
from monitors.canary import (
    ArmData,
    CanaryConfig,
    Classification,
    Direction,
    Judgement,
    Scoring,
    Verdict,
    judge,
    pooled_design_effect,
)
from monitors.canary_clusters import Arms, cluster_query, forget_others, maintained_clusters
from monitors.config import MonitorConfig
from monitors.sequential_canary import SequentialResult, sequential_test
from store.bulk import upsert
from store.models import (
    LATENCY_BINS,
    SCORE_BINS,
    CanaryJudgement,
    Deployment,
    Incident,
    LatencyHistogram,
    Model,
    ModelVersion,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    Site,
    table_of,
    utcnow,
)

logger = logging.getLogger(__name__)

MONITOR = "canary"
RUNBOOK = "failed-canary"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
F64 = npt.NDArray[np.float64]

P = table_of(Prediction)
R = table_of(PredictionRollup)
H = table_of(ScoreHistogram)
L = table_of(LatencyHistogram)
D = table_of(Deployment)
M = table_of(Model)
S = table_of(Site)
V = table_of(ModelVersion)
INC = table_of(Incident)
CJ = table_of(CanaryJudgement)


def hour_of(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds() // 3600)


def hour_start(hour: int) -> datetime:
    return EPOCH + timedelta(hours=hour)


# ---------------------------------------------------------------- canaries


@dataclass(frozen=True)
class Canary:
    """A canary deployment and the control it is compared with."""

    model_id: int
    model: str
    site_id: int
    site: str
    unit: str
    version_id: int
    version: str
    stage: str
    control_version_id: int
    control_version: str
    registered_at: datetime
    scoring_interval_minutes: int
    latency_slo_seconds: float

    @property
    def arms(self) -> Arms:
        return Arms(
            self.model_id,
            self.site_id,
            self.version_id,
            self.control_version_id,
            self.latency_slo_seconds,
        )

    @property
    def scope(self) -> str:
        where = f"{self.site} unit {self.unit}" if self.unit else self.site
        return f"{self.model} {self.version} at {where}"


def find_canaries(conn: Connection, *, include_disabled: bool = False) -> list[Canary]:
    """Every canary deployment with the control version deployed at the same site."""
    control = D.alias("control")
    cv = V.alias("cv")
    query = (
        sa.select(
            D.c.model_id,
            M.c.name.label("model"),
            D.c.site_id,
            S.c.code.label("site"),
            D.c.unit,
            D.c.version_id,
            V.c.version,
            V.c.stage,
            control.c.version_id.label("control_version_id"),
            cv.c.version.label("control_version"),
            D.c.started_at,
            M.c.scoring_interval_minutes,
            M.c.latency_slo_seconds,
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
        .where(D.c.arm == "canary")
        .order_by(M.c.name, S.c.code, V.c.version, control.c.unit)
    )
    if not include_disabled:
        query = query.where(D.c.enabled.is_(True))
    seen: set[tuple[int, int, int]] = set()
    found = []
    for row in conn.execute(query).all():
        key = (row.model_id, row.site_id, row.version_id)
        if key in seen:  # several control deployments (units): the first, whole-site one
            continue
        seen.add(key)
        found.append(
            Canary(
                model_id=int(row.model_id),
                model=str(row.model),
                site_id=int(row.site_id),
                site=str(row.site),
                unit=str(row.unit or ""),
                version_id=int(row.version_id),
                version=str(row.version),
                stage=str(row.stage),
                control_version_id=int(row.control_version_id),
                control_version=str(row.control_version),
                registered_at=row.started_at,
                scoring_interval_minutes=int(row.scoring_interval_minutes or 0),
                latency_slo_seconds=float(row.latency_slo_seconds),
            )
        )
    return found


def first_canary_hour(conn: Connection, canary: Canary) -> int | None:
    """The first hour the canary arm scored at its site: the start of the canary period.

    The deployment's registered start is when the registry row was written, which need not
    be when the canary began taking patients; the data says when it did.
    """
    value = conn.execute(
        sa.select(sa.func.min(R.c.hour)).where(
            R.c.model_id == canary.model_id,
            R.c.site_id == canary.site_id,
            R.c.version_id == canary.version_id,
            R.c.arm == "canary",
        )
    ).scalar()
    return None if value is None else int(value)


# ---------------------------------------------------------------- the arms' data


_ROLLUP_SUMS = (
    "n",
    "n_ok",
    "n_error",
    "n_timeout",
    "n_alert",
    "n_degraded",
    "n_on_time",
    "n_settled",
    "n_positive",
    "sum_p_settled",
    "n_alert_settled",
    "n_alert_positive",
)


def _arm_filter(table: sa.Table, canary: Canary, arm: str) -> sa.ColumnElement[bool]:
    version = canary.version_id if arm == "canary" else canary.control_version_id
    return sa.and_(
        table.c.model_id == canary.model_id,
        table.c.site_id == canary.site_id,
        table.c.version_id == version,
        table.c.arm == arm,
    )


def _fill_arm(arm: ArmData, totals: dict[str, Any]) -> None:
    for key in _ROLLUP_SUMS:
        if key in ("n_error", "n_timeout"):
            continue
        setattr(arm, key, float(totals.get(key) or 0.0))
    arm.n_error = float(totals.get("n_error") or 0.0) + float(totals.get("n_timeout") or 0.0)


def raw_window(
    dialect: str, model_id: int, site_id: int, first_hour: int, end_hour: int
) -> sa.ColumnElement[bool]:
    """Raw predictions of one model at one site scored in hours [first_hour, end_hour), read
    through the (model_id, site_id, scored_at) index: one range of the site's rows.

    `scored_hour` is the hour of `scored_at`, so both bounds select the same rows; the hour's
    bounds prune PostgreSQL's partitions. SQLite would walk the model's (model_id, scored_hour)
    range instead, every site's rows, so there the hour is compared unindexed (`+ 0`).
    """
    hour = P.c.scored_hour + 0 if dialect == "sqlite" else P.c.scored_hour
    return sa.and_(
        P.c.model_id == model_id,
        P.c.site_id == site_id,
        P.c.scored_at >= hour_start(first_hour),
        P.c.scored_at < hour_start(end_hour),
        hour >= first_hour,
        hour < end_hour,
    )


def arm_data(
    conn: Connection,
    canary: Canary,
    *,
    first_hour: int,
    end_hour: int,
    kept: str | None = None,
) -> tuple[ArmData, ArmData]:
    """(canary, control) over hours [first_hour, end_hour) from rollups and histograms.

    The per-encounter sums come from raw predictions of the window, or, with `kept` (a window
    the monitor looks at again and again: `so_far`, the period so far, or `planned`, the
    planned analysis's window), from the kept per-encounter counts of that window, brought up
    to date from what changed since the last run (monitors/canary_clusters.py)."""
    arms = {"canary": ArmData("canary"), "control": ArmData("control")}
    in_window_r = sa.and_(R.c.hour >= first_hour, R.c.hour < end_hour)
    for name, arm in arms.items():
        totals = (
            conn.execute(
                sa.select(*[sa.func.sum(R.c[k]).label(k) for k in _ROLLUP_SUMS]).where(
                    _arm_filter(R, canary, name), in_window_r
                )
            )
            .mappings()
            .one()
        )
        _fill_arm(arm, dict(totals))
        for b, n, n_settled, n_positive, sum_logit in conn.execute(
            sa.select(
                H.c.bin,
                sa.func.sum(H.c.n),
                sa.func.sum(H.c.n_settled),
                sa.func.sum(H.c.n_positive),
                sa.func.sum(H.c.sum_logit_settled),
            )
            .where(_arm_filter(H, canary, name), H.c.hour >= first_hour, H.c.hour < end_hour)
            .group_by(H.c.bin)
        ):
            if 0 <= int(b) < SCORE_BINS:
                arm.score_counts[int(b)] = float(n or 0)
                arm.settled_n[int(b)] = float(n_settled or 0)
                arm.settled_positive[int(b)] = float(n_positive or 0)
                arm.settled_logit[int(b)] = float(sum_logit or 0.0)
        for b, n in conn.execute(
            sa.select(L.c.bin, sa.func.sum(L.c.n))
            .where(_arm_filter(L, canary, name), L.c.hour >= first_hour, L.c.hour < end_hour)
            .group_by(L.c.bin)
        ):
            if 0 <= int(b) < LATENCY_BINS:
                arm.latency_counts[int(b)] = float(n or 0)
    if kept is not None:
        clusters = maintained_clusters(
            conn, canary.arms.kept(kept), first_hour=first_hour, end_hour=end_hour
        )
    else:
        clusters = cluster_query(
            conn,
            group=canary.arms.label(),
            where=sa.and_(
                raw_window(
                    conn.dialect.name, canary.model_id, canary.site_id, first_hour, end_hour
                ),
                canary.arms.member(),
            ),
            latency_slo_seconds=canary.latency_slo_seconds,
        )
    for name, arm in arms.items():
        arm.cluster = clusters.get(name, {})
    return arms["canary"], arms["control"]


@dataclass
class HourlySeries:
    """Per hour of the canary period, one arm's counts (the always-valid test's looks)."""

    hours: npt.NDArray[np.int64]
    n: F64
    n_ok: F64
    n_alert: F64
    n_error: F64  # error + timeout
    n_late: F64
    n_settled: F64
    n_positive: F64
    sum_p_settled: F64


def hourly_series(
    conn: Connection, canary: Canary, *, first_hour: int, end_hour: int
) -> dict[str, HourlySeries]:
    """Both arms' hourly counts over [first_hour, end_hour), zeros where an arm was silent."""
    hours = np.arange(first_hour, end_hour, dtype=np.int64)
    out: dict[str, HourlySeries] = {}
    fields = ("n", "n_ok", "n_alert", "n_error", "n_late", "n_settled", "n_positive", "sum_p")
    for name in ("canary", "control"):
        arrays = {f: np.zeros(hours.size) for f in fields}
        query = (
            sa.select(
                R.c.hour,
                sa.func.sum(R.c.n),
                sa.func.sum(R.c.n_ok),
                sa.func.sum(R.c.n_alert),
                sa.func.sum(R.c.n_error + R.c.n_timeout),
                sa.func.sum(R.c.n_ok - R.c.n_on_time),
                sa.func.sum(R.c.n_settled),
                sa.func.sum(R.c.n_positive),
                sa.func.sum(R.c.sum_p_settled),
            )
            .where(_arm_filter(R, canary, name), R.c.hour >= first_hour, R.c.hour < end_hour)
            .group_by(R.c.hour)
        )
        for row in conn.execute(query).all():
            i = int(row[0]) - first_hour
            for f, value in zip(fields, row[1:], strict=True):
                arrays[f][i] = float(value or 0.0)
        out[name] = HourlySeries(
            hours,
            arrays["n"],
            arrays["n_ok"],
            arrays["n_alert"],
            arrays["n_error"],
            arrays["n_late"],
            arrays["n_settled"],
            arrays["n_positive"],
            arrays["sum_p"],
        )
    return out


# ---------------------------------------------------------------- the always-valid test


def run_sequential(
    series: dict[str, HourlySeries],
    canary_arm: ArmData,
    control_arm: ArmData,
    config: CanaryConfig,
    *,
    previous_max: dict[str, float] | None = None,
) -> list[SequentialResult]:
    """The always-valid test of every watched metric over the hourly looks so far."""
    c, k = series["canary"], series["control"]
    previous_max = previous_max or {}
    seq = config.sequential
    results = []
    for watched in seq.metrics:
        spec = config.metrics.get(watched.metric)
        tolerance = watched.tolerance
        if tolerance is None:
            tolerance = spec.tolerance if spec is not None else 0.0
        if watched.metric == "alert_rate":
            events = (c.n_alert, c.n_ok, k.n_alert, k.n_ok)
            d = pooled_design_effect(canary_arm, control_arm, "alerts")
        elif watched.metric == "error_rate":
            events = (c.n_error, c.n, k.n_error, k.n)
            d = pooled_design_effect(canary_arm, control_arm, "errors")
        elif watched.metric == "latency_sli":  # late scores: the SLI's complement
            events = (c.n_late, c.n_ok, k.n_late, k.n_ok)
            d = pooled_design_effect(canary_arm, control_arm, "late")
        else:  # oe_ratio: observed events against expected, hours fully settled only
            settled = (c.n_settled >= c.n_ok) & (k.n_settled >= k.n_ok)
            events = (
                np.where(settled, c.n_positive, 0.0),
                np.where(settled, c.sum_p_settled, 0.0),
                np.where(settled, k.n_positive, 0.0),
                np.where(settled, k.sum_p_settled, 0.0),
            )
            d = pooled_design_effect(canary_arm, control_arm, "positives")
        null_ratio = (
            (1 + tolerance) if watched.direction == Direction.INCREASE else 1 / (1 + tolerance)
        )
        key = f"{watched.metric}:{watched.direction.value}"
        results.append(
            sequential_test(
                watched.metric,
                watched.direction,
                canary_events=events[0],
                canary_exposure=events[1],
                control_events=events[2],
                control_exposure=events[3],
                null_ratio=null_ratio,
                tau=seq.tau,
                alpha=seq.alpha_each,
                design_effect=d,
                previous_max=previous_max.get(key, 0.0),
            )
        )
    return results


# ---------------------------------------------------------------- arms from raw predictions


def arms_from_predictions(
    conn: Connection,
    *,
    group: sa.ColumnElement[Any],
    where: sa.ColumnElement[bool],
    latency_slo_seconds: float,
) -> dict[Any, ArmData]:
    """ArmData per value of `group` straight from predictions, with the rollups' definitions.

    For comparisons the rollups cannot split (two halves of an arm by encounter, two units'
    histograms). Reads raw rows: call it for a bounded site and period, on demand.
    """
    ok = P.c.status == "ok"
    settled = sa.and_(ok, P.c.label.is_not(None))

    def count_if(condition: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    def sum_if(condition: Any, value: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, value), else_=0.0)), 0.0)

    on_time = sa.and_(P.c.latency_seconds.is_not(None), P.c.latency_seconds <= latency_slo_seconds)
    totals = conn.execute(
        sa.select(
            group.label("grp"),
            sa.func.count().label("n"),
            count_if(ok).label("n_ok"),
            count_if(P.c.status.in_(("error", "timeout"))).label("n_error"),
            count_if(P.c.alert).label("n_alert"),
            count_if(P.c.degraded).label("n_degraded"),
            count_if(on_time).label("n_on_time"),
            count_if(settled).label("n_settled"),
            count_if(sa.and_(settled, P.c.label == 1)).label("n_positive"),
            sum_if(settled, P.c.score).label("sum_p_settled"),
            count_if(sa.and_(settled, P.c.alert)).label("n_alert_settled"),
            count_if(sa.and_(settled, P.c.alert, P.c.label == 1)).label("n_alert_positive"),
        )
        .where(where)
        .group_by(group)
    ).mappings()
    arms: dict[Any, ArmData] = {}
    for row in totals:
        arm = ArmData(str(row["grp"]))
        for key in (
            "n", "n_ok", "n_error", "n_alert", "n_degraded", "n_on_time", "n_settled",
            "n_positive", "sum_p_settled", "n_alert_settled", "n_alert_positive",
        ):  # fmt: skip
            setattr(arm, key, float(row[key] or 0.0))
        arms[row["grp"]] = arm
    histogram = conn.execute(
        sa.select(
            group.label("grp"),
            P.c.score_bin,
            sa.func.count(),
            count_if(P.c.label.is_not(None)),
            count_if(P.c.label == 1),
            sum_if(P.c.label.is_not(None), P.c.score_logit),
        )
        .where(where, ok, P.c.score_bin.is_not(None))
        .group_by(group, P.c.score_bin)
    )
    for grp, b, n, n_settled, n_positive, sum_logit in histogram:
        arm = arms[grp]
        arm.score_counts[int(b)] = float(n)
        arm.settled_n[int(b)] = float(n_settled)
        arm.settled_positive[int(b)] = float(n_positive)
        arm.settled_logit[int(b)] = float(sum_logit)
    latency = conn.execute(
        sa.select(group.label("grp"), P.c.latency_bin, sa.func.count())
        .where(where, ok, P.c.latency_bin.is_not(None))
        .group_by(group, P.c.latency_bin)
    )
    for grp, b, n in latency:
        arms[grp].latency_counts[int(b)] = float(n)
    clusters = cluster_query(
        conn, group=group, where=where, latency_slo_seconds=latency_slo_seconds
    )
    for grp, arm in arms.items():
        arm.cluster = clusters.get(grp, {})
    return arms


def hourly_from_predictions(
    conn: Connection,
    *,
    group: sa.ColumnElement[Any],
    where: sa.ColumnElement[bool],
    first_hour: int,
    end_hour: int,
    latency_slo_seconds: float,
) -> dict[Any, HourlySeries]:
    """Per group, hourly counts straight from predictions (the raw twin of `hourly_series`)."""
    ok = P.c.status == "ok"
    settled = sa.and_(ok, P.c.label.is_not(None))

    def count_if(condition: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    on_time = sa.and_(P.c.latency_seconds.is_not(None), P.c.latency_seconds <= latency_slo_seconds)
    rows = conn.execute(
        sa.select(
            group.label("grp"),
            P.c.scored_hour,
            sa.func.count(),
            count_if(ok),
            count_if(P.c.alert),
            count_if(P.c.status.in_(("error", "timeout"))),
            count_if(ok) - count_if(on_time),
            count_if(settled),
            count_if(sa.and_(settled, P.c.label == 1)),
            sa.func.coalesce(sa.func.sum(sa.case((settled, P.c.score), else_=0.0)), 0.0),
        )
        .where(where)
        .group_by(group, P.c.scored_hour)
    ).all()
    hours = np.arange(first_hour, end_hour, dtype=np.int64)
    arrays: dict[Any, list[F64]] = {}
    for row in rows:
        grp, hour = row[0], int(row[1])
        if not first_hour <= hour < end_hour:
            continue
        series = arrays.setdefault(grp, [np.zeros(hours.size) for _ in range(8)])
        for i, value in enumerate(row[2:]):
            series[i][hour - first_hour] = float(value or 0.0)
    return {grp: HourlySeries(hours, *a) for grp, a in arrays.items()}


# ---------------------------------------------------------------- one canary's evaluation


def planned_window_end(
    canary_scores_per_hour: F64,
    *,
    first_hour: int,
    min_hours: int,
    min_scores: int,
    now_hour: int,
) -> int | None:
    """End hour (exclusive) of the planned analysis's window: the first complete hour at least
    `min_hours` after the start by which the canary has `min_scores` scores; None until then.

    The window is fixed by the design (duration and volume), never by the data's verdict, so
    judging it once is one look.
    """
    cumulative = np.cumsum(canary_scores_per_hour)
    for i in range(max(min_hours - 1, 0), cumulative.size):
        end = first_hour + i + 1
        if end > now_hour:  # only complete hours
            return None
        if cumulative[i] >= min_scores:
            return end
    return None


@dataclass
class CanaryEvaluation:
    """Everything one run concludes about one canary."""

    canary: Canary
    start: datetime
    now: datetime
    canary_arm: ArmData
    control_arm: ArmData
    interim: Judgement
    sequential: list[SequentialResult]
    planned: Judgement | None
    planned_end: datetime
    planned_completeness: float | None
    evidence: Any  # incidents.promotion.Evidence
    criteria: list[Any]  # incidents.promotion.CriterionResult
    recommendation: Any  # incidents.promotion.Recommendation
    randomised: bool
    planned_is_new: bool = False
    planned_arms: tuple[ArmData, ArmData] | None = None  # a new planned analysis's arms
    notes: list[str] = field(default_factory=list)

    def detail(self) -> dict[str, Any]:
        return {
            "canary": {
                "model": self.canary.model,
                "site": self.canary.site,
                "unit": self.canary.unit,
                "version": self.canary.version,
                "control_version": self.canary.control_version,
                "registered_at": self.canary.registered_at,
                "first_data_at": self.start,
            },
            "randomised": self.randomised,
            "assignment": assignment_text(self.canary, self.randomised),
            "arms": {
                "canary": self.canary_arm.summary(),
                "control": self.control_arm.summary(),
            },
            "judgement": self.interim.to_json(),
            "sequential": [s.to_json() for s in self.sequential],
            "planned": None if self.planned is None else self.planned.to_json(),
            "planned_window": [self.start, self.planned_end],
            "planned_completeness": self.planned_completeness,
            "evidence": self.evidence.to_json(),
            "criteria": [c.to_json() for c in self.criteria],
            "recommendation": self.recommendation.to_json(),
            "notes": self.notes,
        }


def assignment_text(canary: Canary, randomised: bool) -> str:
    """How patients came to be in each arm, in words the canary page shows."""
    if randomised:
        return "Patients were assigned to the arms at random."
    where = f"unit {canary.unit} of {canary.site}" if canary.unit else f"site {canary.site}"
    others = f"the other units of {canary.site}" if canary.unit else "the control sites"
    return (
        f"Units were not randomised: the canary runs on {where} and control on {others}. "
        "Differences in case mix between them can look like differences between the "
        "versions, above all in the score distribution and the alert rate; O:E, the "
        "calibration slope and PPV compare each arm with its own outcomes and are less "
        "affected."
    )


def _previous_interim(conn: Connection, canary: Canary) -> dict[str, Any] | None:
    row = (
        conn.execute(
            sa.select(CJ)
            .where(
                CJ.c.model_id == canary.model_id,
                CJ.c.site_id == canary.site_id,
                CJ.c.version_id == canary.version_id,
                CJ.c.kind == "interim",
            )
            .order_by(CJ.c.evaluated_hour.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def _stored_planned(conn: Connection, canary: Canary) -> dict[str, Any] | None:
    row = (
        conn.execute(
            sa.select(CJ).where(
                CJ.c.model_id == canary.model_id,
                CJ.c.site_id == canary.site_id,
                CJ.c.version_id == canary.version_id,
                CJ.c.kind == "planned",
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def _metric(judgement: Judgement | None, name: str) -> Any:
    if judgement is None:
        return None
    return next((m for m in judgement.metrics if m.metric == name), None)


def _completeness(*arms: ArmData) -> float | None:
    scored = sum(a.n_ok for a in arms)
    return None if scored <= 0 else sum(a.n_settled for a in arms) / scored


def _judgement_from_json(data: dict[str, Any]) -> Judgement:
    """A stored planned judgement, enough of it for evidence and display."""
    from monitors.canary import MetricComparison

    metrics = [
        MetricComparison(
            metric=m["metric"],
            label=m["label"],
            canary_value=m["canary"],
            control_value=m["control"],
            effect=m["effect"],
            ci_low=m["ci_low"],
            ci_high=m["ci_high"],
            p_value=m["p_value"],
            classification=Classification(m["classification"]),
            failed=bool(m["failed"]),
            weight=float(m["weight"]),
            critical=bool(m["critical"]),
            must_have_data=bool(m["must_have_data"]),
            design_effect=float(m["design_effect"] or 1.0),
            n_canary=float(m["n_canary"] or 0.0),
            n_control=float(m["n_control"] or 0.0),
            rule=m["rule"],
            reason=m.get("reason", ""),
        )
        for m in data.get("metrics", [])
    ]
    return Judgement(
        Verdict(data["verdict"]),
        data.get("score"),
        metrics,
        list(data.get("failed", [])),
        list(data.get("critical_failed", [])),
        list(data.get("no_data", [])),
    )


def evaluate_canary(
    conn: Connection, canary: Canary, config: CanaryConfig, *, now: datetime
) -> CanaryEvaluation | None:
    """Judge the canary period so far, run the always-valid test, the planned analysis when
    it is due, the exit criteria and the recommendation. None before the canary's first score.
    """
    from incidents.promotion import (
        Evidence,
        evaluate_exit_criteria,
        open_incidents,
        recommend,
    )
    from monitors.canary import StageCriteria

    first = first_canary_hour(conn, canary)
    now_hour = hour_of(now)
    if first is None or first > now_hour:
        return None
    start = hour_start(first)
    end_hour = now_hour + 1  # the current hour so far
    scoring = Scoring(canary.scoring_interval_minutes)
    canary_arm, control_arm = arm_data(
        conn, canary, first_hour=first, end_hour=end_hour, kept="so_far"
    )
    interim = judge(canary_arm, control_arm, config, scoring=scoring)

    previous = _previous_interim(conn, canary)
    previous_max: dict[str, float] = {}
    for item in ((previous or {}).get("detail") or {}).get("sequential", []):
        previous_max[f"{item['metric']}:{item['direction']}"] = float(item["max_evalue"])
    series = hourly_series(conn, canary, first_hour=first, end_hour=end_hour)
    sequential = run_sequential(series, canary_arm, control_arm, config, previous_max=previous_max)

    criteria_cfg = config.stages.get("canary", StageCriteria(stage="canary"))
    planned_end_hour = planned_window_end(
        series["canary"].n_ok,
        first_hour=first,
        min_hours=max(1, round(criteria_cfg.min_days * 24)),
        min_scores=criteria_cfg.min_scores,
        now_hour=now_hour,
    )
    planned_end = hour_start(planned_end_hour if planned_end_hour is not None else end_hour)
    planned: Judgement | None = None
    planned_completeness: float | None = None
    planned_is_new = False
    planned_arms: tuple[ArmData, ArmData] | None = None
    planned_scores = int(canary_arm.n_ok)
    notes: list[str] = []
    stored = _stored_planned(conn, canary)
    if stored is not None:
        detail = stored.get("detail") or {}
        planned = _judgement_from_json(detail.get("planned") or detail.get("judgement") or {})
        planned_completeness = detail.get("planned_completeness")
        planned_scores = int(detail.get("arms", {}).get("canary", {}).get("n_ok", 0))
        planned_end = stored["window_end"]
    elif planned_end_hour is not None:
        pc, pk = arm_data(conn, canary, first_hour=first, end_hour=planned_end_hour, kept="planned")
        planned_completeness = _completeness(pc, pk)
        planned_scores = int(pc.n_ok)
        if (planned_completeness or 0.0) >= criteria_cfg.min_label_completeness:
            planned = judge(pc, pk, config, scoring=scoring)
            planned_is_new = True
            planned_arms = (pc, pk)
        else:
            notes.append(
                f"the planned analysis waits for labels: {planned_completeness or 0:.0%} of "
                f"its window settled, needs {criteria_cfg.min_label_completeness:.0%}"
            )
    elif now_hour >= first + round(criteria_cfg.min_days * 24):
        notes.append(
            f"the planned analysis waits for volume: {planned_scores:,} of "
            f"{criteria_cfg.min_scores:,} canary scores"
        )
    oe = _metric(planned, "oe_ratio")
    alert = _metric(planned, "alert_rate")
    evidence = Evidence(
        stage=canary.stage,
        days_in_stage=(now - start).total_seconds() / 86400,
        scores=planned_scores,
        verdict=None if planned is None else planned.verdict.value,
        canary_oe=None
        if oe is None or oe.classification == Classification.NODATA
        else oe.canary_value,
        label_completeness=planned_completeness,
        alert_ratio=None
        if alert is None or alert.classification == Classification.NODATA
        else alert.effect,
        open_incidents=open_incidents(conn, model_id=canary.model_id, site_id=canary.site_id),
        sequential_rejections=tuple(
            f"{s.metric} {s.direction.value} (e-value {s.max_evalue_text} ≥ {1 / s.alpha:g})"
            for s in sequential
            if s.rejected
        ),
        interim_verdict=interim.verdict.value,
        failed_metrics=tuple(planned.failed) if planned is not None else (),
        planned_window=(start.isoformat(), planned_end.isoformat()),
        judged_at=now.isoformat(),
    )
    criteria = evaluate_exit_criteria(criteria_cfg, evidence)
    recommendation = recommend(evidence, criteria)
    evaluation = CanaryEvaluation(
        canary=canary,
        start=start,
        now=now,
        canary_arm=canary_arm,
        control_arm=control_arm,
        interim=interim,
        sequential=sequential,
        planned=planned,
        planned_end=planned_end,
        planned_completeness=planned_completeness,
        evidence=evidence,
        criteria=criteria,
        recommendation=recommendation,
        randomised=config.randomised,
        planned_is_new=planned_is_new,
        planned_arms=planned_arms,
        notes=notes,
    )
    if planned_is_new:
        evaluation.notes.append(
            f"planned analysis judged at {now.isoformat()} over the first "
            f"{criteria_cfg.min_days:g} days"
        )
    return evaluation


# ---------------------------------------------------------------- writing the results


def _metric_status(m: Any) -> Status:
    if m.classification == Classification.NODATA:
        return Status.INSUFFICIENT
    # A failing interim classification is a warning: only the verdict point can breach, and
    # only on evidence that is safe to act on (see incidents.promotion.recommend).
    return Status.WARN if m.failed else Status.OK


def _verdict_status(evaluation: CanaryEvaluation) -> Status:
    from incidents.promotion import ROLLBACK

    if evaluation.recommendation.action == ROLLBACK:
        return Status.BREACH
    if evaluation.interim.verdict == Verdict.NODATA:
        return Status.INSUFFICIENT
    if evaluation.interim.verdict in (Verdict.FAIL, Verdict.MARGINAL):
        return Status.WARN
    return Status.OK


def results_of(evaluation: CanaryEvaluation) -> list[MonitorResult]:
    """The metric points of one evaluation: one per metric and one for the verdict."""
    c = evaluation.canary
    common: dict[str, Any] = {
        "monitor": MONITOR,
        "model_id": c.model_id,
        "site_id": c.site_id,
        "version_id": c.version_id,
        "arm": "canary",
        "window_start": evaluation.start,
        "window_end": evaluation.now,
        "runbook": RUNBOOK,
    }
    out = [
        MonitorResult(
            metric=m.metric,
            status=_metric_status(m),
            value=m.effect,
            ci_low=m.ci_low if m.ci_low is not None and math.isfinite(m.ci_low) else None,
            ci_high=m.ci_high if m.ci_high is not None and math.isfinite(m.ci_high) else None,
            n=int(m.n_canary),
            threshold=m.rule,
            detail=m.to_json(),
            **common,
        )
        for m in evaluation.interim.metrics
    ]
    out.append(
        MonitorResult(
            metric="verdict",
            status=_verdict_status(evaluation),
            value=evaluation.interim.score,
            n=int(evaluation.canary_arm.n_ok),
            threshold="breach when the recommendation is roll back",
            detail={
                "verdict": evaluation.interim.verdict.value,
                "planned_verdict": None
                if evaluation.planned is None
                else evaluation.planned.verdict.value,
                "recommendation": evaluation.recommendation.to_json(),
                "sequential": [s.to_json() for s in evaluation.sequential],
                "control_version": c.control_version,
                "scope": c.scope,
                "notes": evaluation.notes,
            },
            **common,
        )
    )
    return out


def write_evaluation(conn: Connection, evaluation: CanaryEvaluation) -> None:
    """Upsert this hour's interim judgement, insert the planned one once, and the points."""
    from monitors.runner import write_results

    c = evaluation.canary
    detail = evaluation.detail()
    base = {
        "model_id": c.model_id,
        "site_id": c.site_id,
        "version_id": c.version_id,
        "control_version_id": c.control_version_id,
        "computed_at": evaluation.now,
    }
    from incidents.audit import normalise_detail

    rows = [
        {
            **base,
            "kind": "interim",
            "evaluated_hour": hour_of(evaluation.now),
            "window_start": evaluation.start,
            "window_end": evaluation.now,
            "verdict": evaluation.interim.verdict.value,
            "score": evaluation.interim.score,
            "recommendation": evaluation.recommendation.action,
            "sequential_rejected": any(s.rejected for s in evaluation.sequential),
            "detail": normalise_detail(detail),
        }
    ]
    if evaluation.planned is not None and evaluation.planned_arms is not None:
        pc, pk = evaluation.planned_arms
        planned_detail = dict(detail)
        planned_detail["arms"] = {"canary": pc.summary(), "control": pk.summary()}
        rows.append(
            {
                **base,
                "kind": "planned",
                "evaluated_hour": hour_of(evaluation.planned_end),
                "window_start": evaluation.start,
                "window_end": evaluation.planned_end,
                "verdict": evaluation.planned.verdict.value,
                "score": evaluation.planned.score,
                "recommendation": evaluation.recommendation.action,
                "sequential_rejected": any(s.rejected for s in evaluation.sequential),
                "detail": normalise_detail(planned_detail),
            }
        )
    upsert(
        conn,
        CJ,
        rows,
        key=["model_id", "site_id", "version_id", "kind", "evaluated_hour"],
        update=[
            "window_end",
            "verdict",
            "score",
            "recommendation",
            "sequential_rejected",
            "detail",
            "computed_at",
        ],
    )
    write_results(conn, results_of(evaluation), now=evaluation.now)


def _suppressed(conn: Connection, canary: Canary) -> bool:
    """Whether the kill switch (or the registry) keeps the canary version off at its site."""
    from incidents.killswitch import NotFound, score_status

    try:
        status = score_status(conn, model=canary.model, site=canary.site, version=canary.version)
    except NotFound:
        return False
    return not status.enabled


def _unchanged_since_last_look(conn: Connection, canary: Canary, *, now: datetime) -> bool:
    """True when this hour was judged already and no rollup of the site changed since: a
    look at the same data adds nothing (and costs a read of the whole canary period)."""
    previous = _previous_interim(conn, canary)
    if previous is None or int(previous["evaluated_hour"]) != hour_of(now):
        return False
    changed = conn.execute(
        sa.select(sa.func.max(R.c.updated_at)).where(
            R.c.model_id == canary.model_id,
            R.c.site_id == canary.site_id,
            R.c.hour >= hour_of(previous["window_start"]),
        )
    ).scalar()
    return changed is not None and changed <= previous["computed_at"]


def run_canary(
    engine: Engine,
    config: MonitorConfig,
    now: datetime | None = None,
    *,
    canary_config: CanaryConfig | None = None,
) -> list[MonitorResult]:
    """Evaluate every enabled canary that is still serving; write judgements and points."""
    del config  # the canary's settings live in config/canary.yaml
    now = now or utcnow()
    cfg = canary_config or CanaryConfig.from_file()
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        # Kept per-encounter counts of canaries no longer deployed are dropped.
        forget_others(conn, [c.arms for c in find_canaries(conn, include_disabled=True)])
        for canary in find_canaries(conn):
            if _suppressed(conn, canary):
                logger.info("canary %s is switched off; not judged", canary.scope)
                continue
            if _unchanged_since_last_look(conn, canary, now=now):
                continue
            evaluation = evaluate_canary(conn, canary, cfg, now=now)
            if evaluation is None:
                continue
            write_evaluation(conn, evaluation)
            results.extend(results_of(evaluation))
            logger.info(
                "canary %s: interim %s (%.1f), recommendation %s",
                canary.scope,
                evaluation.interim.verdict.value,
                evaluation.interim.score or 0.0,
                evaluation.recommendation.action,
            )
    return results


# ---------------------------------------------------------------- A/A


@dataclass
class AAResult:
    """Two arms running the same version, judged as if one were a canary."""

    labels: tuple[str, str]
    description: str
    judgement: Judgement
    sequential: list[SequentialResult]
    arms: tuple[ArmData, ArmData]


HALVES_FIRST = tuple("01234567")  # encounter keys are hex: the last digit splits them in two


def aa_comparison(
    engine: Engine,
    *,
    model: str,
    site: str,
    start: datetime,
    end: datetime,
    units: Sequence[str] | None = None,
    version: str | None = None,
    config: CanaryConfig | None = None,
) -> AAResult:
    """Judge two arms of the same control version: two halves by encounter, or two units.

    Halves split the control arm's encounters by the last hex digit of their keyed hash, so
    the two arms are a random split of the same patients' units: no real difference exists,
    and the judge should pass. Two units share the version but not the patients (case mix
    differs), which is how far apart non-randomised arms can be with no model change.
    """
    cfg = config or CanaryConfig.from_file()
    first_hour, end_hour = hour_of(start), hour_of(end - timedelta(microseconds=1)) + 1
    with engine.connect() as conn:
        model_row = conn.execute(
            sa.select(M.c.id, M.c.scoring_interval_minutes, M.c.latency_slo_seconds).where(
                M.c.name == model
            )
        ).one()
        site_id = conn.execute(sa.select(S.c.id).where(S.c.code == site)).scalar_one()
        version_query = sa.select(V.c.id).where(V.c.model_id == model_row.id)
        if version is not None:
            version_query = version_query.where(V.c.version == version)
        else:  # the control deployment's version at the site
            version_query = (
                sa.select(D.c.version_id)
                .where(D.c.model_id == model_row.id, D.c.site_id == site_id, D.c.arm == "control")
                .limit(1)
            )
        version_id = int(conn.execute(version_query).scalar_one())
        base = sa.and_(
            raw_window(conn.dialect.name, model_row.id, site_id, first_hour, end_hour),
            P.c.version_id == version_id,
            P.c.arm == "control",
        )
        if units:
            if len(units) != 2:
                raise ValueError("name two units to compare")
            first_unit, second_unit = units
            group: sa.ColumnElement[Any] = P.c.unit
            where = sa.and_(base, P.c.unit.in_([first_unit, second_unit]))
            labels = (str(second_unit), str(first_unit))  # (as canary, as control)
            description = f"unit {second_unit} against unit {first_unit} (not randomised)"
        else:
            last_digit = sa.func.substr(P.c.encounter_key, sa.func.length(P.c.encounter_key), 1)
            group = sa.case((last_digit.in_(HALVES_FIRST), "A"), else_="B")
            where = base
            labels = ("B", "A")
            description = "two halves of the control arm by encounter (randomised split)"
        arms = arms_from_predictions(
            conn,
            group=group,
            where=where,
            latency_slo_seconds=float(model_row.latency_slo_seconds),
        )
        series = hourly_from_predictions(
            conn,
            group=group,
            where=where,
            first_hour=first_hour,
            end_hour=end_hour,
            latency_slo_seconds=float(model_row.latency_slo_seconds),
        )
    pseudo_canary = arms.get(labels[0], ArmData(labels[0]))
    pseudo_control = arms.get(labels[1], ArmData(labels[1]))
    judgement = judge(
        pseudo_canary,
        pseudo_control,
        cfg,
        scoring=Scoring(int(model_row.scoring_interval_minutes or 0)),
    )
    empty = HourlySeries(
        np.arange(first_hour, end_hour, dtype=np.int64), *[np.zeros(end_hour - first_hour)] * 8
    )
    sequential = run_sequential(
        {
            "canary": series.get(labels[0], empty),
            "control": series.get(labels[1], empty),
        },
        pseudo_canary,
        pseudo_control,
        cfg,
    )
    return AAResult(labels, description, judgement, sequential, (pseudo_canary, pseudo_control))
