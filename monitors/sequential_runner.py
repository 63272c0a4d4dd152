"""Calibration drift monitor: CUSUM in both directions and the adaptive window, per model x site.

Thin I/O around monitors.sequential. Only hours whose every label has settled are fed in, in
time order (the "settled frontier"), so a late label never biases the sums. Each day's point
carries the detectors' state at the end of that day; a run resumes from the point before the
earliest hour that changed, so its cost follows the new data. A late label that rebuilds an
old hour rewinds the detectors to that day and replays them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status
from monitors.config import MonitorConfig
from monitors.observed_expected import design_effect_for, observed_to_expected
from monitors.rollup_io import (
    BIN_FIELDS,
    EPOCH,
    Changed,
    R,
    changed_since,
    daily_bins,
    daily_sums,
    day_of,
    day_start,
    dense_bins,
    first_hours,
    hour_start,
    latest_points_by_site,
    load_models,
    load_sites,
    read_watermark,
    write_watermark,
)
from monitors.runner import write_results
from monitors.sequential import (
    CaseMix,
    CusumDesign,
    CusumState,
    WindowState,
    adaptive_window,
    binned_increments,
    run_cusum,
    simulate_cusum_design,
)
from store.bulk import upsert
from store.models import SCORE_BIN_EDGES, CusumLimit, Model, table_of, utcnow

logger = logging.getLogger(__name__)

MONITOR = "calibration_drift"
RUNBOOK = "calibration-change"
CL = table_of(CusumLimit)
DIRECTIONS = ("upper", "lower")
METRICS = ("cusum_upper", "cusum_lower", "adwin")
_B = {name: i for i, name in enumerate(BIN_FIELDS)}


@dataclass(frozen=True)
class CalibrationDriftConfig:
    # Reference window: the case mix and volume the CUSUM limits are simulated at.
    reference_days: int = 28  # the first days of each site's history ...
    reference_start: str | None = None  # ... or a fixed period, ISO dates
    reference_end: str | None = None
    odds_ratio_up: float = 2.0  # watch for the odds of the outcome doubling (under-prediction)
    odds_ratio_down: float = 0.5  # and halving (over-prediction)
    in_control_arl_days: float = 7300.0  # mean days between false alarms of one chart
    head_start: float = 0.5  # restart at this share of the limit after a signal
    simulation_paths: int = 200
    simulation_seed: int = 20000
    simulation_event_budget: float = 2e6  # beyond it, the limit is extended along exp(h)
    design_effect: float | None = None  # None: the model's horizon / scoring interval
    adwin_delta: float = 0.001
    adwin_min_days: int = 7
    adwin_min_expected: float = 5.0  # effective expected events on each side of a split
    adwin_max_days: int = 180
    adwin_hold_days: int = 14  # a detected change is reported (warn) this long
    oe_ci_level: float = 0.95


def _design_effect(model: Model, cfg: CalibrationDriftConfig) -> float:
    return cfg.design_effect or design_effect_for(
        model.horizon_hours, model.scoring_interval_minutes
    )


def reference_days(cfg: CalibrationDriftConfig, first_day: int) -> tuple[int, int]:
    """[start, end) of a site's reference window, in days since the epoch."""
    if cfg.reference_start and cfg.reference_end:
        start = date.fromisoformat(cfg.reference_start)
        end = date.fromisoformat(cfg.reference_end)
        epoch = EPOCH.date()
        return (start - epoch).days, (end - epoch).days
    return first_day, first_day + cfg.reference_days


def case_mix(
    conn: Connection, model_id: int, site_id: int, start: int, end: int, d: float
) -> CaseMix | None:
    """The reference window's share of predictions and mean risk per score bin, and volume."""
    frame = daily_bins(conn, model_id, start, end - 1, site_id=site_id)
    bins = dense_bins(frame, site_id, start, end - 1).sum(axis=0)
    n = bins[:, _B["n"]]
    if n.sum() <= 0:
        return None
    edges = np.asarray(SCORE_BIN_EDGES)
    midpoints = (edges[:-1] + edges[1:]) / 2
    settled = bins[:, _B["n_settled"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(settled > 0, bins[:, _B["sum_p_settled"]] / settled, midpoints)
    keep = n > 0
    return CaseMix(
        weights=n[keep] / n.sum(),
        mean_p=mean_p[keep],
        predictions_per_day=float(n.sum()) / max(1, end - start),
        design_effect=d,
    )


def _limits(
    conn: Connection,
    *,
    model: Model,
    site_id: int,
    cfg: CalibrationDriftConfig,
    reference: tuple[int, int],
    d: float,
    rows: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], bool] | None:
    """The stored limits for both directions (`rows`, per direction, from `stored_limits`),
    simulated (and stored) when missing or stale.

    Returns the limits and whether they were (re)computed, or None without a reference.
    """
    assert model.id is not None
    wanted = {
        "upper": cfg.odds_ratio_up,
        "lower": cfg.odds_ratio_down,
    }
    ref_start, ref_end = day_start(reference[0]), day_start(reference[1])

    def current(direction: str) -> bool:
        row = rows.get(direction)
        return (
            row is not None
            and math.isclose(row["odds_ratio"], wanted[direction])
            and math.isclose(row["target_arl_days"], cfg.in_control_arl_days)
            and math.isclose(row["design_effect"], d)
            and row["reference_start"] == ref_start
            and row["reference_end"] == ref_end
            and row["paths"] == cfg.simulation_paths
            and row["seed"] == cfg.simulation_seed
        )

    if all(current(direction) for direction in DIRECTIONS):
        return rows, False
    mix = case_mix(conn, model.id, site_id, *reference, d)
    if mix is None:
        return None
    fresh: dict[str, dict[str, Any]] = {}
    for direction in DIRECTIONS:
        design: CusumDesign = simulate_cusum_design(
            mix,
            odds_ratio=wanted[direction],
            target_arl_days=cfg.in_control_arl_days,
            paths=cfg.simulation_paths,
            seed=cfg.simulation_seed,
            event_budget=cfg.simulation_event_budget,
        )
        fresh[direction] = {
            "model_id": model.id,
            "site_id": site_id,
            "direction": direction,
            "odds_ratio": design.odds_ratio,
            "target_arl_days": design.target_arl_days,
            "limit": design.limit,
            "simulated_arl_days": design.simulated_arl_days,
            "out_of_control_arl_days": design.out_of_control_arl_days,
            "predictions_per_day": mix.predictions_per_day,
            "design_effect": d,
            "reference_start": ref_start,
            "reference_end": ref_end,
            "paths": design.paths,
            "seed": design.seed,
            "computed_at": utcnow(),
        }
        logger.info(
            "CUSUM limit %s %s site %d: h=%.3f for ARL %.0f days (R=%g)",
            model.name,
            direction,
            site_id,
            design.limit,
            design.target_arl_days,
            design.odds_ratio,
        )
    upsert(
        conn,
        CL,
        list(fresh.values()),
        key=["model_id", "site_id", "direction"],
        update=[c for c in fresh["upper"] if c not in ("model_id", "site_id", "direction")],
    )
    return fresh, True


def stored_limits(
    conn: Connection, model_id: int, site_ids: list[int]
) -> dict[int, dict[str, dict[str, Any]]]:
    """The stored limits of one model at `site_ids`, per site and direction: one statement
    for every site (seeks of the unique index (model_id, site_id, direction)), not one each."""
    stored: dict[int, dict[str, dict[str, Any]]] = {}
    if not site_ids:
        return stored
    query = sa.select(CL).where(CL.c.model_id == model_id, CL.c.site_id.in_(sorted(site_ids)))
    for row in conn.execute(query).mappings():
        stored.setdefault(int(row["site_id"]), {})[str(row["direction"])] = dict(row)
    return stored


def settled_frontiers(
    conn: Connection, model_id: int, from_hours: dict[int, int]
) -> dict[int, int]:
    """Per site, the last hour h (>= from_hour - 1) such that every hour from the site's
    from_hour to h is settled.

    One statement for every site: the sites and their from_hour are a VALUES list, and each
    site's first unsettled hour and last hour are correlated min() and max() over its range of
    the (model_id, site_id, hour) index, the seeks a statement per site made.
    """
    if not from_hours:
        return {}
    k = (
        sa.values(
            sa.column("site_id", R.c.site_id.type),
            sa.column("from_hour", R.c.hour.type),
            name="k",
        )
        .data(sorted(from_hours.items()))
        .cte("k")
    )
    in_range = (R.c.model_id == model_id, R.c.site_id == k.c.site_id, R.c.hour >= k.c.from_hour)
    unsettled = (
        sa.select(sa.func.min(R.c.hour))
        .where(*in_range, R.c.n_settled < R.c.n_ok)
        .scalar_subquery()
    )
    last = sa.select(sa.func.max(R.c.hour)).where(*in_range).scalar_subquery()
    frontiers: dict[int, int] = {}
    for site_id, first_unsettled, last_hour in conn.execute(
        sa.select(k.c.site_id, unsettled.label("unsettled"), last.label("last"))
    ):
        if first_unsettled is not None:
            frontiers[int(site_id)] = int(first_unsettled) - 1
        elif last_hour is not None:
            frontiers[int(site_id)] = int(last_hour)
        else:
            frontiers[int(site_id)] = from_hours[int(site_id)] - 1
    return frontiers


def _state(detail: dict[str, Any] | None) -> CusumState:
    if not detail:
        return CusumState()
    return CusumState(
        value=float(detail.get("s_end", 0.0)),
        run_start=detail.get("run_start_hour"),
        episode_change=detail.get("episode_change_hour"),
        last_signal=detail.get("last_signal_hour"),
        signals=int(detail.get("signals", 0)),
    )


def _iso_hour(hour: int | None) -> str | None:
    return None if hour is None else hour_start(hour).isoformat()


@dataclass(frozen=True)
class _Resume:
    """Where one model x site's run resumes: its settings, its limits, the day it replays
    from and the points (per metric) of the day before, whose detail is the detectors' state."""

    site_id: int
    cfg: CalibrationDriftConfig
    d: float
    first_day: int
    limits: dict[str, dict[str, Any]]
    day: int
    previous: dict[str, dict[str, Any]]


def _filling(
    model_id: int, site_id: int, reference: tuple[int, int], now: datetime
) -> list[MonitorResult]:
    """The insufficient-data points of a site whose reference window is still filling."""
    return [
        MonitorResult(
            monitor=MONITOR,
            metric=metric,
            model_id=model_id,
            site_id=site_id,
            window_start=day_start(day_of(now)),
            window_end=now,
            status=Status.INSUFFICIENT,
            value=None,
            runbook=RUNBOOK,
            threshold="",
            detail={
                "reason": "reference window still filling (until "
                f"{day_start(reference[1]):%Y-%m-%d}); the CUSUM limits need it"
            },
        )
        for metric in METRICS
    ]


def _resume_day(
    first_day: int, dirty_hour: int, recomputed: bool, newest: dict[str, Any] | None
) -> int:
    """The day to replay from: the first day, after new limits or without a frontier in the
    newest point; otherwise the earlier of the first changed hour's day and the day after the
    newest point's settled frontier."""
    frontier_before = (newest or {}).get("detail", {}) or {}
    if recomputed or "frontier_hour" not in frontier_before:
        return first_day
    resume_day = min(dirty_hour // 24, (int(frontier_before["frontier_hour"]) + 1) // 24)
    return max(resume_day, first_day)


def _checkpointed(
    resume_day: int, first_day: int, previous: dict[str, dict[str, Any]]
) -> tuple[int, dict[str, dict[str, Any]]]:
    """The resume day and the points before it, or the first day and none when the CUSUMs
    have no point for the day before (a gap in the checkpoints: replay from the start)."""
    if resume_day > first_day and any(
        previous.get(m, {}).get("window_start") != day_start(resume_day - 1)
        for m in ("cusum_upper", "cusum_lower")
    ):
        return first_day, {}
    return resume_day, previous


def _resumes(
    conn: Connection,
    *,
    model: Model,
    ready: list[tuple[Changed, CalibrationDriftConfig, int, tuple[int, int]]],
    now: datetime,
) -> list[_Resume]:
    """Where each of `ready` (change, settings, first day, reference) resumes, in that order;
    sites without a reference to set limits from are left out.

    The stored limits, the newest points and the checkpoints are read for every site at once
    (a statement each, not one per site); limits are simulated and stored site by site.
    """
    assert model.id is not None
    sites = [c.site_id for c, *_ in ready]
    stored = stored_limits(conn, model.id, sites)
    newest = latest_points_by_site(
        conn,
        monitor=MONITOR,
        metrics=["cusum_upper"],
        model_id=model.id,
        before=dict.fromkeys(sites, day_start(day_of(now) + 2)),
    )
    started: list[_Resume] = []
    for c, cfg, first_day, reference in ready:
        d = _design_effect(model, cfg)
        found = _limits(
            conn,
            model=model,
            site_id=c.site_id,
            cfg=cfg,
            reference=reference,
            d=d,
            rows=stored.get(c.site_id, {}),
        )
        if found is None:
            continue
        limits, recomputed = found
        day = _resume_day(
            first_day, c.first_hour, recomputed, newest.get(c.site_id, {}).get("cusum_upper")
        )
        started.append(_Resume(c.site_id, cfg, d, first_day, limits, day, {}))
    previous = latest_points_by_site(
        conn,
        monitor=MONITOR,
        metrics=METRICS,
        model_id=model.id,
        before={r.site_id: day_start(r.day) for r in started if r.day > r.first_day},
    )
    resumes: list[_Resume] = []
    for r in started:
        day, points = _checkpointed(r.day, r.first_day, previous.get(r.site_id, {}))
        resumes.append(replace(r, day=day, previous=points))
    return resumes


def _model_results(
    conn: Connection,
    *,
    model: Model,
    todo: list[tuple[Changed, CalibrationDriftConfig, int]],
    now: datetime,
) -> list[list[MonitorResult]]:
    """The points of each changed site (change, settings, first day) of one model, in `todo`
    order. The reads that start the sites' runs are a few statements for all of them."""
    assert model.id is not None
    out: dict[int, list[MonitorResult]] = {}
    ready: list[tuple[Changed, CalibrationDriftConfig, int, tuple[int, int]]] = []
    for c, cfg, first_day in todo:
        reference = reference_days(cfg, first_day)
        if now < day_start(reference[1]):
            out[c.site_id] = _filling(model.id, c.site_id, reference, now)
        else:
            ready.append((c, cfg, first_day, reference))
    resumes = _resumes(conn, model=model, ready=ready, now=now)
    frontiers = settled_frontiers(conn, model.id, {r.site_id: r.day * 24 for r in resumes})
    for r in resumes:
        out[r.site_id] = _site_results(conn, model=model, resume=r, frontier=frontiers[r.site_id])
    return [out.get(c.site_id, []) for c, *_ in todo]


def _site_results(
    conn: Connection, *, model: Model, resume: _Resume, frontier: int
) -> list[MonitorResult]:
    """One site's points from its resume day to its settled frontier."""
    assert model.id is not None
    site_id, cfg, d, limits, previous = (
        resume.site_id,
        resume.cfg,
        resume.d,
        resume.limits,
        resume.previous,
    )
    resume_day = resume.day
    if frontier < resume_day * 24:
        return []
    last_day = frontier // 24
    hours = daily_bins(conn, model.id, resume_day, last_day, hourly=True, site_id=site_id)
    hourly = dense_bins(hours, site_id, resume_day * 24, frontier)
    n = hourly[:, :, _B["n_settled"]]
    events = hourly[:, :, _B["n_positive"]]
    sum_p = hourly[:, :, _B["sum_p_settled"]]
    increments = {
        "upper": binned_increments(
            n, events, sum_p, odds_ratio=float(limits["upper"]["odds_ratio"]), design_effect=d
        ),
        "lower": binned_increments(
            n, events, sum_p, odds_ratio=float(limits["lower"]["odds_ratio"]), design_effect=d
        ),
    }
    states = {
        direction: _state(previous.get(f"cusum_{direction}", {}).get("detail"))
        for direction in DIRECTIONS
    }
    # The adaptive window's state and the days of its window seen before resume_day.
    adwin_detail = previous.get("adwin", {}).get("detail") or {}
    window = WindowState(
        start=adwin_detail.get("window_start_day"),
        change_day=adwin_detail.get("change_day"),
        detected_day=adwin_detail.get("detected_day"),
        oe_before=adwin_detail.get("oe_before"),
    )
    history = None
    if window.start is not None and window.start < resume_day:
        past = daily_sums(conn, model.id, window.start, resume_day - 1, site_id=site_id)
        past = past.sort_values("period")
        history = (
            past["period"].to_numpy(),
            past["n_positive"].to_numpy(dtype=float),
            past["sum_p_settled"].to_numpy(dtype=float),
        )
    last_full_day = (frontier + 1) // 24 - 1
    daily_events = events.sum(axis=1)
    daily_expected = sum_p.sum(axis=1)
    full_days = list(range(resume_day, last_full_day + 1))
    day_index = [(day - resume_day) * 24 for day in full_days]
    steps = adaptive_window(
        full_days,
        [daily_events[i : i + 24].sum() for i in day_index],
        [daily_expected[i : i + 24].sum() for i in day_index],
        state=window,
        history=history,
        delta=cfg.adwin_delta,
        design_effect=d,
        min_days=cfg.adwin_min_days,
        min_expected=cfg.adwin_min_expected,
        max_days=cfg.adwin_max_days,
    )
    adwin_by_day = {step.day: step for step in steps}
    results: list[MonitorResult] = []
    for day in range(resume_day, last_day + 1):
        lo = (day - resume_day) * 24
        hi = min(lo + 24, frontier - resume_day * 24 + 1)
        window_end = min(day_start(day + 1), hour_start(frontier + 1))
        settled_today = int(n[lo:hi].sum())
        for direction in DIRECTIONS:
            limit_row = limits[direction]
            run = run_cusum(
                increments[direction][lo:hi],
                np.arange(resume_day * 24 + lo, resume_day * 24 + hi),
                limit=float(limit_row["limit"]),
                state=states[direction],
                head_start=cfg.head_start,
            )
            states[direction] = run.final
            signalled = bool(run.signal_steps)
            breach = signalled or run.final.in_episode
            change = run.change_points[0] if run.change_points else run.final.episode_change
            side = "under" if direction == "upper" else "over"
            results.append(
                MonitorResult(
                    monitor=MONITOR,
                    metric=f"cusum_{direction}",
                    model_id=model.id,
                    site_id=site_id,
                    window_start=day_start(day),
                    window_end=window_end,
                    status=Status.BREACH if breach else Status.OK,
                    value=float(run.path.max()) if run.path.size else run.final.value,
                    n=settled_today,
                    threshold=(
                        f"breach when S ≥ h = {float(limit_row['limit']):.2f} "
                        f"(odds ratio {float(limit_row['odds_ratio']):g}, in-control ARL "
                        f"{float(limit_row['target_arl_days']):.0f} days), until S returns to 0"
                    ),
                    runbook=RUNBOOK,
                    detail={
                        "limit": float(limit_row["limit"]),
                        "odds_ratio": float(limit_row["odds_ratio"]),
                        "in_control_arl_days": float(limit_row["target_arl_days"]),
                        "out_of_control_arl_days": limit_row["out_of_control_arl_days"],
                        "s_end": run.final.value,
                        "run_start_hour": run.final.run_start,
                        "episode_change_hour": run.final.episode_change,
                        "last_signal_hour": run.final.last_signal,
                        "signals": run.final.signals,
                        "signal_hours": run.signal_steps,
                        "change_point": _iso_hour(change) if breach else None,
                        "frontier_hour": frontier,
                        "design_effect": round(d, 3),
                        "reason": (
                            f"signal: the model {side}-predicts since about "
                            f"{hour_start(change):%Y-%m-%d %H:00} UTC"
                            if breach and change is not None
                            else "no signal"
                        ),
                    },
                )
            )
        step = adwin_by_day.get(day)
        if step is None:
            continue
        estimate = observed_to_expected(round(step.observed), step.expected, cfg.oe_ci_level, d)
        recent = (
            step.state.detected_day is not None
            and day - step.state.detected_day < cfg.adwin_hold_days
        )
        enough = step.expected / d >= cfg.adwin_min_expected
        status = Status.WARN if recent else (Status.OK if enough else Status.INSUFFICIENT)
        results.append(
            MonitorResult(
                monitor=MONITOR,
                metric="adwin",
                model_id=model.id,
                site_id=site_id,
                window_start=day_start(day),
                window_end=day_start(day + 1),
                status=status,
                value=estimate.ratio,
                ci_low=estimate.ci_low,
                ci_high=estimate.ci_high,
                n=settled_today,
                threshold=(
                    f"warn for {cfg.adwin_hold_days} days after the window is cut "
                    f"(split p < {cfg.adwin_delta:g} / splits)"
                ),
                runbook=RUNBOOK,
                detail={
                    "window_start_day": step.state.start,
                    "window_start": day_start(step.state.start).isoformat()
                    if step.state.start is not None
                    else None,
                    "change_day": step.state.change_day,
                    "detected_day": step.state.detected_day,
                    "change_began": day_start(step.state.change_day).isoformat()
                    if step.state.change_day is not None
                    else None,
                    "oe_before": step.state.oe_before,
                    "observed": round(step.observed),
                    "expected": round(step.expected, 4),
                    "cut_today": step.cut,
                    "reason": (
                        f"O:E changed from {step.state.oe_before:.2f} to {estimate.ratio:.2f} "
                        f"from {day_start(step.state.change_day):%Y-%m-%d}"
                        if recent
                        and step.state.change_day is not None
                        and step.state.oe_before is not None
                        and estimate.ratio is not None
                        else ("no change detected" if enough else "too few expected events")
                    ),
                },
            )
        )
    return results


def run_calibration_drift(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Advance each model x site's CUSUMs and adaptive window over newly settled hours."""
    now = now or utcnow()
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        watermark = read_watermark(conn, MONITOR)
        changed = changed_since(conn, watermark)
        if not changed:
            return []
        models, sites = load_models(conn), load_sites(conn)
        by_model: dict[int, list[Changed]] = {}
        for c in sorted(changed, key=lambda c: (c.model_id, c.site_id)):
            by_model.setdefault(c.model_id, []).append(c)
        for model_id, group in by_model.items():
            model = models[model_id]
            starts = first_hours(conn, model_id)
            todo = [
                (
                    c,
                    config.for_monitor(
                        MONITOR, CalibrationDriftConfig, model=model.name, site=sites[c.site_id]
                    ),
                    starts[c.site_id] // 24,
                )
                for c in group
                if c.site_id in starts
            ]
            for site_results in _model_results(conn, model=model, todo=todo, now=now):
                write_results(conn, site_results, now=now)
                results.extend(site_results)
        write_watermark(conn, MONITOR, max(c.updated_at for c in changed))
    logger.info("%s: %d points written", MONITOR, len(results))
    return results
