"""AppTest of the calibration, discrimination and drift pages, from the real entrypoint."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from monitors.drift_runner import run_drift
from monitors.runner import run_observed_expected
from monitors.sequential_runner import run_calibration_drift
from monitors.windowed import run_calibration, run_discrimination
from store.rollups import refresh
from tests.app.operational import app_env, app_test
from tests.factories import T0
from tests.monitors.clinical_world import CONFIG, DAYS, load

__all__ = ["app_env"]
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture
def clinical_store(app_env: None, engine: Engine, tmp_path: Path) -> datetime:
    load(engine, tmp_path, "a", 0, DAYS, seed=51, per_day=60)
    now = T0 + timedelta(days=DAYS + 5)
    refresh(engine, now=now)
    for run in (run_observed_expected, run_calibration, run_discrimination, run_drift):
        run(engine, CONFIG, now)
    run_calibration_drift(engine, CONFIG, now)
    return now


def test_clinical_pages(clinical_store: datetime) -> None:
    # One seeded store per database for the three pages (seeding is the slow part).
    calibration_page_shows_sites_side_by_side_and_the_cusum_signal()
    discrimination_page_shows_auroc_and_threshold_metrics_per_site()
    drift_page_flags_the_missing_input_and_builds_an_evidently_report()


def calibration_page_shows_sites_side_by_side_and_the_cusum_signal() -> None:
    at = app_test(default_timeout=60)
    at.switch_page("app_pages/calibration.py").run()
    assert not at.exception
    assert at.title[0].value == "Calibration"
    assert at.selectbox[0].value == "deterioration"
    table = at.dataframe[0].value
    assert set(table["site"]) == {"RVH", "UMC"}
    assert {"O:E", "slope", "ICI", "labels settled", "CUSUM under"} <= set(table.columns)
    rvh = table[table["site"] == "RVH"].iloc[0]
    assert rvh["CUSUM under"] == "breach"
    errors = " ".join(e.value for e in at.error)
    assert "deterioration at RVH" in errors and "UMC" not in errors
    assert len(at.get("plotly_chart")) == 4  # reliability, O:E, slope, CUSUM
    at.multiselect[0].set_value(["UMC"]).run()
    assert not at.exception
    assert set(at.dataframe[0].value["site"]) == {"UMC"}


def discrimination_page_shows_auroc_and_threshold_metrics_per_site() -> None:
    at = app_test(default_timeout=60)
    at.switch_page("app_pages/discrimination.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["site"]) == {"RVH", "UMC"}
    assert table["AUROC"].str.match(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]").all()
    assert len(at.get("plotly_chart")) == 2


def drift_page_flags_the_missing_input_and_builds_an_evidently_report() -> None:
    at = app_test(default_timeout=120)
    at.switch_page("app_pages/drift.py").run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    assert "**lactate** at **RVH**" in warnings
    assert len(at.get("plotly_chart")) == 3
    at.selectbox[1].set_value("RVH").run()
    at.selectbox[2].set_value("lactate").run()
    assert not at.exception
    at.button[0].click().run()
    assert not at.exception
    assert at.get("download_button")
