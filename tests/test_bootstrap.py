"""`vigil bootstrap` end to end: migrate, registry, demo through the collectors, monitors."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from collectors.runner import collect_inbox
from seed_data.simulator import release
from store.db import make_engine
from store.models import IngestCheckpoint, MetricPoint, Prediction, Quarantine, table_of, utcnow
from vigil.config import DEMO_PSEUDONYM_KEY

REPO = Path(__file__).resolve().parent.parent


def _count(engine: sa.engine.Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table_of(model))).scalar_one()
        )


def test_bootstrap_loads_a_small_demo_once_and_the_simulator_continues_it(
    db_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_INBOX_DIR": str(tmp_path / "inbox"),
        "VIGIL_PROCESSED_DIR": str(tmp_path / "processed"),
        "VIGIL_SPOOL_DIR": str(tmp_path / "spool"),
        "VIGIL_DEMO_DAYS": "20",
        "VIGIL_DEMO_FUTURE_DAYS": "2",
        "VIGIL_DEMO_BED_SCALE": "0.2",
    }
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "vigil", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    first = run("bootstrap")
    assert "demo loaded" in first.stdout
    engine = make_engine(db_url)
    predictions = _count(engine, Prediction)
    assert predictions > 1000
    assert _count(engine, Quarantine) == 0  # the demo honours its own contracts
    assert _count(engine, MetricPoint) > 0
    assert _count(engine, IngestCheckpoint) > 0
    assert not any((tmp_path / "inbox").glob("*.jsonl"))  # everything collected and moved
    assert any((tmp_path / "spool").glob("*.jsonl"))  # the future stays in the spool
    second = run("bootstrap")
    assert "store ready" in second.stdout
    assert _count(engine, Prediction) == predictions
    # A day later the simulator has released the next day of the same world.
    tomorrow = utcnow() + timedelta(days=1)
    moved = release(tmp_path / "spool", tmp_path / "inbox", until=tomorrow)
    assert moved > 0
    collect_inbox(
        engine,
        tmp_path / "inbox",
        tmp_path / "processed",
        secret=DEMO_PSEUDONYM_KEY,
        now=lambda: tomorrow,
    )
    assert _count(engine, Prediction) > predictions
    assert _count(engine, Quarantine) == 0
    engine.dispose()
