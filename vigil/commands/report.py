"""The monthly governance report: `vigil report --month YYYY-MM [--model M] --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.commands.common import actor as _actor
from vigil.commands.common import engine as _engine
from vigil.commands.common import run_action as _run_action
from vigil.config import get_settings


def report(
    month: Annotated[
        str | None,
        typer.Option(help="The month, YYYY-MM (default: the last complete month, UTC)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (default: all).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder to write the HTML and PDF into (default: VIGIL_REPORTS_DIR)."),
    ] = None,
    pdf: Annotated[bool, typer.Option(help="Also print the PDF (needs Chromium).")] = True,
    actor: Annotated[str, typer.Option("--actor", help="Your name, for the audit log.")] = (
        "vigil-cli"
    ),
    role: Annotated[str, typer.Option("--role", help="Your role (any role may export).")] = (
        "viewer"
    ),
) -> None:
    """Write the governance report of one month: self-contained HTML and a PDF."""
    from reports.export import PdfError, export_report
    from reports.governance import Month
    from store.models import utcnow

    try:
        chosen = Month.parse(month) if month else Month.last_complete(utcnow())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from exc
    who = _actor(actor, role)

    def run() -> object:
        try:
            folder = out or get_settings().reports_dir
            return export_report(_engine(), who, month=chosen, out_dir=folder, model=model, pdf=pdf)
        except PdfError as exc:
            raise ValueError(str(exc)) from exc

    _run_action(run)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
