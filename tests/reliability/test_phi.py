"""PHI: after a seeded demo ingest, a monitor cycle, paging to the fake Slack and the monthly
report, the raw encounter ids of the seed files are nowhere: not in the database file, the
logs, the Slack payloads, the report's HTML or its exported PDF (as `pdftotext` reads it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from reports.export import PdfError, chromium_path
from store.models import utcnow
from tests.collectors.test_pseudonym import _store_text
from tests.fakes.slack import TOKEN, FakeSlack
from tests.incidents.conftest import fake_slack
from tests.reliability.conftest import REPO, Record, database_of

__all__ = ["fake_slack"]
SECRET = "phi-scan-secret-key"


def pdf_tools() -> str | None:
    """Why the PDF cannot be printed and read here (None: it can)."""
    try:
        chromium_path()
    except PdfError as exc:
        return str(exc)
    return None if shutil.which("pdftotext") else "no pdftotext (Debian's poppler-utils)"


def pdf_text(folder: Path) -> str:
    """The text of every PDF in `folder`, as a reader (or a copy-paste) gets it."""
    return "\n".join(
        subprocess.run(
            ["pdftotext", "-layout", str(path), "-"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        for path in sorted(folder.glob("*.pdf"))
    )


def _vigil(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "vigil", "-v", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def _raw_ids(folder: Path) -> set[str]:
    ids: set[str] = set()
    for path in folder.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if '"encounter_id"' in line:
                ids.add(json.loads(line)["encounter_id"])
    return ids


@pytest.fixture
def scan(engine: Engine, db_url: str, tmp_path: Path, fake_slack: FakeSlack) -> dict[str, object]:
    """Run the demo path end to end and gather every place an identifier could leak to."""
    seed, inbox = tmp_path / "seed", tmp_path / "inbox"
    env = {
        **os.environ,
        "DO_NOT_TRACK": "1",
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_PSEUDONYM_KEY": SECRET,
        "VIGIL_INBOX_DIR": str(inbox),
        "VIGIL_PROCESSED_DIR": str(tmp_path / "processed"),
        "VIGIL_SLACK_BOT_TOKEN": TOKEN,
        "VIGIL_SLACK_BASE_URL": fake_slack.base_url,
        "VIGIL_SLACK_PAGE_CHANNEL": "CPAGE",
        "VIGIL_SLACK_TICKET_CHANNEL": "CTICKET",
    }
    logs = _vigil(env, "seed", "--out", str(seed), "--days", "2", "--sites", "2")
    raw_ids = _raw_ids(seed)
    shutil.copytree(seed, inbox)
    logs = _vigil(env, "ops", "cycle")  # collect the drop folder, refresh, every monitor
    logs += _vigil(env, "page", "run")
    month = utcnow().strftime("%Y-%m")
    missing = pdf_tools()
    if missing and os.environ.get("CI"):
        pytest.fail(f"the PDF must be scanned in CI: {missing}", pytrace=False)
    out = tmp_path / "report"
    logs += _vigil(
        env, "report", "--month", month, "--out", str(out), *(["--no-pdf"] if missing else [])
    )
    report = "\n".join(p.read_text(encoding="utf-8") for p in out.glob("*.html"))
    pdf = None if missing else pdf_text(out)
    engine.dispose()
    return {
        "raw_ids": raw_ids,
        "database": _store_text(engine, db_url).decode("utf-8", errors="replace"),
        "logs": logs,
        "slack": fake_slack.raw_requests_text(),
        "report": report,
        "pdf": pdf,
        "pdf_missing": missing,
        "pdfs": len(list(out.glob("*.pdf"))),
        "pages": len(fake_slack.messages()),
    }


# The shape of the demo's encounter ids (UMC-E207820022); every raw id must match it, so a
# single pass over each text finds them all.
ID_SHAPE = re.compile(r"[A-Z]{2,5}-E\d{6,}")


def _leaks(text: str, raw_ids: set[str]) -> tuple[int, int]:
    """(ids found anywhere, ids found only inside prediction ids: det-UMC-E…-004, rdm-UMC-E…)."""
    anywhere: set[str] = set()
    elsewhere: set[str] = set()
    for match in ID_SHAPE.finditer(text):
        if match.group() not in raw_ids:
            continue
        anywhere.add(match.group())
        start = match.start()
        if text[start - 1 : start] != "-":  # prediction ids: det-<id>-<n>, rdm-<id>
            elsewhere.add(match.group())
    return len(anywhere), len(anywhere - elsewhere)


def test_no_raw_encounter_id_leaves_ingestion(
    scan: dict[str, object], db_url: str, record: Record
) -> None:
    raw_ids: set[str] = scan["raw_ids"]  # type: ignore[assignment]
    assert len(raw_ids) > 100 and scan["pages"] and scan["report"] and scan["logs"]
    assert all(ID_SHAPE.fullmatch(raw) for raw in raw_ids)
    places = ["database", "logs", "slack", "report"] + (["pdf"] if scan["pdf"] is not None else [])
    if scan["pdf"] is not None:  # a PDF per model, each with text to scan
        assert scan["pdfs"] and len(str(scan["pdf"])) > 1000, scan["pdfs"]
    found = {place: _leaks(str(scan[place]), raw_ids) for place in places}
    outside_prediction_ids = {p: a - only for p, (a, only) in found.items() if a - only}
    record(
        area="phi",
        fault="raw encounter ids of the seed files, after ingest, a monitor cycle, paging and "
        "the report as HTML and PDF (prediction ids aside: next row)",
        database=database_of(db_url),
        expected="none in the database file, logs, Slack payloads, the report's HTML or its "
        "PDF (pdftotext)",
        observed=f"{len(raw_ids)} ids scanned for in "
        + ", ".join(f"{p} ({len(str(scan[p])) // 1024} KiB)" for p in found)
        + f": {sum(outside_prediction_ids.values())} found"
        + (f" {outside_prediction_ids}" if outside_prediction_ids else "")
        + (f"; the PDF was not scanned: {scan['pdf_missing']}" if scan["pdf"] is None else ""),
        trials=1,
        failures=int(bool(outside_prediction_ids)),
    )
    assert not outside_prediction_ids, outside_prediction_ids
    in_prediction_ids = found["database"][1]
    record(
        area="phi",
        fault="raw encounter ids embedded in the seed's prediction ids (det-<encounter>-<n>, "
        "rdm-<encounter>)",
        database=database_of(db_url),
        expected="stored prediction ids carry the encounter's pseudonym, never the raw id",
        observed=f"{in_prediction_ids} of {len(raw_ids)} encounter ids readable inside stored "
        "prediction ids",
        trials=1,
        failures=int(bool(in_prediction_ids)),
    )
    for place in places[1:]:
        assert found[place] == (0, 0), (place, found[place])
    assert in_prediction_ids == 0
    if scan["pdf"] is None:
        pytest.skip(f"the PDF was not scanned (outside CI): {scan['pdf_missing']}")
