"""JSON Lines collectors: contracts, quarantine, idempotency, pseudonymisation."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.base import FileUnreadable
from collectors.pseudonym import encounter_key
from collectors.runner import collect_files
from store.models import Encounter, FeedStatus, Outcome, Prediction, Quarantine, table_of
from tests.factories import T0, encounter, heartbeat, outcome, prediction, write_jsonl

SECRET = "test-secret"


def _count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table_of(model))).scalar_one()
        )


def _collect(engine: Engine, *paths: Path) -> list:
    return list(
        collect_files(engine, list(paths), secret=SECRET, now=lambda: T0 + timedelta(days=30))
    )


def test_good_rows_land_and_bad_rows_are_quarantined_with_reason_and_line(
    engine: Engine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "predictions-a.jsonl",
        [
            prediction(1),
            "{not json",
            prediction(2, score=1.7),
            prediction(3, site="NOWHERE"),
            prediction(4, scored_at="2026-09-01T04:00:00"),
            prediction(5),
        ],
    )
    [result] = _collect(engine, path)
    assert (result.lines, result.inserted, result.quarantined) == (6, 2, 4)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table_of(Quarantine).c.location, table_of(Quarantine).c.reason).order_by(
                table_of(Quarantine).c.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("line 2", "invalid_json"),
        ("line 3", "out_of_range"),
        ("line 5", "naive_timestamp"),
        ("line 4", "unknown_site"),
    ]


def test_rerun_adds_nothing_and_conflicting_duplicate_is_quarantined(
    engine: Engine, tmp_path: Path
) -> None:
    first = write_jsonl(tmp_path / "predictions-1.jsonl", [prediction(i) for i in range(1, 11)])
    _collect(engine, first)
    _collect(engine, first)
    assert _count(engine, Prediction) == 10
    # Same ids again in another file: identical content is a duplicate, other content a conflict.
    again = write_jsonl(tmp_path / "predictions-2.jsonl", [prediction(1), prediction(2, score=0.9)])
    [result] = _collect(engine, again)
    assert (result.inserted, result.duplicates, result.quarantined) == (0, 1, 1)
    assert result.reasons == {"duplicate_conflict": 1}
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(table_of(Prediction).c.score).where(
                table_of(Prediction).c.prediction_id == "det-UMC-000002"
            )
        ).scalar_one()
    assert stored == pytest.approx(0.01)  # kept the first, not overwritten


def test_encounter_ids_are_stored_only_as_keyed_hashes(engine: Engine, tmp_path: Path) -> None:
    raw_ids = [f"UMC-E{n:07d}" for n in range(1, 4)]
    _collect(
        engine,
        write_jsonl(tmp_path / "predictions-x.jsonl", [prediction(n) for n in range(1, 4)]),
        write_jsonl(tmp_path / "outcomes-x.jsonl", [outcome(raw_ids[0], T0 + timedelta(hours=2))]),
        write_jsonl(
            tmp_path / "encounters-x.jsonl", [encounter(raw_ids[1], T0 + timedelta(days=1))]
        ),
    )
    with engine.connect() as conn:
        keys = set(conn.execute(sa.select(table_of(Prediction).c.encounter_key)).scalars())
        dump = json.dumps(
            [
                [str(v) for v in row]
                for table in (Prediction, Outcome, Encounter, Quarantine)
                for row in conn.execute(sa.select(table_of(table))).all()
            ]
        )
    assert keys == {encounter_key(i, SECRET) for i in raw_ids}
    assert not any(raw in dump for raw in raw_ids)


def test_quarantined_rows_do_not_keep_the_raw_encounter_id(engine: Engine, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "predictions-q.jsonl", [prediction(7, score=3.0)])
    _collect(engine, path)
    with engine.connect() as conn:
        raw = conn.execute(sa.select(table_of(Quarantine).c.raw)).scalar_one()
    assert "UMC-E0000007" not in raw
    assert "<redacted>" in raw


def test_outcomes_encounters_and_heartbeats_are_idempotent(engine: Engine, tmp_path: Path) -> None:
    files = [
        write_jsonl(tmp_path / "outcomes-1.jsonl", [outcome("E1", T0), outcome("E2", T0)]),
        write_jsonl(tmp_path / "encounters-1.jsonl", [encounter("E1", T0)]),
        write_jsonl(
            tmp_path / "heartbeats-1.jsonl",
            [heartbeat(T0), heartbeat(T0 + timedelta(minutes=15)), heartbeat(T0, site="NOPE")],
        ),
    ]
    first = _collect(engine, *files)
    second = _collect(engine, *files)
    assert [r.inserted for r in first] == [2, 1, 2]
    assert _count(engine, Outcome) == 2
    assert _count(engine, Encounter) == 1
    assert _count(engine, FeedStatus) == 2
    assert _count(engine, Quarantine) == 1  # the unknown site, once, not once per run
    assert all(r.inserted == 0 for r in second)


def test_unreadable_files_fail_with_a_clear_message_and_write_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    empty = tmp_path / "predictions-empty.jsonl"
    empty.write_bytes(b"")
    unknown = write_jsonl(tmp_path / "mystery-1.jsonl", [prediction(1)])
    good = write_jsonl(tmp_path / "predictions-good.jsonl", [prediction(1)])
    results = _collect(engine, empty, unknown, good)
    errors = [r for r in results if isinstance(r, FileUnreadable)]
    assert sorted(e.problem.split(":")[0] for e in errors) == ["file is empty", "unknown source"]
    assert all(str(e.path) in str(e) for e in errors)
    assert _count(engine, Prediction) == 1


def test_resume_after_a_crash_mid_file_adds_exactly_the_missing_rows(
    engine: Engine, tmp_path: Path
) -> None:
    from collectors.base import ingest_file
    from collectors.contracts import PredictionRecord
    from collectors.formats import JsonLines
    from collectors.sinks import PredictionSink
    from store.registry import RegistryLookup

    path = write_jsonl(tmp_path / "predictions-big.jsonl", [prediction(i) for i in range(1, 26)])
    sink = PredictionSink(RegistryLookup.load(engine), SECRET)

    class Crash(Exception):
        pass

    original = sink.apply
    calls = {"n": 0}

    def crashing_apply(conn, prepared, result):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash
        return original(conn, prepared, result)

    sink.apply = crashing_apply  # type: ignore[method-assign]
    with pytest.raises(Crash):
        ingest_file(engine, path, JsonLines(PredictionRecord), sink, batch_units=10)
    assert _count(engine, Prediction) == 20  # two committed batches, the third rolled back
    sink.apply = original  # type: ignore[method-assign]
    result = ingest_file(engine, path, JsonLines(PredictionRecord), sink, batch_units=10)
    assert result.resumed_at_line == 20
    assert result.inserted == 5
    assert _count(engine, Prediction) == 25


def test_a_large_file_is_written_with_the_bulk_settings_and_the_connection_gets_its_own_back(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collectors.base
    from collectors.bulkload import SQLITE_BULK_CHECKPOINT_PAGES
    from collectors.sinks import PredictionSink

    monkeypatch.setattr(collectors.base, "HELPER_MIN_BYTES", 1)  # every file is "large"
    seen: list[tuple[Any, int]] = []
    apply = PredictionSink.apply

    def watched(self: PredictionSink, conn: Any, prepared: Any, result: Any) -> Any:
        if conn.dialect.name == "sqlite":
            interval = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            seen.append((conn.connection.dbapi_connection, interval))
        return apply(self, conn, prepared, result)

    monkeypatch.setattr(PredictionSink, "apply", watched)
    path = write_jsonl(tmp_path / "predictions-big.jsonl", [prediction(i) for i in range(1, 31)])
    [result] = _collect(engine, path)
    assert (result.inserted, result.quarantined) == (30, 0)
    assert _count(engine, Prediction) == 30
    if engine.dialect.name == "sqlite":
        assert [interval for _, interval in seen] == [SQLITE_BULK_CHECKPOINT_PAGES]
        driver = seen[0][0]  # the connection is back in the pool with SQLite's interval
        assert driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    [again] = _collect(engine, path)
    assert again.skipped and _count(engine, Prediction) == 30


def test_progress_counts_each_commit_and_adds_up_to_the_file(
    engine: Engine, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "predictions-p.jsonl", [prediction(i) for i in range(1, 26)])
    steps: list[int] = []
    [result] = collect_files(
        engine,
        [path],
        secret=SECRET,
        now=lambda: T0 + timedelta(days=30),
        batch_units=10,
        progress=steps.append,
    )
    assert result.inserted == 25
    lines = path.read_bytes().splitlines(keepends=True)
    assert steps == [
        sum(map(len, lines[:10])),
        sum(map(len, lines[10:20])),
        len(b"".join(lines[20:])),
    ]
