"""Calibration of predicted risks against settled outcomes, computed from binned rollups.

The score histogram keeps, per score bin, the settled predictions `n`, their positives,
`sum p` and `sum logit p`; the hourly rollup keeps the power sums `sum p`, `sum p^2` and
`sum y*p`. Everything here is a pure function of those arrays. Where a statistic needs the
individual predictions, each prediction is replaced by its bin's mean (score bins are narrow,
0.0005 wide at low risk), and the docstring says so.

Outcomes shared by several predictions of one encounter (a deterioration outcome settles up
to three 4-hourly scores) make the labels positively correlated: variances are multiplied by
the Kish design effect `d`, as in the O:E monitor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.special import expit, ndtr

F64 = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and confidence interval."""

    value: float
    se: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class LogisticFit:
    coef: F64
    cov: F64
    converged: bool


@lru_cache(maxsize=32)
def _z(ci_level: float) -> float:
    """The two-sided normal quantile of `ci_level` (cached: a few levels, many intervals)."""
    return float(stats.norm.ppf(0.5 + ci_level / 2))


def fit_grouped_logistic(
    events: ArrayLike,
    trials: ArrayLike,
    design: ArrayLike,
    offset: ArrayLike | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LogisticFit:
    """Binomial GLM with logit link on grouped data, by Newton-Raphson (= IRLS).

    McCullagh & Nelder 1989, Generalized Linear Models, 2nd ed., section 4.4. `events` of
    `trials` per row, `design` the model matrix, `offset` added to the linear predictor.
    """
    y = np.asarray(events, dtype=float)
    m = np.asarray(trials, dtype=float)
    x = np.atleast_2d(np.asarray(design, dtype=float))
    if x.shape[0] != y.shape[0]:
        x = x.T
    off = np.zeros_like(y) if offset is None else np.asarray(offset, dtype=float)
    beta = np.zeros(x.shape[1])

    def deviance(b: F64) -> float:
        mu = np.clip(expit(x @ b + off), 1e-300, 1 - 1e-16)
        return float(-2 * np.sum(y * np.log(mu) + (m - y) * np.log1p(-mu)))

    current = deviance(beta)
    converged = False
    info = np.eye(x.shape[1])
    for _ in range(max_iter):
        mu = expit(x @ beta + off)
        info = x.T @ ((m * mu * (1 - mu))[:, None] * x)
        score = x.T @ (y - m * mu)
        try:
            step = np.linalg.solve(info, score)
        except np.linalg.LinAlgError:
            break
        # Step halving keeps the deviance falling (guards against overshoot far from 0).
        for _half in range(30):
            candidate = beta + step
            new = deviance(candidate)
            if new <= current + 1e-12:
                break
            step = step / 2
        beta, current = candidate, new
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    mu = expit(x @ beta + off)
    info = x.T @ ((m * mu * (1 - mu))[:, None] * x)
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        cov = np.full_like(info, np.nan)
        converged = False
    return LogisticFit(beta, cov, converged)


def _estimate(value: float, variance: float, ci_level: float) -> Estimate:
    se = float(np.sqrt(variance))
    z = _z(ci_level)
    return Estimate(float(value), se, float(value - z * se), float(value + z * se))


def calibration_intercept(
    n: ArrayLike,
    events: ArrayLike,
    sum_logit: ArrayLike,
    *,
    design_effect: float = 1.0,
    ci_level: float = 0.95,
) -> Estimate | None:
    """Calibration intercept ("in the large"): logit P(y) = a + logit(p), slope fixed at 1.

    Cox 1958 (Biometrika 45:562); Steyerberg 2019, Clinical Prediction Models, ch. 15.
    Grouped-binomial fit over score bins with each bin's mean logit as the offset; this
    approximates the per-prediction fit to within the spread of logit p inside a bin.
    """
    trials, ev, logit = _nonempty(n, events, sum_logit)
    if trials.size == 0 or ev.sum() == 0 or ev.sum() == trials.sum():
        return None
    fit = fit_grouped_logistic(ev, trials, np.ones((trials.size, 1)), offset=logit / trials)
    if not fit.converged:
        return None
    return _estimate(fit.coef[0], fit.cov[0, 0] * max(1.0, design_effect), ci_level)


def calibration_slope(
    n: ArrayLike,
    events: ArrayLike,
    sum_logit: ArrayLike,
    *,
    design_effect: float = 1.0,
    ci_level: float = 0.95,
) -> Estimate | None:
    """Calibration slope: b in logit P(y) = a + b * logit(p).

    Cox 1958 (Biometrika 45:562). Grouped-binomial fit over score bins with each bin's mean
    logit as the covariate (approximates the per-prediction fit; needs two non-empty bins).
    """
    trials, ev, logit = _nonempty(n, events, sum_logit)
    if trials.size < 2 or ev.sum() == 0 or ev.sum() == trials.sum():
        return None
    x = np.column_stack([np.ones(trials.size), logit / trials])
    fit = fit_grouped_logistic(ev, trials, x)
    if not fit.converged:
        return None
    return _estimate(fit.coef[1], fit.cov[1, 1] * max(1.0, design_effect), ci_level)


def _nonempty(n: ArrayLike, *others: ArrayLike) -> tuple[F64, ...]:
    trials = np.asarray(n, dtype=float)
    keep = trials > 0
    return (trials[keep], *(np.asarray(o, dtype=float)[keep] for o in others))


@dataclass(frozen=True)
class PowerSums:
    """Sums over settled predictions, as kept by the hourly rollup."""

    n: float
    n_positive: float
    sum_p: float
    sum_p2: float
    sum_yp: float


def brier_score(sums: PowerSums) -> float | None:
    """Mean squared error of the predicted risks: (sum y - 2 sum yp + sum p^2) / n (y^2 = y).

    Brier 1950 (Monthly Weather Review 78:1). Exact from the rollup's power sums.
    """
    if sums.n <= 0:
        return None
    return (sums.n_positive - 2 * sums.sum_yp + sums.sum_p2) / sums.n


def scaled_brier_score(sums: PowerSums) -> float | None:
    """1 - Brier / Brier of the non-informative model ybar(1 - ybar).

    Steyerberg et al. 2010 (Epidemiology 21:128). None when every outcome is the same.
    """
    brier = brier_score(sums)
    if brier is None:
        return None
    prevalence = sums.n_positive / sums.n
    reference = prevalence * (1 - prevalence)
    return None if reference <= 0 else 1 - brier / reference


@dataclass(frozen=True)
class SpiegelhalterTest:
    z: float
    p_value: float


def spiegelhalter_z(
    sums: PowerSums,
    bin_n: ArrayLike,
    bin_sum_p: ArrayLike,
    *,
    design_effect: float = 1.0,
) -> SpiegelhalterTest | None:
    """Spiegelhalter's Z: sum (y - p)(1 - 2p) / sqrt(sum (1 - 2p)^2 p (1 - p)), N(0, 1) if true.

    Spiegelhalter 1986 (Stat Med 5:421). The numerator is exact from the power sums
    (sum y - 2 sum yp - sum p + 2 sum p^2); the variance p - 5p^2 + 8p^3 - 4p^4 takes the
    p^3 and p^4 terms at each bin's mean. Divided by sqrt(d) for shared outcomes.
    """
    if sums.n <= 0:
        return None
    trials, sp = _nonempty(bin_n, bin_sum_p)
    mean_p = sp / trials
    p3 = float(np.sum(trials * mean_p**3))
    p4 = float(np.sum(trials * mean_p**4))
    numerator = sums.n_positive - 2 * sums.sum_yp - sums.sum_p + 2 * sums.sum_p2
    variance = sums.sum_p - 5 * sums.sum_p2 + 8 * p3 - 4 * p4
    if variance <= 0:
        return None
    z = numerator / np.sqrt(variance * max(1.0, design_effect))
    return SpiegelhalterTest(float(z), float(2 * ndtr(-abs(z))))  # ndtr(-x) = norm.sf(x)


def wilson_interval(
    successes: ArrayLike, trials: ArrayLike, *, ci_level: float = 0.95
) -> tuple[F64, F64]:
    """Wilson score interval for a binomial proportion (vectorised; counts may be effective).

    Wilson 1927 (JASA 22:209).
    """
    x = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z = _z(ci_level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = x / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def equal_count_groups(n: ArrayLike, groups: int) -> npt.NDArray[np.int64]:
    """Group contiguous bins into at most `groups` groups of roughly equal count.

    A bin is never split, so a bin holding much of the data forms a group of its own.
    Returns the group index of every bin (empty bins join their neighbours).
    """
    counts = np.asarray(n, dtype=float)
    total = counts.sum()
    if total <= 0:
        return np.zeros(counts.size, dtype=np.int64)
    # A bin belongs to the quantile group its midpoint falls in.
    midpoint = (np.cumsum(counts) - counts / 2) / total
    raw = np.minimum((midpoint * groups).astype(np.int64), groups - 1)
    # Renumber the used groups 0..k-1 so they stay contiguous.
    _, dense = np.unique(raw, return_inverse=True)
    return dense.astype(np.int64)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Observed event rate against mean predicted risk per group of score bins."""

    n: F64
    events: F64
    mean_predicted: F64
    observed: F64
    ci_low: F64
    ci_high: F64


def reliability_curve(
    n: ArrayLike,
    events: ArrayLike,
    sum_p: ArrayLike,
    group_of_bin: ArrayLike,
    *,
    design_effect: float = 1.0,
    ci_level: float = 0.95,
) -> ReliabilityCurve:
    """Binned reliability diagram with Wilson intervals on design-effect-adjusted counts.

    Murphy & Winkler 1977 (Appl Stat 26:41); the groups merge the score histogram's bins.
    Empty groups are dropped.
    """
    group = np.asarray(group_of_bin, dtype=np.int64)
    size = int(group.max()) + 1 if group.size else 0
    gn = np.bincount(group, weights=np.asarray(n, dtype=float), minlength=size).astype(float)
    ge = np.bincount(group, weights=np.asarray(events, dtype=float), minlength=size).astype(float)
    gp = np.bincount(group, weights=np.asarray(sum_p, dtype=float), minlength=size).astype(float)
    keep = gn > 0
    gn, ge, gp = gn[keep], ge[keep], gp[keep]
    d = max(1.0, design_effect)
    low, high = wilson_interval(ge / d, gn / d, ci_level=ci_level)
    return ReliabilityCurve(gn, ge, gp / gn, ge / gn, low, high)


def expected_calibration_error(curve: ReliabilityCurve) -> float | None:
    """Count-weighted mean |observed - predicted| over the reliability groups.

    Naeini, Cooper & Hauskrecht 2015 (AAAI); the value depends on the grouping.
    """
    total = curve.n.sum()
    if total <= 0:
        return None
    return float(np.sum(curve.n * np.abs(curve.observed - curve.mean_predicted)) / total)


def _tricube(u: F64) -> F64:
    return np.where(u < 1, (1 - np.clip(u, 0, 1) ** 3) ** 3, 0.0)


def weighted_lowess(x: ArrayLike, y: ArrayLike, weights: ArrayLike, *, frac: float) -> F64:
    """Locally weighted linear regression (lowess, no robustness steps) with case weights.

    Cleveland 1979 (JASA 74:829). Each point stands for `weights` identical cases: the
    neighbourhood of x0 is the smallest radius holding int(frac * total weight) cases, and
    the result equals statsmodels' lowess(it=0) run on the points repeated `weights` times.
    Returns the fitted value at every x (all fits at once: row i of each matrix is x0 = x[i]).
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    k = min(max(int(frac * total + 1e-10), 2), total)
    if xs.size == 0:
        return np.empty(0)
    rows = np.arange(xs.size)
    dist = np.abs(xs[None, :] - xs[:, None])
    order = np.argsort(dist, axis=1, kind="stable")
    reach = np.cumsum(w[order], axis=1)
    # searchsorted(reach, k - 1e-9) per row: the cases within each radius never decrease
    nearest = np.minimum(np.sum(reach < k - 1e-9, axis=1), xs.size - 1)
    radius = dist[rows[:, None], order][rows, nearest]
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = _tricube(dist / radius[:, None])
        local = w * kernel
        local = local / local.sum(axis=1, keepdims=True)
        mean_x = np.sum(local * xs, axis=1)
        centred = xs - mean_x[:, None]
        spread = np.maximum(np.sum(local * centred**2, axis=1), 1e-12)
        projection = local * (1 + (xs[:, None] - mean_x[:, None]) * centred / spread[:, None])
        fitted = np.sum(projection * ys, axis=1)
    # statsmodels: fewer than two cases weigh in
    few = np.sum(np.where(kernel > 1e-12, w, 0.0), axis=1) < 2
    fitted[few] = ys[few]
    for i in np.flatnonzero(radius <= 0):  # ties at x0 hold k cases: their mean
        near = dist[i] == 0
        fitted[i] = np.sum(w[near] * ys[near]) / np.sum(w[near])
    return fitted


def weighted_quantile(values: ArrayLike, weights: ArrayLike, q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total (inverse CDF)."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, q * cum[-1] - 1e-12)])


@dataclass(frozen=True)
class CalibrationIndex:
    """Integrated calibration index and the 50th and 90th percentiles of |p - smoothed y|."""

    ici: float
    e50: float
    e90: float
    emax: float


def integrated_calibration_index(
    n: ArrayLike, events: ArrayLike, sum_p: ArrayLike, *, frac: float = 0.75
) -> CalibrationIndex | None:
    """ICI, E50, E90 and Emax: |p - loess-smoothed observed rate| averaged over predictions.

    Austin & Steyerberg 2019 (Stat Med 38:4051). From bins: the smoother is a weighted
    lowess of each bin's observed rate on its mean risk (weights = bin counts), and every
    prediction takes its bin's absolute difference.
    """
    trials, ev, sp = _nonempty(n, events, sum_p)
    if trials.size < 2:
        return None
    mean_p = sp / trials
    smoothed = weighted_lowess(mean_p, ev / trials, trials, frac=frac)
    diff = np.abs(mean_p - smoothed)
    return CalibrationIndex(
        ici=float(np.sum(trials * diff) / trials.sum()),
        e50=weighted_quantile(diff, trials, 0.5),
        e90=weighted_quantile(diff, trials, 0.9),
        emax=float(diff.max()),
    )
