"""Alert burden: suppression, Poisson limits against scipy, dispersion against statsmodels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import statsmodels.api as sm
from scipy import stats
from sqlalchemy.engine import Engine
from statsmodels.stats.multitest import multipletests

from collectors.runner import collect_files
from monitors.alert_burden import (
    AlertBurdenConfig,
    by_unit_and_shift,
    dispersion,
    judge_burden,
    poisson_limits,
    run_alert_burden,
    shift_of,
    shown_alerts,
    sidak_per_test,
    spike_tail,
    winsorised_rate,
)
from monitors.base import Status
from monitors.config import MonitorConfig
from store.models import AlertBurdenHour, Prediction, PredictionRollup, Site, table_of
from store.rollups import refresh
from tests.factories import prediction, write_jsonl

H = 3600.0


def test_repeat_alerts_within_the_snooze_are_suppressed() -> None:
    # Alerts every 4 h for a day and a half, a gap, then two more: with a 12 h snooze the
    # patient is shown the alert at 0, 12 and 24 h, and again after the gap.
    times = [0, 4, 8, 12, 16, 20, 24, 28, 32, 60, 64]
    assert shown_alerts([t * H for t in times], 12 * H) == [
        True, False, False, True, False, False, True, False, False, True, False,
    ]  # fmt: skip
    assert shown_alerts([], 12 * H) == []


@pytest.mark.parametrize("expected", [0.3, 2.0, 9.7, 41.0, 300.0])
@pytest.mark.parametrize("alpha", [0.002, 0.05])
def test_control_limits_are_the_poisson_quantiles(expected: float, alpha: float) -> None:
    lower, upper = (float(v) for v in poisson_limits(expected, alpha))
    # Upper: the smallest count whose cumulative probability reaches 1 - alpha/2.
    assert stats.poisson.cdf(upper, expected) >= 1 - alpha / 2
    assert stats.poisson.cdf(upper - 1, expected) < 1 - alpha / 2
    # So a count beyond it has at most alpha/2 probability.
    assert stats.poisson.sf(upper, expected) <= alpha / 2
    assert stats.poisson.cdf(lower, expected) >= alpha / 2
    assert lower == 0 or stats.poisson.cdf(lower - 1, expected) < alpha / 2


def test_overdispersed_limits_use_effective_counts() -> None:
    lower, upper = (float(v) for v in poisson_limits(40.0, 0.002, dispersion=4.0))
    assert upper == 4 * stats.poisson.ppf(0.999, 10.0)
    assert lower == 4 * stats.poisson.ppf(0.001, 10.0)
    # A dispersion below 1 is never used to narrow the limits.
    assert poisson_limits(40.0, 0.002, dispersion=0.5)[1] == poisson_limits(40.0, 0.002)[1]


def test_per_look_level_is_statsmodels_sidak_correction() -> None:
    looks = 90 * 24 * 2
    tail = sidak_per_test(0.05, looks)
    *_, sidak, bonferroni = multipletests(np.full(looks, 0.5), alpha=0.05, method="sidak")
    assert tail == pytest.approx(sidak, rel=1e-9)
    assert bonferroni < tail < 0.05 / looks * 1.03  # Sidak is just above Bonferroni
    # With independent looks, the chance of one or more false alarms is exactly the family's.
    assert stats.binom.sf(0, looks, tail) == pytest.approx(0.05, rel=1e-9)
    assert spike_tail(AlertBurdenConfig()) == tail
    # The shipped configuration is the documented default.
    shipped = MonitorConfig.from_file().for_monitor(
        "alert_burden", AlertBurdenConfig, model="readmission", site="MTN"
    )
    assert spike_tail(shipped) == pytest.approx(1.187e-5, rel=1e-3)
    with pytest.raises(ValueError):
        sidak_per_test(1.0, 10)


@pytest.mark.parametrize("expected", [0.7, 2.0, 11.2, 60.0])
def test_spike_limit_is_scipys_upper_poisson_quantile_at_the_per_look_tail(
    expected: float,
) -> None:
    cfg = AlertBurdenConfig()
    tail = spike_tail(cfg)
    upper = judge_burden(
        spike_observed=5, spike_expected=expected, drop_observed=0, drop_expected=float("nan"),
        config=cfg,
    ).spike_limits[1]  # fmt: skip
    assert upper == stats.poisson.isf(tail, expected)
    assert stats.poisson.sf(upper, expected) <= tail < stats.poisson.sf(upper - 1, expected)
    # A count at the limit is in control, one above it is a spike (given enough alerts).
    at, above = (
        judge_burden(
            spike_observed=int(max(upper, cfg.min_spike_alerts)) + k,
            spike_expected=expected,
            drop_observed=10**6,
            drop_expected=float("nan"),
            config=cfg,
        ).status
        for k in (0, 1)
    )
    assert above == Status.BREACH
    assert at != Status.BREACH or upper < cfg.min_spike_alerts


def test_a_stable_series_looked_at_hourly_for_90_days_rarely_raises_a_false_spike() -> None:
    # 400 stable sites, each expecting 0.7 shown alerts a day (a small site's readmission
    # model), judged every hour on the trailing 24 h with the true expectation: the share with
    # any false spike in 90 days stays within the family's 5% (overlapping windows make it
    # smaller); under a fixed 0.1% tail per look it is about a quarter.
    rng = np.random.default_rng(11)
    hours, width, rate = 90 * 24, 24, 0.7 / 24
    counts = rng.poisson(rate, size=(400, hours + width))
    cum = np.concatenate([np.zeros((400, 1)), np.cumsum(counts, axis=1)], axis=1)
    windows = cum[:, width:] - cum[:, :-width]
    expected = rate * width
    corrected = stats.poisson.isf(spike_tail(AlertBurdenConfig()), expected)
    fixed = stats.poisson.isf(0.001, expected)
    assert (windows > corrected).any(axis=1).mean() <= 0.05
    assert (windows > fixed).any(axis=1).mean() > 0.15


def test_dispersion_matches_statsmodels_pearson_chi2() -> None:
    rng = np.random.default_rng(2)
    exposures = rng.uniform(20, 60, size=28)
    counts = rng.negative_binomial(3, 3 / (3 + 0.05 * exposures))  # overdispersed
    fit = sm.GLM(
        counts, np.ones((28, 1)), family=sm.families.Poisson(), offset=np.log(exposures)
    ).fit()
    pooled = counts.sum() / exposures.sum()
    assert dispersion(counts, pooled * exposures) == pytest.approx(fit.pearson_chi2 / fit.df_resid)
    assert dispersion([3, 3, 3], [3, 3, 3]) == 1.0  # floored at Poisson


def test_one_bad_day_does_not_inflate_the_baseline() -> None:
    counts = np.array([10.0] * 27 + [300.0])
    exposures = np.ones(28)
    pooled = counts.sum() / 28
    cap = stats.poisson.ppf(0.999, pooled)
    assert winsorised_rate(counts, exposures) == pytest.approx((270 + cap) / 28)
    assert winsorised_rate(counts[:27], exposures[:27]) == pytest.approx(10.0)


def test_judging_spikes_drops_and_small_counts() -> None:
    cfg = AlertBurdenConfig()
    calm = judge_burden(
        spike_observed=5, spike_expected=4.0, drop_observed=28, drop_expected=28.0, config=cfg
    )
    assert calm.status == Status.OK
    spike = judge_burden(
        spike_observed=30, spike_expected=4.0, drop_observed=50, drop_expected=28.0, config=cfg
    )
    assert (spike.status, spike.kind) == (Status.BREACH, "spike")
    # Four alerts against 0.2 expected is far beyond the limit but too few to be a burden.
    few = judge_burden(
        spike_observed=4, spike_expected=0.2, drop_observed=4, drop_expected=1.4, config=cfg
    )
    assert few.status == Status.OK
    # Alerting scores can show a spike that suppression hides (the same patients re-alert).
    hidden = judge_burden(
        spike_observed=6,
        spike_expected=4.0,
        drop_observed=28,
        drop_expected=28.0,
        volume_observed=300,
        volume_expected=12.0,
        volume_dispersion=4.0,
        config=cfg,
    )
    assert (hidden.status, hidden.kind) == (Status.BREACH, "spike")
    drop = judge_burden(
        spike_observed=0,
        spike_expected=4.0,
        drop_observed=0,
        drop_expected=60.0,
        drop_dispersion=4.0,
        config=cfg,
    )
    assert (drop.status, drop.kind) == (Status.BREACH, "drop")
    nan = float("nan")
    skipped = judge_burden(
        spike_observed=9, spike_expected=nan, drop_observed=0, drop_expected=nan, config=cfg
    )
    assert skipped.status == Status.OK


def test_shifts_follow_the_site_clock_across_daylight_saving() -> None:
    starts = [7, 15, 23]
    summer = datetime(2026, 7, 1, 11, tzinfo=UTC)  # 07:00 in New York (EDT)
    assert shift_of(summer, "America/New_York", starts) == ("2026-07-01", 7)
    winter = datetime(2026, 12, 1, 11, tzinfo=UTC)  # 06:00 in New York (EST)
    assert shift_of(winter, "America/New_York", starts) == ("2026-11-30", 23)
    assert shift_of(datetime(2026, 7, 2, 3, tzinfo=UTC), "UTC", starts) == ("2026-07-01", 23)
    hourly = pd.DataFrame(
        {
            "hour": [int(summer.timestamp() // 3600) + k for k in (0, 1, 8, 8)],
            "unit": ["2N", "2N", "2N", "3S"],
            "n_shown": [1, 2, 4, 1],
            "n_scored": [6, 6, 12, 6],
        }
    )
    table = by_unit_and_shift(
        hourly, tz="America/New_York", starts=starts, scoring_interval_minutes=240
    )
    assert table[["shift", "unit", "shown", "scored"]].values.tolist() == [
        ["07:00", "2N", 3, 12],
        ["15:00", "2N", 4, 12],
        ["15:00", "3S", 1, 6],
    ]
    assert table["per_100_patient_days"].iloc[0] == pytest.approx(100 * 3 / 2)


# ---------------------------------------------------------------- from a store

START = datetime(2026, 8, 1, tzinfo=UTC)
SPIKE_DAY = 12


def _ward(tmp_path: Path, *, days: int, rate: float = 0.01) -> Path:
    """40 long-stay patients at RVH scored every 4 h; `rate` of scores alert, 40% on day 12."""
    rng = np.random.default_rng(7)
    records = []
    n = 0
    for day in range(days):
        day_rate = 0.4 if day == SPIKE_DAY else rate
        for slot in range(6):
            for patient in range(40):
                n += 1
                scored = START + timedelta(days=day, hours=4 * slot, minutes=patient)
                alert = bool(rng.random() < day_rate)
                records.append(
                    prediction(
                        n,
                        site="RVH",
                        unit=("2N", "3S")[patient % 2],
                        encounter_id=f"P{patient}",
                        scored=scored,
                        score=0.05 if alert else 0.005,
                        alert=alert,
                    )
                )
    return write_jsonl(tmp_path / "predictions-burden.jsonl", records)


def _assert_hours_match_raw_rows(engine: Engine, snooze_hours: float = 24) -> None:
    """The kept hourly counts equal a replay of every raw alert, patient by patient, with the
    snooze (pandas over the raw rows; no code of the monitor's but `shown_alerts`)."""
    P, AB = table_of(Prediction), table_of(AlertBurdenHour)
    with engine.connect() as conn:
        raw = pd.read_sql(
            sa.select(P.c.encounter_key, P.c.scored_at, P.c.scored_hour).where(P.c.alert), conn
        )
        stored = pd.read_sql(sa.select(AB.c.hour, AB.c.n_alert, AB.c.n_shown), conn)
    raw = raw.sort_values(["encounter_key", "scored_at"])
    seconds = pd.to_datetime(raw["scored_at"], utc=True).astype("int64") // 10**9
    flags = []
    for _, idx in raw.groupby("encounter_key", sort=False).groups.items():
        flags += list(
            zip(idx, shown_alerts(seconds.loc[idx].tolist(), snooze_hours * H), strict=True)
        )
    raw["shown"] = pd.Series(dict(flags))
    expected = raw.groupby("scored_hour").agg(n_alert=("shown", "size"), n_shown=("shown", "sum"))
    got = stored.groupby("hour")[["n_alert", "n_shown"]].sum()
    assert got.to_dict() == expected.astype(int).to_dict()


def test_runner_counts_shown_alerts_from_raw_rows_and_flags_the_spike_day(
    engine: Engine, tmp_path: Path
) -> None:
    days = 15
    list(collect_files(engine, [_ward(tmp_path, days=days)], secret="s"))
    refresh(engine, now=START + timedelta(days=days))
    config = MonitorConfig.from_file()
    S, AB = table_of(Site), table_of(AlertBurdenHour)
    with engine.connect() as conn:
        rvh = conn.execute(sa.select(S.c.id).where(S.c.code == "RVH")).scalar_one()

    def rvh_result(now: datetime) -> tuple[Status, dict]:
        results = run_alert_burden(engine, config, now)
        point = next(r for r in results if r.site_id == rvh and r.model_id == 1)
        return point.status, point.detail

    before, _ = rvh_result(START + timedelta(days=SPIKE_DAY))
    assert before == Status.OK
    # Hourly counts equal an independent computation from the raw rows (24 h snooze).
    _assert_hours_match_raw_rows(engine)

    status, detail = rvh_result(START + timedelta(days=SPIKE_DAY, hours=6))
    assert status == Status.BREACH and detail["kind"] == "spike"
    assert detail["severity"] == "page"
    assert detail["duplicates_suppressed"] == detail["alerting_scores"] - detail["shown"]
    # Nothing changed since the last run: no hour is recounted.
    with engine.connect() as conn:
        stamp = conn.execute(sa.select(sa.func.max(AB.c.updated_at))).scalar()
    rvh_result(START + timedelta(days=SPIKE_DAY, hours=7))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(AB.c.updated_at))).scalar() == stamp
    recovered, _ = rvh_result(START + timedelta(days=SPIKE_DAY + 2, hours=1))
    assert recovered == Status.OK


def test_settled_labels_do_not_recount_alerts_and_a_late_alert_does(
    engine: Engine, tmp_path: Path
) -> None:
    """Settling re-stamps an hour's rollups but leaves its alerts alone: the hour is not read
    from raw rows again. A late alerting score logged into an old hour is recounted."""
    days = 4
    end = START + timedelta(days=days)
    list(collect_files(engine, [_ward(tmp_path, days=days)], secret="s"))
    refresh(engine, now=end)
    config = MonitorConfig.from_file()
    run_alert_burden(engine, config, end)
    R, AB = table_of(PredictionRollup), table_of(AlertBurdenHour)

    def stamps() -> dict[int, datetime]:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(AB.c.hour, sa.func.max(AB.c.updated_at)).group_by(AB.c.hour)
            )
            return {int(hour): stamp for hour, stamp in rows}

    kept = stamps()
    # Two days on, the last day's predictions pass their 12 h horizon and settle negative:
    # their hours' rollups are re-stamped, alerting hours among them.
    later = end + timedelta(days=2)
    refresh(engine, now=later)
    with engine.connect() as conn:
        restamped = set(
            conn.execute(sa.select(R.c.hour).where(R.c.updated_at == later).distinct()).scalars()
        )
    assert restamped & set(kept)  # the check below is not vacuous
    run_alert_burden(engine, config, later)
    assert stamps() == kept
    _assert_hours_match_raw_rows(engine)

    # A late alerting score of one of the ward's patients, logged into an hour 30 h after the
    # ward's first alert: that hour, and only it, is recounted.
    with engine.connect() as conn:
        P = table_of(Prediction)
        first_alert = conn.execute(
            sa.select(P.c.scored_at).where(P.c.alert).order_by(P.c.scored_at).limit(1)
        ).scalar_one()
    late_at = (first_alert if first_alert.tzinfo else first_alert.replace(tzinfo=UTC)) + timedelta(
        hours=30
    )
    late = prediction(
        99_999, site="RVH", unit="2N", encounter_id="P0", scored=late_at, score=0.05, alert=True
    )
    late_file = write_jsonl(tmp_path / "predictions-late.jsonl", [late])
    list(collect_files(engine, [late_file], secret="s"))
    refresh(engine, now=later + timedelta(hours=1))
    run_alert_burden(engine, config, later + timedelta(hours=1))
    late_hour = int(late_at.timestamp()) // 3600
    changed = {hour for hour, stamp in stamps().items() if stamp != kept.get(hour)}
    assert changed == {late_hour}
    _assert_hours_match_raw_rows(engine)


def test_a_changed_snooze_recounts_every_kept_hour(engine: Engine, tmp_path: Path) -> None:
    """Shown alerts depend on the snooze: when it changes, the kept hours are counted again
    with the new one, though no rollup changed."""
    days = 4
    end = START + timedelta(days=days)
    list(collect_files(engine, [_ward(tmp_path, days=days, rate=0.1)], secret="s"))
    refresh(engine, now=end)
    run_alert_burden(engine, MonitorConfig.from_file(), end)
    _assert_hours_match_raw_rows(engine, 24)
    AB = table_of(AlertBurdenHour)

    def shown() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.sum(AB.c.n_shown))).scalar_one())

    before = shown()
    shorter = MonitorConfig({"alert_burden": {"defaults": {"snooze_hours": 6}}})
    run_alert_burden(engine, shorter, end)
    _assert_hours_match_raw_rows(engine, 6)
    assert shown() > before  # a shorter snooze shows more of the same alerts
    with engine.connect() as conn:
        stamp = conn.execute(sa.select(sa.func.max(AB.c.updated_at))).scalar()
    run_alert_burden(engine, shorter, end)  # the same snooze again: nothing recounted
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(AB.c.updated_at))).scalar() == stamp
