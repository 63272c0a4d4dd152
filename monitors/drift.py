"""Data and prediction drift from histograms: PSI, Kolmogorov-Smirnov and Wasserstein distance.

Each site is compared with its own reference window. The inputs are counts per bin over fixed
edges (the rollups' score and input histograms), so the cost does not depend on the number of
predictions. The bin "missing" (index -1 in the rollups) takes part in PSI, which is how an
input that stops arriving shows up; KS and Wasserstein compare the values that are present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import stats

F64 = npt.NDArray[np.float64]


def bin_centres(edges: Sequence[float] | npt.ArrayLike, *, open_ends: bool) -> F64:
    """Representative value of each bin.

    Closed bins (the score's [0, 1]): the midpoints. Open-ended bins (the inputs' histograms,
    with a bin below the first edge and one above the last): the midpoints of the inner bins,
    and half an adjacent bin's width beyond the first and the last edge.
    """
    e = np.asarray(edges, dtype=float)
    mids = (e[:-1] + e[1:]) / 2
    if not open_ends:
        return mids
    if e.size == 1:
        return np.array([e[0] - 0.5, e[0] + 0.5])
    low = e[0] - (e[1] - e[0]) / 2
    high = e[-1] + (e[-1] - e[-2]) / 2
    return np.concatenate([[low], mids, [high]])


def population_stability_index(
    reference: npt.ArrayLike, current: npt.ArrayLike, *, floor: float = 1e-4
) -> float | None:
    """PSI = sum (c - r) ln(c / r) over bins of the two distributions' shares.

    Yurdakul 2018 (PSI, Western Michigan Univ. dissertation); it is the symmetrised
    Kullback-Leibler divergence KL(c||r) + KL(r||c). Shares below `floor` are raised to it,
    so an empty bin on one side gives a large but finite term.
    """
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    if r.sum() <= 0 or c.sum() <= 0:
        return None
    rs = np.maximum(r / r.sum(), floor)
    cs = np.maximum(c / c.sum(), floor)
    return float(np.sum((cs - rs) * np.log(cs / rs)))


def binned_ks(reference: npt.ArrayLike, current: npt.ArrayLike) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic from counts over the same ordered bins.

    Smirnov 1939. sup |F_ref - F_cur| over the bin edges: exactly the statistic of the two
    samples placed at their bin centres, and within the largest bin share of the raw samples'.
    """
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    if r.sum() <= 0 or c.sum() <= 0:
        return None
    return float(np.max(np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum())))


def binned_wasserstein(
    reference: npt.ArrayLike, current: npt.ArrayLike, centres: npt.ArrayLike
) -> float | None:
    """First Wasserstein distance between the two histograms, mass placed at the bin centres.

    Vallender 1974 (Theory Probab Appl 18:784): W1 = integral |F_ref - F_cur| dx. Within the
    largest bin width of the raw samples' distance (each value moves at most half a width).
    """
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    x = np.asarray(centres, dtype=float)
    if r.sum() <= 0 or c.sum() <= 0:
        return None
    diff = np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum())[:-1]
    return float(np.sum(diff * np.diff(x)))


def binned_std(counts: npt.ArrayLike, centres: npt.ArrayLike) -> float | None:
    """Standard deviation of a histogram with its mass at the bin centres (population form)."""
    n = np.asarray(counts, dtype=float)
    x = np.asarray(centres, dtype=float)
    if n.sum() <= 0:
        return None
    mean = np.sum(n * x) / n.sum()
    return float(np.sqrt(np.sum(n * (x - mean) ** 2) / n.sum()))


def merge_by_reference_quantiles(
    reference: npt.ArrayLike, current: npt.ArrayLike, groups: int
) -> tuple[F64, F64]:
    """Merge contiguous bins into at most `groups` groups of about equal reference share.

    The usual PSI grouping (deciles of the reference, Yurdakul 2018), built from the
    histogram: a bin is never split. Keeps PSI's sampling noise near (groups - 1)(1/n_ref +
    1/n_cur) whatever the number of fine bins.
    """
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    total = r.sum()
    if total <= 0:
        return r, c
    midpoint = (np.cumsum(r) - r / 2) / total
    group = np.minimum((midpoint * groups).astype(np.int64), groups - 1)
    _, dense = np.unique(group, return_inverse=True)
    size = int(dense.max()) + 1
    return (
        np.bincount(dense, weights=r, minlength=size).astype(float),
        np.bincount(dense, weights=c, minlength=size).astype(float),
    )


@dataclass(frozen=True)
class DriftMeasures:
    """One feature's drift against its reference."""

    psi: float | None
    ks: float | None
    wasserstein: float | None  # in the feature's units
    wasserstein_normed: float | None  # divided by the reference standard deviation
    missing_reference: float
    missing_current: float
    n_reference: float
    n_current: float
    psi_bins: int = 0  # groups PSI was summed over (its chi-square degrees of freedom + 1)


def drift_measures(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    centres: npt.ArrayLike,
    *,
    reference_missing: float = 0.0,
    current_missing: float = 0.0,
    psi_groups: int | None = 10,
    psi_floor: float = 1e-4,
) -> DriftMeasures:
    """PSI (present values merged into reference-quantile groups, plus a missing group), KS
    and Wasserstein (on the present values, all bins) of one feature."""
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    if psi_groups:
        rg, cg = merge_by_reference_quantiles(r, c, psi_groups)
    else:
        rg, cg = r, c
    with_missing = reference_missing > 0 or current_missing > 0
    psi = population_stability_index(
        np.append(rg, reference_missing) if with_missing else rg,
        np.append(cg, current_missing) if with_missing else cg,
        floor=psi_floor,
    )
    psi_bins = int(np.count_nonzero((rg + cg) > 0)) + (1 if with_missing else 0)
    r_total, c_total = r.sum(), c.sum()
    ks = w = None
    if r_total > 0 and c_total > 0:
        # binned_ks and binned_wasserstein, sharing |F_ref - F_cur|
        gap = np.abs(np.cumsum(r) / r_total - np.cumsum(c) / c_total)
        ks = float(np.max(gap))
        w = float(np.sum(gap[:-1] * np.diff(np.asarray(centres, dtype=float))))
    sd = binned_std(r, centres)
    n_ref = float(r_total + reference_missing)
    n_cur = float(c_total + current_missing)
    return DriftMeasures(
        psi=psi,
        ks=ks,
        wasserstein=w,
        # Evidently's normed Wasserstein divides by max(std, 0.001) of the reference.
        wasserstein_normed=None if w is None or sd is None else w / max(sd, 0.001),
        missing_reference=reference_missing / n_ref if n_ref else 0.0,
        missing_current=current_missing / n_cur if n_cur else 0.0,
        n_reference=n_ref,
        n_current=n_cur,
        psi_bins=psi_bins,
    )


def psi_noise_level(
    bins: int, n_reference: float, n_current: float, *, quantile: float = 0.999
) -> float:
    """The PSI that sampling noise alone exceeds with probability 1 - quantile.

    Under no drift PSI ~ chi-square(bins - 1) x (1/n_ref + 1/n_cur) (Yurdakul & Naranjo 2020,
    J Risk Model Validation 14:89); n are independent units (patients, not their repeated
    predictions, when inputs and risk are fixed per patient).
    """
    if bins < 2 or n_reference <= 0 or n_current <= 0:
        return float("inf")
    return float(_chi2_quantile(quantile, bins - 1) * (1 / n_reference + 1 / n_current))


@lru_cache(maxsize=4096)
def _chi2_quantile(quantile: float, df: int) -> np.float64:
    """The chi-square quantile (a few degrees of freedom recur across every feature and site)."""
    return np.float64(stats.chi2.ppf(quantile, df))
