"""Permissions: every role that must not act is refused by the action itself; nothing changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incidents import actions
from incidents.auth import PERMISSIONS, Action, Actor, PermissionDenied, Role, authorize, can
from incidents.promotion import promote, rollback
from reports.export import export_report
from reports.governance import Month
from store.models import PageOutbox, table_of
from tests.incidents.conftest import NOW, RESPONDER, breach, make_settings, snapshot

SETTINGS = make_settings()


def test_the_matrix_in_one_place() -> None:
    assert set(PERMISSIONS) == set(Action)
    allowed = {
        action.value: sorted(r.value for r in roles) for action, roles in PERMISSIONS.items()
    }
    assert allowed["disable_score"] == ["admin", "incident_responder"]
    assert allowed["enable_score"] == ["admin", "incident_responder"]
    assert allowed["rollback"] == ["admin", "incident_responder"]
    assert allowed["acknowledge_alert"] == [
        "admin",
        "clinical_lead",
        "incident_responder",
        "oncall",
    ]
    assert allowed["resolve_alert"] == ["admin", "incident_responder", "oncall"]
    assert allowed["edit_thresholds"] == ["admin", "clinical_lead"]
    assert allowed["export_report"] == sorted(r.value for r in Role)
    # A viewer can only read and export.
    assert [a for a in Action if can(Actor("v", Role.VIEWER), a)] == [Action.EXPORT_REPORT]
    assert not can(None, Action.EXPORT_REPORT)
    with pytest.raises(PermissionDenied, match="oncall, which may not disable_score"):
        authorize(Actor("o", Role.ONCALL), Action.DISABLE_SCORE)
    with pytest.raises(ValueError):
        Actor("x", "superuser")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Actor("  ", Role.ADMIN)


def _calls(
    engine: Engine, alert_id: int, outbox_id: int, out_dir: Path
) -> dict[Action, Callable[[Actor], Any]]:
    """Each action's real function, ready to call as an actor."""
    common: dict[str, Any] = {"now": NOW, "settings": SETTINGS}
    return {
        Action.DISABLE_SCORE: lambda a: actions.disable_score(
            engine, a, model="deterioration", site="UMC", reason="drifting badly",
            incident_title="Drift", **common,
        ),
        Action.ENABLE_SCORE: lambda a: actions.enable_score(
            engine, a, model="readmission", site="RVH", reason="fixed now",
            incident_id=1, **common,
        ),
        Action.ACKNOWLEDGE_ALERT: lambda a: actions.acknowledge_alert(
            engine, a, alert_id=alert_id, **common
        ),
        Action.ESCALATE_ALERT: lambda a: actions.escalate_alert(
            engine, a, alert_id=alert_id, note="need help", **common
        ),
        Action.RESOLVE_ALERT: lambda a: actions.resolve_alert(
            engine, a, alert_id=alert_id, note="false alarm", **common
        ),
        Action.PAGE_NOW: lambda a: actions.page_now(
            engine, a, alert_id=alert_id, note="please look", **common
        ),
        Action.OPEN_INCIDENT: lambda a: actions.open_incident(engine, a, title="Sth", now=NOW),
        Action.RETRY_PAGE: lambda a: actions.retry_page(engine, a, outbox_id=outbox_id, now=NOW),
        Action.PROMOTE_VERSION: lambda a: promote(
            engine, a, model="deterioration", version="2.1.0", reason="planned analysis passed",
            now=NOW,
        ),
        Action.ROLLBACK: lambda a: rollback(
            engine, a, model="deterioration", site="UMC", version="2.1.0",
            reason="canary failed: alert rate", now=NOW, settings=SETTINGS,
        ),
        Action.EDIT_THRESHOLDS: lambda a: actions.set_alert_threshold(
            engine, a, model="deterioration", site="UMC", threshold=0.03,
            reason="alert burden over its limit", now=NOW,
        ),
        Action.EXPORT_REPORT: lambda a: export_report(
            engine, a, month=Month(2026, 8), out_dir=out_dir, pdf=False, now=NOW
        ),
    }  # fmt: skip


def prepare(engine: Engine) -> tuple[int, int]:
    """State every action could change: an open alert, a disabled score (for enable) and a
    failed page (for retry). Returns (alert id, outbox id)."""
    alert_id = breach(engine)
    actions.disable_score(
        engine, RESPONDER, model="readmission", site="RVH", reason="label feed broken",
        incident_title="Readmission labels", now=NOW, settings=SETTINGS,
    )  # fmt: skip
    outbox = table_of(PageOutbox)
    with engine.begin() as conn:
        conn.execute(sa.update(outbox).values(status="failed", last_error="Slack 200: is_archived"))
        outbox_id = conn.execute(sa.select(outbox.c.id)).scalar_one()
    return alert_id, outbox_id


def test_every_role_that_must_not_act_is_refused_and_nothing_changes(
    engine: Engine, tmp_path: Path
) -> None:
    alert_id, outbox_id = prepare(engine)
    calls = _calls(engine, alert_id, outbox_id, tmp_path)
    assert set(calls) == set(Action)
    refused = 0
    for action, call in calls.items():
        for role in Role:
            if role in PERMISSIONS[action]:
                continue
            before = snapshot(engine)
            with pytest.raises(PermissionDenied):
                call(Actor(f"Someone ({role.value})", role))
            assert snapshot(engine) == before, (action, role)
            refused += 1
    assert refused == 23  # the matrix's refusals over all twelve actions

    # And the roles that may act do change things (so the refusals above mean something).
    before = snapshot(engine)
    calls[Action.ACKNOWLEDGE_ALERT](Actor("Cleo Lead", Role.CLINICAL_LEAD))
    calls[Action.DISABLE_SCORE](Actor("Ada Admin", Role.ADMIN))
    calls[Action.RETRY_PAGE](Actor("Olu Oncall", Role.ONCALL))
    calls[Action.EDIT_THRESHOLDS](Actor("Cleo Lead", Role.CLINICAL_LEAD))
    after = snapshot(engine)
    for table in ("alert", "killswitch", "auditevent", "pageoutbox", "deployment"):
        assert after[table] != before[table], table
