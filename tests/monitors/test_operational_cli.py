"""`vigil ops`: every command has help; feeds, SLOs, jobs and alert sync work on a store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from collectors.runner import collect_files
from monitors.config import MonitorConfig
from monitors.freshness import run_feed_freshness
from monitors.scheduler import record_job_event
from store.rollups import refresh
from tests.factories import heartbeat, iso, prediction, write_jsonl
from vigil.cli import app
from vigil.config import get_settings

runner = CliRunner()
T = datetime(2026, 8, 17, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "command", ["slo", "feeds", "burden", "sites", "jobs", "sync-alerts", "cycle"]
)
def test_every_ops_command_has_help(command: str) -> None:
    result = runner.invoke(app, ["ops", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_ops_commands_on_a_store(cli_env: None, engine: Engine, tmp_path: Path) -> None:
    beats = [
        heartbeat(
            T - timedelta(minutes=15 * k),
            site=site,
            feed=feed,
            last_event_at=iso(
                T - timedelta(hours=4) if (site, feed) == ("RVH", "LAB")
                else T - timedelta(minutes=15 * k, seconds=30)
            ),
        )
        for k in range(8)
        for site in ("UMC", "RVH", "LKS", "MTN", "PRR")
        for feed in ("ADT", "LAB", "VITALS")
    ]  # fmt: skip
    scores = [prediction(n, scored=T - timedelta(minutes=n)) for n in range(1, 60)]
    list(
        collect_files(
            engine,
            [
                write_jsonl(tmp_path / "heartbeats-a.jsonl", beats),
                write_jsonl(tmp_path / "predictions-a.jsonl", scores),
            ],
            secret="s",
        )
    )
    refresh(engine, now=T)
    feeds = runner.invoke(app, ["ops", "feeds", "--at", iso(T), "--site", "RVH"])
    assert feeds.exit_code == 1, feeds.output  # a feed at the error tier fails the command
    assert any(line.split()[:3] == ["RVH", "LAB", "breach"] for line in feeds.output.splitlines())
    assert "UMC" not in feeds.output
    slo = runner.invoke(app, ["ops", "slo", "--at", iso(T), "--model", "deterioration"])
    assert slo.exit_code == 0, slo.output
    assert "deterioration-latency" in slo.output and "readmission" not in slo.output
    run_feed_freshness(engine, MonitorConfig.from_file(), T)
    synced = runner.invoke(app, ["ops", "sync-alerts"])
    assert synced.exit_code == 0, synced.output
    assert "opened: feed_freshness/deterioration/RVH/all [page]" in synced.output
    record_job_event(engine, "collect", outcome="error", scheduled_for=T, error="boom")
    jobs = runner.invoke(app, ["ops", "jobs"])
    assert jobs.exit_code == 1 and "collect" in jobs.output and "boom" in jobs.output
    burden = runner.invoke(app, ["ops", "burden", "--site", "XXX"])
    assert burden.exit_code == 2 and "unknown site" in burden.output
