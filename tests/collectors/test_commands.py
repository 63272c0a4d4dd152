"""`vigil collect`, `vigil quarantine`, `vigil contracts`, and the drop folder."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from collectors.docs import CONTRACTS_MD, render
from collectors.runner import collect_inbox, expand
from store.models import FeedStatus, Prediction, Quarantine, table_of
from tests.collectors.sources import adt_message, write_csv, write_hl7, write_parquet
from tests.factories import prediction, write_jsonl
from vigil.cli import app
from vigil.config import get_settings

runner = CliRunner()
RECENT = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def _count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table_of(model))).scalar_one()
        )


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("VIGIL_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _p(n: int, **overrides: object) -> dict[str, object]:
    return prediction(n, scored=RECENT + timedelta(minutes=n), **overrides)


def test_collect_takes_every_format_reports_counts_and_names_the_unreadable_file(
    cli_env: None, engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "predictions-a.jsonl", [_p(1), _p(2, score=1.7)])
    write_csv(folder / "predictions-b.csv", [_p(3), _p(4)])
    write_parquet(folder / "predictions-c.parquet", [_p(5)])
    write_hl7(folder / "adt-d.hl7", [adt_message(1, sent=RECENT), adt_message(2, sent=RECENT)])
    (folder / "predictions-broken.parquet").write_bytes(b"PAR1 not really")
    (folder / ".predictions-hidden.jsonl").write_text("{}")  # being written: left alone
    (folder / "README.txt").write_text("not a source")
    result = runner.invoke(app, ["collect", str(folder), "--batch-size", "1"])
    assert result.exit_code == 1, result.output
    assert f"{folder / 'predictions-broken.parquet'}: not a readable Parquet file" in result.output
    assert "4 files: 6 rows inserted, 0 duplicates skipped, 1 quarantined" in result.output
    assert _count(engine, Prediction) == 4
    again = runner.invoke(app, ["collect", str(folder / "predictions-b.csv")])
    assert again.exit_code == 0
    assert "1 files: 0 rows inserted" in again.output


def test_quarantine_lists_counts_per_source_and_reason(
    cli_env: None, engine: Engine, tmp_path: Path
) -> None:
    assert "nothing quarantined" in runner.invoke(app, ["quarantine"]).output
    write_jsonl(tmp_path / "predictions-q.jsonl", [_p(1, score=2.0), _p(2, score=3.0), "{"])
    runner.invoke(app, ["collect", str(tmp_path / "predictions-q.jsonl"), "--no-refresh"])
    result = runner.invoke(app, ["quarantine", "--rows", "5"])
    assert result.exit_code == 0
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[1][:4] == ["predictions", "out_of_range", "2", "1"]
    assert lines[2][:4] == ["predictions", "invalid_json", "1", "1"]
    assert "line 3" in result.output
    assert _count(engine, Quarantine) == 3


def test_contracts_document_is_generated_from_the_code(cli_env: None) -> None:
    assert CONTRACTS_MD.read_text(encoding="utf-8") == render(), "run `vigil contracts`"
    result = runner.invoke(app, ["contracts", "--check"])
    assert result.exit_code == 0, result.output


def test_the_drop_folder_takes_new_formats_and_moves_files_out(
    engine: Engine, tmp_path: Path
) -> None:
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    inbox.mkdir()
    write_csv(inbox / "predictions-1.csv", [_p(1)])
    write_hl7(inbox / "adt-1.hl7", [adt_message(1, sent=RECENT)])
    (inbox / "predictions-2.jsonl.partial").write_text("half a file")
    (inbox / "outcomes-1.jsonl").write_bytes(b"")
    results = collect_inbox(engine, inbox, processed, secret="s")
    assert len(results) == 3
    assert sorted(p.name for p in inbox.iterdir()) == ["predictions-2.jsonl.partial"]
    assert [p.name for p in (processed / "rejected").iterdir()] == ["outcomes-1.jsonl"]
    assert _count(engine, Prediction) == 1
    assert _count(engine, FeedStatus) == 1


def test_predictions_are_read_before_the_labels_of_the_same_day(tmp_path: Path) -> None:
    names = [
        "outcomes-2026-09-01.csv",
        "adt-2026-09-01.hl7",
        "RiskAssessment-2026-09-01.ndjson",
        "predictions-2026-09-01.parquet",
        "encounters-2026-08-31.jsonl",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    assert [p.name for p in expand([tmp_path])] == [
        "encounters-2026-08-31.jsonl",
        "predictions-2026-09-01.parquet",
        "RiskAssessment-2026-09-01.ndjson",
        "outcomes-2026-09-01.csv",
        "adt-2026-09-01.hl7",
    ]
