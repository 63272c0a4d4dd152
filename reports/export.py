"""Exporting the governance report: permission, files (HTML and PDF) and the audit event.

The PDF is printed by Debian's headless Chromium from the report's print variant (static SVG
charts), in a fresh profile with networking features off.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from incidents import audit
from incidents.auth import Action, Actor, Role, authorize
from reports.governance import GovernanceReport, Month, gather_report
from reports.model_cards import DEFAULT_CARDS_DIR
from reports.render import render_html
from store.models import utcnow

logger = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-pdf-header-footer",
)
PDF_TIMEOUT_SECONDS = 120


class PdfError(RuntimeError):
    """The PDF could not be printed; the message says why."""


@dataclass(frozen=True)
class ExportResult:
    message: str
    html: Path
    pdf: Path | None
    digest: str  # the audit event's hash
    report: GovernanceReport


def chromium_path() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise PdfError(
        "no Chromium found for printing the PDF (install Debian's chromium: make system-deps)"
    )


def print_pdf(html_path: Path, pdf_path: Path, *, timeout: float = PDF_TIMEOUT_SECONDS) -> Path:
    """Print an HTML file to PDF with headless Chromium in a throwaway profile."""
    binary = chromium_path()
    pdf_path.unlink(missing_ok=True)  # a stale file must not pass for a fresh print
    with tempfile.TemporaryDirectory(prefix="vigil-chromium-") as profile:
        command = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--print-to-pdf={pdf_path.resolve()}",
            html_path.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PdfError(f"Chromium did not print {html_path.name} within {timeout:g} s") from exc
    if done.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise PdfError(f"Chromium failed to print {html_path.name}: {' | '.join(tail)}")
    return pdf_path


def report_stem(month: Month, model: str | None) -> str:
    return f"governance-{month.label}" + (f"-{model}" if model else "")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_report(
    engine: Engine,
    actor: Actor,
    *,
    month: Month,
    out_dir: Path,
    model: str | None = None,
    pdf: bool = True,
    cards_dir: Path = DEFAULT_CARDS_DIR,
    now: datetime | None = None,
) -> ExportResult:
    """Write the month's report (HTML, and PDF unless pdf=False) into `out_dir`.

    Permission first (EXPORT_REPORT); the files are written, then one audit event records who
    exported which month and the files' SHA-256.
    """
    authorize(actor, Action.EXPORT_REPORT)
    now = now or utcnow()
    report = gather_report(engine, month, model=model, cards_dir=cards_dir, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(month, model)
    html_path = out_dir / f"{stem}.html"
    html_path.write_text(render_html(report, interactive=True), encoding="utf-8")
    pdf_path: Path | None = None
    if pdf:
        with tempfile.TemporaryDirectory(prefix="vigil-report-") as scratch:
            print_html = Path(scratch) / f"{stem}-print.html"
            print_html.write_text(render_html(report, interactive=False), encoding="utf-8")
            pdf_path = print_pdf(print_html, out_dir / f"{stem}.pdf")
    files = {html_path.name: _sha256(html_path)}
    if pdf_path is not None:
        files[pdf_path.name] = _sha256(pdf_path)
    with engine.begin() as conn:
        digest = audit.append(
            conn,
            actor=actor.name,
            role=actor.role.value,
            action=Action.EXPORT_REPORT.value,
            target=f"report:{month.label}" + (f":{model}" if model else ""),
            detail={"files": files, "models": [m.model for m in report.models]},
            at=now,
        )
    written = ", ".join(str(p) for p in (html_path, pdf_path) if p is not None)
    logger.info("governance report %s exported by %s", month.label, actor)
    return ExportResult(
        f"report for {month.label} written: {written}", html_path, pdf_path, digest, report
    )


SCHEDULER_ACTOR = Actor("vigil-scheduler", Role.VIEWER)


def monthly_report_job(now: datetime | None = None) -> ExportResult:
    """The scheduler's job on the 1st: the month just ended, into the reports directory."""
    from store.db import make_engine
    from vigil.config import get_settings

    settings = get_settings()
    now = now or utcnow()
    month = Month.last_complete(now)
    engine = make_engine(settings.database_url)
    try:
        try:
            return export_report(
                engine, SCHEDULER_ACTOR, month=month, out_dir=settings.reports_dir, now=now
            )
        except PdfError as exc:
            # The board still gets the HTML; the missing PDF is logged as an error.
            logger.error("governance report %s: %s; writing the HTML only", month.label, exc)
            return export_report(
                engine,
                SCHEDULER_ACTOR,
                month=month,
                out_dir=settings.reports_dir,
                pdf=False,
                now=now,
            )
    finally:
        engine.dispose()
