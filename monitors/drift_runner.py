"""Data and prediction drift monitor: each site's score and named inputs against its reference.

Thin I/O around monitors.drift. The reference histogram of each model x site (its first
`reference_days`, or a configured fixed period) is frozen into `driftreference` once the
window has passed; each run then reads only the trailing current windows of the days whose
rollups changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status
from monitors.config import MonitorConfig
from monitors.drift import DriftMeasures, bin_centres, drift_measures, psi_noise_level
from monitors.rollup_io import (
    EPOCH,
    Changed,
    changed_since,
    daily_bins,
    daily_inputs,
    day_of,
    day_start,
    first_hours,
    load_models,
    load_sites,
    read_watermark,
    trailing,
    write_watermark,
)
from monitors.runner import write_results
from store.models import SCORE_BIN_EDGES, SCORE_BINS, DriftReference, Model, table_of, utcnow
from store.rollups import sync_daily

logger = logging.getLogger(__name__)

MONITOR = "drift"
RUNBOOK = "data-drift"
SCORE = "score"
DR = table_of(DriftReference)


@dataclass(frozen=True)
class DriftConfig:
    window_days: int = 7  # the current window: trailing days
    reference_days: int = 28  # the first days of each site's history ...
    reference_start: str | None = None  # ... or a fixed period, ISO dates
    reference_end: str | None = None
    min_n: int = 200  # predictions in each window before any verdict
    psi_warn: float = 0.1
    psi_breach: float = 0.25
    # PSI must also exceed its own sampling noise (the `noise_quantile` of its null
    # distribution), counting `predictions_per_patient` repeated predictions as one unit.
    predictions_per_patient: float = 1.0
    noise_quantile: float = 0.999
    psi_groups: int = 10  # PSI over reference-quantile groups of the score bins
    psi_floor: float = 1e-4


def reference_window(
    first_day: int, days: int, start: str | None, end: str | None
) -> tuple[int, int]:
    """[start, end) of a site's reference window in days since the epoch."""
    if start and end:
        epoch = EPOCH.date()
        return (date.fromisoformat(start) - epoch).days, (date.fromisoformat(end) - epoch).days
    return first_day, first_day + days


@dataclass(frozen=True)
class Feature:
    name: str
    centres: np.ndarray  # representative value of each present-value bin
    offset: int  # dense index = bin + offset (inputs: bin -1 is missing -> index 0)
    size: int  # dense width, including the missing slot for inputs

    def split(self, counts: np.ndarray) -> tuple[np.ndarray, float]:
        """(present-value counts, missing count) of a dense count vector."""
        if self.offset == 0:
            return counts, 0.0
        return counts[1:], float(counts[0])


def features_of(model: Model) -> list[Feature]:
    found = [
        Feature(SCORE, bin_centres(SCORE_BIN_EDGES, open_ends=False), 0, SCORE_BINS),
    ]
    for name, spec in (model.inputs or {}).items():
        edges = list(spec["edges"])
        found.append(Feature(name, bin_centres(edges, open_ends=True), 1, len(edges) + 2))
    return found


def _dense(frame: pd.DataFrame, feature: Feature, first: int, last: int) -> np.ndarray:
    out = np.zeros((last - first + 1, feature.size))
    if frame.empty:
        return out
    rows = frame["period"].to_numpy(dtype=np.int64) - first
    cols = frame["bin"].to_numpy(dtype=np.int64) + feature.offset
    ok = (rows >= 0) & (rows < out.shape[0]) & (cols >= 0) & (cols < feature.size)
    np.add.at(out, (rows[ok], cols[ok]), frame["n"].to_numpy(dtype=float)[ok])
    return out


def _by_site(frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    if frame.empty:
        return {}
    return {int(site): frame[frame["site_id"] == site] for site in frame["site_id"].unique()}


@dataclass(frozen=True)
class Histograms:
    """Daily score and input histogram rows of one model, read once for several sites."""

    scores: dict[int, pd.DataFrame]  # site_id -> rows of daily_bins
    inputs: dict[int, pd.DataFrame]  # site_id -> rows of daily_inputs

    @classmethod
    def read(
        cls, conn: Connection, model_id: int, site_ids: list[int], first: int, last: int
    ) -> Histograms:
        scores = daily_bins(conn, model_id, first, last, site_ids=site_ids)
        inputs = daily_inputs(conn, model_id, first, last, site_ids=site_ids)
        return cls(_by_site(scores), _by_site(inputs))

    def site(self, site_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        empty_scores = pd.DataFrame(columns=["site_id", "period", "bin", "n"])
        empty_inputs = pd.DataFrame(columns=["site_id", "period", "feature", "bin", "n"])
        return self.scores.get(site_id, empty_scores), self.inputs.get(site_id, empty_inputs)


def _counts(
    conn: Connection,
    model: Model,
    site_id: int,
    first: int,
    last: int,
    *,
    read: Histograms | None = None,
) -> dict[str, np.ndarray]:
    """Dense [day, bin] counts of every feature of one model x site over [first, last] (from
    `read` when it holds the site's rows of a range that includes [first, last])."""
    assert model.id is not None
    feats = features_of(model)
    if read is not None:
        scores, inputs = read.site(site_id)
    else:
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


REFERENCE_COLUMNS = ["site_id", "feature", "bin", "n", "reference_start", "reference_end"]


def read_references(
    conn: Connection, model_id: int, site_ids: list[int]
) -> dict[int, pd.DataFrame]:
    """The stored reference rows of one model at `site_ids`, per site (one query)."""
    rows = pd.DataFrame(
        conn.execute(
            sa.select(
                DR.c.site_id,
                DR.c.feature,
                DR.c.bin,
                DR.c.n,
                DR.c.reference_start,
                DR.c.reference_end,
            ).where(DR.c.model_id == model_id, DR.c.site_id.in_(site_ids))
        ).all(),
        columns=REFERENCE_COLUMNS,
    )
    return _by_site(rows)


def ensure_reference(
    conn: Connection,
    *,
    model: Model,
    site_id: int,
    window: tuple[int, int],
    rebuild: bool,
    stored: pd.DataFrame | None = None,
) -> dict[str, np.ndarray]:
    """The frozen reference counts per feature (dense), building them when missing or stale.

    `stored`: the site's stored reference rows, when they were read already (`read_references`).
    """
    assert model.id is not None
    start, end = day_start(window[0]), day_start(window[1])
    rows = read_references(conn, model.id, [site_id]).get(site_id) if stored is None else stored
    if rows is None:
        rows = pd.DataFrame(columns=REFERENCE_COLUMNS)
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


def _status(m: DriftMeasures, cfg: DriftConfig) -> tuple[Status, str, float]:
    units = max(1.0, cfg.predictions_per_patient)
    noise = psi_noise_level(
        m.psi_bins, m.n_reference / units, m.n_current / units, quantile=cfg.noise_quantile
    )
    if m.n_reference < cfg.min_n or m.n_current < cfg.min_n:
        return (
            Status.INSUFFICIENT,
            f"too few predictions ({m.n_reference:.0f} reference, {m.n_current:.0f} current; "
            f"needs {cfg.min_n})",
            noise,
        )
    if m.psi is None:
        return Status.INSUFFICIENT, "no values in one of the windows", noise
    if m.psi < noise:
        return (
            Status.OK,
            f"PSI {m.psi:.2f} within sampling noise ({noise:.2f} at this volume)",
            noise,
        )
    if m.psi >= cfg.psi_breach:
        return Status.BREACH, f"PSI {m.psi:.2f} ≥ {cfg.psi_breach:g} and above noise", noise
    if m.psi >= cfg.psi_warn:
        return Status.WARN, f"PSI {m.psi:.2f} ≥ {cfg.psi_warn:g} and above noise", noise
    return Status.OK, f"PSI {m.psi:.2f} below {cfg.psi_warn:g}", noise


def feature_results(
    measures: DriftMeasures,
    *,
    feature: str,
    model_id: int,
    site_id: int,
    day: int,
    cfg: DriftConfig,
    reference: tuple[int, int],
    now: datetime,
) -> list[MonitorResult]:
    """The PSI, KS and Wasserstein points of one feature on one day (pure)."""
    status, reason, noise = _status(measures, cfg)
    detail: dict[str, Any] = {
        "psi_noise_level": round(noise, 4) if np.isfinite(noise) else None,
        "feature": feature,
        "reference_start": day_start(reference[0]).isoformat(),
        "reference_end": day_start(reference[1]).isoformat(),
        "n_reference": measures.n_reference,
        "n_current": measures.n_current,
        "missing_reference": round(measures.missing_reference, 5),
        "missing_current": round(measures.missing_current, 5),
        "reason": reason,
    }
    common: dict[str, Any] = {
        "monitor": MONITOR,
        "model_id": model_id,
        "site_id": site_id,
        "window_start": day_start(day - cfg.window_days + 1),
        "window_end": min(day_start(day + 1), now),
        "n": int(measures.n_current),
        "runbook": RUNBOOK,
    }
    gated = status == Status.INSUFFICIENT
    descriptive = Status.INSUFFICIENT if gated else Status.OK
    return [
        MonitorResult(
            metric=f"psi:{feature}",
            status=status,
            value=measures.psi,
            threshold=(
                f"warn at PSI ≥ {cfg.psi_warn:g}, breach at ≥ {cfg.psi_breach:g}, "
                f"when above its {cfg.noise_quantile:.1%} sampling-noise level"
            ),
            detail=detail,
            **common,
        ),
        MonitorResult(
            metric=f"ks:{feature}",
            status=descriptive,
            value=measures.ks,
            threshold="descriptive (no threshold set)",
            detail={**detail, "reason": reason if gated else "descriptive"},
            **common,
        ),
        MonitorResult(
            metric=f"wasserstein:{feature}",
            status=descriptive,
            value=measures.wasserstein_normed,
            threshold="descriptive: Wasserstein distance / reference SD (no threshold set)",
            detail={
                **detail,
                "reason": reason if gated else "descriptive",
                "wasserstein": measures.wasserstein,
            },
            **common,
        ),
    ]


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
        sync_daily(conn)  # the windows below are read from the daily tables
        models, sites = load_models(conn), load_sites(conn)
        starts: dict[int, dict[int, int]] = {}
        plans: list[tuple[Changed, DriftConfig, tuple[int, int], int, int]] = []
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
            plans.append((c, cfg, window, first_day, last_day))
        # One read per model for the current windows and the references of all its changed
        # sites (not three per site).
        reads: dict[int, Histograms] = {}
        references: dict[int, dict[int, pd.DataFrame]] = {}
        for model_id in sorted({c.model_id for c, *_ in plans}):
            references[model_id] = read_references(
                conn, model_id, sorted({c.site_id for c, *_ in plans if c.model_id == model_id})
            )
            ranges = [
                (first_day - cfg.window_days + 1, last_day, c.site_id)
                for c, cfg, window, first_day, last_day in plans
                if c.model_id == model_id and today >= window[1]
            ]
            if ranges:
                reads[model_id] = Histograms.read(
                    conn,
                    model_id,
                    sorted({site for _, _, site in ranges}),
                    min(low for low, _, _ in ranges),
                    max(high for _, high, _ in ranges),
                )
        for c, cfg, window, first_day, last_day in plans:
            model = models[c.model_id]
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
                    stored=references[c.model_id].get(
                        c.site_id, pd.DataFrame(columns=REFERENCE_COLUMNS)
                    ),
                )
                read_from = first_day - cfg.window_days + 1
                counts = _counts(
                    conn, model, c.site_id, read_from, last_day, read=reads[c.model_id]
                )
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
