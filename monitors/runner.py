"""The thin I/O edge of monitors: read rollups, call the pure computation, write metric points."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult
from monitors.config import MonitorConfig
from monitors.observed_expected import (
    OEConfig,
    classify,
    design_effect_for,
    observed_to_expected,
    rule_text,
)
from monitors.rollup_io import DR, daily_ready, load_sites, model_days, model_hours, unindexed
from store.bulk import upsert
from store.models import MetricPoint, Model, PredictionRollup, Site, table_of, utcnow
from store.rollups import get_state, set_state, sync_daily

logger = logging.getLogger(__name__)

R = table_of(PredictionRollup)
MP = table_of(MetricPoint)

OE_MONITOR = "observed_expected"
OE_METRIC = "oe_ratio"
OE_RUNBOOK = "calibration-drift"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def day_start(day: int) -> datetime:
    """Start of day number `day` (days since the Unix epoch, UTC)."""
    return EPOCH + timedelta(days=day)


def write_results(conn: Connection, results: Sequence[MonitorResult], *, now: datetime) -> None:
    """Upsert results as metric points (one row per monitor, metric, scope and window)."""
    rows = [
        {
            "monitor": r.monitor,
            "metric": r.metric,
            "model_id": r.model_id,
            "version_id": r.version_id,
            "site_id": r.site_id,
            "arm": r.arm,
            "window_start": r.window_start,
            "window_end": r.window_end,
            "value": r.value,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "n": r.n,
            "status": r.status.value,
            "threshold": r.threshold,
            "detail": r.detail,
            "monitor_version": "1",
            "computed_at": now,
        }
        for r in results
    ]
    key = ["monitor", "metric", "model_id", "version_id", "site_id", "arm", "window_start"]
    update = [
        "window_end",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "status",
        "threshold",
        "detail",
        "computed_at",
    ]
    for start in range(0, len(rows), 1000):
        upsert(conn, MP, rows[start : start + 1000], key=key, update=update)


def _daily_settled_counts(
    conn: Connection, model_id: int, first_day: int, last_day: int
) -> pd.DataFrame:
    sites = load_sites(conn)
    if daily_ready(conn, model_id, sites, first_day, last_day):
        query = (
            sa.select(
                DR.c.site_id,
                DR.c.day,
                DR.c.n_ok,
                DR.c.n_settled,
                DR.c.n_positive.label("observed"),
                DR.c.sum_p_settled.label("expected"),
            )
            .where(model_days(DR, model_id, sites, first_day, last_day))
            .order_by(DR.c.site_id, DR.c.day)
        )
        return pd.DataFrame(conn.execute(query).mappings().all())
    day = (R.c.hour // 24).label("day")
    query = (
        sa.select(
            R.c.site_id,
            day,
            sa.func.sum(R.c.n_ok).label("n_ok"),
            sa.func.sum(R.c.n_settled).label("n_settled"),
            sa.func.sum(R.c.n_positive).label("observed"),
            sa.func.sum(R.c.sum_p_settled).label("expected"),
        )
        .where(model_hours(R, model_id, sites, first_day * 24, (last_day + 1) * 24))
        .group_by(R.c.site_id, day)
    )
    return pd.DataFrame(conn.execute(query).mappings().all())


COUNT_COLUMNS = ("n_ok", "n_settled", "observed", "expected")


def trailing_counts(
    daily: pd.DataFrame, windows: dict[int, int], days: range
) -> dict[int, npt.NDArray[np.float64]]:
    """Per site (site_id → window_days): for each day in `days`, the sums of the daily counts
    (COUNT_COLUMNS) over the trailing window ending that day, an array of len(days) × 4.

    Sites sharing a window length are summed together, one column per site and count, by the
    same pandas rolling sum a single site gets, so each column's sums are the same floats.
    """
    if daily.empty:
        site_of = np.zeros(0, dtype=np.int64)
        day_of = np.zeros(0, dtype=np.int64)
        values = np.zeros((0, len(COUNT_COLUMNS)))
    else:
        site_of = daily["site_id"].to_numpy(dtype=np.int64)
        day_of = daily["day"].to_numpy(dtype=np.int64)
        values = np.column_stack([daily[c].to_numpy(dtype=float) for c in COUNT_COLUMNS])
    width = len(COUNT_COLUMNS)
    out: dict[int, npt.NDArray[np.float64]] = {site: np.zeros((0, width)) for site in windows}
    if len(days) == 0:
        return out
    for window in sorted(set(windows.values())):
        group = [site for site, w in windows.items() if w == window]
        first = days.start - window + 1
        column = pd.Index(group).get_indexer(pd.Index(site_of))
        row = day_of - first
        keep = (column >= 0) & (row >= 0) & (row < days.stop - first)
        full = np.zeros((days.stop - first, width * len(group)))
        for k in range(width):
            full[row[keep], column[keep] * width + k] = values[keep, k]
        rolled = pd.DataFrame(full).rolling(window, min_periods=1).sum().to_numpy()
        tail = rolled[days.start - first :]
        for index, site in enumerate(group):
            out[site] = tail[:, index * width : (index + 1) * width]
    return out


def observed_expected_results(
    daily: pd.DataFrame,
    *,
    model: Model,
    site_codes: dict[int, str],
    days: range,
    config: MonitorConfig,
    now: datetime,
) -> list[MonitorResult]:
    """Trailing-window O:E for each site and each day in `days`, from daily settled counts."""
    results: list[MonitorResult] = []
    assert model.id is not None
    configs = {
        site_id: config.for_monitor(OE_MONITOR, OEConfig, model=model.name, site=code)
        for site_id, code in site_codes.items()
    }
    sums = trailing_counts(daily, {s: cfg.window_days for s, cfg in configs.items()}, days)
    for site_id in site_codes:
        cfg = configs[site_id]
        for day, (n_ok_sum, n_settled_sum, observed_sum, expected_sum) in zip(
            days, sums[site_id].tolist(), strict=True
        ):
            observed, expected = round(observed_sum), float(expected_sum)
            n_ok, n_settled = int(n_ok_sum), int(n_settled_sum)
            deff = cfg.design_effect or design_effect_for(
                model.horizon_hours, model.scoring_interval_minutes
            )
            estimate = observed_to_expected(observed, expected, cfg.ci_level, deff)
            status, reason = classify(estimate, n_ok=n_ok, n_settled=n_settled, config=cfg)
            window_end = min(day_start(day + 1), now)
            results.append(
                MonitorResult(
                    monitor=OE_MONITOR,
                    metric=OE_METRIC,
                    model_id=model.id,
                    site_id=site_id,
                    window_start=day_start(day - cfg.window_days + 1),
                    window_end=window_end,
                    status=status,
                    value=estimate.ratio,
                    ci_low=estimate.ci_low,
                    ci_high=estimate.ci_high,
                    n=n_settled,
                    threshold=rule_text(cfg),
                    runbook=OE_RUNBOOK,
                    detail={
                        "observed": observed,
                        "expected": round(expected, 4),
                        "scored": n_ok,
                        "label_completeness": round(n_settled / n_ok, 4) if n_ok else 0.0,
                        "window_days": cfg.window_days,
                        "design_effect": round(deff, 3),
                        "reason": reason,
                    },
                )
            )
    return results


def run_observed_expected(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Recompute the O:E points whose windows contain an hour whose rollup changed."""
    now = now or utcnow()
    wm_key = f"monitor.{OE_MONITOR}.rollup_updated_at"
    all_results: list[MonitorResult] = []
    with engine.begin() as conn:
        watermark = datetime.fromisoformat(get_state(conn, wm_key, EPOCH.isoformat()))
        model_column = unindexed(R.c.model_id)  # the updated_at index, not the model's
        changed = conn.execute(
            sa.select(
                model_column,
                sa.func.min(R.c.hour),
                sa.func.max(R.c.hour),
                sa.func.max(R.c.updated_at),
            )
            .where(R.c.updated_at > watermark)
            .group_by(model_column)
        ).all()
        if not changed:
            return []
        sync_daily(conn)  # the windows below are read from the daily tables
        models = {
            m.id: m
            for m in (
                Model.model_validate(dict(row))
                for row in conn.execute(sa.select(table_of(Model))).mappings()
            )
        }
        sites = {
            row.id: row.code
            for row in conn.execute(sa.select(table_of(Site).c.id, table_of(Site).c.code))
        }
        today = int((now - EPOCH).total_seconds() // 86400)
        newest_seen = watermark
        for model_id, first_hour, last_hour, updated in changed:
            model = models[model_id]
            widest = max(
                [
                    config.for_monitor(OE_MONITOR, OEConfig, model=model.name, site=c).window_days
                    for c in sites.values()
                ]
            )
            first_day = first_hour // 24
            last_day = min(last_hour // 24 + widest - 1, today)
            daily = _daily_settled_counts(conn, model_id, first_day - widest + 1, last_day)
            results = observed_expected_results(
                daily,
                model=model,
                site_codes=sites,
                days=range(first_day, last_day + 1),
                config=config,
                now=now,
            )
            write_results(conn, results, now=now)
            all_results.extend(results)
            newest_seen = max(newest_seen, updated)
        set_state(conn, wm_key, newest_seen.isoformat())
    logger.info("observed_expected: %d points written", len(all_results))
    return all_results
