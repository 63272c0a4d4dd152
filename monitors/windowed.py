"""Calibration and discrimination per model x site over trailing windows of settled labels.

Thin I/O: each run finds the hours whose rollups changed since its watermark, reads the score
histogram and rollup sums per site and day for the windows that contain them, and recomputes
one point per metric, site and day. The statistics live in monitors.calibration and
monitors.discrimination.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.engine import Engine

from monitors.base import MonitorResult, Status
from monitors.calibration import (
    PowerSums,
    brier_score,
    calibration_intercept,
    calibration_slope,
    equal_count_groups,
    expected_calibration_error,
    integrated_calibration_index,
    reliability_curve,
    scaled_brier_score,
    spiegelhalter_z,
)
from monitors.config import MonitorConfig
from monitors.discrimination import Proportion, binned_auroc, threshold_metrics
from monitors.observed_expected import design_effect_for
from monitors.rollup_io import (
    BIN_FIELDS,
    SUM_FIELDS,
    changed_since,
    daily_bins,
    daily_sums,
    day_of,
    day_start,
    dense_bins_by_site,
    dense_sums_by_site,
    load_models,
    load_sites,
    read_watermark,
    trailing,
    write_watermark,
)
from monitors.runner import write_results
from store.models import Model, utcnow
from store.rollups import sync_daily

logger = logging.getLogger(__name__)

CALIBRATION = "calibration"
CALIBRATION_RUNBOOK = "calibration-shape"
DISCRIMINATION = "discrimination"
DISCRIMINATION_RUNBOOK = "discrimination-drop"

_B = {name: i for i, name in enumerate(BIN_FIELDS)}
_S = {name: i for i, name in enumerate(SUM_FIELDS)}


@dataclass(frozen=True)
class CalibrationConfig:
    window_days: int = 28
    min_label_completeness: float = 0.95
    # Positives (and negatives) in the window before any verdict. The Wald intervals of the
    # intercept and slope are unreliable below this; Riley et al. 2021 (Stat Med 40:4230) ask
    # for 100-200 events for a precise slope, and the CI width says how far short a window is.
    min_events: int = 50
    ci_level: float = 0.95
    design_effect: float | None = None  # None: the model's horizon / scoring interval
    intercept_tolerance: float = 0.223  # |calibration intercept| band, log(1.25)
    slope_low: float = 0.8
    slope_high: float = 1.25
    spiegelhalter_alpha: float = 0.001  # warn below this two-sided p-value
    reliability_groups: int = 10
    lowess_frac: float = 0.75
    ici_warn: float | None = None  # ICI is descriptive unless a threshold is set
    ici_breach: float | None = None


@dataclass(frozen=True)
class DiscriminationConfig:
    window_days: int = 28
    min_label_completeness: float = 0.95
    min_events: int = 20  # positives (and negatives) in the window before any verdict
    ci_level: float = 0.95
    design_effect: float | None = None
    auroc_floor: float = 0.7
    auroc_method: str = "delong"  # or hanley-mcneil
    sensitivity_floor: float | None = None
    ppv_floor: float | None = None


@dataclass(frozen=True)
class Window:
    """The sums of one model x site over one trailing window ending with `day`."""

    model: Model
    site_id: int
    day: int
    window_days: int
    bins: np.ndarray  # [bin, BIN_FIELDS]
    sums: np.ndarray  # [SUM_FIELDS]
    now: datetime

    def sum(self, name: str) -> float:
        return float(self.sums[_S[name]])

    def bin(self, name: str) -> np.ndarray:
        return np.asarray(self.bins[:, _B[name]], dtype=float)

    @property
    def completeness(self) -> float:
        n_ok = self.sum("n_ok")
        return self.sum("n_settled") / n_ok if n_ok else 0.0


def _design_effect(model: Model, configured: float | None) -> float:
    return configured or design_effect_for(model.horizon_hours, model.scoring_interval_minutes)


def _gate(w: Window, *, min_completeness: float, min_events: int) -> tuple[str | None, bool]:
    """Why no verdict can be given on this window (or None), and whether the values are biased.

    While labels are pending, the settled ones are not a random sample (positives settle
    first), so the values of such a window are withheld, not just left without a verdict.
    """
    if w.sum("n_ok") == 0:
        return "no scored predictions in the window", True
    if w.completeness < min_completeness:
        return (
            f"labels not yet settled: {w.completeness:.0%} of predictions settled "
            f"(needs {min_completeness:.0%})"
        ), True
    positives, settled = w.sum("n_positive"), w.sum("n_settled")
    if positives < min_events or settled - positives < min_events:
        return f"too few events ({positives:.0f} positives; needs {min_events})", False
    return None, False


def _result(
    w: Window,
    *,
    monitor: str,
    metric: str,
    runbook: str,
    status: Status,
    value: float | None,
    ci: tuple[float | None, float | None] = (None, None),
    threshold: str,
    detail: dict[str, Any],
) -> MonitorResult:
    assert w.model.id is not None
    return MonitorResult(
        monitor=monitor,
        metric=metric,
        model_id=w.model.id,
        site_id=w.site_id,
        window_start=day_start(w.day - w.window_days + 1),
        window_end=min(day_start(w.day + 1), w.now),
        status=status,
        value=None if value is None or not np.isfinite(value) else float(value),
        ci_low=ci[0],
        ci_high=ci[1],
        n=int(w.sum("n_settled")),
        threshold=threshold,
        runbook=runbook,
        detail=detail,
    )


def _band_status(
    low: float, high: float, band: tuple[float, float], target: float
) -> tuple[Status, str]:
    if low > band[1] or high < band[0]:
        return Status.BREACH, "CI lies wholly outside the tolerance band"
    if low > target or high < target:
        return Status.WARN, f"CI excludes {target:g} but overlaps the tolerance band"
    return Status.OK, f"CI includes {target:g}"


def _floor_status(value: float, ci_high: float, floor: float | None) -> tuple[Status, str]:
    if floor is None:
        return Status.OK, "descriptive (no threshold set)"
    if ci_high < floor:
        return Status.BREACH, f"CI lies wholly below {floor:g}"
    if value < floor:
        return Status.WARN, f"estimate below {floor:g}, CI reaches it"
    return Status.OK, f"estimate at or above {floor:g}"


def calibration_results(w: Window, cfg: CalibrationConfig) -> list[MonitorResult]:
    """Every calibration metric of one window (pure: sums in, results out)."""
    d = _design_effect(w.model, cfg.design_effect)
    gate, withheld = _gate(
        w, min_completeness=cfg.min_label_completeness, min_events=cfg.min_events
    )
    n, events = w.bin("n_settled"), w.bin("n_positive")
    sum_p, sum_logit = w.bin("sum_p_settled"), w.bin("sum_logit_settled")
    sums = PowerSums(
        n=w.sum("n_settled"),
        n_positive=w.sum("n_positive"),
        sum_p=w.sum("sum_p_settled"),
        sum_p2=w.sum("sum_p2_settled"),
        sum_yp=w.sum("sum_yp_settled"),
    )
    base = {
        "label_completeness": round(w.completeness, 4),
        "scored": int(w.sum("n_ok")),
        "settled": int(sums.n),
        "observed": int(sums.n_positive),
        "expected": round(sums.sum_p, 4),
        "window_days": w.window_days,
        "design_effect": round(d, 3),
    }
    out: list[MonitorResult] = []

    def add(
        metric: str,
        value: float | None,
        status: Status,
        reason: str,
        threshold: str,
        ci: tuple[float | None, float | None] = (None, None),
        **extra: Any,
    ) -> None:
        if gate is not None:
            status, reason = Status.INSUFFICIENT, gate
            if withheld:
                value, ci, extra = None, (None, None), {}
        elif value is None:
            status, reason = Status.INSUFFICIENT, "not estimable from this window"
        out.append(
            _result(
                w,
                monitor=CALIBRATION,
                metric=metric,
                runbook=CALIBRATION_RUNBOOK,
                status=status,
                value=value,
                ci=ci,
                threshold=threshold,
                detail={**base, "reason": reason, **extra},
            )
        )

    completeness_ok = w.completeness >= cfg.min_label_completeness and w.sum("n_ok") > 0
    out.append(
        _result(
            w,
            monitor=CALIBRATION,
            metric="label_completeness",
            runbook=CALIBRATION_RUNBOOK,
            status=Status.OK if completeness_ok else Status.INSUFFICIENT,
            value=w.completeness if w.sum("n_ok") else None,
            threshold=f"calibration needs {cfg.min_label_completeness:.0%} of labels settled",
            detail={**base, "reason": "" if completeness_ok else (gate or "")},
        )
    )
    band = (-cfg.intercept_tolerance, cfg.intercept_tolerance)
    intercept = calibration_intercept(n, events, sum_logit, design_effect=d, ci_level=cfg.ci_level)
    if intercept is None:
        add("calibration_intercept", None, Status.INSUFFICIENT, "", "")
    else:
        status, reason = _band_status(intercept.ci_low, intercept.ci_high, band, 0.0)
        add(
            "calibration_intercept",
            intercept.value,
            status,
            reason,
            f"breach if the {cfg.ci_level:.0%} CI lies outside ±{cfg.intercept_tolerance:g}; "
            "warn if it excludes 0",
            (intercept.ci_low, intercept.ci_high),
            se=round(intercept.se, 6),
        )
    slope = calibration_slope(n, events, sum_logit, design_effect=d, ci_level=cfg.ci_level)
    slope_rule = (
        f"breach if the {cfg.ci_level:.0%} CI lies outside {cfg.slope_low:g}-{cfg.slope_high:g}; "
        "warn if it excludes 1"
    )
    if slope is None:
        add("calibration_slope", None, Status.INSUFFICIENT, "", slope_rule)
    else:
        status, reason = _band_status(
            slope.ci_low, slope.ci_high, (cfg.slope_low, cfg.slope_high), 1.0
        )
        add(
            "calibration_slope",
            slope.value,
            status,
            reason,
            slope_rule,
            (slope.ci_low, slope.ci_high),
            se=round(slope.se, 6),
        )
    spiegel = spiegelhalter_z(sums, n, sum_p, design_effect=d)
    spiegel_rule = f"warn if two-sided p < {cfg.spiegelhalter_alpha:g}"
    if spiegel is None:
        add("spiegelhalter_z", None, Status.INSUFFICIENT, "", spiegel_rule)
    else:
        significant = spiegel.p_value < cfg.spiegelhalter_alpha
        add(
            "spiegelhalter_z",
            spiegel.z,
            Status.WARN if significant else Status.OK,
            f"p = {spiegel.p_value:.2g}",
            spiegel_rule,
            p_value=spiegel.p_value,
        )
    descriptive = "descriptive (no threshold set)"
    add("brier", brier_score(sums), Status.OK, descriptive, descriptive)
    add("scaled_brier", scaled_brier_score(sums), Status.OK, descriptive, descriptive)
    curve = reliability_curve(
        n,
        events,
        sum_p,
        equal_count_groups(n, cfg.reliability_groups),
        design_effect=d,
        ci_level=cfg.ci_level,
    )
    add(
        "ece",
        expected_calibration_error(curve),
        Status.OK,
        descriptive,
        descriptive,
        curve={
            "n": curve.n.tolist(),
            "events": curve.events.tolist(),
            "mean_predicted": [round(v, 6) for v in curve.mean_predicted],
            "observed": [round(v, 6) for v in curve.observed],
            "ci_low": [round(v, 6) for v in curve.ci_low],
            "ci_high": [round(v, 6) for v in curve.ci_high],
        },
    )
    index = integrated_calibration_index(n, events, sum_p, frac=cfg.lowess_frac)
    if index is None:
        for metric in ("ici", "e50", "e90"):
            add(metric, None, Status.INSUFFICIENT, "", descriptive)
    else:
        if cfg.ici_breach is not None and index.ici >= cfg.ici_breach:
            ici_status, ici_reason = Status.BREACH, f"ICI at or above {cfg.ici_breach:g}"
        elif cfg.ici_warn is not None and index.ici >= cfg.ici_warn:
            ici_status, ici_reason = Status.WARN, f"ICI at or above {cfg.ici_warn:g}"
        else:
            ici_status, ici_reason = Status.OK, descriptive
        ici_rule = (
            descriptive
            if cfg.ici_warn is None and cfg.ici_breach is None
            else f"warn at ICI ≥ {cfg.ici_warn}, breach at ≥ {cfg.ici_breach}"
        )
        add("ici", index.ici, ici_status, ici_reason, ici_rule, emax=index.emax)
        add("e50", index.e50, Status.OK, descriptive, descriptive)
        add("e90", index.e90, Status.OK, descriptive, descriptive)
    return out


def discrimination_results(w: Window, cfg: DiscriminationConfig) -> list[MonitorResult]:
    """AUROC and the threshold metrics of one window (pure: sums in, results out)."""
    d = _design_effect(w.model, cfg.design_effect)
    gate, withheld = _gate(
        w, min_completeness=cfg.min_label_completeness, min_events=cfg.min_events
    )
    positives = w.bin("n_positive")
    negatives = w.bin("n_settled") - positives
    base = {
        "label_completeness": round(w.completeness, 4),
        "scored": int(w.sum("n_ok")),
        "settled": int(w.sum("n_settled")),
        "positives": int(w.sum("n_positive")),
        "window_days": w.window_days,
        "design_effect": round(d, 3),
    }
    out: list[MonitorResult] = []

    def add(
        metric: str,
        value: float | None,
        ci: tuple[float | None, float | None],
        status: Status,
        reason: str,
        threshold: str,
        **extra: Any,
    ) -> None:
        if gate is not None:
            status, reason = Status.INSUFFICIENT, gate
            if withheld:
                value, ci, extra = None, (None, None), {}
        elif value is None:
            status, reason = Status.INSUFFICIENT, "not estimable from this window"
        out.append(
            _result(
                w,
                monitor=DISCRIMINATION,
                metric=metric,
                runbook=DISCRIMINATION_RUNBOOK,
                status=status,
                value=value,
                ci=ci,
                threshold=threshold,
                detail={**base, "reason": reason, **extra},
            )
        )

    auc = binned_auroc(
        positives, negatives, design_effect=d, ci_level=cfg.ci_level, method=cfg.auroc_method
    )
    auc_rule = (
        f"breach if the {cfg.ci_level:.0%} CI lies below {cfg.auroc_floor:g}; "
        "warn if the estimate does"
    )
    if auc is None:
        add("auroc", None, (None, None), Status.INSUFFICIENT, "", auc_rule)
    else:
        status, reason = _floor_status(auc.auc, auc.ci_high, cfg.auroc_floor)
        add(
            "auroc",
            auc.auc,
            (auc.ci_low, auc.ci_high),
            status,
            reason,
            auc_rule,
            se=round(auc.se, 6),
            method=cfg.auroc_method,
        )
    metrics = threshold_metrics(
        n_settled=w.sum("n_settled"),
        n_positive=w.sum("n_positive"),
        n_alert_settled=w.sum("n_alert_settled"),
        n_alert_positive=w.sum("n_alert_positive"),
        design_effect=d,
        ci_level=cfg.ci_level,
    )
    floors: dict[str, float | None] = {
        "sensitivity": cfg.sensitivity_floor,
        "specificity": None,
        "ppv": cfg.ppv_floor,
        "alert_rate": None,
    }
    for metric, floor in floors.items():
        estimate: Proportion | None = getattr(metrics, metric)
        rule = (
            "descriptive (no threshold set)"
            if floor is None
            else f"breach if the CI lies below {floor:g}; warn if the estimate does"
        )
        if estimate is None:
            add(metric, None, (None, None), Status.INSUFFICIENT, "", rule)
            continue
        status, reason = _floor_status(estimate.value, estimate.ci_high, floor)
        add(
            metric,
            estimate.value,
            (estimate.ci_low, estimate.ci_high),
            status,
            reason,
            rule,
            numerator=estimate.numerator,
            denominator=estimate.denominator,
        )
    return out


C = TypeVar("C", CalibrationConfig, DiscriminationConfig)


def run_windowed(
    engine: Engine,
    config: MonitorConfig,
    now: datetime | None,
    *,
    monitor: str,
    config_class: type[C],
    compute: Callable[[Window, C], list[MonitorResult]],
) -> list[MonitorResult]:
    """Recompute the daily points whose trailing windows contain an hour whose rollup changed."""
    now = now or utcnow()
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        watermark = read_watermark(conn, monitor)
        changed = changed_since(conn, watermark)
        if not changed:
            return []
        sync_daily(conn)  # the windows below are read from the daily tables
        models, sites = load_models(conn), load_sites(conn)
        today = day_of(now)
        spans: dict[int, tuple[int, int]] = {}
        for c in changed:
            lo, hi = spans.get(c.model_id, (c.first_hour, c.last_hour))
            spans[c.model_id] = (min(lo, c.first_hour), max(hi, c.last_hour))
        for model_id, (first_hour, last_hour) in sorted(spans.items()):
            model = models[model_id]
            cfgs = {
                sid: config.for_monitor(monitor, config_class, model=model.name, site=code)
                for sid, code in sites.items()
            }
            by_window: dict[int, list[int]] = {}
            for sid in sorted(sites):
                by_window.setdefault(cfgs[sid].window_days, []).append(sid)
            first_day = first_hour // 24
            for window_days, site_ids in sorted(by_window.items()):
                # Each group of sites reads its own window's days, not the widest window's:
                # a site's points need the window_days - 1 days before first_day, and a
                # change reaches the points of the window_days - 1 days after last_hour.
                last_day = max(first_day, min(last_hour // 24 + window_days - 1, today))
                read_from = first_day - window_days + 1
                bins = daily_bins(conn, model_id, read_from, last_day, site_ids=site_ids)
                sums = daily_sums(conn, model_id, read_from, last_day, site_ids=site_ids)
                all_bins = dense_bins_by_site(bins, site_ids, read_from, last_day)
                all_sums = dense_sums_by_site(sums, site_ids, read_from, last_day)
                for k, site_id in enumerate(site_ids):
                    site_sums = all_sums[k]
                    if not site_sums[:, _S["n_ok"]].any():
                        continue  # the model does not run at this site
                    cfg = cfgs[site_id]
                    rolled_bins = trailing(all_bins[k], window_days)
                    rolled_sums = trailing(site_sums, window_days)
                    for day in range(first_day, last_day + 1):
                        i = day - read_from
                        window = Window(
                            model, site_id, day, window_days, rolled_bins[i], rolled_sums[i], now
                        )
                        results.extend(compute(window, cfg))
        write_results(conn, results, now=now)
        write_watermark(conn, monitor, max(c.updated_at for c in changed))
    logger.info("%s: %d points written", monitor, len(results))
    return results


def run_calibration(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """The calibration monitor: intercept, slope, Spiegelhalter Z, Brier, ECE, ICI per window."""
    return run_windowed(
        engine,
        config,
        now,
        monitor=CALIBRATION,
        config_class=CalibrationConfig,
        compute=calibration_results,
    )


def run_discrimination(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """The discrimination monitor: AUROC, sensitivity, specificity, PPV and alert rate."""
    return run_windowed(
        engine,
        config,
        now,
        monitor=DISCRIMINATION,
        config_class=DiscriminationConfig,
        compute=discrimination_results,
    )
