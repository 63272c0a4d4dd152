"""Deep links with an explicit time range (`?from=&to=`), and links that survive sign-in."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from app.links import TimeRange, parse_range, range_params, url
from collectors.runner import collect_files
from tests.app.operational import app_env, app_test, now_minute
from tests.factories import heartbeat, iso, write_jsonl

__all__ = ["app_env"]

TODAY = date(2026, 11, 20)


def test_an_explicit_range_parses_clips_and_refuses_nonsense() -> None:
    assert parse_range("2026-11-01", "2026-11-07", today=TODAY, longest=30) == (
        date(2026, 11, 1),
        date(2026, 11, 7),
    )
    # `to` in the future stops today; a range longer than the page allows keeps its last days.
    assert parse_range("2026-11-18", "2026-12-31", today=TODAY, longest=30) == (
        date(2026, 11, 18),
        TODAY,
    )
    assert parse_range("2026-01-01", "2026-11-10", today=TODAY, longest=14) == (
        date(2026, 10, 28),
        date(2026, 11, 10),
    )
    for first, last in [("2026-11-07", "2026-11-01"), ("yesterday", "2026-11-01"), (None, None)]:
        assert parse_range(first, last, today=TODAY, longest=30) is None
    assert url("feeds", site="RVH", **range_params(date(2026, 11, 1), date(2026, 11, 2))) == (
        "/feeds?site=RVH&from=2026-11-01&to=2026-11-02"
    )


def test_a_range_is_whole_utc_days_or_the_last_days_up_to_now() -> None:
    now = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
    explicit = TimeRange(first=date(2026, 11, 1), last=date(2026, 11, 2))
    assert explicit.bounds(now) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 3, tzinfo=UTC),
    )
    assert TimeRange(days=3).bounds(now) == (now - timedelta(days=3), now)


def _beats(engine: Engine, tmp_path: Path, now: datetime) -> list[datetime]:
    """Hourly heartbeats of two RVH feeds over the last four days; their receipt times."""
    times = [now - timedelta(hours=k) for k in range(1, 4 * 24)]
    beats: list[dict[str, Any] | str | bytes] = [
        heartbeat(at, site="RVH", feed=feed, last_event_at=iso(at - timedelta(seconds=40)))
        for at in times
        for feed in ("ADT", "LAB")
    ]
    list(collect_files(engine, [write_jsonl(tmp_path / "heartbeats-x.jsonl", beats)], secret="s"))
    return times


def test_a_link_with_dates_opens_that_range_and_the_slider_takes_over_again(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    from app import data

    now = now_minute()
    times = _beats(engine, tmp_path, now)
    first = last = (now - timedelta(days=2)).date()
    at = app_test()
    at.query_params.update({"site": "RVH", **range_params(first, last)})
    at.switch_page("app_pages/feeds.py").run()
    assert not at.exception
    assert at.selectbox(key="link_site").value == "RVH"
    assert at.toggle(key="link_days_exact").value is True
    assert at.date_input(key="link_days_dates").value == (first, last)
    assert at.query_params["from"] == first.isoformat() and "days" not in at.query_params
    assert len(at.get("plotly_chart")) == 2  # grid and the lag chart of that day
    # The loader behind the chart returns exactly that UTC day's heartbeats.
    history = data.feed_history_in("RVH", None, first, last)
    received = history["received_at"].map(lambda t: t.astimezone(UTC).date())
    assert set(received) == {first}
    assert len(history) == 2 * sum(t.date() == first for t in times)
    # A day with nothing says so, naming the range.
    empty = (now - timedelta(days=30)).date()
    at.date_input(key="link_days_dates").set_value((empty, empty)).run()
    assert any(f"in {empty.isoformat()} to {empty.isoformat()}" in c.value for c in at.caption)
    assert at.query_params["to"] == empty.isoformat()
    # Back to the moving window: the dates leave the URL, the days come back.
    at.toggle(key="link_days_exact").set_value(False).run()
    assert not at.exception
    assert "from" not in at.query_params and "to" not in at.query_params
    assert at.query_params["days"] == "2"


def test_a_deep_link_opened_before_sign_in_lands_on_its_view(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    now = now_minute()
    _beats(engine, tmp_path, now)
    first, last = (now - timedelta(days=3)).date(), (now - timedelta(days=1)).date()
    at = app_test(role=None)
    at.query_params.update({"site": "RVH", **range_params(first, last)})
    at.switch_page("app_pages/feeds.py").run()
    assert at.title[0].value == "Vigil — sign in"
    at.text_input(key="sign_in_username").input("oncall")
    at.text_input(key="sign_in_password").input("vigil-oncall")
    at.button[0].click().run()
    assert not at.exception
    assert at.title[0].value == "Feeds"
    assert (at.query_params["site"], at.query_params["from"], at.query_params["to"]) == (
        "RVH",
        first.isoformat(),
        last.isoformat(),
    )
    assert at.date_input(key="link_days_dates").value == (first, last)
