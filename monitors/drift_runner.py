"""Data and prediction drift monitor: each site's score and named inputs against its reference.

Thin I/O around monitors.drift. The reference histogram of each model x site (its first
`reference_days`, or a configured fixed period) is frozen into `driftreference` once the
window has passed; each run then reads only the trailing current windows of the days whose
rollups changed, once per model for all its changed sites, into dense [site, day, bin] counts
(the days that every one of those windows holds come summed from the database).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    DH,
    DI,
    EPOCH,
    Changed,
    changed_since,
    daily_bins,
    daily_inputs,
    daily_ready,
    day_of,
    day_start,
    first_hours,
    load_models,
    load_sites,
    model_days,
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


@dataclass(frozen=True)
class Layout:
    """The features of one model side by side on one axis: feature i's dense bins are columns
    [starts[i], starts[i] + features[i].size)."""

    features: list[Feature]
    starts: list[int]

    @classmethod
    def of(cls, model: Model) -> Layout:
        features = features_of(model)
        sizes = [f.size for f in features]
        return cls(features, [0, *np.cumsum(sizes)[:-1].tolist()])

    @property
    def width(self) -> int:
        return self.starts[-1] + self.features[-1].size

    def blocks(self) -> dict[str, slice]:
        return {
            f.name: slice(start, start + f.size)
            for f, start in zip(self.features, self.starts, strict=True)
        }

    def columns(self, features: Sequence[str], bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(column, whether the bin lies inside its feature's dense width) of each row; rows
        of a feature the model does not name are outside."""
        index = {f.name: i for i, f in enumerate(self.features)}
        which = np.array([index.get(name, -1) for name in features], dtype=np.int64)
        known = which >= 0
        which = np.where(known, which, 0)
        local = bins + np.array([f.offset for f in self.features], dtype=np.int64)[which]
        sizes = np.array([f.size for f in self.features], dtype=np.int64)[which]
        inside = known & (local >= 0) & (local < sizes)
        return np.array(self.starts, dtype=np.int64)[which] + local, inside


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[tuple[Any, ...]]:
    """The `width` columns of query rows."""
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def _ints(values: Sequence[Any]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _slots(keys: Sequence[int], values: np.ndarray) -> np.ndarray:
    """The index of each value in the sorted `keys`, -1 where it is not one of them."""
    if not keys:
        return np.full(len(values), -1, dtype=np.int64)
    ordered = np.asarray(keys, dtype=np.int64)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return np.where(ordered[at] == values, at, -1)


def _period(day: Any, block: tuple[int, int] | None) -> Any:
    """The day, or the block's last day for every day of the block [low, high] (inlined
    numbers, so that SELECT and GROUP BY hold the same text)."""
    if block is None:
        return day
    low, high = (sa.literal_column(str(int(v)), type_=sa.Integer) for v in block)
    return sa.case((sa.and_(day >= low, day <= high), high), else_=day)


def _histogram_rows(
    conn: Connection,
    model_id: int,
    site_ids: list[int],
    first: int,
    last: int,
    block: tuple[int, int] | None = None,
) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
    """(site, day, bin, n) score rows and (site, day, feature, bin, n) input rows of
    [first, last]: the rows of rollup_io's daily_bins and daily_inputs, not in frames, with
    the days of `block` summed into the block's last day when they come from the daily tables."""
    if not daily_ready(conn, model_id, site_ids, first, last):
        score_frame = daily_bins(conn, model_id, first, last, site_ids=site_ids)
        input_frame = daily_inputs(conn, model_id, first, last, site_ids=site_ids)
        return (
            list(score_frame[["site_id", "period", "bin", "n"]].itertuples(index=False, name=None)),
            list(input_frame.itertuples(index=False, name=None)),
        )
    scores = sa.select(DH.c.site_id, DH.c.day, DH.c.bin, DH.c.n)
    inputs = sa.select(DI.c.site_id, DI.c.day, DI.c.feature, DI.c.bin, DI.c.n)
    if block is not None:
        score_day, input_day = _period(DH.c.day, block), _period(DI.c.day, block)
        scores = sa.select(DH.c.site_id, score_day, DH.c.bin, sa.func.sum(DH.c.n)).group_by(
            DH.c.site_id, score_day, DH.c.bin
        )
        inputs = sa.select(
            DI.c.site_id, input_day, DI.c.feature, DI.c.bin, sa.func.sum(DI.c.n)
        ).group_by(DI.c.site_id, input_day, DI.c.feature, DI.c.bin)
    return (
        conn.execute(scores.where(model_days(DH, model_id, site_ids, first, last))).all(),
        conn.execute(inputs.where(model_days(DI, model_id, site_ids, first, last))).all(),
    )


@dataclass(frozen=True)
class Histograms:
    """Daily score and input histograms of one model at several sites, read once, as dense
    counts [site, day, column] over days [first, first + days) (columns: `layout`)."""

    layout: Layout
    sites: dict[int, int]  # site_id -> index on the first axis
    first: int
    counts: np.ndarray

    @classmethod
    def read(
        cls,
        conn: Connection,
        model: Model,
        site_ids: list[int],
        first: int,
        last: int,
        *,
        block: tuple[int, int] | None = None,
    ) -> Histograms:
        """The histograms of [first, last] at `site_ids`. `block` [low, high]: days whose counts
        may be summed into day `high` (zeros on the others), which leaves the trailing sums of
        every window that holds the whole block as they are."""
        assert model.id is not None
        sites = sorted(set(site_ids))
        scores, inputs = _histogram_rows(conn, model.id, sites, first, last, block)
        return cls.of(Layout.of(model), sites, first, last, scores, inputs)

    @classmethod
    def of(
        cls,
        layout: Layout,
        sites: list[int],
        first: int,
        last: int,
        scores: Sequence[Sequence[Any]],
        inputs: Sequence[Sequence[Any]],
    ) -> Histograms:
        """Dense counts from score rows (site, day, bin, n) and input rows (site, day, feature,
        bin, n) at the sorted `sites`; rows outside the sites, days or bins are left out."""
        days = last - first + 1
        score_site, score_day, score_bin, score_n = _columns(scores, 4)
        input_site, input_day, input_feature, input_bin, input_n = _columns(inputs, 5)
        score = layout.features[0]
        score_col = _ints(score_bin) + score.offset
        input_col, input_inside = layout.columns(input_feature, _ints(input_bin))
        slot = _slots(sites, _ints(score_site + input_site))
        day = _ints(score_day + input_day) - first
        col = np.concatenate([score_col, input_col])
        inside = np.concatenate([(score_col >= 0) & (score_col < score.size), input_inside])
        ok = inside & (slot >= 0) & (day >= 0) & (day < days)
        flat = (slot[ok] * days + day[ok]) * layout.width + col[ok]
        n = np.array(score_n + input_n, dtype=float)[ok]
        counts = np.bincount(flat, weights=n, minlength=len(sites) * days * layout.width)
        index = {site: i for i, site in enumerate(sites)}
        return cls(layout, index, first, counts.reshape(len(sites), days, layout.width))

    def dense(self, site_id: int, first: int, last: int) -> np.ndarray:
        """Dense [day, column] counts at one site over [first, last] (zero outside the days
        read)."""
        out = np.zeros((last - first + 1, self.layout.width))
        slot = self.sites.get(site_id)
        low, high = max(first, self.first), min(last, self.first + self.counts.shape[1] - 1)
        if slot is not None and low <= high:
            out[low - first : high - first + 1] = self.counts[
                slot, low - self.first : high - self.first + 1
            ]
        return out

    def site(self, site_id: int, first: int, last: int) -> dict[str, np.ndarray]:
        """Dense [day, bin] counts of every feature at one site over [first, last]."""
        out = self.dense(site_id, first, last)
        return {name: out[:, block] for name, block in self.layout.blocks().items()}


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
    if read is None:
        read = Histograms.read(conn, model, [site_id], first, last)
    return read.site(site_id, first, last)


@dataclass(frozen=True)
class StoredReference:
    """The stored reference rows of one model at several sites: dense counts [site, column]
    (columns: `layout`) and each site's distinct (reference_start, reference_end)."""

    layout: Layout
    sites: dict[int, int]  # site_id -> row of `counts`
    counts: np.ndarray
    periods: dict[int, set[tuple[datetime, datetime]]]

    def current(self, site_id: int, start: datetime, end: datetime) -> bool:
        """Whether the site has rows and every one is of the window [start, end)."""
        periods = self.periods.get(site_id)
        return bool(periods) and all(s == start and e == end for s, e in periods or ())

    def site(self, site_id: int) -> dict[str, np.ndarray]:
        row = self.counts[self.sites[site_id]]
        return {name: row[block].copy() for name, block in self.layout.blocks().items()}


def read_references(conn: Connection, model: Model, site_ids: list[int]) -> StoredReference:
    """The stored reference rows of one model at `site_ids` (two queries)."""
    sites = sorted(set(site_ids))
    where = sa.and_(DR.c.model_id == model.id, DR.c.site_id.in_(sites))
    rows = conn.execute(sa.select(DR.c.site_id, DR.c.feature, DR.c.bin, DR.c.n).where(where)).all()
    periods: dict[int, set[tuple[datetime, datetime]]] = {}
    for site, start, end in conn.execute(
        sa.select(DR.c.site_id, DR.c.reference_start, DR.c.reference_end).distinct().where(where)
    ):
        periods.setdefault(int(site), set()).add((start, end))
    layout = Layout.of(model)
    index = {site: i for i, site in enumerate(sites)}
    site_column, features, bin_column, n_column = _columns(rows, 4)
    site, bins, n = _ints(site_column), _ints(bin_column), np.array(n_column, dtype=float)
    which = {f.name: i for i, f in enumerate(layout.features)}
    feature = np.array([which.get(name, -1) for name in features], dtype=np.int64)
    known = feature >= 0
    feature = np.where(known, feature, 0)
    sizes = np.array([f.size for f in layout.features], dtype=np.int64)[feature]
    local = bins + np.array([f.offset for f in layout.features], dtype=np.int64)[feature]
    if np.any(known & ((local >= sizes) | (local < -sizes))):
        raise IndexError("a stored reference bin outside its feature's bins")
    local = np.where(local < 0, local + sizes, local)  # as numpy indexing counts from the end
    counts = np.zeros((len(sites), layout.width))
    slot = _slots(sites, site)
    ok = known & (slot >= 0)
    starts = np.array(layout.starts, dtype=np.int64)[feature]
    counts[slot[ok], (starts + local)[ok]] = n[ok]
    return StoredReference(layout, index, counts, periods)


def ensure_reference(
    conn: Connection,
    *,
    model: Model,
    site_id: int,
    window: tuple[int, int],
    rebuild: bool,
    stored: StoredReference | None = None,
) -> dict[str, np.ndarray]:
    """The frozen reference counts per feature (dense), building them when missing or stale.

    `stored`: the stored reference rows, when they were read already (`read_references` of
    sites that include this one).
    """
    assert model.id is not None
    start, end = day_start(window[0]), day_start(window[1])
    if stored is None:
        stored = read_references(conn, model, [site_id])
    if not rebuild and stored.current(site_id, start, end):
        return stored.site(site_id)
    feats = {f.name: f for f in features_of(model)}
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


def common_days(ranges: Sequence[tuple[int, int, int, int]]) -> tuple[int, int] | None:
    """The days [low, high] inside every current window of the points to compute, given
    (site, first day, last day, window days) of each site; None when there are none."""
    low = max(last - days + 1 for _, _, last, days in ranges)
    high = min(first for _, first, _, _ in ranges)
    return (low, high) if low < high else None


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
        references: dict[int, StoredReference] = {}
        for model_id in sorted({c.model_id for c, *_ in plans}):
            references[model_id] = read_references(
                conn,
                models[model_id],
                sorted({c.site_id for c, *_ in plans if c.model_id == model_id}),
            )
            ranges = [
                (c.site_id, first_day, last_day, cfg.window_days)
                for c, cfg, window, first_day, last_day in plans
                if c.model_id == model_id and today >= window[1]
            ]
            if ranges:
                reads[model_id] = Histograms.read(
                    conn,
                    models[model_id],
                    sorted({site for site, *_ in ranges}),
                    min(first - days + 1 for _, first, _, days in ranges),
                    max(last for _, _, last, _ in ranges),
                    block=common_days(ranges),
                )
        for c, cfg, window, first_day, last_day in plans:
            model = models[c.model_id]
            if today < window[1]:
                results.append(
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
                )
                continue
            reference = ensure_reference(
                conn,
                model=model,
                site_id=c.site_id,
                window=window,
                rebuild=c.first_hour < window[1] * 24,  # late data inside the reference
                stored=references[c.model_id],
            )
            read = reads[c.model_id]
            read_from = first_day - cfg.window_days + 1
            rolled = trailing(read.dense(c.site_id, read_from, last_day), cfg.window_days)
            assert model.id is not None
            for feature, start in zip(read.layout.features, read.layout.starts, strict=True):
                ref_present, ref_missing = feature.split(reference[feature.name])
                for day in range(first_day, last_day + 1):
                    cur_present, cur_missing = feature.split(
                        rolled[day - read_from, start : start + feature.size]
                    )
                    measures = drift_measures(
                        ref_present,
                        cur_present,
                        feature.centres,
                        reference_missing=ref_missing,
                        current_missing=cur_missing,
                        psi_groups=cfg.psi_groups if feature.name == SCORE else None,
                        psi_floor=cfg.psi_floor,
                    )
                    results.extend(
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
        write_results(conn, results, now=now)
        write_watermark(conn, MONITOR, max(c.updated_at for c in changed))
    logger.info("%s: %d points written", MONITOR, len(results))
    return results
