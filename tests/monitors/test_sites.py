"""Site comparison: funnel limits against scipy, heterogeneity against statsmodels, from a store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from scipy import stats
from sqlalchemy.engine import Engine
from statsmodels.stats.meta_analysis import combine_effects

from collectors.runner import collect_files
from monitors.base import Status
from monitors.config import MonitorConfig
from monitors.sites import (
    SiteComparisonConfig,
    binned_mean,
    compare_sites,
    funnel_limit,
    heterogeneity,
    run_site_comparison,
)
from store.models import Site, table_of
from store.rollups import refresh
from tests.factories import outcome, prediction, write_jsonl


@pytest.mark.parametrize("expected", [0.8, 3.0, 12.5, 60.0, 400.0])
@pytest.mark.parametrize("p", [0.001, 0.025, 0.975, 0.999])
def test_funnel_limit_interpolates_between_the_exact_poisson_counts(
    expected: float, p: float
) -> None:
    limit = float(funnel_limit(expected, 1.0, p))
    r = stats.poisson.ppf(p, expected)
    # Spiegelhalter 2005 A.1.1: the limit count lies between r - 1 and r, at the point where
    # the cumulative probability, interpolated linearly across the step, equals p.
    count = limit * expected
    if r == 0:  # below zero events there is nothing to interpolate: the limit is 0
        assert limit == 0.0
        return
    assert r - 1 - 1e-9 <= count <= r + 1e-9
    f_lo, f_hi = stats.poisson.cdf(r - 1, expected), stats.poisson.cdf(r, expected)
    assert f_hi - (r - count) * (f_hi - f_lo) == pytest.approx(p)


def test_funnel_limits_approach_the_normal_approximation_and_scale_with_the_design_effect() -> None:
    e = 20_000.0
    z = stats.norm.ppf(0.999)
    assert float(funnel_limit(e, 1.0, 0.999)) == pytest.approx(1 + z / np.sqrt(e), rel=1e-3)
    assert float(funnel_limit(e, 1.0, 0.001)) == pytest.approx(1 - z / np.sqrt(e), rel=1e-3)
    # With design effect 3 the limits at E are those at E/3.
    assert float(funnel_limit(90.0, 1.2, 0.975, design_effect=3.0)) == float(
        funnel_limit(30.0, 1.2, 0.975)
    )


def test_heterogeneity_matches_statsmodels_meta_analysis() -> None:
    observed = np.array([40.0, 25.0, 90.0, 12.0, 31.0])
    expected = np.array([38.0, 30.0, 60.0, 11.5, 29.0])
    for design in (1.0, 3.0):
        ours = heterogeneity(observed, expected, design)
        assert ours is not None
        ref = combine_effects(np.log(observed / expected), design / observed)
        assert ours.q == pytest.approx(ref.q)
        assert ours.i2 == pytest.approx(max(0.0, ref.i2))  # Higgins & Thompson truncate at 0
        assert ours.df == ref.df_resid
        assert ours.pooled_log_oe == pytest.approx(ref.mean_effect_fe)
        assert ours.p_value == pytest.approx(stats.chi2.sf(ref.q, ref.df_resid))
    assert heterogeneity([0.0, 5.0], [3.0, 4.0]) is None  # one site left: no test


def test_binned_mean_uses_midpoints_and_open_ends() -> None:
    edges = [10.0, 20.0, 30.0]  # bins: <10, [10,20), [20,30), >=30
    assert binned_mean([0, 1, 1, 0], edges) == pytest.approx(20.0)
    assert binned_mean([1, 0, 0, 1], edges) == pytest.approx((5 + 35) / 2)
    assert binned_mean([0, 0, 0, 0], edges) is None


def test_compare_sites_flags_the_outlier_and_leaves_small_sites_unjudged() -> None:
    frame = pd.DataFrame(
        {
            "site_id": [1, 2, 3, 4],
            "n_ok": [9000, 5000, 4000, 300],
            "n_settled": [9000, 5000, 4000, 300],
            "observed": [300.0, 160.0, 260.0, 3.0],
            "expected": [290.0, 155.0, 110.0, 2.5],
        }
    )
    out, test, centre = compare_sites(
        frame, design_effect=1.0, config=SiteComparisonConfig(min_expected=5.0)
    )
    assert centre == 1.0
    assert out["status"].tolist() == ["ok", "ok", "breach", "insufficient-data"]
    assert test is not None and test.p_value < 0.001 and test.sites == 3
    # Around the pooled O:E the big outlier drags the centre up and the others fall below it.
    out, _, centre = compare_sites(
        frame, design_effect=1.0, config=SiteComparisonConfig(centre="pooled")
    )
    assert centre == pytest.approx((300 + 160 + 260) / (290 + 155 + 110))
    assert out["status"].tolist()[0] == "breach"


# ---------------------------------------------------------------- from a store

NOW = datetime(2026, 9, 20, tzinfo=UTC)


def test_runner_puts_each_site_on_the_funnel_with_case_mix(engine: Engine, tmp_path: Path) -> None:
    """Four sites, one prediction per encounter; LKS has twice the events its scores expect,
    MTN is sicker (higher risk) but calibrated."""
    rng = np.random.default_rng(5)
    records, outcomes = [], []
    n = 0
    for site, count, risk, factor in [
        ("UMC", 1500, 0.05, 1.0),
        ("RVH", 1000, 0.05, 1.0),
        ("LKS", 800, 0.05, 2.0),
        ("MTN", 800, 0.12, 1.0),
    ]:
        for _ in range(count):
            n += 1
            scored = NOW - timedelta(days=35) + timedelta(minutes=int(rng.integers(0, 28 * 1440)))
            score = float(np.clip(rng.beta(2, 2 / risk - 2), 0.001, 0.9))
            enc = f"{site}{n}"
            records.append(prediction(n, site=site, encounter_id=enc, scored=scored, score=score))
            if rng.random() < min(1.0, score * factor):
                outcomes.append(outcome(enc, scored + timedelta(hours=3), site=site))
    files = [
        write_jsonl(tmp_path / "predictions-sites.jsonl", records),
        write_jsonl(tmp_path / "outcomes-sites.jsonl", outcomes),
    ]
    list(collect_files(engine, files, secret="s"))
    refresh(engine, now=NOW)
    config = MonitorConfig(
        {"site_comparison": {"defaults": {"window_days": 30, "design_effect": 1.0}}}
    )
    results = run_site_comparison(engine, config, NOW)
    S = table_of(Site)
    with engine.connect() as conn:
        codes = dict(conn.execute(sa.select(S.c.id, S.c.code)).all())
    by_site = {codes.get(r.site_id, "all"): r for r in results if r.model_id == 1}
    assert by_site["LKS"].status == Status.BREACH
    assert by_site["LKS"].runbook == "site-outlier"
    assert by_site["LKS"].detail["severity"] == "ticket"
    assert {by_site[s].status for s in ("UMC", "RVH", "MTN")} <= {Status.OK, Status.WARN}
    # Case mix: MTN's crude event rate is higher, and so is its expected rate: not a failure.
    mtn, umc = by_site["MTN"].detail, by_site["UMC"].detail
    assert mtn["observed_rate"] > 1.5 * umc["observed_rate"]
    assert mtn["expected_rate"] > 1.5 * umc["expected_rate"]
    assert mtn["mean_predicted_risk"] > umc["mean_predicted_risk"]
    assert by_site["UMC"].detail["inputs"]["lactate"]["missing"] == 0.0
    # The window ends the horizon plus label lag (60 h) before now, on a day boundary.
    assert by_site["UMC"].window_end == datetime(2026, 9, 17, tzinfo=UTC)
    assert by_site["all"].metric == "heterogeneity"
    assert by_site["all"].status == Status.WARN
