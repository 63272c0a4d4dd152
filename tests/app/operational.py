"""Shared fixture and seeding for the operational pages' AppTests (not a test module)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app.session import ACTOR_KEY
from incidents.auth import Actor, Role
from tests.factories import iso, prediction
from vigil.config import get_settings

ENTRYPOINT = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
DEMO_NAMES = {
    Role.VIEWER: "Vera Viewer",
    Role.CLINICAL_LEAD: "Cleo Clinical Lead",
    Role.ONCALL: "Omar On-call",
    Role.INCIDENT_RESPONDER: "Riley Responder",
    Role.ADMIN: "Ada Admin",
}


def sign_in(at: AppTest, role: Role | str = Role.INCIDENT_RESPONDER) -> AppTest:
    """Act as a signed-in demo user of `role` from the next run on (the sign-in form itself is
    tested in test_session.py)."""
    role = Role(role)
    at.session_state[ACTOR_KEY] = Actor(DEMO_NAMES[role], role)
    return at


def app_test(
    *, role: Role | str | None = Role.INCIDENT_RESPONDER, default_timeout: float = 30
) -> AppTest:
    """The dashboard from its real entrypoint, signed in as `role` (None: nobody yet)."""
    at = AppTest.from_file(ENTRYPOINT, default_timeout=default_timeout)
    return sign_in(at, role) if role is not None else at


@pytest.fixture
def app_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    monkeypatch.chdir(Path(ENTRYPOINT).parents[1])
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def now_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def late_scores(now: datetime) -> list[dict]:
    """Six hours at UMC (40 an hour) and RVH (4 an hour); UMC's last 40 min mostly late."""
    records: list[dict] = []
    for minute in range(0, 6 * 60, 1):
        scored = now - timedelta(hours=6) + timedelta(minutes=minute, seconds=20)
        if minute % 3 == 0:
            continue
        late = scored > now - timedelta(minutes=40) and minute % 10 < 8
        records.append(
            prediction(
                len(records) + 1,
                site="UMC",
                scored=scored,
                trigger_at=iso(scored - timedelta(seconds=700 if late else 45)),
            )
        )
        if minute % 15 == 0:
            records.append(prediction(len(records) + 1, site="RVH", scored=scored))
    return records
