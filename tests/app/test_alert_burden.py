"""AppTest of the Alert burden page: the spiking site, its limits, and units per shift."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from monitors.alert_burden import run_alert_burden
from monitors.config import MonitorConfig
from store.rollups import refresh
from tests.app.operational import app_env, app_test, now_minute
from tests.factories import prediction, write_jsonl

__all__ = ["app_env"]


def test_alert_burden_page_shows_the_spike_and_the_shifts(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    now = now_minute().replace(minute=0)
    rng = np.random.default_rng(3)
    records = []
    for hour in range(10 * 24, 0, -2):  # 10 days, 30 patients scored every other hour
        for patient in range(30):
            rate = 0.5 if hour <= 6 else 0.01  # the last six hours alert on half the scores
            alert = bool(rng.random() < rate)
            records.append(
                prediction(
                    len(records) + 1,
                    site="RVH",
                    unit=("2N", "3S")[patient % 2],
                    encounter_id=f"P{patient}",
                    scored=now - timedelta(hours=hour, minutes=-patient),
                    score=0.05 if alert else 0.005,
                    alert=alert,
                )
            )
    list(collect_files(engine, [write_jsonl(tmp_path / "predictions-x.jsonl", records)],
                       secret="s"))  # fmt: skip
    refresh(engine, now=now)
    run_alert_burden(engine, MonitorConfig.from_file(), now)
    at = app_test(default_timeout=30)
    at.switch_page("app_pages/alert_burden.py").run()
    assert not at.exception
    assert at.title[0].value == "Alert burden"
    [spike] = [e.value for e in at.error]
    assert spike.startswith("**deterioration at RVH**") and "alert-volume" in spike
    table = at.dataframe[0].value
    rvh = table[table["site"] == "RVH"].iloc[0]
    assert rvh["status"] == "breach" and rvh["shown"] > rvh["upper limit"]
    assert rvh["alerting scores"] - rvh["shown"] == rvh["duplicates suppressed"]
    at.selectbox[1].set_value("RVH").run()
    assert not at.exception
    shifts = at.dataframe[1].value
    assert set(shifts["unit"]) == {"2N", "3S"}
    assert set(shifts["shift"]) <= {"07:00", "15:00", "23:00"}
    # Seven days of shifts hold at least the last 24 h; the newest shift holds the spike.
    assert shifts["shown"].sum() >= rvh["shown"]
    newest = shifts.sort_values(["shift_date", "shift"]).groupby(["shift_date", "shift"])
    assert newest["shown"].sum().iloc[-2:].sum() >= 10
