"""AppTest of the canary page, from the real entrypoint, on a store the canary monitor judged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from collectors.runner import collect_files
from incidents import promotion
from incidents.audit import verify_chain
from incidents.auth import Actor, PermissionDenied, Role
from incidents.killswitch import score_status
from monitors.canary import CanaryConfig
from monitors.canary_runner import run_canary
from monitors.config import MonitorConfig
from store.models import AuditEvent, table_of
from store.rollups import refresh
from tests.app.operational import app_test
from tests.conftest import REPO
from tests.factories import encounter, outcome, prediction, write_jsonl
from vigil.config import get_settings

ENTRYPOINT = str(REPO / "app" / "streamlit_app.py")
PAGE = "app_pages/canary.py"
CONFIG = CanaryConfig.from_file(REPO / "config" / "canary.yaml")


@pytest.fixture
def app_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    monkeypatch.setenv("VIGIL_DEMO_MODE", "true")
    monkeypatch.delenv("VIGIL_SLACK_BOT_TOKEN", raising=False)
    monkeypatch.chdir(REPO)  # the page reads config/canary.yaml
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()


def _seed(engine: Engine, tmp_path: Path) -> datetime:
    """Nine days at UMC: unit 5E runs 2.1.0 as a canary that scores three times higher."""
    rng = np.random.default_rng(21)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=9)
    records: list[dict[str, Any] | str | bytes] = []
    outcomes: list[dict[str, Any] | str | bytes] = []
    closures: list[dict[str, Any] | str | bytes] = []
    n = 0
    for e in range(1200):
        canary = e % 3 == 0
        unit = "5E" if canary else "4W"
        eid = f"UMC-E{e:07d}"
        admitted = start + timedelta(minutes=int(rng.integers(0, 8 * 24 * 60)))
        risk = float(rng.beta(1.3, 70))
        shown = min(risk * (3.0 if canary else 1.0), 0.95)
        for k in range(6):
            n += 1
            scored = admitted + timedelta(hours=4 * k)
            records.append(
                prediction(
                    n,
                    encounter_id=eid,
                    unit=unit,
                    scored=scored,
                    score=round(shown, 6),
                    alert=shown >= 0.02,
                    arm="canary" if canary else "control",
                    model_version="2.1.0" if canary else "2.0.0",
                )
            )
        discharged = admitted + timedelta(hours=22)
        closures.append(encounter(eid, discharged, unit=unit))
        if rng.random() < min(1.0, 3 * risk):
            outcomes.append(outcome(eid, admitted + timedelta(hours=21)))
    files = [
        write_jsonl(tmp_path / "predictions-a.jsonl", records),
        write_jsonl(tmp_path / "outcomes-a.jsonl", outcomes),
        write_jsonl(tmp_path / "encounters-a.jsonl", closures),
    ]
    list(collect_files(engine, files, secret="s"))
    refresh(engine, now=now)
    run_canary(engine, MonitorConfig(), now, canary_config=CONFIG)
    return now


def open_page(role: Role = Role.CLINICAL_LEAD) -> AppTest:
    at = app_test(role=role, default_timeout=60)
    at.switch_page(PAGE)
    return at.run()


def _table_with(at: AppTest, column: str) -> Any:
    """The first table on the page that has `column` (AppTest does not expose table keys)."""
    return next(t.value for t in at.dataframe if column in t.value.columns)


def _audit_actions(engine: Engine) -> list[str]:
    table = table_of(AuditEvent)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table.c.action).order_by(table.c.id)).scalars())


def test_canary_page_shows_the_arms_the_verdict_and_the_caveat(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    _seed(engine, tmp_path)
    at = open_page()
    assert not at.exception, at.exception
    assert at.title[0].value == "Canary versus control"
    assert any("Units were not randomised" in w.value for w in at.warning)
    text = " ".join(m.value for m in at.markdown)
    assert "deterioration 2.1.0 against 2.0.0 at UMC" in text
    assert "ROLL BACK" in text  # the planned analysis failed the loud canary
    labels = [m.label for m in at.metric]
    assert labels == [
        "Stage",
        "Planned analysis",
        "Interim verdict (period so far)",
        "Always-valid test",
    ]
    assert at.metric[1].value == "Fail"
    metrics = _table_with(at, "classification")
    alert_row = metrics[metrics["metric"] == "Alerts per 100 patient-days"].iloc[0]
    assert alert_row["classification"] == "High ✗"
    assert len(at.get("plotly_chart")) == 3  # scores, latency, verdict over time
    criteria = _table_with(at, "met")
    assert "judge verdict" in list(criteria["name"])


def test_promote_and_roll_back_from_the_page_check_the_role(
    app_env: None, engine: Engine, tmp_path: Path
) -> None:
    _seed(engine, tmp_path)
    at = open_page()
    before = _audit_actions(engine)

    # A viewer sees neither action; the functions refuse a viewer anyway.
    at = open_page(role=Role.VIEWER)
    keys = {b.key for b in at.get("button")}
    assert not keys & {"promote_submit", "rollback_submit"}, keys
    viewer = Actor("Vera Viewer", Role.VIEWER)
    with pytest.raises(PermissionDenied, match="viewer"):
        promotion.promote(engine, viewer, model="deterioration", version="2.1.0", reason="ok")
    with pytest.raises(PermissionDenied, match="viewer"):
        promotion.rollback(
            engine, viewer, model="deterioration", site="UMC", version="2.1.0", reason="x"
        )

    # A clinical lead may promote (the stage's exit criteria then refuse it), not roll back.
    at = open_page(role=Role.CLINICAL_LEAD)
    assert "rollback_submit" not in {b.key for b in at.get("button")}
    at.text_input(key="promote_reason").input("looks fine")
    at = at.button(key="promote_submit").click().run()
    assert any("may not leave canary" in e.value for e in at.error), [e.value for e in at.error]
    assert _audit_actions(engine) == before

    at = open_page(role=Role.INCIDENT_RESPONDER)
    assert "promote_submit" not in {b.key for b in at.get("button")}
    at.text_input(key="rollback_reason").input("alert rate 3x control")
    at.checkbox(key="rollback_confirm").check()
    at = at.button(key="rollback_submit").click().run()
    assert not at.exception
    assert any("rolled back at UMC" in s.value for s in at.success), [e.value for e in at.error]
    with engine.connect() as conn:
        assert score_status(conn, model="deterioration", site="UMC", version="2.1.0").state == (
            "suppressed"
        )
        assert score_status(conn, model="deterioration", site="UMC", version="2.0.0").enabled
    assert _audit_actions(engine)[-2:] == ["disable_score", "rollback"]
    assert at.metric[0].value == "development"
    assert verify_chain(engine).ok
