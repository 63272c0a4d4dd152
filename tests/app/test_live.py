"""AppTest of the Live SLA page: SLO status, burn and budget per model × site, stale feeds and
open alerts, filtered by the model and site in the URL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from incidents.alerts import sync_alerts
from monitors.scheduler import record_heartbeat
from monitors.slo import run_slo_monitor
from store.rollups import refresh
from tests.app.operational import app_env, app_test, late_scores, now_minute
from tests.factories import heartbeat, iso, write_jsonl

__all__ = ["app_env"]
PAGE = "app_pages/live.py"


def _seed(engine: Engine, tmp_path: Path) -> None:
    now = now_minute()
    beats = []
    for k in range(1, 9):
        at = now - timedelta(minutes=15 * k - 5)
        for site in ("UMC", "RVH"):
            frozen = site == "RVH"
            last = now - timedelta(hours=3) if frozen else at - timedelta(seconds=50)
            beats.append(heartbeat(at, site=site, feed="LAB", last_event_at=iso(last)))
    files = [
        write_jsonl(tmp_path / "predictions-x.jsonl", late_scores(now)),
        write_jsonl(tmp_path / "heartbeats-x.jsonl", beats),
    ]
    list(collect_files(engine, files, secret="s"))
    refresh(engine, now=now)
    results = run_slo_monitor(engine, "latency", now) + run_slo_monitor(engine, "availability", now)
    sync_alerts(engine, results, now=now)
    record_heartbeat(engine, started_at=now, monitor_ran=True)


def test_live_page_shows_the_burning_slo_the_stale_feed_and_the_open_alert(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    _seed(engine, tmp_path)
    at = app_test(role="oncall")
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.title[0].value == "Live SLA"
    assert not at.warning  # fresh heartbeat: no banner
    quiet = " ".join(i.value for i in at.info)
    assert "No predictions from LKS for deterioration have ever been collected" in quiet
    assert "from UMC for deterioration" not in quiet
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["SLOs breaching"] == "1"
    assert metrics["Scheduler heartbeat"].endswith("s ago")
    assert [m.delta for m in at.metric if m.label == "Scheduler heartbeat"] == ["on time"]
    table = at.dataframe[0].value
    umc = table[(table["site"] == "UMC") & (table["SLO"] == "deterioration-latency")].iloc[0]
    assert umc["status"] == "breach" and umc["burn 1h"] > 14.4 and umc["budget left"] < 1
    assert {"UMC", "RVH"} <= set(table["site"])
    [burning] = [e.value for e in at.error]
    assert "deterioration-latency at UMC" in burning
    stale = at.dataframe[1].value
    pairs = set(zip(stale["site"], stale["feed"], strict=True))
    assert ("RVH", "LAB") in pairs and ("UMC", "LAB") not in pairs  # frozen 3 h vs fresh
    alerts = at.dataframe[2].value
    assert "UMC" in set(alerts["site"]) and "latency_slo" in set(alerts["monitor"])
    # RVH scores 4 an hour: its SLO windows are flagged as small samples.
    assert any("Small samples" in c.value and "RVH" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 1


def test_live_page_opens_the_model_and_site_named_in_the_url(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    _seed(engine, tmp_path)
    at = app_test(role="oncall")
    at.query_params.update({"model": "deterioration", "site": "RVH"})
    at.switch_page(PAGE).run()
    assert not at.exception
    assert [s.value for s in at.selectbox] == ["deterioration", "RVH"]
    table = at.dataframe[0].value
    assert set(table["site"]) == {"RVH"} and not (table["status"] == "breach").any()
    assert not at.error  # the UMC breach is filtered out
    # Choosing another site writes it back to the URL.
    at.selectbox(key="link_site").set_value("UMC").run()
    assert at.query_params["site"] == "UMC"
    assert any("deterioration-latency at UMC" in e.value for e in at.error)


def test_live_page_explains_an_empty_store(app_env: None, engine: Engine) -> None:
    at = app_test(role="oncall")
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any("No SLO has been evaluated" in i.value for i in at.info)
    assert any("never run" in w.value for w in at.warning)
    assert [m.delta for m in at.metric if m.label == "Scheduler heartbeat"] == ["late"]
