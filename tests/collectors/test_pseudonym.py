"""Raw identifiers never reach the store or the logs, from any source format, good row or bad."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.base import IngestResult
from collectors.pseudonym import EncounterKeys, encounter_key
from collectors.runner import collect_files
from tests.collectors.sources import (
    NOW,
    SECRET,
    adt_message,
    risk_assessment,
    write_csv,
    write_hl7,
    write_ndjson,
    write_parquet,
)
from tests.factories import T0, encounter, outcome, prediction, write_jsonl


def test_the_memoised_keys_are_the_hmac_keys() -> None:
    keys = EncounterKeys("k")
    for encounter_id in ["UMC-E1", "RVH-E2", "UMC-E1", ""]:
        assert keys(encounter_id) == encounter_key(encounter_id, "k")
    assert keys("UMC-E1") != EncounterKeys("other")("UMC-E1")


def _write_every_source(folder: Path) -> list[str]:
    """Files of every format, good and bad rows, each with its own raw identifiers."""
    folder.mkdir()
    ids = [f"UMC-E{n:07d}" for n in range(1, 13)]
    records = [prediction(n, encounter_id=ids[n - 1]) for n in range(1, 4)]
    records.append(prediction(4, encounter_id=ids[3], score=2.0))  # quarantined
    write_jsonl(folder / "predictions-a.jsonl", records)
    renamed = prediction(5)
    renamed["encounterId"] = renamed.pop("encounter_id")  # a renamed field is quarantined
    write_jsonl(folder / "predictions-renamed.jsonl", [renamed, '{"encounter_id": "UMC-E0000005'])
    write_csv(
        folder / "predictions-b.csv",
        [prediction(n, encounter_id=ids[n - 1]) for n in (6, 7)]
        + [prediction(8, encounter_id=ids[7], site="NOWHERE")],
    )
    write_parquet(
        folder / "predictions-c.parquet",
        [prediction(n, encounter_id=ids[n - 1], score=0.2 if n == 9 else 7.0) for n in (9, 10)],
    )
    write_ndjson(
        folder / "riskassessment-d.ndjson",
        [risk_assessment(11), risk_assessment(12, status="entered-in-error")],
    )
    write_jsonl(
        folder / "outcomes-e.jsonl",
        [outcome(ids[0], T0 + timedelta(hours=2)), outcome(ids[1], T0, outcome="nope")],
    )
    write_jsonl(folder / "encounters-f.jsonl", [encounter(ids[2], T0 + timedelta(days=1))])
    write_hl7(
        folder / "adt-g.hl7",
        [adt_message(1), adt_message(2, extra=["Z!!|x"]), adt_message(3, facility="NOWHERE")],
    )
    patient_ids = [f"MRN{n:07d}" for n in range(1, 13)]
    return ids + patient_ids + ["DOE^JANE"]


def _store_text(engine: Engine, db_url: str) -> bytes:
    if db_url.startswith("sqlite"):
        path = Path(sa.engine.make_url(db_url).database or "")
        return b"".join(
            Path(f"{path}{suffix}").read_bytes()
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        return "\n".join(
            str(row)
            for table in list(tables)
            for row in conn.execute(sa.text(f'SELECT t::text FROM "{table}" t')).scalars()
        ).encode()


def test_raw_ids_are_in_neither_the_database_nor_the_logs(
    engine: Engine, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw_ids = _write_every_source(tmp_path / "in")
    caplog.set_level(logging.DEBUG)
    results = list(collect_files(engine, [tmp_path / "in"], secret=SECRET, now=lambda: NOW))
    assert all(isinstance(r, IngestResult) for r in results)
    assert sum(r.inserted for r in results if isinstance(r, IngestResult)) >= 10
    assert sum(r.quarantined for r in results if isinstance(r, IngestResult)) >= 8
    engine.dispose()  # let SQLite write everything out
    stored = _store_text(engine, db_url)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged
    found = [i for i in raw_ids if i.encode() in stored or i in logged]
    assert found == []
    # The keys are there instead (so the check above looked at real content).
    assert encounter_key("UMC-E0000001", SECRET).encode() in stored


def test_a_prediction_id_built_from_the_encounter_id_is_stored_with_its_pseudonym(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    ids = [f"UMC-E{n:07d}" for n in range(1, 4)]
    records = [
        prediction(n, encounter_id=ids[n - 1], prediction_id=f"det-{ids[n - 1]}-{n:03d}")
        for n in range(1, 4)
    ]
    write_jsonl(folder / "predictions-a.jsonl", records)
    write_csv(folder / "predictions-b.csv", [records[0]])  # the same prediction in another file
    results = [r for r in collect_files(engine, [folder], secret=SECRET, now=lambda: NOW)]
    assert [(r.inserted, r.duplicates, r.quarantined) for r in results] == [(3, 0, 0), (0, 1, 0)]
    with engine.connect() as conn:
        stored = list(
            conn.execute(
                sa.text("SELECT prediction_id FROM prediction ORDER BY prediction_id")
            ).scalars()
        )
    expected = sorted(
        f"det-~{encounter_key(raw, SECRET)[:20]}-{n:03d}" for n, raw in enumerate(ids, start=1)
    )
    assert stored == expected
    engine.dispose()
    assert not [raw for raw in ids if raw.encode() in _store_text(engine, db_url)]
