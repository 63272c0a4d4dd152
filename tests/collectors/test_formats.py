"""CSV, Parquet, FHIR and HL7 readers: same contract, same rows; exact resume; HL7 feed status."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine

from collectors.base import Batch, FileUnreadable, IngestResult, Prepared, ingest_file
from collectors.bulkload import utc_text
from collectors.runner import collect_files, reader_for, sink_for, site_timezones, source_of
from store.models import FeedStatus, Prediction, Quarantine, UTCDateTime, table_of
from store.registry import RegistryLookup
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
from tests.factories import T0, prediction, write_jsonl

P = table_of(Prediction)
COMPARED = [c for c in P.c if c.name not in ("id", "prediction_id", "ingested_at", "content_hash")]


def _collect(engine: Engine, *paths: Path, **kwargs: Any) -> list[Any]:
    return list(collect_files(engine, list(paths), secret=SECRET, now=lambda: NOW, **kwargs))


def _count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table_of(model))).scalar_one()
        )


def _records(n: int, start: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(start)
    records = []
    for i in range(start, start + n):
        record = prediction(i, score=round(rng.random(), 6), unit=rng.choice(["4W", "5E"]))
        if i % 3 == 0:
            record["delivered_at"] = None
        if i % 4 == 0:
            record["inputs"] = {"heart_rate": None, "lactate": 2.5}
        records.append(record)
    return records


def test_utc_text_is_what_the_store_writes_for_a_timestamp() -> None:
    dialect = sqlite.dialect()
    bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    rng = random.Random(7)
    for _ in range(200):
        zone = timezone(timedelta(minutes=rng.randrange(-12 * 60, 14 * 60, 15)))
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(0, 400 * 86400),
            microseconds=rng.choice([0, rng.randrange(10**6)]),
        )
        assert utc_text(moment.astimezone(zone)) == bind(moment)


def test_csv_and_parquet_carry_the_same_content_as_json_lines(
    engine: Engine, tmp_path: Path
) -> None:
    records = _records(12)
    [first] = _collect(engine, write_jsonl(tmp_path / "predictions-a.jsonl", records))
    assert first.inserted == 12
    # The same predictions again in the other formats: identical content, so duplicates only
    # (a different normalisation would show up as duplicate_conflict).
    results = _collect(
        engine,
        write_csv(tmp_path / "predictions-b.csv", records),
        write_parquet(tmp_path / "predictions-c.parquet", records),
    )
    assert [(r.inserted, r.duplicates, r.quarantined) for r in results] == [(0, 12, 0), (0, 12, 0)]
    assert _count(engine, Prediction) == 12


def test_fhir_riskassessments_map_onto_the_same_prediction_rows(
    engine: Engine, tmp_path: Path
) -> None:
    records = _records(5)
    resources = [risk_assessment(int(r["prediction_id"][-6:])) for r in records]
    for resource, record in zip(resources, records, strict=True):
        resource["prediction"] = [{"probabilityDecimal": record["score"]}]
        resource["extension"] = [
            e
            for e in resource["extension"]
            if e["url"] not in ("urn:vigil:unit", "urn:vigil:inputs")
        ] + [{"url": "urn:vigil:unit", "valueString": record["unit"]}]
        if record["inputs"]:
            resource["extension"].append(
                {
                    "url": "urn:vigil:inputs",
                    "extension": [
                        {"url": k, **({} if v is None else {"valueDecimal": v})}
                        for k, v in record["inputs"].items()
                    ],
                }
            )
        if record["delivered_at"] is None:
            resource["extension"] = [
                e for e in resource["extension"] if e["url"] != "urn:vigil:delivered-at"
            ]
    _collect(
        engine,
        write_jsonl(tmp_path / "predictions-a.jsonl", records),
        write_ndjson(tmp_path / "riskassessment-a.ndjson", resources),
    )
    with engine.connect() as conn:
        rows = conn.execute(sa.select(P.c.prediction_id, *COMPARED)).all()
    by_id = {row[0]: row[1:] for row in rows}
    assert len(by_id) == 10
    for record in records:
        assert by_id[f"fhir-{record['prediction_id']}"] == by_id[record["prediction_id"]]


def test_timestamps_with_offsets_are_stored_in_utc(engine: Engine, tmp_path: Path) -> None:
    record = prediction(
        1,
        trigger_at="2026-09-01T02:59:00+02:00",
        scored_at="2026-09-01T03:00:00+02:00",
        delivered_at="2026-08-31T21:00:30-04:00",
    )
    _collect(engine, write_jsonl(tmp_path / "predictions-tz.jsonl", [record]))
    with engine.connect() as conn:
        row = conn.execute(sa.select(P.c.scored_at, P.c.latency_seconds, P.c.scored_hour)).one()
    assert row.scored_at == datetime(2026, 9, 1, 1, 0, tzinfo=UTC)
    assert row.latency_seconds == 90.0
    assert row.scored_hour == int(datetime(2026, 9, 1, 1, tzinfo=UTC).timestamp()) // 3600


class Crash(Exception):
    pass


class CrashingSink:
    """The real sink, except that its `crash_on`-th `apply` raises (the transaction rolls
    back)."""

    def __init__(self, inner: Any, crash_on: int) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.crash_on = crash_on
        self.calls = 0

    def prepare(self, batch: Batch[Any]) -> Prepared:
        prepared: Prepared = self.inner.prepare(batch)
        return prepared

    def apply(self, conn: Connection, prepared: Prepared, result: IngestResult) -> Any:
        self.calls += 1
        if self.calls == self.crash_on:
            raise Crash
        return self.inner.apply(conn, prepared, result)


def _hl7(path: Path, n: int, *, mllp: bool) -> Path:
    return write_hl7(path, [adt_message(i) for i in range(1, n + 1)], mllp=mllp)


def _csv_with_multiline_cells(path: Path, n: int) -> Path:
    records = _records(n)
    for record in records[::5]:
        record["unit"] = "4W"
    write_csv(path, records)
    # A quoted cell spanning lines (an ignored column) straddles every chunk boundary.
    lines = path.read_text().splitlines()
    lines[0] += ",note"
    lines[1:] = [f'{row},"two\nlines"' for row in lines[1:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _fhir(path: Path, n: int) -> Path:
    return write_ndjson(path, [risk_assessment(i) for i in range(1, n + 1)])


WRITERS = {
    "jsonl": ("predictions-r.jsonl", lambda p, n: write_jsonl(p, [*_records(n), "{bad"])),
    "csv": ("predictions-r.csv", _csv_with_multiline_cells),
    "parquet": (
        "predictions-r.parquet",
        lambda p, n: write_parquet(p, _records(n), row_group_size=7),
    ),
    "fhir": ("riskassessment-r.ndjson", _fhir),
    "hl7": ("adt-r.hl7", lambda p, n: _hl7(p, n, mllp=False)),
    "mllp": ("adt-m.hl7", lambda p, n: _hl7(p, n, mllp=True)),
}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_crash_mid_file_resumes_at_the_last_chunk_with_exact_counts(
    engine: Engine, tmp_path: Path, kind: str
) -> None:
    name, writer = WRITERS[kind]
    n = 23
    path = writer(tmp_path / name, n)
    source, extension = source_of(path)
    registry = RegistryLookup.load(engine)
    zones = site_timezones(engine)

    def run(crash_on: int = 0) -> IngestResult:
        sink = sink_for(source, registry, SECRET, received_at=NOW)
        return ingest_file(
            engine,
            path,
            reader_for(source, extension, timezones=zones),
            CrashingSink(sink, crash_on) if crash_on else sink,
            now=lambda: NOW,
            batch_units=4,
        )

    with pytest.raises(Crash):
        run(crash_on=3)
    after_crash = _landed(engine, source.name)
    assert after_crash == 8  # two chunks of four committed, the third rolled back
    result = run()
    assert result.resumed_at_line > 0
    assert _landed(engine, source.name) == n
    assert _count(engine, Quarantine) == (1 if kind == "jsonl" else 0)
    assert run().skipped


def _landed(engine: Engine, source: str) -> int:
    if source != "adt":
        return _count(engine, Prediction)
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(table_of(FeedStatus).c.messages), 0))
            ).scalar_one()
        )


def test_a_file_that_grew_is_read_from_its_checkpoint_and_one_that_changed_from_the_start(
    engine: Engine, tmp_path: Path
) -> None:
    first, appended, extra = _records(5), _records(3, start=6), _records(1, start=9)
    path = write_jsonl(tmp_path / "predictions-g.jsonl", first)
    _collect(engine, path)
    with path.open("ab") as handle:
        for record in appended:
            handle.write(json.dumps(record).encode() + b"\n")
    [grown] = _collect(engine, path)
    assert (grown.resumed_at_line, grown.lines, grown.inserted) == (5, 3, 3)
    write_jsonl(path, [*extra, *first, *appended])  # rewritten: one more row, at the top
    [changed] = _collect(engine, path)
    assert (changed.resumed_at_line, changed.inserted, changed.duplicates) == (0, 1, 8)
    assert _count(engine, Prediction) == 9


def test_hl7_feed_status_per_site_from_both_framings(engine: Engine, tmp_path: Path) -> None:
    # UMC is in America/New_York: an HL7 time without an offset is read in that zone.
    messages = [
        adt_message(1, evn2="202609011200"),
        adt_message(2, evn2="202609011230-0400"),
        adt_message(3, facility="RVH", evn2="202609011100+0000"),
        adt_message(4, message_type="ORU^R01"),
    ]
    plain = write_hl7(tmp_path / "adt-plain.hl7", messages)
    framed = write_hl7(tmp_path / "adt-framed.hl7", messages, mllp=True)
    for path, received in ((plain, NOW), (framed, NOW + timedelta(minutes=1))):
        list(collect_files(engine, [path], secret=SECRET, now=lambda r=received: r))
    F = table_of(FeedStatus)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(F.c.received_at, F.c.site_id, F.c.feed, F.c.messages, F.c.errors,
                      F.c.last_event_at, F.c.source).order_by(F.c.received_at, F.c.site_id)
        ).all()  # fmt: skip
    sites = RegistryLookup.load(engine).sites
    expected_umc = datetime(2026, 9, 1, 16, 30, tzinfo=UTC)  # 12:30-04:00 beats 12:00 EDT
    expected = []
    for received in (NOW, NOW + timedelta(minutes=1)):
        expected += [
            (received, sites["UMC"], "ADT", 3, 1, expected_umc, "hl7"),
            (received, sites["RVH"], "ADT", 1, 0, datetime(2026, 9, 1, 11, tzinfo=UTC), "hl7"),
        ]
    assert sorted(tuple(r) for r in rows) == sorted(expected)


def test_hl7_counts_add_up_over_chunks(engine: Engine, tmp_path: Path) -> None:
    path = write_hl7(tmp_path / "adt-many.hl7", [adt_message(i) for i in range(1, 12)])
    _collect(engine, path, batch_units=3)
    F = table_of(FeedStatus)
    with engine.connect() as conn:
        row = conn.execute(sa.select(F.c.messages, F.c.errors, F.c.last_event_at)).one()
    assert tuple(row) == (11, 0, T0 + timedelta(minutes=11, seconds=-30))


def _quarantined(engine: Engine) -> list[tuple[str, str, str]]:
    Q = table_of(Quarantine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Q.c.location, Q.c.reason, Q.c.raw).order_by(Q.c.id)).all()
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("cores", [2, 4])  # one helper process, or two taking turns
def test_the_helper_process_gives_exactly_what_the_single_process_path_gives(
    engine: Engine, db_url: str, tmp_path: Path, cores: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collectors.base
    from store.db import make_engine, upgrade  # a second store for the comparison

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    counts: list[int] = []
    helpers = collectors.base._prepared_by_helpers

    def counted(*args: Any) -> Any:
        counts.append(args[6])  # the number of helper processes
        return helpers(*args)

    monkeypatch.setattr(collectors.base, "_prepared_by_helpers", counted)

    lines: list[Any] = [*_records(40), "{broken", prediction(3, score=0.9), prediction(7, site="X")]
    path = write_jsonl(tmp_path / "predictions-h.jsonl", lines)
    [with_helper] = _collect(engine, path, batch_units=7, helper=True)
    assert counts == [1 if cores == 2 else 2]
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)
    other = make_engine(other_url)
    from store.registry import sync_registry
    from tests.conftest import REGISTRY

    sync_registry(other, REGISTRY)
    [alone] = _collect(other, path, batch_units=7, helper=False)
    assert (
        (with_helper.inserted, with_helper.duplicates, with_helper.reasons)
        == (
            alone.inserted,
            alone.duplicates,
            alone.reasons,
        )
        == (40, 0, {"invalid_json": 1, "duplicate_conflict": 1, "unknown_site": 1})
    )
    assert _quarantined(engine) == _quarantined(other)
    with engine.connect() as conn, other.connect() as conn2:
        query = sa.select(P.c.prediction_id, *COMPARED).order_by(P.c.prediction_id)
        assert conn.execute(query).all() == conn2.execute(query).all()
    other.dispose()


def test_an_error_in_the_helper_process_is_raised_in_the_parent(
    engine: Engine, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "predictions-e.jsonl", _records(30))
    source, extension = source_of(path)
    sink = sink_for(source, RegistryLookup.load(engine), SECRET, received_at=NOW)

    class Broken(Exception):
        pass

    def prepare(batch: Batch[Any]) -> Prepared:
        if batch.units[0] > 10:
            raise Broken("while preparing")
        return type(sink).prepare(sink, batch)

    sink.prepare = prepare  # type: ignore[method-assign]
    reader = reader_for(source, extension, timezones={})
    with pytest.raises(RuntimeError, match="Broken"):
        ingest_file(engine, path, reader, sink, now=lambda: NOW, batch_units=10, helper=True)
    assert _count(engine, Prediction) == 10  # the first chunk committed, nothing after


def test_a_parquet_row_group_that_cannot_be_decoded_stops_the_file_after_the_good_ones(
    engine: Engine, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    path = write_parquet(tmp_path / "predictions-p.parquet", _records(12), row_group_size=4)
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + 8
    data[start : start + 64] = b"\x41" * 64  # garble the third row group's first page header
    path.write_bytes(bytes(data))
    for _ in range(2):
        [result] = _collect(engine, path, batch_units=4, helper=False)
        assert isinstance(result, FileUnreadable)
        assert "read failed after" in result.problem
        assert _count(engine, Prediction) == 8  # the first two row groups, once


def test_derived_columns_are_what_the_store_helpers_compute(engine: Engine, tmp_path: Path) -> None:
    from store.models import latency_bin, score_bin, score_logit

    rng = random.Random(11)
    records = []
    for n in range(1, 301):
        scored = T0 + timedelta(seconds=rng.randrange(0, 20 * 86400))
        score = rng.choice([0.0, 1.0, 1e-7, 0.5, round(rng.random() ** 3, 6)])
        record = prediction(n, scored=scored, score=score)
        delay = rng.choice([0, 1, 4.5, 60, 299, 300, 7200, 90000])
        delivered = scored + timedelta(seconds=delay)
        record["delivered_at"] = delivered.isoformat().replace("+00:00", "Z")
        records.append(record)
    _collect(engine, write_jsonl(tmp_path / "predictions-d.jsonl", records))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(P.c.score, P.c.score_bin, P.c.score_logit, P.c.latency_seconds,
                      P.c.latency_bin, P.c.scored_at, P.c.scored_hour, P.c.horizon_end)
        ).all()  # fmt: skip
    assert len(rows) == 300
    for row in rows:
        assert row.score_bin == score_bin(row.score)
        assert row.score_logit == pytest.approx(score_logit(row.score), abs=1e-12)
        assert row.latency_bin == latency_bin(row.latency_seconds)
        assert row.scored_hour == int(row.scored_at.timestamp()) // 3600
        assert row.horizon_end == row.scored_at + timedelta(hours=12)
