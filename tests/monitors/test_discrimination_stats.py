"""AUROC and threshold metrics against scikit-learn, a brute-force DeLong and Hanley & McNeil."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from monitors.discrimination import binned_auroc, threshold_metrics
from tests.monitors.stats_data import Raw, histogram, score_bins, simulate


def _pos_neg(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    binned = histogram(Raw(p, y))
    return binned.events, binned.n - binned.events


def test_binned_auroc_equals_scikit_learn_on_the_binned_scores() -> None:
    raw = simulate(30_000, mean_logit=-3.0, sd_logit=1.2, seed=11)
    positives, negatives = _pos_neg(raw.p, raw.y)
    auc = binned_auroc(positives, negatives)
    assert auc is not None
    # Scores replaced by their bin: sklearn counts ties one half, as the binned AUROC does.
    assert auc.auc == pytest.approx(roc_auc_score(raw.y, score_bins(raw.p)), abs=1e-12)


@pytest.mark.parametrize(("mean_logit", "sd"), [(-5.5, 1.2), (-3.0, 1.0), (-1.8, 0.8)])
def test_binned_auroc_approximates_scikit_learn_on_raw_scores(mean_logit: float, sd: float) -> None:
    # Ties inside a bin lose a little: within 0.005 for these case mixes (bins are narrow where
    # the scores are dense).
    raw = simulate(60_000, mean_logit=mean_logit, sd_logit=sd, seed=12)
    auc = binned_auroc(*_pos_neg(raw.p, raw.y))
    assert auc is not None
    assert auc.auc == pytest.approx(roc_auc_score(raw.y, raw.p), abs=0.005)


def test_hanley_mcneil_worked_example() -> None:
    # Hanley & McNeil 1982 (Radiology 143:29), Table 1: 109 CT images rated 1-5 by a
    # radiologist; 58 normal, 51 abnormal. Published: area 0.893, standard error 0.032.
    normal = np.array([33, 6, 6, 11, 2], dtype=float)
    abnormal = np.array([3, 2, 2, 11, 33], dtype=float)
    hm = binned_auroc(abnormal, normal, method="hanley-mcneil")
    assert hm is not None
    assert round(hm.auc, 3) == 0.893
    assert round(hm.se, 3) == 0.032
    delong = binned_auroc(abnormal, normal)
    assert delong is not None
    assert delong.auc == hm.auc
    assert delong.se == pytest.approx(0.032, abs=0.002)  # a different estimator, same target


def _delong_brute_force(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong et al. 1988 from the pairwise kernel psi(x, y) (1, 1/2 for ties, 0), O(m n)."""
    x, z = scores[y == 1], scores[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    return float(auc), float(np.sqrt(v10.var(ddof=1) / x.size + v01.var(ddof=1) / z.size))


def test_delong_standard_error_equals_the_pairwise_definition() -> None:
    raw = simulate(4_000, mean_logit=-1.5, sd_logit=1.2, seed=13)
    bins = score_bins(raw.p).astype(float)
    auc = binned_auroc(*_pos_neg(raw.p, raw.y))
    assert auc is not None
    reference_auc, reference_se = _delong_brute_force(bins, raw.y)
    assert auc.auc == pytest.approx(reference_auc, abs=1e-12)
    assert auc.se == pytest.approx(reference_se, rel=1e-9)
    shared = binned_auroc(*_pos_neg(raw.p, raw.y), design_effect=3.0)
    assert shared is not None and shared.se == pytest.approx(auc.se * np.sqrt(3))


def test_delong_interval_covers_the_true_auroc_about_95_percent_of_the_time() -> None:
    # Binormal scores with separation 1.2 SD: true AUROC = Phi(1.2 / sqrt(2)).
    from scipy.stats import norm

    truth = norm.cdf(1.2 / np.sqrt(2))
    rng = np.random.default_rng(14)
    covered, runs = 0, 600
    for _ in range(runs):
        neg = rng.normal(0, 1, 400)
        pos = rng.normal(1.2, 1, 60)
        # Scores squeezed into (0, 1) so the score histogram bins them (finely at low risk).
        b_neg = score_bins(expit(neg - 3.5))
        b_pos = score_bins(expit(pos - 3.5))
        est = binned_auroc(np.bincount(b_pos, minlength=40), np.bincount(b_neg, minlength=40))
        assert est is not None
        covered += est.ci_low <= truth <= est.ci_high
    # Binning costs a little AUROC, so coverage sits slightly under 95%.
    assert 0.90 <= covered / runs <= 0.98


def test_threshold_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(15)
    raw = simulate(20_000, mean_logit=-2.0, sd_logit=1.3, seed=15)
    alert = raw.p >= 0.2
    alert[rng.random(alert.size) < 0.01] = True  # the flag as fired, not only score >= t
    tn, fp, fn, tp = confusion_matrix(raw.y, alert).ravel()
    metrics = threshold_metrics(
        n_settled=raw.y.size,
        n_positive=raw.y.sum(),
        n_alert_settled=alert.sum(),
        n_alert_positive=(alert & (raw.y == 1)).sum(),
    )
    assert metrics.sensitivity is not None and metrics.specificity is not None
    assert metrics.ppv is not None and metrics.alert_rate is not None
    assert metrics.sensitivity.value == pytest.approx(recall_score(raw.y, alert), abs=1e-12)
    assert metrics.ppv.value == pytest.approx(precision_score(raw.y, alert), abs=1e-12)
    assert metrics.specificity.value == pytest.approx(tn / (tn + fp), abs=1e-12)
    assert metrics.alert_rate.value == pytest.approx(alert.mean(), abs=1e-12)
    low, high = proportion_confint(tp, tp + fn, method="wilson")
    assert (metrics.sensitivity.ci_low, metrics.sensitivity.ci_high) == (
        pytest.approx(low),
        pytest.approx(high),
    )
    shared = threshold_metrics(
        n_settled=raw.y.size,
        n_positive=raw.y.sum(),
        n_alert_settled=alert.sum(),
        n_alert_positive=tp,
        design_effect=3.0,
    )
    low3, high3 = proportion_confint(tp / 3, (tp + fp) / 3, method="wilson")
    assert shared.ppv is not None
    assert (shared.ppv.ci_low, shared.ppv.ci_high) == (pytest.approx(low3), pytest.approx(high3))


def test_no_positives_or_no_alerts_give_no_estimate() -> None:
    assert binned_auroc(np.zeros(3), np.array([1.0, 2.0, 3.0])) is None
    metrics = threshold_metrics(n_settled=100, n_positive=0, n_alert_settled=0, n_alert_positive=0)
    assert metrics.sensitivity is None and metrics.ppv is None
    assert metrics.specificity is not None and metrics.specificity.value == 1.0
