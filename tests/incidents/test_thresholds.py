"""Editing a deployment's alert threshold: permission-checked, validated, audited with the old
and new value and the reason, idempotent, and serialised between two leads."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from incidents import actions
from incidents.audit import recent_events, verify_chain
from incidents.auth import Action, Actor, PermissionDenied, Role, can
from store.models import Deployment, Model, ModelVersion, Site, table_of
from tests.app.operational import DEMO_NAMES, app_env, app_test
from tests.incidents.conftest import NOW, snapshot
from tests.incidents.test_runbooks_and_cli import cli_env
from vigil.cli import app

__all__ = ["app_env", "cli_env"]
runner = CliRunner()

LEAD = Actor("Cleo Lead", Role.CLINICAL_LEAD)
D, M, S, V = table_of(Deployment), table_of(Model), table_of(Site), table_of(ModelVersion)


def stored_threshold(
    engine: Engine, model: str, site: str, version: str, arm: str = "control", unit: str = ""
) -> float:
    with engine.connect() as conn:
        return float(
            conn.execute(
                sa.select(D.c.alert_threshold)
                .join(M, M.c.id == D.c.model_id)
                .join(S, S.c.id == D.c.site_id)
                .join(V, V.c.id == D.c.version_id)
                .where(
                    M.c.name == model,
                    S.c.code == site,
                    V.c.version == version,
                    D.c.arm == arm,
                    D.c.unit == unit,
                )
            ).scalar_one()
        )


def test_a_lead_changes_one_deployment_and_the_audit_log_says_from_what_to_what(
    engine: Engine,
) -> None:
    before_rvh = stored_threshold(engine, "deterioration", "RVH", "2.0.0")
    result = actions.set_alert_threshold(
        engine, LEAD, model="deterioration", site="UMC", threshold=0.035,
        reason="alert burden 2x the Poisson limit; agreed at the safety huddle", now=NOW,
    )  # fmt: skip
    assert result.changed
    assert result.message == "deterioration 2.0.0 at UMC (control): alert threshold 0.02 → 0.035"
    assert stored_threshold(engine, "deterioration", "UMC", "2.0.0") == 0.035
    # Only that deployment: the same model elsewhere and the canary arm keep theirs.
    assert stored_threshold(engine, "deterioration", "RVH", "2.0.0") == before_rvh == 0.02
    assert stored_threshold(engine, "deterioration", "UMC", "2.1.0", "canary", "5E") == 0.02

    [event] = recent_events(engine, limit=1)
    assert (event["actor"], event["role"], event["action"], event["target"]) == (
        "Cleo Lead",
        "clinical_lead",
        "edit_thresholds",
        "threshold:deterioration@UMC#2.0.0/control",
    )
    assert event["detail"] == {
        "changed": True,
        "from": 0.02,
        "to": 0.035,
        "reason": "alert burden 2x the Poisson limit; agreed at the safety huddle",
    }
    assert verify_chain(engine).ok


def test_the_canary_arm_and_unit_are_named_explicitly(engine: Engine) -> None:
    result = actions.set_alert_threshold(
        engine, LEAD, model="deterioration", site="UMC", arm="canary", unit="5E",
        threshold=0.025, reason="match the canary's calibration", now=NOW,
    )  # fmt: skip
    assert result.changed
    assert stored_threshold(engine, "deterioration", "UMC", "2.1.0", "canary", "5E") == 0.025
    assert stored_threshold(engine, "deterioration", "UMC", "2.0.0") == 0.02
    [event] = recent_events(engine, limit=1)
    assert event["target"] == "threshold:deterioration@UMC#2.1.0/canary/5E"


def test_setting_the_same_value_changes_nothing_but_is_audited(engine: Engine) -> None:
    first = actions.set_alert_threshold(
        engine, LEAD, model="readmission", site="LKS", threshold=0.3,
        reason="discharge planning capacity", now=NOW,
    )  # fmt: skip
    again = actions.set_alert_threshold(
        engine, Actor("Ada Admin", Role.ADMIN), model="readmission", site="LKS", threshold=0.3,
        reason="discharge planning capacity", now=NOW + timedelta(minutes=1),
    )  # fmt: skip
    assert first.changed and not again.changed
    assert "already 0.3; nothing changed" in again.message
    assert stored_threshold(engine, "readmission", "LKS", "1.4.0") == 0.3
    events = recent_events(engine, limit=2)
    assert [e["detail"]["changed"] for e in events] == [False, True]
    assert events[0]["detail"]["from"] == events[0]["detail"]["to"] == 0.3


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_thresholds_outside_zero_to_one_are_refused_and_nothing_changes(
    engine: Engine, bad: float
) -> None:
    before = snapshot(engine)
    with pytest.raises(ValueError, match="between 0 and 1"):
        actions.set_alert_threshold(
            engine, LEAD, model="deterioration", site="UMC", threshold=bad,
            reason="a valid reason", now=NOW,
        )  # fmt: skip
    assert snapshot(engine) == before
    assert stored_threshold(engine, "deterioration", "UMC", "2.0.0") == 0.02


@pytest.mark.parametrize("reason", ["", "   ", "ok"])
def test_a_reason_is_required(engine: Engine, reason: str) -> None:
    before = snapshot(engine)
    with pytest.raises(ValueError, match="a reason is required"):
        actions.set_alert_threshold(
            engine, LEAD, model="deterioration", site="UMC", threshold=0.03, reason=reason,
            now=NOW,
        )  # fmt: skip
    assert snapshot(engine) == before


def test_unknown_or_ambiguous_deployments_are_named(engine: Engine) -> None:
    call = {"threshold": 0.03, "reason": "a valid reason", "now": NOW}
    with pytest.raises(LookupError, match="unknown site 'XYZ'"):
        actions.set_alert_threshold(engine, LEAD, model="deterioration", site="XYZ", **call)
    with pytest.raises(LookupError, match="unknown model"):
        actions.set_alert_threshold(engine, LEAD, model="sepsis", site="UMC", **call)
    with pytest.raises(LookupError, match="has no canary deployment"):
        actions.set_alert_threshold(
            engine, LEAD, model="readmission", site="UMC", arm="canary", **call
        )
    # A second control version at the same site: the action asks which one.
    with engine.begin() as conn:
        ids = conn.execute(
            sa.select(D.c.model_id, D.c.site_id, D.c.version_id)
            .join(V, V.c.id == D.c.version_id)
            .join(S, S.c.id == D.c.site_id)
            .where(V.c.version == "2.1.0", S.c.code == "UMC")
        ).one()
        conn.execute(
            sa.insert(D).values(
                model_id=ids.model_id, site_id=ids.site_id, version_id=ids.version_id,
                unit="", arm="control", alert_threshold=0.02, enabled=True, started_at=NOW,
            )
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"several control versions \(2.0.0, 2.1.0\): name one"):
        actions.set_alert_threshold(engine, LEAD, model="deterioration", site="UMC", **call)
    named = actions.set_alert_threshold(
        engine, LEAD, model="deterioration", site="UMC", version="2.1.0", **call
    )
    assert named.changed
    assert stored_threshold(engine, "deterioration", "UMC", "2.1.0") == 0.03
    assert stored_threshold(engine, "deterioration", "UMC", "2.0.0") == 0.02


@pytest.mark.parametrize("role", [Role.VIEWER, Role.ONCALL, Role.INCIDENT_RESPONDER])
def test_roles_outside_the_matrix_are_refused_before_anything_is_read(
    engine: Engine, role: Role
) -> None:
    before = snapshot(engine)
    with pytest.raises(PermissionDenied, match="may not edit_thresholds"):
        # Even an invalid value is refused for permission first: nothing about it is revealed.
        actions.set_alert_threshold(
            engine, Actor("Someone", role), model="deterioration", site="UMC", threshold=2.0,
            reason="", now=NOW,
        )  # fmt: skip
    assert snapshot(engine) == before


def test_two_leads_at_once_make_one_change_and_two_audit_events(engine: Engine) -> None:
    leads = [Actor("Cleo Lead", Role.CLINICAL_LEAD), Actor("Ada Admin", Role.ADMIN)]
    barrier = threading.Barrier(len(leads))
    results: list[actions.ActionResult] = []
    errors: list[BaseException] = []

    def edit(actor: Actor) -> None:
        barrier.wait()
        try:
            results.append(
                actions.set_alert_threshold(
                    engine,
                    actor,
                    model="deterioration",
                    site="MTN",
                    threshold=0.05,
                    reason="critical-access site: fewer, surer alerts",
                    now=NOW,
                )
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=edit, args=(actor,)) for actor in leads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(r.changed for r in results) == [False, True]
    events = recent_events(engine, limit=2)
    assert {e["actor"] for e in events} == {"Cleo Lead", "Ada Admin"}
    assert sorted(e["detail"]["from"] for e in events) == [0.02, 0.05]
    assert stored_threshold(engine, "deterioration", "MTN", "2.0.0") == 0.05
    assert verify_chain(engine).ok


def test_the_cli_changes_a_threshold_only_for_a_lead(cli_env: None, engine: Engine) -> None:
    args = ["threshold", "set", "readmission", "--site", "PRR", "--value", "0.2",
            "--reason", "care-transitions team has room for more", "--actor", "Cleo"]  # fmt: skip
    refused = runner.invoke(app, [*args, "--role", "oncall"])
    assert refused.exit_code == 3 and "may not edit_thresholds" in refused.output
    assert stored_threshold(engine, "readmission", "PRR", "1.4.0") == 0.25
    invalid = runner.invoke(app, [*args[:6], "1.2", *args[7:], "--role", "clinical_lead"])
    assert invalid.exit_code == 2 and "between 0 and 1" in invalid.output
    done = runner.invoke(app, [*args, "--role", "clinical_lead"])
    assert done.exit_code == 0, done.output
    assert "readmission 1.4.0 at PRR (control): alert threshold 0.25 → 0.2" in done.output
    assert stored_threshold(engine, "readmission", "PRR", "1.4.0") == 0.2
    listed = runner.invoke(app, ["threshold", "list", "readmission"])
    assert "readmission 1.4.0 at PRR (control): 0.2\n" in listed.output
    assert "readmission 1.4.0 at UMC (control): 0.25\n" in listed.output
    log = runner.invoke(app, ["audit", "log", "--limit", "1"])
    assert "edit_thresholds threshold:readmission@PRR#1.4.0/control — care-transitions" in (
        log.output
    )


@pytest.mark.parametrize("role", list(Role))
def test_the_models_page_offers_the_change_only_to_leads_and_admins(
    app_env: None, engine: Engine, role: Role
) -> None:
    at = app_test(role=role)
    at.query_params["model"] = "readmission"
    at.switch_page("app_pages/models.py").run()
    assert not at.exception
    buttons = [b for b in at.button if b.label == "Change threshold"]
    if not can(Actor("x", role), Action.EDIT_THRESHOLDS):
        assert not buttons  # viewers, on-call and responders see no form
        assert any("may not change alert thresholds" in c.value for c in at.caption)
        return
    [deployment] = [s for s in at.selectbox if s.label == "Deployment"]
    prr = deployment.options.index("PRR · 1.4.0 (control) — now 0.25")
    deployment.set_value(prr)
    at.number_input(key="threshold_value").set_value(0.3)
    at.text_input(key="threshold_reason").set_value("short")
    at.button(key="threshold_submit").click().run()
    assert not at.exception
    assert stored_threshold(engine, "readmission", "PRR", "1.4.0") == 0.3
    assert at.success[0].value == "readmission 1.4.0 at PRR (control): alert threshold 0.25 → 0.3"
    assert "PRR · 1.4.0 (control) — now 0.3" in at.selectbox(key="threshold_deployment").options
    [event] = recent_events(engine, limit=1)
    assert (event["actor"], event["detail"]["reason"]) == (DEMO_NAMES[role], "short")

    # Refusals from the action itself are shown, and change nothing.
    at.text_input(key="threshold_reason").set_value("")
    at.button(key="threshold_submit").click().run()
    assert "a reason is required" in at.error[0].value
    assert stored_threshold(engine, "readmission", "PRR", "1.4.0") == 0.3
