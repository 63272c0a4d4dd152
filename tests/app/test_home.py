"""AppTest of the dashboard's home page, from the real entrypoint, on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from incidents.alerts import sync_alerts
from monitors.config import MonitorConfig
from monitors.runner import run_observed_expected
from monitors.scheduler import record_heartbeat
from store.rollups import refresh
from tests.app.operational import app_test
from tests.factories import outcome, prediction, write_jsonl
from vigil.config import get_settings

ENTRYPOINT = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


@pytest.fixture
def app_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def _seed(engine: Engine, tmp_path: Path, *, miscalibrated_site: str) -> datetime:
    rng = np.random.default_rng(3)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=20)
    records, outcomes = [], []
    for n in range(1, 4001):
        site = str(rng.choice(["UMC", "RVH"]))
        scored = start + timedelta(minutes=int(rng.integers(0, 17 * 24 * 60)))
        score = float(rng.beta(2, 25))
        factor = 2.5 if site == miscalibrated_site else 1.0
        records.append(
            prediction(n, encounter_id=f"E{n}", site=site, scored=scored, score=round(score, 6))
        )
        if rng.random() < min(1.0, score * factor):
            outcomes.append(outcome(f"E{n}", scored + timedelta(hours=1), site=site))
    files = [
        write_jsonl(tmp_path / "predictions-a.jsonl", records),
        write_jsonl(tmp_path / "outcomes-a.jsonl", outcomes),
    ]
    list(collect_files(engine, files, secret="s"))
    refresh(engine, now=now)
    results = run_observed_expected(engine, MonitorConfig.from_file(), now)
    sync_alerts(engine, results, now=now)
    return now


def test_home_shows_the_status_grid_and_flags_the_miscalibrated_site(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    now = _seed(engine, tmp_path, miscalibrated_site="RVH")
    record_heartbeat(engine, started_at=now, monitor_ran=True)
    at = app_test(default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value.startswith("Vigil")
    assert len(at.get("plotly_chart")) == 1
    attention = " ".join(m.value for m in at.markdown)
    assert "deterioration at RVH" in attention
    assert "deterioration at UMC" not in attention
    assert not at.warning  # the heartbeat is fresh
    assert [m.label for m in at.metric][:2] == ["Scheduler heartbeat", "Last monitor run"]
    assert any(m.value.startswith("**0 SLO(s) burning") for m in at.markdown)
    assert [p.label for p in at.get("page_link")][:2] == ["Live SLA (on-call)", "Feeds"]
    alerts = at.dataframe[0].value
    assert list(alerts["site"]) == ["RVH"]
    assert list(alerts["monitor"]) == ["observed_expected"]


def test_home_explains_an_empty_store_and_a_silent_scheduler(app_env: None, engine: Engine) -> None:
    at = app_test(default_timeout=30).run()
    assert not at.exception
    assert "never run" in at.warning[0].value
    assert any("No monitor results yet" in i.value for i in at.info)


def test_home_shows_a_banner_not_a_traceback_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "VIGIL_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/nowhere?connect_timeout=2"
    )
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    try:
        at = app_test(default_timeout=30).run()
        assert not at.exception
        assert "unreachable" in at.error[0].value
    finally:
        get_settings.cache_clear()
        st.cache_resource.clear()
