"""Data drift: the binned drift path against Evidently's DataDriftPreset on the same data.

One reference and one current sample of 1,000,000 rows x 5 numeric columns, drift planted in
two of them (a mean shift of 0.5 SD, a scale change of 1.5x) and absent from three (one of
them moved by a negligible 0.02 SD). Both paths use the same test per column: Wasserstein
distance divided by the reference SD, drift at >= 0.1 (Evidently's default for numeric
columns of this size, asked for explicitly here).

- Binned path (what the drift monitor does): bin each column over fixed edges (80 equal bins
  over the reference mean +- 8 SD plus open ends, as the rollups bin a named input over its
  registry edges; equal widths let the bin be computed rather than searched) and compute the
  measures from the two histograms (monitors.drift).
- Evidently: `Report([DataDriftPreset(method="wasserstein", threshold=0.1)])` on the raw
  frames.

Timed: the median of three runs of each, same process, same data. Also recorded: the per-column
decisions must agree, and the monitor's own cost once the histograms exist (the rollups keep
them, so a run does not re-bin raw rows).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from bench.core import Figure, timed_median
from monitors.drift import bin_centres, drift_measures

logger = logging.getLogger(__name__)

AREA = "Data drift: binned path vs Evidently DataDriftPreset"
THRESHOLD = 0.1
TARGET_SPEEDUP = 20.0
COLUMNS = ("no_drift", "mean_shift", "scale_change", "skewed_no_drift", "negligible_shift")
PLANTED = {
    "no_drift": False,
    "mean_shift": True,
    "scale_change": True,
    "skewed_no_drift": False,
    "negligible_shift": False,
}


def make_data(rows: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def sample(shifted: bool) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "no_drift": rng.normal(80, 15, rows),
                "mean_shift": rng.normal(80 + (7.5 if shifted else 0), 15, rows),
                "scale_change": rng.normal(2, 0.8 * (1.5 if shifted else 1), rows),
                "skewed_no_drift": rng.lognormal(0.5, 0.6, rows),
                "negligible_shift": rng.normal(100 + (0.2 if shifted else 0), 10, rows),
            }
        )

    return sample(False), sample(True)


def edges_for(reference: np.ndarray, bins: int = 80) -> np.ndarray:
    """Fixed bin edges for a column, as a registry would configure them: mean +- 8 SD."""
    mean, sd = float(reference.mean()), float(reference.std())
    return np.linspace(mean - 8 * sd, mean + 8 * sd, bins + 1)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts over equal-width edges with an open bin at each end (index = bins below + 1),
    by arithmetic rather than search, as np.histogram does for uniform bins."""
    bins = edges.size - 1
    index = np.floor((values - edges[0]) * (bins / (edges[-1] - edges[0]))).astype(np.int64) + 1
    np.clip(index, 0, bins + 1, out=index)
    return np.bincount(index, minlength=bins + 2)


def binned_decisions(
    reference: pd.DataFrame, current: pd.DataFrame
) -> dict[str, tuple[float, bool]]:
    """Bin every column (rollup step) and decide drift from the histograms (monitor step)."""
    out: dict[str, tuple[float, bool]] = {}
    for column in reference.columns:
        ref = reference[column].to_numpy()
        edges = edges_for(ref)
        ref_counts = bin_counts(ref, edges)
        cur_counts = bin_counts(current[column].to_numpy(), edges)
        measures = drift_measures(ref_counts, cur_counts, bin_centres(edges, open_ends=True))
        value = float(measures.wasserstein_normed or 0.0)
        out[column] = (value, value >= THRESHOLD)
    return out


def from_histograms(histograms: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """The monitor's own work once the rollups hold the histograms."""
    for ref_counts, cur_counts, centres in histograms.values():
        drift_measures(ref_counts, cur_counts, centres)


def evidently_decisions(
    reference: pd.DataFrame, current: pd.DataFrame
) -> dict[str, tuple[float, bool]]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset(method="wasserstein", threshold=THRESHOLD)]).run(
        current_data=current, reference_data=reference
    )
    out: dict[str, tuple[float, bool]] = {}
    for metric in snapshot.dict()["metrics"]:
        config: dict[str, Any] = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            value = float(metric["value"])
            out[str(config["column"])] = (value, value >= THRESHOLD)
    return out


def run(*, smoke: bool) -> list[Figure]:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    rows = 20_000 if smoke else 1_000_000
    reference, current = make_data(rows)
    data_mb = (reference.memory_usage().sum() + current.memory_usage().sum()) / 2**20
    import evidently  # noqa: F401  (import time is not part of either path)

    binned = binned_decisions(reference, current)
    theirs = evidently_decisions(reference, current)
    agree = sum(binned[c][1] == theirs[c][1] for c in COLUMNS)
    planted = sum(binned[c][1] == PLANTED[c] for c in COLUMNS)
    binned_time = timed_median(lambda: binned_decisions(reference, current), repeats=3)
    evidently_time = timed_median(lambda: evidently_decisions(reference, current), repeats=3)
    # Python-heap peaks (tracemalloc, which numpy and pandas report to) in one more, untimed
    # run of each: tracing slows the run, so it is kept apart from the timed ones.
    binned_peak = timed_median(
        lambda: binned_decisions(reference, current), repeats=1, trace_memory=True
    ).peak_mb
    evidently_peak = timed_median(
        lambda: evidently_decisions(reference, current), repeats=1, trace_memory=True
    ).peak_mb
    histograms = {}
    for column in COLUMNS:
        edges = edges_for(reference[column].to_numpy())
        histograms[column] = (
            bin_counts(reference[column].to_numpy(), edges),
            bin_counts(current[column].to_numpy(), edges),
            bin_centres(edges, open_ends=True),
        )
    monitor_time = timed_median(lambda: from_histograms(histograms), repeats=5)
    speedup = evidently_time.median_s / binned_time.median_s
    detail = "; ".join(f"{c}: {binned[c][0]:.3f} vs {theirs[c][0]:.3f}" for c in COLUMNS)
    logger.info("drift bench: %s", detail)
    size = f"{rows:,} rows × {len(COLUMNS)} columns, reference and current"
    return [
        Figure(
            area=AREA,
            name=f"drift decision, {size}: binned path (binning included)",
            value=binned_time.median_s,
            unit="s",
            baseline_name="Evidently DataDriftPreset",
            baseline_value=evidently_time.median_s,
            higher_is_better=False,
            runs=3,
            peak_mb=binned_peak,
            target=f"≥ {TARGET_SPEEDUP:g}× faster",
            met=speedup >= TARGET_SPEEDUP,
            note=f"{speedup:.0f}× faster; Python-heap peak {binned_peak:.1f} MB against "
            f"Evidently's {evidently_peak:.0f} MB (the data itself, {data_mb:.0f} MB, is held "
            "before either starts)",
            extra={
                "binned_runs": binned_time.runs,
                "evidently_runs": evidently_time.runs,
                "evidently_peak_mb": evidently_peak,
            },
        ),
        Figure(
            area=AREA,
            name="columns with the same drift decision (Wasserstein / SD ≥ 0.1)",
            value=float(agree),
            unit=f"of {len(COLUMNS)}",
            target=f"{len(COLUMNS)} of {len(COLUMNS)}",
            met=agree == len(COLUMNS),
            note=f"binned vs Evidently normed distance: {detail}; planted drift found in "
            f"{planted} of {len(COLUMNS)} columns",
        ),
        Figure(
            area=AREA,
            name="the monitor's work from stored histograms (5 columns)",
            value=monitor_time.median_s * 1000,
            unit="ms",
            higher_is_better=False,
            runs=5,
            note="what a drift run costs once the rollups hold the histograms",
        ),
    ]
