"""The line limit is a setting (VIGIL_MAX_LINE_BYTES): every line-framed reader applies the
configured value, and the settings refuse values no reader could work with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from collectors import contracts
from collectors.contracts import size_text
from store.models import Prediction, Quarantine, table_of
from tests.collectors.sources import risk_assessment, write_csv, write_ndjson
from tests.factories import prediction, write_jsonl
from vigil.config import Settings

REPO = Path(__file__).resolve().parents[2]
P, Q = table_of(Prediction), table_of(Quarantine)
LIMIT = 2048
# Line lengths around the configured limit, each padded to exactly that many bytes.
LENGTHS = (LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT)


def _padded_json(record: dict[str, Any], length: int) -> str:
    """The record as one JSON line of exactly `length` bytes: an unknown `pad` field in a
    prediction log, a FHIR `note` in a RiskAssessment (FHIR refuses unknown fields)."""

    def padded(pad: str) -> str:
        if record.get("resourceType") == "RiskAssessment":
            return json.dumps({**record, "note": [{"text": pad}]})
        return json.dumps({**record, "pad": pad})

    text = padded("x" * (length - len(padded(""))))
    assert len(text) == length
    return text


def _files(folder: Path) -> dict[str, Path]:
    """One file per line-framed format, each with one line of every length in LENGTHS among
    ordinary lines."""
    jsonl, csv_rows, ndjson = [], [], []
    for i, length in enumerate(LENGTHS):
        jsonl += [prediction(100 + 2 * i), _padded_json(prediction(101 + 2 * i), length)]
        row = prediction(200 + i)
        row["pad"] = ""  # an unknown column (ignored), the last: the padding goes there
        csv_rows.append(row)
        ndjson += [risk_assessment(300 + 2 * i), _padded_json(risk_assessment(301 + 2 * i), length)]
    first = csv_rows[0]
    columns = [k for k in first if k not in ("inputs", "pad")]
    columns += [f"inputs.{name}" for name in first["inputs"]] + ["pad"]
    csv_path = write_csv(folder / "predictions-limit.csv", csv_rows, columns)
    # Pad each CSV data line to its length in the last column (line lengths exclude the "\n").
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    padded = [lines[0]] + [
        line + "x" * (length - len(line)) for line, length in zip(lines[1:], LENGTHS, strict=True)
    ]
    csv_path.write_text("\n".join(padded) + "\n", encoding="utf-8")
    return {
        "jsonl": write_jsonl(folder / "predictions-limit.jsonl", jsonl),  # type: ignore[arg-type]
        "csv": csv_path,
        "ndjson": write_ndjson(folder / "riskassessment-limit.ndjson", ndjson),
    }


def _collect(db_url: str, paths: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "vigil", "collect", "--no-refresh", *map(str, paths)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "DO_NOT_TRACK": "1", "VIGIL_DATABASE_URL": db_url, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _too_long(engine: Engine) -> dict[str, list[str]]:
    """The line_too_long details quarantined, per file."""
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for source_file, detail in conn.execute(
            sa.select(Q.c.source_file, Q.c.detail)
            .where(Q.c.reason == "line_too_long")
            .order_by(Q.c.source_file, Q.c.id)
        ):
            found.setdefault(Path(source_file).name, []).append(str(detail))
    return found


def test_every_line_reader_applies_the_configured_limit(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    _collect(db_url, list(files.values()), VIGIL_MAX_LINE_BYTES=str(LIMIT))
    over = [n for n in LENGTHS if n > LIMIT]
    want = {path.name: [f"{n} bytes > {LIMIT}" for n in over] for path in files.values()}
    # The CSV reader counts a refused line with its line end.
    want[files["csv"].name] = [f"{n + 1} bytes > {LIMIT}" for n in over]
    assert _too_long(engine) == want
    with engine.connect() as conn:
        landed = conn.execute(sa.select(sa.func.count()).select_from(P)).scalar_one()
    # JSONL and NDJSON: 4 plain lines each and the 2 padded lines at or under the limit; CSV:
    # the 2 rows at or under it.
    assert landed == 2 * (len(LENGTHS) + 2) + 2


def test_the_default_limit_reads_the_same_lines(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    files = _files(tmp_path)
    _collect(db_url, list(files.values()))
    assert _too_long(engine) == {}
    with engine.connect() as conn:
        landed = conn.execute(sa.select(sa.func.count()).select_from(P)).scalar_one()
    assert landed == 3 * len(LENGTHS) + 2 * len(LENGTHS)


def test_the_setting_is_read_from_the_environment_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(_env_file=None).max_line_bytes == 64 * 1024 == contracts.MAX_LINE_BYTES
    monkeypatch.setenv("VIGIL_MAX_LINE_BYTES", "131072")
    assert Settings(_env_file=None).max_line_bytes == 131072
    for bad in ("0", "1023", str(64 * 1024**2 + 1), "lots"):
        monkeypatch.setenv("VIGIL_MAX_LINE_BYTES", bad)
        with pytest.raises(ValidationError, match="max_line_bytes"):
            Settings(_env_file=None)


def test_the_reason_text_names_the_limit_as_configured() -> None:
    assert contracts.REASONS["line_too_long"] == "a line longer than 64 KiB"
    assert (size_text(2048), size_text(1500)) == ("2 KiB", "1500 bytes")
    done = subprocess.run(
        [sys.executable, "-c", "from collectors.contracts import REASONS, MAX_LINE_BYTES;"
         "from collectors import formats, fhir;"
         "print(MAX_LINE_BYTES, formats.MAX_LINE_BYTES, fhir.MAX_LINE_BYTES,"
         " REASONS['line_too_long'])"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "VIGIL_MAX_LINE_BYTES": "1500"},
    )  # fmt: skip
    assert done.stdout.strip() == "1500 1500 1500 a line longer than 1500 bytes", done.stderr
