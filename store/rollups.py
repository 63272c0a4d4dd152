"""Label settlement and hourly rollups, both set-based SQL that costs in proportion to new data.

Settlement (per model): a prediction is positive when its outcome happens between `scored_at`
and `horizon_end`; negative once `horizon_end` is older than the model's label lag (outcomes
may still be recorded until then), or when the encounter closed before `horizon_end` and the
closure is older than the label lag; pending otherwise. A late outcome flips a settled
negative to positive. Every prediction whose label changes gets `settled_at` = this run.

Closures are found by the closures themselves, not by the pending predictions: those that
arrived since the last run, and those whose label lag passed since the last run's cutoff.

Rollups: every (model, hour) with new predictions is recomputed from its raw rows with GROUP BY
in the database (prediction counts per unit and arm, score and latency histograms; the inputs'
histograms are counted from the same rows). An hour that only had labels settled is not
re-read: the settled rows' contribution to the label columns is added to its rollup and
score-histogram rows (minus what a flipped negative contributed before). Monitors read only
rollups. Other jobs that change raw rows (e.g. marking predictions degraded) call
`rebuild_hours` for the hours they touched.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import islice
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from store.models import (
    DailyInputHistogram,
    DailyRollup,
    DailyScoreHistogram,
    Encounter,
    InputHistogram,
    JobState,
    LatencyHistogram,
    Model,
    Outcome,
    Prediction,
    PredictionRollup,
    ScoreHistogram,
    Site,
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
DR = table_of(DailyRollup)
DH = table_of(DailyScoreHistogram)
DI = table_of(DailyInputHistogram)

WM_PREDICTION = "rollup.prediction_id"
WM_OUTCOME = "rollup.outcome_id"
WM_ENCOUNTER = "rollup.encounter_id"
LAST_RUN = "rollup.settled_at"  # `now` of the last refresh: settled_at stamps after it are new
# How many refreshes stamped settled_at with a `now` not after the last run's (or rebuilt
# instead of updating in place): a reader that follows settled_at stamps past LAST_RUN must
# start over when this changes, since such stamps need not be after its mark.
RESTAMPS = "rollup.settled_restamps"
CLOSURE_CUTOFF = "rollup.closure_cutoff.{model_id}"  # closures before it were settled
HOURS_PER_STATEMENT = 400
# The daily tables hold every day of the hourly rollups up to these marks: rollup rows stamped
# later, or inserted (by id) after, are of days not yet summed (see `sync_daily`).
WM_DAILY_UPDATED = "rollup.daily.updated_at"
WM_DAILY_ID = "rollup.daily.rollup_id"
DAYS_PER_STATEMENT = 400


@dataclass
class RefreshResult:
    new_predictions: int = 0
    settled_positive: int = 0
    settled_negative: int = 0
    hours_rebuilt: int = 0
    hours_updated: int = 0  # hours whose label sums were updated in place, not rebuilt


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


@dataclass
class Settlement:
    """What one model's settlement did: counts, and what flipped rows contributed before."""

    positive: int = 0
    negative: int = 0
    flipped_sums: list[Any] = field(default_factory=list)  # label sums of flipped negatives
    flipped_bins: list[Any] = field(default_factory=list)


def settle_labels(
    conn: Connection,
    model: Model,
    *,
    now: datetime,
    wm_prediction: int,
    wm_outcome: int,
    wm_encounter: int = 0,
    closure_cutoff: datetime | None = None,
    expiry_floor: datetime | None = None,
) -> Settlement:
    """Settle what can be settled for one model.

    Closures considered are those with id above `wm_encounter` and those discharged at or
    after `closure_cutoff` (the previous run's cutoff); with no cutoff, every closure.
    Predictions expire negative when their horizon (and label lag) passed: with
    `expiry_floor` (the cutoff of a previous run that settled every pending prediction
    expiring before it), those whose horizon passed since, and new predictions (id above
    `wm_prediction`); without, every pending prediction of the model.
    """
    assert model.id is not None
    done = Settlement()
    within = _outcome_within_horizon(model.outcome)
    new_outcome_keys = sa.select(O.c.encounter_key).where(
        O.c.id > wm_outcome, O.c.outcome == model.outcome
    )
    # `+ 0` keeps the planner off the model_id indexes (which would scan the model's whole
    # history): the few encounters with new outcomes (or closures) drive these updates.
    by_new_outcome = sa.and_(
        (P.c.model_id + 0) == model.id, P.c.encounter_key.in_(new_outcome_keys), within
    )
    flipped = sa.and_(by_new_outcome, P.c.label == 0)
    done.flipped_sums = list(conn.execute(_label_sums_select(model, flipped)).all())
    done.flipped_bins = list(conn.execute(_label_bins_select(model, flipped)).all())
    done.positive = conn.execute(
        sa.update(P)
        .where(by_new_outcome, sa.or_(P.c.label.is_(None), P.c.label == 0))
        .values(label=1, settled_at=now)
    ).rowcount
    done.positive += conn.execute(
        sa.update(P)
        .where((P.c.model_id + 0) == model.id, P.c.label.is_(None), P.c.id > wm_prediction, within)
        .values(label=1, settled_at=now)
    ).rowcount
    cutoff = now - timedelta(hours=model.label_lag_hours)
    expired = sa.and_(P.c.label.is_(None), P.c.horizon_end < cutoff)
    if expiry_floor is None:
        expiring = [sa.and_(P.c.model_id == model.id, expired)]
    else:
        # Both bounds of the horizon keep PostgreSQL on the pending index: with only the
        # upper one it multiplies "pending" by "horizon passed" as if independent, takes most
        # of a month's partition to match and scans all of it (0.5 s a cycle at 1 M a day).
        expiring = [
            sa.and_(P.c.model_id == model.id, expired, P.c.horizon_end >= expiry_floor),
            sa.and_((P.c.model_id + 0) == model.id, P.c.id > wm_prediction, expired),
        ]
    done.negative = 0
    for where in expiring:
        done.negative += conn.execute(
            sa.update(P).where(where).values(label=0, settled_at=now)
        ).rowcount
    if model.settles_on_closure:
        closed_before_horizon = sa.exists().where(
            E.c.encounter_key == P.c.encounter_key,
            E.c.discharged_at <= P.c.horizon_end,
            E.c.discharged_at < cutoff,
        )
        pending_ok = sa.and_(P.c.label.is_(None), P.c.status == "ok", closed_before_horizon)
        if closure_cutoff is None:
            drivers = [sa.and_(P.c.model_id == model.id, pending_ok)]
        else:
            # Closures that arrived since the last run, and those whose lag passed since.
            due = sa.union(
                sa.select(E.c.encounter_key).where(
                    E.c.id > wm_encounter, E.c.discharged_at < cutoff
                ),
                sa.select(E.c.encounter_key).where(
                    E.c.discharged_at >= closure_cutoff, E.c.discharged_at < cutoff
                ),
            )
            drivers = [
                sa.and_((P.c.model_id + 0) == model.id, P.c.encounter_key.in_(due), pending_ok),
                # New predictions of encounters whose closure was already due.
                sa.and_((P.c.model_id + 0) == model.id, P.c.id > wm_prediction, pending_ok),
            ]
        for where in drivers:
            done.negative += conn.execute(
                sa.update(P).where(where).values(label=0, settled_at=now)
            ).rowcount
    return done


def _count_if(cond: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)


def _sum_if(cond: Any, value: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, value), else_=0.0)), 0.0)


def _label_sums_select(model: Model, where: Any) -> sa.Select[Any]:
    """The label columns of the prediction rollup summed over the rows `where` selects."""
    settled = sa.and_(P.c.status == "ok", P.c.label.is_not(None))
    positive = sa.and_(settled, P.c.label == 1)
    keys = (P.c.version_id, P.c.site_id, P.c.unit, P.c.arm, P.c.scored_hour)
    return (
        sa.select(
            *keys,
            _count_if(settled),
            _count_if(positive),
            _sum_if(settled, P.c.score),
            _sum_if(settled, P.c.score * P.c.score),
            _sum_if(positive, P.c.score),
            _count_if(sa.and_(settled, P.c.alert)),
            _count_if(sa.and_(positive, P.c.alert)),
        )
        .where(where)
        .group_by(*keys)
    )


def _label_bins_select(model: Model, where: Any) -> sa.Select[Any]:
    """The label columns of the score histogram summed over the rows `where` selects."""
    settled = P.c.label.is_not(None)
    keys = (P.c.version_id, P.c.site_id, P.c.arm, P.c.scored_hour, P.c.score_bin)
    return (
        sa.select(
            *keys,
            _count_if(settled),
            _count_if(P.c.label == 1),
            _sum_if(settled, P.c.score),
            _sum_if(settled, P.c.score_logit),
        )
        .where(where, P.c.status == "ok", P.c.score_bin.is_not(None))
        .group_by(*keys)
    )


_LABEL_SUMS = (
    "n_settled", "n_positive", "sum_p_settled", "sum_p2_settled", "sum_yp_settled",
    "n_alert_settled", "n_alert_positive",
)  # fmt: skip
_LABEL_BINS = ("n_settled", "n_positive", "sum_p_settled", "sum_logit_settled")
_SUMS_KEY = ("version_id", "site_id", "unit", "arm", "hour")
_BINS_KEY = ("version_id", "site_id", "arm", "hour", "bin")

Delta = dict[tuple[Any, ...], list[float]]


def add_rows(delta: Delta, rows: Iterable[Any], *, keys: int, sign: int = 1) -> Delta:
    """Accumulate (key..., value...) rows into `delta`, each value times `sign`."""
    for row in rows:
        key, values = tuple(row[:keys]), row[keys:]
        acc = delta.setdefault(key, [0] * len(values))
        for i, value in enumerate(values):
            acc[i] += sign * (value or 0)
    return delta


def _existing_keys(
    conn: Connection, table: sa.Table, model_id: int, names: tuple[str, ...], delta: Delta
) -> set[tuple[Any, ...]]:
    """Which of the delta's keys have a row in `table` (one index range per site)."""
    if not delta:
        return set()
    hours = sorted({k[names.index("hour")] for k in delta})
    sites = sorted({k[names.index("site_id")] for k in delta})
    # `n` is read too so that no index covers the query: SQLite would otherwise walk the
    # unique index, whose only usable prefix is model_id (the model's whole history).
    rows = conn.execute(
        sa.select(*[table.c[n] for n in names], table.c.n).where(
            table.c.model_id == model_id, table.c.site_id.in_(sites), table.c.hour.in_(hours)
        )
    ).all()
    return {tuple(r[: len(names)]) for r in rows}


def _apply(
    conn: Connection,
    table: sa.Table,
    model_id: int,
    names: tuple[str, ...],
    fields: tuple[str, ...],
    delta: Delta,
    stamp: dict[str, Any],
) -> None:
    """Add each key's delta to its row (which exists: see `_existing_keys`)."""
    if not delta:
        return
    stmt = (
        sa.update(table)
        .where(table.c.model_id == model_id, *[table.c[n] == sa.bindparam("k_" + n) for n in names])
        .values(
            **{f: table.c[f] + sa.bindparam("d_" + f) for f in fields},
            **{k: sa.bindparam("s_" + k) for k in stamp},
        )
    )
    params = [
        {
            **{"k_" + n: k for n, k in zip(names, key, strict=True)},
            **{"d_" + f: v for f, v in zip(fields, values, strict=True)},
            **{"s_" + k: v for k, v in stamp.items()},
        }
        for key, values in delta.items()
    ]
    conn.execute(stmt, params)


def apply_label_deltas(
    conn: Connection, model: Model, sums: Delta, bins: Delta, *, now: datetime
) -> set[int]:
    """Add settled rows' label sums to existing rollup and histogram rows.

    Returns the hours that could not be updated in place (a rollup or histogram row missing):
    nothing was applied for them, and the caller rebuilds them from raw rows.
    """
    assert model.id is not None
    missing = {k[4] for k in set(sums) - _existing_keys(conn, R, model.id, _SUMS_KEY, sums)}
    missing |= {k[3] for k in set(bins) - _existing_keys(conn, H, model.id, _BINS_KEY, bins)}
    sums = {k: v for k, v in sums.items() if k[4] not in missing}
    bins = {k: v for k, v in bins.items() if k[3] not in missing}
    _apply(conn, R, model.id, _SUMS_KEY, _LABEL_SUMS, sums, {"updated_at": now})
    _apply(conn, H, model.id, _BINS_KEY, _LABEL_BINS, bins, {})
    return missing


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


# Beyond this magnitude an int may not convert to a float exactly.
_EXACT_FLOAT = 2.0**53


@lru_cache(maxsize=64)
def _inputs_decoder(names: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    """Decoder of a JSON array of `inputs` objects into structs of the named inputs (fields
    `f0`, `f1`, ...; other keys ignored) that accepts only numbers and nulls for them."""
    fields = [(f"f{i}", int | float | None, None) for i in range(len(names))]
    struct = msgspec.defstruct(
        "Inputs", fields, rename={f"f{i}": name for i, name in enumerate(names)}, gc=False
    )
    return msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]


def plain_inputs(document: str, names: tuple[str, ...]) -> list[list[Any]] | None:
    """Per named input, its values (each a number or None) in the objects of a JSON array of
    `inputs` objects; None if the array holds anything else for them, or is no such array.

    Numbers decode as `json.loads` decodes them (ints exact, floats correctly rounded).
    """
    try:
        decoded = _inputs_decoder(names).decode(document)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return [list(map(attrgetter(f"f{i}"), decoded)) for i in range(len(names))]


def _plain_edges(edges: list[Any]) -> np.ndarray | None:
    """The edges as floats, if searching them with numpy is `bisect_right` (sorted numbers,
    exact as floats)."""
    if not all(type(e) in (int, float) and abs(e) < _EXACT_FLOAT for e in edges):
        return None
    array = np.asarray(edges, dtype=float)
    return array if bool(np.all(array[:-1] <= array[1:])) else None


def bin_column(values: Sequence[float | None], edges: list[Any]) -> np.ndarray:
    """`input_bin` of each value (each an int, a float or None), with numpy where it gives
    the same."""
    array = _plain_edges(edges)
    try:
        floats = np.array(values, dtype=float)  # None -> NaN
    except OverflowError:
        array = None
    if array is None:
        return np.array([input_bin(v, edges) for v in values], dtype=np.int64)
    bins = np.searchsorted(array, floats, side="right").astype(np.int64)
    bins[np.isnan(floats)] = -1
    for j in np.flatnonzero(np.abs(floats) >= _EXACT_FLOAT).tolist():
        bins[j] = input_bin(values[j], edges)
    return bins


def count_bins(
    group: np.ndarray, bins: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows per (group, input, bin), from each row's `group` and `bins` (inputs x rows): the
    group, input index, bin and row count of every cell that has rows."""
    n_inputs = bins.shape[0]
    width = int(bins.max(initial=-1)) + 2
    cells = (group[None, :] * n_inputs + np.arange(n_inputs)[:, None]) * width + (bins + 1)
    size = (int(group.max(initial=0)) + 1) * n_inputs * width
    if size <= 4 * cells.size + 65536:
        every = np.bincount(cells.reshape(-1), minlength=size)
        unique = np.flatnonzero(every)
        counts = every[unique]
    else:
        unique, counts = np.unique(cells, return_counts=True)
    cell, bin_ = np.divmod(unique, width)
    group_of, input_of = np.divmod(cell, n_inputs)
    return group_of, input_of, bin_ - 1, counts


def _input_histogram_rows(conn: Connection, model: Model, hours: list[int]) -> list[dict[str, Any]]:
    """Bin every named input of the model's predictions in `hours` (only these hours are read).

    The rows' `inputs` JSON texts come joined per (version, site, arm, hour) from the database
    and are decoded at once, then binned and counted with numpy. Should any named input be
    something other than a number or null, every row's `inputs` is read through the JSON
    column type instead and binned by `input_bin`. (On SQLite a GROUP BY of json_extract'ed,
    CASE-binned inputs measured slower.)
    """
    specs = {name: list(spec["edges"]) for name, spec in (model.inputs or {}).items()}
    if not specs:
        return []
    keys = (P.c.version_id, P.c.site_id, P.c.arm, P.c.scored_hour)
    where = (P.c.model_id == model.id, P.c.scored_hour.in_(hours), P.c.status == "ok")
    # No inputs (NULL, or JSON null) as an empty object: no named input either way.
    text = sa.func.coalesce(sa.func.nullif(sa.cast(P.c.inputs, sa.Text), "null"), "{}")
    groups = conn.execute(
        sa.select(*keys, sa.func.count(), sa.func.aggregate_strings(text, ","))
        .where(*where)
        .group_by(*keys)
    ).all()
    if not groups:
        return []
    names = tuple(specs)
    group_keys = [tuple(g[:4]) for g in groups]
    sizes = [int(g[4]) for g in groups]
    columns = plain_inputs("[" + ",".join(g[5] for g in groups) + "]", names)
    if columns is not None and len(columns[0]) == sum(sizes):
        group = np.repeat(np.arange(len(groups)), sizes)
        bins = np.array([bin_column(c, specs[n]) for c, n in zip(columns, names, strict=True)])
    else:
        index: dict[tuple[Any, ...], int] = {}
        rows: list[list[int]] = []
        group_list: list[int] = []
        for *key, inputs in conn.execute(sa.select(*keys, P.c.inputs).where(*where)):
            values = inputs or {}
            rows.append([input_bin(values.get(name), specs[name]) for name in names])
            group_list.append(index.setdefault(tuple(key), len(index)))
        group_keys, group = list(index), np.array(group_list, dtype=np.int64)
        bins = np.array(rows, dtype=np.int64).reshape(len(group), len(names)).T
    group_of, input_of, bin_of, counts = count_bins(group, bins)
    return [
        {
            "model_id": model.id, "version_id": group_keys[g][0], "site_id": group_keys[g][1],
            "arm": group_keys[g][2], "hour": group_keys[g][3], "feature": names[f], "bin": b,
            "n": n,
        }
        for g, f, b, n in zip(
            group_of.tolist(), input_of.tolist(), bin_of.tolist(), counts.tolist(), strict=True
        )
    ]  # fmt: skip


def _chunks(values: Iterable[int], size: int) -> Iterable[list[int]]:
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk


def _rollup_site_hours(
    conn: Connection, model_id: int, sites: list[int], hours: list[int]
) -> set[tuple[int, int]]:
    return {
        (int(s), int(h))
        for s, h in conn.execute(
            sa.select(R.c.site_id, R.c.hour)
            .where(R.c.model_id == model_id, R.c.site_id.in_(sites), R.c.hour.in_(hours))
            .distinct()
        )
    }


def rebuild_hours(
    conn: Connection, model: Model, hours: Iterable[int], *, now: datetime, daily: bool = True
) -> int:
    """Recompute the rollup and histogram rows of `hours` for one model from raw predictions.

    The daily tables catch up with the rebuilt rows at the next `sync_daily` (they are newer
    rows); `daily=False` leaves even an hour that lost every row to the caller, which then
    redoes the hours' days itself (as `refresh` does).
    """
    assert model.id is not None
    count = 0
    sites = sorted(conn.execute(sa.select(table_of(Site).c.id)).scalars())
    for chunk in _chunks(sorted(set(hours)), HOURS_PER_STATEMENT):
        before = _rollup_site_hours(conn, model.id, sites, chunk) if daily else set()
        for table in (R, H, L, I):
            # With the sites named, each (model_id, site_id, hour) index lookup is exact; with
            # only the model it would walk the model's whole history in the index.
            conn.execute(
                sa.delete(table).where(
                    table.c.model_id == model.id,
                    table.c.site_id.in_(sites),
                    table.c.hour.in_(chunk),
                )
            )
        conn.execute(sa.insert(R).from_select(_ROLLUP_COLUMNS, _rollup_select(model, chunk, now)))
        conn.execute(sa.insert(H).from_select(_HIST_COLUMNS, _histogram_select(model, chunk)))
        conn.execute(sa.insert(L).from_select(_LATENCY_COLUMNS, _latency_select(model, chunk)))
        # The inputs are decoded in Python: one hour's rows at a time bounds the memory.
        for hour in chunk:
            input_rows = _input_histogram_rows(conn, model, [hour])
            if input_rows:
                conn.execute(sa.insert(I), input_rows)
        # An hour left without rollup rows leaves no new row behind for `sync_daily` to find:
        # its day's sums are redone here.
        vanished = before - _rollup_site_hours(conn, model.id, sites, chunk) if daily else set()
        if vanished:
            rebuild_days(
                conn,
                model.id,
                sorted({s for s, _ in vanished}),
                {h // 24 for _, h in vanished},
            )
        count += len(chunk)
    return count


# ---------------------------------------------------------------- daily sums


def _day_range(table: sa.Table, model_id: int, sites: list[int], first: int, last: int) -> Any:
    """Hourly rows of days [first, last] (one index range per site, as in the monitors)."""
    return sa.and_(
        table.c.model_id == model_id,
        table.c.site_id.in_(sites),
        table.c.hour >= first * 24,
        table.c.hour < (last + 1) * 24,
    )


def daily_rollup_select(model_id: int, sites: list[int], first: int, last: int) -> sa.Select[Any]:
    """Per site and day: the prediction rollup's sums that `DailyRollup` keeps."""
    day = (R.c.hour // 24).label("day")
    return (
        sa.select(
            R.c.model_id,
            R.c.site_id,
            day,
            sa.func.sum(R.c.n_ok),
            sa.func.sum(R.c.n_on_time),
            sa.func.sum(R.c.n_error + R.c.n_timeout),
            sa.func.sum(R.c.n_settled),
            sa.func.sum(R.c.n_positive),
            sa.func.sum(R.c.sum_p_settled),
            sa.func.sum(R.c.sum_p2_settled),
            sa.func.sum(R.c.sum_yp_settled),
            sa.func.sum(R.c.n_alert_settled),
            sa.func.sum(R.c.n_alert_positive),
        )
        .where(_day_range(R, model_id, sites, first, last))
        .group_by(R.c.model_id, R.c.site_id, day)
    )


def daily_score_select(model_id: int, sites: list[int], first: int, last: int) -> sa.Select[Any]:
    """Per site, day and bin: the score histogram's sums that `DailyScoreHistogram` keeps."""
    day = (H.c.hour // 24).label("day")
    return (
        sa.select(
            H.c.model_id,
            H.c.site_id,
            day,
            H.c.bin,
            sa.func.sum(H.c.n),
            sa.func.sum(H.c.n_settled),
            sa.func.sum(H.c.n_positive),
            sa.func.sum(H.c.sum_p_settled),
            sa.func.sum(H.c.sum_logit_settled),
        )
        .where(_day_range(H, model_id, sites, first, last))
        .group_by(H.c.model_id, H.c.site_id, day, H.c.bin)
    )


def daily_input_select(model_id: int, sites: list[int], first: int, last: int) -> sa.Select[Any]:
    """Per site, day, feature and bin: the input histograms' counts."""
    day = (I.c.hour // 24).label("day")
    return (
        sa.select(I.c.model_id, I.c.site_id, day, I.c.feature, I.c.bin, sa.func.sum(I.c.n))
        .where(_day_range(I, model_id, sites, first, last))
        .group_by(I.c.model_id, I.c.site_id, day, I.c.feature, I.c.bin)
    )


_DAILY = (
    (DR, daily_rollup_select, [
        "model_id", "site_id", "day", "n_ok", "n_on_time", "n_failed", "n_settled",
        "n_positive", "sum_p_settled", "sum_p2_settled", "sum_yp_settled", "n_alert_settled",
        "n_alert_positive",
    ]),
    (DH, daily_score_select, [
        "model_id", "site_id", "day", "bin", "n", "n_settled", "n_positive", "sum_p_settled",
        "sum_logit_settled",
    ]),
    (DI, daily_input_select, ["model_id", "site_id", "day", "feature", "bin", "n"]),
)  # fmt: skip


def _runs(days: Iterable[int], limit: int) -> list[tuple[int, int]]:
    """Sorted days as [first, last] runs of consecutive days, at most `limit` days each."""
    runs: list[tuple[int, int]] = []
    for day in sorted(set(days)):
        if runs and day == runs[-1][1] + 1 and day - runs[-1][0] < limit:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def rebuild_days(
    conn: Connection,
    model_id: int,
    sites: list[int],
    days: Iterable[int],
    *,
    input_days: Iterable[int] | None = None,
) -> None:
    """Recompute the daily rows of `days` at `sites` for one model from the hourly rollups;
    the daily input histograms only of `input_days` if given (days whose hourly input
    histograms changed: a label update leaves them as they are)."""
    days = set(days)
    for table, select, columns in _DAILY:
        redo = input_days if table is DI and input_days is not None else days
        for first, last in _runs(redo, DAYS_PER_STATEMENT):
            _rebuild_day_range(conn, table, select, columns, model_id, sites, first, last)


def _rebuild_day_range(
    conn: Connection,
    table: sa.Table,
    select: Any,
    columns: list[str],
    model_id: int,
    sites: list[int],
    first: int,
    last: int,
) -> None:
    """Replace the daily rows of days [first, last] of `table` with `select`'s sums."""
    conn.execute(
        sa.delete(table).where(
            table.c.model_id == model_id,
            table.c.site_id.in_(sites),
            table.c.day >= first,
            table.c.day <= last,
        )
    )
    conn.execute(sa.insert(table).from_select(columns, select(model_id, sites, first, last)))


@dataclass
class DailyBacklog:
    """Days whose hourly rollups changed since the daily tables were last brought up to date."""

    days: dict[tuple[int, int], set[int]]  # (model_id, site_id) -> days
    stamp: datetime | None  # the newest rollup `updated_at` among them
    top_id: int  # the highest rollup row id when it was read

    def covers(self, model_id: int, sites: Iterable[int], first: int, last: int) -> bool:
        """Whether no day in [first, last] of `model_id` at `sites` is waiting."""
        return not any(
            first <= day <= last for site in sites for day in self.days.get((model_id, site), ())
        )


def daily_backlog(conn: Connection) -> DailyBacklog:
    """What `sync_daily` would redo: the days of rollup rows stamped after the last sync or
    inserted after it (by id, which also finds rows copied in with an older stamp)."""
    stamp = get_state(conn, WM_DAILY_UPDATED, "")
    since_id = int(get_state(conn, WM_DAILY_ID, "0"))
    # `+ 0`: grouped by bare columns, SQLite would walk the (model_id, site_id, hour) index for
    # its order and filter the whole history, instead of the index the condition names.
    model_id, site_id = (R.c.model_id + 0).label("m"), (R.c.site_id + 0).label("s")
    day = (R.c.hour // 24).label("d")
    conditions = [R.c.id > since_id]
    if stamp:
        conditions.append(R.c.updated_at > datetime.fromisoformat(stamp))
    days: dict[tuple[int, int], set[int]] = {}
    newest: datetime | None = None
    for condition in conditions:
        for m, s, d, updated in conn.execute(
            sa.select(model_id, site_id, day, sa.func.max(R.c.updated_at))
            .where(condition)
            .group_by(model_id, site_id, day)
        ):
            days.setdefault((int(m), int(s)), set()).add(int(d))
            newest = updated if newest is None else max(newest, updated)
    top_id = conn.execute(sa.select(sa.func.max(R.c.id))).scalar() or 0
    return DailyBacklog(days, newest, int(top_id))


def _mark_daily_current(conn: Connection, stamp: datetime) -> None:
    """Record that the daily tables hold every rollup row stamped up to `stamp` and every row
    inserted so far."""
    previous = get_state(conn, WM_DAILY_UPDATED, "")
    newest = max(stamp, datetime.fromisoformat(previous)) if previous else stamp
    set_state(conn, WM_DAILY_UPDATED, newest.isoformat())
    top_id = conn.execute(sa.select(sa.func.max(R.c.id))).scalar() or 0
    set_state(conn, WM_DAILY_ID, str(int(top_id)))


def sync_daily(conn: Connection) -> int:
    """Bring the daily tables up to date with the hourly rollups; returns the days redone.

    Each changed day is summed again from its hourly rows (not patched with deltas), so a
    daily row is always the SQL sum of that day's hourly rows, as a window read of the hourly
    rows would give it.
    """
    backlog = daily_backlog(conn)
    redone = 0
    by_model: dict[int, tuple[set[int], set[int]]] = {}
    for (model_id, site_id), days in backlog.days.items():
        sites, all_days = by_model.setdefault(model_id, (set(), set()))
        sites.add(site_id)
        all_days |= days
    for model_id, (sites, days) in sorted(by_model.items()):
        rebuild_days(conn, model_id, sorted(sites), days)
        redone += len(days)
    if backlog.stamp is not None:
        previous = get_state(conn, WM_DAILY_UPDATED, "")
        newest = max(backlog.stamp, datetime.fromisoformat(previous)) if previous else backlog.stamp
        set_state(conn, WM_DAILY_UPDATED, newest.isoformat())
    set_state(conn, WM_DAILY_ID, str(backlog.top_id))
    return redone


def _hours_of_new_rows(conn: Connection, model: Model, low: int, high: int) -> set[int]:
    # By primary-key range (`+ 0`: not by the model's index, which would read its history).
    return set(
        conn.execute(
            sa.select(P.c.scored_hour)
            .where((P.c.model_id + 0) == model.id, P.c.id > low, P.c.id <= high)
            .distinct()
        ).scalars()
    )


def refresh(
    engine: Engine, *, now: datetime | None = None, incremental: bool = True
) -> RefreshResult:
    """Settle labels and bring the rollups of every hour that changed since the last run up to
    date: hours with new predictions are rebuilt, hours with only newly settled labels get the
    settled rows' sums added (`incremental=False`, or a `now` not after the last run's: rebuilt).
    """
    now = now or utcnow()
    result = RefreshResult()
    with engine.begin() as conn:
        # Rollup rows written since the daily tables were last brought up to date (by another
        # job, or copied in) are summed first; this run then redoes the days it changes itself,
        # whatever the clocks that stamped them.
        sync_daily(conn)
        sites = sorted(conn.execute(sa.select(table_of(Site).c.id)).scalars())
        wm_p = int(get_state(conn, WM_PREDICTION))
        wm_o = int(get_state(conn, WM_OUTCOME))
        wm_e = int(get_state(conn, WM_ENCOUNTER))
        top_p = conn.execute(sa.select(sa.func.max(P.c.id))).scalar() or 0
        top_o = conn.execute(sa.select(sa.func.max(O.c.id))).scalar() or 0
        top_e = conn.execute(sa.select(sa.func.max(E.c.id))).scalar() or 0
        last_run = get_state(conn, LAST_RUN, "")
        # Rows stamped settled_at = now are this run's only if no earlier run used this `now`.
        in_place = incremental and bool(last_run) and now > datetime.fromisoformat(last_run)
        if not in_place:
            set_state(conn, RESTAMPS, str(int(get_state(conn, RESTAMPS)) + 1))
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        for model in models:
            cutoff_key = CLOSURE_CUTOFF.format(model_id=model.id)
            previous = get_state(conn, cutoff_key, "")
            closure_cutoff = datetime.fromisoformat(previous) if previous else None
            settled = settle_labels(
                conn,
                model,
                now=now,
                wm_prediction=wm_p,
                wm_outcome=wm_o,
                wm_encounter=wm_e,
                closure_cutoff=closure_cutoff,
                # A run whose `now` is not after the last one's may have a cutoff below the
                # kept one: only in-place runs follow each other's cutoffs.
                expiry_floor=closure_cutoff if in_place else None,
            )
            cutoff = now - timedelta(hours=model.label_lag_hours)
            set_state(conn, cutoff_key, max(cutoff, closure_cutoff or cutoff).isoformat())
            result.settled_positive += settled.positive
            result.settled_negative += settled.negative
            dirty = _hours_of_new_rows(conn, model, wm_p, top_p)
            settled_now = sa.and_((P.c.model_id + 0) == model.id, P.c.settled_at == now)
            if in_place:
                sums = add_rows({}, conn.execute(_label_sums_select(model, settled_now)), keys=5)
                add_rows(sums, settled.flipped_sums, keys=5, sign=-1)
                bins = add_rows({}, conn.execute(_label_bins_select(model, settled_now)), keys=5)
                add_rows(bins, settled.flipped_bins, keys=5, sign=-1)
                sums = {k: v for k, v in sums.items() if k[4] not in dirty}
                bins = {k: v for k, v in bins.items() if k[3] not in dirty}
                dirty |= apply_label_deltas(conn, model, sums, bins, now=now)
                updated = ({k[4] for k in sums} | {k[3] for k in bins}) - dirty
                result.hours_updated += len(updated)
            else:
                dirty |= set(conn.execute(sa.select(P.c.scored_hour).where(settled_now)).scalars())
                updated = set()
            result.hours_rebuilt += rebuild_hours(conn, model, dirty, now=now, daily=False)
            assert model.id is not None
            rebuild_days(
                conn,
                model.id,
                sites,
                {hour // 24 for hour in dirty | updated},
                input_days={hour // 24 for hour in dirty},
            )
        result.new_predictions = int(top_p - wm_p)
        set_state(conn, WM_PREDICTION, str(top_p))
        set_state(conn, WM_OUTCOME, str(top_o))
        set_state(conn, WM_ENCOUNTER, str(top_e))
        newest = max(now, datetime.fromisoformat(last_run)) if last_run else now
        set_state(conn, LAST_RUN, newest.isoformat())
        _mark_daily_current(conn, now)
    logger.info("rollups refreshed: %s", result)
    return result
