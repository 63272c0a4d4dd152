"""Over the whole 90-day seeded demo, at full volume, the SLO, feed-freshness and alert-burden
monitors flag the planted incidents and nothing at a stable site.

The 20-day test beside this one checks when and how each incident is flagged and alerted;
this one checks the other half of the claim over all 90 days: no SLO, feed or alert-burden
breach anywhere else. Alert burden is judged at every hour of the 83 days with a full
baseline week, as the hourly scheduler would, at all ten model x site series (its spike
limits are corrected for exactly these looks; see monitors/alert_burden.py). SQLite only:
loading 90 days at full volume takes about 40 s and the hourly replay about 20 s, and the
monitors' SQL is covered on PostgreSQL by the other tests.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from collectors.runner import collect_files
from monitors.alert_burden import (
    AlertBurdenConfig,
    HourlySeries,
    _hourly_frame,
    burden_series,
    judge_burden,
    run_alert_burden,
)
from monitors.base import Status
from monitors.config import MonitorConfig
from monitors.durations import epoch_seconds
from monitors.freshness import FreshnessConfig, Heartbeat, assess_feed
from monitors.slo import load_slo_config, replay_slo
from seed_data.generator import SeedConfig, generate
from store.db import make_engine
from store.models import FeedStatus, Model, Prediction, Site, table_of
from store.registry import sync_registry
from store.rollups import refresh
from tests.conftest import REGISTRY

D = datetime(2026, 9, 1, tzinfo=UTC)
START = D - timedelta(days=90)
LATENCY_START = D - timedelta(days=10) + timedelta(hours=14)
OUTAGE_START = D - timedelta(days=15) + timedelta(hours=2)
OUTAGE_END = OUTAGE_START + timedelta(hours=6)
SPIKE_START = D - timedelta(days=20)
SPIKE_DELAY = timedelta(hours=3)  # as in test_operational_demo.py
P, FS = table_of(Prediction), table_of(FeedStatus)


def test_no_slo_feed_or_alert_burden_breach_at_a_stable_site_over_the_90_day_demo(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "vigil.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    sync_registry(engine, REGISTRY)
    folder = tmp_path / "demo"
    generate(SeedConfig(end=D, days=90), folder)
    files = sorted(
        p for p in folder.glob("*.jsonl") if p.name.startswith(("predictions", "heartbeats"))
    )
    assert not any(isinstance(o, Exception) for o in collect_files(engine, files, secret="d"))
    refresh(engine, now=D)
    with engine.connect() as conn:
        sites = dict(conn.execute(sa.select(table_of(Site).c.code, table_of(Site).c.id)).all())
        models = dict(conn.execute(sa.select(table_of(Model).c.name, table_of(Model).c.id)).all())
        raw = pd.read_sql(
            sa.select(P.c.model_id, P.c.site_id, P.c.scored_at, P.c.status, P.c.latency_seconds),
            conn,
        )
        beats = pd.read_sql(
            sa.select(FS.c.site_id, FS.c.feed, FS.c.received_at, FS.c.last_event_at), conn
        )
    config = MonitorConfig.from_file()

    # SLOs, every 5 minutes once the 3-day window is full: only UMC's latency incident
    # (its page, then ticket re-fires while the 3-day window still holds it).
    slo_config = load_slo_config()
    raw["bucket"] = pd.to_datetime(raw["scored_at"], utc=True).astype("int64") // 10**9 // 300 * 300
    instants = np.arange(epoch_seconds(START + timedelta(days=3)), epoch_seconds(D), 300)
    flagged: dict[tuple[str, str], np.ndarray] = {}
    for spec in slo_config.slos:
        for code, site_id in sites.items():
            rows = raw[(raw.model_id == models[spec.model]) & (raw.site_id == site_id)]
            if spec.sli == "latency":
                rows = rows[rows.status == "ok"]
                bad = ~(rows.latency_seconds <= spec.threshold_seconds)
            else:
                bad = rows.status.isin(["error", "timeout"])
            sums = pd.DataFrame({"b": rows.bucket, "bad": bad.astype(int)}).groupby("b")["bad"]
            sums = sums.agg(["sum", "size"])
            fired = replay_slo(
                sums.index.to_numpy(), sums["sum"], sums["size"], instants, spec, slo_config
            ).fired
            if (fired >= 0).any():
                flagged[(spec.name, code)] = instants[fired >= 0]
    assert set(flagged) == {("deterioration-latency", "UMC")}
    times = flagged[("deterioration-latency", "UMC")]
    assert epoch_seconds(LATENCY_START) < times.min()
    assert times.max() <= epoch_seconds(LATENCY_START + timedelta(days=3, hours=4))

    # Feeds, at every heartbeat: only RVH's LAB feed, only during its outage.
    for column in ("received_at", "last_event_at"):
        beats[column] = pd.to_datetime(beats[column], utc=True)
    breaches: set[tuple[str, str]] = set()
    for code, site_id in sites.items():
        cfg = config.for_monitor(
            "feed_freshness", FreshnessConfig, model="deterioration", site=code
        )
        for feed in cfg.feeds:
            mine = beats[(beats.site_id == site_id) & (beats.feed == feed)]
            lag = mine.received_at - mine.last_event_at
            for row in mine[~(lag < cfg.lag_tier(feed).warn_after)].itertuples():
                beat = Heartbeat(row.received_at.to_pydatetime(), row.last_event_at)
                verdict = assess_feed(
                    beat,
                    now=beat.received_at,
                    lag_tier=cfg.lag_tier(feed),
                    staleness_tier=cfg.staleness_tier(),
                )
                if verdict.status == Status.BREACH:
                    breaches.add((code, feed))
                    assert OUTAGE_START <= beat.received_at < OUTAGE_END
    assert breaches == {("RVH", "LAB")}

    # Alert burden, every hour once a week of baseline exists: only RVH deterioration's
    # alert-volume spike, first flagged within the stated delay, over by two days later.
    run_alert_burden(engine, config, START + timedelta(days=7))  # fills the hourly table
    first_hour = epoch_seconds(START) // 3600
    end_hours = range(epoch_seconds(START + timedelta(days=7)) // 3600, epoch_seconds(D) // 3600)
    spikes: dict[tuple[str, str], list[int]] = {}
    with engine.connect() as conn:
        for model, model_id in models.items():
            hourly = _hourly_frame(conn, model_id, first_hour, end_hours[-1])
            interval = 240 if model == "deterioration" else 0
            for code, site_id in sites.items():
                cfg = config.for_monitor("alert_burden", AlertBurdenConfig, model=model, site=code)
                series = HourlySeries.from_frame(
                    hourly[hourly.site_id == site_id], first_hour, end_hours[-1]
                )
                for end in end_hours:
                    s = burden_series(
                        series, end_hour=end, scoring_interval_minutes=interval, config=cfg
                    )
                    burden = judge_burden(
                        spike_observed=s["spike_observed"],
                        spike_expected=s["spike_expected"],
                        drop_observed=s["drop_observed"],
                        drop_expected=s["drop_expected"],
                        spike_dispersion=s["spike_dispersion"],
                        drop_dispersion=s["drop_dispersion"],
                        volume_observed=s["spike_alerting"],
                        volume_expected=s["volume_expected"],
                        volume_dispersion=s["volume_dispersion"],
                        config=cfg,
                    )
                    if burden.status == Status.BREACH:
                        spikes.setdefault((model, code), []).append(end)
                        assert burden.kind == "spike"
    assert set(spikes) == {("deterioration", "RVH")}
    hours = spikes[("deterioration", "RVH")]
    first_spike = datetime.fromtimestamp(hours[0] * 3600, UTC)
    assert SPIKE_START < first_spike <= SPIKE_START + SPIKE_DELAY
    assert datetime.fromtimestamp(hours[-1] * 3600, UTC) <= SPIKE_START + timedelta(hours=52)

    engine.dispose()
