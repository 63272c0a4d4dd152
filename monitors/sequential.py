"""Calibration drift over time: a risk-adjusted Bernoulli CUSUM and an adaptive window.

CUSUM (Steiner, Cook, Farewell & Treasure 2000, Biostatistics 1:441): every settled
prediction with risk p and outcome y adds the log-likelihood ratio of "the odds of the
outcome are R times what the model says" against "the model is right",
W = y log R - log(1 - p + R p), and S = max(0, S + W) signals at S >= h. R > 1 watches for
under-prediction, R < 1 for over-prediction. Vigil sums W per hour from the score histogram
and divides it by the design effect d, so an outcome shared by d predictions counts once.

The limit h is set by simulation to a stated in-control average run length (ARL) at the
site's own case mix and volume (`simulate_cusum_design`).

Adaptive window (after ADWIN, Bifet & Gavaldà 2007, SIAM SDM): daily observed and expected
counts are kept in a window; when some split of the window into an older and a newer part
shows different O:E ratios (conditional score test of two Poisson rates, Bonferroni over the
splits), the older part is dropped and the split is reported as the day the change began.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.optimize import brentq

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


# ---------------------------------------------------------------- CUSUM increments


def steiner_weight(p: npt.ArrayLike, y: npt.ArrayLike, odds_ratio: float) -> F64:
    """Per-prediction CUSUM weight W = y log R - log(1 - p + R p) (Steiner et al. 2000, eq. 2)."""
    risk = np.asarray(p, dtype=float)
    outcome = np.asarray(y, dtype=float)
    return outcome * math.log(odds_ratio) - np.log1p((odds_ratio - 1.0) * risk)


def binned_increments(
    n: npt.ArrayLike,
    events: npt.ArrayLike,
    sum_p: npt.ArrayLike,
    *,
    odds_ratio: float,
    design_effect: float = 1.0,
) -> F64:
    """Steiner weights summed over each row (an hour) of binned settled predictions, / d.

    Steiner et al. 2000. The outcome term (events x log R) is exact; the compensator
    log(1 + (R - 1) p) is taken at each bin's mean risk (Jensen error below 1e-3 per
    prediction for the score bins). Rows are hours, columns bins; returns one value per row.
    """
    counts = np.asarray(n, dtype=float)
    ev = np.asarray(events, dtype=float)
    sp = np.asarray(sum_p, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sp / np.where(counts > 0, counts, 1), 0.0)
    terms = ev * math.log(odds_ratio) - counts * np.log1p((odds_ratio - 1.0) * mean_p)
    return np.asarray(terms.sum(axis=-1) / max(1.0, design_effect), dtype=float)


# ---------------------------------------------------------------- the CUSUM itself


@dataclass(frozen=True)
class CusumState:
    """Where a CUSUM stands after some step; enough to resume it exactly."""

    value: float = 0.0
    run_start: int | None = None  # first step of the current excursion above zero
    episode_change: int | None = None  # change point of the signal episode in progress
    last_signal: int | None = None
    signals: int = 0

    @property
    def in_episode(self) -> bool:
        return self.episode_change is not None


@dataclass(frozen=True)
class CusumResult:
    path: F64  # S after each step (at a signal: the value that crossed, before restarting)
    signal_steps: list[int] = field(default_factory=list)
    change_points: list[int] = field(default_factory=list)  # one per signal
    in_episode: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    final: CusumState = field(default_factory=CusumState)


def run_cusum(
    increments: npt.ArrayLike,
    steps: npt.ArrayLike,
    *,
    limit: float,
    state: CusumState | None = None,
    head_start: float = 0.5,
) -> CusumResult:
    """Page's CUSUM S = max(0, S + W) with signals at S >= limit (Page 1954, Biometrika 41:100).

    After a signal S restarts at head_start x limit (fast initial response, Lucas & Crosier
    1982, Technometrics 24:199): a change that persists signals again soon, and the signal
    episode ends when S returns to zero. The change point of a signal is the first step of the
    excursion that led to it (the last zero before it, Page 1954); an episode keeps the change
    point of its first signal. `steps` label the increments (e.g. hour numbers).
    """
    w = np.asarray(increments, dtype=float)
    labels = np.asarray(steps, dtype=np.int64)
    st = state or CusumState()
    s, run_start, episode, last_signal, count = (
        st.value,
        st.run_start,
        st.episode_change,
        st.last_signal,
        st.signals,
    )
    path = np.empty(w.size)
    active = np.zeros(w.size, dtype=bool)
    signal_steps: list[int] = []
    change_points: list[int] = []
    for i in range(w.size):
        previous = s
        s = max(0.0, s + w[i])
        if s > 0 and previous <= 0:
            run_start = int(labels[i])
        elif s <= 0:
            run_start = None
            episode = None  # the evidence has dissipated: the episode is over
        path[i] = s
        if s >= limit:
            change = run_start if run_start is not None else int(labels[i])
            if episode is None:
                episode = change
            signal_steps.append(int(labels[i]))
            change_points.append(episode)
            last_signal = int(labels[i])
            count += 1
            s = head_start * limit
            run_start = int(labels[i])
        active[i] = episode is not None
    final = CusumState(s, run_start, episode, last_signal, count)
    return CusumResult(path, signal_steps, change_points, active, final)


def first_passage(increments: npt.ArrayLike, limit: float) -> I64:
    """Index of the first step at which S >= limit for each row of increments (-1 if never).

    Vectorised with Lindley's identity S_t = X_t - min(0, min_{s<=t} X_s), X the partial
    sums (Lindley 1952, Proc Camb Phil Soc 48:277); the same S as run_cusum before its first
    signal.
    """
    w = np.atleast_2d(np.asarray(increments, dtype=float))
    x = np.cumsum(w, axis=1)
    s = x - np.minimum(np.minimum.accumulate(x, axis=1), 0.0)
    crossed = s >= limit
    first = np.argmax(crossed, axis=1)
    return np.where(crossed.any(axis=1), first, -1).astype(np.int64)


# ---------------------------------------------------------------- the limit, by simulation


@dataclass(frozen=True)
class CaseMix:
    """The in-control population: share of predictions and mean risk per score bin, and volume."""

    weights: F64  # share of settled predictions per bin (sums to 1)
    mean_p: F64  # mean predicted risk per bin
    predictions_per_day: float
    design_effect: float = 1.0

    @property
    def units_per_day(self) -> float:
        """Independent outcome units per day: predictions / design effect."""
        return self.predictions_per_day / max(1.0, self.design_effect)


@dataclass(frozen=True)
class CusumDesign:
    odds_ratio: float
    limit: float
    target_arl_days: float
    simulated_arl_days: float  # in-control ARL at `limit`, from the simulation
    out_of_control_arl_days: float | None  # ARL when the odds really are `odds_ratio`
    crossings: int
    paths: int
    seed: int
    anchor_limit: float = 0.0  # the limit whose ARL was simulated directly ...
    anchor_arl_days: float = 0.0  # ... and that ARL (extended to the target along exp(h))


def _simulate_passages(
    mix: CaseMix,
    *,
    odds_ratio: float,
    true_odds_ratio: float,
    horizon_hours: float,
    limits: F64,
    paths: int,
    rng: np.random.Generator,
    chunk_events: int = 3_000_000,
) -> F64:
    """First-passage times (hours; inf beyond the horizon) of the hourly CUSUM, per path x limit.

    The process simulated is the one the monitor runs: per hour, the Steiner weights of that
    hour's outcome units summed, then S = max(0, S + sum). Units arrive as a Poisson process
    at the reference volume; each falls in bin k with probability w_k and is an event with
    probability pi_k = expit(logit p_k + log true_odds_ratio). Only events are drawn one by
    one (their hour, their bin); an hour's non-event compensator sum log(1 + (R - 1) p_k) is
    drawn from a gamma distribution with its mean and variance. Between two hours with events S
    moves monotonically, so the walk is evaluated at event hours only (Lindley's recursion,
    vectorised over all paths at once), with the crossing hour inside a rising stretch found
    from its slope.
    """
    w = mix.weights / mix.weights.sum()
    p = np.clip(mix.mean_p, 1e-9, 1 - 1e-9)
    pi = 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + math.log(true_odds_ratio))))
    comp = np.log1p((odds_ratio - 1.0) * p)  # c_k, the compensator of one unit in bin k
    units_per_hour = mix.units_per_day / 24.0
    events_per_hour = units_per_hour * float(np.sum(w * pi))
    jump_cdf = np.cumsum(w * pi) / np.sum(w * pi)
    quiet_mean = units_per_hour * float(np.sum(w * (1 - pi) * comp))  # per hour
    quiet_var = units_per_hour * float(np.sum(w * (1 - pi) * comp**2))
    log_r = math.log(odds_ratio)
    hours = math.ceil(horizon_hours)
    rise = -quiet_mean  # S's drift per quiet hour: negative for R > 1, positive for R < 1
    result = np.full((paths, limits.size), np.inf)
    per_path = max(1.0, events_per_hour * hours)
    batch = max(1, min(paths, int(chunk_events // per_path)))
    for first in range(0, paths, batch):
        rows = min(batch, paths - first)
        # Event times from exponential gaps (sorted by construction), cut at the horizon.
        room = int(per_path + 6 * math.sqrt(per_path) + 10)
        when = np.cumsum(rng.exponential(1.0 / events_per_hour, size=(rows, room)), axis=1)
        inside = when < hours
        path, column = np.nonzero(inside)
        hour = np.floor(when[path, column]).astype(np.int64)
        bins = np.minimum(np.searchsorted(jump_cdf, rng.random(path.size)), w.size - 1)
        jump = log_r - comp[bins]
        key = path * hours + hour
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else key
        g_jump = np.add.reduceat(jump, starts) if key.size else np.zeros(0)
        g_path, g_hour = path[starts], hour[starts]
        new_path = np.r_[True, g_path[1:] != g_path[:-1]] if g_path.size else g_path
        prev_hour = np.r_[-1, g_hour[:-1]] if g_hour.size else g_hour
        prev_hour = np.where(new_path, -1, prev_hour)
        gap = (g_hour - prev_hour - 1).astype(float)  # quiet hours before the event hour
        # The non-event compensator of k quiet hours: a gamma with the compound Poisson's mean
        # and variance (it keeps the sign a sum of log(1 + (R - 1) p) terms has).
        shape, scale = quiet_mean**2 / quiet_var, abs(quiet_var / quiet_mean)
        sign = -math.copysign(1.0, quiet_mean)
        a = sign * rng.gamma(shape * gap, scale)
        b = g_jump + sign * rng.gamma(np.full(gap.size, shape), scale)
        steps = np.empty(2 * gap.size)
        steps[0::2], steps[1::2] = a, b
        step_path = np.repeat(g_path, 2)
        # Lindley per path on one flat array: each path's partial sums start at 0 and sit
        # below every earlier path's (offset), so a global running minimum stays within it.
        cum = np.cumsum(steps)
        path_first = np.searchsorted(step_path, np.arange(rows))
        base = np.r_[0.0, cum][path_first]
        within = cum - base[step_path] if steps.size else cum
        spread = float(np.abs(within).max()) + 1.0 if steps.size else 1.0
        big = 4.0 * spread
        shifted = within - step_path * big
        floor = -step_path * big
        s = shifted - np.minimum(floor, np.minimum.accumulate(shifted)) if steps.size else steps
        s_after_event = s[1::2]
        s_before = np.where(new_path, 0.0, np.r_[0.0, s_after_event[:-1]])
        # Crossing candidates in time order: the end of each quiet stretch, each event hour.
        times = np.empty(steps.size)
        times[1::2] = g_hour + 1.0
        # Global running maximum with later paths lifted above earlier ones.
        lift = float(np.max(limits)) + 2.0 * spread + 1.0  # S never exceeds 2 x spread
        lifted = np.maximum.accumulate(s + step_path * lift) if steps.size else s
        path_end = np.r_[path_first[1:], steps.size]
        targets = np.arange(rows)[:, None] * lift + limits[None, :]
        idx = np.searchsorted(lifted, targets.ravel()).reshape(rows, limits.size)
        hit = (idx >= path_first[:, None]) & (idx < path_end[:, None])
        safe = np.minimum(idx, max(steps.size - 1, 0))
        t = np.full((rows, limits.size), np.inf)
        if steps.size:
            t = np.where(safe % 2 == 1, times[safe], np.inf)
            # A crossing during a rising quiet stretch: the hour the climb reaches the limit.
            g = safe // 2
            if rise > 0:
                climb = np.ceil(np.maximum(limits[None, :] - s_before[g], 0.0) / rise)
                mid = (
                    prev_hour[g] + 1.0 + np.minimum(np.maximum(climb, 1.0), np.maximum(gap[g], 1.0))
                )
                t = np.where(safe % 2 == 0, mid, t)
        t = np.where(hit, t, np.inf)
        if rise > 0:
            # No crossing at or before the last event hour: the final climb may still cross.
            last = np.where(path_end > path_first, path_end - 1, -1)
            s_last = np.where(last >= 0, s[np.maximum(last, 0)] if steps.size else 0.0, 0.0)
            h_last = np.where(last >= 0, g_hour[np.maximum(last // 2, 0)] if steps.size else -1, -1)
            climb = np.ceil(np.maximum(limits[None, :] - s_last[:, None], 0.0) / rise)
            tail = h_last[:, None] + 1.0 + np.maximum(climb, 1.0)
            t = np.where(np.isinf(t), tail, t)
        result[first : first + rows] = np.where(t <= horizon_hours, t, np.inf)
    return result


def _arl_from_passages(times: F64, horizon: float) -> tuple[F64, I64]:
    """ARL per limit from right-censored first passages (exponential MLE: exposure / events)."""
    crossed = np.isfinite(times)
    exposure = np.where(crossed, times, horizon).sum(axis=0)
    events = crossed.sum(axis=0)
    with np.errstate(divide="ignore"):
        arl = np.where(events > 0, exposure / np.maximum(events, 1), np.inf)
    return arl, events.astype(np.int64)


def _extend_limit(anchor: float, ratio: float) -> float:
    """The h with (e^h - h - 1) = ratio x (e^a - a - 1), a the anchor limit."""
    if ratio <= 1.0:
        return anchor

    def grow(x: float) -> float:
        return math.expm1(x) - x

    goal = ratio * grow(anchor)
    return float(brentq(lambda x: grow(x) - goal, anchor, anchor + math.log(ratio) + 5.0))


def simulate_cusum_design(
    mix: CaseMix,
    *,
    odds_ratio: float,
    target_arl_days: float,
    paths: int = 400,
    seed: int = 20000,
    event_budget: float = 2e6,
    max_limit: float = 25.0,
) -> CusumDesign:
    """The limit h whose in-control ARL (simulated at this case mix and volume) is the target.

    Steiner et al. 2000 set h by the ARL at a reference case mix. Here the ARL is simulated
    (`_simulate_passages`) on a grid of limits, each path followed to twice the simulated
    target, estimated from the censored first passages, and h interpolated on log ARL.
    The simulation follows at most about `event_budget` outcome events; a target beyond that
    reach is met by extending the simulated anchor limit along the tail every likelihood-ratio
    CUSUM shares: E0[exp(W)] = 1, so ARL0 is proportional to exp(h) - h - 1 (Wald's identity
    and Siegmund's approximation, Siegmund 1985, Sequential Analysis, ch. X). The
    out-of-control ARL is then simulated at h with the odds really multiplied by R.
    """
    rng = np.random.default_rng(seed)
    events_per_day = mix.units_per_day * float(np.sum(mix.weights * mix.mean_p) / mix.weights.sum())
    reach = event_budget / max(2.0 * paths * events_per_day, 1e-9)
    simulated_days = min(target_arl_days, max(30.0, reach))
    target_hours = simulated_days * 24.0
    horizon = 2.0 * target_hours
    grid = np.round(np.arange(0.25, max_limit + 1e-9, 0.05), 4)
    times = _simulate_passages(
        mix,
        odds_ratio=odds_ratio,
        true_odds_ratio=1.0,
        horizon_hours=horizon,
        limits=grid,
        paths=paths,
        rng=rng,
    )
    arl, crossings = _arl_from_passages(times, horizon)
    above = np.nonzero(arl >= target_hours)[0]
    if above.size == 0:
        anchor, achieved, crossed = float(grid[-1]), float(arl[-1]), int(crossings[-1])
    elif above[0] == 0:
        anchor, achieved, crossed = float(grid[0]), float(arl[0]), int(crossings[0])
    else:
        hi = int(above[0])
        lo = hi - 1
        # log ARL is close to linear in h: interpolate between the bracketing grid points.
        la, lb = math.log(arl[lo]), math.log(arl[hi])
        frac = 0.0 if lb == la else (math.log(target_hours) - la) / (lb - la)
        anchor = float(grid[lo] + frac * (grid[hi] - grid[lo]))
        achieved = math.exp(la + frac * (lb - la))
        crossed = int(crossings[hi])
    ratio = target_arl_days / simulated_days
    limit = _extend_limit(anchor, ratio)
    # Out of control the run is short: a year (or a tenth of the horizon) is horizon enough.
    short = min(0.1 * 2.0 * target_arl_days * 24.0, 365 * 24.0)
    shifted = _simulate_passages(
        mix,
        odds_ratio=odds_ratio,
        true_odds_ratio=odds_ratio,
        horizon_hours=short,
        limits=np.array([limit]),
        paths=max(100, paths // 4),
        rng=rng,
    )
    ooc, _ = _arl_from_passages(shifted, short)
    return CusumDesign(
        odds_ratio=odds_ratio,
        limit=round(limit, 4),
        target_arl_days=target_arl_days,
        simulated_arl_days=achieved / 24.0 * ratio,
        out_of_control_arl_days=float(ooc[0]) / 24.0 if np.isfinite(ooc[0]) else None,
        crossings=crossed,
        paths=paths,
        seed=seed,
        anchor_limit=round(anchor, 4),
        anchor_arl_days=achieved / 24.0,
    )


# ---------------------------------------------------------------- adaptive window


def split_pvalues(
    observed: npt.ArrayLike, expected: npt.ArrayLike, *, design_effect: float = 1.0
) -> F64:
    """Two-sided p-value, at each split point s, that days [0, s) and [s, end) share one O:E.

    Conditional score test of two Poisson rates with exposures E (Gu, Ng, Tang & Schucany
    2008, Biom J 50:294; statsmodels' test_poisson_2indep method "score"), on counts divided
    by the design effect. Element s is the split before day s (s = 1 .. len-1); element 0 is 1.
    """
    o = np.asarray(observed, dtype=float) / max(1.0, design_effect)
    e = np.asarray(expected, dtype=float) / max(1.0, design_effect)
    o_old, e_old = np.cumsum(o)[:-1], np.cumsum(e)[:-1]
    o_new, e_new = o.sum() - o_old, e.sum() - e_old
    total = o_old + o_new
    with np.errstate(invalid="ignore", divide="ignore"):
        share = e_new / (e_old + e_new)
        z = (o_new - total * share) / np.sqrt(total * share * (1 - share))
    p = np.where(np.isfinite(z), 2 * stats.norm.sf(np.abs(z)), 1.0)
    return np.concatenate([[1.0], p])


@dataclass(frozen=True)
class WindowState:
    """The adaptive window: its first day, and the last change it reported."""

    start: int | None = None  # first day of the window (days since the epoch)
    change_day: int | None = None  # the day the last detected change began
    detected_day: int | None = None  # the day it was detected
    oe_before: float | None = None


@dataclass(frozen=True)
class WindowStep:
    day: int
    state: WindowState
    observed: float
    expected: float
    cut: bool


def adaptive_window(
    days: npt.ArrayLike,
    observed: npt.ArrayLike,
    expected: npt.ArrayLike,
    *,
    state: WindowState,
    history: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike] | None = None,
    delta: float = 0.001,
    design_effect: float = 1.0,
    min_days: int = 7,
    min_expected: float = 5.0,
    max_days: int = 180,
) -> list[WindowStep]:
    """Feed days one at a time into the adaptive window; returns the window after each day.

    After each new day every split leaving at least `min_days` days and `min_expected`
    expected (effective) events on both sides is tested (`split_pvalues`); if the smallest
    p-value is below delta / (number of splits) the days before that split are dropped and
    the split is recorded as the start of the change (ADWIN's cut, Bifet & Gavaldà 2007, with
    the Hoeffding bound replaced by a test suited to rare events). The window never exceeds
    `max_days`. `history` holds (days, observed, expected) of the window's days already seen.
    """
    d_new = np.asarray(days, dtype=np.int64)
    o_new = np.asarray(observed, dtype=float)
    e_new = np.asarray(expected, dtype=float)
    if history is not None:
        hd, ho, he = (np.asarray(a) for a in history)
    else:
        hd, ho, he = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    day_list = list(hd.astype(np.int64))
    obs_list = list(ho.astype(float))
    exp_list = list(he.astype(float))
    st = state
    steps: list[WindowStep] = []
    deff = max(1.0, design_effect)
    for day, o, e in zip(d_new, o_new, e_new, strict=True):
        day_list.append(int(day))
        obs_list.append(float(o))
        exp_list.append(float(e))
        start = st.start if st.start is not None else int(day)
        start = max(start, int(day) - max_days + 1)
        keep = [i for i, d in enumerate(day_list) if d >= start]
        day_list = [day_list[i] for i in keep]
        obs_list = [obs_list[i] for i in keep]
        exp_list = [exp_list[i] for i in keep]
        st = replace(st, start=start)
        cut = False
        if len(day_list) >= 2 * min_days:
            arr_d = np.array(day_list)
            arr_o, arr_e = np.array(obs_list), np.array(exp_list)
            p = split_pvalues(arr_o, arr_e, design_effect=deff)
            cum_e = np.cumsum(arr_e) / deff
            span_old = arr_d - arr_d[0]  # days before split s
            span_new = arr_d[-1] - arr_d + 1
            valid = (
                (np.arange(arr_d.size) >= 1)
                & (span_old >= min_days)
                & (span_new >= min_days)
                & (np.concatenate([[0.0], cum_e[:-1]]) >= min_expected)
                & (cum_e[-1] - np.concatenate([[0.0], cum_e[:-1]]) >= min_expected)
            )
            if valid.any():
                tested = int(valid.sum())
                candidates = np.where(valid, p, np.inf)
                best = int(np.argmin(candidates))
                if candidates[best] < delta / tested:
                    before_o = arr_o[:best].sum()
                    before_e = arr_e[:best].sum()
                    st = WindowState(
                        start=int(arr_d[best]),
                        change_day=int(arr_d[best]),
                        detected_day=int(day),
                        oe_before=float(before_o / before_e) if before_e > 0 else None,
                    )
                    day_list = day_list[best:]
                    obs_list = obs_list[best:]
                    exp_list = exp_list[best:]
                    cut = True
        steps.append(WindowStep(int(day), st, float(sum(obs_list)), float(sum(exp_list)), cut))
    return steps
