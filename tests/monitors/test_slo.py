"""SLOs: burn rates against the SRE Workbook, the guard against scipy, runs from a store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from scipy import stats
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from monitors.base import Status
from monitors.durations import epoch_seconds, parse_duration
from monitors.slo import (
    BurnRule,
    SLOConfig,
    SLOSpec,
    WindowCounts,
    bad_share_lower_bound,
    bucket_sums,
    budget_remaining,
    burn_rate,
    burn_rate_threshold,
    evaluate_slo,
    first_firing_rule,
    hours_to_exhaustion,
    load_slo_config,
    replay_slo,
    run_slo_monitor,
    window_start_seconds,
)
from store.models import MetricPoint, Prediction, Site, table_of
from store.rollups import refresh
from tests.factories import iso, prediction, write_jsonl

THIRTY_DAYS = timedelta(days=30)
H = timedelta(hours=1)
M = timedelta(minutes=1)
RULES = (
    BurnRule("page", 0.02, 1 * H, 5 * M),
    BurnRule("page", 0.05, 6 * H, 30 * M),
    BurnRule("ticket", 0.10, 72 * H, 6 * H),
)
CONFIG = SLOConfig(window=THIRTY_DAYS, guard_confidence=0.95, rules=RULES)


# ---------------------------------------------------------------- SRE Workbook, chapter 5


@pytest.mark.parametrize(
    ("consumed", "long", "factor"),
    [(0.02, 1 * H, 14.4), (0.05, 6 * H, 6.0), (0.10, 72 * H, 1.0)],
)
def test_burn_rate_factors_match_the_workbook_table(
    consumed: float, long: timedelta, factor: float
) -> None:
    # "Recommended parameters": budget consumed, long window, burn rate, for a 30-day window.
    assert burn_rate_threshold(consumed, long, THIRTY_DAYS) == pytest.approx(factor)


@pytest.mark.parametrize(
    ("error_rate", "burn", "exhaustion"),
    # Workbook: burn rate, error rate for a 99.9% SLO, time to exhaust a 30-day budget.
    [
        (0.001, 1, 30 * 24 * H),
        (0.002, 2, 15 * 24 * H),
        (0.01, 10, 3 * 24 * H),
        (1.0, 1000, 43.2 * M),
    ],
)
def test_burn_rate_and_time_to_exhaustion_match_the_workbook(
    error_rate: float, burn: float, exhaustion: timedelta
) -> None:
    rate = burn_rate(error_rate * 100_000, 100_000, target=0.999)
    assert float(rate) == pytest.approx(burn)
    hours = hours_to_exhaustion(1.0, rate, THIRTY_DAYS)
    assert float(hours) == pytest.approx(exhaustion / H)


def test_budget_and_exhaustion_edges() -> None:
    # 2% of a 30-day budget spent in an hour at 14.4×: the hour's own share of the budget.
    assert float(budget_remaining(144, 10_000, 0.99)) == pytest.approx(1 - 1.44)
    assert float(budget_remaining(20, 10_000, 0.99)) == pytest.approx(0.8)
    assert np.isnan(budget_remaining(0, 0, 0.99))
    assert float(hours_to_exhaustion(0.5, 0.0, THIRTY_DAYS)) == np.inf
    assert float(hours_to_exhaustion(-0.1, 3.0, THIRTY_DAYS)) == 0.0
    assert float(hours_to_exhaustion(0.5, 2.0, THIRTY_DAYS)) == pytest.approx(180.0)


@pytest.mark.parametrize(("bad", "total"), [(1, 5), (3, 5), (7, 40), (130, 10_000), (20, 20)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_guard_bound_is_the_exact_binomial_lower_limit(
    bad: int, total: int, confidence: float
) -> None:
    # One-sided 95% lower = lower end of the two-sided 90% exact (Clopper-Pearson) interval.
    two_sided = 1 - 2 * (1 - confidence)
    expected = stats.binomtest(bad, total).proportion_ci(two_sided, method="exact").low
    assert float(bad_share_lower_bound(bad, total, confidence)) == pytest.approx(expected)
    assert float(bad_share_lower_bound(0, total, confidence)) == 0.0


def _counts(**windows: tuple[float, float]) -> dict[timedelta, WindowCounts]:
    return {
        parse_duration(k.removeprefix("w")): WindowCounts(np.array([b]), np.array([t]))
        for k, (b, t) in windows.items()
    }


def _fired(guard: float = 0.0, **windows: tuple[float, float]) -> tuple[int, int]:
    # guard 0 switches the low-traffic guard off (its bound is then 1): the windows alone.
    fired, blocked = first_firing_rule(
        _counts(**windows), RULES, target=0.999, slo_window=THIRTY_DAYS, guard_confidence=guard
    )
    return int(fired[0]), int(blocked[0])


QUIET = {"w6h": (0, 60_000), "w30m": (0, 5_000), "w3d": (0, 700_000)}


def test_a_rule_fires_only_when_both_windows_burn_at_its_factor() -> None:
    # 99.9% target: 14.4× is an error rate of 1.44%.
    assert _fired(w1h=(144, 10_000), w5m=(15, 1_000), **QUIET) == (0, -1)  # exactly 14.4×
    assert _fired(w1h=(143, 10_000), w5m=(15, 1_000), **QUIET)[0] == -1  # just under
    # The long window burns but the short one has recovered: no page (fast reset).
    assert _fired(w1h=(500, 10_000), w5m=(1, 1_000), **QUIET)[0] == -1
    # A short window with no traffic neither confirms nor refutes: the long window decides.
    assert _fired(w1h=(500, 10_000), w5m=(0, 0), **QUIET)[0] == 0
    # Slow burn: 6× over 6 h and 30 min fires the second page rule.
    slow = {
        "w1h": (60, 10_000),
        "w5m": (6, 1_000),
        "w6h": (400, 60_000),
        "w30m": (40, 5_000),
        "w3d": (500, 700_000),
    }
    assert _fired(**slow)[0] == 1
    # The most severe rule wins when several fire.
    assert _fired(w1h=(900, 10_000), w5m=(90, 1_000), w6h=(900, 60_000), w30m=(90, 5_000),
                  w3d=(900, 700_000))[0] == 0  # fmt: skip


def test_the_guard_holds_back_a_page_on_thin_traffic() -> None:
    # A 20-bed site: one late score among 5 in the hour is a 200× point burn rate, but the
    # exact lower bound (1.0%) burns only 10× < 14.4×: held back, and said so.
    fired, blocked = _fired(0.95, w1h=(1, 5), w5m=(1, 1), **QUIET)
    assert (fired, blocked) == (-1, 0)
    assert _fired(0.0, w1h=(1, 5), w5m=(1, 1), **QUIET) == (0, -1)  # unguarded it would page
    # Four of five late is strong evidence even at that volume; so is 2% of 10,000 at 99%.
    assert _fired(0.95, w1h=(4, 5), w5m=(1, 1), **QUIET)[0] == 0
    assert _fired(0.95, w1h=(200, 10_000), w5m=(20, 1_000), **QUIET)[0] == 0


def test_bucket_sums_and_window_starts() -> None:
    rng = np.random.default_rng(4)
    starts = np.arange(0, 48 * 3600, 300, dtype=np.int64)
    values = rng.integers(0, 10, size=(len(starts), 2))
    queries = rng.integers(0, 48 * 3600, size=(50, 2))
    lo, hi = queries.min(axis=1), queries.max(axis=1)
    got = bucket_sums(starts, values, lo, hi)
    for k in range(len(lo)):
        mask = (starts >= lo[k]) & (starts < hi[k])
        assert got[k].tolist() == values[mask].sum(axis=0).tolist()
    t = epoch_seconds(datetime(2026, 9, 1, 14, 37, tzinfo=UTC))
    assert int(t - window_start_seconds(t, timedelta(minutes=5))) == 300
    assert int(t - window_start_seconds(t, H)) == 3600
    # Long windows start on the hour boundary: 6 h as of 14:37 covers 08:00-14:37.
    assert int(t - window_start_seconds(t, 6 * H)) == 6 * 3600 + 37 * 60


def test_shipped_config_loads_and_refuses_mistakes(tmp_path: Path) -> None:
    config = load_slo_config(Path(__file__).resolve().parents[2] / "config" / "slos.yaml")
    assert [r.factor(config.window) for r in config.rules] == pytest.approx([14.4, 6.0, 1.0])
    assert {s.sli for s in config.slos} == {"latency", "availability"}
    bad = tmp_path / "slos.yaml"
    bad.write_text("slos:\n  - {name: x, model: m, sli: speed, target: 0.9}\n")
    with pytest.raises(ValueError, match="sli must be one of"):
        load_slo_config(bad)
    bad.write_text("slos:\n  - {name: x, model: m, sli: latency, target: 99}\n")
    with pytest.raises(ValueError, match="strictly between"):
        load_slo_config(bad)


# ---------------------------------------------------------------- from a store

NOW = datetime(2026, 9, 10, 12, 40, tzinfo=UTC)


def _stream(tmp_path: Path) -> Path:
    """UMC: 60 scores an hour for 8 h, 70% late in the last 40 min; RVH: 4 an hour, one late."""
    records = []
    n = 0
    start = NOW - timedelta(hours=8)
    for minute in range(0, 8 * 60, 1):
        scored = start + timedelta(minutes=minute, seconds=30)
        late = scored > NOW - timedelta(minutes=40) and minute % 10 < 7
        n += 1
        status = "timeout" if minute % 97 == 0 else "ok"
        records.append(
            prediction(
                n,
                scored=scored,
                site="UMC",
                trigger_at=iso(scored - timedelta(seconds=600 if late else 50)),
                status=status,
                score=None if status != "ok" else 0.01,
                delivered_at=None if status != "ok" else iso(scored + timedelta(seconds=2)),
            )
        )
        if minute % 15 == 0:
            n += 1
            slow = minute == 465
            records.append(
                prediction(
                    n,
                    scored=scored,
                    site="RVH",
                    trigger_at=iso(scored - timedelta(seconds=900 if slow else 40)),
                )
            )
    # A score after `now` must not count.
    records.append(prediction(n + 1, scored=NOW + timedelta(minutes=1), site="UMC"))
    return write_jsonl(tmp_path / "predictions-slo.jsonl", records)


def test_runner_counts_windows_from_rollups_and_raw_rows_and_pages_the_right_site(
    engine: Engine, tmp_path: Path
) -> None:
    list(collect_files(engine, [_stream(tmp_path)], secret="s"))
    refresh(engine, now=NOW + timedelta(hours=1))
    config = load_slo_config()
    results = run_slo_monitor(engine, "latency", NOW, config=config)
    by_site = {r.site_id: r for r in results if r.metric == "deterioration-latency"}
    P, S = table_of(Prediction), table_of(Site)
    with engine.connect() as conn:
        sites = dict(conn.execute(sa.select(S.c.code, S.c.id)).all())
        raw = pd.read_sql(
            sa.select(P.c.site_id, P.c.scored_at, P.c.status, P.c.latency_seconds).where(
                P.c.model_id == 1
            ),
            conn,
        )
    raw["scored_at"] = pd.to_datetime(raw["scored_at"], utc=True)
    umc, rvh = by_site[sites["UMC"]], by_site[sites["RVH"]]
    # Independent count of the 1-hour and 6-hour windows from the raw rows.
    for window, start in [("1h", NOW - H), ("6h", NOW.replace(minute=0) - 6 * H)]:
        rows = raw[(raw.site_id == sites["UMC"]) & (raw.scored_at >= start) & (raw.scored_at < NOW)]
        ok = rows[rows.status == "ok"]
        assert umc.detail["counts"][window] == [int((ok.latency_seconds > 300).sum()), len(ok)]
    assert umc.status == Status.BREACH
    assert umc.detail["severity"] == "page"
    assert umc.runbook == "latency-burn"
    # One late score in thin traffic: no page (the guard held it back), though 1 of 32 late
    # does overspend a 1% budget (shown in the detail, not alerted on).
    assert rvh.status == Status.OK
    assert rvh.detail["guard_held_back"] is not None
    assert rvh.detail["budget_remaining"] == pytest.approx(1 - (1 / 32) / 0.01, abs=1e-3)
    # Availability: the timeouts at UMC are ~1%, a slow burn, no page.
    availability = run_slo_monitor(engine, "availability", NOW, config=config)
    assert all(r.detail["severity"] != "page" for r in availability)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).select_from(table_of(MetricPoint))
        ).scalar()
    assert stored == len(results) + len(availability)
    # Same hour, later run: the hour's point is updated, not duplicated.
    run_slo_monitor(engine, "latency", NOW + timedelta(minutes=5), config=config)
    with engine.connect() as conn:
        again = conn.execute(sa.select(sa.func.count()).select_from(table_of(MetricPoint))).scalar()
    assert again == stored

    # The replay from 5-minute buckets gives the live run's numbers at the same instant.
    umc_rows = raw[raw.site_id == sites["UMC"]].copy()
    umc_rows["bucket"] = umc_rows.scored_at.astype("int64") // 10**9 // 300 * 300
    umc_rows["bad"] = (umc_rows.status == "ok") & ~(umc_rows.latency_seconds <= 300)
    buckets = (
        umc_rows[umc_rows.status == "ok"]
        .groupby("bucket")
        .agg(bad=("bad", "sum"), total=("bad", "size"))
    )
    spec = next(s for s in config.slos if s.name == "deterioration-latency")
    replayed = replay_slo(
        buckets.index.to_numpy(), buckets.bad, buckets.total, [epoch_seconds(NOW)], spec, config
    )
    assert int(replayed.fired[0]) == config.rules.index(
        next(r for r in config.rules if r.describe(config.window) == umc.detail["rule"])
    )
    for window, counts in replayed.counts.items():
        label = next(k for k in umc.detail["counts"] if parse_duration(k) == window)
        assert [int(counts.bad[0]), int(counts.total[0])] == umc.detail["counts"][label]


def test_a_latency_threshold_that_disagrees_with_the_registry_is_refused(engine: Engine) -> None:
    config = SLOConfig(
        rules=RULES, slos=(SLOSpec("x", "deterioration", "latency", 0.99, threshold_seconds=60),)
    )
    with pytest.raises(ValueError, match="latency_slo_seconds"):
        run_slo_monitor(engine, "latency", NOW, config=config)


def test_evaluation_reports_budget_and_time_to_exhaustion() -> None:
    spec = SLOSpec("x", "m", "availability", 0.99)
    config = SLOConfig(window=THIRTY_DAYS, rules=RULES, exhaustion_window=6 * H)
    counts = {w: WindowCounts(np.array([0.0]), np.array([1000.0])) for w in config.windows()}
    counts[THIRTY_DAYS] = WindowCounts(np.array([500.0]), np.array([100_000.0]))  # half spent
    counts[6 * H] = WindowCounts(np.array([20.0]), np.array([1000.0]))  # burning at 2×
    evaluation = evaluate_slo(counts, spec, config)
    assert float(evaluation.budget_remaining[0]) == pytest.approx(0.5)
    assert float(evaluation.sli[0]) == pytest.approx(0.995)
    assert float(evaluation.hours_to_exhaustion[0]) == pytest.approx(0.5 * 720 / 2)
