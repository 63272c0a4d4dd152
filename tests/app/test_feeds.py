"""AppTest of the Feeds page: live freshness grid, the stuck feed, lag chart, degraded scores."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from tests.app.operational import app_env, app_test, now_minute
from tests.factories import heartbeat, iso, write_jsonl

__all__ = ["app_env"]


def test_feeds_page_flags_the_stuck_feed_at_its_site_only(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    now = now_minute()
    stuck_since = now - timedelta(hours=3)
    beats = []
    for k in range(1, 17):
        at = now - timedelta(minutes=15 * k - 5)
        for site in ("UMC", "RVH", "LKS", "MTN", "PRR"):
            for feed in ("ADT", "LAB", "VITALS"):
                frozen = site == "RVH" and feed == "LAB" and at > stuck_since
                last = stuck_since if frozen else at - timedelta(seconds=50)
                beats.append(
                    heartbeat(at, site=site, feed=feed, last_event_at=iso(last),
                              messages=0 if frozen else 30)
                )  # fmt: skip
    list(collect_files(engine, [write_jsonl(tmp_path / "heartbeats-x.jsonl", beats)], secret="s"))
    page = app_test(default_timeout=30)
    page.switch_page("app_pages/feeds.py").run()
    assert not page.exception
    assert page.title[0].value == "Feeds"
    [error] = [e.value for e in page.error]
    assert error.startswith("**LAB at RVH**") and "stale-feed" in error
    table = page.dataframe[0].value
    assert len(table) == 15
    rvh_lab = table[(table["site"] == "RVH") & (table["feed"] == "LAB")].iloc[0]
    assert (
        rvh_lab["status"] == "breach" and rvh_lab["event_lag_min"] == 170.0
    )  # frozen 3 h ago, last beat 10 min ago
    assert set(table.loc[table["status"] != "ok", "site"]) == {"RVH"}
    assert len(page.get("plotly_chart")) == 2  # grid and the lag chart

    # A deep link names the site and the time range of the lag chart; a change goes back.
    linked = app_test(default_timeout=30)
    linked.query_params.update({"site": "RVH", "days": "5"})
    linked.switch_page("app_pages/feeds.py").run()
    assert not linked.exception
    assert linked.selectbox(key="link_site").value == "RVH"
    assert linked.slider(key="link_days").value == 5
    linked.slider(key="link_days").set_value(9).run()
    assert linked.query_params["days"] == "9" and linked.query_params["site"] == "RVH"
