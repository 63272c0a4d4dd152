"""The scheduler runs as its own process, persists its jobs and keeps a heartbeat."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from sqlalchemy.engine import Engine

import monitors.scheduler as scheduler_module
from monitors.registry import default_registry
from monitors.scheduler import build_scheduler, jobstore_engine, record_job_event, settle_heap
from store.models import SchedulerHeartbeat, table_of
from store.rollups import get_state
from tests.conftest import POSTGRES_URL
from vigil.config import get_settings

REPO = Path(__file__).resolve().parents[2]
HB = table_of(SchedulerHeartbeat)


def _beats(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(HB.c.process, HB.c.beat_at)).all()]


def test_scheduler_process_beats_persists_jobs_and_stops_cleanly(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_HEARTBEAT_SECONDS": "1",
        "VIGIL_INBOX_DIR": str(tmp_path / "inbox"),
        "VIGIL_PROCESSED_DIR": str(tmp_path / "processed"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil", "schedule"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 40
        seen: set = set()
        while time.monotonic() < deadline and len(seen) < 3:
            seen.update(b[1] for b in _beats(engine))
            time.sleep(0.5)
        assert len(seen) >= 3, "the heartbeat did not advance"
        with engine.connect() as conn:
            jobs = set(conn.execute(sa.text("SELECT id FROM apscheduler_jobs")).scalars())
        assert {"heartbeat", "collect", "monitor:observed_expected"} <= jobs
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "scheduler stopping" in output
    assert re.search(r"\(\d{4,} start-up objects frozen\)", output), output


def test_jobs_coalesce_and_never_overlap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_DATABASE_URL", f"sqlite:///{tmp_path}/s.db")
    get_settings.cache_clear()
    try:
        # Before start() the scheduler lists its pending jobs without running anything.
        jobs = {job.id: job for job in build_scheduler(simulate=True).get_jobs()}
    finally:
        get_settings.cache_clear()
    monitors = {f"monitor:{m.name}": m for m in default_registry()}
    assert set(jobs) == {
        "heartbeat",
        "simulate",
        "collect",
        "page",
        "governance-report",
        "governance-summary",
        "partitions",
        *monitors,
    }
    assert {"monitor:latency_slo", "monitor:feed_freshness", "monitor:site_comparison"} <= set(jobs)
    for job in jobs.values():
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time and job.misfire_grace_time > 0
    for job_id, monitor in monitors.items():
        # Each monitor on its own interval, and a late run is still run within one interval.
        assert jobs[job_id].trigger.interval.total_seconds() == monitor.interval_seconds
        assert jobs[job_id].misfire_grace_time == monitor.interval_seconds


def test_the_job_store_engine_pings_before_use(tmp_path: Path) -> None:
    for url in [f"sqlite:///{tmp_path}/jobs.db", POSTGRES_URL]:
        if not url:
            continue
        engine = jobstore_engine(url)
        assert engine.pool._pre_ping is True  # no public accessor for the pool's setting
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        engine.dispose()


def test_job_outcomes_are_logged_and_counted_in_jobstate(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime(2026, 9, 1, 12, tzinfo=UTC)
    record_job_event(engine, "monitor:latency_slo", outcome="ok", scheduled_for=now, now=now)
    record_job_event(engine, "monitor:latency_slo", outcome="missed", scheduled_for=now, now=now)
    state = record_job_event(
        engine,
        "monitor:latency_slo",
        outcome="error",
        scheduled_for=now,
        error="OperationalError: server closed the connection",
        now=now,
    )
    assert (state["runs"], state["misses"], state["errors"]) == (1, 1, 1)
    assert state["last_outcome"] == "error"
    assert "server closed" in str(state["last_problem"])
    with engine.connect() as conn:
        stored = json.loads(get_state(conn, "scheduler.job.monitor:latency_slo"))
    assert stored == state
    # The listener logs a failure by job id (and records it through the same function).
    event = JobExecutionEvent(
        EVENT_JOB_ERROR, "collect", "default", now, exception=RuntimeError("inbox unreadable")
    )
    with caplog.at_level(logging.ERROR, logger="monitors.scheduler"):
        scheduler_module._engine = engine
        try:
            scheduler_module._on_job_event(event)
        finally:
            scheduler_module._engine = None
    assert "job collect failed: RuntimeError: inbox unreadable" in caplog.text
    with engine.connect() as conn:
        assert json.loads(get_state(conn, "scheduler.job.collect"))["errors"] == 1


def test_settle_heap_freezes_start_up_objects_and_still_collects_later_cycles() -> None:
    class Node:
        loop: object

    early = Node()
    early.loop = early
    early_ref = weakref.ref(early)
    try:
        frozen = settle_heap()
        assert frozen == gc.get_freeze_count() > 1000  # the imported modules' objects
        late = Node()
        late.loop = late
        late_ref = weakref.ref(late)
        del early, late
        gc.collect()
        assert late_ref() is None, "a cycle made after the freeze must still be collected"
        assert early_ref() is not None, "a frozen object is out of the collector's reach"
    finally:
        gc.unfreeze()
    gc.collect()
    assert early_ref() is None
