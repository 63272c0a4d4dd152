"""The O:E monitor: its interval against statsmodels, its rules, and end to end from the store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from statsmodels.stats.rates import confint_poisson

from collectors.runner import collect_files
from monitors.base import Status
from monitors.config import MonitorConfig
from monitors.observed_expected import (
    OEConfig,
    OEEstimate,
    classify,
    design_effect_for,
    observed_to_expected,
)
from monitors.registry import MonitorRegistry, default_registry
from monitors.runner import run_observed_expected
from store.models import MetricPoint, Prediction, Site, table_of
from store.rollups import refresh
from tests.factories import T0, outcome, prediction, write_jsonl


@pytest.mark.parametrize(
    ("observed", "expected"), [(0, 3.2), (1, 1.0), (7, 10.0), (40, 31.7), (400, 389.2)]
)
def test_interval_matches_statsmodels_exact_poisson(observed: int, expected: float) -> None:
    ours = observed_to_expected(observed, expected, ci_level=0.95)
    low, high = confint_poisson(observed, expected, method="exact-c", alpha=0.05)
    assert ours.ratio == pytest.approx(observed / expected)
    assert ours.ci_low == pytest.approx(low, rel=1e-9, abs=1e-12)
    assert ours.ci_high == pytest.approx(high, rel=1e-9)


def test_design_effect_computes_the_interval_on_effective_counts() -> None:
    # 21 positive predictions sharing 7 encounters' outcomes (d = 3) carry the information
    # of 7 events: the interval is statsmodels' exact interval for 7 events over E/3.
    ours = observed_to_expected(21, 15.0, design_effect=3.0)
    low, high = confint_poisson(7, 5.0, method="exact-c", alpha=0.05)
    assert ours.ratio == pytest.approx(21 / 15)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert design_effect_for(12, 240) == 3.0
    assert design_effect_for(720, 0) == 1.0


def test_classification_rules() -> None:
    cfg = OEConfig()
    ok = observed_to_expected(20, 20.0)
    breach = observed_to_expected(60, 20.0)
    warn = observed_to_expected(32, 20.0)
    assert classify(ok, n_ok=1000, n_settled=1000, config=cfg)[0] == Status.OK
    assert classify(breach, n_ok=1000, n_settled=1000, config=cfg)[0] == Status.BREACH
    assert classify(warn, n_ok=1000, n_settled=1000, config=cfg)[0] == Status.WARN
    # Outside the band but uncertain: no evidence of miscalibration yet.
    uncertain = observed_to_expected(15, 10.0)
    assert classify(uncertain, n_ok=100, n_settled=100, config=cfg)[0] == Status.OK
    status, why = classify(ok, n_ok=1000, n_settled=900, config=cfg)
    assert status == Status.INSUFFICIENT and "labels not yet settled" in why
    small = OEEstimate(1, 2.0, 0.5, 0.01, 2.8)
    assert classify(small, n_ok=100, n_settled=100, config=cfg)[0] == Status.INSUFFICIENT
    # A small window whose exact CI clears the band is still a breach.
    clear = observed_to_expected(12, 3.0)
    assert classify(clear, n_ok=100, n_settled=100, config=cfg)[0] == Status.BREACH


def test_config_layers_defaults_model_and_site(tmp_path: Path) -> None:
    path = tmp_path / "monitors.yaml"
    path.write_text(
        "observed_expected:\n  defaults: {window_days: 7, min_expected: 10}\n"
        "  models:\n    m: {window_days: 14, sites: {S1: {min_expected: 3}}}\n"
    )
    config = MonitorConfig.from_file(path)
    assert config.for_monitor("observed_expected", OEConfig, model="x").window_days == 7
    assert config.for_monitor("observed_expected", OEConfig, model="m").window_days == 14
    site = config.for_monitor("observed_expected", OEConfig, model="m", site="S1")
    assert (site.window_days, site.min_expected) == (14, 3)
    path.write_text("observed_expected:\n  defaults: {windw_days: 7}\n")
    with pytest.raises(ValueError, match="unknown settings"):
        MonitorConfig.from_file(path).for_monitor("observed_expected", OEConfig, model="m")


def test_registry_refuses_a_duplicate_name() -> None:
    registry = MonitorRegistry()
    registry.register("a", run_observed_expected, interval_seconds=60, runbook="x")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", run_observed_expected, interval_seconds=60, runbook="x")
    assert "observed_expected" in default_registry().names()


def test_monitor_points_equal_an_independent_computation_from_raw_rows(
    engine: Engine, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    records, outcomes = [], []
    for n in range(1, 3001):
        scored = T0 + timedelta(minutes=int(rng.integers(0, 10 * 24 * 60)))
        score = float(np.clip(rng.beta(2, 30), 0.001, 0.999))
        encounter_id = f"E{n}"
        records.append(
            prediction(
                n,
                encounter_id=encounter_id,
                scored=scored,
                score=round(score, 6),
                site=str(rng.choice(["UMC", "RVH"])),
            )
        )
        if rng.random() < score * 1.3:  # miscalibrated on purpose: O:E near 1.3
            outcomes.append(outcome(encounter_id, scored + timedelta(hours=2)))
    list(
        collect_files(
            engine,
            [
                write_jsonl(tmp_path / "predictions-m.jsonl", records),
                write_jsonl(tmp_path / "outcomes-m.jsonl", outcomes),
            ],
            secret="s",
            now=lambda: T0 + timedelta(days=30),
        )
    )
    now = T0 + timedelta(days=20)
    refresh(engine, now=now)
    # One prediction per encounter here, so no design effect.
    config = MonitorConfig(
        {"observed_expected": {"defaults": {"window_days": 7, "design_effect": 1.0}}}
    )
    results = run_observed_expected(engine, config, now)
    assert results
    assert run_observed_expected(engine, config, now) == []  # nothing changed: nothing recomputed

    P, MP, S = table_of(Prediction), table_of(MetricPoint), table_of(Site)
    with engine.connect() as conn:
        raw = pd.read_sql(sa.select(P.c.site_id, P.c.scored_at, P.c.score, P.c.label), conn)
        points = pd.read_sql(sa.select(MP).where(MP.c.monitor == "observed_expected"), conn)
        sites = dict(conn.execute(sa.select(S.c.code, S.c.id)).all())
    raw["scored_at"] = pd.to_datetime(raw["scored_at"], utc=True)
    checked = 0
    for _, point in points[points["site_id"] == sites["UMC"]].iterrows():
        start, end = pd.Timestamp(point["window_start"]), pd.Timestamp(point["window_end"])
        window = raw[
            (raw["site_id"] == sites["UMC"])
            & (raw["scored_at"] >= start)
            & (raw["scored_at"] < end)
            & raw["label"].notna()
        ]
        observed, expected = int(window["label"].sum()), float(window["score"].sum())
        assert point["n"] == len(window)
        if point["value"] is None or pd.isna(point["value"]):
            continue
        assert point["value"] == pytest.approx(observed / expected, rel=1e-9)
        low, high = confint_poisson(observed, expected, method="exact-c", alpha=0.05)
        assert point["ci_low"] == pytest.approx(low, rel=1e-7)
        assert point["ci_high"] == pytest.approx(high, rel=1e-7)
        checked += 1
    assert checked >= 5
    # The whole period pooled shows the planted miscalibration.
    full = raw[raw["label"].notna()]
    assert 1.1 < full["label"].sum() / full["score"].sum() < 1.5
