"""Canary versus control: a Kayenta-style judge over binned rollups (pure functions, no I/O).

Each metric compares the canary arm with the control arm over one window and gets an effect
(a ratio or a difference, canary against control) with a confidence interval and a p-value.
It is classified Pass, High, Low or No data: High (Low) when the difference is significant
and the effect lies above (below) the metric's tolerance band. The metric's direction says
which of High and Low count as a failure. A weighted score of the metrics that did not fail
gives the verdict Pass / Marginal / Fail; a failed critical metric fails the canary.

Predictions of one encounter are not independent: an alert is close to a per-patient trait
(a high-risk patient alerts on most of their 4-hourly scores) and one outcome settles up to
three scores. Every test therefore works on effective counts, divided by the Kish design
effect d = sum(c_i^2) / sum(c_i) over encounters i (c_i: the encounter's events), which is
the variance inflation of a total made of independent clusters. A test without it calls two
random halves of the same control arm different.

Fixed-sample intervals are valid for one planned look. Watching the comparison every cycle
is what `monitors.sequential_canary` is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from scipy import stats

from monitors.calibration import calibration_slope, wilson_interval
from store.models import LATENCY_BIN_EDGES, LATENCY_BINS, SCORE_BIN_EDGES, SCORE_BINS

F64 = npt.NDArray[np.float64]
DEFAULT_CANARY_CONFIG = Path("config/canary.yaml")


def _z(ci_level: float) -> float:
    return float(stats.norm.ppf(0.5 + ci_level / 2))


def design_effect(sum_c: float, sum_c2: float) -> float:
    """Kish design effect of a total of independent clusters: sum(c^2) / sum(c), at least 1.

    Kish 1965, Survey Sampling, section 8.2 (clusters of unequal size, intracluster
    correlation 1): Var(sum of cluster totals) = sum(c_i^2) against sum(c_i) for Poisson.
    """
    if sum_c <= 0:
        return 1.0
    return max(1.0, float(sum_c2) / float(sum_c))


# ---------------------------------------------------------------- score distribution


def score_bin_logits(edges: tuple[float, ...] = SCORE_BIN_EDGES) -> F64:
    """Representative log-odds of each score bin: the logit of the bin's midpoint."""
    e = np.asarray(edges, dtype=float)
    mid = (e[:-1] + e[1:]) / 2
    return np.asarray(np.log(mid / (1 - mid)), dtype=float)


@dataclass(frozen=True)
class MannWhitney:
    """U of the canary (y) against control (x): pairs with y > x, ties counting one half."""

    u: float
    z: float
    p_value: float
    auc: float  # U / (n_x n_y): P(canary > control) + P(tie) / 2
    n_x: float
    n_y: float


def mann_whitney_binned(
    x_counts: npt.ArrayLike,
    y_counts: npt.ArrayLike,
    *,
    design_effect: float = 1.0,
    use_continuity: bool = True,
) -> MannWhitney | None:
    """Mann-Whitney U from two histograms over the same ordered bins, ties handled as ties.

    Mann & Whitney 1947 (Ann Math Stat 18:50); tie-corrected variance
    n_x n_y / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1))) (Lehmann 1975, Nonparametrics, eq.
    1.59). Exact for data that sit at the bin values; the variance is multiplied by the design
    effect for clustered observations. Two-sided normal p-value.
    """
    x = np.asarray(x_counts, dtype=float)
    y = np.asarray(y_counts, dtype=float)
    n_x, n_y = float(x.sum()), float(y.sum())
    if n_x <= 0 or n_y <= 0:
        return None
    below = np.cumsum(x) - x  # control values strictly below each bin
    u = float(np.sum(y * (below + 0.5 * x)))
    total = n_x + n_y
    ties = x + y
    tie_term = float(np.sum(ties**3 - ties)) / (total * (total - 1)) if total > 1 else 0.0
    variance = n_x * n_y / 12.0 * ((total + 1) - tie_term) * max(1.0, design_effect)
    mean = n_x * n_y / 2.0
    if variance <= 0:
        return MannWhitney(u, 0.0, 1.0, u / (n_x * n_y), n_x, n_y)
    diff = u - mean
    if use_continuity:
        diff = math.copysign(max(abs(diff) - 0.5, 0.0), diff)
    z = diff / math.sqrt(variance)
    return MannWhitney(u, z, float(2 * stats.norm.sf(abs(z))), u / (n_x * n_y), n_x, n_y)


@dataclass(frozen=True)
class Shift:
    """A location shift (canary minus control) with its confidence interval."""

    estimate: float
    ci_low: float
    ci_high: float


def _weighted_order_statistic(values: F64, weights: F64, rank: float) -> float:
    """The rank-th smallest (1-based) of values repeated `weights` times (sorted input)."""
    cum = np.cumsum(weights)
    index = int(np.searchsorted(cum, rank - 1e-9))
    return float(values[min(index, values.size - 1)])


def hodges_lehmann_binned(
    x_counts: npt.ArrayLike,
    y_counts: npt.ArrayLike,
    values: npt.ArrayLike,
    *,
    ci_level: float = 0.95,
    design_effect: float = 1.0,
) -> Shift | None:
    """Hodges-Lehmann shift: the median of all n_x n_y differences y_j - x_i, with its CI.

    Hodges & Lehmann 1963 (Ann Math Stat 34:598); distribution-free interval from the order
    statistics of the differences at ranks C and n_x n_y + 1 - C, with
    C = floor(n_x n_y / 2 - z sd(U)) (Hollander & Wolfe 1999, Nonparametric Statistical
    Methods, eq. 4.41), sd(U) tie-corrected and multiplied by sqrt(d). Computed over pairs of
    bins, each weighted by its count product: exact for data at the bin values, and for real
    scores approximate to within about one bin width of `values`.
    """
    x = np.asarray(x_counts, dtype=float)
    y = np.asarray(y_counts, dtype=float)
    v = np.asarray(values, dtype=float)
    n_x, n_y = float(x.sum()), float(y.sum())
    if n_x <= 0 or n_y <= 0:
        return None
    keep_x, keep_y = x > 0, y > 0
    diffs = (v[keep_y][:, None] - v[keep_x][None, :]).ravel()
    weights = (y[keep_y][:, None] * x[keep_x][None, :]).ravel()
    order = np.argsort(diffs, kind="stable")
    diffs, weights = diffs[order], weights[order]
    pairs = n_x * n_y
    if round(pairs) % 2 == 1:
        estimate = _weighted_order_statistic(diffs, weights, (pairs + 1) / 2)
    else:
        estimate = 0.5 * (
            _weighted_order_statistic(diffs, weights, pairs / 2)
            + _weighted_order_statistic(diffs, weights, pairs / 2 + 1)
        )
    total = n_x + n_y
    ties = x + y
    tie_term = float(np.sum(ties**3 - ties)) / (total * (total - 1)) if total > 1 else 0.0
    sd_u = math.sqrt(n_x * n_y / 12.0 * ((total + 1) - tie_term) * max(1.0, design_effect))
    c = max(1.0, math.floor(pairs / 2 - _z(ci_level) * sd_u))
    return Shift(
        estimate,
        _weighted_order_statistic(diffs, weights, c),
        _weighted_order_statistic(diffs, weights, pairs + 1 - c),
    )


def binned_median_score(counts: npt.ArrayLike, edges: tuple[float, ...] = SCORE_BIN_EDGES) -> float:
    """Median score from a histogram, linear within the bin that holds it."""
    return binned_quantile(counts, edges, 0.5)


# ---------------------------------------------------------------- rates and proportions


@dataclass(frozen=True)
class Comparison:
    """Canary against control: the effect, its interval, and a two-sided p-value."""

    effect: float
    ci_low: float
    ci_high: float
    p_value: float


def rate_ratio(
    canary_count: float,
    canary_exposure: float,
    control_count: float,
    control_exposure: float,
    *,
    ci_level: float = 0.95,
    design_effect: float = 1.0,
) -> Comparison | None:
    """Ratio of two Poisson rates (canary / control): score test and score interval.

    Score statistic (y1 - y2 r e1/e2) / sqrt((y1 + y2) r e1/e2), the conditional-binomial
    score test (Gu, Ng, Tang & Schucany 2008, Biometrical J 50:2); the interval inverts it in
    closed form (the roots of a quadratic in r). Counts are divided by the design effect.
    None when neither arm has an event or an exposure.
    """
    if canary_exposure <= 0 or control_exposure <= 0:
        return None
    d = max(1.0, design_effect)
    y1, y2 = canary_count / d, control_count / d
    if y1 + y2 <= 0:
        return None
    scale = control_exposure / canary_exposure  # r = r_d * scale
    total = y1 + y2
    r_d0 = 1.0 / scale
    stat = (y1 - y2 * r_d0) / math.sqrt(total * r_d0)
    p_value = float(2 * stats.norm.sf(abs(stat)))
    z2 = _z(ci_level) ** 2
    b = 2 * y1 * y2 + z2 * total
    if y2 == 0:
        low_d, high_d = y1 / z2, math.inf
    elif y1 == 0:
        low_d, high_d = 0.0, z2 * total / y2**2
    else:
        root = math.sqrt(max(b * b - 4 * y1 * y1 * y2 * y2, 0.0))
        low_d, high_d = (b - root) / (2 * y2 * y2), (b + root) / (2 * y2 * y2)
    ratio = (y1 / y2) * scale if y2 > 0 else math.inf
    return Comparison(ratio, low_d * scale, high_d * scale, p_value)


def proportion_difference(
    canary_events: float,
    canary_trials: float,
    control_events: float,
    control_trials: float,
    *,
    ci_level: float = 0.95,
    design_effect: float = 1.0,
) -> Comparison | None:
    """Difference of two proportions (canary - control): Newcombe interval, pooled z-test.

    Newcombe 1998 (Stat Med 17:873, method 10: the hybrid of two Wilson intervals); the
    p-value is the pooled two-proportion z-test. Counts are divided by the design effect.
    """
    if canary_trials <= 0 or control_trials <= 0:
        return None
    d = max(1.0, design_effect)
    x1, n1, x2, n2 = canary_events / d, canary_trials / d, control_events / d, control_trials / d
    p1, p2 = x1 / n1, x2 / n2
    (l1, l2), (u1, u2) = wilson_interval([x1, x2], [n1, n2], ci_level=ci_level)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = 1.0 if se <= 0 else float(2 * stats.norm.sf(abs(diff) / se))
    return Comparison(diff, float(low), float(high), p_value)


# ---------------------------------------------------------------- latency quantiles


def binned_quantile(counts: npt.ArrayLike, edges: tuple[float, ...], q: float) -> float:
    """The q-quantile of a histogram, linear within its bin (the open last bin: its edge).

    `edges` has one edge per bin start plus, for closed histograms, the final edge; with as
    many edges as bins the last bin is open-ended and a quantile inside it is its lower edge.
    """
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    if total <= 0:
        return math.nan
    target = min(max(q, 0.0), 1.0) * total
    cum = np.cumsum(c)
    b = int(np.searchsorted(cum, target - 1e-12))
    b = min(b, c.size - 1)
    lo = float(edges[b])
    if b + 1 >= len(edges):
        return lo
    hi = float(edges[b + 1])
    before = cum[b] - c[b]
    inside = (target - before) / c[b] if c[b] > 0 else 0.0
    return lo + min(max(inside, 0.0), 1.0) * (hi - lo)


@dataclass(frozen=True)
class Quantile:
    value: float
    ci_low: float
    ci_high: float
    n: float


def quantile_with_ci(
    counts: npt.ArrayLike,
    edges: tuple[float, ...] = LATENCY_BIN_EDGES,
    q: float = 0.95,
    *,
    ci_level: float = 0.95,
) -> Quantile | None:
    """A quantile from a histogram with the distribution-free order-statistic interval.

    The interval runs from the l-th to the u-th order statistic, l and u the binomial
    (n, q) quantiles at (1 -/+ level) / 2 (Conover 1999, Practical Nonparametric Statistics,
    section 3.2); order statistics are read off the histogram like the quantile itself.
    """
    c = np.asarray(counts, dtype=float)
    n = float(c.sum())
    if n <= 0:
        return None
    alpha = 1 - ci_level
    low_rank = float(stats.binom.ppf(alpha / 2, round(n), q))
    high_rank = float(stats.binom.ppf(1 - alpha / 2, round(n), q)) + 1
    return Quantile(
        binned_quantile(c, edges, q),
        binned_quantile(c, edges, max(low_rank, 1) / n),
        binned_quantile(c, edges, min(high_rank, n) / n),
        n,
    )


# ---------------------------------------------------------------- the arms' data


CLUSTER_FIELDS = (
    "scores", "alerts", "errors", "late", "degraded", "positives", "alerts_settled",
    "alert_positives",
)  # fmt: skip
PPV_CROSS = "alerts_settled*alert_positives"  # (sum a_i y_i, 0) over encounters


@dataclass
class ArmData:
    """Everything the judge needs about one arm over one window, from rollups (or raw rows).

    `cluster` holds, per kind of event, (sum c_i, sum c_i^2) over the arm's encounters: the
    input of the design effect.
    """

    label: str
    n: float = 0.0  # scoring attempts
    n_ok: float = 0.0
    n_error: float = 0.0  # error + timeout
    n_alert: float = 0.0
    n_degraded: float = 0.0
    n_on_time: float = 0.0
    n_settled: float = 0.0
    n_positive: float = 0.0
    sum_p_settled: float = 0.0
    n_alert_settled: float = 0.0
    n_alert_positive: float = 0.0
    score_counts: F64 = field(default_factory=lambda: np.zeros(SCORE_BINS))
    settled_n: F64 = field(default_factory=lambda: np.zeros(SCORE_BINS))
    settled_positive: F64 = field(default_factory=lambda: np.zeros(SCORE_BINS))
    settled_logit: F64 = field(default_factory=lambda: np.zeros(SCORE_BINS))
    latency_counts: F64 = field(default_factory=lambda: np.zeros(LATENCY_BINS))
    cluster: dict[str, tuple[float, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        keys = (
            "n",
            "n_ok",
            "n_error",
            "n_alert",
            "n_degraded",
            "n_on_time",
            "n_settled",
            "n_positive",
            "sum_p_settled",
            "n_alert_settled",
            "n_alert_positive",
        )
        return {k: round(float(getattr(self, k)), 4) for k in keys}


def ratio_design_effect(
    sum_a: float, sum_a2: float, sum_y: float, sum_y2: float, sum_ay: float
) -> float:
    """Design effect of a proportion y / a pooled over clusters (a share of alerts that were
    positive): the cluster-robust variance sum((y_i - p a_i)^2) over the binomial one,
    p (1 - p) sum(a_i), at least 1.

    Kish 1965, Survey Sampling, section 6.4 (variance of a ratio mean over clusters); a
    patient's alerts share one outcome, so this is far below sum(a^2) / sum(a).
    """
    if sum_a <= 0:
        return 1.0
    p = sum_y / sum_a
    binomial = p * (1 - p) * sum_a
    if binomial <= 0:
        return 1.0
    robust = sum_y2 - 2 * p * sum_ay + p * p * sum_a2
    return max(1.0, robust / binomial)


def pooled_design_effect(a: ArmData, b: ArmData, kind: str) -> float:
    """The design effect of one kind of event, pooled over both arms (equal under the null)."""
    s1, q1 = a.cluster.get(kind, (0.0, 0.0))
    s2, q2 = b.cluster.get(kind, (0.0, 0.0))
    return design_effect(s1 + s2, q1 + q2)


# ---------------------------------------------------------------- configuration


class Direction(StrEnum):
    INCREASE = "increase"  # only a rise is a failure
    DECREASE = "decrease"  # only a fall is a failure
    EITHER = "either"


class Classification(StrEnum):
    PASS = "Pass"
    HIGH = "High"
    LOW = "Low"
    NODATA = "No data"


class Verdict(StrEnum):
    PASS = "Pass"
    MARGINAL = "Marginal"
    FAIL = "Fail"
    NODATA = "No data"


# Which effect each metric has: a ratio (null 1, band [1/(1+t), 1+t]) or a difference
# (null 0, band [-t, t]).
METRIC_KINDS: dict[str, str] = {
    "score_distribution": "difference",
    "alert_rate": "ratio",
    "error_rate": "ratio",
    "latency_sli": "difference",
    "latency_p95": "ratio",
    "degraded": "difference",
    "oe_ratio": "ratio",
    "calibration_slope": "difference",
    "ppv": "difference",
}
METRIC_LABELS: dict[str, str] = {
    "score_distribution": "Score distribution (medians; shift: Hodges-Lehmann, log-odds)",
    "alert_rate": "Alerts per 100 patient-days",
    "error_rate": "Error + timeout rate",
    "latency_sli": "Latency SLI (share on time)",
    "latency_p95": "Latency p95 (seconds)",
    "degraded": "Scored on degraded inputs",
    "oe_ratio": "Observed : expected (settled)",
    "calibration_slope": "Calibration slope (settled)",
    "ppv": "PPV at the threshold (settled)",
}


@dataclass(frozen=True)
class MetricSpec:
    """One metric's rule: direction, tolerance, weight, critical, must-have-data, minimum data."""

    name: str
    direction: Direction = Direction.EITHER
    tolerance: float = 0.25
    weight: float = 1.0
    critical: bool = False
    must_have_data: bool = False
    min_data: float = 0.0  # per arm; what it counts is said in config/canary.yaml

    @property
    def kind(self) -> str:
        return METRIC_KINDS[self.name]

    def band(self) -> tuple[float, float]:
        if self.kind == "ratio":
            return 1.0 / (1.0 + self.tolerance), 1.0 + self.tolerance
        return -self.tolerance, self.tolerance

    def rule_text(self) -> str:
        low, high = self.band()
        fails = {
            Direction.INCREASE: "High fails",
            Direction.DECREASE: "Low fails",
            Direction.EITHER: "High or Low fails",
        }[self.direction]
        extra = ", critical" if self.critical else ""
        extra += ", must have data" if self.must_have_data else ""
        return f"band {low:.3g}–{high:.3g}; {fails}; weight {self.weight:g}{extra}"


@dataclass(frozen=True)
class SequentialMetric:
    """A count metric watched by the always-valid test, and the direction that is harm."""

    metric: str
    direction: Direction
    tolerance: float | None = None  # ratio band; None: the judge's tolerance for the metric


@dataclass(frozen=True)
class SequentialConfig:
    alpha: float = 0.05  # family-wise, split evenly over the watched metrics
    tau: float = 0.7  # sd of the half-normal mixing prior on log(ratio / null ratio)
    metrics: tuple[SequentialMetric, ...] = ()

    @property
    def alpha_each(self) -> float:
        return self.alpha / max(1, len(self.metrics))


@dataclass(frozen=True)
class StageCriteria:
    """What a version must show before it leaves a stage."""

    stage: str
    min_days: float = 0.0
    min_scores: int = 0
    verdict: tuple[str, ...] = ()  # judge verdicts that allow promotion; empty: not needed
    oe_bounds: tuple[float, float] | None = None  # canary O:E must lie within
    min_label_completeness: float = 0.0
    alert_ratio_max: float | None = None  # canary / control alerts per patient-day
    max_open_incidents: int | None = None
    sequential_clear: bool = False  # no always-valid rejection


@dataclass(frozen=True)
class CanaryConfig:
    ci_level: float = 0.95
    pass_threshold: float = 95.0
    marginal_threshold: float = 75.0
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    sequential: SequentialConfig = field(default_factory=SequentialConfig)
    stages: dict[str, StageCriteria] = field(default_factory=dict)
    randomised: bool = False  # arms assigned per patient; false when by unit or site

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryConfig:
        judge = data.get("judge", {})
        metrics = {}
        for name, spec in (data.get("metrics") or {}).items():
            if name not in METRIC_KINDS:
                raise ValueError(f"canary: unknown metric {name!r}")
            spec = dict(spec or {})
            if "direction" in spec:
                spec["direction"] = Direction(spec["direction"])
            metrics[name] = MetricSpec(name=name, **spec)
        seq = data.get("sequential", {}) or {}
        watched = tuple(
            SequentialMetric(
                m["metric"],
                Direction(m["direction"]),
                None if m.get("tolerance") is None else float(m["tolerance"]),
            )
            for m in seq.get("metrics", [])
        )
        for w in watched:
            if w.metric == "latency_sli" and w.tolerance is None:
                raise ValueError("canary: watching latency_sli needs a ratio tolerance")
        for w in watched:
            if w.metric not in {"alert_rate", "error_rate", "latency_sli", "oe_ratio"}:
                raise ValueError(f"canary: the sequential test cannot watch {w.metric!r}")
        stages = {}
        for stage, spec in (data.get("stages") or {}).items():
            spec = dict(spec or {})
            if "verdict" in spec:
                spec["verdict"] = tuple(spec["verdict"])
            if spec.get("oe_bounds") is not None:
                spec["oe_bounds"] = tuple(spec["oe_bounds"])
            stages[stage] = StageCriteria(stage=stage, **spec)
        return cls(
            ci_level=float(judge.get("ci_level", 0.95)),
            pass_threshold=float(judge.get("pass_threshold", 95)),
            marginal_threshold=float(judge.get("marginal_threshold", 75)),
            metrics=metrics,
            sequential=SequentialConfig(
                alpha=float(seq.get("alpha", 0.05)),
                tau=float(seq.get("tau", 0.7)),
                metrics=watched,
            ),
            stages=stages,
            randomised=bool(data.get("randomised", False)),
        )

    @classmethod
    def from_file(cls, path: Path = DEFAULT_CANARY_CONFIG) -> CanaryConfig:
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


# ---------------------------------------------------------------- per-metric comparison


@dataclass(frozen=True)
class MetricComparison:
    """One metric's comparison and classification."""

    metric: str
    label: str
    canary_value: float | None
    control_value: float | None
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    classification: Classification
    failed: bool
    weight: float
    critical: bool
    must_have_data: bool
    design_effect: float
    n_canary: float
    n_control: float
    rule: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None, digits: int = 6) -> float | None:
            # JSON has no infinity or NaN (PostgreSQL refuses them): an open bound is null.
            if v is None or not math.isfinite(v):
                return None
            return round(float(v), digits)

        return {
            "metric": self.metric,
            "label": self.label,
            "canary": r(self.canary_value),
            "control": r(self.control_value),
            "effect": r(self.effect),
            "ci_low": r(self.ci_low),
            "ci_high": r(self.ci_high),
            "p_value": r(self.p_value, 8),
            "classification": self.classification.value,
            "failed": self.failed,
            "weight": self.weight,
            "critical": self.critical,
            "must_have_data": self.must_have_data,
            "design_effect": r(self.design_effect, 3),
            "n_canary": r(self.n_canary, 3),
            "n_control": r(self.n_control, 3),
            "rule": self.rule,
            "reason": self.reason,
        }


def classify(
    effect: float | None, significant: bool, spec: MetricSpec
) -> tuple[Classification, bool]:
    """Kayenta's rule: High (Low) if significant and the effect is above (below) the band.

    Graff et al. 2018, "Automated canary analysis at Netflix with Kayenta" (Netflix
    Technology Blog): a Mann-Whitney test plus an effect-size tolerance per metric.
    Returns the classification and whether it fails under the metric's direction.
    """
    if effect is None or math.isnan(effect):
        return Classification.NODATA, False
    low, high = spec.band()
    if significant and effect > high:
        return Classification.HIGH, spec.direction in (Direction.INCREASE, Direction.EITHER)
    if significant and effect < low:
        return Classification.LOW, spec.direction in (Direction.DECREASE, Direction.EITHER)
    return Classification.PASS, False


@dataclass(frozen=True)
class Scoring:
    """How often scores are produced, for rates per patient-day."""

    scoring_interval_minutes: int = 0  # 0: one score per encounter (rates per 100 scores)

    def patient_days(self, n_ok: float) -> float:
        """Patient-days from the scoring cadence: n_ok x interval / 1440 (0 when unknown)."""
        return n_ok * self.scoring_interval_minutes / 1440.0


def _result(
    spec: MetricSpec,
    *,
    canary_value: float | None,
    control_value: float | None,
    comparison: Comparison | None,
    ci_level: float,
    d: float,
    n_canary: float,
    n_control: float,
    reason: str = "",
    significant: bool | None = None,
) -> MetricComparison:
    if comparison is None or reason:
        cls, failed = Classification.NODATA, False
        effect = low = high = p = None
        reason = reason or "no comparable data"
    else:
        effect, low, high, p = (
            comparison.effect,
            comparison.ci_low,
            comparison.ci_high,
            comparison.p_value,
        )
        sig = significant if significant is not None else (p < 1 - ci_level)
        cls, failed = classify(effect, sig, spec)
    return MetricComparison(
        metric=spec.name,
        label=METRIC_LABELS[spec.name],
        canary_value=canary_value,
        control_value=control_value,
        effect=effect,
        ci_low=low,
        ci_high=high,
        p_value=p,
        classification=cls,
        failed=failed,
        weight=spec.weight,
        critical=spec.critical,
        must_have_data=spec.must_have_data,
        design_effect=d,
        n_canary=n_canary,
        n_control=n_control,
        rule=spec.rule_text(),
        reason=reason,
    )


def _short(label: str, have: float, need: float, what: str) -> str:
    return f"{label}: {have:.0f} {what}, needs {need:.0f}"


def compare_metric(
    spec: MetricSpec,
    canary: ArmData,
    control: ArmData,
    *,
    scoring: Scoring,
    ci_level: float = 0.95,
) -> MetricComparison:
    """Compare one metric between the arms and classify it."""
    name = spec.name
    need = spec.min_data
    common: dict[str, Any] = {"ci_level": ci_level}

    def thin(have_c: float, have_k: float, what: str) -> str:
        if have_c < need:
            return _short("canary", have_c, need, what)
        if have_k < need:
            return _short("control", have_k, need, what)
        return ""

    if name == "score_distribution":
        d = pooled_design_effect(canary, control, "scores")
        eff_c, eff_k = canary.score_counts.sum() / d, control.score_counts.sum() / d
        reason = thin(eff_c, eff_k, "effective scores")
        shift = mw = None
        if not reason:
            mw = mann_whitney_binned(control.score_counts, canary.score_counts, design_effect=d)
            shift = hodges_lehmann_binned(
                control.score_counts,
                canary.score_counts,
                score_bin_logits(),
                ci_level=ci_level,
                design_effect=d,
            )
        comparison = (
            Comparison(shift.estimate, shift.ci_low, shift.ci_high, mw.p_value)
            if shift is not None and mw is not None
            else None
        )
        return _result(
            spec,
            canary_value=binned_median_score(canary.score_counts) if eff_c > 0 else None,
            control_value=binned_median_score(control.score_counts) if eff_k > 0 else None,
            comparison=comparison,
            d=d,
            n_canary=float(canary.score_counts.sum()),
            n_control=float(control.score_counts.sum()),
            reason=reason,
            **common,
        )

    if name == "alert_rate":
        d = pooled_design_effect(canary, control, "alerts")
        if scoring.scoring_interval_minutes > 0:
            exp_c, exp_k = scoring.patient_days(canary.n_ok), scoring.patient_days(control.n_ok)
            per = 100.0  # alerts per 100 patient-days
        else:
            exp_c, exp_k = canary.n_ok, control.n_ok
            per = 100.0  # alerts per 100 scores
        reason = thin(canary.n_ok, control.n_ok, "scores")
        return _result(
            spec,
            canary_value=per * canary.n_alert / exp_c if exp_c > 0 else None,
            control_value=per * control.n_alert / exp_k if exp_k > 0 else None,
            comparison=None
            if reason
            else rate_ratio(
                canary.n_alert, exp_c, control.n_alert, exp_k, ci_level=ci_level, design_effect=d
            ),
            d=d,
            n_canary=canary.n_ok,
            n_control=control.n_ok,
            reason=reason,
            **common,
        )

    if name == "error_rate":
        d = pooled_design_effect(canary, control, "errors")
        reason = thin(canary.n, control.n, "attempts")
        comparison = None
        if not reason:
            comparison = rate_ratio(
                canary.n_error,
                canary.n,
                control.n_error,
                control.n,
                ci_level=ci_level,
                design_effect=d,
            )
            if comparison is None:  # no errors in either arm: nothing to tell apart
                comparison = Comparison(1.0, 0.0, math.inf, 1.0)
        return _result(
            spec,
            canary_value=canary.n_error / canary.n if canary.n else None,
            control_value=control.n_error / control.n if control.n else None,
            comparison=comparison,
            d=d,
            n_canary=canary.n,
            n_control=control.n,
            reason=reason,
            **common,
        )

    if name == "latency_sli":
        d = pooled_design_effect(canary, control, "late")
        reason = thin(canary.n_ok, control.n_ok, "delivered scores")
        return _result(
            spec,
            canary_value=canary.n_on_time / canary.n_ok if canary.n_ok else None,
            control_value=control.n_on_time / control.n_ok if control.n_ok else None,
            comparison=None
            if reason
            else proportion_difference(
                canary.n_on_time,
                canary.n_ok,
                control.n_on_time,
                control.n_ok,
                ci_level=ci_level,
                design_effect=d,
            ),
            d=d,
            n_canary=canary.n_ok,
            n_control=control.n_ok,
            reason=reason,
            **common,
        )

    if name == "latency_p95":
        qc = quantile_with_ci(canary.latency_counts, ci_level=ci_level)
        qk = quantile_with_ci(control.latency_counts, ci_level=ci_level)
        have_c, have_k = (qc.n if qc else 0.0), (qk.n if qk else 0.0)
        reason = thin(have_c, have_k, "delivered scores")
        comparison = None
        significant = False
        if not reason and qc is not None and qk is not None and qk.value > 0:
            # Interval of the ratio from the two quantile intervals (conservative), and
            # "significant" only when the two intervals do not overlap.
            comparison = Comparison(
                qc.value / qk.value,
                qc.ci_low / qk.ci_high if qk.ci_high > 0 else 0.0,
                qc.ci_high / qk.ci_low if qk.ci_low > 0 else math.inf,
                math.nan,
            )
            significant = qc.ci_low > qk.ci_high or qc.ci_high < qk.ci_low
        return _result(
            spec,
            canary_value=qc.value if qc else None,
            control_value=qk.value if qk else None,
            comparison=comparison,
            d=1.0,
            n_canary=have_c,
            n_control=have_k,
            reason=reason,
            significant=significant,
            **common,
        )

    if name == "degraded":
        d = pooled_design_effect(canary, control, "degraded")
        reason = thin(canary.n_ok, control.n_ok, "scores")
        return _result(
            spec,
            canary_value=canary.n_degraded / canary.n_ok if canary.n_ok else None,
            control_value=control.n_degraded / control.n_ok if control.n_ok else None,
            comparison=None
            if reason
            else proportion_difference(
                canary.n_degraded,
                canary.n_ok,
                control.n_degraded,
                control.n_ok,
                ci_level=ci_level,
                design_effect=d,
            ),
            d=d,
            n_canary=canary.n_ok,
            n_control=control.n_ok,
            reason=reason,
            **common,
        )

    if name == "oe_ratio":
        d = pooled_design_effect(canary, control, "positives")
        reason = thin(canary.sum_p_settled, control.sum_p_settled, "expected events")
        return _result(
            spec,
            canary_value=canary.n_positive / canary.sum_p_settled if canary.sum_p_settled else None,
            control_value=control.n_positive / control.sum_p_settled
            if control.sum_p_settled
            else None,
            comparison=None
            if reason
            else rate_ratio(
                canary.n_positive,
                canary.sum_p_settled,
                control.n_positive,
                control.sum_p_settled,
                ci_level=ci_level,
                design_effect=d,
            ),
            d=d,
            n_canary=canary.n_settled,
            n_control=control.n_settled,
            reason=reason,
            **common,
        )

    if name == "calibration_slope":
        d = pooled_design_effect(canary, control, "positives")
        reason = thin(canary.n_positive, control.n_positive, "settled events")
        comparison = None
        sc = sk = None
        if not reason:
            sc = calibration_slope(
                canary.settled_n,
                canary.settled_positive,
                canary.settled_logit,
                design_effect=d,
                ci_level=ci_level,
            )
            sk = calibration_slope(
                control.settled_n,
                control.settled_positive,
                control.settled_logit,
                design_effect=d,
                ci_level=ci_level,
            )
            comparison = slope_difference(sc, sk, ci_level=ci_level) if sc and sk else None
            if comparison is None:
                reason = "the calibration slope could not be fitted"
        return _result(
            spec,
            canary_value=sc.value if sc else None,
            control_value=sk.value if sk else None,
            comparison=comparison,
            d=d,
            n_canary=canary.n_settled,
            n_control=control.n_settled,
            reason=reason,
            **common,
        )

    if name == "ppv":
        sums = [
            sum(arm.cluster.get(kind, (0.0, 0.0))[i] for arm in (canary, control))
            for kind, i in (
                ("alerts_settled", 0), ("alerts_settled", 1), ("alert_positives", 0),
                ("alert_positives", 1), (PPV_CROSS, 0),
            )
        ]  # fmt: skip
        d = ratio_design_effect(*sums)
        reason = thin(canary.n_alert_settled, control.n_alert_settled, "settled alerts")
        return _result(
            spec,
            canary_value=canary.n_alert_positive / canary.n_alert_settled
            if canary.n_alert_settled
            else None,
            control_value=control.n_alert_positive / control.n_alert_settled
            if control.n_alert_settled
            else None,
            comparison=None
            if reason
            else proportion_difference(
                canary.n_alert_positive,
                canary.n_alert_settled,
                control.n_alert_positive,
                control.n_alert_settled,
                ci_level=ci_level,
                design_effect=d,
            ),
            d=d,
            n_canary=canary.n_alert_settled,
            n_control=control.n_alert_settled,
            reason=reason,
            **common,
        )
    raise ValueError(f"unknown canary metric {name!r}")


def slope_difference(canary: Any, control: Any, *, ci_level: float = 0.95) -> Comparison:
    """Difference of two independently fitted slopes, Wald: se = sqrt(se_1^2 + se_2^2).

    Equals the arm-by-logit interaction of one logistic model fitted to both arms (a fully
    interacted model is the two separate fits; Hosmer & Lemeshow 2000, section 3.6).
    """
    diff = float(canary.value - control.value)
    se = math.sqrt(float(canary.se) ** 2 + float(control.se) ** 2)
    z = _z(ci_level)
    p_value = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else 1.0
    return Comparison(diff, diff - z * se, diff + z * se, p_value)


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict over one window: score, verdict and every metric's comparison."""

    verdict: Verdict
    score: float | None
    metrics: list[MetricComparison]
    failed: list[str]
    critical_failed: list[str]
    no_data: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "score": None if self.score is None else round(self.score, 2),
            "failed": self.failed,
            "critical_failed": self.critical_failed,
            "no_data": self.no_data,
            "metrics": [m.to_json() for m in self.metrics],
        }


def verdict_from(
    metrics: list[MetricComparison], *, pass_threshold: float, marginal_threshold: float
) -> Judgement:
    """Weighted score = 100 x weight of metrics that did not fail / weight of those judged.

    Kayenta-style scoring over the metrics that have data: Fail when a critical metric failed
    or the score is below `marginal_threshold`, Marginal below `pass_threshold`, else Pass.
    A metric that must have data but has none keeps the canary from passing: the verdict is
    then No data (unless the evidence already fails it), never Pass or Marginal. A verdict
    is only ever Fail on evidence, never on missing data.
    """
    judged = [m for m in metrics if m.classification != Classification.NODATA]
    missing = [m.metric for m in metrics if m.classification == Classification.NODATA]
    required_missing = [
        m.metric for m in metrics if m.classification == Classification.NODATA and m.must_have_data
    ]
    failed = [m.metric for m in judged if m.failed]
    critical = [m.metric for m in judged if m.failed and m.critical]
    total = sum(m.weight for m in judged)
    if total <= 0:
        return Judgement(Verdict.NODATA, None, metrics, failed, critical, missing)
    score = 100.0 * sum(m.weight for m in judged if not m.failed) / total
    if critical or score < marginal_threshold:
        verdict = Verdict.FAIL
    elif required_missing:
        verdict = Verdict.NODATA
    elif score < pass_threshold:
        verdict = Verdict.MARGINAL
    else:
        verdict = Verdict.PASS
    return Judgement(verdict, score, metrics, failed, critical, missing)


def judge(
    canary: ArmData, control: ArmData, config: CanaryConfig, *, scoring: Scoring
) -> Judgement:
    """Compare every configured metric and give the verdict."""
    comparisons = [
        compare_metric(spec, canary, control, scoring=scoring, ci_level=config.ci_level)
        for spec in config.metrics.values()
    ]
    return verdict_from(
        comparisons,
        pass_threshold=config.pass_threshold,
        marginal_threshold=config.marginal_threshold,
    )
