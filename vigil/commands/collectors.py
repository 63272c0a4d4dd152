"""Collector commands: `vigil collect`, `vigil quarantine`, `vigil contracts`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vigil.commands.common import engine as _engine
from vigil.config import get_settings


def collect(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of source files.")],
    batch_size: Annotated[
        int, typer.Option(min=1, help="Lines, rows or messages per committed chunk.")
    ] = 20_000,
    refresh_rollups: Annotated[
        bool, typer.Option("--refresh/--no-refresh", help="Settle labels and roll up after.")
    ] = True,
    helper: Annotated[
        bool | None,
        typer.Option(
            "--helper/--no-helper",
            help="Validate in helper processes while writing (default: files over 16 MB, if a "
            "core is idle).",
        ),
    ] = None,
) -> None:
    """Ingest source files: predictions-*.jsonl|csv|parquet, riskassessment-*.ndjson,
    outcomes-*, encounters-*, heartbeats-*.jsonl|csv and adt-*.hl7 (docs/contracts.md).

    Bad rows are quarantined and the rest lands; a file that cannot be read at all is named
    and the command exits 1. Rerunning adds nothing; a killed run resumes where it stopped.
    """
    from collectors.base import FileUnreadable
    from collectors.runner import collect_files, expand

    engine = _engine()
    files = expand(paths)
    if not files:
        typer.echo("error: no source files found", err=True)
        raise typer.Exit(2)
    total = sum(p.stat().st_size if p.is_file() else 0 for p in files)
    failed = 0
    totals = {"inserted": 0, "duplicates": 0, "quarantined": 0}
    with typer.progressbar(length=max(total, 1), label="collecting", file=sys.stderr) as bar:
        for outcome in collect_files(
            engine,
            files,
            secret=get_settings().pseudonym_key,
            batch_units=batch_size,
            progress=bar.update,
            helper=helper,
        ):
            if isinstance(outcome, FileUnreadable):
                failed += 1
                typer.echo(f"\nerror: {outcome}", err=True)
                continue
            totals["inserted"] += outcome.inserted
            totals["duplicates"] += outcome.duplicates
            totals["quarantined"] += outcome.quarantined
    summary = (
        f"{len(files) - failed} files: {totals['inserted']} rows inserted, "
        f"{totals['duplicates']} duplicates skipped, {totals['quarantined']} quarantined"
    )
    if refresh_rollups:
        from store.rollups import refresh

        summary += f"; {refresh(engine).hours_rebuilt} rollup hours rebuilt"
    typer.echo(summary)
    if failed:
        typer.echo(f"{failed} file(s) could not be read", err=True)
        raise typer.Exit(1)


def quarantine(
    source: Annotated[str | None, typer.Option(help="Only this source (e.g. predictions).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason code.")] = None,
    rows: Annotated[int, typer.Option(help="Also list this many recent rows.")] = 0,
) -> None:
    """Quarantined input: counts per source and reason, and optionally the latest rows."""
    from collectors.quarantine import quarantine_counts, recent_quarantine

    engine = _engine()
    counts = quarantine_counts(engine=engine, source=source, reason=reason)
    if counts.empty:
        typer.echo("nothing quarantined")
        return
    typer.echo(counts.to_string(index=False))
    if rows:
        typer.echo("")
        recent = recent_quarantine(engine=engine, source=source, reason=reason, limit=rows)
        recent["file"] = recent["file"].map(lambda f: Path(f).name)
        for column in ("detail", "raw"):
            recent[column] = recent[column].str.slice(0, 60)
        typer.echo(recent.to_string(index=False))


def contracts(
    check: Annotated[
        bool, typer.Option(help="Only check that docs/contracts.md is up to date.")
    ] = False,
) -> None:
    """Write docs/contracts.md from the contracts in collectors/contracts.py."""
    from collectors.docs import CONTRACTS_MD, render, write

    if check:
        current = CONTRACTS_MD.read_text(encoding="utf-8") if CONTRACTS_MD.exists() else ""
        if current != render():
            typer.echo(f"{CONTRACTS_MD} is out of date: run `vigil contracts`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{CONTRACTS_MD} is up to date")
        return
    typer.echo(f"wrote {write()}")


def register(app: typer.Typer) -> None:
    app.command()(collect)
    app.command()(quarantine)
    app.command()(contracts)
