"""Label settlement and hourly rollups, both set-based SQL that costs in proportion to new data.

Settlement (per model): a prediction is positive when its outcome happens between `scored_at`
and `horizon_end`; negative once `horizon_end` is older than the model's label lag (outcomes
may still be recorded until then), or when the encounter closed before `horizon_end` and the
closure is older than the label lag; pending otherwise. A late outcome flips a settled
negative to positive. Every prediction whose label changes gets `settled_at` = this run.

Rollups: every (model, hour) touched by new predictions or by this run's settlement is
recomputed from its raw rows with GROUP BY in the database (prediction counts per unit and
arm, score, latency and input histograms); monitors read only rollups. Other jobs that change
raw rows (e.g. marking predictions degraded) call `rebuild_hours` for the hours they touched.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from store.models import (
    Encounter,
    InputHistogram,
    JobState,
    LatencyHistogram,
    Model,
    Outcome,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    table_of,
    utcnow,
)

logger = logging.getLogger(__name__)

P = table_of(Prediction)
O = table_of(Outcome)  # noqa: E741
E = table_of(Encounter)
R = table_of(PredictionRollup)
H = table_of(ScoreHistogram)
L = table_of(LatencyHistogram)
I = table_of(InputHistogram)  # noqa: E741
J = table_of(JobState)

WM_PREDICTION = "rollup.prediction_id"
WM_OUTCOME = "rollup.outcome_id"
HOURS_PER_STATEMENT = 400


@dataclass
class RefreshResult:
    new_predictions: int = 0
    settled_positive: int = 0
    settled_negative: int = 0
    hours_rebuilt: int = 0


def get_state(conn: Connection, key: str, default: str = "0") -> str:
    value = conn.execute(sa.select(J.c.value).where(J.c.key == key)).scalar()
    return default if value is None else str(value)


def set_state(conn: Connection, key: str, value: str) -> None:
    now = utcnow()
    updated = conn.execute(
        sa.update(J).where(J.c.key == key).values(value=value, updated_at=now)
    ).rowcount
    if not updated:
        conn.execute(sa.insert(J).values(key=key, value=value, updated_at=now))


def _outcome_within_horizon(outcome: str) -> Any:
    return sa.exists().where(
        O.c.encounter_key == P.c.encounter_key,
        O.c.outcome == outcome,
        O.c.outcome_at >= P.c.scored_at,
        O.c.outcome_at <= P.c.horizon_end,
    )


def settle_labels(
    conn: Connection, model: Model, *, now: datetime, wm_prediction: int, wm_outcome: int
) -> tuple[int, int]:
    """Settle what can be settled for one model; returns (newly positive, newly negative)."""
    assert model.id is not None
    within = _outcome_within_horizon(model.outcome)
    new_outcome_keys = sa.select(O.c.encounter_key).where(
        O.c.id > wm_outcome, O.c.outcome == model.outcome
    )
    positive = conn.execute(
        sa.update(P)
        .where(
            # `+ 0` keeps the planner off the model_id indexes (which would scan the model's
            # whole history): the few encounters with new outcomes drive this update.
            (P.c.model_id + 0) == model.id,
            sa.or_(P.c.label.is_(None), P.c.label == 0),
            P.c.encounter_key.in_(new_outcome_keys),
            within,
        )
        .values(label=1, settled_at=now)
    ).rowcount
    positive += conn.execute(
        sa.update(P)
        .where(P.c.model_id == model.id, P.c.label.is_(None), P.c.id > wm_prediction, within)
        .values(label=1, settled_at=now)
    ).rowcount
    cutoff = now - timedelta(hours=model.label_lag_hours)
    negative = conn.execute(
        sa.update(P)
        .where(P.c.model_id == model.id, P.c.label.is_(None), P.c.horizon_end < cutoff)
        .values(label=0, settled_at=now)
    ).rowcount
    if model.settles_on_closure:
        closed_before_horizon = sa.exists().where(
            E.c.encounter_key == P.c.encounter_key,
            E.c.discharged_at <= P.c.horizon_end,
            E.c.discharged_at < cutoff,
        )
        negative += conn.execute(
            sa.update(P)
            .where(
                P.c.model_id == model.id,
                P.c.label.is_(None),
                P.c.status == "ok",
                closed_before_horizon,
            )
            .values(label=0, settled_at=now)
        ).rowcount
    return int(positive), int(negative)


def _rollup_select(model: Model, hours: list[int], now: datetime) -> sa.Select[Any]:
    ok = P.c.status == "ok"
    settled = sa.and_(ok, P.c.label.is_not(None))

    def count_if(cond: Any) -> Any:
        return sa.func.sum(sa.case((cond, 1), else_=0))

    def sum_if(cond: Any, value: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((cond, value), else_=0.0)), 0.0)

    on_time = sa.and_(
        P.c.latency_seconds.is_not(None), P.c.latency_seconds <= model.latency_slo_seconds
    )
    return (
        sa.select(
            P.c.model_id,
            P.c.version_id,
            P.c.site_id,
            P.c.unit,
            P.c.arm,
            P.c.scored_hour.label("hour"),
            sa.func.count().label("n"),
            count_if(ok).label("n_ok"),
            count_if(P.c.status == "error").label("n_error"),
            count_if(P.c.status == "timeout").label("n_timeout"),
            count_if(P.c.alert).label("n_alert"),
            count_if(P.c.degraded).label("n_degraded"),
            count_if(on_time).label("n_on_time"),
            sum_if(ok, P.c.score).label("sum_score"),
            sum_if(ok, P.c.score * P.c.score).label("sum_score2"),
            sum_if(P.c.latency_seconds.is_not(None), P.c.latency_seconds).label("sum_latency"),
            count_if(settled).label("n_settled"),
            count_if(sa.and_(settled, P.c.label == 1)).label("n_positive"),
            sum_if(settled, P.c.score).label("sum_p_settled"),
            sum_if(settled, P.c.score * P.c.score).label("sum_p2_settled"),
            sum_if(sa.and_(settled, P.c.label == 1), P.c.score).label("sum_yp_settled"),
            count_if(sa.and_(settled, P.c.alert)).label("n_alert_settled"),
            count_if(sa.and_(settled, P.c.alert, P.c.label == 1)).label("n_alert_positive"),
            sa.literal(now, type_=P.c.scored_at.type).label("updated_at"),
        )
        .where(P.c.model_id == model.id, P.c.scored_hour.in_(hours))
        .group_by(P.c.model_id, P.c.version_id, P.c.site_id, P.c.unit, P.c.arm, P.c.scored_hour)
    )


def _histogram_select(model: Model, hours: list[int]) -> sa.Select[Any]:
    settled = P.c.label.is_not(None)
    return (
        sa.select(
            P.c.model_id,
            P.c.version_id,
            P.c.site_id,
            P.c.arm,
            P.c.scored_hour.label("hour"),
            P.c.score_bin.label("bin"),
            sa.func.count().label("n"),
            sa.func.sum(sa.case((settled, 1), else_=0)).label("n_settled"),
            sa.func.sum(sa.case((P.c.label == 1, 1), else_=0)).label("n_positive"),
            sa.func.coalesce(sa.func.sum(sa.case((settled, P.c.score), else_=0.0)), 0.0).label(
                "sum_p_settled"
            ),
            sa.func.coalesce(
                sa.func.sum(sa.case((settled, P.c.score_logit), else_=0.0)), 0.0
            ).label("sum_logit_settled"),
        )
        .where(
            P.c.model_id == model.id,
            P.c.scored_hour.in_(hours),
            P.c.status == "ok",
            P.c.score_bin.is_not(None),
        )
        .group_by(
            P.c.model_id, P.c.version_id, P.c.site_id, P.c.arm, P.c.scored_hour, P.c.score_bin
        )
    )


_ROLLUP_COLUMNS = [
    "model_id", "version_id", "site_id", "unit", "arm", "hour", "n", "n_ok", "n_error",
    "n_timeout", "n_alert", "n_degraded", "n_on_time", "sum_score", "sum_score2", "sum_latency",
    "n_settled", "n_positive", "sum_p_settled", "sum_p2_settled", "sum_yp_settled",
    "n_alert_settled", "n_alert_positive", "updated_at",
]  # fmt: skip
_HIST_COLUMNS = [
    "model_id", "version_id", "site_id", "arm", "hour", "bin", "n", "n_settled",
    "n_positive", "sum_p_settled", "sum_logit_settled",
]  # fmt: skip
_LATENCY_COLUMNS = ["model_id", "version_id", "site_id", "arm", "hour", "bin", "n"]


def _latency_select(model: Model, hours: list[int]) -> sa.Select[Any]:
    return (
        sa.select(
            P.c.model_id,
            P.c.version_id,
            P.c.site_id,
            P.c.arm,
            P.c.scored_hour.label("hour"),
            P.c.latency_bin.label("bin"),
            sa.func.count().label("n"),
        )
        .where(
            P.c.model_id == model.id,
            P.c.scored_hour.in_(hours),
            P.c.status == "ok",  # latency of delivered scores
            P.c.latency_bin.is_not(None),
        )
        .group_by(
            P.c.model_id, P.c.version_id, P.c.site_id, P.c.arm, P.c.scored_hour, P.c.latency_bin
        )
    )


def input_bin(value: float | None, edges: list[float]) -> int:
    """Bucket of a model input: -1 missing, else left-closed bins with open ends at both sides."""
    if value is None or value != value:  # None or NaN
        return -1
    return bisect_right(edges, value)  # 0 below the first edge, len(edges) above the last


def _input_histogram_rows(conn: Connection, model: Model, hours: list[int]) -> list[dict[str, Any]]:
    """Bin every named input of the model's predictions in `hours` (only these hours are read)."""
    specs = {name: list(spec["edges"]) for name, spec in (model.inputs or {}).items()}
    if not specs:
        return []
    counts: Counter[tuple[int, int, str, int, str, int]] = Counter()
    rows = conn.execute(
        sa.select(P.c.version_id, P.c.site_id, P.c.arm, P.c.scored_hour, P.c.inputs).where(
            P.c.model_id == model.id, P.c.scored_hour.in_(hours), P.c.status == "ok"
        )
    )
    for version_id, site_id, arm, hour, inputs in rows:
        values = inputs or {}
        for name, edges in specs.items():
            counts[(version_id, site_id, arm, hour, name, input_bin(values.get(name), edges))] += 1
    return [
        {
            "model_id": model.id, "version_id": v, "site_id": s, "arm": a, "hour": h,
            "feature": f, "bin": b, "n": n,
        }
        for (v, s, a, h, f, b), n in counts.items()
    ]  # fmt: skip


def _chunks(values: Iterable[int], size: int) -> Iterable[list[int]]:
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk


def rebuild_hours(conn: Connection, model: Model, hours: Iterable[int], *, now: datetime) -> int:
    """Recompute the rollup and histogram rows of `hours` for one model from raw predictions."""
    count = 0
    for chunk in _chunks(sorted(set(hours)), HOURS_PER_STATEMENT):
        for table in (R, H, L, I):
            conn.execute(
                sa.delete(table).where(table.c.model_id == model.id, table.c.hour.in_(chunk))
            )
        conn.execute(sa.insert(R).from_select(_ROLLUP_COLUMNS, _rollup_select(model, chunk, now)))
        conn.execute(sa.insert(H).from_select(_HIST_COLUMNS, _histogram_select(model, chunk)))
        conn.execute(sa.insert(L).from_select(_LATENCY_COLUMNS, _latency_select(model, chunk)))
        input_rows = _input_histogram_rows(conn, model, chunk)
        if input_rows:
            conn.execute(sa.insert(I), input_rows)
        count += len(chunk)
    return count


def refresh(engine: Engine, *, now: datetime | None = None) -> RefreshResult:
    """Settle labels and rebuild the rollups of every hour that changed since the last run."""
    now = now or utcnow()
    result = RefreshResult()
    with engine.begin() as conn:
        wm_p = int(get_state(conn, WM_PREDICTION))
        wm_o = int(get_state(conn, WM_OUTCOME))
        top_p = conn.execute(sa.select(sa.func.max(P.c.id))).scalar() or 0
        top_o = conn.execute(sa.select(sa.func.max(O.c.id))).scalar() or 0
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        for model in models:
            pos, neg = settle_labels(conn, model, now=now, wm_prediction=wm_p, wm_outcome=wm_o)
            result.settled_positive += pos
            result.settled_negative += neg
            # New rows are found by primary-key range (`+ 0`: not by the model's index, which
            # would read its whole history), settled rows by this run's settled_at.
            dirty = conn.execute(
                sa.select(P.c.scored_hour)
                .where((P.c.model_id + 0) == model.id, P.c.id > wm_p, P.c.id <= top_p)
                .union(
                    sa.select(P.c.scored_hour).where(
                        P.c.model_id == model.id, P.c.settled_at == now
                    )
                )
            ).scalars()
            result.hours_rebuilt += rebuild_hours(conn, model, dirty, now=now)
        result.new_predictions = int(top_p - wm_p)
        set_state(conn, WM_PREDICTION, str(top_p))
        set_state(conn, WM_OUTCOME, str(top_o))
    logger.info("rollups refreshed: %s", result)
    return result
