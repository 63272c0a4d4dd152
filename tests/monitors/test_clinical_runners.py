"""The clinical-quality monitors end to end on a real store (SQLite and PostgreSQL).

Predictions and outcomes go in through the collectors; the rollups are refreshed; each monitor
runs; its metric points are compared with an independent computation on the raw prediction
rows (statsmodels, scikit-learn, scipy), and its incremental behaviour is checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import statsmodels.api as sm
from scipy import stats
from sklearn.metrics import brier_score_loss, roc_auc_score
from sqlalchemy.engine import Engine

from collectors.pseudonym import encounter_key
from collectors.runner import collect_files
from monitors import windowed
from monitors.base import Status
from monitors.config import MonitorConfig
from monitors.drift_runner import run_drift
from monitors.registry import default_registry
from monitors.sequential_runner import run_calibration_drift
from monitors.windowed import run_calibration, run_discrimination
from store.models import CusumLimit, DriftReference, MetricPoint, Prediction, Site, table_of
from store.rollups import refresh
from tests.factories import T0, outcome, write_jsonl
from tests.monitors.clinical_world import CONFIG, DAYS, SHIFT_DAY, load

os.environ.setdefault("DO_NOT_TRACK", "1")
P, MP, S = table_of(Prediction), table_of(MetricPoint), table_of(Site)


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> tuple[Engine, datetime, dict[str, int]]:
    load(engine, tmp_path, "a", 0, DAYS, seed=41)
    now = T0 + timedelta(days=DAYS + 5)
    refresh(engine, now=now)
    with engine.connect() as conn:
        sites = dict(conn.execute(sa.select(S.c.code, S.c.id)).all())
    return engine, now, sites


def _raw(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        raw = pd.read_sql(
            sa.select(P.c.site_id, P.c.scored_at, P.c.score, P.c.label, P.c.alert, P.c.inputs),
            conn,
        )
    raw["scored_at"] = pd.to_datetime(raw["scored_at"], utc=True)
    return raw


def _points(engine: Engine, monitor: str) -> pd.DataFrame:
    with engine.connect() as conn:
        points = pd.read_sql(sa.select(MP).where(MP.c.monitor == monitor), conn)
    for column in ("window_start", "window_end"):
        points[column] = pd.to_datetime(points[column], utc=True)
    return points


def _window(raw: pd.DataFrame, point: pd.Series) -> pd.DataFrame:
    part = raw[
        (raw["site_id"] == point["site_id"])
        & (raw["scored_at"] >= point["window_start"])
        & (raw["scored_at"] < point["window_end"])
        & raw["label"].notna()
    ]
    return part


def check_calibration(engine: Engine, now: datetime, sites: dict[str, int]) -> None:
    results = run_calibration(engine, CONFIG, now)
    assert results and run_calibration(engine, CONFIG, now) == []  # nothing new: nothing done
    raw, points = _raw(engine), _points(engine, "calibration")
    day = points[points["window_end"] == T0 + timedelta(days=DAYS)]
    checked = 0
    for site in ("UMC", "RVH"):
        at = day[day["site_id"] == sites[site]].set_index("metric")
        window = _window(raw, at.loc["brier"])
        y, p = window["label"].to_numpy(float), window["score"].to_numpy(float)
        x = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
        assert at.loc["brier", "n"] == len(window)
        assert at.loc["brier", "value"] == pytest.approx(brier_score_loss(y, p), rel=1e-9)
        family = sm.families.Binomial()
        ref_int = sm.GLM(y, np.ones((len(y), 1)), offset=x, family=family).fit()
        ref_slope = sm.GLM(y, sm.add_constant(x), family=family).fit()
        # Binned vs per-prediction fit: within 0.02 (bins) at this sample size.
        assert at.loc["calibration_intercept", "value"] == pytest.approx(
            ref_int.params[0], abs=0.02
        )
        assert at.loc["calibration_slope", "value"] == pytest.approx(ref_slope.params[1], abs=0.02)
        checked += 1
    by_site = day.set_index(["site_id", "metric"])
    assert by_site.loc[(sites["RVH"], "calibration_intercept"), "status"] == Status.BREACH
    # UMC is calibrated: no breach (a warn, CI excluding 0 inside the band, is a 5% event).
    assert by_site.loc[(sites["UMC"], "calibration_intercept"), "status"] != Status.BREACH
    curve = by_site.loc[(sites["UMC"], "ece"), "detail"]["curve"]
    assert (
        len(curve["observed"]) >= 5 and sum(curve["n"]) == by_site.loc[(sites["UMC"], "ece"), "n"]
    )
    assert checked == 2


def check_discrimination(engine: Engine, now: datetime, sites: dict[str, int]) -> None:
    run_discrimination(engine, CONFIG, now)
    raw, points = _raw(engine), _points(engine, "discrimination")
    day = points[points["window_end"] == T0 + timedelta(days=DAYS)]
    for site in ("UMC", "RVH"):
        at = day[day["site_id"] == sites[site]].set_index("metric")
        window = _window(raw, at.loc["auroc"])
        y, p, alert = (
            window["label"].to_numpy(float),
            window["score"].to_numpy(float),
            window["alert"].to_numpy(bool),
        )
        assert at.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, p), abs=0.005)
        assert at.loc["auroc", "ci_low"] < at.loc["auroc", "value"] < at.loc["auroc", "ci_high"]
        assert at.loc["sensitivity", "value"] == pytest.approx(alert[y == 1].mean(), abs=1e-12)
        assert at.loc["ppv", "value"] == pytest.approx(y[alert].mean(), abs=1e-12)
        assert at.loc["specificity", "value"] == pytest.approx(1 - alert[y == 0].mean(), abs=1e-12)


def test_a_run_reads_only_the_windows_of_what_changed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(engine, tmp_path, "a", 0, DAYS, seed=42, per_day=20)
    refresh(engine, now=T0 + timedelta(days=DAYS + 5))
    run_calibration(engine, CONFIG, T0 + timedelta(days=DAYS + 5))
    reads: list[tuple[int, int]] = []
    original: Callable[..., pd.DataFrame] = windowed.daily_bins

    def spy(conn: Any, model_id: int, first: int, last: int, **kw: Any) -> pd.DataFrame:
        reads.append((first, last))
        return original(conn, model_id, first, last, **kw)

    monkeypatch.setattr(windowed, "daily_bins", spy)
    # One more day of data, 10 days later: the run reads that day's windows, not the history.
    load(engine, tmp_path, "b", DAYS + 10, DAYS + 11, seed=43, per_day=20)
    now = T0 + timedelta(days=DAYS + 25)
    refresh(engine, now=now)
    results = run_calibration(engine, CONFIG, now)
    new_day = (T0 - datetime(1970, 1, 1, tzinfo=T0.tzinfo)).days + DAYS + 10
    assert reads == [(new_day - 9, new_day + 9)]  # window 10: the day's windows and its history
    ends = {r.window_end for r in results}
    assert min(ends) == T0 + timedelta(days=DAYS + 11)
    assert max(ends) <= now


def test_sites_with_different_windows_each_read_and_score_their_own(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RVH's calibration window is 20 days, UMC's 10: each site's points equal those of a run
    # where every site has its window, and UMC's read covers 10 days of history, not 20.
    load(engine, tmp_path, "a", 0, DAYS, seed=44, per_day=20)
    now = T0 + timedelta(days=DAYS + 5)
    refresh(engine, now=now)
    with engine.connect() as conn:
        sites = dict(conn.execute(sa.select(S.c.code, S.c.id)).all())

    def config(defaults: int, rvh: int | None = None) -> MonitorConfig:
        section: dict[str, Any] = {"defaults": {"window_days": defaults, "design_effect": 1.0}}
        if rvh is not None:
            section["models"] = {"deterioration": {"sites": {"RVH": {"window_days": rvh}}}}
        return MonitorConfig({"calibration": section})

    def fresh_run(cfg: MonitorConfig) -> list[Any]:
        with engine.begin() as conn:
            conn.execute(sa.delete(MP).where(MP.c.monitor == "calibration"))
            conn.execute(
                sa.text("DELETE FROM jobstate WHERE key = 'monitor.calibration.rollup_updated_at'")
            )
        return run_calibration(engine, cfg, now)

    reads: list[tuple[int, int, list[int]]] = []
    original: Callable[..., pd.DataFrame] = windowed.daily_bins

    def spy(conn: Any, model_id: int, first: int, last: int, **kw: Any) -> pd.DataFrame:
        reads.append((first, last, list(kw["site_ids"])))
        return original(conn, model_id, first, last, **kw)

    monkeypatch.setattr(windowed, "daily_bins", spy)
    mixed = fresh_run(config(10, rvh=20))
    today = (now - datetime(1970, 1, 1, tzinfo=now.tzinfo)).days
    first_day = (T0 - datetime(1970, 1, 1, tzinfo=T0.tzinfo)).days
    (ten_first, ten_last, ten_sites), twenty = reads  # every other site has the default window
    assert (ten_first, ten_last) == (first_day - 9, today)
    assert sites["UMC"] in ten_sites and sites["RVH"] not in ten_sites
    assert twenty == (first_day - 19, today, [sites["RVH"]])
    monkeypatch.setattr(windowed, "daily_bins", original)
    alone = {10: fresh_run(config(10)), 20: fresh_run(config(20))}

    def of(results: list[Any], site: str) -> list[Any]:
        return sorted(
            (r for r in results if r.site_id == sites[site]),
            key=lambda r: (r.metric, r.window_start),
        )

    assert of(mixed, "UMC") == of(alone[10], "UMC") != []
    assert of(mixed, "RVH") == of(alone[20], "RVH") != []
    assert {r.detail["window_days"] for r in of(mixed, "RVH")} == {20}


def check_calibration_drift(
    engine: Engine, now: datetime, sites: dict[str, int], tmp_path: Path
) -> None:
    results = run_calibration_drift(engine, CONFIG, now)
    assert run_calibration_drift(engine, CONFIG, now) == []
    with engine.connect() as conn:
        limits = pd.read_sql(sa.select(table_of(CusumLimit)), conn)
    assert len(limits) == 4 and (limits["target_arl_days"] == 3650).all()
    upper = [r for r in results if r.metric == "cusum_upper"]
    breaches = [r for r in upper if r.status == Status.BREACH]
    assert {r.site_id for r in breaches} == {sites["RVH"]}
    change = datetime.fromisoformat(breaches[0].detail["change_point"])
    assert abs(change - (T0 + timedelta(days=SHIFT_DAY))) <= timedelta(days=2)
    assert breaches[0].window_start >= T0 + timedelta(days=SHIFT_DAY)
    lower = [r for r in results if r.metric == "cusum_lower"]
    assert all(r.status == Status.OK for r in lower)
    adwin = [r for r in results if r.metric == "adwin" and r.status == Status.WARN]
    assert {r.site_id for r in adwin} == {sites["RVH"]}

    # A late outcome for an hour long since processed: the run rewinds to that day, and the
    # result equals a run from scratch on the same data.
    late_eid = "UMC-E00004007"  # day 2, UMC, prediction 7 (settled negative)
    with engine.connect() as conn:
        scored = conn.execute(
            sa.select(P.c.scored_at).where(P.c.encounter_key == encounter_key(late_eid, "s"))
        ).scalar_one()
    write_jsonl(
        tmp_path / "outcomes-late.jsonl",
        [outcome(late_eid, scored + timedelta(hours=1), site="UMC")],
    )
    list(collect_files(engine, [tmp_path / "outcomes-late.jsonl"], secret="s"))
    later = now + timedelta(hours=1)
    refresh(engine, now=later)
    replayed = run_calibration_drift(engine, CONFIG, later)
    assert min(r.window_start for r in replayed) <= scored
    incremental = _points(engine, "calibration_drift")
    with engine.begin() as conn:
        conn.execute(sa.delete(MP).where(MP.c.monitor == "calibration_drift"))
        conn.execute(
            sa.text(
                "DELETE FROM jobstate WHERE key = 'monitor.calibration_drift.rollup_updated_at'"
            )
        )
    run_calibration_drift(engine, CONFIG, later)
    scratch = _points(engine, "calibration_drift")
    key = ["metric", "site_id", "window_start"]
    merged = incremental.merge(scratch, on=key, suffixes=("_inc", "_new"))
    assert len(merged) == len(scratch) == len(incremental)
    np.testing.assert_allclose(
        merged["value_inc"].astype(float), merged["value_new"].astype(float), rtol=1e-9
    )
    assert (merged["status_inc"] == merged["status_new"]).all()


def check_drift(engine: Engine, now: datetime, sites: dict[str, int]) -> None:
    results = run_drift(engine, CONFIG, now)
    with engine.connect() as conn:
        references = pd.read_sql(sa.select(table_of(DriftReference)), conn)
    assert set(references["feature"]) >= {"score", "heart_rate", "lactate"}
    last = [r for r in results if r.window_end == T0 + timedelta(days=DAYS)]
    status = {(r.site_id, r.metric): r for r in last}
    assert status[(sites["RVH"], "psi:lactate")].status == Status.BREACH
    assert status[(sites["UMC"], "psi:lactate")].status == Status.OK
    assert status[(sites["UMC"], "psi:heart_rate")].status == Status.OK
    # Heart rate at UMC: KS and Wasserstein against scipy on the raw values, within the bin
    # bounds (largest bin share; widest bin / reference SD).
    raw = _raw(engine)
    umc = raw[raw["site_id"] == sites["UMC"]]
    values = umc["inputs"].map(lambda d: (d or {}).get("heart_rate"))
    ref = values[umc["scored_at"] < T0 + timedelta(days=10)].to_numpy(float)
    cur_mask = (umc["scored_at"] >= T0 + timedelta(days=DAYS - 5)) & (
        umc["scored_at"] < T0 + timedelta(days=DAYS)
    )
    cur = values[cur_mask].to_numpy(float)
    ks = status[(sites["UMC"], "ks:heart_rate")]
    assert ks.n == len(cur)
    assert ks.value == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=0.06)
    wass = status[(sites["UMC"], "wasserstein:heart_rate")]
    assert wass.detail["wasserstein"] == pytest.approx(
        stats.wasserstein_distance(ref, cur), abs=20.0
    )


def test_each_monitor_against_the_raw_rows_and_the_cusum_resumes_exactly(
    world: tuple[Engine, datetime, dict[str, int]], tmp_path: Path
) -> None:
    # One simulated world per backend (30 days, two sites, RVH's odds x2.7 from day 15),
    # every monitor checked on it: collecting it is the slow part.
    engine, now, sites = world
    check_calibration(engine, now, sites)
    check_discrimination(engine, now, sites)
    check_drift(engine, now, sites)
    check_calibration_drift(engine, now, sites, tmp_path)


def test_every_clinical_monitor_is_registered_with_its_runbook() -> None:
    registry = default_registry()
    expected = {
        "calibration": "calibration-shape",
        "calibration_drift": "calibration-change",
        "discrimination": "discrimination-drop",
        "drift": "data-drift",
    }
    for name, runbook in expected.items():
        assert registry.get(name).runbook == runbook
