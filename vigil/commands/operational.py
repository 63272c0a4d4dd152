"""`vigil ops`: service levels, feeds, alert burden, sites, scheduler jobs and alert sync."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import pandas as pd
import sqlalchemy as sa
import typer

from vigil.commands.common import engine as _engine
from vigil.config import get_settings

ops_app = typer.Typer(
    help="Operational monitors: SLOs, feeds, alert burden, sites, scheduler jobs.",
    no_args_is_help=True,
)

At = Annotated[
    str | None,
    typer.Option("--at", help="Evaluate as of this moment (ISO UTC), e.g. 2026-08-22T15:00:00Z."),
]


def _moment(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        raise typer.BadParameter("--at needs a time zone, e.g. 2026-08-22T15:00:00Z")
    return moment.astimezone(UTC)


def _echo_frame(frame: pd.DataFrame, empty: str) -> None:
    if frame.empty:
        typer.echo(empty)
        return
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        typer.echo(frame.to_string(index=False))


@ops_app.command("slo")
def slo(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    at: At = None,
) -> None:
    """Every SLO per model × site now (or --at): SLI, budget, burn rates, the rule firing.

    Nothing is written; the scheduler's own runs are on the Service levels page.
    """
    from monitors.slo import SLIS, run_slo_monitor

    engine, moment = _engine(), _moment(at)
    rows = []
    for sli in SLIS:
        for result in run_slo_monitor(engine, sli, moment, write=False):
            burn = result.detail.get("burn") or {}
            rows.append(
                {
                    "slo": result.metric,
                    "site_id": result.site_id,
                    "status": result.status.value,
                    "sli": result.value,
                    "budget_left": result.detail.get("budget_remaining"),
                    "h_to_exhaustion": result.detail.get("hours_to_exhaustion"),
                    **{f"burn_{w}": burn.get(w) for w in ("5m", "1h", "6h", "3d")},
                    "rule": result.detail.get("rule") or "",
                }
            )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.insert(1, "site", frame.pop("site_id").map(_site_codes(engine)))
        if model:
            frame = frame[frame["slo"].str.startswith(f"{model}-")]
    typer.echo(f"as of {moment:%Y-%m-%d %H:%M:%S} UTC")
    _echo_frame(frame, "no SLO evaluated (see config/slos.yaml)")


def _site_codes(engine: sa.engine.Engine) -> dict[int, str]:
    from store.models import Site, table_of

    S = table_of(Site)
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(S.c.id, S.c.code)).all())


@ops_app.command("feeds")
def feeds(
    site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
    at: At = None,
) -> None:
    """Every feed × site a model reads, now (or --at): event-time lag, load staleness, tier."""
    from monitors.config import MonitorConfig
    from monitors.freshness import feed_status_table

    moment = _moment(at)
    table = feed_status_table(_engine(), MonitorConfig.from_file(), moment)
    if site and not table.empty:
        table = table[table["site"] == site]
    columns = ["site", "feed", "status", "event_lag_min", "staleness_min", "reason"]
    typer.echo(f"as of {moment:%Y-%m-%d %H:%M:%S} UTC")
    _echo_frame(table[columns] if not table.empty else table, "no feed to assess")
    if not table.empty and (table["status"] == "breach").any():
        raise typer.Exit(1)


@ops_app.command("burden")
def burden(
    model: Annotated[str, typer.Option(help="Model name.")] = "deterioration",
    site: Annotated[str, typer.Option(help="Site code.")] = "UMC",
    days: Annotated[float, typer.Option(help="Days back.")] = 7.0,
) -> None:
    """Shown alerts per unit and local shift at one site over the last days."""
    from datetime import timedelta

    from monitors.alert_burden import AlertBurdenConfig, by_unit_and_shift
    from monitors.config import MonitorConfig
    from store import queries

    engine = _engine()
    sites = queries.site_directory(engine=engine)
    zones = dict(zip(sites["code"], sites["timezone"], strict=True))
    if site not in zones:
        raise typer.BadParameter(f"unknown site {site!r}; sites: {', '.join(sorted(zones))}")
    models = queries.registry_overview(engine=engine)["models"].set_index("name")
    if model not in models.index:
        raise typer.BadParameter(f"unknown model {model!r}")
    cfg = MonitorConfig.from_file().for_monitor(
        "alert_burden", AlertBurdenConfig, model=model, site=site
    )
    hours = queries.alert_hours(
        engine=engine, model=model, site=site, since=datetime.now(UTC) - timedelta(days=days)
    )
    table = by_unit_and_shift(
        hours,
        tz=zones[site],
        starts=cfg.shift_starts,
        scoring_interval_minutes=int(str(models.loc[model, "scoring_interval_minutes"])),
    )
    _echo_frame(table, "no scores in that period")


@ops_app.command("sites")
def sites_command(
    model: Annotated[str, typer.Option(help="Model name.")] = "deterioration",
) -> None:
    """The latest site comparison: O:E per site with its funnel limits and case mix."""
    from store import queries

    points = queries.latest_points(engine=_engine(), monitors=("site_comparison",), model=model)
    if points.empty:
        typer.echo("no site comparison yet")
        return
    rows = []
    for _, point in points.iterrows():
        detail = point["detail"] or {}
        if point["metric"] == "heterogeneity":
            typer.echo(detail.get("summary", ""))
            continue
        rows.append(
            {
                "site": point["site"],
                "status": point["status"],
                "oe": point["value"],
                "ci": f"{point['ci_low']}-{point['ci_high']}",
                "limits_99.8": (detail.get("limits") or {}).get("99.8"),
                "observed": detail.get("observed"),
                "expected": detail.get("expected"),
                "mean_risk": detail.get("mean_predicted_risk"),
                "observed_rate": detail.get("observed_rate"),
                "expected_rate": detail.get("expected_rate"),
            }
        )
    _echo_frame(pd.DataFrame(rows), "no site results")


@ops_app.command("jobs")
def jobs() -> None:
    """Each scheduler job's last outcome, runs, errors and misses (from `jobstate`)."""
    from store.models import JobState, table_of

    J = table_of(JobState)
    with _engine().connect() as conn:
        rows = conn.execute(
            sa.select(J.c.key, J.c.value).where(J.c.key.like("scheduler.job.%")).order_by(J.c.key)
        ).all()
    frame = pd.DataFrame(
        [{"job": key.removeprefix("scheduler.job."), **json.loads(value)} for key, value in rows]
    )
    columns = ["job", "last_outcome", "last_at", "runs", "errors", "misses", "last_problem"]
    _echo_frame(frame.reindex(columns=columns) if not frame.empty else frame, "no job has run")
    if not frame.empty and (frame["last_outcome"] == "error").any():
        raise typer.Exit(1)


@ops_app.command("sync-alerts")
def sync_alerts_command() -> None:
    """Reconcile every alert with the latest conclusive results of every monitor."""
    from incidents.alerts import sync_all_alerts

    changes = sync_all_alerts(_engine())
    for change in changes.all():
        typer.echo(f"{change.kind}: {change.dedup_key} [{change.severity}] {change.summary}")
    typer.echo(
        f"{len(changes.opened)} opened, {len(changes.escalated)} escalated, "
        f"{len(changes.resolved)} resolved, {changes.updated} updated"
    )


@ops_app.command("cycle")
def cycle() -> None:
    """One full scheduler cycle now: collect the inbox, refresh, every monitor, alerts."""
    from monitors.scheduler import run_cycle

    settings = get_settings()
    report = run_cycle(
        _engine(),
        inbox=settings.inbox_dir,
        processed=settings.processed_dir,
        secret=settings.pseudonym_key,
    )
    for step, seconds in report.timings.items():
        typer.echo(f"{step:32s} {seconds:7.2f} s")
    typer.echo(
        f"{report.files} files, {report.new_predictions} new predictions, "
        f"{len(report.alerts.opened)} alerts opened, {len(report.alerts.resolved)} resolved; "
        f"{report.total_seconds:.2f} s"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(ops_app, name="ops")
