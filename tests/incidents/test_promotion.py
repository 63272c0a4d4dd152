"""Release stages: exit criteria, the recommendation, and the permission-checked, audited
promote and roll back (through the kill switch)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from incidents.actions import open_incident
from incidents.audit import verify_chain
from incidents.auth import Actor, PermissionDenied, Role
from incidents.killswitch import score_status
from incidents.promotion import (
    HOLD,
    PROMOTE,
    ROLLBACK,
    STAGES,
    Evidence,
    evaluate_exit_criteria,
    gather_evidence,
    next_stage,
    promote,
    recommend,
    rollback,
    stage_history,
)
from monitors.canary import CanaryConfig
from store.models import CanaryJudgement, ModelVersion, table_of
from tests.conftest import REPO
from tests.incidents.conftest import ONCALL, ids

NOW = datetime(2026, 9, 1, 6, 0, tzinfo=UTC)
CONFIG = CanaryConfig.from_file(REPO / "config" / "canary.yaml")
CANARY = CONFIG.stages["canary"]
LEAD = Actor("Dr. Lee Lead", Role.CLINICAL_LEAD)
RESPONDER = Actor("Riley Responder", Role.INCIDENT_RESPONDER)
ADMIN = Actor("Ada Admin", Role.ADMIN)
V = table_of(ModelVersion)
CJ = table_of(CanaryJudgement)

GOOD = Evidence(
    stage="canary",
    days_in_stage=9.0,
    scores=3900,
    verdict="Pass",
    canary_oe=1.02,
    label_completeness=0.99,
    alert_ratio=1.1,
    open_incidents=0,
    interim_verdict="Pass",
)


# ---------------------------------------------------------------- pure: criteria, advice


def test_stages_run_in_order() -> None:
    assert STAGES == ("development", "shadow", "canary", "limited", "broad", "retired")
    assert next_stage("canary") == "limited" and next_stage("retired") is None
    with pytest.raises(ValueError, match="unknown stage"):
        next_stage("beta")


def test_every_canary_exit_criterion_is_met_by_good_evidence() -> None:
    results = evaluate_exit_criteria(CANARY, GOOD)
    assert [r.name for r in results] == [
        "minimum duration",
        "minimum volume",
        "judge verdict",
        "labels settled",
        "calibration bounds",
        "alert volume",
        "open incidents",
        "always-valid test clear",
    ]
    assert all(r.met for r in results)
    assert recommend(GOOD, results).action == PROMOTE


@pytest.mark.parametrize(
    ("change", "criterion"),
    [
        ({"days_in_stage": 3.0}, "minimum duration"),
        ({"scores": 500}, "minimum volume"),
        ({"verdict": "Marginal"}, "judge verdict"),
        ({"canary_oe": 0.45}, "calibration bounds"),
        ({"alert_ratio": 2.6}, "alert volume"),
        ({"open_incidents": 1}, "open incidents"),
        ({"label_completeness": 0.6}, "labels settled"),
    ],
)
def test_each_unmet_criterion_holds_the_version(change: dict[str, Any], criterion: str) -> None:
    evidence = Evidence(**{**GOOD.__dict__, **change})
    results = evaluate_exit_criteria(CANARY, evidence)
    unmet = [r.name for r in results if r.met is not True]
    assert unmet == [criterion]
    advice = recommend(evidence, results)
    assert advice.action == HOLD and advice.reasons[0].startswith(criterion)


def test_roll_back_on_an_always_valid_rejection_or_a_failed_planned_analysis_only() -> None:
    rejected = Evidence(**{**GOOD.__dict__, "sequential_rejections": ("alert_rate increase",)})
    assert recommend(rejected, evaluate_exit_criteria(CANARY, rejected)).action == ROLLBACK
    failed = Evidence(**{**GOOD.__dict__, "verdict": "Fail", "failed_metrics": ("alert_rate",)})
    advice = recommend(failed, evaluate_exit_criteria(CANARY, failed))
    assert advice.action == ROLLBACK and "alert_rate" in advice.reasons[0]
    # An interim Fail before the planned analysis is shown, not acted on.
    early = Evidence(stage="canary", days_in_stage=3.0, scores=1500, interim_verdict="Fail")
    advice = recommend(early, evaluate_exit_criteria(CANARY, early))
    assert advice.action == HOLD
    assert any("not evidence to act on" in r for r in advice.reasons)


# ---------------------------------------------------------------- actions on a store


def _record(engine: Engine, evidence: Evidence, *, hour: int = 1) -> None:
    """What the canary monitor leaves behind: an interim judgement carrying its evidence."""
    model_id, site_id = ids(engine)
    with engine.connect() as conn:
        version_id = conn.execute(sa.select(V.c.id).where(V.c.version == "2.1.0")).scalar_one()
        control_id = conn.execute(sa.select(V.c.id).where(V.c.version == "2.0.0")).scalar_one()
    advice = recommend(evidence, evaluate_exit_criteria(CANARY, evidence))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(CJ).values(
                model_id=model_id,
                site_id=site_id,
                version_id=version_id,
                control_version_id=control_id,
                kind="interim",
                evaluated_hour=hour,
                window_start=NOW - timedelta(days=9),
                window_end=NOW,
                verdict=evidence.interim_verdict or "Pass",
                score=100.0,
                recommendation=advice.action,
                sequential_rejected=bool(evidence.sequential_rejections),
                detail={
                    "evidence": evidence.to_json(),
                    "judgement": {"failed": list(evidence.failed_metrics)},
                    "recommendation": advice.to_json(),
                },
                computed_at=NOW,
            )
        )


SNAPSHOT = ("modelversion", "stagechange", "auditevent", "audithead", "killswitch", "incident")


def _snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with engine.connect() as conn:
        for name in SNAPSHOT:
            table = SQLModel.metadata.tables[name]
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            out[name] = [tuple(r) for r in rows]
    return out


def _stage(engine: Engine, version: str = "2.1.0") -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(V.c.stage).where(V.c.version == version)).scalar_one())


def test_promote_is_refused_for_roles_that_may_not_promote(engine: Engine) -> None:
    _record(engine, GOOD)
    before = _snapshot(engine)
    for role in (Role.VIEWER, Role.ONCALL, Role.INCIDENT_RESPONDER):
        with pytest.raises(PermissionDenied, match="promote_version"):
            promote(
                engine,
                Actor("Someone", role),
                model="deterioration",
                version="2.1.0",
                reason="looks good to me",
                config=CONFIG,
                now=NOW,
            )
    assert _snapshot(engine) == before
    # An incident opened after the monitor's last look blocks promotion at once.
    open_incident(engine, ONCALL, title="Odd alerts on 5E", model="deterioration", site="UMC")
    with pytest.raises(ValueError, match="open incidents"):
        promote(
            engine, LEAD, model="deterioration", version="2.1.0", reason="looks good to me",
            config=CONFIG, now=NOW,
        )  # fmt: skip
    assert _stage(engine) == "canary"


def test_promote_records_who_when_and_on_what_evidence(engine: Engine) -> None:
    _record(engine, GOOD)
    result = promote(
        engine,
        LEAD,
        model="deterioration",
        version="2.1.0",
        reason="planned analysis passed",
        config=CONFIG,
        now=NOW,
    )
    assert (result.from_stage, result.to_stage) == ("canary", "limited")
    assert _stage(engine) == "limited"
    (change,) = stage_history(engine, model="deterioration", version="2.1.0")
    assert (change["from_stage"], change["to_stage"], change["actor"]) == (
        "canary",
        "limited",
        LEAD.name,
    )
    assert change["at"] == NOW and change["audit_hash"] == result.audit_hash
    with engine.connect() as conn:
        event = (
            conn.execute(
                sa.select(table_of_audit()).where(table_of_audit().c.hash == result.audit_hash)
            )
            .mappings()
            .one()
        )
        approver = conn.execute(sa.select(V.c.approver).where(V.c.version == "2.1.0")).scalar()
    assert event["action"] == "promote_version" and event["role"] == "clinical_lead"
    assert event["target"] == "version:deterioration#2.1.0"
    assert event["detail"]["evidence"][0]["verdict"] == "Pass"
    assert all(c["met"] for c in event["detail"]["criteria"][0])
    assert approver == LEAD.name
    assert verify_chain(engine).ok
    # The next stage has its own criteria: two weeks in `limited` before `broad`.
    with pytest.raises(ValueError, match="minimum duration"):
        promote(
            engine, ADMIN, model="deterioration", version="2.1.0", reason="faster", config=CONFIG,
            now=NOW + timedelta(days=1),
        )  # fmt: skip


def table_of_audit() -> sa.Table:
    return SQLModel.metadata.tables["auditevent"]


def test_promote_is_refused_when_the_evidence_falls_short_and_nothing_changes(
    engine: Engine,
) -> None:
    _record(engine, Evidence(**{**GOOD.__dict__, "verdict": "Fail", "alert_ratio": 2.6}))
    before = _snapshot(engine)
    with pytest.raises(ValueError, match=r"judge verdict.*alert volume"):
        promote(
            engine, LEAD, model="deterioration", version="2.1.0", reason="ship it anyway",
            config=CONFIG, now=NOW,
        )  # fmt: skip
    assert _snapshot(engine) == before
    ref, evidence = gather_evidence(engine, model="deterioration", version="2.1.0", now=NOW)
    assert ref.stage == "canary" and evidence[0].verdict == "Fail"


def test_roll_back_is_refused_for_roles_that_may_not_use_the_kill_switch(
    engine: Engine,
) -> None:
    before = _snapshot(engine)
    for role in (Role.VIEWER, Role.CLINICAL_LEAD, Role.ONCALL):
        with pytest.raises(PermissionDenied, match="rollback"):
            rollback(
                engine,
                Actor("Someone", role),
                model="deterioration",
                site="UMC",
                version="2.1.0",
                reason="canary failed: alert rate",
                now=NOW,
            )
    assert _snapshot(engine) == before


def test_roll_back_switches_off_the_canary_version_only_and_is_audited(engine: Engine) -> None:
    actor = RESPONDER
    failed = Evidence(
        **{**GOOD.__dict__, "verdict": "Fail", "failed_metrics": ("alert_rate", "oe_ratio")}
    )
    _record(engine, failed)
    result = rollback(
        engine,
        actor,
        model="deterioration",
        site="UMC",
        version="2.1.0",
        reason="planned analysis failed: alert rate 2.6x control",
        now=NOW,
    )
    assert result.changed and result.to_stage == "development"
    with engine.connect() as conn:
        canary = score_status(conn, model="deterioration", site="UMC", version="2.1.0")
        control = score_status(conn, model="deterioration", site="UMC", version="2.0.0")
        other_site = score_status(conn, model="deterioration", site="RVH")
        events = (
            conn.execute(sa.select(table_of_audit()).order_by(table_of_audit().c.id))
            .mappings()
            .all()
        )
    assert canary.state == "suppressed" and "canary roll back" in (canary.reason or "")
    assert control.state == "enabled" and other_site.state == "enabled"
    actions = [e["action"] for e in events]
    assert actions == ["open_incident", "disable_score", "rollback"]
    roll = events[-1]
    assert roll["actor"] == actor.name and roll["role"] == actor.role.value
    assert roll["target"] == "version:deterioration#2.1.0@UMC"
    assert roll["detail"]["judgements"][0]["recommendation"] == "rollback"
    assert roll["detail"]["kill_switch"]["audit_hash"] == events[1]["hash"]
    assert events[1]["target"] == "score:deterioration@UMC#2.1.0"
    assert _stage(engine) == "development"
    assert verify_chain(engine).ok
    # An admin rolling back again changes nothing more, and the audit log says so.
    again = rollback(
        engine, ADMIN, model="deterioration", site="UMC", version="2.1.0", reason="again",
        incident_id=result.evidence["kill_switch"]["incident"], now=NOW,
    )  # fmt: skip
    assert not again.changed
    with engine.connect() as conn:
        last = (
            conn.execute(sa.select(table_of_audit()).order_by(table_of_audit().c.id.desc()))
            .mappings()
            .first()
        )
    assert last is not None and last["action"] == "rollback" and last["actor"] == ADMIN.name
    assert verify_chain(engine).ok
