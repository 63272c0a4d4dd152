"""Canary commands: judge now, show the verdict, A/A check, promote, roll back, stage history.

Promote and roll back go through `incidents.promotion`, which checks the actor's role and
audits the action; on the command line the actor is named with --actor and --role.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from vigil.commands.common import actor as _actor
from vigil.commands.common import engine as _engine
from vigil.commands.common import run_action as _run_action

canary_app = typer.Typer(help="Canary versus control, and release stages.", no_args_is_help=True)

ActorName = Annotated[str, typer.Option("--actor", help="Your name, for the audit log.")]
RoleName = Annotated[
    str,
    typer.Option(
        "--role", help="Your role: viewer, clinical_lead, oncall, incident_responder or admin."
    ),
]


def _print_judgement(judgement: dict[str, Any]) -> None:
    typer.echo(f"  verdict {judgement['verdict']} (score {judgement['score']})")
    for m in judgement["metrics"]:
        ci = ""
        if m["ci_low"] is not None or m["ci_high"] is not None:
            ci = f" [{m['ci_low']}, {m['ci_high'] if m['ci_high'] is not None else 'inf'}]"
        mark = " FAIL" if m["failed"] else ""
        typer.echo(
            f"    {m['metric']:<20} {m['classification']:<8} effect {m['effect']}{ci}"
            f" p={m['p_value']} d={m['design_effect']}{mark}"
            + (f" ({m['reason']})" if m.get("reason") else "")
        )


@canary_app.command("judge")
def judge_now() -> None:
    """Run the canary monitor once now and print each canary's verdict and recommendation."""
    from monitors.canary_runner import run_canary
    from monitors.config import MonitorConfig

    results = run_canary(_engine(), MonitorConfig.from_file())
    verdicts = [r for r in results if r.metric == "verdict"]
    if not verdicts:
        typer.echo("no canary to judge (none deployed, none serving, or none has scored yet)")
    for r in verdicts:
        advice = r.detail["recommendation"]
        typer.echo(
            f"{r.detail['scope']} against {r.detail['control_version']}: "
            f"interim {r.detail['verdict']}, planned {r.detail['planned_verdict'] or 'not yet'}"
            f" → {advice['action']}"
        )
        for reason in [*advice["reasons"], *r.detail["notes"]]:
            typer.echo(f"  - {reason}")


@canary_app.command("status")
def status(
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """The latest judgement of every canary: recommendation, metric table, always-valid test."""
    from store.queries import canary_judgements, canary_overview

    engine = _engine()
    overview = canary_overview(engine=engine)
    if overview.empty:
        typer.echo("no canary deployments")
        return
    for row in overview.to_dict("records"):
        if model and row["model"] != model:
            continue
        where = f"{row['site']}" + (f" unit {row['unit']}" if row["unit"] else "")
        typer.echo(
            f"{row['model']} {row['version']} (stage {row['stage']}) vs {row['control_version']}"
            f" at {where}: {row['recommendation'] or 'not judged yet'}"
        )
        history = canary_judgements(
            engine=engine, model=row["model"], site=row["site"], version=row["version"]
        )
        if history.empty:
            continue
        latest = history[history["kind"] == "interim"].iloc[-1]
        detail = latest["detail"] or {}
        typer.echo(f"  {detail.get('assignment', '')}")
        for reason in detail.get("recommendation", {}).get("reasons", []):
            typer.echo(f"  - {reason}")
        typer.echo(f"  period so far {latest['window_start']:%Y-%m-%d %H:%M} → now (interim):")
        _print_judgement(detail["judgement"])
        if detail.get("planned"):
            typer.echo("  planned analysis:")
            _print_judgement(detail["planned"])
        for s in detail.get("sequential", []):
            typer.echo(
                f"    always-valid {s['metric']} {s['direction']}: e-value {s['max_evalue']}"
                f" of {s['threshold']} ({'REJECTS' if s['rejected'] else 'no rejection'})"
            )


@canary_app.command("aa")
def aa(
    model: Annotated[str, typer.Argument(help="Model name.")],
    site: Annotated[str, typer.Argument(help="Site code.")],
    days: Annotated[float, typer.Option(help="Trailing days to compare.")] = 12.0,
    unit: Annotated[
        list[str] | None, typer.Option(help="Compare two units instead of encounter halves.")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(help="End of the window (UTC; default now).")
    ] = None,
) -> None:
    """Judge two arms running the same control version (the judge's own false alarms)."""
    from monitors.canary_runner import aa_comparison

    until = end.replace(tzinfo=UTC) if end else datetime.now(UTC)
    result = aa_comparison(
        _engine(),
        model=model,
        site=site,
        start=until - timedelta(days=days),
        end=until,
        units=unit or None,
    )
    typer.echo(f"A/A: {result.description}")
    _print_judgement(result.judgement.to_json())
    for s in result.sequential:
        typer.echo(
            f"    always-valid {s.metric} {s.direction.value}: e-value {s.max_evalue_text}"
            f" ({'REJECTS' if s.rejected else 'no rejection'})"
        )


@canary_app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="The version to promote one stage.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")],
    actor: ActorName,
    role: RoleName,
) -> None:
    """Promote a version to its next stage when its exit criteria are met (audited)."""
    from incidents.promotion import promote as promote_version

    who = _actor(actor, role)
    _run_action(
        lambda: promote_version(_engine(), who, model=model, version=version, reason=reason)
    )


@canary_app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    site: Annotated[str, typer.Option(help="The canary's site.")],
    version: Annotated[str, typer.Option(help="The canary version to switch off.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit log and the page.")],
    actor: ActorName,
    role: RoleName,
    incident_id: Annotated[int | None, typer.Option(help="An existing incident.")] = None,
    incident_title: Annotated[str | None, typer.Option(help="Or a new incident's title.")] = None,
) -> None:
    """Roll a canary back: the kill switch turns its version off at the site (audited)."""
    from incidents.promotion import rollback as rollback_canary

    who = _actor(actor, role)
    _run_action(
        lambda: rollback_canary(
            _engine(),
            who,
            model=model,
            site=site,
            version=version,
            reason=reason,
            incident_id=incident_id,
            incident_title=incident_title,
        )
    )


@canary_app.command("stages")
def stages(model: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """A model's stage changes, newest first: who, when, why."""
    from incidents.promotion import stage_history

    rows = stage_history(_engine(), model=model)
    if not rows:
        typer.echo("no stage changes recorded")
    for r in rows:
        typer.echo(
            f"{r['at']:%Y-%m-%d %H:%M} {r['version']}: {r['from_stage']} → {r['to_stage']} by "
            f"{r['actor']} ({r['role']}): {r['reason']}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(canary_app, name="canary")
