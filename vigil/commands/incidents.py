"""Incident-response commands: the consumer API, the audit log, the kill switch, alerts, paging.

Actions taken here go through the same functions as the console's buttons, which check the
actor's role and audit the change. On the command line the actor is named with --actor and
--role: shell access to the Vigil host is itself the trust boundary.
"""

from __future__ import annotations

import getpass
import hashlib
from collections.abc import Callable
from typing import Annotated, Any

import typer

from vigil.commands.common import actor as _actor
from vigil.commands.common import engine as _engine
from vigil.commands.common import run_action as _run_action
from vigil.config import get_settings

ActorName = Annotated[str, typer.Option("--actor", help="Your name, for the audit log.")]
RoleName = Annotated[
    str,
    typer.Option(
        "--role",
        help="Your role: viewer, clinical_lead, oncall, incident_responder or admin.",
    ),
]


def api(
    host: Annotated[str | None, typer.Option(help="Interface (default VIGIL_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default VIGIL_API_PORT).")] = None,
) -> None:
    """Serve the consumer API: kill-switch status and CDS Hooks."""
    import uvicorn

    from incidents.api import create_app

    settings = get_settings()
    if not settings.api_token_hashes:
        typer.echo("error: no API tokens configured (VIGIL_API_TOKENS)", err=True)
        raise typer.Exit(2)
    uvicorn.run(
        create_app(settings=settings),
        host=host or settings.api_host,
        port=port if port is not None else settings.api_port,
        log_level=settings.log_level.lower(),
    )


def hash_token() -> None:
    """Print the SHA-256 of an API token (typed at the prompt) for VIGIL_API_TOKENS."""
    token = getpass.getpass("API token: ")
    if len(token) < 16:
        typer.echo("error: use a token of at least 16 characters", err=True)
        raise typer.Exit(2)
    typer.echo(hashlib.sha256(token.encode("utf-8")).hexdigest())


# ---------------------------------------------------------------- audit

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every audit event's hash and link; exit 1 naming the first broken link."""
    from incidents.audit import verify_chain

    report = verify_chain(_engine())
    typer.echo(str(report), err=not report.ok)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("log")
def audit_log(
    limit: Annotated[int, typer.Option(help="How many events, newest first.")] = 20,
    target: Annotated[str | None, typer.Option(help="Only targets containing this.")] = None,
) -> None:
    """Show the newest audit events."""
    from incidents.audit import recent_events

    for event in recent_events(_engine(), limit=limit, target_contains=target):
        detail = event["detail"] or {}
        why = detail.get("reason") or detail.get("note") or detail.get("title") or ""
        typer.echo(
            f"#{event['id']} {event['at']:%Y-%m-%d %H:%M:%S} {event['actor']} "
            f"({event['role']}) {event['action']} {event['target']}" + (f" — {why}" if why else "")
        )


# ---------------------------------------------------------------- kill switch

score_app = typer.Typer(help="The kill switch: show, disable or re-enable scores.")


@score_app.command("status")
def score_status_command(
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """Every deployment's score status (enabled or suppressed, and why)."""
    from incidents.killswitch import all_statuses

    for status in all_statuses(_engine()):
        if model and status.model != model:
            continue
        line = f"{status.model} {status.version} at {status.site} ({status.arm}): {status.state}"
        if status.reason:
            line += f" since {status.since:%Y-%m-%d %H:%M} UTC — {status.reason}"
        typer.echo(line)


def _score_change(
    enable: bool,
    model: str,
    site: str | None,
    all_sites: bool,
    version: str | None,
    reason: str,
    incident: int | None,
    incident_title: str | None,
    actor: str,
    role: str,
) -> None:
    from incidents import actions

    if (site is None) == (not all_sites):
        raise typer.BadParameter("give --site CODE or --all-sites")
    change = actions.enable_score if enable else actions.disable_score
    who = _actor(actor, role)
    _run_action(
        lambda: change(
            _engine(),
            who,
            model=model,
            site=site,
            version=version,
            reason=reason,
            incident_id=incident,
            incident_title=incident_title,
        )
    )


@score_app.command("disable")
def score_disable(
    model: Annotated[str, typer.Argument(help="Model name, e.g. deterioration.")],
    reason: Annotated[str, typer.Option(help="Why (shown to consumers; no patient data).")],
    actor: ActorName,
    role: RoleName,
    site: Annotated[str | None, typer.Option(help="Site code, e.g. UMC.")] = None,
    all_sites: Annotated[bool, typer.Option(help="Every site of the model.")] = False,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    incident: Annotated[int | None, typer.Option(help="Existing incident number.")] = None,
    incident_title: Annotated[str | None, typer.Option(help="Open a new incident.")] = None,
) -> None:
    """Switch a model's score off at a site (or every site)."""
    _score_change(
        False, model, site, all_sites, version, reason, incident, incident_title, actor, role
    )


@score_app.command("enable")
def score_enable(
    model: Annotated[str, typer.Argument(help="Model name, e.g. deterioration.")],
    reason: Annotated[str, typer.Option(help="Why it is safe again.")],
    actor: ActorName,
    role: RoleName,
    site: Annotated[str | None, typer.Option(help="Site code, e.g. UMC.")] = None,
    all_sites: Annotated[bool, typer.Option(help="Every site of the model.")] = False,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    incident: Annotated[int | None, typer.Option(help="Existing incident number.")] = None,
    incident_title: Annotated[str | None, typer.Option(help="Open a new incident.")] = None,
) -> None:
    """Switch a score back on (the same scope that was switched off)."""
    _score_change(
        True, model, site, all_sites, version, reason, incident, incident_title, actor, role
    )


# ---------------------------------------------------------------- alert thresholds

threshold_app = typer.Typer(
    help="Deployment alert thresholds: show or change them.", no_args_is_help=True
)


@threshold_app.command("list")
def threshold_list(
    model: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """Every deployment's alert threshold."""
    from store.queries import registry_overview

    deployments = registry_overview(engine=_engine())["deployments"]
    if deployments.empty:
        typer.echo("no deployments")
    for row in deployments.to_dict("records"):
        if model and row["model"] != model:
            continue
        unit = f", unit {row['unit']}" if row["unit"] else ""
        typer.echo(
            f"{row['model']} {row['version']} at {row['site']} ({row['arm']}{unit}): "
            f"{row['alert_threshold']:g}"
        )


@threshold_app.command("set")
def threshold_set(
    model: Annotated[str, typer.Argument(help="Model name, e.g. deterioration.")],
    site: Annotated[str, typer.Option(help="Site code, e.g. UMC.")],
    value: Annotated[float, typer.Option(help="The new threshold, between 0 and 1.")],
    reason: Annotated[str, typer.Option(help="Why (audited; no patient data).")],
    actor: ActorName,
    role: RoleName,
    version: Annotated[
        str | None, typer.Option(help="The version (needed when several run in the arm).")
    ] = None,
    arm: Annotated[str, typer.Option(help="control, canary or shadow.")] = "control",
    unit: Annotated[str, typer.Option(help="The unit, for a single-unit deployment.")] = "",
) -> None:
    """Change a deployment's alert threshold (clinical leads and admins)."""
    from incidents import actions

    who = _actor(actor, role)
    _run_action(
        lambda: actions.set_alert_threshold(
            _engine(),
            who,
            model=model,
            site=site,
            threshold=value,
            reason=reason,
            version=version,
            arm=arm,
            unit=unit,
        )
    )


# ---------------------------------------------------------------- alerts

alert_app = typer.Typer(help="Alerts: list, acknowledge, escalate, resolve, page now.")


@alert_app.command("list")
def alert_list(
    all_alerts: Annotated[bool, typer.Option("--all", help="Include resolved alerts.")] = False,
) -> None:
    """Open alerts, pages first."""
    from incidents.console import alerts_frame

    frame = alerts_frame(_engine(), include_resolved=all_alerts)
    if frame.empty:
        typer.echo("no alerts")
    for row in frame.to_dict("records"):
        typer.echo(
            f"#{row['id']} {str(row['severity']).upper()} {row['status']} {row['model']} at "
            f"{row['site']} [{row['runbook']}] — {row['summary']}"
        )


def _alert_command(action: str, summary: str, note: Any) -> Callable[..., None]:
    """A command that runs one alert action (`incidents.actions.<action>`) as the actor."""

    def command(
        alert_id: Annotated[int, typer.Argument(help="Alert number.")],
        actor: ActorName,
        role: RoleName,
        note: str = note,
    ) -> None:
        from incidents import actions

        call = getattr(actions, action)
        who = _actor(actor, role)
        _run_action(lambda: call(_engine(), who, alert_id=alert_id, note=note))

    command.__doc__ = summary
    return command


for _name, _action, _summary, _note in (
    ("ack", "acknowledge_alert", "Acknowledge an alert (stops re-paging).",
     typer.Option("", help="Optional note.")),
    ("escalate", "escalate_alert",
     "Escalate an alert (a ticket becomes a page; the escalation group is called).",
     typer.Option(..., help="Why, and whom you need.")),
    ("resolve", "resolve_alert", "Resolve an alert by hand.",
     typer.Option(..., help="What was done.")),
    ("page", "page_now", "Page the on-call about an alert now.",
     typer.Option(..., help="What you need from the on-call.")),
):  # fmt: skip
    alert_app.command(_name)(_alert_command(_action, _summary, _note))


# ---------------------------------------------------------------- paging

page_app = typer.Typer(help="Slack paging: the outbox.", no_args_is_help=True)


@page_app.command("run")
def page_run() -> None:
    """Queue the pages the alerts call for and deliver what is due (the scheduler's job)."""
    from incidents.paging import deliver_pending, slack_client, sync_pages

    settings = get_settings()
    engine = _engine()
    queued = sync_pages(engine, settings=settings)
    typer.echo(f"{queued} page(s) queued")
    if not settings.slack_bot_token:
        typer.echo("Slack is not configured (VIGIL_SLACK_BOT_TOKEN): nothing sent", err=True)
        raise typer.Exit(1)
    typer.echo(str(deliver_pending(engine, slack_client(settings), settings=settings)))


@page_app.command("status")
def page_status() -> None:
    """Outbox counts, and every undeliverable page with its last error."""
    from incidents.paging import outbox_counts, outbox_entries

    engine = _engine()
    counts = outbox_counts(engine)
    typer.echo(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "empty")
    for entry in outbox_entries(engine, statuses=("failed",)):
        typer.echo(
            f"FAILED #{entry['id']} {entry['dedup_key']} → {entry['channel']} after "
            f"{entry['attempts']} attempt(s): {entry['last_error']}"
        )
    if counts.get("failed"):
        raise typer.Exit(1)


@page_app.command("retry")
def page_retry(
    outbox_id: Annotated[int, typer.Argument(help="Outbox entry number (vigil page status).")],
    actor: ActorName,
    role: RoleName,
) -> None:
    """Queue an undeliverable page again."""
    from incidents import actions

    who = _actor(actor, role)
    _run_action(lambda: actions.retry_page(_engine(), who, outbox_id=outbox_id))


def register(app: typer.Typer) -> None:
    app.command("api")(api)
    app.command("hash-token")(hash_token)
    app.add_typer(audit_app, name="audit")
    app.add_typer(score_app, name="score")
    app.add_typer(threshold_app, name="threshold")
    app.add_typer(alert_app, name="alert")
    app.add_typer(page_app, name="page")
