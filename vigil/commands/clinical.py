"""Clinical-quality commands: an Evidently drift report on demand, and the CUSUM limits."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from vigil.commands.common import engine as _engine


def drift_report(
    model: Annotated[str, typer.Option(help="Model name, e.g. deterioration.")],
    site: Annotated[str, typer.Option(help="Site code, e.g. LKS.")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("drift-report.html"),
    sample: Annotated[int, typer.Option(help="Rows sampled from each window.")] = 20_000,
    at: Annotated[
        str | None, typer.Option(help="End of the current window, ISO UTC (default: now).")
    ] = None,
) -> None:
    """Write Evidently's data-drift report of a site's current window against its reference."""
    from monitors.drift_report import build_drift_report

    now = datetime.fromisoformat(at).astimezone(UTC) if at else datetime.now(UTC)
    try:
        html = build_drift_report(_engine(), model=model, site=site, now=now, sample=sample)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out.write_text(html, encoding="utf-8")
    typer.echo(f"drift report for {model} at {site} written to {out}")


def cusum_limits(
    model: Annotated[str, typer.Option(help="Model name.")],
) -> None:
    """Show the CUSUM control limits per site and direction, and the run lengths behind them."""
    from store.queries import cusum_limits as query

    limits = query(engine=_engine(), model=model)
    if limits.empty:
        typer.echo("no limits yet: the calibration_drift monitor sets them once a site's "
                   "reference window has passed")  # fmt: skip
        return
    for row in limits.to_dict("records"):
        ooc = row["out_of_control_arl_days"]
        typer.echo(
            f"{row['site']} {row['direction']}: h = {row['limit']:.3f} (odds ratio "
            f"{row['odds_ratio']:g}); in-control ARL {row['simulated_arl_days']:.0f} days "
            f"(target {row['target_arl_days']:.0f}), out-of-control ARL "
            f"{'?' if ooc is None or ooc != ooc else f'{ooc:.0f}'} days"
        )


def register(app: typer.Typer) -> None:
    app.command("drift-report")(drift_report)
    app.command("cusum-limits")(cusum_limits)
