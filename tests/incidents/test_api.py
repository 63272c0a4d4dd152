"""The consumer API and CDS Hooks service, served by uvicorn and called over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.engine import Engine

from incidents import actions
from incidents.api import create_app
from tests.incidents.conftest import RESPONDER, add_prediction, make_settings, serve
from vigil.config import DEMO_API_TOKEN, DEMO_API_TOKEN_SHA256, Settings

TOKEN = "scoring-service-token-0123456789"
PSEUDONYM = "api-test-pseudonym-key"


@pytest.fixture
def api_settings() -> Settings:
    return make_settings(
        api_tokens={"scoring": hashlib.sha256(TOKEN.encode()).hexdigest()},
        pseudonym_key=PSEUDONYM,
    )


@pytest.fixture
def api(engine: Engine, api_settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve(create_app(engine=engine, settings=api_settings)) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        yield client


def scored(engine: Engine, *, encounter: str, site: str, score: float) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for encounter_id, value, hours_ago in (
        (encounter, 0.01, 3),
        (encounter, score, 1),
        ("OTHER-1", 0.5, 0),
    ):
        add_prediction(
            engine,
            encounter_id=encounter_id,
            secret=PSEUDONYM,
            score=value,
            scored_at=now - timedelta(hours=hours_ago),
            site=site,
        )


def test_demo_token_hash_is_the_demo_token() -> None:
    assert hashlib.sha256(DEMO_API_TOKEN.encode()).hexdigest() == DEMO_API_TOKEN_SHA256


def test_settings_refuse_the_demo_token_and_raw_tokens_outside_demo_mode() -> None:
    with pytest.raises(ValueError, match="demo token"):
        make_settings(demo_mode=False, pseudonym_key="k", api_tokens={"x": DEMO_API_TOKEN_SHA256})
    with pytest.raises(ValueError, match="SHA-256"):
        make_settings(api_tokens={"x": "my-plain-token"})
    assert make_settings(demo_mode=False, pseudonym_key="k").api_token_hashes == {}
    assert make_settings().api_token_hashes == {"demo": DEMO_API_TOKEN_SHA256}


def test_health_needs_no_token_everything_else_does(api: httpx.Client) -> None:
    assert httpx.get(f"{api.base_url}/healthz").json() == {"status": "ok", "database": "ok"}
    for path in ("/v1/models/deterioration/sites/UMC/status", "/cds-services"):
        anonymous = httpx.get(f"{api.base_url}{path}")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(f"{api.base_url}{path}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    demo = httpx.get(
        f"{api.base_url}/cds-services", headers={"Authorization": f"Bearer {DEMO_API_TOKEN}"}
    )
    assert demo.status_code == 401  # configured tokens replace the demo token


def test_status_with_etag_cache_control_and_suppression(engine: Engine, api: httpx.Client) -> None:
    first = api.get("/v1/models/deterioration/sites/UMC/status")
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "enabled" and body["version"] == "2.0.0" and body["reason"] is None
    assert first.headers["cache-control"] == "private, max-age=15"
    etag = first.headers["etag"]
    unchanged = api.get(
        "/v1/models/deterioration/sites/UMC/status", headers={"If-None-Match": etag}
    )
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag

    actions.disable_score(
        engine, RESPONDER, model="deterioration", site="UMC", reason="O:E 1.6",
        incident_title="Drift at UMC", settings=make_settings(),
    )  # fmt: skip
    changed = api.get("/v1/models/deterioration/sites/UMC/status", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    body = changed.json()
    assert (body["status"], body["enabled"], body["reason"], body["incident"], body["scope"]) == (
        "suppressed",
        False,
        "O:E 1.6",
        1,
        "site UMC",
    )
    assert datetime.fromisoformat(body["since"]) <= datetime.now(UTC)
    canary = api.get("/v1/models/deterioration/sites/UMC/status", params={"version": "2.1.0"})
    assert canary.json()["version"] == "2.1.0" and canary.json()["status"] == "suppressed"
    assert api.get("/v1/models/deterioration/sites/RVH/status").json()["status"] == "enabled"
    missing = api.get("/v1/models/deterioration/sites/NOPE/status")
    assert missing.status_code == 404 and "unknown site" in missing.json()["detail"]
    assert (
        api.get(
            "/v1/models/deterioration/sites/RVH/status", params={"version": "2.1.0"}
        ).status_code
        == 404
    )


def test_cds_hooks_card_when_enabled_and_no_cards_when_suppressed(
    engine: Engine, api: httpx.Client
) -> None:
    encounter = "RVH-E0042137"
    scored(engine, encounter=encounter, site="RVH", score=0.063)
    services = api.get("/cds-services").json()["services"]
    assert [s["id"] for s in services] == ["vigil-deterioration", "vigil-readmission"]
    assert all(s["hook"] == "patient-view" for s in services)

    hook = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/123", "patientId": "PAT-99", "encounterId": encounter},
    }
    answer = api.post("/cds-services/vigil-deterioration", json=hook)
    assert answer.status_code == 200
    [card] = answer.json()["cards"]
    assert card["summary"] == "Inpatient clinical deterioration: 6.3% risk — above threshold"
    assert card["indicator"] == "warning"
    assert card["source"] == {"label": "Vigil · deterioration 2.0.0"}
    text = answer.text
    for identifier in (encounter, "PAT-99", "Practitioner/123", "OTHER-1"):
        assert identifier not in text
    assert hashlib.sha256(b"").hexdigest()[:8] not in text

    unknown = api.post(
        "/cds-services/vigil-deterioration", json={**hook, "context": {"encounterId": "X"}}
    )
    assert unknown.json() == {"cards": []}
    actions.disable_score(
        engine, RESPONDER, model="deterioration", site="RVH", reason="feed stale",
        incident_title="RVH feed", settings=make_settings(),
    )  # fmt: skip
    assert api.post("/cds-services/vigil-deterioration", json=hook).json() == {"cards": []}
    assert api.post("/cds-services/vigil-sepsis", json=hook).status_code == 404
    assert (
        api.post(
            "/cds-services/vigil-deterioration", json={**hook, "hook": "order-select"}
        ).status_code
        == 400
    )


def test_database_down_is_a_503_not_a_stale_answer(api_settings: Settings) -> None:
    from store.db import make_engine

    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/nowhere?connect_timeout=1")
    with (
        serve(create_app(engine=dead, settings=api_settings)) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client,
    ):
        assert client.get("/healthz").status_code == 503
        answer = client.get("/v1/models/deterioration/sites/UMC/status")
        assert answer.status_code == 503 and answer.headers["cache-control"] == "no-store"
