"""Simulated predictions and their score histogram, built the way the rollups bin them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import expit, logit

from store.models import SCORE_BIN_EDGES, SCORE_BINS

F64 = npt.NDArray[np.float64]
EDGES = np.asarray(SCORE_BIN_EDGES)


@dataclass(frozen=True)
class Raw:
    p: F64
    y: F64


@dataclass(frozen=True)
class Binned:
    n: F64
    events: F64
    sum_p: F64
    sum_logit: F64


def simulate(
    n: int,
    *,
    mean_logit: float = -3.0,
    sd_logit: float = 1.0,
    intercept: float = 0.0,
    slope: float = 1.0,
    seed: int = 0,
) -> Raw:
    """Risks with logit ~ N(mean, sd); outcomes ~ Bernoulli(expit(intercept + slope logit p))."""
    rng = np.random.default_rng(seed)
    p = expit(rng.normal(mean_logit, sd_logit, n))
    y = (rng.random(n) < expit(intercept + slope * logit(p))).astype(float)
    return Raw(p, y)


def score_bins(p: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """store.models.score_bin, vectorised: left-closed bins, 1.0 in the last."""
    return np.minimum(np.searchsorted(EDGES, np.asarray(p), side="right") - 1, SCORE_BINS - 1)


def clipped_logit(p: npt.ArrayLike) -> F64:
    """store.models.score_logit, vectorised."""
    q = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def histogram(raw: Raw) -> Binned:
    b = score_bins(raw.p)
    return Binned(
        n=np.bincount(b, minlength=SCORE_BINS).astype(float),
        events=np.bincount(b, weights=raw.y, minlength=SCORE_BINS).astype(float),
        sum_p=np.bincount(b, weights=raw.p, minlength=SCORE_BINS).astype(float),
        sum_logit=np.bincount(b, weights=clipped_logit(raw.p), minlength=SCORE_BINS).astype(float),
    )
