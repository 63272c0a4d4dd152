"""Calibration statistics against statsmodels, scikit-learn and the original definitions.

Two kinds of check for each binned statistic: the function against an independent
implementation on the same binned data (tight tolerance), and the binned estimate against the
independent implementation on the raw per-prediction data (stated approximation tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from statsmodels.nonparametric.smoothers_lowess import lowess
from statsmodels.stats.proportion import proportion_confint

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
    weighted_lowess,
)
from tests.monitors.stats_data import EDGES, Raw, clipped_logit, histogram, simulate

CASES = [  # (mean logit, sd, true intercept, true slope): low-risk, rare, and common outcomes
    (-3.0, 1.0, 0.3, 0.8),
    (-5.5, 1.2, 0.9, 1.0),
    (-1.8, 0.8, -0.2, 1.2),
]


def power_sums(raw: Raw) -> PowerSums:
    return PowerSums(
        n=float(raw.p.size),
        n_positive=float(raw.y.sum()),
        sum_p=float(raw.p.sum()),
        sum_p2=float((raw.p**2).sum()),
        sum_yp=float((raw.y * raw.p).sum()),
    )


def _grouped_glm(binned: object, *, slope: bool) -> sm.GLM:
    n, events, sum_logit = binned.n, binned.events, binned.sum_logit  # type: ignore[attr-defined]
    keep = n > 0
    endog = np.column_stack([events[keep], n[keep] - events[keep]])
    mean_logit = sum_logit[keep] / n[keep]
    if slope:
        return sm.GLM(endog, sm.add_constant(mean_logit), family=sm.families.Binomial()).fit()
    return sm.GLM(
        endog, np.ones((keep.sum(), 1)), offset=mean_logit, family=sm.families.Binomial()
    ).fit()


@pytest.mark.parametrize("case", CASES)
def test_intercept_and_slope_equal_statsmodels_glm_on_the_same_grouped_data(
    case: tuple[float, float, float, float],
) -> None:
    raw = simulate(60_000, mean_logit=case[0], sd_logit=case[1], intercept=case[2],
                   slope=case[3], seed=1)  # fmt: skip
    binned = histogram(raw)
    intercept = calibration_intercept(binned.n, binned.events, binned.sum_logit)
    slope = calibration_slope(binned.n, binned.events, binned.sum_logit)
    assert intercept is not None and slope is not None
    ref_intercept = _grouped_glm(binned, slope=False)
    ref_slope = _grouped_glm(binned, slope=True)
    assert intercept.value == pytest.approx(ref_intercept.params[0], abs=1e-8)
    assert intercept.se == pytest.approx(ref_intercept.bse[0], rel=1e-6)
    assert slope.value == pytest.approx(ref_slope.params[1], abs=1e-8)
    assert slope.se == pytest.approx(ref_slope.bse[1], rel=1e-6)
    low, high = ref_slope.conf_int(alpha=0.05)[1]
    assert (slope.ci_low, slope.ci_high) == (pytest.approx(low), pytest.approx(high))
    # A design effect of 3 widens the standard error by sqrt(3), not the estimate.
    shared = calibration_slope(binned.n, binned.events, binned.sum_logit, design_effect=3.0)
    assert shared is not None
    assert shared.value == pytest.approx(slope.value)
    assert shared.se == pytest.approx(slope.se * np.sqrt(3))


@pytest.mark.parametrize("case", CASES)
def test_binned_intercept_and_slope_approximate_the_per_prediction_fit(
    case: tuple[float, float, float, float],
) -> None:
    # Stated approximation: within 0.01 of statsmodels' fit on the raw predictions (bins are
    # 0.0005-0.05 wide), standard errors within 2%.
    raw = simulate(100_000, mean_logit=case[0], sd_logit=case[1], intercept=case[2],
                   slope=case[3], seed=2)  # fmt: skip
    binned = histogram(raw)
    x = clipped_logit(raw.p)
    family = sm.families.Binomial()
    ref_intercept = sm.GLM(raw.y, np.ones((x.size, 1)), offset=x, family=family).fit()
    ref_slope = sm.GLM(raw.y, sm.add_constant(x), family=family).fit()
    intercept = calibration_intercept(binned.n, binned.events, binned.sum_logit)
    slope = calibration_slope(binned.n, binned.events, binned.sum_logit)
    assert intercept is not None and slope is not None
    assert intercept.value == pytest.approx(ref_intercept.params[0], abs=0.01)
    assert slope.value == pytest.approx(ref_slope.params[1], abs=0.01)
    assert intercept.se == pytest.approx(ref_intercept.bse[0], rel=0.02)
    assert slope.se == pytest.approx(ref_slope.bse[1], rel=0.02)
    # And the slope recovers the truth the data were made with.
    assert abs(slope.value - case[3]) < 4 * slope.se


def test_calibrated_scores_give_intercept_zero_and_slope_one() -> None:
    binned = histogram(simulate(200_000, mean_logit=-3.0, seed=3))
    intercept = calibration_intercept(binned.n, binned.events, binned.sum_logit)
    slope = calibration_slope(binned.n, binned.events, binned.sum_logit)
    assert intercept is not None and slope is not None
    assert intercept.ci_low < 0 < intercept.ci_high
    assert slope.ci_low < 1 < slope.ci_high


def test_no_events_gives_no_estimate() -> None:
    n = np.array([100.0, 50.0])
    assert calibration_intercept(n, np.zeros(2), np.array([-400.0, -150.0])) is None
    assert calibration_slope(n, np.zeros(2), np.array([-400.0, -150.0])) is None


def test_brier_and_scaled_brier_equal_scikit_learn() -> None:
    raw = simulate(50_000, mean_logit=-2.0, intercept=0.4, seed=4)
    sums = power_sums(raw)
    assert brier_score(sums) == pytest.approx(brier_score_loss(raw.y, raw.p), rel=1e-10)
    null = brier_score_loss(raw.y, np.full_like(raw.p, raw.y.mean()))
    expected = 1 - brier_score_loss(raw.y, raw.p) / null
    assert scaled_brier_score(sums) == pytest.approx(expected, rel=1e-9)


def _spiegelhalter_from_brier(raw: Raw) -> float:
    """Spiegelhalter 1986's own form: (B - E0[B]) / sqrt(Var0[B]), with sklearn's Brier."""
    p, n = raw.p, raw.p.size
    observed = brier_score_loss(raw.y, p)
    expected = np.mean(p * (1 - p))
    variance = np.sum((1 - 2 * p) ** 2 * p * (1 - p)) / n**2
    return float((observed - expected) / np.sqrt(variance))


@pytest.mark.parametrize("case", CASES)
def test_spiegelhalter_z_equals_the_brier_form_on_raw_data(
    case: tuple[float, float, float, float],
) -> None:
    # The numerator is exact from the power sums; p^3 and p^4 at bin means: within 0.5%
    # (bins are 0.05 wide above p = 0.2; well within 0.1% at clinical low risks).
    raw = simulate(80_000, mean_logit=case[0], sd_logit=case[1], intercept=case[2] / 3,
                   seed=5)  # fmt: skip
    binned = histogram(raw)
    test = spiegelhalter_z(power_sums(raw), binned.n, binned.sum_p)
    assert test is not None
    reference = _spiegelhalter_from_brier(raw)
    assert test.z == pytest.approx(reference, rel=5e-3, abs=2e-3)


def test_spiegelhalter_z_is_standard_normal_for_calibrated_scores() -> None:
    zs = []
    for seed in range(400):
        raw = simulate(3_000, mean_logit=-2.5, seed=1000 + seed)
        binned = histogram(raw)
        test = spiegelhalter_z(power_sums(raw), binned.n, binned.sum_p)
        assert test is not None
        zs.append(test.z)
    z = np.asarray(zs)
    # 400 replicates: the mean within 4 SE of 0, the SD within 12% of 1, 5% tails near 5%.
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert 0.88 < z.std() < 1.12
    assert 0.02 < np.mean(np.abs(z) > 1.96) < 0.09


def test_reliability_curve_equals_scikit_learn_calibration_curve() -> None:
    raw = simulate(40_000, mean_logit=-1.0, sd_logit=1.3, intercept=0.3, seed=6)
    binned = histogram(raw)
    # Group the histogram's bins into sklearn's ten uniform bins: every 0.1 is a bin edge.
    deciles = np.floor(EDGES[:-1] * 10 + 1e-9).astype(int)
    curve = reliability_curve(binned.n, binned.events, binned.sum_p, deciles)
    prob_true, prob_pred = calibration_curve(raw.y, raw.p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve.observed, prob_true, rtol=1e-12)
    np.testing.assert_allclose(curve.mean_predicted, prob_pred, rtol=1e-12)
    low, high = proportion_confint(curve.events, curve.n, alpha=0.05, method="wilson")
    np.testing.assert_allclose(curve.ci_low, low, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(curve.ci_high, high, rtol=1e-9)
    # With a design effect the interval is Wilson's on the effective counts.
    shared = reliability_curve(binned.n, binned.events, binned.sum_p, deciles, design_effect=3)
    low3, high3 = proportion_confint(curve.events / 3, curve.n / 3, method="wilson")
    np.testing.assert_allclose(shared.ci_low, low3, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(shared.ci_high, high3, rtol=1e-9)


def test_expected_calibration_error_equals_the_count_weighted_gap_of_scikit_learn_bins() -> None:
    raw = simulate(40_000, mean_logit=-1.0, sd_logit=1.3, intercept=0.5, seed=7)
    binned = histogram(raw)
    deciles = np.floor(EDGES[:-1] * 10 + 1e-9).astype(int)
    ece = expected_calibration_error(
        reliability_curve(binned.n, binned.events, binned.sum_p, deciles)
    )
    prob_true, prob_pred = calibration_curve(raw.y, raw.p, n_bins=10, strategy="uniform")
    counts, _ = np.histogram(raw.p, bins=np.linspace(0, 1, 11))
    counts = counts[counts > 0]
    reference = np.sum(counts * np.abs(prob_true - prob_pred)) / counts.sum()
    assert ece == pytest.approx(reference, rel=1e-10)


def test_equal_count_groups_keep_bins_whole_and_balance_counts() -> None:
    n = np.array([0, 500, 10, 10, 10, 10, 200, 5, 5, 250, 0], dtype=float)
    groups = equal_count_groups(n, 4)
    assert list(groups) == sorted(groups)  # contiguous
    totals = np.bincount(groups, weights=n)
    assert totals.sum() == n.sum() and len(totals) <= 4
    assert totals.max() == 500  # the heavy bin is a group of its own


def test_weighted_lowess_equals_statsmodels_lowess_on_repeated_points() -> None:
    rng = np.random.default_rng(8)
    x = np.sort(rng.uniform(0, 1, 30))
    y = rng.uniform(0, 1, 30)
    w = rng.integers(1, 40, 30)
    for frac in (0.3, 0.75):
        ours = weighted_lowess(x, y, w, frac=frac)
        reference = lowess(
            np.repeat(y, w), np.repeat(x, w), frac=frac, it=0, delta=0.0, return_sorted=False
        )
        np.testing.assert_allclose(np.repeat(ours, w), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_ici_e50_e90_from_bins_approximate_austin_steyerberg_on_raw_data(
    case: tuple[float, float, float, float],
) -> None:
    # Austin & Steyerberg 2019 on raw data: lowess (span 0.75) of y on p, |p - smoothed| over
    # predictions. Binned (weighted lowess on bin means): ICI within 5% + 0.0005, E90 within
    # 5% + 0.001, E50 within 12% + 0.001 (the median moves in steps of a bin).
    raw = simulate(6_000, mean_logit=case[0], sd_logit=case[1], intercept=case[2],
                   slope=case[3], seed=9)  # fmt: skip
    smoothed = lowess(raw.y, raw.p, frac=0.75, it=0, delta=0.0, return_sorted=False)
    diff = np.abs(raw.p - smoothed)
    binned = histogram(raw)
    index = integrated_calibration_index(binned.n, binned.events, binned.sum_p, frac=0.75)
    assert index is not None
    assert index.ici == pytest.approx(diff.mean(), rel=0.05, abs=5e-4)
    assert index.e90 == pytest.approx(np.quantile(diff, 0.9), rel=0.05, abs=1e-3)
    assert index.e50 == pytest.approx(np.median(diff), rel=0.12, abs=1e-3)
