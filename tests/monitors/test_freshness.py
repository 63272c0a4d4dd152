"""Feed freshness with an injected clock; degraded marking of scores made during an outage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.runner import collect_files
from monitors import freshness
from monitors.base import Status
from monitors.config import MonitorConfig
from monitors.durations import parse_duration
from monitors.freshness import (
    FreshnessConfig,
    Heartbeat,
    Tier,
    assess_feed,
    heartbeats_in_window,
    latest_heartbeats,
    run_feed_freshness,
    stale_intervals,
    tier_status,
)
from store.models import FeedStatus, Prediction, PredictionRollup, Site, table_of
from store.rollups import refresh
from tests.factories import heartbeat, iso, prediction, write_jsonl

T = datetime(2026, 8, 17, 0, 0, tzinfo=UTC)
LAG = Tier(timedelta(minutes=30), timedelta(hours=1))
STALE = Tier(timedelta(minutes=30), timedelta(hours=1))


def test_durations_parse_like_dbt() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("4h") == timedelta(hours=4)
    assert parse_duration("3d") == timedelta(days=3)
    assert parse_duration(15) == timedelta(minutes=15)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_tiers_are_inclusive_at_their_edges_and_no_data_is_an_error() -> None:
    assert tier_status(timedelta(minutes=29, seconds=59), LAG) == Status.OK
    assert tier_status(timedelta(minutes=30), LAG) == Status.WARN
    assert tier_status(timedelta(minutes=59), LAG) == Status.WARN
    assert tier_status(timedelta(hours=1), LAG) == Status.BREACH
    assert tier_status(None, LAG) == Status.BREACH
    missing = assess_feed(None, now=T, lag_tier=LAG, staleness_tier=STALE)
    assert missing.status == Status.BREACH and "no heartbeat" in missing.reason
    with pytest.raises(ValueError, match="shorter"):
        Tier.parse({"warn_after": "2h", "error_after": "1h"})


def test_the_injected_clock_drives_load_staleness_but_not_event_lag() -> None:
    beat = Heartbeat(received_at=T, last_event_at=T - timedelta(minutes=2))
    fresh = assess_feed(beat, now=T + timedelta(minutes=5), lag_tier=LAG, staleness_tier=STALE)
    assert fresh.status == Status.OK
    assert fresh.event_lag == timedelta(minutes=2)
    # Nothing new arrives: the same heartbeat gets staler as the clock moves on.
    later = assess_feed(beat, now=T + timedelta(minutes=45), lag_tier=LAG, staleness_tier=STALE)
    assert (later.lag_status, later.staleness_status) == (Status.OK, Status.WARN)
    dead = assess_feed(beat, now=T + timedelta(minutes=61), lag_tier=LAG, staleness_tier=STALE)
    assert dead.status == Status.BREACH and "no heartbeat for 61 min" in dead.reason
    # Heartbeats keep coming but the events behind them stopped: event-time lag grows.
    frozen = Heartbeat(received_at=T + timedelta(hours=2), last_event_at=T - timedelta(minutes=2))
    stuck = assess_feed(frozen, now=T + timedelta(hours=2), lag_tier=LAG, staleness_tier=STALE)
    assert (stuck.lag_status, stuck.staleness_status) == (Status.BREACH, Status.OK)


def _outage_beats() -> list[Heartbeat]:
    """Heartbeats every 15 min; the feed's events stop at 01:44 and resume at 08:00."""
    last_event = T + timedelta(hours=1, minutes=44)
    beats = []
    for k in range(4, 40):
        received = T + timedelta(minutes=15 * k, seconds=10)
        down = T + timedelta(hours=2) <= received < T + timedelta(hours=8)
        beats.append(
            Heartbeat(
                received,
                last_event if down else received - timedelta(seconds=40),
                0 if down else 25,
            )
        )
    return beats


def test_stale_intervals_cover_the_outage_from_the_last_event_to_the_recovery() -> None:
    beats = _outage_beats()
    spans = stale_intervals(beats, error_after=timedelta(hours=1), now=T + timedelta(hours=10))
    assert spans == [(T + timedelta(hours=1, minutes=44), T + timedelta(hours=8, seconds=10))]
    # Before the error tier is reached nothing is stale yet.
    early = [b for b in beats if b.received_at < T + timedelta(hours=2, minutes=44)]
    assert stale_intervals(early, error_after=timedelta(hours=1), now=T + timedelta(hours=3)) == []
    # While the outage goes on, the span runs to `now`.
    ongoing = [b for b in beats if b.received_at < T + timedelta(hours=4)]
    assert stale_intervals(ongoing, error_after=timedelta(hours=1), now=T + timedelta(hours=4)) == [
        (T + timedelta(hours=1, minutes=44), T + timedelta(hours=4))
    ]


def _store(engine: Engine, tmp_path: Path) -> None:
    """Every feed at RVH and UMC beats every 15 min; only RVH's LAB events stop (01:44-08:00)."""
    beats = []
    for feed in ("ADT", "LAB", "VITALS"):
        for site in ("RVH", "UMC"):
            for b in _outage_beats():
                stuck = feed == "LAB" and site == "RVH"
                last = b.last_event_at if stuck else b.received_at - timedelta(seconds=40)
                assert last is not None
                beats.append(
                    heartbeat(
                        b.received_at,
                        feed=feed,
                        site=site,
                        last_event_at=iso(last),
                        messages=b.messages if stuck else 25,
                    )
                )
    records = [
        prediction(n, site=site, scored=T + timedelta(minutes=20 * n), encounter_id=f"{site}{n}")
        for n in range(1, 30)
        for site in ("RVH", "UMC")
    ]
    files = [
        write_jsonl(tmp_path / "heartbeats-a.jsonl", beats),
        write_jsonl(tmp_path / "predictions-a.jsonl", records),
    ]
    list(collect_files(engine, files, secret="s"))
    refresh(engine, now=T + timedelta(days=1))


def test_runner_flags_the_stuck_feed_at_the_right_site_and_marks_scores_degraded(
    engine: Engine, tmp_path: Path
) -> None:
    _store(engine, tmp_path)
    config = MonitorConfig.from_file()
    S, P, R = table_of(Site), table_of(Prediction), table_of(PredictionRollup)
    with engine.connect() as conn:
        sites = dict(conn.execute(sa.select(S.c.code, S.c.id)).all())

    def lab_status(now: datetime) -> dict[str, str]:
        results = run_feed_freshness(engine, config, now)
        return {
            code: next(
                r.status.value
                for r in results
                if r.metric == "feed:LAB" and r.site_id == sid and r.model_id == 1
            )
            for code, sid in sites.items()
            if code in ("RVH", "UMC")
        }

    assert lab_status(T + timedelta(hours=2, minutes=1)) == {"RVH": "ok", "UMC": "ok"}
    assert lab_status(T + timedelta(hours=2, minutes=31)) == {"RVH": "warn", "UMC": "ok"}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(P.c.degraded)).scalar() == 0
    assert lab_status(T + timedelta(hours=2, minutes=46)) == {"RVH": "breach", "UMC": "ok"}
    assert lab_status(T + timedelta(hours=8, minutes=1)) == {"RVH": "ok", "UMC": "ok"}
    # The last heartbeat is at 09:45; with no newer one the clock makes every feed stale.
    assert lab_status(T + timedelta(hours=10, minutes=30)) == {"RVH": "warn", "UMC": "warn"}
    assert lab_status(T + timedelta(hours=11)) == {"RVH": "breach", "UMC": "breach"}
    with engine.connect() as conn:
        degraded = conn.execute(
            sa.select(P.c.site_id, P.c.scored_at).where(P.c.degraded).order_by(P.c.scored_at)
        ).all()
        rollup_degraded = conn.execute(
            sa.select(sa.func.sum(R.c.n_degraded)).where(R.c.site_id == sites["RVH"])
        ).scalar()
    # Exactly RVH's scores between the last LAB event (01:44) and the recovery (08:00:10).
    assert {site for site, _ in degraded} == {sites["RVH"]}
    expected = [
        T + timedelta(minutes=20 * n)
        for n in range(1, 30)
        if T + timedelta(hours=1, minutes=44)
        <= T + timedelta(minutes=20 * n)
        < T + timedelta(hours=8, seconds=10)
    ]
    assert [at for _, at in degraded] == expected
    assert rollup_degraded == len(expected)


def _one_by_one(
    engine: Engine, key: tuple[int, str], start: datetime, end: datetime
) -> tuple[Heartbeat | None, list[Heartbeat]]:
    """The per-key reads the batched ones replaced: the newest heartbeat by `end`, and every
    heartbeat in [start, end]."""
    FS = table_of(FeedStatus)
    columns = (FS.c.received_at, FS.c.last_event_at, FS.c.messages)
    mine = (FS.c.site_id == key[0], FS.c.feed == key[1])
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*columns)
            .where(*mine, FS.c.received_at <= end)
            .order_by(FS.c.received_at.desc())
            .limit(1)
        ).first()
        rows = conn.execute(
            sa.select(*columns)
            .where(*mine, FS.c.received_at >= start, FS.c.received_at <= end)
            .order_by(FS.c.received_at)
        ).all()
    return (None if row is None else Heartbeat(*row)), [Heartbeat(*r) for r in rows]


def test_batched_heartbeat_reads_match_the_per_key_reads(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(engine, tmp_path)
    monkeypatch.setattr(freshness, "_CHUNK", 4)  # several statements, one key alone in the last
    with engine.connect() as conn:
        sites = dict(conn.execute(sa.select(table_of(Site).c.code, table_of(Site).c.id)).all())
    # Every stored feed, a feed never reported, and a site with no heartbeat at all.
    keys = [(sites[code], feed) for code in ("RVH", "UMC") for feed in ("ADT", "LAB", "VITALS")]
    keys += [(sites["RVH"], "PHARMACY"), (sites["PRR"], "ADT"), (sites["RVH"], "LAB")]
    beat = timedelta(seconds=10)  # received_at of the stored heartbeats is on :00:10, :15:10, ...
    windows = [
        (T, T + timedelta(hours=1)),  # ends before the first heartbeat
        (T + timedelta(hours=1, minutes=15) + beat, T + timedelta(hours=3) + beat),  # on edges
        (T + timedelta(hours=2, minutes=1), T + timedelta(hours=2, minutes=2)),  # empty
        (T - timedelta(days=1), T + timedelta(days=1)),  # everything
    ]
    for start, end in windows:
        with engine.connect() as conn:
            latest = latest_heartbeats(conn, keys, end)
            beats = heartbeats_in_window(conn, keys, start, end)
        assert set(latest) == set(beats) == set(keys)
        for key in keys:
            assert (latest[key], beats[key]) == _one_by_one(engine, key, start, end), (key, end)
    assert latest[(sites["PRR"], "ADT")] is None and beats[(sites["PRR"], "ADT")] == []
    assert len(beats[(sites["RVH"], "LAB")]) == 36


def test_shipped_config_gives_every_model_its_feeds() -> None:
    config = MonitorConfig.from_file()
    det = config.for_monitor("feed_freshness", FreshnessConfig, model="deterioration", site="UMC")
    assert det.feeds == ["ADT", "LAB", "VITALS"]
    assert det.lag_tier("LAB").error_after == timedelta(hours=1)
    small = config.for_monitor("feed_freshness", FreshnessConfig, model="readmission", site="PRR")
    assert small.feeds == ["ADT"] and small.lag_tier("ADT").error_after == timedelta(hours=12)
