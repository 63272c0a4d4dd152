"""Acceptance on the seeded demo: the planted calibration drift, and nothing else.

The demo world (seed_data/README.md) plants a calibration drift at LKS (deterioration) from
end - 30 d: lactate goes unmapped and the score under-predicts (O:E about 2.6). The test loads
60 days of that world at full volume through the collectors (predictions, outcomes and
encounter closures; heartbeats are not needed here), refreshes the rollups and runs every
calibration monitor once, as the scheduler's first cycle would. 60 days keep the first 28
(each site's CUSUM reference window) clear of the drift. SQLite only: loading is the slow part
and the store behaviour is covered on both databases by test_clinical_runners.py.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from collectors.runner import collect_files
from monitors.base import Status
from monitors.config import MonitorConfig
from monitors.drift_runner import run_drift
from monitors.runner import run_observed_expected
from monitors.sequential_runner import run_calibration_drift
from monitors.windowed import run_calibration
from seed_data.generator import SeedConfig, generate
from store.db import make_engine, upgrade
from store.models import Site, table_of
from store.registry import sync_registry
from store.rollups import refresh

os.environ.setdefault("DO_NOT_TRACK", "1")
REPO = Path(__file__).resolve().parents[2]
END = datetime(2026, 9, 1, tzinfo=UTC)
DRIFT_START = END - timedelta(days=30)
OUTAGE = END - timedelta(days=15) + timedelta(hours=2)  # RVH's LAB feed, 6 h
CALIBRATION = ("observed_expected", "calibration", "calibration_drift")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("demo")
    generate(SeedConfig(end=END, days=60, registry_path=REPO / "config" / "registry.yaml"), folder)
    url = f"sqlite:///{folder}/demo.db"
    upgrade(url)
    engine = make_engine(url)
    sync_registry(engine, REPO / "config" / "registry.yaml")
    files = sorted(p for p in folder.glob("*.jsonl") if not p.name.startswith("heartbeats-"))
    list(collect_files(engine, files, secret="demo", now=lambda: END))
    refresh(engine, now=END)
    config = MonitorConfig.from_file(REPO / "config" / "monitors.yaml")
    results = (
        run_observed_expected(engine, config, END)
        + run_calibration(engine, config, END)
        + run_calibration_drift(engine, config, END)
        + run_drift(engine, config, END)
    )
    with engine.connect() as conn:
        S = table_of(Site)
        sites = {int(i): str(c) for i, c in conn.execute(sa.select(S.c.id, S.c.code))}
    engine.dispose()
    return {"results": results, "sites": sites}


def test_the_drift_is_flagged_at_lks_with_a_change_point_near_its_start(demo: dict) -> None:
    results, sites = demo["results"], demo["sites"]
    signals = [
        r
        for r in results
        if r.monitor == "calibration_drift"
        and r.metric == "cusum_upper"
        and r.status == Status.BREACH
        and r.model_id == 1
    ]
    assert signals, "the CUSUM never signalled"
    assert {sites[r.site_id] for r in signals} == {"LKS"}
    first = min(signals, key=lambda r: r.window_start)
    change = datetime.fromisoformat(first.detail["change_point"])
    # The change point within two days of the injected start; the signal after it.
    assert abs(change - DRIFT_START) <= timedelta(days=2)
    assert DRIFT_START <= first.window_start <= END - timedelta(days=5)
    adwin = [
        r
        for r in results
        if r.metric == "adwin" and r.status == Status.WARN and sites[r.site_id] == "LKS"
    ]
    assert adwin and abs(
        datetime.fromisoformat(adwin[0].detail["change_began"]) - DRIFT_START
    ) <= timedelta(days=4)
    # Lactate stopped arriving at LKS: the drift monitor sees it there, from the start. The
    # only other lactate flags are the windows holding RVH's six-hour lab feed outage.
    lactate = [
        r for r in results if r.metric == "psi:lactate" and r.status in (Status.WARN, Status.BREACH)
    ]
    lks = [r for r in lactate if sites[r.site_id] == "LKS"]
    assert lks and min(r.window_end for r in lks) <= DRIFT_START + timedelta(days=2)
    assert all(r.status == Status.BREACH for r in lks if r.window_start >= DRIFT_START)
    others = [r for r in lactate if sites[r.site_id] != "LKS"]
    assert all(
        sites[r.site_id] == "RVH" and r.window_start <= OUTAGE < r.window_end for r in others
    )


def test_no_other_site_breaches_calibration(demo: dict) -> None:
    results, sites = demo["results"], demo["sites"]
    breaches = {
        (r.monitor, r.metric, r.model_id, sites[r.site_id])
        for r in results
        if r.monitor in CALIBRATION and r.status == Status.BREACH
    }
    assert breaches, "nothing breached at all"
    assert {site for *_, site in breaches} == {"LKS"}
    assert {model for _, _, model, _ in breaches} == {1}
