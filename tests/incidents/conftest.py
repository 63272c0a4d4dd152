"""Fixtures for incident response: the fake Slack server, a real API server, alert factories."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from collectors.pseudonym import encounter_key
from incidents.auth import Actor, Role
from store.models import Alert, MetricPoint, Model, ModelVersion, Prediction, Site, table_of
from tests.fakes.slack import TOKEN, FakeSlack
from vigil.config import Settings

NOW = datetime(2026, 9, 1, 3, 0, tzinfo=UTC)
RESPONDER = Actor("Riley Responder", Role.INCIDENT_RESPONDER)
ONCALL = Actor("Olu Oncall", Role.ONCALL)


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.start()
    yield fake
    fake.stop()


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": TOKEN,
        "slack_page_channel": "CPAGE",
        "slack_ticket_channel": "CTICKET",
        "slack_timeout_seconds": 1,
        "slack_inline_retry_max_seconds": 1,
        "dashboard_url": "https://vigil.example.org",
        "page_max_attempts": 12,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(fake_slack: FakeSlack) -> Settings:
    return make_settings(slack_base_url=fake_slack.base_url)


def ids(engine: Engine, model: str = "deterioration", site: str = "UMC") -> tuple[int, int]:
    with Session(engine) as session:
        model_id = session.exec(select(Model.id).where(Model.name == model)).one()
        site_id = session.exec(select(Site.id).where(Site.code == site)).one()
    assert model_id is not None and site_id is not None
    return model_id, site_id


def breach_point(
    engine: Engine,
    *,
    model: str = "deterioration",
    site: str = "UMC",
    monitor: str = "observed_expected",
    at: datetime = NOW,
) -> tuple[int, int]:
    """The metric point a breaching O:E monitor writes; returns (model id, site id)."""
    model_id, site_id = ids(engine, model, site)
    with Session(engine) as session:
        session.add(
            MetricPoint(
                monitor=monitor,
                metric="oe_ratio",
                model_id=model_id,
                site_id=site_id,
                window_start=at - timedelta(days=30),
                window_end=at - timedelta(days=2),
                value=1.62,
                ci_low=1.31,
                ci_high=1.98,
                n=4210,
                status="breach",
                threshold="breach if CI outside 0.80–1.25",
            )
        )
        session.commit()
    return model_id, site_id


def breach(
    engine: Engine,
    *,
    model: str = "deterioration",
    site: str = "UMC",
    severity: str = "page",
    monitor: str = "observed_expected",
    runbook: str = "calibration-drift",
    at: datetime = NOW,
    dedup_key: str | None = None,
) -> int:
    """What a monitor breach leaves behind: a breach metric point and an open alert row."""
    model_id, site_id = breach_point(engine, model=model, site=site, monitor=monitor, at=at)
    with Session(engine) as session:
        alert = Alert(
            dedup_key=dedup_key or f"{monitor}/{model}/{site}/all",
            monitor=monitor,
            model_id=model_id,
            site_id=site_id,
            severity=severity,
            summary=f"O:E 1.62 at {site}: more outcomes than predicted",
            runbook=runbook,
            opened_at=at,
        )
        session.add(alert)
        session.commit()
        assert alert.id is not None
        return alert.id


def add_prediction(
    engine: Engine,
    *,
    encounter_id: str,
    secret: str,
    score: float,
    scored_at: datetime,
    site: str = "UMC",
    model: str = "deterioration",
    version: str = "2.0.0",
    threshold: float = 0.02,
) -> None:
    """A stored prediction as the collectors leave it: the encounter only as its HMAC key."""
    model_id, site_id = ids(engine, model, site)
    with Session(engine) as session:
        version_id = session.exec(
            select(ModelVersion.id).where(
                ModelVersion.model_id == model_id, ModelVersion.version == version
            )
        ).one()
        assert version_id is not None
        n = len(session.exec(select(Prediction.id)).all()) + 1
        session.add(
            Prediction(
                prediction_id=f"test-{n}",
                model_id=model_id,
                version_id=version_id,
                site_id=site_id,
                encounter_key=encounter_key(encounter_id, secret),
                trigger_at=scored_at - timedelta(minutes=1),
                scored_at=scored_at,
                delivered_at=scored_at + timedelta(seconds=3),
                scored_hour=int(scored_at.timestamp() // 3600),
                horizon_end=scored_at + timedelta(hours=12),
                score=score,
                threshold=threshold,
                alert=score >= threshold,
                content_hash=f"{n:032d}",
            )
        )
        session.commit()


def recover(engine: Engine, alert_id: int, at: datetime) -> None:
    """What the monitor does when it recovers: the alert resolves automatically."""
    alerts = table_of(Alert)
    with engine.begin() as conn:
        conn.execute(
            sa.update(alerts)
            .where(alerts.c.id == alert_id)
            .values(status="resolved", resolved_at=at)
        )


SNAPSHOT_TABLES = (
    "alert",
    "killswitch",
    "auditevent",
    "audithead",
    "pageoutbox",
    "incident",
    "deployment",
)


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables an action may change, to prove a refusal changed nothing."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name in SNAPSHOT_TABLES:
            table = SQLModel.metadata.tables[name]
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            out[name] = [tuple(row) for row in rows]
    return out


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run the app under a real uvicorn server on 127.0.0.1, port 0; yield its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
