"""End to end: a breach opens an alert (incidents.alerts) and pages Slack, a responder
disables the score in the app, and the consumer API, the Python client and the CDS Hooks
service report suppression within the cache TTL; the monitor's recovery resolves the alert
in its thread; the audit chain verifies; no patient identifier leaves Vigil.

Real parts throughout: the real slack_sdk WebClient against the local fake Slack Web API
server, the FastAPI app served by uvicorn over HTTP, the Streamlit page through AppTest,
and the database on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlparse

import httpx
import pytest
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine
from sqlmodel import Session
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from collectors.pseudonym import encounter_key
from incidents.alerts import sync_alerts
from incidents.api import create_app
from incidents.client import Policy, StatusClient
from incidents.paging import paging_job
from monitors.base import MonitorResult, Status
from monitors.registry import MonitorRegistry
from monitors.runner import run_observed_expected
from store.models import MetricPoint, PageOutbox, table_of, utcnow
from tests.app.operational import sign_in
from tests.app.test_incidents import ENTRYPOINT, PAGE
from tests.fakes.slack import TOKEN as SLACK_TOKEN
from tests.fakes.slack import FakeSlack
from tests.incidents.conftest import add_prediction, breach_point, serve
from vigil.cli import app as cli
from vigil.config import get_settings

API_TOKEN = "scoring-service-token-e2e-0123456789"
PSEUDONYM = "e2e-pseudonym-key-not-the-demo-one"
ENCOUNTER = "UMC-E0007731"
TTL = 15.0


@pytest.fixture
def vigil_env(
    db_url: str, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """One deployment's settings, from the environment, as every process reads them."""
    environment = {
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_DEMO_MODE": "true",  # the console's "acting as" selector (no sign-in yet)
        "VIGIL_PSEUDONYM_KEY": PSEUDONYM,
        "VIGIL_API_TOKENS": json.dumps({"scoring": hashlib.sha256(API_TOKEN.encode()).hexdigest()}),
        "VIGIL_SLACK_BOT_TOKEN": SLACK_TOKEN,
        "VIGIL_SLACK_BASE_URL": fake_slack.base_url,
        "VIGIL_SLACK_PAGE_CHANNEL": "CPAGE",
        "VIGIL_SLACK_TICKET_CHANNEL": "CTICKET",
        "VIGIL_SLACK_TIMEOUT_SECONDS": "2",
        "VIGIL_DASHBOARD_URL": "https://vigil.example.org",
        "VIGIL_API_CACHE_SECONDS": str(int(TTL)),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_breach_page_disable_in_app_and_consumers_suppress_within_the_ttl(
    vigil_env: None, engine: Engine, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    now = utcnow()
    add_prediction(
        engine,
        encounter_id=ENCOUNTER,
        secret=PSEUDONYM,
        score=0.081,
        scored_at=now - timedelta(hours=1),
    )
    responses: list[str] = []  # every API answer, scanned for identifiers at the end

    # 1. A calibration breach: the monitor's metric point, then the alert lifecycle opens
    #    an alert from it (only the O:E monitor registered, as in the walking skeleton).
    model_id, site_id = breach_point(engine, at=now)
    registry = MonitorRegistry()
    registry.register(
        "observed_expected",
        run_observed_expected,
        interval_seconds=300,
        runbook="calibration-drift",
    )
    result = MonitorResult(
        monitor="observed_expected",
        metric="oe_ratio",
        model_id=model_id,
        site_id=site_id,
        window_start=now - timedelta(days=30),
        window_end=now - timedelta(days=2),
        status=Status.BREACH,
        value=1.62,
    )
    [opened] = sync_alerts(engine, [result], now=now, registry=registry).opened
    assert (opened.severity, opened.runbook) == ("page", "calibration-drift")

    # 2. The scheduler's paging job pages Slack: one Block Kit message, with links.
    paging_job()
    [page] = fake_slack.messages("CPAGE")
    assert page.thread_ts is None
    assert page.blocks is not None
    fields = [f["text"] for f in page.blocks[2]["fields"]]
    assert fields[0] == "*Severity*\npage"
    assert fields[4] == "*Metric*\noe_ratio = 1.62 (95% CI 1.31–1.98)"
    assert fields[5] == "*Threshold*\nbreach if CI outside 0.80–1.25"
    runbook_link, dashboard_link = (e["url"] for e in page.blocks[3]["elements"])
    assert runbook_link == "https://vigil.example.org/incidents?runbook=calibration-drift"
    assert page.text.startswith("[PAGE] Calibration drift")

    api = create_app(engine=engine, settings=get_settings())
    with (
        serve(api) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_TOKEN}"}) as http,
    ):
        clock = Clock()
        client = StatusClient(
            url, API_TOKEN, policies={"deterioration": Policy.FAIL_CLOSED}, clock=clock
        )
        hook = {
            "hook": "patient-view",
            "hookInstance": "0f0c7c4e-9a43-4a3c-9d61-8f0f5c1f7a10",
            "context": {
                "userId": "Practitioner/77",
                "patientId": "P-31337",
                "encounterId": ENCOUNTER,
            },
        }
        before = client.status("deterioration", "UMC")
        assert (before.show, before.state) == (True, "enabled")
        card = http.post("/cds-services/vigil-deterioration", json=hook)
        responses.append(card.text)
        assert card.json()["cards"][0]["summary"].startswith(
            "Inpatient clinical deterioration: 8.1% risk"
        )

        # 3. The responder follows the page's dashboard link and disables the score at UMC.
        at = sign_in(AppTest.from_file(ENTRYPOINT, default_timeout=30), "incident_responder")
        at.query_params.update(dict(parse_qsl(urlparse(dashboard_link).query)))
        at.switch_page(PAGE).run()
        assert not at.exception
        assert at.selectbox(key="disable_site").value == "UMC"  # from the deep link
        at.text_area(key="disable_reason").input("O:E 1.62 at UMC; under-predicting risk")
        at.text_input(key="disable_incident_title").input("Deterioration miscalibrated at UMC")
        at.checkbox(key="disable_confirm").check()
        at = at.button(key="disable_submit").click().run()
        assert not at.exception
        assert [s.value for s in at.success] == ["deterioration at UMC: score disabled"]

        # 4. Consumers: the API at once; the client within its TTL; CDS Hooks: no card.
        status = http.get("/v1/models/deterioration/sites/UMC/status")
        responses.append(status.text)
        assert status.json()["status"] == "suppressed"
        assert status.json()["reason"] == "O:E 1.62 at UMC; under-predicting risk"
        clock.now += TTL - 0.5
        assert client.status("deterioration", "UMC").source == "cache"  # the bound, not later
        clock.now += 0.5
        after = client.status("deterioration", "UMC")
        assert (after.show, after.state, after.source) == (False, "suppressed", "api")
        assert after.reason == "O:E 1.62 at UMC; under-predicting risk"
        empty = http.post("/cds-services/vigil-deterioration", json=hook)
        responses.append(empty.text)
        assert empty.json() == {"cards": []}
        assert client.status("deterioration", "RVH").show  # other sites unaffected
        client.close()

    # 5. Slack heard about the disablement once; another job run sends nothing twice.
    paging_job()
    texts = [m.text for m in fake_slack.messages("CPAGE")]
    assert len(texts) == 2 and texts[1].startswith(
        ":no_entry: Score disabled · deterioration at UMC"
    )
    with engine.connect() as conn:
        statuses = set(conn.execute(sa.select(table_of(PageOutbox).c.status)).scalars())
        payloads = json.dumps(
            list(conn.execute(sa.select(table_of(PageOutbox).c.payload)).scalars())
        )
    assert statuses == {"sent"}

    # The monitor recovers: the alert resolves itself and its thread says so, once.
    with Session(engine) as session:
        session.add(
            MetricPoint(
                monitor="observed_expected",
                metric="oe_ratio",
                model_id=model_id,
                site_id=site_id,
                window_start=now - timedelta(days=29),
                window_end=now - timedelta(days=1),
                value=1.02,
                ci_low=0.9,
                ci_high=1.15,
                n=4300,
                status="ok",
                threshold="breach if CI outside 0.80–1.25",
            )
        )
        session.commit()
    [resolved] = sync_alerts(engine, [result], now=utcnow(), registry=registry).resolved
    assert resolved.alert_id == opened.alert_id
    paging_job()
    paging_job()
    root, _notice, reply = fake_slack.messages("CPAGE")
    assert reply.thread_ts == root.ts == page.ts
    assert reply.text.startswith(":white_check_mark: Resolved automatically: the monitor recovered")
    assert root.blocks is not None
    assert root.blocks[0]["text"]["text"].startswith(":white_check_mark: RESOLVED PAGE")
    with engine.connect() as conn:
        payloads = json.dumps(
            list(conn.execute(sa.select(table_of(PageOutbox).c.payload)).scalars())
        )

    # 6. The audit chain verifies.
    verified = CliRunner().invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert "audit chain intact: 2 events" in verified.output  # open_incident, disable_score

    # 7. No patient identifier or encounter key anywhere it could leak.
    key = encounter_key(ENCOUNTER, PSEUDONYM)
    leak_surfaces = {
        "slack": fake_slack.raw_requests_text(),
        "outbox": payloads,
        "api": "\n".join(responses),
        "logs": caplog.text,
    }
    for surface, text in leak_surfaces.items():
        for identifier in (ENCOUNTER, key, "P-31337", "Practitioner/77"):
            assert identifier not in text, (surface, identifier)
        assert not re.search(r"\b[0-9a-f]{64}\b", text), surface  # nothing shaped like a key
    assert opened.alert_id == 1
