"""The risk-adjusted CUSUM and the adaptive window: weights, recursion, run lengths, changes.

The run-length tests feed the monitor's own path (hourly score histograms -> binned Steiner
increments -> CUSUM) with per-prediction Bernoulli outcomes, generated independently of the
event-level simulation that set the limit, and compare what happens with what was stated.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa
from scipy import stats
from scipy.special import expit, logit
from sqlalchemy.engine import Connection, Engine
from statsmodels.stats import rates

from monitors.rollup_io import R, day_start, first_hours, latest_points_by_site
from monitors.sequential import (
    CaseMix,
    CusumState,
    WindowState,
    adaptive_window,
    binned_increments,
    first_passage,
    run_cusum,
    simulate_cusum_design,
    split_pvalues,
    steiner_weight,
)
from monitors.sequential_runner import CL, METRICS, MONITOR, settled_frontiers, stored_limits
from store.models import MetricPoint, ModelVersion, Site, table_of
from tests.monitors.stats_data import score_bins

F64 = npt.NDArray[np.float64]


def hourly_histograms(
    rng: np.random.Generator,
    *,
    paths: int,
    hours: int,
    per_hour: float,
    mean_logit: float,
    sd_logit: float,
    log_odds_shift: float = 0.0,
    shift_hour: int = 0,
) -> tuple[F64, F64, F64]:
    """Per path x hour x score bin: predictions, positives and sum of p, from raw Bernoullis.

    From `shift_hour` on, the true log odds exceed the score's by `log_odds_shift`.
    """
    counts = rng.poisson(per_hour, size=(paths, hours))
    total = int(counts.sum())
    p = expit(rng.normal(mean_logit, sd_logit, total))
    cell = np.repeat(np.arange(paths * hours), counts.ravel())
    shift = np.where(cell % hours >= shift_hour, log_odds_shift, 0.0)
    y = (rng.random(total) < expit(logit(p) + shift)).astype(float)
    flat = cell * 40 + score_bins(p)
    size = paths * hours * 40

    def grid(weights: F64 | None) -> F64:
        counts = np.bincount(flat, weights=weights, minlength=size)
        return np.asarray(counts, dtype=float).reshape(paths, hours, 40)

    return grid(None).astype(float), grid(y).astype(float), grid(p).astype(float)


def reference_mix(
    rng: np.random.Generator, *, mean_logit: float, sd_logit: float, per_day: float
) -> CaseMix:
    p = expit(rng.normal(mean_logit, sd_logit, 200_000))
    b = score_bins(p)
    n = np.bincount(b, minlength=40)
    sum_p = np.bincount(b, weights=p, minlength=40)
    keep = n > 0
    return CaseMix(n[keep] / n.sum(), sum_p[keep] / n[keep], predictions_per_day=per_day)


def test_steiner_weight_is_the_bernoulli_log_likelihood_ratio() -> None:
    # W = log P(y | odds x R) - log P(y | p): the likelihood ratio of Steiner et al. 2000.
    rng = np.random.default_rng(21)
    p = rng.uniform(0.001, 0.9, 500)
    y = (rng.random(500) < 0.3).astype(float)
    for odds_ratio in (2.0, 0.5, 1.7):
        shifted = expit(logit(p) + math.log(odds_ratio))
        reference = stats.bernoulli.logpmf(y, shifted) - stats.bernoulli.logpmf(y, p)
        np.testing.assert_allclose(steiner_weight(p, y, odds_ratio), reference, rtol=1e-10)


def test_binned_increments_approximate_per_prediction_weights_summed_per_hour() -> None:
    # The outcome term is exact; the compensator at bin means differs by Jensen's gap:
    # within 1e-4 per prediction at these risks, and divided by the design effect.
    rng = np.random.default_rng(22)
    hours, per_hour = 300, 40
    counts = rng.poisson(per_hour, hours)
    hour = np.repeat(np.arange(hours), counts)
    p = expit(rng.normal(-3.0, 1.2, hour.size))
    y = (rng.random(hour.size) < p).astype(float)
    flat = hour * 40 + score_bins(p)
    grid = lambda w: np.bincount(flat, weights=w, minlength=hours * 40).reshape(hours, 40)  # noqa: E731
    for odds_ratio in (2.0, 0.5):
        binned = binned_increments(
            grid(None), grid(y), grid(p), odds_ratio=odds_ratio, design_effect=3.0
        )
        exact = np.bincount(hour, weights=steiner_weight(p, y, odds_ratio), minlength=hours) / 3
        np.testing.assert_allclose(binned, exact, atol=1e-4 * counts.max() / 3)
        assert not np.allclose(binned, 0)


def test_cusum_worked_example_with_signal_change_point_and_head_start() -> None:
    increments = [1.0, -0.5, 2.0, -4.0, 3.0, 3.0, -1.0, -1.5, 0.2]
    hours = list(range(100, 109))
    run = run_cusum(increments, hours, limit=4.0, head_start=0.5)
    # S: 1, .5, 2.5, 0, 3, 6 -> signal at hour 105, its excursion began at hour 104;
    # restart at 2, then 1, 0 (the episode ends), .2.
    np.testing.assert_allclose(run.path, [1, 0.5, 2.5, 0, 3, 6, 1, 0, 0.2])
    assert run.signal_steps == [105]
    assert run.change_points == [104]
    assert list(run.in_episode) == [False] * 5 + [True, True, False, False]
    assert run.final == CusumState(0.2, 108, None, 105, 1)


def test_first_passage_matches_the_recursion_and_resuming_changes_nothing() -> None:
    rng = np.random.default_rng(23)
    w = rng.normal(-0.05, 0.4, size=(50, 400))
    first = first_passage(w, 3.0)
    for row, index in zip(w, first, strict=True):
        run = run_cusum(row, np.arange(row.size), limit=3.0)
        assert (run.signal_steps[0] if run.signal_steps else -1) == index
    row = w[int(np.argmax(first >= 0))]
    whole = run_cusum(row, np.arange(400), limit=3.0)
    half = run_cusum(row[:173], np.arange(173), limit=3.0)
    rest = run_cusum(row[173:], np.arange(173, 400), limit=3.0, state=half.final)
    np.testing.assert_allclose(np.r_[half.path, rest.path], whole.path)
    assert half.signal_steps + rest.signal_steps == whole.signal_steps
    assert rest.final == whole.final


ARL_CASES = [
    # (label, mean logit, sd, predictions a day, odds ratio): a common outcome watched for
    # under-prediction, a rare one for over-prediction.
    ("common, R=2", -1.9, 0.75, 48.0, 2.0),
    ("rare, R=0.5", -4.5, 1.0, 240.0, 0.5),
]


@pytest.mark.parametrize(("label", "mean_logit", "sd", "per_day", "odds_ratio"), ARL_CASES)
def test_in_control_false_alarm_rate_matches_the_stated_run_length(
    label: str, mean_logit: float, sd: float, per_day: float, odds_ratio: float
) -> None:
    # Stated: in-control ARL 30 days. Measured on 600 paths of 60 days of calibrated
    # per-prediction outcomes (about 500 false alarms). Tolerance +-20%: the sampling error
    # of the two estimates is about 5% together.
    rng = np.random.default_rng(24)
    mix = reference_mix(rng, mean_logit=mean_logit, sd_logit=sd, per_day=per_day)
    design = simulate_cusum_design(mix, odds_ratio=odds_ratio, target_arl_days=30, paths=2000)
    assert design.simulated_arl_days == pytest.approx(30)
    hours, passages = 60 * 24, []
    for _ in range(15):
        n, events, sum_p = hourly_histograms(
            rng, paths=40, hours=hours, per_hour=per_day / 24, mean_logit=mean_logit, sd_logit=sd
        )
        increments = binned_increments(n, events, sum_p, odds_ratio=odds_ratio)
        passages.append(first_passage(increments, design.limit))
    first = np.concatenate(passages)
    alarms = first >= 0
    exposure_days = np.where(alarms, first + 1, hours).sum() / 24
    measured_arl = exposure_days / alarms.sum()
    assert alarms.sum() > 300
    assert measured_arl == pytest.approx(30, rel=0.20), label


@pytest.mark.parametrize(("label", "mean_logit", "sd", "per_day", "odds_ratio"), ARL_CASES)
def test_known_shift_is_signalled_within_the_stated_delay_near_its_start(
    label: str, mean_logit: float, sd: float, per_day: float, odds_ratio: float
) -> None:
    # The odds really change by R after 5 in-control days. Stated: the out-of-control ARL of
    # the design (zero start). Measured: mean delay from the change to the first signal after
    # it, within -40% / +25% (a CUSUM already above zero at the change signals sooner), and
    # the change point estimate (start of the signalling excursion) within a day and a half of
    # the truth in at least half the paths (measured: 0.4 and 1.0 days).
    rng = np.random.default_rng(25)
    mix = reference_mix(rng, mean_logit=mean_logit, sd_logit=sd, per_day=per_day)
    design = simulate_cusum_design(mix, odds_ratio=odds_ratio, target_arl_days=365, paths=1000)
    assert design.out_of_control_arl_days is not None
    change = 5 * 24
    hours = change + int(6 * design.out_of_control_arl_days * 24) + 48
    n, events, sum_p = hourly_histograms(
        rng, paths=150, hours=hours, per_hour=per_day / 24, mean_logit=mean_logit,
        sd_logit=sd, log_odds_shift=math.log(odds_ratio), shift_hour=change,
    )  # fmt: skip
    increments = binned_increments(n, events, sum_p, odds_ratio=odds_ratio)
    delays, errors = [], []
    for row in increments:
        run = run_cusum(row, np.arange(hours), limit=design.limit)
        after = [(s, c) for s, c in zip(run.signal_steps, run.change_points, strict=True)
                 if s >= change]  # fmt: skip
        assert after, "the shift was never signalled"
        signal, change_point = after[0]
        delays.append((signal + 1 - change) / 24)
        errors.append(abs(change_point - change) / 24)
    mean_delay = float(np.mean(delays))
    assert 0.6 * design.out_of_control_arl_days <= mean_delay
    assert mean_delay <= 1.25 * design.out_of_control_arl_days, label
    assert np.median(errors) <= 1.5


def test_limit_extended_along_the_exponential_tail_agrees_with_direct_simulation() -> None:
    # A low-volume site, where simulating 20 years directly is cheap: the limit found by
    # simulating a short anchor and extending it lies within 0.25 of the direct one
    # (0.25 in h is about 25% in ARL, near the two simulations' joint sampling error).
    rng = np.random.default_rng(26)
    mix = reference_mix(rng, mean_logit=-2.0, sd_logit=0.8, per_day=6.0)
    direct = simulate_cusum_design(
        mix, odds_ratio=2.0, target_arl_days=7300, paths=400, event_budget=1e9
    )
    extended = simulate_cusum_design(
        mix, odds_ratio=2.0, target_arl_days=7300, paths=400, event_budget=2e5, seed=7
    )
    assert direct.anchor_limit == direct.limit  # simulated all the way
    assert extended.anchor_limit < extended.limit - 1.0  # extended by more than 1 in h
    assert extended.limit == pytest.approx(direct.limit, abs=0.25)


def test_split_pvalues_equal_statsmodels_poisson_rate_score_test() -> None:
    rng = np.random.default_rng(27)
    expected = rng.uniform(1, 4, 30)
    observed = np.asarray(rng.poisson(np.r_[expected[:18], 2.0 * expected[18:]]), dtype=float)
    p = split_pvalues(observed, expected)
    assert p[0] == 1.0
    for s in (1, 9, 18, 29):
        result = rates.test_poisson_2indep(
            observed[s:].sum(), expected[s:].sum(), observed[:s].sum(), expected[:s].sum(),
            method="score",
        )  # fmt: skip
        assert p[s] == pytest.approx(result.pvalue, rel=1e-9)


def _feed(days: int, o_e: F64, rng: np.random.Generator, **kwargs: float) -> list[int]:
    expected = np.full(days, 3.0)
    observed = rng.poisson(expected * o_e).astype(float)
    steps = adaptive_window(
        np.arange(1000, 1000 + days),
        observed,
        expected,
        state=WindowState(),
        **kwargs,  # type: ignore[arg-type]
    )
    return [s.state.change_day for s in steps if s.cut and s.state.change_day is not None]


def test_adaptive_window_finds_when_a_change_began_and_stays_quiet_without_one() -> None:
    rng = np.random.default_rng(28)
    found = []
    for _ in range(20):
        ratio = np.r_[np.ones(60), np.full(40, 2.5)]
        cuts = _feed(100, ratio, rng, delta=0.001)
        assert cuts, "the change was not detected"
        found.append(cuts[0] - 1060)
    assert np.median(np.abs(found)) <= 3
    false_cuts = sum(len(_feed(200, np.ones(200), rng, delta=0.001)) for _ in range(20))
    assert false_cuts <= 1  # 4000 in-control days; Bonferroni keeps each day below 0.001


# ------------------------------------------------- the runner's batched reads (both stores)

MP = table_of(MetricPoint)


def _frontier_per_site(conn: Connection, model_id: int, site_id: int, from_hour: int) -> int:
    """The settled frontier as the runner read it before, a statement or two per site."""
    unsettled = conn.execute(
        sa.select(sa.func.min(R.c.hour)).where(
            R.c.model_id == model_id,
            R.c.site_id == site_id,
            R.c.hour >= from_hour,
            R.c.n_settled < R.c.n_ok,
        )
    ).scalar()
    if unsettled is not None:
        return int(unsettled) - 1
    last = conn.execute(
        sa.select(sa.func.max(R.c.hour)).where(
            R.c.model_id == model_id, R.c.site_id == site_id, R.c.hour >= from_hour
        )
    ).scalar()
    return int(last) if last is not None else from_hour - 1


def _newest_per_metric(
    conn: Connection, model_id: int, site_id: int, metric: str, before: Any
) -> dict[str, Any] | None:
    """A metric's newest point before `before`, as the runner read it before (one statement)."""
    row = (
        conn.execute(
            sa.select(MP)
            .where(
                MP.c.monitor == MONITOR,
                MP.c.metric == metric,
                MP.c.model_id == model_id,
                MP.c.site_id == site_id,
                MP.c.version_id == 0,
                MP.c.arm == "all",
                MP.c.window_start < before,
            )
            .order_by(MP.c.window_start.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def _seed_reads(conn: Connection) -> tuple[int, list[int]]:
    """Rollups, points and limits of one model at four sites: one with unsettled hours, one
    settled throughout, one with rows only before the frontier asked for, one with none."""
    V = table_of(ModelVersion)
    model_id, version_id = conn.execute(sa.select(V.c.model_id, V.c.id).limit(1)).one()
    sites = sorted(conn.execute(sa.select(table_of(Site).c.id)).scalars())[:4]
    assert len(sites) == 4
    a, b, c, _ = sites
    hours = {a: range(1000, 1100), b: range(1010, 1050), c: range(900, 950)}
    unsettled = {a: {1040, 1070}}
    conn.execute(
        sa.insert(R),
        [
            {
                "model_id": model_id,
                "version_id": version_id,
                "site_id": site,
                "arm": arm,
                "hour": hour,
                "n_ok": 10,
                "n_settled": 7 if hour in unsettled.get(site, ()) else 10,
            }
            for site, span in hours.items()
            for hour in span
            for arm in ("control", "canary")
        ],
    )
    points = []
    for site in (a, b):
        for day in range(40, 50):
            for metric in METRICS:
                for version, arm in ((0, "all"), (version_id, "all"), (0, "canary")):
                    points.append(
                        {
                            "monitor": MONITOR,
                            "metric": metric,
                            "model_id": model_id,
                            "version_id": version,
                            "site_id": site,
                            "arm": arm,
                            "window_start": day_start(day) + timedelta(hours=site % 3),
                            "window_end": day_start(day + 1),
                            "value": day * 0.1,
                            "status": "ok",
                            "detail": {"frontier_hour": day * 24 + 23, "site": site},
                        }
                    )
    points.append({**points[0], "monitor": "calibration", "window_start": day_start(60)})
    conn.execute(sa.insert(MP), points)
    conn.execute(
        sa.insert(CL),
        [
            {
                "model_id": model_id,
                "site_id": site,
                "direction": direction,
                "odds_ratio": 2.0,
                "target_arl_days": 7300.0,
                "limit": 4.5 + site,
                "simulated_arl_days": 7300.0,
                "predictions_per_day": 100.0,
                "design_effect": 1.0,
                "reference_start": day_start(40),
                "reference_end": day_start(68),
                "paths": 200,
                "seed": 20000,
            }
            for site in (a, b)
            for direction in ("upper", "lower")
        ],
    )
    return int(model_id), sites


def test_batched_run_starts_equal_the_per_site_reads(engine: Engine) -> None:
    with engine.begin() as conn:
        model_id, sites = _seed_reads(conn)
        a, b, c, d = sites
        assert first_hours(conn, model_id) == {a: 1000, b: 1010, c: 900}

        from_hours = {a: 1000, b: 1020, c: 960, d: 24, 10_000: 1200}
        for start in (1000, 1041, 1071, 1099, 1100):
            from_hours[a] = start
            expected = {s: _frontier_per_site(conn, model_id, s, h) for s, h in from_hours.items()}
            assert settled_frontiers(conn, model_id, from_hours) == expected
        assert settled_frontiers(conn, model_id, {}) == {}

        befores = {a: day_start(45), b: day_start(52), c: day_start(45), d: day_start(38)}
        for moment in (day_start(40), day_start(41) + timedelta(hours=2), day_start(47)):
            befores[a] = moment
            batched = latest_points_by_site(
                conn, monitor=MONITOR, metrics=METRICS, model_id=model_id, before=befores
            )
            expected_points: dict[int, dict[str, dict[str, Any]]] = {}
            for site, before in befores.items():
                for metric in METRICS:
                    point = _newest_per_metric(conn, model_id, site, metric, before)
                    if point is not None:
                        expected_points.setdefault(site, {})[metric] = point
            assert batched == expected_points

        limits = stored_limits(conn, model_id, [a, c, d])
        assert set(limits) == {a} and set(limits[a]) == {"upper", "lower"}
        assert limits[a]["upper"]["limit"] == 4.5 + a
        assert stored_limits(conn, model_id, []) == {}
