"""The monthly governance report: a typed picture of one month, gathered from the store.

`gather_report` reads the month's rollups, heartbeats, alerts, incidents, canary judgements,
drift points and audit log, and passes them through the monitors' own arithmetic (O:E,
calibration, discrimination, SLO budgets, alert-burden limits, feed tiers) over the month's
window. It returns plain dataclasses; rendering (HTML, PDF) lives in reports.render.

No encounter key is ever read here, so no patient identifier can reach a report.
"""

from __future__ import annotations

import calendar
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from monitors.alert_burden import (
    AlertBurdenConfig,
    dispersion,
    exposure,
    poisson_limits,
    winsorised_rate,
)
from monitors.base import Status, worst
from monitors.config import MonitorConfig
from monitors.discrimination import threshold_metrics
from monitors.freshness import FreshnessConfig, Heartbeat, event_lag, tier_status
from monitors.observed_expected import (
    OEConfig,
    classify,
    design_effect_for,
    observed_to_expected,
)
from monitors.rollup_io import (
    SUM_FIELDS,
    daily_bins,
    daily_sums,
    day_of,
    dense_bins,
    dense_sums,
    hour_of,
    hour_start,
)
from monitors.slo import (
    SLOConfig,
    bad_share_lower_bound,
    budget_remaining,
    burn_rate,
    load_slo_config,
    sli_counts,
)
from monitors.windowed import (
    CalibrationConfig,
    DiscriminationConfig,
    Window,
    calibration_results,
    discrimination_results,
)
from reports.model_cards import DEFAULT_CARDS_DIR, REQUIRED_ATTRIBUTES, ModelCard, load_card
from store.models import (
    Alert,
    AlertBurdenHour,
    AuditEvent,
    CanaryJudgement,
    Deployment,
    FeedStatus,
    Incident,
    InputHistogram,
    MetricPoint,
    Model,
    ModelVersion,
    PredictionRollup,
    Site,
    table_of,
    utcnow,
)

R = table_of(PredictionRollup)
A = table_of(Alert)
INC = table_of(Incident)
AE = table_of(AuditEvent)
CJ = table_of(CanaryJudgement)
D = table_of(Deployment)
V = table_of(ModelVersion)
M = table_of(Model)
S = table_of(Site)
FS = table_of(FeedStatus)
MP = table_of(MetricPoint)
IH = table_of(InputHistogram)
AB = table_of(AlertBurdenHour)

MONTH_PATTERN = re.compile(r"^(\d{4})-(\d{2})$")
# Audit actions that change what clinicians see or how a model is released: the change log.
CHANGE_ACTIONS = (
    "disable_score",
    "enable_score",
    "promote_version",
    "rollback",
    "edit_thresholds",
    "open_incident",
)
# Daily alerting-score counts of a month against the month's own rate: 99.8% limits.
SPIKE_ALPHA = 0.002
MISSING_SHARE_FLAG = 0.05  # an input missing in more than this share of scores is named

RAG_RULES = (
    "red: a service level missed, a score switched off, a page-severity alert, an SLO page "
    "burn, a feed past its error tier, an alert-volume spike, O:E outside its tolerance band "
    "or a canary roll-back recommendation; amber: a warning (O:E, calibration or AUROC "
    "warn, data drift, a ticket, a declared incident, a canary hold, less than a quarter of "
    "the error budget left); green: none of these; grey: no predictions in the month."
)


# ---------------------------------------------------------------- the month


@dataclass(frozen=True)
class Month:
    """A calendar month in UTC: [start, end)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        match = MONTH_PATTERN.match(text.strip())
        if match is None:
            raise ValueError(f"not a month: {text!r} (use YYYY-MM, e.g. 2026-08)")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12:
            raise ValueError(f"not a month: {text!r} (the month must be 01-12)")
        return cls(year, month)

    @classmethod
    def last_complete(cls, now: datetime) -> Month:
        return cls.containing(now).previous()

    @classmethod
    def containing(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def title(self) -> str:
        return f"{calendar.month_name[self.month]} {self.year}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    @property
    def days(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]

    def previous(self) -> Month:
        return Month(self.year - 1, 12) if self.month == 1 else Month(self.year, self.month - 1)

    def next(self) -> Month:
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)


# ---------------------------------------------------------------- the report model


@dataclass(frozen=True)
class Measure:
    """A value with its confidence interval and status; `value` None means not available,
    and `note` says why (never shown as zero)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    status: str = Status.INSUFFICIENT.value
    note: str = ""


@dataclass(frozen=True)
class Volume:
    site: str
    scored: int  # every logged score attempt
    ok: int
    failed: int  # error + timeout
    alerts: int  # alerting scores
    degraded: int


@dataclass(frozen=True)
class SLOAttainment:
    slo: str
    sli: str
    site: str
    target: float
    good: int
    total: int
    attainment: float | None
    budget_remaining: float | None  # share of the month's error budget left; < 0 overspent
    met: bool | None


@dataclass(frozen=True)
class SiteQuality:
    """Calibration and discrimination of one model at one site over one month."""

    site: str
    scored: int
    settled: int
    completeness: float | None
    observed: int
    expected: float
    oe: Measure
    intercept: Measure
    slope: Measure
    ici: Measure
    auroc: Measure
    ppv: Measure


@dataclass(frozen=True)
class QualityChange:
    site: str
    current: SiteQuality | None
    previous: SiteQuality | None

    def change(self, name: str) -> float | None:
        """Month-over-month difference of one measure, when both months have a value."""
        if self.current is None or self.previous is None:
            return None
        now, before = getattr(self.current, name).value, getattr(self.previous, name).value
        return None if now is None or before is None else float(now - before)


@dataclass(frozen=True)
class Episode:
    """Something that went wrong, or an action taken, with when it started and ended."""

    kind: str  # alert, incident, score switched off, SLO page burn, feed error, alert spike
    site: str
    start: datetime
    end: datetime | None  # None: still going at the end of the month
    severity: str
    summary: str

    def duration(self, month_end: datetime) -> timedelta:
        return (self.end or month_end) - self.start


@dataclass(frozen=True)
class DriftSignal:
    site: str
    feature: str
    flagged_days: int  # days whose drift point warned or breached
    worst_status: str
    max_psi: float | None
    missing_share: float | None
    previous_missing_share: float | None


@dataclass(frozen=True)
class BurdenRow:
    site: str
    scored: int
    alerting_scores: int
    shown_alerts: int | None  # None: the alert-burden monitor has not counted this month
    patient_days: float
    alerts_per_100_patient_days: float | None
    ppv: Measure
    nne: float | None  # number needed to evaluate = 1 / PPV
    spike_days: list[str]


@dataclass(frozen=True)
class CanaryDecision:
    site: str
    version: str
    control_version: str
    kind: str
    window_start: datetime
    window_end: datetime
    verdict: str
    score: float | None
    recommendation: str
    sequential_rejected: bool


@dataclass(frozen=True)
class Change:
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    summary: str


@dataclass(frozen=True)
class VersionLine:
    version: str
    stage: str
    threshold: float
    training_data: str
    feature_set: str
    calibration: str
    approver: str
    created_at: datetime
    deployments: list[str]


@dataclass(frozen=True)
class SiteStatus:
    site: str
    rag: str  # green, amber, red, grey
    reasons: list[str]


@dataclass(frozen=True)
class Trend:
    """A daily series per site, for the charts."""

    name: str
    days: list[str]
    values: dict[str, list[float | None]]


@dataclass
class ModelReport:
    model: str
    title: str
    card: ModelCard
    versions: list[VersionLine]
    sites: list[str]
    status: list[SiteStatus]
    volume: list[Volume]
    slos: list[SLOAttainment]
    quality: list[QualityChange]
    episodes: list[Episode]
    drift: list[DriftSignal]
    burden: list[BurdenRow]
    canary: list[CanaryDecision]
    changes: list[Change]
    missing: list[str]
    trends: list[Trend] = field(default_factory=list)

    @property
    def card_missing(self) -> list[str]:
        return [REQUIRED_ATTRIBUTES[k] for k in self.card.missing]


@dataclass
class GovernanceReport:
    month: Month
    generated_at: datetime
    models: list[ModelReport]
    rag_rules: str = RAG_RULES


# ---------------------------------------------------------------- pure helpers


def measure_of(result: Any | None) -> Measure:
    """A monitor result as a Measure (values the monitor withheld stay None, with its reason)."""
    if result is None:
        return Measure(None, note="not computed")
    reason = str((result.detail or {}).get("reason", ""))
    return Measure(result.value, result.ci_low, result.ci_high, result.status.value, reason)


def episodes_from_flags(
    times: Sequence[datetime], flags: Sequence[bool], step: timedelta
) -> list[tuple[datetime, datetime]]:
    """Runs of consecutive flagged periods as [start, end) pairs (each period `step` long)."""
    runs: list[tuple[datetime, datetime]] = []
    start: datetime | None = None
    previous: datetime | None = None
    for moment, flagged in zip(times, flags, strict=True):
        if flagged and start is not None and previous is not None and moment - previous > step:
            runs.append((start, previous + step))
            start = None
        if flagged and start is None:
            start = moment
        if not flagged and start is not None and previous is not None:
            runs.append((start, previous + step))
            start = None
        if flagged:
            previous = moment
    if start is not None and previous is not None:
        runs.append((start, previous + step))
    return runs


def site_status(
    site: str,
    *,
    volume: Volume | None,
    slos: Sequence[SLOAttainment],
    quality: SiteQuality | None,
    episodes: Sequence[Episode],
    drift: Sequence[DriftSignal],
    canary: Sequence[CanaryDecision],
) -> SiteStatus:
    """Red / amber / green / grey of one model at one site (rules in RAG_RULES)."""
    if volume is None or volume.scored == 0:
        return SiteStatus(site, "grey", ["no predictions in the month"])
    red: list[str] = []
    amber: list[str] = []
    for s in slos:
        if s.met is False:
            red.append(f"{s.slo} missed ({s.attainment:.2%} against {s.target:.2%})")
        elif s.budget_remaining is not None and s.budget_remaining < 0.25:
            amber.append(f"{s.slo}: {s.budget_remaining:.0%} of the error budget left")
    for e in episodes:
        if e.site not in (site, "all sites"):
            continue
        if e.kind == "incident" or (e.kind == "alert" and e.severity != "page"):
            amber.append(f"{e.kind}: {e.summary}")
        else:
            red.append(f"{e.kind}: {e.summary}")
    if quality is not None:
        if quality.oe.status == Status.BREACH.value:
            red.append("O:E outside its tolerance band")
        elif quality.oe.status == Status.WARN.value:
            amber.append("O:E interval excludes 1")
        for name, m in (
            ("calibration intercept", quality.intercept),
            ("calibration slope", quality.slope),
            ("AUROC", quality.auroc),
        ):
            if m.status in (Status.WARN.value, Status.BREACH.value):
                amber.append(f"{name} {m.status}")
    for d in drift:
        if d.site == site:
            amber.append(f"data drift in {d.feature}")
    for c in canary:
        if c.site != site:
            continue
        if c.recommendation == "rollback":
            red.append(f"canary {c.version}: {c.verdict}, roll back recommended")
        elif c.recommendation == "hold":
            amber.append(f"canary {c.version}: {c.verdict}, hold")
    if red:
        return SiteStatus(site, "red", red + amber)
    if amber:
        return SiteStatus(site, "amber", amber)
    return SiteStatus(site, "green", ["no breach, warning or incident"])


# ---------------------------------------------------------------- reads


def _rollup_totals(conn: Connection, model_id: int, month: Month) -> pd.DataFrame:
    columns = ["n", "n_ok", "n_error", "n_timeout", "n_alert", "n_degraded", "n_on_time"]
    rows = conn.execute(
        sa.select(R.c.site_id, *[sa.func.sum(R.c[c]).label(c) for c in columns])
        .where(
            R.c.model_id == model_id,
            R.c.hour >= hour_of(month.start),
            R.c.hour < hour_of(month.end),
        )
        .group_by(R.c.site_id)
    ).all()
    return pd.DataFrame(rows, columns=["site_id", *columns])


def _hourly(conn: Connection, model_id: int, month: Month) -> pd.DataFrame:
    rows = conn.execute(
        sa.select(
            R.c.site_id,
            R.c.hour,
            sa.func.sum(R.c.n_ok).label("n_ok"),
            sa.func.sum(R.c.n_on_time).label("n_on_time"),
            sa.func.sum(R.c.n_error + R.c.n_timeout).label("n_failed"),
            sa.func.sum(R.c.n_alert).label("n_alert"),
        )
        .where(
            R.c.model_id == model_id,
            R.c.hour >= hour_of(month.start),
            R.c.hour < hour_of(month.end),
        )
        .group_by(R.c.site_id, R.c.hour)
        .order_by(R.c.site_id, R.c.hour)
    ).all()
    return pd.DataFrame(
        rows, columns=["site_id", "hour", "n_ok", "n_on_time", "n_failed", "n_alert"]
    ).astype(float)


def _by_site(frame: pd.DataFrame) -> list[tuple[int, pd.DataFrame]]:
    """The rows of each site, by site id."""
    return [(int(k), frame[frame["site_id"] == k]) for k in sorted(frame["site_id"].unique())]


def _window(
    conn: Connection, model: Model, site_id: int, month: Month, now: datetime
) -> Window | None:
    """The month's rollup sums of one site as one monitor window (None: nothing scored)."""
    assert model.id is not None
    first, last = day_of(month.start), day_of(month.end) - 1
    bins = dense_bins(
        daily_bins(conn, model.id, first, last, site_id=site_id), site_id, first, last
    )
    sums = dense_sums(
        daily_sums(conn, model.id, first, last, site_id=site_id), site_id, first, last
    )
    if not sums[:, SUM_FIELDS.index("n_ok")].any():
        return None
    return Window(model, site_id, last, month.days, bins.sum(axis=0), sums.sum(axis=0), now)


def site_quality(
    conn: Connection,
    model: Model,
    site_id: int,
    code: str,
    month: Month,
    config: MonitorConfig,
    now: datetime,
) -> SiteQuality | None:
    """O:E, calibration intercept, slope, ICI, AUROC and PPV over the month (the monitors'
    own functions, over a window of the month's days)."""
    w = _window(conn, model, site_id, month, now)
    if w is None:
        return None
    oe_cfg = config.for_monitor("observed_expected", OEConfig, model=model.name, site=code)
    cal_cfg = config.for_monitor("calibration", CalibrationConfig, model=model.name, site=code)
    dis_cfg = config.for_monitor(
        "discrimination", DiscriminationConfig, model=model.name, site=code
    )
    d = oe_cfg.design_effect or design_effect_for(
        model.horizon_hours, model.scoring_interval_minutes
    )
    observed, expected = int(w.sum("n_positive")), w.sum("sum_p_settled")
    estimate = observed_to_expected(observed, expected, oe_cfg.ci_level, d)
    status, reason = classify(
        estimate, n_ok=int(w.sum("n_ok")), n_settled=int(w.sum("n_settled")), config=oe_cfg
    )
    if status == Status.INSUFFICIENT and reason.startswith("labels not yet settled"):
        oe = Measure(None, note=reason)  # pending labels bias O:E: withheld, not shown
    else:
        oe = Measure(estimate.ratio, estimate.ci_low, estimate.ci_high, status.value, reason)
    calibration = {r.metric: r for r in calibration_results(w, cal_cfg)}
    discrimination = {r.metric: r for r in discrimination_results(w, dis_cfg)}
    return SiteQuality(
        site=code,
        scored=int(w.sum("n_ok")),
        settled=int(w.sum("n_settled")),
        completeness=w.completeness if w.sum("n_ok") else None,
        observed=observed,
        expected=float(expected),
        oe=oe,
        intercept=measure_of(calibration.get("calibration_intercept")),
        slope=measure_of(calibration.get("calibration_slope")),
        ici=measure_of(calibration.get("ici")),
        auroc=measure_of(discrimination.get("auroc")),
        ppv=measure_of(discrimination.get("ppv")),
    )


def slo_attainment(
    hourly: pd.DataFrame, model: Model, codes: dict[int, str], slo_config: SLOConfig
) -> list[SLOAttainment]:
    """Each SLO of the model per site over the whole month, with the month's error budget."""
    out = []
    for spec in slo_config.slos:
        if spec.model != model.name:
            continue
        for site_id, part in _by_site(hourly):
            bad, total = sli_counts(part, spec.sli)
            b, t = float(bad.sum()), float(total.sum())
            remaining = float(budget_remaining(b, t, spec.target)) if t > 0 else None
            attainment = (t - b) / t if t > 0 else None
            out.append(
                SLOAttainment(
                    slo=spec.name,
                    sli=spec.sli,
                    site=codes[site_id],
                    target=spec.target,
                    good=int(t - b),
                    total=int(t),
                    attainment=attainment,
                    budget_remaining=remaining,
                    met=None if attainment is None else attainment >= spec.target,
                )
            )
    return out


def slo_burn_episodes(
    hourly: pd.DataFrame, model: Model, codes: dict[int, str], slo_config: SLOConfig
) -> list[Episode]:
    """Clock hours whose own burn rate reached the fastest page rule's factor (and whose
    Clopper-Pearson guard agreed), joined into episodes. Hour-aligned: the live monitor's
    sliding windows page on the same hours, at minute resolution."""
    rules = [r for r in slo_config.rules if r.severity == "page"]
    if not rules:
        return []
    rule = min(rules, key=lambda r: r.long)
    factor = rule.factor(slo_config.window)
    out = []
    for spec in slo_config.slos:
        if spec.model != model.name:
            continue
        for site_id, part in _by_site(hourly):
            bad, total = sli_counts(part, spec.sli)
            burn = burn_rate(bad, total, spec.target)
            guard = bad_share_lower_bound(bad, total, slo_config.guard_confidence) / (
                1 - spec.target
            )
            flags = (np.nan_to_num(burn) >= factor) & (guard >= factor)
            times = [hour_start(int(h)) for h in part["hour"]]
            for start, end in episodes_from_flags(times, list(flags), timedelta(hours=1)):
                inside = np.array([start <= t < end for t in times])
                worst_burn = float(np.nanmax(np.where(inside, burn, np.nan)))
                out.append(
                    Episode(
                        kind="SLO page burn",
                        site=codes[site_id],
                        start=start,
                        end=end,
                        severity="page",
                        summary=(
                            f"{spec.name}: burn rate up to {worst_burn:.0f}× (page at {factor:g}×)"
                        ),
                    )
                )
    return out


def feed_episodes(
    conn: Connection,
    model: Model,
    codes: dict[int, str],
    sites: Sequence[int],
    month: Month,
    config: MonitorConfig,
) -> list[Episode]:
    """Stretches in which a feed the model needs was past its event-lag error tier."""
    out = []
    for site_id in sites:
        code = codes[site_id]
        cfg = config.for_monitor("feed_freshness", FreshnessConfig, model=model.name, site=code)
        for feed in cfg.feeds:
            tier = cfg.lag_tier(feed)
            rows = conn.execute(
                sa.select(FS.c.received_at, FS.c.last_event_at, FS.c.messages)
                .where(
                    FS.c.site_id == site_id,
                    FS.c.feed == feed,
                    FS.c.received_at >= month.start,
                    FS.c.received_at < month.end,
                )
                .order_by(FS.c.received_at)
            ).all()
            start: datetime | None = None
            worst_lag = timedelta(0)
            for received, last_event, messages in rows:
                beat = Heartbeat(received, last_event, int(messages))
                lag = event_lag(beat)
                breached = tier_status(lag, tier) == Status.BREACH
                if breached and start is None:
                    start = last_event or received
                    worst_lag = timedelta(0)
                if breached and lag is not None:
                    worst_lag = max(worst_lag, lag)
                if not breached and start is not None:
                    out.append(_feed_episode(code, feed, start, received, worst_lag, tier))
                    start = None
            if start is not None:
                out.append(_feed_episode(code, feed, start, None, worst_lag, tier))
    return out


def _feed_episode(
    site: str, feed: str, start: datetime, end: datetime | None, lag: timedelta, tier: Any
) -> Episode:
    return Episode(
        kind="feed error",
        site=site,
        start=start,
        end=end,
        severity="page",
        summary=(
            f"{feed} feed: no new events (event lag up to {_hours(lag)}; "
            f"error after {_hours(tier.error_after)})"
        ),
    )


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{delta.total_seconds() / 60:.0f} min"


def alert_burden(
    conn: Connection,
    model: Model,
    hourly: pd.DataFrame,
    codes: dict[int, str],
    month: Month,
    quality: dict[str, SiteQuality],
    config: MonitorConfig,
) -> tuple[list[BurdenRow], list[Episode], Trend]:
    """Alert burden per site, days whose alerting scores broke the month's Poisson upper limit,
    and the daily alerts per 100 patient-days."""
    assert model.id is not None
    shown = dict(
        conn.execute(
            sa.select(AB.c.site_id, sa.func.sum(AB.c.n_shown))
            .where(
                AB.c.model_id == model.id,
                AB.c.hour >= hour_of(month.start),
                AB.c.hour < hour_of(month.end),
            )
            .group_by(AB.c.site_id)
        ).all()
    )
    first_day = day_of(month.start)
    day_labels = [(month.start + timedelta(days=k)).date().isoformat() for k in range(month.days)]
    rows, episodes, series = [], [], {}
    for site_id, part in _by_site(hourly):
        code = codes[site_id]
        cfg = config.for_monitor("alert_burden", AlertBurdenConfig, model=model.name, site=code)
        daily = (
            part.assign(day=(part["hour"] // 24).astype(int) - first_day)
            .groupby("day")[["n_ok", "n_alert"]]
            .sum()
        )
        daily = daily.reindex(range(month.days), fill_value=0.0)
        n_ok, n_alert = daily["n_ok"].to_numpy(), daily["n_alert"].to_numpy()
        patient_days = exposure(n_ok, model.scoring_interval_minutes)
        rate = winsorised_rate(n_alert, n_ok)
        spike_days: list[str] = []
        if np.isfinite(rate) and rate > 0:
            expected = rate * n_ok
            # Over-dispersion from the days capped at their 99.9% Poisson limit, so that the
            # spike being looked for does not widen its own limits.
            capped = np.minimum(n_alert, poisson_limits(expected, 0.002)[1])
            phi = max(cfg.volume_min_dispersion, dispersion(capped, expected))
            _, upper = poisson_limits(expected, SPIKE_ALPHA, phi)
            for k in np.flatnonzero((n_alert > upper) & (n_alert >= cfg.min_spike_alerts)):
                spike_days.append(day_labels[k])
                start = month.start + timedelta(days=int(k))
                episodes.append(
                    Episode(
                        kind="alert spike",
                        site=code,
                        start=start,
                        end=start + timedelta(days=1),
                        severity="page",
                        summary=(
                            f"{int(n_alert[k])} alerting scores against {expected[k]:.1f} "
                            f"expected (upper {1 - SPIKE_ALPHA / 2:.1%} limit {upper[k]:.0f})"
                        ),
                    )
                )
        total_pd = float(patient_days.sum())
        q = quality.get(code)
        ppv = q.ppv if q is not None else Measure(None, note="no settled labels")
        rows.append(
            BurdenRow(
                site=code,
                scored=int(n_ok.sum()),
                alerting_scores=int(n_alert.sum()),
                shown_alerts=int(shown[site_id]) if site_id in shown else None,
                patient_days=total_pd,
                alerts_per_100_patient_days=(
                    100 * float(n_alert.sum()) / total_pd if total_pd > 0 else None
                ),
                ppv=ppv,
                nne=1 / ppv.value if ppv.value else None,
                spike_days=spike_days,
            )
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            per_100 = np.where(patient_days > 0, 100 * n_alert / patient_days, np.nan)
        series[code] = [None if not np.isfinite(v) else round(float(v), 3) for v in per_100]
    return rows, episodes, Trend("alerts per 100 patient-days", day_labels, series)


def ppv_trend(
    conn: Connection, model: Model, codes: dict[int, str], sites: Sequence[int], month: Month
) -> Trend:
    """Weekly PPV at the deployed threshold per site (settled labels only)."""
    assert model.id is not None
    first, last = day_of(month.start), day_of(month.end) - 1
    sums = daily_sums(conn, model.id, first, last)
    weeks = list(range(0, month.days, 7))
    labels = [(month.start + timedelta(days=k)).date().isoformat() for k in weeks]
    values: dict[str, list[float | None]] = {}
    for site_id in sites:
        dense = dense_sums(sums, site_id, first, last)
        column: list[float | None] = []
        for k in weeks:
            chunk = dense[k : k + 7].sum(axis=0)
            metrics = threshold_metrics(
                n_settled=chunk[SUM_FIELDS.index("n_settled")],
                n_positive=chunk[SUM_FIELDS.index("n_positive")],
                n_alert_settled=chunk[SUM_FIELDS.index("n_alert_settled")],
                n_alert_positive=chunk[SUM_FIELDS.index("n_alert_positive")],
            )
            column.append(None if metrics.ppv is None else round(metrics.ppv.value, 4))
        values[codes[site_id]] = column
    return Trend("PPV at the threshold (weekly, settled labels)", labels, values)


def alert_episodes(
    conn: Connection, model_id: int, codes: dict[int, str], month: Month
) -> list[Episode]:
    """Monitor alerts open at any time during the month."""
    rows = conn.execute(
        sa.select(A.c.monitor, A.c.site_id, A.c.severity, A.c.summary, A.c.opened_at)
        .add_columns(A.c.resolved_at)
        .where(
            A.c.model_id == model_id,
            A.c.opened_at < month.end,
            sa.or_(A.c.resolved_at.is_(None), A.c.resolved_at >= month.start),
        )
        .order_by(A.c.opened_at, A.c.id)
    ).all()
    return [
        Episode(
            kind="alert",
            site=codes.get(int(site_id), "all sites"),
            start=opened,
            end=resolved if resolved is not None and resolved < month.end else None,
            severity=str(severity),
            summary=f"{monitor}: {summary}",
        )
        for monitor, site_id, severity, summary, opened, resolved in rows
    ]


def incident_episodes(
    conn: Connection, model_id: int, codes: dict[int, str], month: Month
) -> list[Episode]:
    rows = conn.execute(
        sa.select(INC.c.id, INC.c.title, INC.c.site_id, INC.c.opened_at, INC.c.closed_at)
        .where(
            INC.c.model_id == model_id,
            INC.c.opened_at < month.end,
            sa.or_(INC.c.closed_at.is_(None), INC.c.closed_at >= month.start),
        )
        .order_by(INC.c.opened_at)
    ).all()
    return [
        Episode(
            kind="incident",
            site=codes.get(int(site_id or 0), "all sites"),
            start=opened,
            end=closed if closed is not None and closed < month.end else None,
            severity="incident",
            summary=f"#{incident_id} {title}",
        )
        for incident_id, title, site_id, opened, closed in rows
    ]


def disablement_episodes(conn: Connection, model: str, month: Month) -> list[Episode]:
    """Kill-switch disablements overlapping the month, paired from the audit log (a canary
    roll-back switches its version off through the same action, so it is among them)."""
    rows = conn.execute(
        sa.select(AE.c.at, AE.c.action, AE.c.target, AE.c.detail)
        .where(
            AE.c.action.in_(["disable_score", "enable_score"]),
            AE.c.target.startswith(f"score:{model}@", autoescape=True),
            AE.c.at < month.end,
        )
        .order_by(AE.c.id)
    ).all()
    prefix = f"score:{model}@"
    open_since: dict[str, tuple[datetime, str]] = {}
    out: list[Episode] = []
    for at, action, target, detail in rows:
        detail = detail or {}
        if not detail.get("changed", True):
            continue  # switched to the state it already had: no change
        if action == "disable_score":
            open_since[str(target)] = (at, str(detail.get("reason", "")))
        elif str(target) in open_since:
            start, reason = open_since.pop(str(target))
            if at >= month.start:
                out.append(_disablement(str(target), prefix, start, at, reason))
    for target, (start, reason) in open_since.items():
        out.append(_disablement(target, prefix, start, None, reason))
    return out


def _disablement(
    target: str, prefix: str, start: datetime, end: datetime | None, reason: str
) -> Episode:
    scope = target.removeprefix(prefix)
    site, _, version = scope.partition("#")
    return Episode(
        kind="score switched off",
        site="all sites" if site == "*" else site,
        start=start,
        end=end,
        severity="page",
        summary=(f"version {version}: " if version else "") + (reason or "no reason recorded"),
    )


def canary_decisions(
    conn: Connection, model_id: int, codes: dict[int, str], month: Month
) -> list[CanaryDecision]:
    """The latest judgement of each canary (per site, version and kind) whose window reaches
    into the month, as judged by the month's end at the latest."""
    CV = V.alias("control_version")
    rows = conn.execute(
        sa.select(
            CJ.c.site_id,
            V.c.version,
            CV.c.version.label("control"),
            CJ.c.kind,
            CJ.c.window_start,
            CJ.c.window_end,
            CJ.c.verdict,
            CJ.c.score,
            CJ.c.recommendation,
            CJ.c.sequential_rejected,
            CJ.c.evaluated_hour,
        )
        .join(V, V.c.id == CJ.c.version_id)
        .outerjoin(CV, CV.c.id == CJ.c.control_version_id)
        .where(
            CJ.c.model_id == model_id,
            CJ.c.window_end > month.start,
            CJ.c.evaluated_hour <= hour_of(month.end),
        )
        .order_by(CJ.c.evaluated_hour, CJ.c.id)
    ).all()
    latest: dict[tuple[int, str, str], Any] = {}
    for row in rows:
        latest[(int(row.site_id), str(row.version), str(row.kind))] = row
    return [
        CanaryDecision(
            site=codes[int(r.site_id)],
            version=str(r.version),
            control_version=str(r.control or ""),
            kind=str(r.kind),
            window_start=r.window_start,
            window_end=r.window_end,
            verdict=str(r.verdict),
            score=None if r.score is None else float(r.score),
            recommendation=str(r.recommendation),
            sequential_rejected=bool(r.sequential_rejected),
        )
        for r in sorted(latest.values(), key=lambda r: (r.site_id, r.version, r.kind))
    ]


def drift_signals(
    conn: Connection, model_id: int, codes: dict[int, str], sites: Sequence[int], month: Month
) -> list[DriftSignal]:
    """Inputs (and the score) the drift monitor flagged in the month, and inputs that went
    missing more often than before."""
    flagged = conn.execute(
        sa.select(
            MP.c.site_id,
            MP.c.metric,
            MP.c.status,
            sa.func.count().label("days"),
            sa.func.max(MP.c.value).label("max_psi"),
        )
        .where(
            MP.c.monitor == "drift",
            MP.c.model_id == model_id,
            MP.c.metric.like("psi:%"),
            MP.c.status.in_([Status.WARN.value, Status.BREACH.value]),
            MP.c.window_end > month.start,
            MP.c.window_end <= month.end,
        )
        .group_by(MP.c.site_id, MP.c.metric, MP.c.status)
    ).all()
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for site_id, metric, status, days, max_psi in flagged:
        entry = found.setdefault(
            (int(site_id), str(metric).removeprefix("psi:")),
            {"days": 0, "statuses": [], "max_psi": None},
        )
        entry["days"] += int(days)
        entry["statuses"].append(Status(status))
        if max_psi is not None:
            entry["max_psi"] = max(float(max_psi), entry["max_psi"] or 0.0)
    now_missing = _missing_shares(conn, model_id, month)
    before_missing = _missing_shares(conn, model_id, month.previous())
    for key, share in now_missing.items():
        before = before_missing.get(key)
        if share > MISSING_SHARE_FLAG and (before is None or share > before + MISSING_SHARE_FLAG):
            found.setdefault(key, {"days": 0, "statuses": [], "max_psi": None})
    return [
        DriftSignal(
            site=codes[site_id],
            feature=feature,
            flagged_days=entry["days"],
            worst_status=worst(entry["statuses"]).value if entry["statuses"] else "missing",
            max_psi=entry["max_psi"],
            missing_share=now_missing.get((site_id, feature)),
            previous_missing_share=before_missing.get((site_id, feature)),
        )
        for (site_id, feature), entry in sorted(found.items())
        if site_id in sites
    ]


def _missing_shares(conn: Connection, model_id: int, month: Month) -> dict[tuple[int, str], float]:
    rows = conn.execute(
        sa.select(
            IH.c.site_id,
            IH.c.feature,
            sa.func.sum(sa.case((IH.c.bin == -1, IH.c.n), else_=0)),
            sa.func.sum(IH.c.n),
        )
        .where(
            IH.c.model_id == model_id,
            IH.c.hour >= hour_of(month.start),
            IH.c.hour < hour_of(month.end),
        )
        .group_by(IH.c.site_id, IH.c.feature)
    ).all()
    return {(int(s), str(f)): float(m) / float(n) for s, f, m, n in rows if n}


def versions_of(conn: Connection, model_id: int, codes: dict[int, str]) -> list[VersionLine]:
    deployments: dict[int, list[str]] = defaultdict(list)
    for version_id, site_id, unit, arm, threshold, enabled in conn.execute(
        sa.select(D.c.version_id, D.c.site_id, D.c.unit, D.c.arm, D.c.alert_threshold)
        .add_columns(D.c.enabled)
        .where(D.c.model_id == model_id)
        .order_by(D.c.site_id, D.c.unit)
    ).all():
        where = codes.get(int(site_id), "?") + (f" {unit}" if unit else "")
        off = "" if enabled else ", disabled"
        deployments[int(version_id)].append(f"{where} ({arm}, threshold {threshold:g}{off})")
    rows = conn.execute(sa.select(V).where(V.c.model_id == model_id).order_by(V.c.created_at))
    return [
        VersionLine(
            version=str(r.version),
            stage=str(r.stage),
            threshold=float(r.threshold),
            training_data=str(r.training_data or ""),
            feature_set=str(r.feature_set or ""),
            calibration=str(r.calibration or ""),
            approver=str(r.approver or ""),
            created_at=r.created_at,
            deployments=deployments.get(int(r.id), []),
        )
        for r in rows
    ]


def change_log(conn: Connection, model: str, model_id: int, month: Month) -> list[Change]:
    """Changes to versions, thresholds, approvals and switches of this model in the month,
    from the audit log, oldest first."""
    incident_ids = {
        f"incident:{i}"
        for i in conn.execute(sa.select(INC.c.id).where(INC.c.model_id == model_id)).scalars()
    }
    rows = conn.execute(
        sa.select(AE.c.at, AE.c.actor, AE.c.role, AE.c.action, AE.c.target, AE.c.detail)
        .where(AE.c.at >= month.start, AE.c.at < month.end, AE.c.action.in_(CHANGE_ACTIONS))
        .order_by(AE.c.id)
    ).all()
    out = []
    for at, actor, role, action, target, detail in rows:
        target = str(target)
        mine = target.startswith((f"score:{model}@", f"version:{model}#")) or (
            target in incident_ids
        )
        if not mine:
            continue
        detail = detail or {}
        summary = str(detail.get("reason") or detail.get("title") or "")
        if action in ("promote_version", "rollback"):
            summary = f"{detail.get('from', '?')} → {detail.get('to', '?')}: {summary}"
        out.append(Change(at, str(actor), str(role), str(action), target, summary))
    return out


# ---------------------------------------------------------------- gather


def gather_model(
    conn: Connection,
    model: Model,
    month: Month,
    *,
    codes: dict[int, str],
    config: MonitorConfig,
    slo_config: SLOConfig,
    cards_dir: Path,
    now: datetime,
) -> ModelReport:
    assert model.id is not None
    deployed = sorted(
        int(s)
        for s in conn.execute(
            sa.select(D.c.site_id).where(D.c.model_id == model.id).distinct()
        ).scalars()
    )
    totals = _rollup_totals(conn, model.id, month)
    volume = [
        Volume(
            site=codes[int(r["site_id"])],
            scored=int(r["n"]),
            ok=int(r["n_ok"]),
            failed=int(r["n_error"] + r["n_timeout"]),
            alerts=int(r["n_alert"]),
            degraded=int(r["n_degraded"]),
        )
        for r in totals.to_dict("records")
    ]
    scored_sites = sorted(int(s) for s in totals["site_id"])
    sites = sorted(set(deployed) | set(scored_sites))
    hourly = _hourly(conn, model.id, month)
    quality_now = {}
    quality_before = {}
    for site_id in sites:
        code = codes[site_id]
        q = site_quality(conn, model, site_id, code, month, config, now)
        if q is not None:
            quality_now[code] = q
        p = site_quality(conn, model, site_id, code, month.previous(), config, now)
        if p is not None:
            quality_before[code] = p
    quality = [
        QualityChange(codes[s], quality_now.get(codes[s]), quality_before.get(codes[s]))
        for s in sites
    ]
    slos = slo_attainment(hourly, model, codes, slo_config)
    burden, spikes, burden_trend = alert_burden(
        conn, model, hourly, codes, month, quality_now, config
    )
    episodes = (
        alert_episodes(conn, model.id, codes, month)
        + incident_episodes(conn, model.id, codes, month)
        + disablement_episodes(conn, model.name, month)
        + slo_burn_episodes(hourly, model, codes, slo_config)
        + feed_episodes(conn, model, codes, scored_sites, month, config)
        + spikes
    )
    episodes.sort(key=lambda e: (e.start, e.site, e.kind))
    drift = drift_signals(conn, model.id, codes, sites, month)
    canary = canary_decisions(conn, model.id, codes, month)
    by_site_volume = {v.site: v for v in volume}
    status = [
        site_status(
            codes[s],
            volume=by_site_volume.get(codes[s]),
            slos=[x for x in slos if x.site == codes[s]],
            quality=quality_now.get(codes[s]),
            episodes=episodes,
            drift=drift,
            canary=canary,
        )
        for s in sites
    ]
    missing = missing_statements(model.name, month, [codes[s] for s in sites], volume, quality)
    card = load_card(model.name, cards_dir)
    if card.missing:
        missing.append(
            f"the model card of {model.name} does not state: "
            + ", ".join(REQUIRED_ATTRIBUTES[k] for k in card.missing)
        )
    return ModelReport(
        model=model.name,
        title=model.title,
        card=card,
        versions=versions_of(conn, model.id, codes),
        sites=[codes[s] for s in sites],
        status=status,
        volume=volume,
        slos=slos,
        quality=quality,
        episodes=episodes,
        drift=drift,
        burden=burden,
        canary=canary,
        changes=change_log(conn, model.name, model.id, month),
        missing=missing,
        trends=[burden_trend, ppv_trend(conn, model, codes, sites, month)],
    )


def missing_statements(
    model: str,
    month: Month,
    sites: Sequence[str],
    volume: Sequence[Volume],
    quality: Sequence[QualityChange],
) -> list[str]:
    """Plain statements of what the month's data cannot say (never zeros in their place)."""
    out = []
    scored = {v.site for v in volume if v.scored > 0}
    for site in sites:
        if site not in scored:
            out.append(f"no predictions for {model} at {site} in {month.label}")
    for q in quality:
        if q.current is None:
            continue
        if q.current.oe.value is None and q.current.oe.note:
            out.append(f"{model} at {q.site}: {q.current.oe.note}")
        elif q.current.auroc.value is None and q.current.auroc.note:
            out.append(f"{model} at {q.site}: discrimination — {q.current.auroc.note}")
    return out


def gather_report(
    engine: Engine,
    month: Month,
    *,
    model: str | None = None,
    config: MonitorConfig | None = None,
    slo_config: SLOConfig | None = None,
    cards_dir: Path = DEFAULT_CARDS_DIR,
    now: datetime | None = None,
) -> GovernanceReport:
    """The report model of one month, for every model (or the one named)."""
    now = now or utcnow()
    config = config or MonitorConfig.from_file()
    slo_config = slo_config or load_slo_config()
    with engine.connect() as conn:
        codes = {int(i): str(c) for i, c in conn.execute(sa.select(S.c.id, S.c.code))}
        query = sa.select(M).order_by(M.c.name)
        if model is not None:
            query = query.where(M.c.name == model)
        models = [Model.model_validate(dict(r)) for r in conn.execute(query).mappings()]
        if model is not None and not models:
            raise LookupError(f"no model named {model!r} in the registry")
        reports = [
            gather_model(
                conn,
                m,
                month,
                codes=codes,
                config=config,
                slo_config=slo_config,
                cards_dir=cards_dir,
                now=now,
            )
            for m in models
        ]
    return GovernanceReport(month=month, generated_at=now, models=reports)
