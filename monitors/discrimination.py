"""Discrimination from binned rollups: AUROC with a DeLong interval, and the threshold metrics.

The score histogram gives positives and negatives per score bin; predictions in one bin are
treated as tied (a tie counts one half), which is exactly the AUROC of the binned scores and
approximates the AUROC of the raw scores to within the share of pairs that fall in one bin.
Sensitivity, specificity and PPV at the deployed threshold come exactly from the rollup's
alert counts (the alert flag the scoring service set).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import stats

from monitors.calibration import wilson_interval

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AUCEstimate:
    auc: float
    se: float
    ci_low: float
    ci_high: float
    n_positive: float
    n_negative: float


@lru_cache(maxsize=32)
def _z(ci_level: float) -> float:
    """The two-sided normal quantile of `ci_level` (cached: a few levels, many intervals)."""
    return float(stats.norm.ppf(0.5 + ci_level / 2))


def _placements(positives: F64, negatives: F64) -> tuple[F64, F64]:
    """Per-bin structural components: for a positive in bin k, the share of negatives it
    out-ranks (ties one half); for a negative in bin k, the share of positives above it."""
    n_pos, n_neg = positives.sum(), negatives.sum()
    below = np.cumsum(negatives) - negatives
    above = positives[::-1].cumsum()[::-1] - positives
    v10 = (below + 0.5 * negatives) / n_neg
    v01 = (above + 0.5 * positives) / n_pos
    return v10, v01


def binned_auroc(
    positives: npt.ArrayLike,
    negatives: npt.ArrayLike,
    *,
    design_effect: float = 1.0,
    ci_level: float = 0.95,
    method: str = "delong",
) -> AUCEstimate | None:
    """AUROC of ordered bins (bin order = score order) with a confidence interval.

    AUROC: Mann-Whitney form, Bamber 1975 (J Math Psychol 12:387). Variance: DeLong,
    DeLong & Clarke-Pearson 1988 (Biometrics 44:837), or Hanley & McNeil 1982 (Radiology
    143:29) with method="hanley-mcneil"; multiplied by the design effect. The interval is
    Wald on the logit scale so it stays inside (0, 1).
    """
    pos = np.asarray(positives, dtype=float)
    neg = np.asarray(negatives, dtype=float)
    m, n = pos.sum(), neg.sum()
    if m < 1 or n < 1:
        return None
    v10, v01 = _placements(pos, neg)
    auc = float(np.sum(pos * v10) / m)
    if method == "delong":
        s10 = np.sum(pos * (v10 - auc) ** 2) / (m - 1) if m > 1 else 0.0
        s01 = np.sum(neg * (v01 - auc) ** 2) / (n - 1) if n > 1 else 0.0
        variance = float(s10 / m + s01 / n)
    elif method == "hanley-mcneil":
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        variance = (auc * (1 - auc) + (m - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (m * n)
    else:
        raise ValueError(f"unknown AUROC variance method {method!r}")
    se = float(np.sqrt(max(variance, 0.0) * max(1.0, design_effect)))
    if 0 < auc < 1 and se > 0:
        z = _z(ci_level)
        logit = np.log(auc / (1 - auc))
        half = z * se / (auc * (1 - auc))
        low, high = 1 / (1 + np.exp(-(logit - half))), 1 / (1 + np.exp(-(logit + half)))
    else:
        low = high = auc
    return AUCEstimate(auc, se, float(low), float(high), float(m), float(n))


@dataclass(frozen=True)
class Proportion:
    value: float
    ci_low: float
    ci_high: float
    numerator: float
    denominator: float


@dataclass(frozen=True)
class ThresholdMetrics:
    sensitivity: Proportion | None
    specificity: Proportion | None
    ppv: Proportion | None
    alert_rate: Proportion | None


def _proportion(
    numerator: float, denominator: float, design_effect: float, ci_level: float
) -> Proportion | None:
    if denominator <= 0:
        return None
    d = max(1.0, design_effect)
    low, high = wilson_interval(numerator / d, denominator / d, ci_level=ci_level)
    return Proportion(numerator / denominator, float(low), float(high), numerator, denominator)


def threshold_metrics(
    *,
    n_settled: float,
    n_positive: float,
    n_alert_settled: float,
    n_alert_positive: float,
    design_effect: float = 1.0,
    ci_level: float = 0.95,
) -> ThresholdMetrics:
    """Sensitivity, specificity, PPV and alert rate of the alerts as fired, on settled labels.

    Altman & Bland 1994 (BMJ 308:1552, 309:102) definitions; Wilson intervals on
    design-effect-adjusted counts.
    """
    negatives = n_settled - n_positive
    false_alarms = n_alert_settled - n_alert_positive
    return ThresholdMetrics(
        sensitivity=_proportion(n_alert_positive, n_positive, design_effect, ci_level),
        specificity=_proportion(negatives - false_alarms, negatives, design_effect, ci_level),
        ppv=_proportion(n_alert_positive, n_alert_settled, design_effect, ci_level),
        alert_rate=_proportion(n_alert_settled, n_settled, design_effect, ci_level),
    )
