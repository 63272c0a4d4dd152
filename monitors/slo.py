"""Latency and availability SLOs per model × site: error budgets and multi-window burn-rate alerts.

Where the counts come from, so that a run costs the same whatever the length of the history:

- windows of up to an hour (5 min, 30 min, 1 h) are counted exactly from the raw predictions
  of the last hour (index `model_id, site_id, scored_at`): `[now - w, now)`;
- longer windows (6 h, 3 d, 30 d) add whole hourly rollups to the current partial hour, which
  is also counted from raw rows: `[floor_hour(now) - w, now)`, i.e. between w and w + 1 h.

Only scores logged before `now` count, so an evaluation as of a past instant (a replay over
history) equals what a live run at that instant computed. The pure functions take per-bucket
counts: the live runner passes hourly rollups, a replay passes e.g. 5-minute buckets.

Guaranteed detection delay (scheduler: collect every minute, this monitor every minute): when
a scoring path turns wholly bad (every score late, or every call failing), the 1-hour page
rule fires once 14.4% of the hour's scores are bad and the low-traffic guard (99.9% lower
bound) agrees: 17 min after the first bad score is logged at 90 scores an hour, 21 min at 45,
27 min at 20, plus up to 2 min of collection and scheduling. Thinner sites page later or only
through the slower rules. A late score is only seen once it is logged, so a slowdown is
detected after its own delay too: the seeded UMC incident (12-minute scores from 14:00) pages
at 14:30 at half the demo's volume (tests/monitors/test_operational_demo.py, bound 35 min).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
import yaml
from scipy import stats
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status
from monitors.config import MonitorConfig
from monitors.durations import (
    epoch_seconds,
    floor_hour,
    format_duration,
    from_epoch,
    parse_duration,
)
from monitors.rollup_io import DR, daily_ready, model_days
from monitors.runner import write_results
from store.models import Deployment, Model, Prediction, PredictionRollup, Site, table_of, utcnow
from store.rollups import sync_daily

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DEFAULT_SLO_CONFIG = Path("config/slos.yaml")
SLIS = ("latency", "availability")
MONITOR_FOR_SLI = {"latency": "latency_slo", "availability": "availability_slo"}
RUNBOOK_FOR_SLI = {"latency": "latency-burn", "availability": "availability-burn"}
RAW_HORIZON = timedelta(hours=1)  # windows up to this long are counted from raw rows
SEVERITY_RANK = {"ticket": 1, "page": 2}
_TOLERANCE = 1e-9  # a burn rate equal to its factor fires despite float rounding

P = table_of(Prediction)
R = table_of(PredictionRollup)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BurnRule:
    """Fire when `budget_consumed` of the budget would be spent in `long` (confirmed by `short`)."""

    severity: str
    budget_consumed: float
    long: timedelta
    short: timedelta

    def factor(self, slo_window: timedelta) -> float:
        return burn_rate_threshold(self.budget_consumed, self.long, slo_window)

    def describe(self, slo_window: timedelta) -> str:
        return (
            f"{self.severity} at {self.factor(slo_window):g}× over "
            f"{format_duration(self.long)} and {format_duration(self.short)}"
        )


@dataclass(frozen=True)
class SLOSpec:
    name: str
    model: str
    sli: str  # latency, availability
    target: float
    threshold_seconds: float | None = None  # latency only

    def describe(self) -> str:
        if self.sli == "latency":
            return (
                f"{self.target:.2%} of scores delivered within "
                f"{self.threshold_seconds:g} s of the trigger"
            )
        return f"{self.target:.2%} of attempted scores produced"


@dataclass(frozen=True)
class SLOConfig:
    window: timedelta = timedelta(days=30)
    guard_confidence: float = 0.95
    exhaustion_window: timedelta = timedelta(hours=6)
    rules: tuple[BurnRule, ...] = ()
    slos: tuple[SLOSpec, ...] = ()

    def windows(self) -> list[timedelta]:
        """Every window any rule, the budget or the exhaustion estimate needs, shortest first."""
        found = {self.window, self.exhaustion_window}
        for rule in self.rules:
            found |= {rule.long, rule.short}
        return sorted(found)

    def for_sli(self, sli: str) -> list[SLOSpec]:
        return [s for s in self.slos if s.sli == sli]


def load_slo_config(path: Path = DEFAULT_SLO_CONFIG) -> SLOConfig:
    """Read and check config/slos.yaml; a mistake is refused with the SLO's name.

    The parsed file is reused while its modification time and size stay the same."""
    stat = path.stat()
    return _parse_slo_config(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _parse_slo_config(path: Path, mtime_ns: int, size: int) -> SLOConfig:
    """The configuration in `path` as of that modification time and size (the cache key)."""
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rules = []
    for raw in data.get("rules", []):
        rule = BurnRule(
            severity=str(raw["severity"]),
            budget_consumed=float(raw["budget_consumed"]),
            long=parse_duration(raw["long"]),
            short=parse_duration(raw["short"]),
        )
        if rule.severity not in SEVERITY_RANK:
            raise ValueError(f"burn-rate rule severity must be page or ticket, not {rule.severity}")
        if not rule.short < rule.long:
            raise ValueError(f"burn-rate rule {raw}: the short window must be shorter")
        rules.append(rule)
    # Most severe (then fastest) first: the first rule that fires names the alert's severity.
    rules.sort(key=lambda r: (-SEVERITY_RANK[r.severity], r.long))
    slos = []
    for raw in data.get("slos", []):
        spec = SLOSpec(
            name=str(raw["name"]),
            model=str(raw["model"]),
            sli=str(raw["sli"]),
            target=float(raw["target"]),
            threshold_seconds=(
                float(raw["threshold_seconds"]) if "threshold_seconds" in raw else None
            ),
        )
        if spec.sli not in SLIS:
            raise ValueError(f"SLO {spec.name}: sli must be one of {SLIS}, not {spec.sli!r}")
        if not 0.0 < spec.target < 1.0:
            raise ValueError(f"SLO {spec.name}: target must lie strictly between 0 and 1")
        if spec.sli == "latency" and spec.threshold_seconds is None:
            raise ValueError(f"SLO {spec.name}: a latency SLO needs threshold_seconds")
        slos.append(spec)
    return SLOConfig(
        window=timedelta(days=float(data.get("window_days", 30))),
        guard_confidence=float(data.get("guard_confidence", 0.95)),
        exhaustion_window=parse_duration(data.get("exhaustion_window", "6h")),
        rules=tuple(rules),
        slos=tuple(slos),
    )


# ---------------------------------------------------------------- pure arithmetic


def burn_rate(bad: npt.ArrayLike, total: npt.ArrayLike, target: float) -> F64:
    """Error rate over the window ÷ the rate the SLO allows (SRE Workbook ch. 5); NaN if empty."""
    bad_a, total_a = np.asarray(bad, dtype=float), np.asarray(total, dtype=float)
    share = np.divide(bad_a, total_a, out=np.full(np.shape(total_a), np.nan), where=total_a > 0)
    return np.asarray(share / (1.0 - target), dtype=float)


def burn_rate_threshold(
    budget_consumed: float, long_window: timedelta, slo_window: timedelta
) -> float:
    """The burn rate that spends `budget_consumed` of the budget in `long_window` (SRE Workbook
    ch. 5, recommended parameters: 2% in 1 h of 30 d → 14.4, 5% in 6 h → 6, 10% in 3 d → 1)."""
    return budget_consumed * (slo_window / long_window)


def budget_remaining(bad: npt.ArrayLike, total: npt.ArrayLike, target: float) -> F64:
    """Share of the window's error budget (1 - target) × total still unspent; < 0 overspent."""
    return np.asarray(1.0 - burn_rate(bad, total, target), dtype=float)


def hours_to_exhaustion(
    remaining: npt.ArrayLike, burn: npt.ArrayLike, slo_window: timedelta
) -> F64:
    """Hours until the remaining budget is spent at `burn` (SRE Workbook: a burn rate of 1
    spends the whole budget in one SLO window); 0 if already spent, inf if not burning."""
    rem, rate = np.asarray(remaining, dtype=float), np.asarray(burn, dtype=float)
    window_h = slo_window.total_seconds() / 3600.0
    out = np.full(np.broadcast(rem, rate).shape, np.inf)
    burning = np.nan_to_num(rate, nan=0.0) > 0
    np.divide(rem * window_h, rate, out=out, where=burning)
    return np.where(rem <= 0, 0.0, out)


def bad_share_lower_bound(bad: npt.ArrayLike, total: npt.ArrayLike, confidence: float) -> F64:
    """One-sided Clopper-Pearson lower bound of a binomial proportion (Clopper & Pearson 1934):
    the `1 - confidence` quantile of Beta(bad, total - bad + 1); 0 when nothing is bad."""
    x, n = np.asarray(bad, dtype=float), np.asarray(total, dtype=float)
    positive = (x > 0) & (n > 0)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1.0 - confidence, np.where(positive, x, 1), n - x + 1)
    return np.asarray(np.where(positive, bound, 0.0), dtype=float)


@dataclass(frozen=True)
class WindowCounts:
    """Bad and total events over one window, one element per scope (site, or replayed instant)."""

    bad: F64
    total: F64


@dataclass(frozen=True)
class SLOEvaluation:
    """One SLO evaluated for many scopes; arrays run parallel to the scopes."""

    sli: F64
    budget_remaining: F64
    hours_to_exhaustion: F64
    burn: dict[timedelta, F64]
    counts: dict[timedelta, WindowCounts]
    fired: I64  # index into the config's rules of the first rule firing; -1 none
    guard_blocked: I64  # index of the first rule only the low-traffic guard held back; -1 none


def first_firing_rule(
    counts: Mapping[timedelta, WindowCounts],
    rules: Sequence[BurnRule],
    *,
    target: float,
    slo_window: timedelta,
    guard_confidence: float,
) -> tuple[I64, I64]:
    """Multiwindow, multi-burn-rate alerting (SRE Workbook ch. 5, approach 6) with a
    low-traffic guard: a rule fires where the burn rate is at or above its factor over both
    windows and the long window's Clopper-Pearson lower bound also burns at that factor.
    A short window with no events at all neither confirms nor refutes: the long one decides."""
    size = np.shape(next(iter(counts.values())).total)
    fired = np.full(size, -1, dtype=np.int64)
    blocked = np.full(size, -1, dtype=np.int64)
    for index, rule in enumerate(rules):
        factor = rule.factor(slo_window) * (1.0 - _TOLERANCE)
        long, short = counts[rule.long], counts[rule.short]
        long_burn = np.nan_to_num(burn_rate(long.bad, long.total, target), nan=0.0)
        short_burn = burn_rate(short.bad, short.total, target)
        short_ok = (short.total == 0) | (np.nan_to_num(short_burn, nan=0.0) >= factor)
        candidate = (long_burn >= factor) & short_ok & (fired < 0)
        if not candidate.any():
            continue
        lower = np.zeros(size)
        lower[candidate] = bad_share_lower_bound(
            long.bad[candidate], long.total[candidate], guard_confidence
        ) / (1.0 - target)
        guarded = candidate & (lower >= factor)
        fired[guarded] = index
        blocked[candidate & ~guarded & (blocked < 0)] = index
    return fired, blocked


def evaluate_slo(
    counts: Mapping[timedelta, WindowCounts], spec: SLOSpec, config: SLOConfig
) -> SLOEvaluation:
    """Budget, burn rates and alerting rule of one SLO from its window counts."""
    budget = counts[config.window]
    burn = {w: burn_rate(c.bad, c.total, spec.target) for w, c in counts.items()}
    remaining = budget_remaining(budget.bad, budget.total, spec.target)
    sli = np.divide(
        budget.total - budget.bad,
        budget.total,
        out=np.full(np.shape(budget.total), np.nan),
        where=budget.total > 0,
    )
    fired, blocked = first_firing_rule(
        counts,
        config.rules,
        target=spec.target,
        slo_window=config.window,
        guard_confidence=config.guard_confidence,
    )
    return SLOEvaluation(
        sli=sli,
        budget_remaining=remaining,
        hours_to_exhaustion=hours_to_exhaustion(
            remaining, burn[config.exhaustion_window], config.window
        ),
        burn=burn,
        counts=dict(counts),
        fired=fired,
        guard_blocked=blocked,
    )


def window_start_seconds(now: npt.ArrayLike, window: timedelta) -> I64:
    """Start of a window ending at `now` (epoch seconds): exact up to an hour, else from the hour
    boundary `window` before the current hour (whole rollups plus the current partial hour)."""
    now_s = np.asarray(now, dtype=np.int64)
    width = int(window.total_seconds())
    if window <= RAW_HORIZON:
        return np.asarray(now_s - width, dtype=np.int64)
    return np.asarray(now_s // 3600 * 3600 - width, dtype=np.int64)


def bucket_sums(
    bucket_starts: npt.ArrayLike, values: npt.ArrayLike, starts: npt.ArrayLike, ends: npt.ArrayLike
) -> F64:
    """Sums of the buckets whose start lies in [start, end), for each (start, end) pair.

    `bucket_starts` is sorted; `values` has one row per bucket. Cumulative sums make each
    window O(log n), so a replay over every 5 minutes of 90 days stays cheap.
    """
    starts_a = np.asarray(bucket_starts)
    vals = np.asarray(values, dtype=float).reshape(len(starts_a), -1)
    cum = np.vstack([np.zeros((1, vals.shape[1])), np.cumsum(vals, axis=0)])
    i = np.searchsorted(starts_a, np.asarray(starts), side="left")
    j = np.searchsorted(starts_a, np.asarray(ends), side="left")
    return np.asarray(cum[j] - cum[i], dtype=float)


def replay_slo(
    bucket_starts: npt.ArrayLike,
    bad: npt.ArrayLike,
    total: npt.ArrayLike,
    instants: npt.ArrayLike,
    spec: SLOSpec,
    config: SLOConfig,
) -> SLOEvaluation:
    """Evaluate an SLO as of each instant (epoch seconds) from fine per-bucket counts.

    With 5-minute buckets and instants on the 5-minute grid every window is exact, and each
    instant's result equals a live run at that instant.
    """
    now = np.asarray(instants, dtype=np.int64)
    values = np.column_stack([np.asarray(bad, dtype=float), np.asarray(total, dtype=float)])
    counts = {}
    for window in config.windows():
        sums = bucket_sums(bucket_starts, values, window_start_seconds(now, window), now)
        counts[window] = WindowCounts(bad=sums[:, 0], total=sums[:, 1])
    return evaluate_slo(counts, spec, config)


def sli_counts(frame: pd.DataFrame, sli: str) -> tuple[F64, F64]:
    """(bad, total) of an SLI from columns n_ok, n_on_time, n_failed (error + timeout)."""
    n_ok = frame["n_ok"].to_numpy(dtype=float)
    if sli == "latency":
        return n_ok - frame["n_on_time"].to_numpy(dtype=float), n_ok
    failed = frame["n_failed"].to_numpy(dtype=float)
    return failed, n_ok + failed


# ---------------------------------------------------------------- I/O


@dataclass
class _ModelCounts:
    """Per site: hourly rollups before the current hour, and raw counts of the last hour."""

    site_ids: list[int]
    # site_id, start (epoch seconds of an hour, or of a whole day that no window starts
    # inside), n_ok, n_on_time, n_failed
    hourly: pd.DataFrame
    recent: dict[timedelta, pd.DataFrame] = field(default_factory=dict)  # window → per site


def _on_time(model: Model) -> sa.ColumnElement[bool]:
    return sa.and_(
        P.c.latency_seconds.is_not(None), P.c.latency_seconds <= model.latency_slo_seconds
    )


def _read_counts(
    conn: Connection, model: Model, site_ids: list[int], now: datetime, config: SLOConfig
) -> _ModelCounts:
    hour_now = floor_hour(now)
    longest = max(config.windows())
    first_hour = epoch_seconds(hour_now - longest) // 3600
    end_hour = epoch_seconds(hour_now) // 3600
    assert model.id is not None
    days = whole_days(first_hour, end_hour, _long_window_starts(now, config))
    if not days or not daily_ready(conn, model.id, site_ids, days[0], days[-1]):
        days = []
    in_days = {h for d in days for h in range(24 * d, 24 * d + 24)}
    hours = [h for h in range(first_hour, end_hour) if h not in in_days]
    hourly_rows = conn.execute(
        sa.select(
            R.c.site_id,
            R.c.hour,
            sa.func.sum(R.c.n_ok),
            sa.func.sum(R.c.n_on_time),
            sa.func.sum(R.c.n_error + R.c.n_timeout),
        )
        .where(R.c.model_id == model.id, R.c.site_id.in_(site_ids), R.c.hour.in_(hours))
        .group_by(R.c.site_id, R.c.hour)
    ).all()
    daily_rows = (
        conn.execute(
            sa.select(DR.c.site_id, DR.c.day, DR.c.n_ok, DR.c.n_on_time, DR.c.n_failed).where(
                model_days(DR, model.id, site_ids, days[0], days[-1]), DR.c.day.in_(days)
            )
        ).all()
        if days
        else []
    )
    # Bucket starts in epoch seconds (multiplied here: in SQL they could overflow int4).
    hourly = _bucket_frame(hourly_rows, 3600, daily_rows, 86400)
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
    rows = conn.execute(
        sa.select(*columns)
        .where(
            P.c.model_id == model.id,
            P.c.site_id.in_(site_ids),
            P.c.scored_at >= earliest,
            P.c.scored_at < now,
        )
        .group_by(P.c.site_id)
    ).all()
    # One row of 3 counts per raw window for each site that scored; zeros for the others.
    found = np.zeros((len(site_ids), 3 * len(raw_windows)))
    position = {site_id: index for index, site_id in enumerate(site_ids)}
    for site_id, *values in rows:
        found[position[site_id]] = values
    recent = {
        window: pd.DataFrame(
            {
                "site_id": site_ids,
                "n_ok": found[:, 3 * index],
                "n_on_time": found[:, 3 * index + 1],
                "n_failed": found[:, 3 * index + 2],
            }
        )
        for index, window in enumerate(raw_windows)
    }
    return _ModelCounts(site_ids=site_ids, hourly=hourly, recent=recent)


def _bucket_frame(
    hourly_rows: Sequence[Any], hour_width: int, daily_rows: Sequence[Any], day_width: int
) -> pd.DataFrame:
    """Rows of (site_id, bucket number, n_ok, n_on_time, n_failed) of two bucket widths as one
    frame of site_id, start (epoch seconds), and the three counts."""
    parts = [
        (np.asarray([tuple(row) for row in rows], dtype=np.int64).reshape(-1, 5), width)
        for rows, width in ((hourly_rows, hour_width), (daily_rows, day_width))
    ]
    values = np.vstack([array for array, _ in parts])
    return pd.DataFrame(
        {
            "site_id": values[:, 0],
            "start": np.concatenate([array[:, 1] * width for array, width in parts]),
            "n_ok": values[:, 2],
            "n_on_time": values[:, 3],
            "n_failed": values[:, 4],
        }
    )


def _long_window_starts(now: datetime, config: SLOConfig) -> set[int]:
    """Start (epoch seconds) of every window that is summed from the hourly rollups."""
    now_s = epoch_seconds(now)
    return {int(window_start_seconds(now_s, w)) for w in config.windows() if w > RAW_HORIZON}


def whole_days(first_hour: int, end_hour: int, starts: set[int]) -> list[int]:
    """Days of [first_hour, end_hour) whose 24 hourly buckets every window takes all or none
    of (no window starts inside the day), so one daily bucket can stand for them."""
    return [
        day
        for day in range(-(-first_hour // 24), end_hour // 24)
        if not any(day * 86400 < start < (day + 1) * 86400 for start in starts)
    ]


def _window_counts(
    counts: _ModelCounts, spec: SLOSpec, now: datetime, config: SLOConfig
) -> dict[timedelta, WindowCounts]:
    """Per-site counts of every window the SLO needs, parallel to `counts.site_ids`.

    A long window sums the buckets (whole hours or days from the rollups, then the current
    partial hour from raw rows) whose start lies in `[window start, now)`.
    """
    now_s = epoch_seconds(now)
    size = len(counts.site_ids)
    hourly = counts.hourly
    site = pd.Index(counts.site_ids).get_indexer(pd.Index(hourly["site_id"]))
    starts = hourly["start"].to_numpy(dtype=np.int64)
    bad, total = sli_counts(hourly, spec.sli)
    partial_bad, partial_total = sli_counts(counts.recent[timedelta(0)], spec.sli)
    partial_start = now_s // 3600 * 3600
    result: dict[timedelta, WindowCounts] = {}
    for window in config.windows():
        if window <= RAW_HORIZON:
            raw_bad, raw_total = sli_counts(counts.recent[window], spec.sli)
            result[window] = WindowCounts(bad=raw_bad, total=raw_total)
            continue
        start_s = int(window_start_seconds(now_s, window))
        inside = (site >= 0) & (starts >= start_s) & (starts < now_s)
        window_bad = _site_sums(site[inside], bad[inside], size)
        window_total = _site_sums(site[inside], total[inside], size)
        if start_s <= partial_start < now_s:
            window_bad, window_total = window_bad + partial_bad, window_total + partial_total
        result[window] = WindowCounts(bad=window_bad, total=window_total)
    return result


def _site_sums(site: I64, values: F64, size: int) -> F64:
    """Sum of `values` per site position (0 .. size - 1)."""
    return np.asarray(np.bincount(site, weights=values, minlength=size), dtype=np.float64)


def _status(evaluation: SLOEvaluation, index: int) -> Status:
    """Breach while a burn-rate rule fires, else ok. An overspent 30-day budget alone is not
    an alert (SRE Workbook: budget policy, not paging); the budget is in the detail."""
    if evaluation.counts[max(evaluation.counts)].total[index] <= 0:
        return Status.INSUFFICIENT
    if evaluation.fired[index] >= 0:
        return Status.BREACH
    return Status.OK


def _rounded(value: float, digits: int = 4) -> float | None:
    return None if not np.isfinite(value) else round(float(value), digits)


def slo_results(
    evaluation: SLOEvaluation,
    *,
    spec: SLOSpec,
    config: SLOConfig,
    model: Model,
    site_ids: Sequence[int],
    site_codes: Mapping[int, str],
    now: datetime,
) -> list[MonitorResult]:
    """One result per site: the SLI over the SLO window, its budget, burn rates and rule."""
    assert model.id is not None
    rules_text = "; ".join(r.describe(config.window) for r in config.rules)
    window_start = from_epoch(int(window_start_seconds(epoch_seconds(now), config.window)))
    results = []
    for index, site_id in enumerate(site_ids):
        status = _status(evaluation, index)
        fired = int(evaluation.fired[index])
        rule = config.rules[fired] if fired >= 0 else None
        blocked = int(evaluation.guard_blocked[index])
        burn = {
            format_duration(w): _rounded(float(b[index]), 3) for w, b in evaluation.burn.items()
        }
        counts = {
            format_duration(w): [int(c.bad[index]), int(c.total[index])]
            for w, c in evaluation.counts.items()
        }
        sli_value = _rounded(float(evaluation.sli[index]), 5)
        remaining = _rounded(float(evaluation.budget_remaining[index]))
        summary = (
            f"{spec.sli} SLO of {model.name} at {site_codes[site_id]}: "
            + (
                f"burning {burn[format_duration(rule.long)]}× over {format_duration(rule.long)} "
                f"and {burn[format_duration(rule.short)]}× over {format_duration(rule.short)} "
                f"(rule: {rule.describe(config.window)})"
                if rule is not None
                else f"SLI {sli_value} against a target of {spec.target}"
            )
            + (
                f"; {remaining:.0%} of the {format_duration(config.window)} budget left"
                if remaining is not None
                else ""
            )
        )
        results.append(
            MonitorResult(
                monitor=MONITOR_FOR_SLI[spec.sli],
                metric=spec.name,
                model_id=model.id,
                site_id=site_id,
                window_start=window_start,
                window_end=now,
                status=status,
                value=sli_value,
                n=int(evaluation.counts[config.window].total[index]),
                threshold=f"target {spec.describe()}; {rules_text}",
                runbook=RUNBOOK_FOR_SLI[spec.sli],
                detail={
                    "slo": spec.name,
                    "sli": spec.sli,
                    "target": spec.target,
                    "budget_remaining": remaining,
                    "hours_to_exhaustion": _rounded(
                        float(evaluation.hours_to_exhaustion[index]), 1
                    ),
                    "burn": burn,
                    "counts": counts,
                    "rule": rule.describe(config.window) if rule else None,
                    "severity": rule.severity if rule else None,
                    "guard_held_back": (
                        config.rules[blocked].describe(config.window) if blocked >= 0 else None
                    ),
                    "summary": summary,
                },
            )
        )
    return results


def _deployed_sites(conn: Connection, model_id: int) -> list[int]:
    D = table_of(Deployment)
    return sorted(
        conn.execute(sa.select(D.c.site_id).where(D.c.model_id == model_id).distinct()).scalars()
    )


def run_slo_monitor(
    engine: Engine,
    sli: str,
    now: datetime | None = None,
    *,
    config: SLOConfig | None = None,
    write: bool = True,
) -> list[MonitorResult]:
    """Evaluate every SLO of one SLI kind for every model × deployed site, as of `now`."""
    now = now or utcnow()
    config = config or load_slo_config()
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        if write:
            sync_daily(conn)  # whole days of the windows are read from the daily tables
        models = {
            row["name"]: Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        }
        S = table_of(Site)
        codes = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        cache: dict[str, _ModelCounts] = {}
        for spec in config.for_sli(sli):
            model = models.get(spec.model)
            if model is None or model.id is None:
                logger.warning("SLO %s names an unregistered model %s", spec.name, spec.model)
                continue
            if spec.sli == "latency" and spec.threshold_seconds != model.latency_slo_seconds:
                raise ValueError(
                    f"SLO {spec.name}: threshold_seconds {spec.threshold_seconds:g} differs from "
                    f"{model.name}'s latency_slo_seconds {model.latency_slo_seconds:g}, which the "
                    "rollups count on-time scores against; change one to match the other"
                )
            site_ids = _deployed_sites(conn, model.id)
            if not site_ids:
                continue
            if spec.model not in cache:
                cache[spec.model] = _read_counts(conn, model, site_ids, now, config)
            evaluation = evaluate_slo(
                _window_counts(cache[spec.model], spec, now, config), spec, config
            )
            results += slo_results(
                evaluation,
                spec=spec,
                config=config,
                model=model,
                site_ids=site_ids,
                site_codes=codes,
                now=now,
            )
        if write:
            write_results(conn, results, now=now)
    logger.info("%s: %d points", MONITOR_FOR_SLI[sli], len(results))
    return results


def run_latency_slo(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Registry entry: the latency SLOs of config/slos.yaml."""
    return run_slo_monitor(engine, "latency", now)


def run_availability_slo(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Registry entry: the availability SLOs of config/slos.yaml."""
    return run_slo_monitor(engine, "availability", now)
