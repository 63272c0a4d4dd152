"""The canary judge's statistics, each against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats import rates
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from monitors.calibration import calibration_slope
from monitors.canary import (
    ArmData,
    CanaryConfig,
    Classification,
    Direction,
    MetricComparison,
    MetricSpec,
    Scoring,
    Verdict,
    binned_quantile,
    classify,
    compare_metric,
    design_effect,
    hodges_lehmann_binned,
    judge,
    mann_whitney_binned,
    proportion_difference,
    quantile_with_ci,
    rate_ratio,
    ratio_design_effect,
    score_bin_logits,
    slope_difference,
    verdict_from,
)
from store.models import LATENCY_BIN_EDGES, SCORE_BIN_EDGES, SCORE_BINS, score_bin
from tests.conftest import REPO

# ---------------------------------------------------------------- Mann-Whitney from bins


@pytest.mark.parametrize("continuity", [True, False])
def test_mann_whitney_from_bins_equals_scipy_on_data_at_the_bin_values(continuity: bool) -> None:
    rng = np.random.default_rng(1)
    control = rng.beta(1.2, 60, size=700)
    canary = rng.beta(1.4, 55, size=300)
    x = np.bincount([score_bin(s) for s in control], minlength=SCORE_BINS)
    y = np.bincount([score_bin(s) for s in canary], minlength=SCORE_BINS)
    values = score_bin_logits()
    at_x, at_y = np.repeat(values, x), np.repeat(values, y)  # the data placed at bin values
    ours = mann_whitney_binned(x, y, use_continuity=continuity)
    ref = stats.mannwhitneyu(at_y, at_x, method="asymptotic", use_continuity=continuity)
    assert ours is not None
    assert ours.u == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.auc == pytest.approx(ref.statistic / (x.sum() * y.sum()))


def test_the_design_effect_divides_the_mann_whitney_z() -> None:
    x, y = np.array([30, 50, 20, 5]), np.array([10, 30, 30, 15])
    plain = mann_whitney_binned(x, y, use_continuity=False)
    clustered = mann_whitney_binned(x, y, use_continuity=False, design_effect=4.0)
    assert plain is not None and clustered is not None
    assert clustered.z == pytest.approx(plain.z / 2)
    assert clustered.p_value == pytest.approx(2 * stats.norm.sf(abs(plain.z) / 2))


# ---------------------------------------------------------------- Hodges-Lehmann


def _brute_force_hl(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, ...]:
    """Every pairwise difference, sorted; the median and the order statistics at C, mn+1-C,
    C from the tie-corrected sd of U (the same rank rule, independent arithmetic)."""
    diffs = np.sort(np.subtract.outer(y, x).ravel())
    m, n = x.size, y.size
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    total = m + n
    sd = math.sqrt(m * n / 12 * ((total + 1) - (counts**3 - counts).sum() / (total * (total - 1))))
    c = max(1, math.floor(m * n / 2 - stats.norm.ppf(0.5 + level / 2) * sd))
    return float(np.median(diffs)), float(diffs[c - 1]), float(diffs[m * n - c])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hodges_lehmann_equals_the_brute_force_pairwise_differences(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.round(np.linspace(-3, 3, 25), 3)
    x = rng.choice(values, size=int(rng.integers(20, 40)))
    y = rng.choice(values, size=int(rng.integers(15, 35))) + values[1] - values[0]
    y = np.round(y, 3)
    grid = np.unique(np.concatenate([x, y]))
    cx = np.array([(x == v).sum() for v in grid], dtype=float)
    cy = np.array([(y == v).sum() for v in grid], dtype=float)
    shift = hodges_lehmann_binned(cx, cy, grid)
    assert shift is not None
    estimate, low, high = _brute_force_hl(x, y)
    assert shift.estimate == pytest.approx(estimate)
    assert shift.ci_low == pytest.approx(low)
    assert shift.ci_high == pytest.approx(high)


def test_hodges_lehmann_interval_covers_a_known_shift() -> None:
    # A property no formula can fake: over many samples the 95% interval covers the truth.
    rng = np.random.default_rng(4)
    covered = 0
    runs = 300
    for _ in range(runs):
        x = rng.normal(0, 1, 40)
        y = rng.normal(0.5, 1, 30)
        grid = np.concatenate([x, y])
        order = np.argsort(grid)
        cx = np.concatenate([np.ones(40), np.zeros(30)])[order]
        cy = np.concatenate([np.zeros(40), np.ones(30)])[order]
        shift = hodges_lehmann_binned(cx, cy, grid[order])
        assert shift is not None
        covered += shift.ci_low <= 0.5 <= shift.ci_high
    assert 0.92 <= covered / runs <= 0.99


# ---------------------------------------------------------------- rates and proportions


@pytest.mark.parametrize(
    ("x1", "e1", "x2", "e2"),
    [(20, 100.0, 10, 100.0), (7, 350.0, 31, 1200.0), (12.4, 88.0, 40.7, 510.0), (3, 50.0, 0, 60.0)],
)
def test_rate_ratio_equals_statsmodels_score_test_and_interval(
    x1: float, e1: float, x2: float, e2: float
) -> None:
    ours = rate_ratio(x1, e1, x2, e2)
    assert ours is not None
    ref = rates.test_poisson_2indep(x1, e1, x2, e2, method="score")
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    if x2 > 0:
        assert ours.effect == pytest.approx(ref.ratio)
        low, high = rates.confint_poisson_2indep(x1, e1, x2, e2, method="score")
        assert ours.ci_low == pytest.approx(low, rel=1e-6)
        assert ours.ci_high == pytest.approx(high, rel=1e-6)
    else:
        assert math.isinf(ours.ci_high)


def test_rate_ratio_with_a_design_effect_is_the_test_on_effective_counts() -> None:
    ours = rate_ratio(120, 400.0, 300, 1800.0, design_effect=25.0)
    ref = rates.test_poisson_2indep(120 / 25, 400.0, 300 / 25, 1800.0, method="score")
    low, high = rates.confint_poisson_2indep(120 / 25, 400.0, 300 / 25, 1800.0, method="score")
    assert ours is not None
    assert ours.effect == pytest.approx((120 / 400) / (300 / 1800))
    assert ours.p_value == pytest.approx(ref.pvalue)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(low, rel=1e-6), pytest.approx(high))


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "d"),
    [(30, 100, 20, 120, 1.0), (5, 2000, 19, 6100, 1.0), (990, 1000, 2950, 3000, 1.2)],
)
def test_proportion_difference_equals_newcombe_and_the_pooled_z_test(
    x1: float, n1: float, x2: float, n2: float, d: float
) -> None:
    ours = proportion_difference(x1, n1, x2, n2, design_effect=d)
    assert ours is not None
    low, high = confint_proportions_2indep(x1 / d, n1 / d, x2 / d, n2 / d, method="newcomb")
    _, p = proportions_ztest([x1 / d, x2 / d], [n1 / d, n2 / d])
    assert ours.effect == pytest.approx(x1 / n1 - x2 / n2)
    assert ours.ci_low == pytest.approx(low, rel=1e-9)
    assert ours.ci_high == pytest.approx(high, rel=1e-9)
    assert ours.p_value == pytest.approx(p, rel=1e-9)


def test_kish_design_effect_is_the_variance_inflation_of_clustered_counts() -> None:
    # Compound Poisson: clusters arrive as Poisson, each brings A events.
    rng = np.random.default_rng(9)
    sizes = np.array([1, 2, 5, 20, 60])
    probs = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    totals = []
    for _ in range(4000):
        a = rng.choice(sizes, size=rng.poisson(30), p=probs)
        totals.append(a.sum())
    expected = float((probs * sizes**2).sum() / (probs * sizes).sum())
    assert np.var(totals) / np.mean(totals) == pytest.approx(expected, rel=0.08)
    a = rng.choice(sizes, size=5000, p=probs)
    assert design_effect(a.sum(), (a**2).sum()) == pytest.approx(expected, rel=0.05)


def test_ratio_design_effect_equals_the_cluster_robust_variance_of_a_logistic_fit() -> None:
    # PPV: each encounter contributes a_i settled alerts of which y_i were positive.
    rng = np.random.default_rng(10)
    a = rng.integers(1, 40, size=60)
    y = np.where(rng.random(60) < 0.2, np.minimum(a, rng.integers(1, 4, size=60)), 0)
    outcome = np.concatenate(
        [np.r_[np.ones(k), np.zeros(n - k)] for n, k in zip(a, y, strict=True)]
    )
    groups = np.repeat(np.arange(60), a)
    exog = np.ones((outcome.size, 1))
    naive = sm.GLM(outcome, exog, family=sm.families.Binomial()).fit()
    robust = sm.GLM(outcome, exog, family=sm.families.Binomial()).fit(
        cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False}
    )
    expected = float(robust.bse[0] ** 2 / naive.bse[0] ** 2)
    ours = ratio_design_effect(a.sum(), (a**2).sum(), y.sum(), (y**2).sum(), (a * y).sum())
    assert ours == pytest.approx(expected, rel=1e-6)
    assert ours < design_effect(a.sum(), (a**2).sum())  # far below the alert count's


# ---------------------------------------------------------------- latency quantiles


def test_binned_quantile_is_within_its_bin_of_the_raw_quantile() -> None:
    rng = np.random.default_rng(2)
    latency = rng.lognormal(math.log(60), 0.6, 20000)
    counts = np.bincount(
        np.clip(np.searchsorted(LATENCY_BIN_EDGES, latency, side="right") - 1, 0, None),
        minlength=len(LATENCY_BIN_EDGES),
    )
    for q in (0.5, 0.95):
        ours = binned_quantile(counts, LATENCY_BIN_EDGES, q)
        raw = float(np.quantile(latency, q))
        b = int(np.searchsorted(LATENCY_BIN_EDGES, raw, side="right") - 1)
        assert LATENCY_BIN_EDGES[b] <= ours <= LATENCY_BIN_EDGES[b + 1]


def test_quantile_interval_covers_the_true_p95() -> None:
    # Order-statistic interval from binomial ranks: coverage checked by simulation, on data
    # at exact values (one value per bin) so the histogram loses nothing.
    rng = np.random.default_rng(8)
    values = np.arange(1.0, 401.0)
    edges = tuple(values)  # one bin per value; the last bin open
    true_p95 = float(np.quantile(np.repeat(values, 1), 0.95, method="inverted_cdf"))
    covered = 0
    for _ in range(400):
        sample = rng.choice(values, size=300)
        counts = np.bincount(sample.astype(int) - 1, minlength=values.size)
        q = quantile_with_ci(counts, edges, 0.95)
        assert q is not None
        covered += q.ci_low <= true_p95 + 1 and q.ci_high >= true_p95 - 1
    assert covered / 400 >= 0.93


# ---------------------------------------------------------------- calibration slope difference


def test_slope_difference_equals_the_interaction_of_one_logistic_model() -> None:
    rng = np.random.default_rng(6)
    rows = []
    for arm, shift, slope in (("control", 0.0, 1.0), ("canary", 0.3, 0.7)):
        logits = np.linspace(-4.5, -0.5, 12)  # one distinct predicted logit per bin
        n = rng.integers(200, 600, size=logits.size)
        events = rng.binomial(n, 1 / (1 + np.exp(-(shift + slope * logits))))
        rows += [
            {"arm": arm, "lp": lp, "n": int(k), "events": int(e)}
            for lp, k, e in zip(logits, n, events, strict=True)
        ]
    frame = pd.DataFrame(rows)
    frame["canary"] = (frame["arm"] == "canary").astype(float)
    fit = smf.glm(
        "events + I(n - events) ~ lp * canary", data=frame, family=sm.families.Binomial()
    ).fit()
    fits = {}
    for arm in ("control", "canary"):
        part = frame[frame["arm"] == arm]
        fits[arm] = calibration_slope(part["n"], part["events"], part["lp"] * part["n"])
    assert fits["canary"] is not None and fits["control"] is not None
    diff = slope_difference(fits["canary"], fits["control"])
    assert diff.effect == pytest.approx(fit.params["lp:canary"], rel=1e-6)
    se = (diff.ci_high - diff.ci_low) / (2 * stats.norm.ppf(0.975))
    assert se == pytest.approx(fit.bse["lp:canary"], rel=1e-4)
    assert diff.p_value == pytest.approx(fit.pvalues["lp:canary"], rel=1e-3)


# ---------------------------------------------------------------- classification and verdict


def _spec(**kw: object) -> MetricSpec:
    values: dict[str, object] = {"name": "alert_rate", "tolerance": 0.25}
    values.update(kw)
    return MetricSpec(**values)  # type: ignore[arg-type]


def test_classification_follows_kayenta_significance_and_tolerance() -> None:
    up = _spec(direction=Direction.INCREASE)
    assert classify(1.6, True, up) == (Classification.HIGH, True)
    assert classify(1.6, False, up) == (Classification.PASS, False)  # not significant
    assert classify(1.2, True, up) == (Classification.PASS, False)  # within tolerance
    assert classify(0.5, True, up) == (Classification.LOW, False)  # the harmless direction
    either = _spec(direction=Direction.EITHER)
    assert classify(0.5, True, either) == (Classification.LOW, True)
    assert classify(None, True, _spec(must_have_data=True)) == (Classification.NODATA, False)
    assert classify(None, True, _spec()) == (Classification.NODATA, False)
    diff = _spec(name="latency_sli", tolerance=0.005, direction=Direction.DECREASE)
    assert classify(-0.01, True, diff) == (Classification.LOW, True)


def _comparison(
    metric: str,
    failed: bool,
    *,
    weight: float = 1.0,
    critical: bool = False,
    nodata: bool = False,
    must_have_data: bool = False,
) -> MetricComparison:
    if nodata:
        cls = Classification.NODATA
    else:
        cls = Classification.HIGH if failed else Classification.PASS
    return MetricComparison(
        metric=metric,
        label=metric,
        canary_value=None,
        control_value=None,
        effect=None,
        ci_low=None,
        ci_high=None,
        p_value=None,
        classification=cls,
        failed=failed,
        weight=weight,
        critical=critical,
        must_have_data=must_have_data,
        design_effect=1.0,
        n_canary=0,
        n_control=0,
        rule="",
    )


def test_weighted_score_and_verdict() -> None:
    ok = [_comparison("a", False, weight=2), _comparison("b", False, weight=1)]
    assert verdict_from(ok, pass_threshold=95, marginal_threshold=75).verdict == Verdict.PASS
    one_light = [*ok, _comparison("c", True, weight=0.1)]
    j = verdict_from(one_light, pass_threshold=95, marginal_threshold=75)
    assert j.score == pytest.approx(100 * 3 / 3.1)
    assert j.verdict == Verdict.PASS
    marginal = [*ok, _comparison("c", True, weight=0.5)]
    j = verdict_from(marginal, pass_threshold=95, marginal_threshold=75)
    assert j.score == pytest.approx(100 * 3 / 3.5) and j.verdict == Verdict.MARGINAL
    failing = [*ok, _comparison("c", True, weight=2)]
    assert verdict_from(failing, pass_threshold=95, marginal_threshold=75).verdict == Verdict.FAIL
    critical = [*ok, _comparison("c", True, weight=0.01, critical=True)]
    j = verdict_from(critical, pass_threshold=95, marginal_threshold=75)
    assert j.verdict == Verdict.FAIL and j.critical_failed == ["c"]
    nodata = [*ok, _comparison("c", False, nodata=True, weight=5)]
    j = verdict_from(nodata, pass_threshold=95, marginal_threshold=75)
    assert j.score == 100.0 and j.verdict == Verdict.PASS and j.no_data == ["c"]
    required = [*ok, _comparison("c", False, nodata=True, must_have_data=True)]
    assert verdict_from(required, pass_threshold=95, marginal_threshold=75).verdict == (
        Verdict.NODATA
    )
    required_and_failing = [*required, _comparison("d", True, critical=True)]
    j = verdict_from(required_and_failing, pass_threshold=95, marginal_threshold=75)
    assert j.verdict == Verdict.FAIL
    only = [_comparison("c", False, nodata=True)]
    assert verdict_from(only, pass_threshold=95, marginal_threshold=75).verdict == Verdict.NODATA


def _arm(label: str, *, scores: np.ndarray, alerts: float, rng: np.random.Generator) -> ArmData:
    arm = ArmData(label)
    arm.score_counts = np.bincount([score_bin(s) for s in scores], minlength=SCORE_BINS).astype(
        float
    )
    arm.n = arm.n_ok = float(scores.size)
    arm.n_alert = alerts
    arm.n_on_time = float(scores.size)
    arm.cluster = {"scores": (scores.size, scores.size), "alerts": (alerts, alerts)}
    return arm


def test_the_judge_fails_a_critical_alert_rate_and_passes_identical_arms() -> None:
    config = CanaryConfig.from_file(REPO / "config" / "canary.yaml")
    rng = np.random.default_rng(12)
    base = rng.beta(1.1, 70, size=5000)
    control = _arm("control", scores=base, alerts=50, rng=rng)
    same = _arm("canary", scores=rng.permutation(base)[:2500], alerts=25, rng=rng)
    j = judge(same, control, config, scoring=Scoring(240))
    assert j.verdict == Verdict.PASS, j.to_json()
    loud = _arm("canary", scores=base[:2500], alerts=90, rng=rng)
    j = judge(loud, control, config, scoring=Scoring(240))
    assert j.verdict == Verdict.FAIL and "alert_rate" in j.critical_failed
    rate = next(m for m in j.metrics if m.metric == "alert_rate")
    assert rate.canary_value == pytest.approx(100 * 90 / (2500 * 240 / 1440))
    assert rate.effect == pytest.approx((90 / 2500) / (50 / 5000))


def test_too_little_data_is_no_data_and_a_must_have_metric_keeps_the_canary_from_passing() -> None:
    config = CanaryConfig.from_file(REPO / "config" / "canary.yaml")
    rng = np.random.default_rng(1)
    small = _arm("canary", scores=rng.beta(1, 50, 50), alerts=1, rng=rng)
    control = _arm("control", scores=rng.beta(1, 50, 5000), alerts=60, rng=rng)
    m = compare_metric(config.metrics["alert_rate"], small, control, scoring=Scoring(240))
    assert m.classification == Classification.NODATA and not m.failed
    assert "canary: 50 scores, needs 200" in m.reason
    j = judge(small, control, config, scoring=Scoring(240))
    assert j.verdict == Verdict.NODATA and "alert_rate" in j.no_data
    assert j.failed == []  # missing data is never a failure


def test_config_file_parses_and_refuses_unknown_metrics() -> None:
    config = CanaryConfig.from_file(REPO / "config" / "canary.yaml")
    assert set(config.metrics) == {
        "score_distribution", "alert_rate", "error_rate", "latency_sli", "latency_p95",
        "degraded", "oe_ratio", "calibration_slope", "ppv",
    }  # fmt: skip
    assert config.metrics["oe_ratio"].critical and config.metrics["alert_rate"].must_have_data
    assert config.stages["canary"].verdict == ("Pass",)
    assert config.randomised is False
    with pytest.raises(ValueError, match="unknown metric"):
        CanaryConfig.from_dict({"metrics": {"auc": {}}})
    assert SCORE_BIN_EDGES[0] == 0.0
