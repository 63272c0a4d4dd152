"""AppTest of the incident console, from the real entrypoint, on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from incidents import actions
from incidents.audit import verify_chain
from incidents.auth import Actor, PermissionDenied, Role
from incidents.killswitch import score_status
from store.models import AuditEvent, KillSwitch, table_of
from tests.app.operational import app_test
from tests.incidents.conftest import breach
from vigil.config import get_settings

ENTRYPOINT = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
PAGE = "app_pages/incidents.py"


@pytest.fixture
def app_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    monkeypatch.setenv("VIGIL_DEMO_MODE", "true")
    monkeypatch.delenv("VIGIL_SLACK_BOT_TOKEN", raising=False)
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def open_console(
    query: dict[str, str] | None = None, *, role: Role = Role.INCIDENT_RESPONDER
) -> AppTest:
    at = app_test(role=role, default_timeout=30)
    at.query_params.update(query or {})
    at.switch_page(PAGE)
    return at.run()


def disable_in_console(at: AppTest, *, site: str, reason: str, title: str) -> AppTest:
    at.selectbox(key="disable_model").set_value("deterioration")
    at.selectbox(key="disable_site").set_value(site)
    at.text_area(key="disable_reason").input(reason)
    at.text_input(key="disable_incident_title").input(title)
    at.checkbox(key="disable_confirm").check()
    return at.button(key="disable_submit").click().run()


def _audit_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table_of(AuditEvent))).scalar_one()
        )


def test_console_shows_the_alert_its_runbook_and_disables_a_score(
    app_env: None, engine: Engine
) -> None:
    alert_id = breach(engine)
    at = open_console({"model": "deterioration", "site": "UMC", "alert": str(alert_id)})
    assert not at.exception
    assert at.title[0].value == "Incidents"
    text = " ".join(m.value for m in at.markdown)
    assert f"#{alert_id} · deterioration at UMC" in text
    assert "O:E 1.62 at UMC" in text
    # The linked runbook is rendered inline (its sections, not a link).
    assert "observed-to-expected ratio" in text and "Mitigation" in text
    assert [m.label for m in at.metric][:3] == ["Open pages", "Open tickets", "Suppressed scores"]
    assert at.metric[0].value == "1"
    assert any("Riley Responder" in c.value for c in at.sidebar.caption)  # who is signed in

    at = disable_in_console(at, site="UMC", reason="O:E 1.6 at UMC", title="Det UMC drift")
    assert not at.exception
    assert any("score disabled" in s.value for s in at.success), [e.value for e in at.error]
    with engine.connect() as conn:
        status = score_status(conn, model="deterioration", site="UMC")
        other = score_status(conn, model="deterioration", site="RVH")
    assert status.state == "suppressed" and status.reason == "O:E 1.6 at UMC"
    assert other.state == "enabled"
    # The console shows it at once: both deployments at UMC (control 2.0.0, canary 2.1.0).
    assert at.metric[2].value == "2"
    assert any("Riley Responder" in m.value for m in at.markdown)  # the re-enable row
    assert verify_chain(engine).ok


def test_a_viewer_sees_no_action_and_the_action_refuses_it_anyway(
    app_env: None, engine: Engine
) -> None:
    alert_id = breach(engine)
    at = open_console(role=Role.VIEWER)
    assert not at.exception
    keys = {b.key for b in at.get("button")}
    assert not keys & {"disable_submit", f"act_submit_{alert_id}"}, keys
    assert any("may not switch a score off" in c.value for c in at.caption)
    assert any(f"#{alert_id} · deterioration at UMC" in m.value for m in at.markdown)
    before = _audit_count(engine)
    viewer = Actor("Vera Viewer", Role.VIEWER)
    with pytest.raises(PermissionDenied, match="viewer"):
        actions.disable_score(
            engine, viewer, model="deterioration", site="UMC", reason="x", incident_title="x"
        )
    with pytest.raises(PermissionDenied):
        actions.acknowledge_alert(engine, viewer, alert_id=alert_id, note="")
    with engine.connect() as conn:
        switches = conn.execute(sa.select(table_of(KillSwitch))).all()
        assert score_status(conn, model="deterioration", site="UMC").state == "enabled"
    assert switches == []
    assert _audit_count(engine) == before


def test_a_disable_without_confirmation_changes_nothing(app_env: None, engine: Engine) -> None:
    breach(engine)
    at = open_console()
    before = _audit_count(engine)
    at.selectbox(key="disable_site").set_value("UMC")
    at.text_area(key="disable_reason").input("O:E 1.6 at UMC")
    at.text_input(key="disable_incident_title").input("Det UMC")
    at = at.button(key="disable_submit").click().run()
    assert any("Tick the confirmation" in w.value for w in at.warning)
    with engine.connect() as conn:
        assert score_status(conn, model="deterioration", site="UMC").state == "enabled"
    assert _audit_count(engine) == before


def test_console_re_enables_and_acknowledges(app_env: None, engine: Engine) -> None:
    alert_id = breach(engine)
    at = open_console()
    at = disable_in_console(at, site="UMC", reason="O:E 1.6 at UMC", title="Det UMC")
    switch_id = 1
    at.text_input(key=f"enable_reason_{switch_id}").input("mapping fixed")
    at.checkbox(key=f"enable_confirm_{switch_id}").check()
    at = at.button(key=f"enable_submit_{switch_id}").click().run()
    assert not at.exception
    assert any("score enabled" in s.value for s in at.success), [e.value for e in at.error]
    with engine.connect() as conn:
        assert score_status(conn, model="deterioration", site="UMC").state == "enabled"

    at.radio(key=f"act_choice_{alert_id}").set_value("Acknowledge")
    at = at.button(key=f"act_submit_{alert_id}").click().run()
    assert any(f"alert #{alert_id} acknowledged" in s.value for s in at.success)
    timeline = at.dataframe[-1].value  # the timeline is the last table on the page
    assert list(timeline["action"])[:4] == [
        "acknowledge_alert",
        "enable_score",
        "disable_score",
        "open_incident",
    ]
    assert verify_chain(engine).ok
