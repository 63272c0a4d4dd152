"""The scheduler runs as its own process, persists its jobs and keeps a heartbeat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from monitors.scheduler import build_scheduler
from store.models import SchedulerHeartbeat, table_of
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


def test_jobs_coalesce_and_never_overlap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIGIL_DATABASE_URL", f"sqlite:///{tmp_path}/s.db")
    get_settings.cache_clear()
    try:
        # Before start() the scheduler lists its pending jobs without running anything.
        jobs = {job.id: job for job in build_scheduler(simulate=True).get_jobs()}
    finally:
        get_settings.cache_clear()
    assert set(jobs) == {"heartbeat", "simulate", "collect", "monitor:observed_expected"}
    for job in jobs.values():
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time and job.misfire_grace_time > 0
