"""AppTest of the Service levels page: status grid, burning SLOs and the burn-rate chart."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from monitors.slo import run_slo_monitor
from store.rollups import refresh
from tests.app.operational import app_env, app_test, late_scores, now_minute
from tests.factories import write_jsonl

__all__ = ["app_env"]


def test_slo_page_shows_the_burning_site_with_its_rule_and_budget(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    now = now_minute()
    list(collect_files(engine, [write_jsonl(tmp_path / "predictions-x.jsonl", late_scores(now))],
                       secret="s"))  # fmt: skip
    refresh(engine, now=now)
    run_slo_monitor(engine, "latency", now)
    run_slo_monitor(engine, "availability", now)
    at = app_test(default_timeout=30)
    at.switch_page("app_pages/slo.py").run()
    assert not at.exception
    assert at.title[0].value == "Service levels"
    assert at.selectbox[0].value == "deterioration"
    [burning] = [e.value for e in at.error]
    assert "deterioration-latency at UMC" in burning and "14.4×" in burning
    assert "latency-burn" in burning
    table = at.dataframe[0].value
    umc = table[(table["site"] == "UMC") & (table["SLO"] == "deterioration-latency")].iloc[0]
    assert umc["status"] == "breach" and umc["burn 1h"] > 14.4
    assert set(table["site"]) >= {"UMC", "RVH"}
    assert len(at.get("plotly_chart")) == 3  # grid, burn rate, budget
    at.selectbox[0].set_value("readmission").run()
    assert not at.exception
    assert any("No SLO has been evaluated" in i.value for i in at.info) or not at.error
