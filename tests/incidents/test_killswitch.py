"""The kill switch: scopes, reasons and incidents, re-enable, and concurrent responders."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incidents import actions
from incidents.audit import verify_chain
from incidents.auth import Actor, Role
from incidents.killswitch import NotFound, ScoreStatus, all_statuses, score_status
from store.models import AuditEvent, Incident, KillSwitch, PageOutbox, table_of
from tests.incidents.conftest import NOW, RESPONDER, make_settings, snapshot

KS = table_of(KillSwitch)
AE = table_of(AuditEvent)
SETTINGS = make_settings()


def status(engine: Engine, model: str, site: str, version: str | None = None) -> ScoreStatus:
    with engine.connect() as conn:
        return score_status(conn, model=model, site=site, version=version)


def test_disable_one_site_then_re_enable(engine: Engine) -> None:
    result = actions.disable_score(
        engine,
        RESPONDER,
        model="deterioration",
        site="UMC",
        reason="O:E 1.6 since the lab mapping change",
        incident_title="Deterioration miscalibrated at UMC",
        now=NOW,
        settings=SETTINGS,
    )
    assert result.changed and result.incident_id == 1
    umc = status(engine, "deterioration", "UMC")
    assert (umc.state, umc.reason, umc.since, umc.incident_id, umc.version) == (
        "suppressed",
        "O:E 1.6 since the lab mapping change",
        NOW,
        1,
        "2.0.0",
    )
    assert status(engine, "deterioration", "RVH").state == "enabled"
    assert status(engine, "readmission", "UMC").state == "enabled"

    later = NOW + timedelta(hours=3)
    again = actions.enable_score(
        engine,
        RESPONDER,
        model="deterioration",
        site="UMC",
        reason="mapping fixed; O:E back to 1.02",
        incident_id=1,
        now=later,
        settings=SETTINGS,
    )
    assert again.changed
    umc = status(engine, "deterioration", "UMC")
    assert (umc.state, umc.reason) == ("enabled", None)
    assert umc.since >= later  # (or the deployment's start, if later)
    with engine.connect() as conn:
        row = conn.execute(sa.select(KS)).one()
        events = conn.execute(sa.select(AE.c.action, AE.c.target).order_by(AE.c.id)).all()
        notices = conn.execute(sa.select(table_of(PageOutbox).c.dedup_key)).scalars().all()
    assert (row.enabled, row.revision, row.actor, row.incident_id) == (
        True,
        2,
        "Riley Responder",
        1,
    )
    assert [tuple(e) for e in events] == [
        ("open_incident", "incident:1"),
        ("disable_score", "score:deterioration@UMC"),
        ("enable_score", "score:deterioration@UMC"),
    ]
    assert len(notices) == 2  # one Slack notice per change
    assert verify_chain(engine).ok


def test_all_sites_and_version_scopes(engine: Engine) -> None:
    actions.disable_score(
        engine,
        RESPONDER,
        model="deterioration",
        site="UMC",
        version="2.1.0",
        reason="canary failed: alert rate twice control",
        incident_title="Canary 2.1.0 failed",
        now=NOW,
        settings=SETTINGS,
    )
    canary = status(engine, "deterioration", "UMC", "2.1.0")
    assert canary.state == "suppressed" and canary.scope == "site UMC, version 2.1.0"
    assert status(engine, "deterioration", "UMC").state == "enabled"

    actions.disable_score(
        engine,
        RESPONDER,
        model="readmission",
        site=None,
        reason="outcome definition changed upstream",
        incident_title="Readmission outcome change",
        now=NOW,
        settings=SETTINGS,
    )
    states = {(s.model, s.site, s.version): s.state for s in all_statuses(engine)}
    assert all(state == "suppressed" for (m, _, _), state in states.items() if m == "readmission")
    assert states[("deterioration", "UMC", "2.1.0")] == "suppressed"
    assert states[("deterioration", "RVH", "2.0.0")] == "enabled"
    # Re-enabling one site does not undo the all-sites switch.
    actions.enable_score(
        engine,
        RESPONDER,
        model="readmission",
        site="UMC",
        reason="checked",
        incident_id=2,
        now=NOW,
        settings=SETTINGS,
    )
    assert status(engine, "readmission", "UMC").state == "suppressed"


INVALID = [
    ({"reason": "  "}, ValueError),
    ({"reason": "ok reason", "incident_title": None}, ValueError),  # no incident
    ({"reason": "ok reason", "incident_id": 1}, ValueError),  # two incidents
    ({"reason": "ok reason", "model": "sepsis"}, NotFound),
    ({"reason": "ok reason", "site": "XXX"}, NotFound),
    ({"reason": "ok reason", "version": "9.9.9"}, NotFound),
    ({"reason": "ok reason", "incident_id": 99, "incident_title": None}, LookupError),
]


def test_invalid_requests_change_nothing(engine: Engine) -> None:
    before = snapshot(engine)
    for kwargs, error in INVALID:
        call: dict[str, Any] = {
            "model": "deterioration",
            "site": "UMC",
            "incident_title": "An incident",
            "now": NOW,
            "settings": SETTINGS,
            **kwargs,
        }
        with pytest.raises(error):
            actions.disable_score(engine, RESPONDER, **call)
        assert snapshot(engine) == before, kwargs


def test_two_responders_disabling_at_once_make_one_change_and_two_audit_events(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(table_of(Incident)).values(title="Drift", opened_by="x", opened_at=NOW)
        )
    responders = [Actor(f"Responder {n}", Role.INCIDENT_RESPONDER) for n in range(4)]
    barrier = threading.Barrier(len(responders))
    results: list[actions.ActionResult] = []
    errors: list[BaseException] = []

    def disable(actor: Actor) -> None:
        barrier.wait()
        try:
            results.append(
                actions.disable_score(
                    engine,
                    actor,
                    model="deterioration",
                    site="UMC",
                    reason=f"drift seen by {actor.name}",
                    incident_id=1,
                    settings=SETTINGS,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=disable, args=(actor,)) for actor in responders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(r.changed for r in results) == [False, False, False, True]
    with engine.connect() as conn:
        switch = conn.execute(sa.select(KS)).one()
        audited = conn.execute(
            sa.select(AE.c.actor, AE.c.detail).where(AE.c.action == "disable_score")
        ).all()
    assert switch.revision == 1 and not switch.enabled
    winner = next(r for r in results if r.changed)
    assert switch.reason == f"drift seen by {switch.actor}"
    assert sorted(a.actor for a in audited) == sorted(r.name for r in responders)
    assert sum(a.detail["changed"] for a in audited) == 1
    assert winner.audit_hash
    assert verify_chain(engine).ok
