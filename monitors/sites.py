"""Site comparison per model: O:E of each site on a funnel plot, a heterogeneity test, case mix.

A clinical lead asks "is the model as good at my site as at the others?". Crude outcome
rates differ between sites because their patients differ (case mix); the model's expected
events E already account for the patients it scored, so observed ÷ expected (O:E) is the
case-mix-adjusted comparison. The funnel plot draws each site's O:E against E with exact
Poisson control limits around the centre (1, by default; optionally the pooled O:E): a site
outside the 99.8% limits differs from what the model promised by more than chance
(Spiegelhalter 2005), and Cochran's Q says whether the sites differ from each other.
Beside it, per site: scores, mean predicted risk and crude event rate (case mix), alert rate
and PPV, the share of each model input that was missing, and degraded scores.

Only settled labels count, over a window that ends the model's horizon plus label lag before
now, so late labels cannot bias it. Successive scores of one encounter share its outcome; the
limits and the heterogeneity test use the same design effect as the O:E monitor.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import sqlalchemy as sa
from scipy import stats
from sqlalchemy.engine import Connection, Engine

from monitors.base import MonitorResult, Status
from monitors.config import MonitorConfig
from monitors.durations import EPOCH, epoch_seconds
from monitors.observed_expected import design_effect_for, observed_to_expected
from monitors.rollup_io import (
    changed_since,
    load_sites,
    model_hours,
    read_watermark,
    write_watermark,
)
from monitors.runner import write_results
from store.models import (
    Deployment,
    InputHistogram,
    Model,
    PredictionRollup,
    Site,
    table_of,
    utcnow,
)
from store.rollups import get_state, set_state

logger = logging.getLogger(__name__)

MONITOR = "site_comparison"
METRIC = "oe_vs_sites"
HETEROGENEITY = "heterogeneity"
RUNBOOK = "site-outlier"
R = table_of(PredictionRollup)
IH = table_of(InputHistogram)
FUNNEL_LEVELS = {"95": 0.95, "99.8": 0.998}  # column tag → two-sided coverage


@dataclass(frozen=True)
class SiteComparisonConfig:
    window_days: int = 28
    # one: the model's promise, O:E = 1 (E is already the model's own case-mix-adjusted
    # expectation, as a standardised ratio's reference is 1); pooled: the sites' pooled O:E,
    # which one large outlying site drags towards itself, flagging the others.
    centre: str = "one"
    min_expected: float = 5.0  # a site expecting fewer events is shown, not judged
    min_label_completeness: float = 0.95
    design_effect: float | None = None  # None: from the model (horizon / scoring interval)
    inputs: list[str] = field(default_factory=list)  # inputs shown for case mix; [] all


# ---------------------------------------------------------------- pure


def funnel_limit(
    expected: npt.ArrayLike, centre: float, p: float, design_effect: float = 1.0
) -> npt.NDArray[np.float64]:
    """The p-quantile control limit of O/E at expected count E (Spiegelhalter 2005, Stat Med
    24:1185, appendix A.1.1: Poisson with interpolation between integer counts):
    r = Poisson(θ·E).ppf(p), α = (F(r) - p) / (F(r) - F(r - 1)), limit = (r - α) / E.
    With a design effect d the counts are effective counts E/d (as in the O:E monitor)."""
    d = max(1.0, design_effect)
    e = np.asarray(expected, dtype=float) / d
    mu = centre * e
    r = stats.poisson.ppf(p, mu)
    f_r = stats.poisson.cdf(r, mu)
    f_prev = stats.poisson.cdf(r - 1, mu)
    step = f_r - f_prev
    alpha = np.divide(f_r - p, step, out=np.zeros_like(step), where=step > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(e > 0, (r - alpha) / e, np.nan)
    return np.asarray(np.maximum(limit, 0.0), dtype=float)


@dataclass(frozen=True)
class Heterogeneity:
    q: float
    df: int
    p_value: float
    i2: float
    pooled_log_oe: float
    sites: int


def heterogeneity(
    observed: npt.ArrayLike, expected: npt.ArrayLike, design_effect: float = 1.0
) -> Heterogeneity | None:
    """Cochran's Q and I² (Higgins & Thompson 2002) of the sites' log O:E, fixed-effect weights
    1/var with var(log O:E) ≈ d / O (delta method for a Poisson count). Sites with O = 0 have no
    log O:E and are left out; fewer than two sites left: None."""
    o, e = np.asarray(observed, dtype=float), np.asarray(expected, dtype=float)
    keep = (o > 0) & (e > 0)
    if keep.sum() < 2:
        return None
    y = np.log(o[keep] / e[keep])
    w = o[keep] / max(1.0, design_effect)
    pooled = float((w * y).sum() / w.sum())
    q = float((w * (y - pooled) ** 2).sum())
    df = int(keep.sum() - 1)
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return Heterogeneity(q, df, float(stats.chi2.sf(q, df)), i2, pooled, int(keep.sum()))


def binned_mean(counts: Sequence[float], edges: Sequence[float]) -> float | None:
    """Mean of a histogram with bins (-inf, e0), [e0, e1), ..., [en, inf) (input_bin's layout):
    inner bins at their midpoints, the open ends half a neighbouring width beyond the edge."""
    c = np.asarray(counts, dtype=float)
    if c.sum() <= 0 or len(edges) < 2:
        return None
    e = np.asarray(edges, dtype=float)
    mids = np.concatenate(
        [[e[0] - (e[1] - e[0]) / 2], (e[:-1] + e[1:]) / 2, [e[-1] + (e[-1] - e[-2]) / 2]]
    )
    return float((c * mids[: len(c)]).sum() / c.sum())


def compare_sites(
    per_site: pd.DataFrame, *, design_effect: float, config: SiteComparisonConfig
) -> tuple[pd.DataFrame, Heterogeneity | None, float]:
    """Funnel coordinates, limits and status per site, the heterogeneity test and the centre.

    `per_site` has site_id, n_ok, n_settled, observed, expected (one row per site).
    """
    frame = per_site.copy()
    judged = (frame["expected"] >= config.min_expected) & (
        frame["n_settled"] >= config.min_label_completeness * frame["n_ok"]
    )
    if config.centre == "one":
        centre = 1.0
    else:
        total_e = frame.loc[judged, "expected"].sum()
        centre = float(frame.loc[judged, "observed"].sum() / total_e) if total_e > 0 else 1.0
    frame["oe"] = np.where(frame["expected"] > 0, frame["observed"] / frame["expected"], np.nan)
    for tag, level in FUNNEL_LEVELS.items():
        tail = (1 - level) / 2
        frame[f"lower_{tag}"] = funnel_limit(frame["expected"], centre, tail, design_effect)
        frame[f"upper_{tag}"] = funnel_limit(frame["expected"], centre, 1 - tail, design_effect)
    outside_998 = (frame["oe"] < frame["lower_99.8"]) | (frame["oe"] > frame["upper_99.8"])
    outside_95 = (frame["oe"] < frame["lower_95"]) | (frame["oe"] > frame["upper_95"])
    frame["status"] = np.select(
        [~judged, outside_998, outside_95],
        [Status.INSUFFICIENT.value, Status.BREACH.value, Status.WARN.value],
        default=Status.OK.value,
    )
    test = heterogeneity(
        frame.loc[judged, "observed"], frame.loc[judged, "expected"], design_effect
    )
    return frame, test, centre


# ---------------------------------------------------------------- I/O


def comparison_window(model: Model, now: datetime, window_days: int) -> tuple[datetime, datetime]:
    """Whole UTC days ending the model's horizon plus label lag before now (labels settled)."""
    lag = timedelta(hours=model.horizon_hours + model.label_lag_hours)
    end_day = epoch_seconds(now - lag) // 86400
    end = EPOCH + timedelta(days=end_day)
    return end - timedelta(days=window_days), end


def read_site_counts(
    conn: Connection, model_id: int, start: datetime, end: datetime
) -> pd.DataFrame:
    """Per site over [start, end): scores, settled labels, O, E and case-mix sums (rollups)."""
    first, last = epoch_seconds(start) // 3600, epoch_seconds(end) // 3600
    columns = [
        "site_id", "n_ok", "n_settled", "observed", "expected", "sum_score", "n_alert",
        "n_alert_settled", "n_alert_positive", "n_degraded",
    ]  # fmt: skip
    rows = conn.execute(
        sa.select(
            R.c.site_id,
            sa.func.sum(R.c.n_ok),
            sa.func.sum(R.c.n_settled),
            sa.func.sum(R.c.n_positive),
            sa.func.sum(R.c.sum_p_settled),
            sa.func.sum(R.c.sum_score),
            sa.func.sum(R.c.n_alert),
            sa.func.sum(R.c.n_alert_settled),
            sa.func.sum(R.c.n_alert_positive),
            sa.func.sum(R.c.n_degraded),
        )
        .where(model_hours(R, model_id, load_sites(conn), first, last))
        .group_by(R.c.site_id)
    ).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=columns).fillna(0)


def read_input_mix(
    conn: Connection, model: Model, start: datetime, end: datetime
) -> dict[int, dict[str, dict[str, float | None]]]:
    """Per site and input: share missing and binned mean over [start, end)."""
    first, last = epoch_seconds(start) // 3600, epoch_seconds(end) // 3600
    rows = conn.execute(
        sa.select(IH.c.site_id, IH.c.feature, IH.c.bin, sa.func.sum(IH.c.n))
        .where(model_hours(IH, model.id, load_sites(conn), first, last))
        .group_by(IH.c.site_id, IH.c.feature, IH.c.bin)
    ).all()
    specs = {name: list(spec["edges"]) for name, spec in (model.inputs or {}).items()}
    counts: dict[tuple[int, str], dict[int, float]] = {}
    for site_id, feature, bin_, n in rows:
        counts.setdefault((site_id, feature), {})[bin_] = float(n)
    mix: dict[int, dict[str, dict[str, float | None]]] = {}
    for (site_id, feature), bins in counts.items():
        edges = specs.get(feature, [])
        total = sum(bins.values())
        present = [bins.get(b, 0.0) for b in range(len(edges) + 1)]
        mean = binned_mean(present, edges)
        mix.setdefault(site_id, {})[feature] = {
            "missing": round(bins.get(-1, 0.0) / total, 4) if total else None,
            "mean": None if mean is None else round(mean, 2),
        }
    return mix


def _round(value: Any, digits: int = 4) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def site_results(
    frame: pd.DataFrame,
    test: Heterogeneity | None,
    centre: float,
    *,
    model: Model,
    codes: dict[int, str],
    window: tuple[datetime, datetime],
    design_effect: float,
    mix: dict[int, dict[str, dict[str, float | None]]],
    config: SiteComparisonConfig,
) -> list[MonitorResult]:
    assert model.id is not None
    rule = f"breach outside the 99.8% funnel limits around O:E {centre:.2f}; warn outside 95%"
    results = []
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in frame.to_dict("records")
    ]
    for row in records:
        site_id = int(row["site_id"])
        observed, expected = round(float(row["observed"])), float(row["expected"])
        n_ok, n_settled = float(row["n_ok"]), float(row["n_settled"])
        oe = float(row["oe"])
        estimate = observed_to_expected(observed, expected, 0.95, design_effect)
        inputs = mix.get(site_id, {})
        if config.inputs:
            inputs = {k: v for k, v in inputs.items() if k in config.inputs}
        status = Status(row["status"])
        code = codes.get(site_id, str(site_id))

        def share(numerator: str, denominator: float, values: dict[str, Any] = row) -> float | None:
            return _round(float(values[numerator]) / denominator) if denominator else None

        summary = (
            f"{model.name} at {code}: O:E {oe:.2f} ({observed} events against {expected:.1f} "
            f"expected) lies outside the 99.8% funnel limits "
            f"[{row['lower_99.8']:.2f}–{row['upper_99.8']:.2f}] around {centre:.2f}"
            if status == Status.BREACH
            else f"{model.name} at {code}: O:E {_round(oe, 2)} against {centre:.2f}"
        )
        results.append(
            MonitorResult(
                monitor=MONITOR,
                metric=METRIC,
                model_id=model.id,
                site_id=site_id,
                window_start=window[0],
                window_end=window[1],
                status=status,
                value=_round(oe),
                ci_low=_round(estimate.ci_low),
                ci_high=_round(estimate.ci_high),
                n=int(n_settled),
                threshold=rule,
                runbook=RUNBOOK,
                detail={
                    "observed": observed,
                    "expected": _round(expected, 3),
                    "centre": _round(centre),
                    "design_effect": _round(design_effect, 3),
                    "limits": {
                        "95": [_round(row["lower_95"]), _round(row["upper_95"])],
                        "99.8": [_round(row["lower_99.8"]), _round(row["upper_99.8"])],
                    },
                    "scored": int(n_ok),
                    "label_completeness": _round(n_settled / n_ok) if n_ok else None,
                    "mean_predicted_risk": share("sum_score", n_ok),
                    "expected_rate": share("expected", n_settled),
                    "observed_rate": share("observed", n_settled),
                    "alert_rate": share("n_alert", n_ok),
                    "ppv": share("n_alert_positive", float(row["n_alert_settled"])),
                    "degraded_share": share("n_degraded", n_ok),
                    "inputs": inputs,
                    "severity": "ticket" if status == Status.BREACH else None,
                    "summary": summary,
                },
            )
        )
    if test is not None:
        results.append(
            MonitorResult(
                monitor=MONITOR,
                metric=HETEROGENEITY,
                model_id=model.id,
                site_id=0,
                window_start=window[0],
                window_end=window[1],
                status=Status.WARN if test.p_value < 0.05 else Status.OK,
                value=_round(test.i2),
                n=test.sites,
                threshold="warn if Cochran's Q p < 0.05 (sites differ by more than chance)",
                runbook=RUNBOOK,
                detail={
                    "q": _round(test.q, 3),
                    "df": test.df,
                    "p_value": _round(test.p_value, 6),
                    "i2": _round(test.i2),
                    "pooled_oe": _round(float(np.exp(test.pooled_log_oe))),
                    "summary": f"{model.name}: I² {test.i2:.0%} across {test.sites} sites "
                    f"(Q {test.q:.1f} on {test.df} df, p {test.p_value:.3g})",
                },
            )
        )
    return results


def _inputs_digest(
    window: tuple[datetime, datetime],
    cfg: SiteComparisonConfig,
    deployed: set[int],
    codes: dict[int, str],
) -> str:
    """A digest of everything a model's comparison depends on besides its rollups."""
    text = repr((window, cfg, sorted(deployed), sorted(codes.items())))
    return hashlib.sha256(text.encode()).hexdigest()


def run_site_comparison(
    engine: Engine, config: MonitorConfig, now: datetime | None = None
) -> list[MonitorResult]:
    """Compare every model's sites over its settled window as of `now`."""
    now = now or utcnow()
    results: list[MonitorResult] = []
    with engine.begin() as conn:
        models = [
            Model.model_validate(dict(row))
            for row in conn.execute(sa.select(table_of(Model))).mappings()
        ]
        S, D = table_of(Site), table_of(Deployment)
        codes = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
        watermark = read_watermark(conn, MONITOR)
        changed = changed_since(conn, watermark)
        for model in models:
            assert model.id is not None
            cfg = config.for_monitor(MONITOR, SiteComparisonConfig, model=model.name)
            deployed = set(
                conn.execute(sa.select(D.c.site_id).where(D.c.model_id == model.id)).scalars()
            )
            window = comparison_window(model, now, cfg.window_days)
            # A model whose window, settings, sites and rollups in the window are as at its
            # last comparison keeps that comparison's points (the window moves once a day).
            inputs_key = f"monitor.{MONITOR}.inputs.{model.id}"
            inputs = _inputs_digest(window, cfg, deployed, codes)
            first, last = (epoch_seconds(w) // 3600 for w in window)
            touched = any(
                c.model_id == model.id and c.first_hour < last and c.last_hour >= first
                for c in changed
            )
            if not touched and get_state(conn, inputs_key, "") == inputs:
                continue
            set_state(conn, inputs_key, inputs)
            counts = read_site_counts(conn, model.id, *window)
            counts = counts[counts["site_id"].isin(deployed)]
            if counts.empty:
                continue
            design = cfg.design_effect or design_effect_for(
                model.horizon_hours, model.scoring_interval_minutes
            )
            frame, test, centre = compare_sites(counts, design_effect=design, config=cfg)
            results += site_results(
                frame,
                test,
                centre,
                model=model,
                codes=codes,
                window=window,
                design_effect=design,
                mix=read_input_mix(conn, model, *window),
                config=cfg,
            )
        write_results(conn, results, now=now)
        if changed:
            write_watermark(conn, MONITOR, max(c.updated_at for c in changed))
    logger.info("site_comparison: %d points", len(results))
    return results
