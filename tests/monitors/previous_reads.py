"""The monitors' reads as they were before the daily tables: the reference the tests compare
the daily reads against (not a test module).

Copied unchanged from monitors/slo.py, monitors/alert_burden.py and monitors/drift_runner.py,
where the reads now take whole days from the daily tables, name the sites and read once for
all sites; every window read here walks the hourly rollups (with rollup_io.READ_DAILY off),
site by site.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.alert_burden import AB, R
from monitors.base import MonitorResult, Status
from monitors.config import MonitorConfig
from monitors.drift import drift_measures
from monitors.drift_runner import (
    DR,
    MONITOR,
    RUNBOOK,
    SCORE,
    DriftConfig,
    _dense,
    feature_results,
    features_of,
    reference_window,
)
from monitors.durations import epoch_seconds, floor_hour
from monitors.rollup_io import (
    changed_since,
    daily_bins,
    daily_inputs,
    day_of,
    day_start,
    first_hours,
    load_models,
    load_sites,
    model_hours,
    read_watermark,
    trailing,
    write_watermark,
)
from monitors.runner import write_results
from monitors.slo import (
    RAW_HORIZON,
    P,
    SLOConfig,
    SLOSpec,
    WindowCounts,
    _ModelCounts,
    _on_time,
    bucket_sums,
    sli_counts,
    window_start_seconds,
)
from store.models import Model, utcnow

logger = logging.getLogger(__name__)


def _read_counts(
    conn: Connection, model: Model, site_ids: list[int], now: datetime, config: SLOConfig
) -> _ModelCounts:
    hour_now = floor_hour(now)
    longest = max(config.windows())
    first_hour = epoch_seconds(hour_now - longest) // 3600
    hourly = pd.DataFrame(
        conn.execute(
            sa.select(
                R.c.site_id,
                R.c.hour,
                sa.func.sum(R.c.n_ok).label("n_ok"),
                sa.func.sum(R.c.n_on_time).label("n_on_time"),
                sa.func.sum(R.c.n_error + R.c.n_timeout).label("n_failed"),
            )
            .where(
                model_hours(
                    R, model.id, load_sites(conn), first_hour, epoch_seconds(hour_now) // 3600
                )
            )
            .group_by(R.c.site_id, R.c.hour)
        )
        .mappings()
        .all(),
        columns=["site_id", "hour", "n_ok", "n_on_time", "n_failed"],
    )
    # Raw windows: each short window, and the current partial hour for the long ones.
    raw_windows = {w: now - w for w in config.windows() if w <= RAW_HORIZON}
    raw_windows[timedelta(0)] = hour_now  # key 0: the partial hour
    earliest = min(raw_windows.values())

    def count_if(condition: sa.ColumnElement[bool]) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    columns: list[Any] = [P.c.site_id]
    for index, start in enumerate(raw_windows.values()):
        inside = P.c.scored_at >= start
        columns += [
            count_if(sa.and_(inside, P.c.status == "ok")).label(f"ok_{index}"),
            count_if(sa.and_(inside, _on_time(model))).label(f"on_time_{index}"),
            count_if(sa.and_(inside, P.c.status.in_(["error", "timeout"]))).label(
                f"failed_{index}"
            ),
        ]
    rows = pd.DataFrame(
        conn.execute(
            sa.select(*columns)
            .where(
                P.c.model_id == model.id,
                P.c.site_id.in_(site_ids),
                P.c.scored_at >= earliest,
                P.c.scored_at < now,
            )
            .group_by(P.c.site_id)
        )
        .mappings()
        .all()
    )
    recent: dict[timedelta, pd.DataFrame] = {}
    for index, window in enumerate(raw_windows):
        frame = pd.DataFrame({"site_id": site_ids})
        if not rows.empty:
            picked = rows[["site_id", f"ok_{index}", f"on_time_{index}", f"failed_{index}"]]
            picked.columns = pd.Index(["site_id", "n_ok", "n_on_time", "n_failed"])
            frame = frame.merge(picked, on="site_id", how="left")
        recent[window] = frame.reindex(columns=["site_id", "n_ok", "n_on_time", "n_failed"]).fillna(
            0
        )
    return _ModelCounts(site_ids=site_ids, hourly=hourly, recent=recent)


def _window_counts(
    counts: _ModelCounts, spec: SLOSpec, now: datetime, config: SLOConfig
) -> dict[timedelta, WindowCounts]:
    """Per-site counts of every window the SLO needs, parallel to `counts.site_ids`."""
    now_s = epoch_seconds(now)
    partial = counts.recent[timedelta(0)]
    result: dict[timedelta, WindowCounts] = {}
    for window in config.windows():
        if window <= RAW_HORIZON:
            bad, total = sli_counts(counts.recent[window], spec.sli)
            result[window] = WindowCounts(bad=bad, total=total)
            continue
        start_s = int(window_start_seconds(now_s, window))
        bads, totals = [], []
        for index, site_id in enumerate(counts.site_ids):
            site_hours = counts.hourly[counts.hourly["site_id"] == site_id].sort_values("hour")
            b, t = sli_counts(site_hours, spec.sli)
            # Whole hours from the rollups, then the partial hour from raw rows as one bucket.
            starts = np.append(
                site_hours["hour"].to_numpy(dtype=np.int64) * 3600, now_s // 3600 * 3600
            )
            pb, pt = sli_counts(partial.iloc[[index]], spec.sli)
            values = np.column_stack([np.append(b, pb), np.append(t, pt)])
            sums = bucket_sums(starts, values, [start_s], [now_s])[0]
            bads.append(sums[0])
            totals.append(sums[1])
        result[window] = WindowCounts(bad=np.asarray(bads), total=np.asarray(totals))
    return result


def _hourly_frame(conn: Connection, model_id: int, first_hour: int, end_hour: int) -> pd.DataFrame:
    """Per site and hour: scored, alerting and shown counts, and settled alert outcomes."""
    rollups = pd.DataFrame(
        conn.execute(
            sa.select(
                R.c.site_id,
                R.c.hour,
                sa.func.sum(R.c.n_ok).label("n_scored"),
                sa.func.sum(R.c.n_alert_settled).label("n_alert_settled"),
                sa.func.sum(R.c.n_alert_positive).label("n_alert_positive"),
            )
            .where(R.c.model_id == model_id, R.c.hour >= first_hour, R.c.hour < end_hour)
            .group_by(R.c.site_id, R.c.hour)
        )
        .mappings()
        .all(),
        columns=["site_id", "hour", "n_scored", "n_alert_settled", "n_alert_positive"],
    )
    alerts = pd.DataFrame(
        conn.execute(
            sa.select(
                AB.c.site_id,
                AB.c.hour,
                sa.func.sum(AB.c.n_alert).label("n_alert"),
                sa.func.sum(AB.c.n_shown).label("n_shown"),
            )
            .where(AB.c.model_id == model_id, AB.c.hour >= first_hour, AB.c.hour < end_hour)
            .group_by(AB.c.site_id, AB.c.hour)
        )
        .mappings()
        .all(),
        columns=["site_id", "hour", "n_alert", "n_shown"],
    )
    frame = rollups.astype(float).merge(alerts.astype(float), on=["site_id", "hour"], how="outer")
    return frame.fillna(0.0).astype({"site_id": int, "hour": int})


def _changed_hours(conn: Connection, model_id: int, since: datetime) -> tuple[list[int], datetime]:
    rows = conn.execute(
        sa.select(R.c.hour, sa.func.max(R.c.updated_at))
        .where(R.c.model_id == model_id, R.c.updated_at > since)
        .group_by(R.c.hour)
    ).all()
    newest = max((r[1] for r in rows), default=since)
    return sorted(r[0] for r in rows), newest


def _counts(
    conn: Connection, model: Model, site_id: int, first: int, last: int
) -> dict[str, np.ndarray]:
    """Dense [day, bin] counts of every feature of one model x site over [first, last]."""
    assert model.id is not None
    feats = features_of(model)
    scores = daily_bins(conn, model.id, first, last, site_id=site_id)
    inputs = daily_inputs(conn, model.id, first, last, site_id=site_id)
    out: dict[str, np.ndarray] = {}
    for feature in feats:
        if feature.name == SCORE:
            out[SCORE] = _dense(scores[["period", "bin", "n"]], feature, first, last)
        else:
            part = inputs[inputs["feature"] == feature.name] if not inputs.empty else inputs
            out[feature.name] = _dense(part, feature, first, last)
    return out


def ensure_reference(
    conn: Connection,
    *,
    model: Model,
    site_id: int,
    window: tuple[int, int],
    rebuild: bool,
) -> dict[str, np.ndarray]:
    """The frozen reference counts per feature (dense), building them when missing or stale."""
    assert model.id is not None
    start, end = day_start(window[0]), day_start(window[1])
    rows = pd.DataFrame(
        conn.execute(
            sa.select(
                DR.c.feature, DR.c.bin, DR.c.n, DR.c.reference_start, DR.c.reference_end
            ).where(DR.c.model_id == model.id, DR.c.site_id == site_id)
        ).all(),
        columns=["feature", "bin", "n", "reference_start", "reference_end"],
    )
    stale = (
        rows.empty
        or rebuild
        or not ((rows["reference_start"] == start).all() and (rows["reference_end"] == end).all())
    )
    feats = {f.name: f for f in features_of(model)}
    if stale:
        counts = _counts(conn, model, site_id, window[0], window[1] - 1)
        conn.execute(sa.delete(DR).where(DR.c.model_id == model.id, DR.c.site_id == site_id))
        payload = [
            {
                "model_id": model.id,
                "site_id": site_id,
                "feature": name,
                "bin": int(i - feats[name].offset),
                "n": int(v),
                "reference_start": start,
                "reference_end": end,
            }
            for name, dense in counts.items()
            for i, v in enumerate(dense.sum(axis=0))
            if v > 0
        ]
        if payload:
            conn.execute(sa.insert(DR), payload)
        return {name: dense.sum(axis=0) for name, dense in counts.items()}
    reference: dict[str, np.ndarray] = {}
    for name, feature in feats.items():
        vec = np.zeros(feature.size)
        part = rows[rows["feature"] == name]
        idx = part["bin"].to_numpy(dtype=np.int64) + feature.offset
        vec[idx] = part["n"].to_numpy(dtype=float)
        reference[name] = vec
    return reference


def run_drift(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Recompute the daily drift points whose current windows contain a changed hour."""
    now = now or utcnow()
    today = day_of(now)
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        watermark = read_watermark(conn, MONITOR)
        changed = changed_since(conn, watermark)
        if not changed:
            return []
        models, sites = load_models(conn), load_sites(conn)
        starts: dict[int, dict[int, int]] = {}
        for c in sorted(changed, key=lambda c: (c.model_id, c.site_id)):
            model = models[c.model_id]
            if c.model_id not in starts:
                starts[c.model_id] = first_hours(conn, c.model_id)
            first_hour = starts[c.model_id].get(c.site_id)
            if first_hour is None:
                continue
            cfg = config.for_monitor(MONITOR, DriftConfig, model=model.name, site=sites[c.site_id])
            window = reference_window(
                first_hour // 24, cfg.reference_days, cfg.reference_start, cfg.reference_end
            )
            first_day = c.first_hour // 24
            last_day = max(first_day, min(c.last_hour // 24 + cfg.window_days - 1, today))
            if today < window[1]:
                site_results = [
                    MonitorResult(
                        monitor=MONITOR,
                        metric=f"psi:{SCORE}",
                        model_id=c.model_id,
                        site_id=c.site_id,
                        window_start=day_start(today - cfg.window_days + 1),
                        window_end=now,
                        status=Status.INSUFFICIENT,
                        value=None,
                        runbook=RUNBOOK,
                        detail={
                            "reason": "reference window still filling (until "
                            f"{day_start(window[1]):%Y-%m-%d})"
                        },
                    )
                ]
            else:
                reference = ensure_reference(
                    conn,
                    model=model,
                    site_id=c.site_id,
                    window=window,
                    rebuild=c.first_hour < window[1] * 24,  # late data inside the reference
                )
                read_from = first_day - cfg.window_days + 1
                counts = _counts(conn, model, c.site_id, read_from, last_day)
                site_results = []
                assert model.id is not None
                for feature in features_of(model):
                    ref_present, ref_missing = feature.split(reference[feature.name])
                    rolled = trailing(counts[feature.name], cfg.window_days)
                    for day in range(first_day, last_day + 1):
                        cur_present, cur_missing = feature.split(rolled[day - read_from])
                        measures = drift_measures(
                            ref_present,
                            cur_present,
                            feature.centres,
                            reference_missing=ref_missing,
                            current_missing=cur_missing,
                            psi_groups=cfg.psi_groups if feature.name == SCORE else None,
                            psi_floor=cfg.psi_floor,
                        )
                        site_results.extend(
                            feature_results(
                                measures,
                                feature=feature.name,
                                model_id=model.id,
                                site_id=c.site_id,
                                day=day,
                                cfg=cfg,
                                reference=window,
                                now=now,
                            )
                        )
            write_results(conn, site_results, now=now)
            results.extend(site_results)
        write_watermark(conn, MONITOR, max(c.updated_at for c in changed))
    logger.info("%s: %d points written", MONITOR, len(results))
    return results
