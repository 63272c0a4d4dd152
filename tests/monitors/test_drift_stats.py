"""Drift statistics from histograms against scipy on raw samples and on samples at bin centres."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitors.drift import (
    bin_centres,
    binned_ks,
    binned_std,
    binned_wasserstein,
    drift_measures,
    merge_by_reference_quantiles,
    population_stability_index,
    psi_noise_level,
)

EDGES: list[float] = [
    40,
    50,
    60,
    70,
    80,
    90,
    100,
    110,
    120,
    130,
    140,
    160,
]  # the registry's heart-rate bins


def _histogram(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts in the rollups' input bins: 0 below the first edge, len(edges) above the last."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


@pytest.fixture
def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(31)
    return rng.normal(82, 14, 20_000), rng.normal(90, 16, 15_000)


def test_ks_and_wasserstein_equal_scipy_on_samples_at_the_bin_centres(
    samples: tuple[np.ndarray, np.ndarray],
) -> None:
    reference, current = samples
    r, c = _histogram(reference, EDGES), _histogram(current, EDGES)
    centres = bin_centres(EDGES, open_ends=True)
    at_r, at_c = np.repeat(centres, r), np.repeat(centres, c)
    assert binned_ks(r, c) == pytest.approx(stats.ks_2samp(at_r, at_c).statistic, abs=1e-12)
    assert binned_wasserstein(r, c, centres) == pytest.approx(
        stats.wasserstein_distance(centres, centres, r, c), rel=1e-10
    )
    assert binned_std(r, centres) == pytest.approx(np.std(at_r), rel=1e-10)


def test_ks_and_wasserstein_approximate_scipy_on_the_raw_samples(
    samples: tuple[np.ndarray, np.ndarray],
) -> None:
    # Bounds that hold for any data inside the edges: KS within the largest bin share (the
    # CDFs are compared at the edges only), Wasserstein within the widest bin (no value moves
    # more than half a bin).
    rng = np.random.default_rng(32)
    reference = rng.uniform(42, 158, 20_000)
    current = rng.triangular(42, 120, 158, 15_000)
    r, c = _histogram(reference, EDGES), _histogram(current, EDGES)
    centres = bin_centres(EDGES, open_ends=True)
    raw_ks = stats.ks_2samp(reference, current).statistic
    share = max((r / r.sum()).max(), (c / c.sum()).max())
    binned_d, binned_w = binned_ks(r, c), binned_wasserstein(r, c, centres)
    assert binned_d is not None and binned_w is not None
    assert abs(binned_d - raw_ks) <= share
    raw_w = stats.wasserstein_distance(reference, current)
    assert abs(binned_w - raw_w) <= max(np.diff(EDGES))
    # And for the fine score bins, both are close in absolute terms.
    from tests.monitors.stats_data import EDGES as SCORE_EDGES
    from tests.monitors.stats_data import score_bins

    p_ref = rng.beta(1.2, 30, 30_000)
    p_cur = rng.beta(1.2, 22, 30_000)
    rs = np.bincount(score_bins(p_ref), minlength=40)
    cs = np.bincount(score_bins(p_cur), minlength=40)
    mids = bin_centres(list(SCORE_EDGES), open_ends=False)
    assert binned_ks(rs, cs) == pytest.approx(stats.ks_2samp(p_ref, p_cur).statistic, abs=0.01)
    assert binned_wasserstein(rs, cs, mids) == pytest.approx(
        stats.wasserstein_distance(p_ref, p_cur), abs=0.001
    )


def test_psi_is_the_symmetrised_kullback_leibler_divergence_of_scipy(
    samples: tuple[np.ndarray, np.ndarray],
) -> None:
    reference, current = samples
    r, c = _histogram(reference, EDGES), _histogram(current, EDGES)
    rs, cs = r / r.sum(), c / c.sum()
    expected = stats.entropy(cs, rs) + stats.entropy(rs, cs)
    assert population_stability_index(r, c) == pytest.approx(expected, rel=1e-10)
    # The floor keeps an emptied bin finite and large: its share counts as 1e-4.
    emptied = c.copy()
    emptied[3] = 0
    psi = population_stability_index(r, emptied)
    assert psi is not None and np.isfinite(psi)
    assert psi > expected + rs[3] * np.log(rs[3] / 1e-4) * 0.9


def test_psi_sampling_noise_follows_its_chi_square_law() -> None:
    # Same distribution, two samples: PSI x (1/n_r + 1/n_c)^-1 ~ chi-square(bins - 1).
    rng = np.random.default_rng(33)
    shares = rng.dirichlet(np.full(10, 5.0))
    n_r, n_c = 4000, 1500
    psi = np.array(
        [
            population_stability_index(rng.multinomial(n_r, shares), rng.multinomial(n_c, shares))
            for _ in range(3000)
        ]
    )
    scaled = psi / (1 / n_r + 1 / n_c)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(scaled, q) == pytest.approx(stats.chi2.ppf(q, 9), rel=0.1)
    level = psi_noise_level(10, n_r, n_c, quantile=0.999)
    assert np.mean(psi > level) < 0.004


def test_drift_measures_count_a_missing_input_in_psi_only() -> None:
    rng = np.random.default_rng(34)
    lactate: list[float] = [0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8]
    r = _histogram(rng.normal(2.0, 0.8, 5000), lactate)
    centres = bin_centres(lactate, open_ends=True)
    gone = drift_measures(r, np.zeros_like(r), centres, current_missing=3000.0, psi_groups=None)
    assert gone.psi is not None and gone.psi > 5  # every value now missing
    assert gone.ks is None and gone.wasserstein is None
    assert gone.missing_current == 1.0
    same = drift_measures(r, r, centres)
    assert same.psi == pytest.approx(0.0) and same.ks == 0.0 and same.wasserstein == 0.0


def test_reference_quantile_groups_and_centres() -> None:
    r = np.array([0, 400, 300, 100, 100, 50, 50, 0], dtype=float)
    c = np.arange(8, dtype=float)
    rg, cg = merge_by_reference_quantiles(r, c, 4)
    assert rg.sum() == r.sum() and cg.sum() == c.sum() and rg.size <= 4
    np.testing.assert_allclose(bin_centres([0, 1, 3], open_ends=True), [-0.5, 0.5, 2, 4])
    np.testing.assert_allclose(bin_centres([0, 0.5, 1], open_ends=False), [0.25, 0.75])
