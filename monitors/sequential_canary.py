"""Watching a canary without cheating: an always-valid test of a count metric, canary vs control.

Given the events of a period (alerts, errors, late scores, outcomes), each event falls in the
canary arm with probability pi(theta) = theta e_c / (theta e_c + e_k), where e_c and e_k are
the arms' exposures in that period and theta is the ratio of the canary's rate to control's.
Conditioning on each period's total removes every rate that both arms share (a busy night, a
latency incident hitting both). The mixture sequential probability ratio test (mSPRT) of
Johari, Koomen, Pekelis & Walsh 2022 (Operations Research 70:1806, eq. 4) mixes the
likelihood ratios of theta against the null theta_0 over a prior on theta:

    Lambda_t = integral prod_{s <= t} LR_s(theta) dG(theta).

Under the null Lambda_t is a non-negative martingale with mean 1, so by Ville's inequality
P(sup_t Lambda_t >= 1 / alpha) <= alpha: the test may be looked at after every scheduler cycle,
for as long as the canary runs, and rejects wrongly with probability at most alpha. The
always-valid p-value is min(1, 1 / max_{s <= t} Lambda_s).

The null is one-sided and composite ("the canary is not worse than control by more than the
tolerance": theta <= theta_0 for a harmful rise). For theta_1 beyond theta_0 the likelihood
ratio is a supermartingale for every theta inside the null (monotone likelihood ratio), so the
guarantee holds for the whole null. The prior G is a half-normal on log(theta / theta_0) with
scale tau, placed on a fixed grid, so the mixture is exact (a discrete prior is a prior).

Events of one encounter are clustered (an alerting patient alerts at most scores). The log
likelihood ratio is divided by the design effect d = sum(c^2) / sum(c), the usual quasi-
likelihood scaling: exact when every cluster has d events, and correct to second order
otherwise. `tests/monitors/test_canary_sequential.py` checks the resulting false-failure rate
by simulation on encounter-clustered A/A data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from monitors.canary import Direction

F64 = npt.NDArray[np.float64]
GRID_POINTS = 41
GRID_SPAN = 4.0  # prior grid up to 4 tau


def mixing_prior(tau: float, points: int = GRID_POINTS) -> tuple[F64, F64]:
    """Half-normal prior on delta = |log(theta / theta_0)| on a grid: (deltas, weights).

    Weights are the half-normal density at the grid points, normalised to sum to 1 (the
    grid starts one step above 0: delta = 0 is the null and carries no evidence).
    """
    u = np.linspace(GRID_SPAN / points, GRID_SPAN, points)
    w = np.exp(-0.5 * u * u)
    return u * tau, w / w.sum()


def count_log_likelihood_ratios(
    canary_events: npt.ArrayLike,
    canary_exposure: npt.ArrayLike,
    control_events: npt.ArrayLike,
    control_exposure: npt.ArrayLike,
    *,
    null_ratio: float,
    direction: Direction,
    tau: float,
) -> F64:
    """Cumulative log likelihood ratios over periods (last axis) for every grid theta.

    Per period, the canary's share of the events is binomial with probability pi(theta);
    the ratio of theta = theta_0 exp(+/- delta) against theta_0 is
    x_c log(pi_1 / pi_0) + x_k log((1 - pi_1) / (1 - pi_0)). Periods where one arm has no
    exposure carry no information. Returns shape (..., periods, grid), not yet divided by d.
    """
    x_c = np.asarray(canary_events, dtype=float)
    e_c = np.asarray(canary_exposure, dtype=float)
    x_k = np.asarray(control_events, dtype=float)
    e_k = np.asarray(control_exposure, dtype=float)
    deltas, _ = mixing_prior(tau)
    sign = 1.0 if direction == Direction.INCREASE else -1.0
    log_theta = math.log(null_ratio) + sign * deltas  # (grid,)
    informative = (e_c > 0) & (e_k > 0)
    safe_c = np.where(informative, e_c, 1.0)
    safe_k = np.where(informative, e_k, 1.0)
    # log odds of an event being the canary's: log(theta e_c / e_k)
    base = np.log(safe_c / safe_k)[..., None]
    odds0 = base + math.log(null_ratio)
    odds1 = base + log_theta
    # log pi = -log(1 + exp(-odds)); log(1 - pi) = -log(1 + exp(odds))
    log_pi_ratio = np.logaddexp(0.0, -odds0) - np.logaddexp(0.0, -odds1)
    log_not_ratio = np.logaddexp(0.0, odds0) - np.logaddexp(0.0, odds1)
    step = x_c[..., None] * log_pi_ratio + x_k[..., None] * log_not_ratio
    step = np.where(informative[..., None], step, 0.0)
    return np.asarray(np.cumsum(step, axis=-2), dtype=float)


def mixture_log_evalues(log_ratios: F64, *, tau: float, design_effect: npt.ArrayLike = 1.0) -> F64:
    """log Lambda_t = log sum_g w_g exp(LLR_g(t) / d_t) over the grid (last axis), per period.

    `design_effect` broadcasts against the periods axis (one d per look when it is estimated
    from the data seen so far). In log space because Lambda itself is unbounded: a canary
    that is clearly worse over weeks of data reaches e-values far beyond float range.
    """
    _, weights = mixing_prior(tau)
    d = np.maximum(np.asarray(design_effect, dtype=float), 1.0)
    scaled = log_ratios / np.expand_dims(d, -1) if np.ndim(d) else log_ratios / float(d)
    return np.asarray(logsumexp(scaled + np.log(weights), axis=-1), dtype=float)


LOG_FLOAT_MAX = math.log(np.finfo(float).max)


def mixture_evalues(log_ratios: F64, *, tau: float, design_effect: npt.ArrayLike = 1.0) -> F64:
    """Lambda_t = sum_g w_g exp(LLR_g(t) / d_t) over the grid (last axis), per period: the
    exponential of `mixture_log_evalues`, infinite where Lambda is beyond float range."""
    logs = mixture_log_evalues(log_ratios, tau=tau, design_effect=design_effect)
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(logs), dtype=float)


def evalue_text(value: float, log_value: float) -> str:
    """An e-value as `format(value, ".3g")` shows it, from its log when beyond float range."""
    if math.isfinite(value) or log_value < LOG_FLOAT_MAX:
        return f"{value:.3g}"
    exponent = math.floor(log_value / math.log(10))
    mantissa = math.exp(log_value - exponent * math.log(10))
    if round(mantissa, 2) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.3g}e+{exponent}"


def always_valid_p(evalues: npt.ArrayLike) -> F64:
    """The always-valid p-value after each look: min(1, 1 / running max of Lambda).

    Johari et al. 2022, section 3 (p_t = min(p_{t-1}, 1 / Lambda_t)).
    """
    e = np.asarray(evalues, dtype=float)
    return np.asarray(np.minimum(1.0, 1.0 / np.maximum.accumulate(e, axis=-1)), dtype=float)


@dataclass(frozen=True)
class SequentialResult:
    """The always-valid test of one metric and one harmful direction, after the latest look."""

    metric: str
    direction: Direction
    null_ratio: float
    evalue: float  # Lambda now (infinite only beyond float range)
    max_evalue: float  # the largest Lambda seen at any look (likewise)
    p_value: float  # always-valid
    alpha: float
    design_effect: float
    canary_events: float
    control_events: float
    looks: int
    log_evalue: float  # log Lambda now, finite at any size
    log_max_evalue: float  # log of the largest Lambda seen at any look

    @property
    def max_evalue_text(self) -> str:
        """The largest Lambda for people, finite at any size."""
        return evalue_text(self.max_evalue, self.log_max_evalue)

    @property
    def rejected(self) -> bool:
        return self.max_evalue >= 1.0 / self.alpha

    def to_json(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "direction": self.direction.value,
            "null_ratio": round(self.null_ratio, 6),
            "evalue": round(min(self.evalue, 1e12), 6),
            "max_evalue": round(min(self.max_evalue, 1e12), 6),
            "threshold": round(1.0 / self.alpha, 6),
            "p_value": round(self.p_value, 8),
            "alpha": self.alpha,
            "rejected": self.rejected,
            "design_effect": round(self.design_effect, 3),
            "canary_events": round(self.canary_events, 3),
            "control_events": round(self.control_events, 3),
            "looks": self.looks,
        }


def sequential_test(
    metric: str,
    direction: Direction,
    *,
    canary_events: npt.ArrayLike,
    canary_exposure: npt.ArrayLike,
    control_events: npt.ArrayLike,
    control_exposure: npt.ArrayLike,
    null_ratio: float,
    tau: float,
    alpha: float,
    design_effect: float = 1.0,
    previous_max: float = 0.0,
) -> SequentialResult:
    """Run the test over the periods so far (one look per period) and summarise the latest.

    `previous_max` carries the largest Lambda of earlier looks that the periods cannot
    reproduce (looks inside a period that was later completed), so the always-valid p-value
    never goes back up.
    """
    x_c = np.asarray(canary_events, dtype=float)
    x_k = np.asarray(control_events, dtype=float)
    if x_c.size == 0:
        log_evalues = np.zeros(1)
    else:
        llr = count_log_likelihood_ratios(
            x_c,
            canary_exposure,
            x_k,
            control_exposure,
            null_ratio=null_ratio,
            direction=direction,
            tau=tau,
        )
        log_evalues = mixture_log_evalues(llr, tau=tau, design_effect=design_effect)
    with np.errstate(over="ignore"):  # infinite beyond float range; the logs stay exact
        evalues = np.exp(log_evalues)
    top = max(float(np.max(evalues)), previous_max)
    log_previous = math.log(previous_max) if previous_max > 0 else -math.inf
    log_top = max(float(np.max(log_evalues)), log_previous)
    return SequentialResult(
        metric=metric,
        direction=direction,
        null_ratio=null_ratio,
        evalue=float(evalues[-1]),
        max_evalue=top,
        p_value=min(1.0, 1.0 / top) if top > 0 else 1.0,
        alpha=alpha,
        design_effect=max(1.0, design_effect),
        canary_events=float(x_c.sum()),
        control_events=float(x_k.sum()),
        looks=int(x_c.size),
        log_evalue=float(log_evalues[-1]),
        log_max_evalue=log_top,
    )
