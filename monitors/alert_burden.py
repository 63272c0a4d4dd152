"""Alert burden per model × site: alerts a clinician sees, per 100 patient-days and per unit per
shift, PPV and number needed to evaluate, and Poisson control limits for spikes and drops.

Counting. An alerting score is *shown* unless the same patient's last shown alert was less
than `snooze_hours` ago (the usual CDS re-alert suppression); the rest are duplicates. Shown
alerts per hour, unit and arm live in `alertburdenhour`, rebuilt from raw rows only for the
hours whose count of alerting scores changed (new rows; settling labels changes no alert), so a
run costs in proportion to new data; every kept hour when the snooze setting changes. A late
score changes the flags of its patient's later alerts within a snooze chain, but only its own
hour is recounted (and a later one when its own count changes).

Exposure. A model scored on a cadence (deterioration: every 4 h per inpatient) sees
n_scores × interval patient-time, so patient-days = scores × interval / 1440 min. A model
scored once per stay (readmission) is reported per 100 scored discharges instead.

Control limits (probability limits of a u-chart, Montgomery, Introduction to Statistical
Quality Control, ch. 7): the site's expected rate is its own rate over the `baseline_days`
before the window, with each baseline day's count capped at its 99.9% Poisson limit (so one
bad day does not inflate the baseline for a month). A spike is more shown alerts (or more
alerting scores) over the last `spike_window_hours` than the upper Poisson quantile of the
expected count; a drop is fewer over the last `drop_window_days` than the lower quantile (a
drop needs the longer window: at a few alerts a day no single day can fall significantly).
Only whole hours count, so a run as of any instant sees exactly the data logged before it.

Multiplicity. The spike tests look at every series (model × site) every hour, two tests a
look: 4,320 tests per series in 90 days. With a fixed 0.1% tail per test, chance spikes at
stable sites are to be expected every few months (the 90-day demo raised two). The spike
limit's tail is therefore the Šidák level that keeps the chance of one or more false spikes
per series within `family_days` at `family_alpha` (Šidák 1967): 1 - 0.95^(1/4320) = 1.19e-5 by
default. It is exact for independent tests; for these overlapping windows the family rate is
lower still (tested by simulation in tests/monitors/test_alert_burden.py). The drop test (a
ticket, over a 7-day window that moves by 1/168 of itself each hour) keeps its own
`drop_alpha`.

Detection delay: a spike is flagged in the first complete hour whose trailing window exceeds
the limit; the seeded RVH threshold misconfiguration (26% of scores alerting instead of 1%)
is flagged within its first 3 hours, asserted in tests/monitors/test_operational_demo.py.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
from scipy import stats
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status
from monitors.config import MonitorConfig
from monitors.durations import EPOCH, epoch_seconds, floor_hour
from monitors.observed_expected import observed_to_expected
from monitors.rollup_io import daily_ready, load_sites, model_days, model_hours
from monitors.runner import write_results
from store.models import (
    AlertBurdenHour,
    DailyRollup,
    Deployment,
    Model,
    Prediction,
    PredictionRollup,
    Site,
    table_of,
    utcnow,
)
from store.partitions import stored_horizon
from store.rollups import get_state, set_state

logger = logging.getLogger(__name__)

MONITOR = "alert_burden"
METRIC = "shown_alert_rate"
RUNBOOK = "alert-volume"
WM_ROLLUP = "alert_burden.rollup_updated_at"
SNOOZE_STATE = "alert_burden.snooze_hours.{model_id}"  # the snooze the kept counts were made with
HOURS_PER_CHUNK = 720  # hours recounted and written at a time
PATIENTS_PER_QUERY = 500
STREAM_ROWS = 20_000  # rows held from the database cursor at a time
LOOKBACK_SNOOZES = 2  # first lookback before a run of hours, in snooze periods
LOOKBACK_ROUNDS = 6  # longer lookbacks (each twice the last) before reading without a bound

AB = table_of(AlertBurdenHour)
DR = table_of(DailyRollup)
P = table_of(Prediction)
R = table_of(PredictionRollup)


@dataclass(frozen=True)
class AlertBurdenConfig:
    snooze_hours: float = 24.0
    spike_window_hours: int = 24
    drop_window_days: int = 7
    baseline_days: int = 28
    min_baseline_days: int = 7
    # Spike limits: at most `family_alpha` chance of any false spike per model × site series
    # in `family_days`, looked at `looks_per_day` times a day (the scheduler runs it hourly).
    family_alpha: float = 0.05
    family_days: int = 90
    looks_per_day: int = 24
    drop_alpha: float = 0.002  # two-sided level of the drop test: lower 0.1% limit
    warn_alpha: float = 0.05
    min_spike_alerts: int = 5  # fewer shown alerts is no burden, whatever the baseline
    # Floors of the over-dispersion factor of each test's window counts (quasi-Poisson). A
    # patient who keeps alerting is shown once a day for days, so weekly counts vary more
    # than Poisson even when daily ones do not (demo, 24 h snooze: daily 0.7-1.1, weekly
    # 1.8-3.7); the factor estimated from the baseline is used when it is larger.
    spike_min_dispersion: float = 1.0
    drop_min_dispersion: float = 4.0
    # Alerting scores (duplicates included) are also watched for a spike: a threshold
    # misconfigured low re-alerts the same few patients at every score, which suppression
    # hides. They are far more clustered (demo: daily dispersion 3.6-5.6).
    volume_min_dispersion: float = 4.0
    shift_starts: list[int] = field(default_factory=lambda: [7, 15, 23])  # local hours


# ---------------------------------------------------------------- pure


def shown_alerts(times: Sequence[float], snooze_seconds: float) -> list[bool]:
    """Re-alert suppression for one patient (times sorted): an alert is shown unless the
    patient's last *shown* alert was less than `snooze_seconds` before it."""
    shown: list[bool] = []
    last: float | None = None
    for t in times:
        if last is None or t - last >= snooze_seconds:
            shown.append(True)
            last = t
        else:
            shown.append(False)
    return shown


def exposure(n_scored: npt.ArrayLike, scoring_interval_minutes: int) -> npt.NDArray[np.float64]:
    """Patient-days covered by cadence scoring (scores × interval); scores themselves if none."""
    n = np.asarray(n_scored, dtype=float)
    if scoring_interval_minutes <= 0:
        return n
    return n * scoring_interval_minutes / 1440.0


SPIKE_TESTS_PER_LOOK = 2  # shown alerts, and alerting scores


def sidak_per_test(family_alpha: float, tests: int) -> float:
    """Per-test level that keeps P(any of `tests` false alarms) at `family_alpha` when the tests
    are independent: 1 - (1 - family_alpha)^(1/tests) (Šidák 1967, JASA 62:626)."""
    if not 0 < family_alpha < 1 or tests < 1:
        raise ValueError("family_alpha must be in (0, 1) and tests at least 1")
    return float(-np.expm1(np.log1p(-family_alpha) / tests))


def spike_tail(config: AlertBurdenConfig) -> float:
    """One-sided tail probability of the upper spike limit, per test and look."""
    looks = config.family_days * config.looks_per_day * SPIKE_TESTS_PER_LOOK
    return sidak_per_test(config.family_alpha, looks)


def poisson_limits(
    expected: npt.ArrayLike, alpha: float, dispersion: float = 1.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Probability limits of a c/u-chart (Montgomery, ch. 7): the alpha/2 and 1 - alpha/2
    quantiles of Poisson(expected). With overdispersion phi > 1 the quantiles are taken on the
    effective count expected/phi and scaled back (quasi-Poisson). Counts strictly outside the
    limits are out of control."""
    phi = max(1.0, dispersion)
    mu = np.expand_dims(np.asarray(expected, dtype=float) / phi, -1)
    both = stats.poisson.ppf([alpha / 2, 1 - alpha / 2], mu) * phi  # one call: it is slow
    return (
        np.asarray(np.nan_to_num(both[..., 0]), dtype=float),
        np.asarray(both[..., 1], dtype=float),
    )


def winsorised_rate(
    counts: npt.ArrayLike, exposures: npt.ArrayLike, cap_quantile: float = 0.999
) -> float:
    """Pooled Poisson rate after capping each period's count at its `cap_quantile` Poisson limit
    under the pooled rate (one-step winsorisation): robust to a single anomalous day."""
    return winsorised_rates([(counts, exposures)], cap_quantile)[0]


def winsorised_rates(
    pairs: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]], cap_quantile: float = 0.999
) -> list[float]:
    """`winsorised_rate` of each (counts, exposures) pair, with one scipy call (it is slow)."""
    arrays = [(np.asarray(c, dtype=float), np.asarray(e, dtype=float)) for c, e in pairs]
    totals = [float(e.sum()) for _, e in arrays]
    live = [i for i, total in enumerate(totals) if total > 0]
    means = [arrays[i][0].sum() / totals[i] * arrays[i][1] for i in live]
    caps = stats.poisson.ppf(cap_quantile, np.concatenate(means)) if means else np.empty(0)
    out = [float("nan")] * len(arrays)
    offset = 0
    for i in live:
        c = arrays[i][0]
        out[i] = float(np.minimum(c, caps[offset : offset + c.size]).sum() / totals[i])
        offset += c.size
    return out


@dataclass(frozen=True)
class BurdenVerdict:
    status: Status
    kind: str  # spike, drop, or ""
    spike_expected: float
    spike_limits: tuple[float, float]
    drop_expected: float
    drop_limits: tuple[float, float]
    reason: str


def judge_burden(
    *,
    spike_observed: int,
    spike_expected: float,
    drop_observed: int,
    drop_expected: float,
    config: AlertBurdenConfig,
    spike_dispersion: float = 1.0,
    drop_dispersion: float = 1.0,
    volume_observed: int = 0,
    volume_expected: float = float("nan"),
    volume_dispersion: float = 1.0,
) -> BurdenVerdict:
    """Spike tests (shown alerts, and alerting scores) over the spike window against the
    multiplicity-corrected upper tail (`spike_tail`), and a drop test of shown alerts over the
    drop window at `drop_alpha`; warn outside the `warn_alpha` limits."""
    # Every limit in one scipy call (quasi-Poisson: quantiles of expected/phi, times phi).
    phis = np.maximum(1.0, [spike_dispersion, drop_dispersion, volume_dispersion])
    mus = np.array([spike_expected, drop_expected, volume_expected], dtype=float) / phis
    tail = spike_tail(config)
    tails = [config.drop_alpha / 2, 1 - tail, config.warn_alpha / 2, 1 - config.warn_alpha / 2]
    tails.append(1 - config.drop_alpha / 2)
    q = stats.poisson.ppf(tails, mus[:, None]) * phis[:, None]
    s_lo, s_hi, _, ws_hi = (float(v) for v in q[0, :4])
    d_lo, wd_lo = float(np.nan_to_num(q[1][0])), float(np.nan_to_num(q[1][2]))
    d_hi = float(q[1][4])
    v_hi = float(q[2][1])
    enough = spike_observed >= config.min_spike_alerts

    def verdict(status: Status, kind: str, reason: str) -> BurdenVerdict:
        return BurdenVerdict(
            status, kind, spike_expected, (s_lo, s_hi), drop_expected, (d_lo, d_hi), reason
        )

    if enough and spike_observed > s_hi:
        return verdict(
            Status.BREACH,
            "spike",
            f"{spike_observed} shown alerts in {config.spike_window_hours} h against "
            f"{spike_expected:.1f} expected (upper limit {s_hi:.0f} at tail {tail:.1e})",
        )
    if enough and np.isfinite(v_hi) and volume_observed > v_hi:
        return verdict(
            Status.BREACH,
            "spike",
            f"{volume_observed} alerting scores in {config.spike_window_hours} h against "
            f"{volume_expected:.1f} expected (upper limit {v_hi:.0f} at tail {tail:.1e}); "
            f"{spike_observed} patients shown an alert",
        )
    if drop_observed < d_lo:
        return verdict(
            Status.BREACH,
            "drop",
            f"{drop_observed} shown alerts in {config.drop_window_days} d against "
            f"{drop_expected:.1f} expected (lower {config.drop_alpha / 2:.1%} limit {d_lo:.0f})",
        )
    if (enough and spike_observed > ws_hi) or drop_observed < wd_lo:
        return verdict(Status.WARN, "", "outside the 95% control limits")
    return verdict(Status.OK, "", "within the control limits")


def shift_of(hour_start_utc: datetime, tz: str, starts: Sequence[int]) -> tuple[str, int]:
    """(local date the shift began, shift start hour) of the shift containing a UTC hour."""
    local = hour_start_utc.astimezone(ZoneInfo(tz))
    ordered = sorted(starts)
    earlier = [s for s in ordered if s <= local.hour]
    if earlier:
        return local.date().isoformat(), earlier[-1]
    return (local.date() - timedelta(days=1)).isoformat(), ordered[-1]


def by_unit_and_shift(
    hourly: pd.DataFrame, *, tz: str, starts: Sequence[int], scoring_interval_minutes: int
) -> pd.DataFrame:
    """Shown alerts per unit per local shift from hourly rows (hour, unit, n_shown, n_scored)."""
    columns = ["shift_date", "shift", "unit", "shown", "scored", "per_100_patient_days"]
    if hourly.empty:
        return pd.DataFrame(columns=columns)
    frame = hourly.copy()
    labels = [shift_of(EPOCH + timedelta(hours=int(h)), tz, starts) for h in frame["hour"].tolist()]
    frame["shift_date"] = [d for d, _ in labels]
    frame["shift"] = [f"{s:02d}:00" for _, s in labels]
    out = (
        frame.groupby(["shift_date", "shift", "unit"], as_index=False)
        .agg(shown=("n_shown", "sum"), scored=("n_scored", "sum"))
        .sort_values(["shift_date", "shift", "unit"])
    )
    days = exposure(out["scored"], scoring_interval_minutes)
    out["per_100_patient_days"] = np.where(days > 0, 100 * out["shown"] / np.maximum(days, 1e-9), 0)
    return out[columns].reset_index(drop=True)


# ---------------------------------------------------------------- the hourly table
#
# Recounting an hour needs each alerting patient's earlier alerts, because whether an alert is
# shown depends on the patient's last *shown* alert. That chain has a bounded memory: an alert
# at least `snooze` after the patient's previous alert is shown whatever came before it, and
# nothing after it depends on anything before it (a reset). So a replay that starts anywhere
# gives the true flags from its first reset on, and a patient's alerts are read only back to a
# lookback that contains such a reset (`first_reset`); the few patients without one are read
# again with a longer lookback, and at last with none.


def first_reset(times: Sequence[int], since: int | None, snooze_seconds: float) -> int | None:
    """Index of the first of one patient's alerts (epoch seconds, sorted, those at or after
    `since`) whose flag does not depend on the alerts before `since`; None if there is none.

    With `since` None the list is the patient's whole history and the first alert is a reset.
    The first listed alert is a reset when it is at least `snooze` after `since`: its unlisted
    predecessor, if any, is earlier than `since`.
    """
    previous = since
    for i, t in enumerate(times):
        if previous is None or t - previous >= snooze_seconds:
            return i
        previous = t
    return None


CountKey = tuple[int, str, str, int]  # site, unit, arm, hour
# One alert as read for the replay: (encounter_key, epoch seconds, site_id, unit, arm, hour).
AlertRow = tuple[str, int, int, str, str, int]


def tally_patient(
    alerts: Sequence[AlertRow],
    *,
    snooze_seconds: float,
    since: int | None,
    wanted: set[int],
    counts: dict[CountKey, list[int]],
) -> bool:
    """Add one patient's alerting and shown alerts in the `wanted` hours to `counts`.

    `alerts`: the patient's alerts sorted by time, every one from `since` (epoch seconds;
    None: the whole history) to the last wanted hour. Returns False, counting nothing, when
    they do not decide the wanted flags.
    """
    first_wanted = next((i for i, a in enumerate(alerts) if a[5] in wanted), None)
    if first_wanted is None:
        return True
    times = [a[1] for a in alerts]
    reset = first_reset(times, since, snooze_seconds)
    if reset is None or reset > first_wanted:
        return False
    flags = shown_alerts(times[reset:], snooze_seconds)
    for (_, _, site_id, unit, arm, hour), shown in zip(alerts[reset:], flags, strict=True):
        if hour in wanted:
            slot = counts.setdefault((site_id, unit, arm, hour), [0, 0])
            slot[0] += 1
            slot[1] += shown
    return True


def clusters(hours: Sequence[int], *, gap: int, limit: int) -> list[list[int]]:
    """Sorted distinct hours split where two are more than `gap` apart, at most `limit` each."""
    out: list[list[int]] = []
    for hour in sorted(set(hours)):
        if out and hour - out[-1][-1] <= gap and len(out[-1]) < limit:
            out[-1].append(hour)
        else:
            out.append([hour])
    return out


def lookback_hours(snooze_seconds: float) -> list[int | None]:
    """Successive lookbacks (hours before a chunk's first hour) for patients not yet decided."""
    first = max(1, math.ceil(LOOKBACK_SNOOZES * snooze_seconds / 3600.0))
    return [first * 2**i for i in range(LOOKBACK_ROUNDS)] + [None]


def _epoch_seconds_sql(dialect: str) -> Any:
    """`epoch_seconds(scored_at)` computed by the database (whole seconds, floored): reading
    timestamps as Python datetimes would cost more than the replay itself."""
    if dialect == "sqlite":  # stored as naive UTC text
        return sa.cast(sa.func.strftime("%s", P.c.scored_at), sa.BigInteger)
    return sa.cast(sa.func.floor(sa.extract("epoch", P.c.scored_at)), sa.BigInteger)


# The alert index's order, so no sort is needed. Alerts equal in all of these are counted
# alike in whichever order they come.
ALERT_ORDER = (P.c.encounter_key, P.c.scored_at, P.c.scored_hour, P.c.site_id, P.c.unit, P.c.arm)


def _alert_columns(dialect: str) -> tuple[Any, ...]:
    """The columns of an AlertRow."""
    return (
        P.c.encounter_key,
        _epoch_seconds_sql(dialect).label("t"),
        P.c.site_id,
        P.c.unit,
        P.c.arm,
        P.c.scored_hour,
    )


def _tally_stream(
    rows: Iterable[AlertRow],
    *,
    snooze_seconds: float,
    since: int | None,
    wanted: set[int],
    counts: dict[CountKey, list[int]],
) -> list[str]:
    """Tally rows ordered by (encounter_key, scored_at); the patients left undecided."""
    undecided = []
    for key, group in itertools.groupby(rows, key=itemgetter(0)):
        alerts = list(group)
        if not tally_patient(
            alerts, snooze_seconds=snooze_seconds, since=since, wanted=wanted, counts=counts
        ):
            undecided.append(key)
    return undecided


def _range_alerts_query(
    dialect: str, model_id: int, first_hour: int, last_hour: int
) -> sa.Select[Any]:
    """Every alert of the model in [first_hour, last_hour], patient by patient, in the order
    of the covering alert index, which holds every column read: one sequential pass, no sort
    and no table reads. (`scored_hour + 0` keeps the planner off the hour index, whose table
    reads in scattered order cost far more.)"""
    hour = P.c.scored_hour + 0
    return (
        sa.select(*_alert_columns(dialect))
        .where(P.c.model_id == model_id, P.c.alert, hour >= first_hour, hour <= last_hour)
        .order_by(*ALERT_ORDER)
    )


def _range_alerts(conn: Connection, model_id: int, first_hour: int, last_hour: int) -> Any:
    """The rows of `_range_alerts_query`, streamed from the database (a server-side cursor on
    PostgreSQL) in batches of STREAM_ROWS: memory holds one batch, not the run."""
    query = _range_alerts_query(conn.dialect.name, model_id, first_hour, last_hour)
    return conn.execute(query.execution_options(yield_per=STREAM_ROWS))


def _alerting_patients(conn: Connection, model_id: int, hours: Sequence[int]) -> list[str]:
    return sorted(
        conn.execute(
            sa.select(P.c.encounter_key)
            .where(P.c.model_id == model_id, P.c.scored_hour.in_(hours), P.c.alert)
            .distinct()
        ).scalars()
    )


def _patients_alerts_query(
    dialect: str, model_id: int, keys: Sequence[str], since: int | None, last_hour: int
) -> sa.Select[Any]:
    """The alerts of some patients from `since` (epoch seconds) to `last_hour`, through the
    partial index of alerts by (model, patient, time)."""
    query = (
        sa.select(*_alert_columns(dialect))
        .where(
            P.c.model_id == model_id,
            P.c.alert,
            P.c.encounter_key.in_(keys),
            P.c.scored_at < EPOCH + timedelta(hours=last_hour + 1),
        )
        .order_by(*ALERT_ORDER)
    )
    if since is not None:
        query = query.where(P.c.scored_at >= EPOCH + timedelta(seconds=since))
    return query


def count_alert_hours(
    conn: Connection, model_id: int, hours: Sequence[int], *, snooze_seconds: float
) -> dict[CountKey, list[int]]:
    """[alerting, shown] per (site, unit, arm, hour) of one run of nearby `hours`.

    Many hours: one ordered pass over the model's alerts from a lookback before the first
    hour. A few: only the patients alerting in them, through the partial alert index. Either
    way, patients whose lookback holds no reset are read again further back.
    """
    wanted = set(hours)
    first, last = min(hours), max(hours)
    counts: dict[CountKey, list[int]] = {}
    lookbacks = lookback_hours(snooze_seconds)
    if len(wanted) >= (lookbacks[0] or 0):
        start = first - (lookbacks[0] or 0)
        undecided = _tally_stream(
            _range_alerts(conn, model_id, start, last),
            snooze_seconds=snooze_seconds,
            since=start * 3600,
            wanted=wanted,
            counts=counts,
        )
        lookbacks = lookbacks[1:]
    else:
        undecided = _alerting_patients(conn, model_id, hours)
    for back in lookbacks:
        if not undecided:
            break
        since = None if back is None else (first - back) * 3600
        left: list[str] = []
        for i in range(0, len(undecided), PATIENTS_PER_QUERY):
            keys = undecided[i : i + PATIENTS_PER_QUERY]
            query = _patients_alerts_query(conn.dialect.name, model_id, keys, since, last)
            rows = conn.execute(query).all()
            left += _tally_stream(
                rows, snooze_seconds=snooze_seconds, since=since, wanted=wanted, counts=counts
            )
        undecided = left
    assert not undecided, "a replay without a lower bound decides every patient"
    return counts


def _changed_hours(conn: Connection, model_id: int, since: datetime) -> tuple[list[int], datetime]:
    """Hours whose rollups changed since `since` and whose alerts no longer match the kept
    counts, and the newest rollup stamp seen.

    Settling labels re-stamps an hour's rollups but never changes its alerts: a prediction's
    alert flag is fixed when it is logged, and rows are only added (or retention removes whole
    hours). So an hour needs recounting only if its number of alerting scores differs from the
    kept one; the hours whose only change is settled labels (most of a cycle's) are skipped.
    """
    # `+ 0`: the updated_at index finds the few new rows; the model's (model_id, site_id, hour)
    # index range would be its whole history.
    rows = conn.execute(
        sa.select(R.c.hour, sa.func.max(R.c.updated_at))
        .where((R.c.model_id + 0) == model_id, R.c.updated_at > since)
        .group_by(R.c.hour)
    ).all()
    newest = max((r[1] for r in rows), default=since)
    hours = sorted(int(r[0]) for r in rows)
    if not hours:
        return [], newest
    sites = sorted(load_sites(conn))
    logged, kept = (
        _alerts_per_hour(conn, R, model_id, sites, hours),
        _alerts_per_hour(conn, AB, model_id, sites, hours),
    )
    return [h for h in hours if logged.get(h, 0) != kept.get(h, 0)], newest


def _alerts_per_hour(
    conn: Connection, table: sa.Table, model_id: int, sites: Sequence[int], hours: Sequence[int]
) -> dict[int, int]:
    """Alerting scores per hour of `hours` in a rollup table, read as index ranges per site."""
    out: dict[int, int] = {}
    for i in range(0, len(hours), HOURS_PER_CHUNK):
        chunk = hours[i : i + HOURS_PER_CHUNK]
        out.update(
            (int(hour), int(n or 0))
            for hour, n in conn.execute(
                sa.select(table.c.hour, sa.func.sum(table.c.n_alert))
                .where(
                    table.c.model_id == model_id,
                    table.c.site_id.in_(sites),
                    table.c.hour.in_(chunk),
                )
                .group_by(table.c.hour)
            )
        )
    return out


def rebuild_alert_hours(
    conn: Connection, model: Model, hours: Sequence[int], *, snooze_hours: float, now: datetime
) -> int:
    """Recount alerting and shown alerts of `hours` for one model from raw predictions.

    Hours are recounted in runs of nearby hours (at most HOURS_PER_CHUNK each), each written
    before the next is read, so memory holds one run's counts and one batch of rows.
    """
    assert model.id is not None
    snooze = snooze_hours * 3600.0
    gap = lookback_hours(snooze)[0] or 1
    written = 0
    for chunk in clusters(hours, gap=gap, limit=HOURS_PER_CHUNK):
        counts = count_alert_hours(conn, model.id, chunk, snooze_seconds=snooze)
        conn.execute(sa.delete(AB).where(AB.c.model_id == model.id, AB.c.hour.in_(chunk)))
        if counts:
            conn.execute(
                sa.insert(AB),
                [
                    {
                        "model_id": model.id,
                        "site_id": site_id,
                        "unit": unit,
                        "arm": arm,
                        "hour": hour,
                        "n_alert": n_alert,
                        "n_shown": n_shown,
                        "updated_at": now,
                    }
                    for (site_id, unit, arm, hour), (n_alert, n_shown) in counts.items()
                ],
            )
        written += len(counts)
    return written


def update_alert_hours(conn: Connection, models: Sequence[Model], config: MonitorConfig) -> int:
    """Bring `alertburdenhour` up to date with every rollup hour changed since the last call.

    A model's kept hours (those not yet past retention) are all recounted when its snooze
    setting differs from the one they were counted with: a shown alert depends on it.
    """
    since = datetime.fromisoformat(get_state(conn, WM_ROLLUP, EPOCH.isoformat()))
    newest = since
    written = 0
    for model in models:
        assert model.id is not None
        cfg = config.for_monitor(MONITOR, AlertBurdenConfig, model=model.name)
        hours, seen = _changed_hours(conn, model.id, since)
        snooze_key, snooze = SNOOZE_STATE.format(model_id=model.id), repr(cfg.snooze_hours)
        counted_with = get_state(conn, snooze_key, "")
        if counted_with and counted_with != snooze:
            hours = sorted(set(hours) | set(_kept_hours(conn, model.id)))
            logger.info("alert_burden: %s snooze changed; %d hours", model.name, len(hours))
        if counted_with != snooze:
            set_state(conn, snooze_key, snooze)
        if hours:
            written += rebuild_alert_hours(
                conn, model, hours, snooze_hours=cfg.snooze_hours, now=utcnow()
            )
        newest = max(newest, seen)
    set_state(conn, WM_ROLLUP, newest.isoformat())
    return written


def _kept_hours(conn: Connection, model_id: int) -> list[int]:
    """The model's hours in `alertburdenhour` whose raw rows retention has not removed."""
    horizon = stored_horizon(conn)
    query = sa.select(AB.c.hour).where(AB.c.model_id == model_id).distinct()
    if horizon is not None:
        query = query.where(AB.c.hour >= horizon)
    return sorted(int(h) for h in conn.execute(query).scalars())


# ---------------------------------------------------------------- the monitor


def _hourly_frame(
    conn: Connection,
    model_id: int,
    first_hour: int,
    end_hour: int,
    *,
    site_ids: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Per site (of `site_ids`; default every site) and hour: scored, alerting and shown counts,
    and settled alert outcomes. One index range per site, not the model's whole history."""
    site_ids = load_sites(conn) if site_ids is None else site_ids
    rollups = pd.DataFrame(
        conn.execute(
            sa.select(
                R.c.site_id,
                R.c.hour,
                sa.func.sum(R.c.n_ok).label("n_scored"),
                sa.func.sum(R.c.n_alert_settled).label("n_alert_settled"),
                sa.func.sum(R.c.n_alert_positive).label("n_alert_positive"),
            )
            .where(model_hours(R, model_id, site_ids, first_hour, end_hour))
            .group_by(R.c.site_id, R.c.hour)
        ).all(),
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
            .where(model_hours(AB, model_id, site_ids, first_hour, end_hour))
            .group_by(AB.c.site_id, AB.c.hour)
        ).all(),
        columns=["site_id", "hour", "n_alert", "n_shown"],
    )
    frame = rollups.astype(float).merge(alerts.astype(float), on=["site_id", "hour"], how="outer")
    return frame.fillna(0.0).astype({"site_id": int, "hour": int})


@dataclass(frozen=True)
class HourlySeries:
    """Dense counts of one site from `first_hour` on, per period of `step` hours (1, or 24 for
    day-long periods starting at `first_hour`'s hour of day), with running sums for O(1)
    windows. With day-long periods every window asked for must start and end on a period
    boundary (a whole number of days from `first_hour`)."""

    first_hour: int
    cumulative: dict[str, npt.NDArray[np.float64]]
    step: int = 1

    FIELDS = ("n_scored", "n_alert", "n_shown", "n_alert_settled", "n_alert_positive")

    @classmethod
    def from_frame(cls, hourly: pd.DataFrame, first_hour: int, end_hour: int) -> HourlySeries:
        """From rows (hour, and the FIELDS columns) of one site; missing hours count zero."""
        size = max(end_hour - first_hour, 0)
        cumulative = {}
        inside = hourly[(hourly["hour"] >= first_hour) & (hourly["hour"] < end_hour)]
        index = inside["hour"].to_numpy(dtype=np.int64) - first_hour
        for name in cls.FIELDS:
            dense = np.zeros(size)
            if name in inside:
                np.add.at(dense, index, inside[name].to_numpy(dtype=float))
            cumulative[name] = np.concatenate([[0.0], np.cumsum(dense)])
        return cls(first_hour, cumulative)

    def total(self, name: str, start_hour: int, end_hour: int) -> float:
        """Sum of `name` over hours [start_hour, end_hour), clipped to the series."""
        cum = self.cumulative[name]
        i = int(np.clip((start_hour - self.first_hour) // self.step, 0, len(cum) - 1))
        j = int(np.clip((end_hour - self.first_hour) // self.step, 0, len(cum) - 1))
        return float(cum[j] - cum[i]) if j > i else 0.0

    def sums(self, name: str, starts: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.float64]:
        cum = self.cumulative[name]
        i = np.clip((starts - self.first_hour) // self.step, 0, len(cum) - 1)
        j = np.clip((starts + width - self.first_hour) // self.step, 0, len(cum) - 1)
        return np.asarray(cum[j] - cum[i], dtype=float)


ROLLUP_FIELDS = ("n_scored", "n_alert_settled", "n_alert_positive")  # n_scored: n_ok summed


def _day_parts(
    conn: Connection,
    model_id: int,
    site_ids: Sequence[int],
    first_hour: int,
    last_hour: int,
    hour_of_day: sa.ColumnElement[bool],
) -> list[tuple[int, int, float, float, float]]:
    """(site, day, ROLLUP_FIELDS) summed per day over the hours [first_hour, last_hour) whose
    hour of day passes `hour_of_day`. The condition is on the index's hour, so SQLite reads
    only the matching rows from the table."""
    day = (R.c.hour // 24).label("day")
    rows = conn.execute(
        sa.select(
            R.c.site_id,
            day,
            sa.func.sum(R.c.n_ok),
            sa.func.sum(R.c.n_alert_settled),
            sa.func.sum(R.c.n_alert_positive),
        )
        .where(model_hours(R, model_id, site_ids, first_hour, last_hour), hour_of_day)
        .group_by(R.c.site_id, day)
    ).all()
    return [(int(a), int(d), float(x or 0), float(y or 0), float(z or 0)) for a, d, x, y, z in rows]


def _add_rows(
    out: npt.NDArray[np.float64],
    rows: Sequence[tuple[Any, ...]],
    row_of: dict[int, int],
    first: int,
    sign: float,
) -> None:
    """Add (site, day, values...) rows into out[site row, day - first, :] (skipping others)."""
    if not rows:
        return
    data = np.array([r[2:] for r in rows], dtype=float)
    sites = np.array([row_of.get(int(r[0]), -1) for r in rows], dtype=np.int64)
    days = np.array([int(r[1]) for r in rows], dtype=np.int64) - first
    keep = (sites >= 0) & (days >= 0) & (days < out.shape[1])
    np.add.at(out, (sites[keep], days[keep]), sign * data[keep])


def _daily_series(
    conn: Connection, model_id: int, site_ids: Sequence[int], first_hour: int, end_hour: int
) -> dict[int, HourlySeries] | None:
    """Each site's series over [first_hour, end_hour) in day-long periods that end at
    `end_hour` (a whole number of days after `first_hour`), or None when the daily rollups
    are not current for those days.

    A period is [24d + r, 24d + 24 + r) with r = end_hour's hour of day: the day d's rollups
    less its first r hours plus the first r hours of day d + 1 (or, for r > 12, the last
    24 - r hours of day d plus day d + 1 less its last 24 - r hours). Whole days come from
    `dailyrollup`, so only min(r, 24 - r) hours a day are read from the hourly rollups. Counts
    are whole numbers, so the sums are exactly the hourly ones. Alert counts come from the
    hourly `alertburdenhour` (a row per hour with alerts only).
    """
    periods = (end_hour - first_hour) // 24
    r = end_hour % 24
    first_day = first_hour // 24
    last_day = first_day + periods  # the day holding end_hour (or starting at it)
    if not daily_ready(conn, model_id, site_ids, first_day, last_day):
        return None
    row_of = {site_id: i for i, site_id in enumerate(site_ids)}
    rollups = np.zeros((len(site_ids), periods, len(ROLLUP_FIELDS)))
    # Period k holds day first_day + k (head scheme) or first_day + k + 1 (tail scheme) whole.
    tail = r > 12
    whole = first_day + 1 if tail else first_day
    daily = conn.execute(
        sa.select(
            DR.c.site_id, DR.c.day, DR.c.n_ok, DR.c.n_alert_settled, DR.c.n_alert_positive
        ).where(model_days(DR, model_id, site_ids, whole, whole + periods - 1))
    ).all()
    _add_rows(rollups, daily, row_of, whole, 1.0)
    if tail:  # + last 24 - r hours of day first_day + k, - those of day first_day + k + 1
        parts = _day_parts(
            conn, model_id, site_ids, 24 * first_day, 24 * (last_day + 1), R.c.hour % 24 >= r
        )
        _add_rows(rollups, parts, row_of, first_day, 1.0)
        _add_rows(rollups, parts, row_of, first_day + 1, -1.0)
    elif r > 0:  # - first r hours of day first_day + k, + those of day first_day + k + 1
        parts = _day_parts(conn, model_id, site_ids, 24 * first_day, end_hour, R.c.hour % 24 < r)
        _add_rows(rollups, parts, row_of, first_day, -1.0)
        _add_rows(rollups, parts, row_of, first_day + 1, 1.0)
    alerts = np.zeros((len(site_ids), periods, 2))
    alert_rows = conn.execute(
        sa.select(AB.c.site_id, AB.c.hour, AB.c.n_alert, AB.c.n_shown).where(
            model_hours(AB, model_id, site_ids, first_hour, end_hour)
        )
    ).all()
    if alert_rows:
        values = np.array([tuple(row) for row in alert_rows], dtype=np.int64)
        sites = np.array([row_of[int(s)] for s in values[:, 0]], dtype=np.int64)
        np.add.at(alerts, (sites, (values[:, 1] - first_hour) // 24), values[:, 2:].astype(float))
    columns = {
        "n_scored": rollups[..., 0],
        "n_alert": alerts[..., 0],
        "n_shown": alerts[..., 1],
        "n_alert_settled": rollups[..., 1],
        "n_alert_positive": rollups[..., 2],
    }
    zero = np.zeros((len(site_ids), 1))
    cumulative = {
        name: np.concatenate([zero, np.cumsum(values, axis=1)], axis=1)
        for name, values in columns.items()
    }
    return {
        site_id: HourlySeries(
            first_hour, {name: cum[i] for name, cum in cumulative.items()}, step=24
        )
        for site_id, i in row_of.items()
    }


def dispersion(counts: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """Pearson dispersion Σ (c - e)² / e / (k - 1) of counts against their expectations, floored
    at 1 (quasi-Poisson; McCullagh & Nelder, Generalized Linear Models, 2nd ed., §4.5)."""
    c, e = np.asarray(counts, dtype=float), np.asarray(expected, dtype=float)
    keep = e > 0
    if keep.sum() < 2:
        return 1.0
    return max(1.0, float(((c[keep] - e[keep]) ** 2 / e[keep]).sum() / (keep.sum() - 1)))


BaselineSpec = tuple[int, int, str]  # (before, width, count)


def _baselines(
    series: HourlySeries,
    specs: Sequence[BaselineSpec],
    *,
    config: AlertBurdenConfig,
    interval: int,
) -> list[tuple[float, float, float]]:
    """For each (before, width, count): the winsorised rate of `count` over the
    `baseline_days` before `before`, its days with scoring, and the dispersion of its
    overlapping `width`-hour sums (stepping by a day); the rates in one scipy call."""
    days = np.arange(1, config.baseline_days + 1, dtype=np.int64)
    inputs = []
    for before, _, count in specs:
        day_starts = before - 24 * days
        shown = series.sums(count, day_starts, 24)
        scored = series.sums("n_scored", day_starts, 24)
        active = scored > 0
        inputs.append((shown[active], exposure(scored[active], interval)))
    rates = winsorised_rates([pair for pair in inputs if pair[0].size])
    out = []
    for (before, width, count), (shown, _) in zip(specs, inputs, strict=True):
        if not shown.size:
            out.append((float("nan"), 0.0, 1.0))
            continue
        rate = rates.pop(0)
        starts = before - width - 24 * np.arange(0, max(config.baseline_days - width // 24, 1))
        window_shown = series.sums(count, starts, width)
        window_exposure = exposure(series.sums("n_scored", starts, width), interval)
        out.append((rate, float(shown.size), dispersion(window_shown, rate * window_exposure)))
    return out


def _floored(value: float, floor: float) -> float:
    return max(value, floor)


def _finite(value: float | None, digits: int = 3) -> float | None:
    """JSON-safe: NaN and infinities become None (PostgreSQL's json refuses NaN)."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def burden_series(
    series: HourlySeries, *, end_hour: int, scoring_interval_minutes: int, config: AlertBurdenConfig
) -> dict[str, Any]:
    """Everything the monitor judges for one site as of the hour boundary `end_hour`."""
    spike_width, drop_width = config.spike_window_hours, 24 * config.drop_window_days
    spike_start, drop_start = end_hour - spike_width, end_hour - drop_width
    (
        (spike_rate, spike_days, spike_phi),
        (volume_rate, _, volume_phi),
        (
            drop_rate,
            drop_days,
            drop_phi,
        ),
    ) = _baselines(
        series,
        [
            (spike_start, spike_width, "n_shown"),
            (spike_start, spike_width, "n_alert"),
            (drop_start, drop_width, "n_shown"),
        ],
        config=config,
        interval=scoring_interval_minutes,
    )
    spike_exposure = float(
        exposure(series.total("n_scored", spike_start, end_hour), scoring_interval_minutes)
    )
    drop_exposure = float(
        exposure(series.total("n_scored", drop_start, end_hour), scoring_interval_minutes)
    )
    settled_start = end_hour - 24 * config.baseline_days
    if spike_days < config.min_baseline_days:
        spike_rate = volume_rate = float("nan")
    if drop_days < config.min_baseline_days:
        drop_rate = float("nan")
    return {
        "spike_observed": int(series.total("n_shown", spike_start, end_hour)),
        "spike_alerting": int(series.total("n_alert", spike_start, end_hour)),
        "spike_exposure": spike_exposure,
        "spike_expected": spike_rate * spike_exposure,
        "spike_dispersion": _floored(spike_phi, config.spike_min_dispersion),
        "spike_baseline_days": spike_days,
        "volume_expected": volume_rate * spike_exposure,
        "volume_dispersion": _floored(volume_phi, config.volume_min_dispersion),
        "drop_observed": int(series.total("n_shown", drop_start, end_hour)),
        "drop_exposure": drop_exposure,
        "drop_expected": drop_rate * drop_exposure,
        "drop_dispersion": _floored(drop_phi, config.drop_min_dispersion),
        "drop_baseline_days": drop_days,
        "baseline_rate": spike_rate,
        "alert_settled": int(series.total("n_alert_settled", settled_start, end_hour)),
        "alert_positive": int(series.total("n_alert_positive", settled_start, end_hour)),
    }


def burden_result(
    series: dict[str, Any],
    *,
    model: Model,
    site_id: int,
    site_code: str,
    end_hour: int,
    now: datetime,
    config: AlertBurdenConfig,
) -> MonitorResult:
    """The site's point: shown alerts per 100 patient-days over the spike window, and status."""
    assert model.id is not None
    per = "patient-days" if model.scoring_interval_minutes > 0 else "scored discharges"
    # A test whose baseline is too short is skipped (its expectation is NaN).
    judgeable = np.isfinite(series["spike_expected"]) or np.isfinite(series["drop_expected"])
    observed, exposure_now = series["spike_observed"], series["spike_exposure"]
    rate = observed_to_expected(observed, exposure_now / 100.0) if exposure_now > 0 else None
    if not judgeable or exposure_now <= 0:
        verdict = None
        status = Status.INSUFFICIENT
        reason = (
            f"baseline has {series['spike_baseline_days']:.0f} days of scoring "
            f"(needs {config.min_baseline_days})"
            if exposure_now > 0
            else "nothing scored in the window"
        )
    else:
        verdict = judge_burden(
            spike_observed=observed,
            spike_expected=series["spike_expected"],
            drop_observed=series["drop_observed"],
            drop_expected=series["drop_expected"],
            config=config,
            spike_dispersion=series["spike_dispersion"],
            drop_dispersion=series["drop_dispersion"],
            volume_observed=series["spike_alerting"],
            volume_expected=series["volume_expected"],
            volume_dispersion=series["volume_dispersion"],
        )
        status, reason = verdict.status, verdict.reason
    ppv = series["alert_positive"] / series["alert_settled"] if series["alert_settled"] else None
    kind = verdict.kind if verdict else ""
    summary = (
        f"alert {kind} for {model.name} at {site_code}: {reason}"
        if kind
        else f"{model.name} at {site_code}: {reason}"
    )
    window_end = EPOCH + timedelta(hours=end_hour)
    return MonitorResult(
        monitor=MONITOR,
        metric=METRIC,
        model_id=model.id,
        site_id=site_id,
        window_start=window_end - timedelta(hours=config.spike_window_hours),
        window_end=window_end,
        status=status,
        value=None if rate is None or rate.ratio is None else round(rate.ratio, 3),
        ci_low=None if rate is None or rate.ci_low is None else round(rate.ci_low, 3),
        ci_high=None if rate is None or rate.ci_high is None else round(rate.ci_high, 3),
        n=observed,
        threshold=(
            f"shown alerts per 100 {per} against Poisson limits of the site's "
            f"{config.baseline_days}-day rate: a spike over {config.spike_window_hours} h above "
            f"the upper limit at tail {spike_tail(config):.1e} per hourly look (a "
            f"{config.family_alpha:.0%} chance of a false spike per site in "
            f"{config.family_days} d), a drop over {config.drop_window_days} d below the lower "
            f"{config.drop_alpha / 2:.1%} limit"
        ),
        runbook=RUNBOOK,
        detail={
            "per": per,
            "exposure": _finite(exposure_now),
            "shown": observed,
            "alerting_scores": series["spike_alerting"],
            "duplicates_suppressed": series["spike_alerting"] - observed,
            "expected": _finite(series["spike_expected"]),
            "spike_limits": [_finite(v) for v in verdict.spike_limits] if verdict else None,
            "drop_window_days": config.drop_window_days,
            "drop_observed": series["drop_observed"],
            "drop_expected": _finite(series["drop_expected"]),
            "drop_limits": [_finite(v) for v in verdict.drop_limits] if verdict else None,
            "volume_expected": _finite(series["volume_expected"]),
            "dispersion": {
                "shown": round(series["spike_dispersion"], 2),
                "alerting": round(series["volume_dispersion"], 2),
                "drop": round(series["drop_dispersion"], 2),
            },
            "baseline_per_100": _finite(100 * series["baseline_rate"]),
            "ppv": None if ppv is None else round(ppv, 4),
            "nne": None if not ppv else round(1 / ppv, 1),
            "alerts_settled": series["alert_settled"],
            "kind": kind,
            "severity": "page" if kind == "spike" else ("ticket" if kind == "drop" else None),
            "reason": reason,
            "summary": summary,
        },
    )


def run_alert_burden(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Update the hourly alert counts, then judge each model × deployed site as of `now`."""
    now = now or utcnow()
    end_hour = epoch_seconds(floor_hour(now)) // 3600
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        update_alert_hours(conn, models, config)
        S, D = table_of(Site), table_of(Deployment)
        codes = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        for model in models:
            assert model.id is not None
            site_ids = sorted(
                conn.execute(
                    sa.select(D.c.site_id).where(D.c.model_id == model.id).distinct()
                ).scalars()
            )
            configs = {
                s: config.for_monitor(MONITOR, AlertBurdenConfig, model=model.name, site=codes[s])
                for s in site_ids
            }
            widest = max(
                (
                    24 * (c.baseline_days + c.drop_window_days) + c.spike_window_hours
                    for c in configs.values()
                ),
                default=0,
            )
            by_site = (
                _daily_series(conn, model.id, site_ids, end_hour - widest, end_hour)
                if site_ids and all(c.spike_window_hours % 24 == 0 for c in configs.values())
                else None
            )
            if by_site is None:
                hourly = _hourly_frame(
                    conn, model.id, end_hour - widest, end_hour, site_ids=site_ids
                )
                by_site = {
                    site_id: HourlySeries.from_frame(
                        hourly[hourly["site_id"] == site_id], end_hour - widest, end_hour
                    )
                    for site_id in site_ids
                }
            for site_id in site_ids:
                cfg = configs[site_id]
                series = burden_series(
                    by_site[site_id],
                    end_hour=end_hour,
                    scoring_interval_minutes=model.scoring_interval_minutes,
                    config=cfg,
                )
                results.append(
                    burden_result(
                        series,
                        model=model,
                        site_id=site_id,
                        site_code=codes[site_id],
                        end_hour=end_hour,
                        now=now,
                        config=cfg,
                    )
                )
        write_results(conn, results, now=now)
    logger.info("alert_burden: %d points", len(results))
    return results
