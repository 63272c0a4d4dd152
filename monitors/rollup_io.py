"""Reads the clinical-quality monitors share: what changed, and binned rollups as dense arrays.

Every read is bounded by an hour range the caller derives from what changed, so a run's cost
follows the new data, not the history. Aggregation happens in the database. Whole-day windows
are read from the daily tables (one row per site, day and bin, kept by store/rollups.py
`sync_daily`) when they hold every day asked for; otherwise from the hourly rows, which give
the same sums. Frames come in no particular order (callers place rows by site and period):
an ORDER BY would hold PostgreSQL to an index scan in that order, which it gives up for a
bitmap scan and a sort once the daily tables are large.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.models import (
    SCORE_BINS,
    DailyInputHistogram,
    DailyRollup,
    DailyScoreHistogram,
    InputHistogram,
    MetricPoint,
    Model,
    PredictionRollup,
    ScoreHistogram,
    Site,
    table_of,
)
from store.rollups import daily_backlog, get_state, set_state

R = table_of(PredictionRollup)
H = table_of(ScoreHistogram)
I = table_of(InputHistogram)  # noqa: E741
MP = table_of(MetricPoint)
DR = table_of(DailyRollup)
DH = table_of(DailyScoreHistogram)
DI = table_of(DailyInputHistogram)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
F64 = npt.NDArray[np.float64]
_DTYPES: dict[type, type] = {int: np.int64, float: np.float64}

# Whole-day windows come from the daily tables when they are current; False reads every window
# from the hourly rollups (the same sums, at the cost of reading 24 rows for each).
READ_DAILY = True
# Per-bin columns of the score histogram, in the order of the dense arrays' last axis.
BIN_FIELDS = ("n", "n_settled", "n_positive", "sum_p_settled", "sum_logit_settled")
# Per-day (or hour) sums of the prediction rollup.
SUM_FIELDS = (
    "n_ok",
    "n_settled",
    "n_positive",
    "sum_p_settled",
    "sum_p2_settled",
    "sum_yp_settled",
    "n_alert_settled",
    "n_alert_positive",
)


def day_start(day: int) -> datetime:
    return EPOCH + timedelta(days=day)


def hour_start(hour: int) -> datetime:
    return EPOCH + timedelta(hours=hour)


def day_of(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds() // 86400)


def hour_of(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds() // 3600)


def load_models(conn: Connection) -> dict[int, Model]:
    rows = conn.execute(sa.select(table_of(Model))).mappings()
    return {int(r["id"]): Model.model_validate(dict(r)) for r in rows}


def load_sites(conn: Connection) -> dict[int, str]:
    S = table_of(Site)
    return {int(r.id): str(r.code) for r in conn.execute(sa.select(S.c.id, S.c.code))}


@dataclass(frozen=True)
class Changed:
    """Hours of one model x site whose rollups were rebuilt since a watermark."""

    model_id: int
    site_id: int
    first_hour: int
    last_hour: int
    updated_at: datetime


def model_hours(
    table: sa.Table, model_id: int | None, site_ids: Iterable[int], first_hour: int, end_hour: int
) -> sa.ColumnElement[bool]:
    """Rows of one model at `site_ids` in hours [first_hour, end_hour), as index ranges.

    The rollup indexes are (model_id, site_id, hour): without the site in the condition, an hour
    range is a filter over the model's whole index range, which grows with history; with it,
    it is one range per site.
    """
    return sa.and_(
        table.c.model_id == model_id,
        table.c.site_id.in_(sorted(set(site_ids))),
        table.c.hour >= first_hour,
        table.c.hour < end_hour,
    )


def _sites(
    conn: Connection, site_id: int | None, site_ids: Iterable[int] | None = None
) -> list[int]:
    if site_ids is not None:
        return sorted(set(site_ids))
    return [site_id] if site_id is not None else sorted(load_sites(conn))


def model_days(
    table: sa.Table, model_id: int, site_ids: Iterable[int], first_day: int, last_day: int
) -> sa.ColumnElement[bool]:
    """Daily rows of one model at `site_ids` in days [first_day, last_day] (index ranges)."""
    return sa.and_(
        table.c.model_id == model_id,
        table.c.site_id.in_(sorted(set(site_ids))),
        table.c.day >= first_day,
        table.c.day <= last_day,
    )


def daily_ready(
    conn: Connection, model_id: int, site_ids: Iterable[int], first_day: int, last_day: int
) -> bool:
    """Whether the daily tables hold every day of [first_day, last_day] at `site_ids` as the
    hourly rollups now sum it (no change to those days waits for store.rollups.sync_daily)."""
    return READ_DAILY and daily_backlog(conn).covers(model_id, site_ids, first_day, last_day)


def unindexed(column: Any) -> Any:
    """`column + 0`, inline: the same value, but no index on the column can provide it.

    Grouping rollups by the bare (model_id, site_id) lets SQLite walk the (model_id, site_id,
    hour) index for its order and filter every row of the history; grouping by this instead
    leaves it the index of the WHERE clause (e.g. updated_at), which finds only new rows.
    """
    return (column + sa.literal_column("0")).label(column.name)


def changed_since(conn: Connection, watermark: datetime) -> list[Changed]:
    """Model x site hour ranges with rollups newer than the watermark (the index on updated_at)."""
    model_id, site_id = unindexed(R.c.model_id), unindexed(R.c.site_id)
    rows = conn.execute(
        sa.select(
            model_id,
            site_id,
            sa.func.min(R.c.hour),
            sa.func.max(R.c.hour),
            sa.func.max(R.c.updated_at),
        )
        .where(R.c.updated_at > watermark)
        .group_by(model_id, site_id)
    ).all()
    return [Changed(int(m), int(s), int(a), int(b), u) for m, s, a, b, u in rows]


def read_watermark(conn: Connection, monitor: str) -> datetime:
    return datetime.fromisoformat(
        get_state(conn, f"monitor.{monitor}.rollup_updated_at", EPOCH.isoformat())
    )


def write_watermark(conn: Connection, monitor: str, value: datetime) -> None:
    set_state(conn, f"monitor.{monitor}.rollup_updated_at", value.isoformat())


def _numpy_type(column_type: sa.types.TypeEngine[Any]) -> type:
    """int64 or float64 for integer and float columns, object for anything else."""
    try:
        return _DTYPES.get(column_type.python_type, object)
    except NotImplementedError:
        return object


def _frame(conn: Connection, query: sa.Select[Any], columns: list[str]) -> pd.DataFrame:
    """The rows of `query` as `pd.DataFrame(rows, columns=columns)`, built from columns: the
    driver's tuples go straight into a numpy record array typed by the query's columns (int64,
    float64, object), without a SQLAlchemy row object per row or pandas' row-wise inference.

    For NOT NULL integer and float columns, which both databases return as int and float;
    a row that does not fit (a NULL) leaves the frame to pandas' inference.
    """
    result = conn.execute(query)
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    if not rows:
        return pd.DataFrame(rows, columns=columns)
    kinds = [_numpy_type(c.type) for c in query.selected_columns]
    dtype = np.dtype(list(zip(columns, kinds, strict=True)))
    try:
        table = np.fromiter(rows, dtype=dtype, count=len(rows))
    except (TypeError, ValueError, OverflowError):
        return pd.DataFrame(rows, columns=columns)
    return pd.DataFrame({name: table[name] for name in columns}, columns=columns)


def daily_bins(
    conn: Connection,
    model_id: int,
    first_day: int,
    last_day: int,
    *,
    hourly: bool = False,
    site_id: int | None = None,
    site_ids: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Score-histogram sums per site x day (or hour) x bin over [first_day, last_day], at
    `site_id`, or `site_ids`, or every site."""
    sites = _sites(conn, site_id, site_ids)
    if not hourly and daily_ready(conn, model_id, sites, first_day, last_day):
        daily = sa.select(
            DH.c.site_id, DH.c.day.label("period"), DH.c.bin, *[DH.c[f] for f in BIN_FIELDS]
        ).where(model_days(DH, model_id, sites, first_day, last_day))
        return _frame(conn, daily, ["site_id", "period", "bin", *BIN_FIELDS])
    period = H.c.hour if hourly else (H.c.hour // 24)
    query = (
        sa.select(
            H.c.site_id,
            period.label("period"),
            H.c.bin,
            sa.func.sum(H.c.n).label("n"),
            sa.func.sum(H.c.n_settled).label("n_settled"),
            sa.func.sum(H.c.n_positive).label("n_positive"),
            sa.func.sum(H.c.sum_p_settled).label("sum_p_settled"),
            sa.func.sum(H.c.sum_logit_settled).label("sum_logit_settled"),
        )
        .where(model_hours(H, model_id, sites, first_day * 24, (last_day + 1) * 24))
        .group_by(H.c.site_id, period, H.c.bin)
    )
    return _frame(conn, query, ["site_id", "period", "bin", *BIN_FIELDS])


def daily_sums(
    conn: Connection,
    model_id: int,
    first_day: int,
    last_day: int,
    *,
    site_id: int | None = None,
    site_ids: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Prediction-rollup sums per site x day over [first_day, last_day], at `site_id`, or
    `site_ids`, or every site."""
    sites = _sites(conn, site_id, site_ids)
    if daily_ready(conn, model_id, sites, first_day, last_day):
        query = sa.select(
            DR.c.site_id, DR.c.day.label("period"), *[DR.c[f] for f in SUM_FIELDS]
        ).where(model_days(DR, model_id, sites, first_day, last_day))
        return _frame(conn, query, ["site_id", "period", *SUM_FIELDS])
    day = (R.c.hour // 24).label("period")
    query = (
        sa.select(R.c.site_id, day, *[sa.func.sum(R.c[f]).label(f) for f in SUM_FIELDS])
        .where(model_hours(R, model_id, sites, first_day * 24, (last_day + 1) * 24))
        .group_by(R.c.site_id, day)
    )
    return _frame(conn, query, ["site_id", "period", *SUM_FIELDS])


def _placed(
    frame: pd.DataFrame, site_ids: Sequence[int], first: int, last: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Each row's position in `site_ids` (distinct) and its period's offset from `first`, and
    which rows are of one of `site_ids` and in periods [first, last]."""
    wanted = np.asarray(site_ids, dtype=np.int64)
    site = frame["site_id"].to_numpy(dtype=np.int64)
    period = frame["period"].to_numpy(dtype=np.int64)
    keep = (period >= first) & (period <= last)
    if not wanted.size:
        return np.zeros(site.size, dtype=np.intp), period - first, np.zeros_like(keep)
    order = np.argsort(wanted, kind="stable")
    found = np.minimum(np.searchsorted(wanted[order], site), wanted.size - 1)
    position = order[found]
    keep &= wanted[position] == site
    return position, period - first, keep


def dense_bins_by_site(
    frame: pd.DataFrame, site_ids: Sequence[int], first: int, last: int, bins: int = SCORE_BINS
) -> F64:
    """Array [site, period, bin, field] of the histogram sums of `site_ids` (in that order),
    zeros where nothing was scored: `dense_bins` of every site from one pass over the rows."""
    out = np.zeros((len(site_ids), last - first + 1, bins, len(BIN_FIELDS)))
    if frame.empty:
        return out
    position, offset, keep = _placed(frame, site_ids, first, last)
    values = frame[list(BIN_FIELDS)].to_numpy(dtype=float)
    column = frame["bin"].to_numpy(dtype=np.int64)
    out[position[keep], offset[keep], column[keep], :] = values[keep]
    return out


def dense_sums_by_site(frame: pd.DataFrame, site_ids: Sequence[int], first: int, last: int) -> F64:
    """Array [site, period, field] of the rollup sums of `site_ids` (in that order): `dense_sums`
    of every site from one pass over the rows."""
    out = np.zeros((len(site_ids), last - first + 1, len(SUM_FIELDS)))
    if frame.empty:
        return out
    position, offset, keep = _placed(frame, site_ids, first, last)
    values = frame[list(SUM_FIELDS)].to_numpy(dtype=float)
    out[position[keep], offset[keep], :] = values[keep]
    return out


def dense_bins(
    frame: pd.DataFrame, site_id: int, first: int, last: int, bins: int = SCORE_BINS
) -> F64:
    """Array [period, bin, field] of one site's histogram sums, zeros where nothing was scored."""
    return dense_bins_by_site(frame, [site_id], first, last, bins)[0]


def dense_sums(frame: pd.DataFrame, site_id: int, first: int, last: int) -> F64:
    """Array [period, field] of one site's rollup sums."""
    return dense_sums_by_site(frame, [site_id], first, last)[0]


def trailing(values: F64, window: int) -> F64:
    """Sum over the trailing `window` periods along axis 0 (a period and the window - 1 before)."""
    cum = np.cumsum(values, axis=0)
    shifted = np.zeros_like(cum)
    if window < len(cum):
        shifted[window:] = cum[:-window]
    return np.asarray(cum - shifted, dtype=float)


def first_hours(conn: Connection, model_id: int) -> dict[int, int]:
    """The first scored hour per site of one model (the start of each site's history).

    One statement: per site, a correlated min() that is the first entry of the (model_id,
    site_id, hour) index. A min() per GROUP BY group would read the model's whole index range,
    which grows with history; a statement per site costs its overhead 40 times.
    """
    S = table_of(Site)
    first = (
        sa.select(sa.func.min(R.c.hour))
        .where(R.c.model_id == model_id, R.c.site_id == S.c.id)
        .scalar_subquery()
    )
    rows = conn.execute(sa.select(S.c.id, first)).all()
    return {int(site_id): int(hour) for site_id, hour in rows if hour is not None}


_POINT_KEYS = 500  # keys per statement: 3 parameters each, well inside both databases' limits


def latest_points_by_site(
    conn: Connection,
    *,
    monitor: str,
    metrics: Iterable[str],
    model_id: int,
    before: dict[int, datetime],
) -> dict[int, dict[str, dict[str, Any]]]:
    """Per site of `before`, the newest point of each metric for the model whose window starts
    before that site's moment, for many sites in one statement.

    The keys (site, metric, moment) are a VALUES list; each key's newest point is a correlated
    subquery that seeks the unique index (monitor, metric, model, version, site, arm,
    window_start) backwards from the moment, and the points are then read by primary key.
    Sites without a point are left out.
    """
    names = list(metrics)
    keys = [(site_id, metric, moment) for site_id, moment in before.items() for metric in names]
    found: dict[int, dict[str, dict[str, Any]]] = {}
    for start in range(0, len(keys), _POINT_KEYS):
        chunk = keys[start : start + _POINT_KEYS]
        wanted = sa.values(
            sa.column("site_id", MP.c.site_id.type),
            sa.column("metric", MP.c.metric.type),
            sa.column("before", MP.c.window_start.type),
            name="k",
        ).data(chunk)
        k = wanted.cte("k")
        p = MP.alias("p")
        newest = (
            sa.select(p.c.id)
            .where(
                p.c.monitor == monitor,
                p.c.metric == k.c.metric,
                p.c.model_id == model_id,
                p.c.version_id == 0,
                p.c.site_id == k.c.site_id,
                p.c.arm == "all",
                p.c.window_start < k.c.before,
            )
            .order_by(p.c.window_start.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = sa.select(MP).where(MP.c.id.in_(sa.select(newest).select_from(k)))
        for row in conn.execute(query).mappings():
            found.setdefault(int(row["site_id"]), {})[str(row["metric"])] = dict(row)
    return found


def daily_inputs(
    conn: Connection,
    model_id: int,
    first_day: int,
    last_day: int,
    *,
    site_id: int | None = None,
    site_ids: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Input-histogram counts per site x day x feature x bin over [first_day, last_day], at
    `site_id`, or `site_ids`, or every site."""
    sites = _sites(conn, site_id, site_ids)
    columns = ["site_id", "period", "feature", "bin", "n"]
    if daily_ready(conn, model_id, sites, first_day, last_day):
        query = sa.select(
            DI.c.site_id, DI.c.day.label("period"), DI.c.feature, DI.c.bin, DI.c.n
        ).where(model_days(DI, model_id, sites, first_day, last_day))
        return _frame(conn, query, columns)
    day = (I.c.hour // 24).label("period")
    query = (
        sa.select(I.c.site_id, day, I.c.feature, I.c.bin, sa.func.sum(I.c.n).label("n"))
        .where(model_hours(I, model_id, sites, first_day * 24, (last_day + 1) * 24))
        .group_by(I.c.site_id, day, I.c.feature, I.c.bin)
    )
    return _frame(conn, query, columns)
