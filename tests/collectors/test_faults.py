"""The malformed-input corpus: every fault ends in its quarantine reason or file error, and
every good row of every file lands.

Each case is one small file with good rows around the fault. The whole corpus is ingested in
one run (as a drop folder would be), then each file's quarantine rows (in unit order), its
count of landed rows and its file error are compared with what the case expects.
"""

# ruff: noqa: E501  (the corpus is a table: one fault per line)

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.base import FileUnreadable, IngestResult
from collectors.contracts import REASONS
from collectors.runner import collect_files
from store.models import IngestCheckpoint, Prediction, Quarantine, table_of
from tests.collectors.sources import (
    NOW,
    SECRET,
    adt_message,
    hl7_time,
    risk_assessment,
    write_csv,
    write_hl7,
    write_ndjson,
    write_parquet,
)
from tests.factories import T0, encounter, heartbeat, iso, outcome, prediction, write_jsonl


@dataclass
class Fault:
    name: str
    file: str
    write: Callable[[Path], Any]
    reasons: list[str] = field(default_factory=list)  # quarantine reasons, in unit order
    landed: int = 0  # good units of the file that must land
    file_error: str | None = None  # the file fails as a whole with this problem
    loose: bool = False  # named on the command line rather than found in the folder


_counter = iter(range(1, 10_000))


def P(**overrides: Any) -> dict[str, Any]:
    """A good prediction with an id no other case uses."""
    return prediction(next(_counter), **overrides)


def jsonl(*records: Any) -> Callable[[Path], Any]:
    frozen = list(records)
    return lambda path: write_jsonl(path, frozen)


def raw_bytes(data: bytes) -> Callable[[Path], Any]:
    return lambda path: path.write_bytes(data)


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _without(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


def _renamed(record: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new if k == old else k): v for k, v in record.items()}


def _future(record: dict[str, Any]) -> dict[str, Any]:
    return prediction(int(record["prediction_id"][-6:]), scored=NOW + timedelta(days=1))


def _late_trigger(record: dict[str, Any]) -> dict[str, Any]:
    scored = datetime.fromisoformat(record["scored_at"].replace("Z", "+00:00"))
    return {**record, "trigger_at": iso(scored + timedelta(hours=1))}


def _truncated() -> bytes:
    whole = line(P())
    return line(P()) + whole[: len(whole) // 2]


def _latin1() -> bytes:
    return (
        line(P())
        + json.dumps(P(unit="4W"))
        .replace("4W", "S\\u00fc")
        .encode()
        .replace(b"S\\u00fc", "Sü".encode("latin-1"))
        + b"\n"
    )


_dup = P()
_stored_dup = P()
_same = P()
_hl7_good = [adt_message(1), adt_message(2)]

FAULTS: list[Fault] = [
    # --- prediction logs, JSON Lines
    Fault("bad JSON", "predictions-bad-json.jsonl", jsonl(P(), "{not json", P()), ["invalid_json"], 2),
    Fault("missing field", "predictions-missing.jsonl", jsonl(P(), _without(P(), "scored_at")), ["missing_field"], 1),
    Fault("score 1.7", "predictions-score.jsonl", jsonl(P(score=1.7), P()), ["out_of_range"], 1),
    Fault("score NaN", "predictions-nan.jsonl", raw_bytes(line(P()) + line(P(score=float("nan")))), ["not_finite"], 1),
    Fault("naive timestamp", "predictions-naive.jsonl", jsonl(P(scored_at="2026-09-01T04:00:00"), P()), ["naive_timestamp"], 1),
    Fault("future timestamp", "predictions-future.jsonl", jsonl(P(), _future(P())), ["future_timestamp"], 1),
    Fault("unknown site", "predictions-site.jsonl", jsonl(P(site="NOWHERE"), P()), ["unknown_site"], 1),
    Fault("unknown model", "predictions-model.jsonl", jsonl(P(model="sepsis"), P()), ["unknown_model"], 1),
    Fault("unknown version", "predictions-version.jsonl", jsonl(P(model_version="9.9.9"), P()), ["unknown_version"], 1),
    Fault("duplicate id, other content, same file", "predictions-dup-in-file.jsonl", jsonl(_dup, {**_dup, "score": 0.5}), ["duplicate_conflict"], 1),
    Fault("first copy of a duplicated id", "predictions-dup-1.jsonl", jsonl(_stored_dup), [], 1),
    Fault("duplicate id, other content, later file", "predictions-dup-2.jsonl", jsonl({**_stored_dup, "score": 0.3}, P()), ["duplicate_conflict"], 1),
    Fault("identical row sent twice (not a fault)", "predictions-same.jsonl", jsonl(_same, _same), [], 1),
    Fault("truncated file", "predictions-truncated.jsonl", raw_bytes(_truncated()), ["truncated_line"], 1),
    Fault("UTF-8 BOM (accepted)", "predictions-bom.jsonl", raw_bytes(codecs.BOM_UTF8 + line(P()) + line(P())), [], 2),
    Fault("CRLF line ends (accepted)", "predictions-crlf.jsonl", raw_bytes(line(P())[:-1] + b"\r\n" + line(P())[:-1] + b"\r\n"), [], 2),
    Fault("Latin-1 bytes in a line", "predictions-latin1.jsonl", raw_bytes(_latin1()), ["invalid_encoding"], 1),
    Fault("UTF-16 file", "predictions-utf16.jsonl", raw_bytes(line(P()).decode().encode("utf-16")), file_error="UTF-16"),
    Fault("empty file", "predictions-empty.jsonl", raw_bytes(b""), file_error="file is empty"),
    Fault("over-long line", "predictions-long.jsonl", jsonl(P(), {**P(), "pad": "x" * 100_000}, P()), ["line_too_long"], 2),
    Fault("line longer than a read block", "predictions-huge.jsonl", raw_bytes(line(P()) + b'{"pad": "' + b"x" * (5 << 20) + b'"}\n' + line(P())), ["line_too_long"], 2),
    Fault("blank line", "predictions-blank.jsonl", jsonl(P(), "", P()), ["empty_line"], 2),
    Fault("JSON array, not an object", "predictions-array.jsonl", jsonl("[1, 2]", P()), ["not_an_object"], 1),
    Fault("score is text", "predictions-type.jsonl", jsonl(P(score="high"), P()), ["invalid_type"], 1),
    Fault("unknown arm", "predictions-arm.jsonl", jsonl(P(arm="treatment"), P()), ["invalid_value"], 1),
    Fault("scored before the trigger", "predictions-order.jsonl", jsonl(_late_trigger(P()), P()), ["time_order"], 1),
    Fault("status ok without a score", "predictions-noscore.jsonl", jsonl(P(score=None), P(status="error", score=None)), ["missing_field"], 1),
    Fault("infinite input value", "predictions-inputs.jsonl", raw_bytes(line(P(inputs={"lactate": float("inf")})) + line(P())), ["not_finite"], 1),
    Fault("renamed field", "predictions-renamed.jsonl", jsonl(_renamed(P(), "scored_at", "scoredAt"), P()), ["missing_field"], 1),
    Fault("empty encounter id", "predictions-encounter.jsonl", jsonl(P(encounter_id=""), P()), ["missing_field"], 1),
    Fault("model name with a space", "predictions-pattern.jsonl", jsonl(P(model="det model"), P()), ["invalid_value"], 1),
    Fault("gzip-compressed file", "predictions-gz.jsonl", raw_bytes(gzip.compress(line(P()))), file_error="gzip-compressed"),
    Fault("binary file", "predictions-binary.jsonl", raw_bytes(b"\x00\x01\x02binary\x00" * 10), file_error="NUL bytes"),
    Fault("unknown source name", "mystery-1.jsonl", jsonl(P()), file_error="unknown source"),
    Fault("wrong extension", "predictions-x.txt", jsonl(P()), file_error="must end with one of", loose=True),
    # --- labels, closures, heartbeats
    Fault("unknown outcome", "outcomes-name.jsonl", jsonl(outcome("E-o1", T0, outcome="sepsis"), outcome("E-o2", T0)), ["unknown_outcome"], 1),
    Fault("label recorded before it happened", "outcomes-order.jsonl", jsonl(outcome("E-o3", T0, recorded_at="2026-08-31T00:00:00Z"), outcome("E-o4", T0)), ["time_order"], 1),
    Fault("discharged before admitted", "encounters-order.jsonl", jsonl(encounter("E-e1", T0, admitted_at="2026-09-02T00:00:00Z"), encounter("E-e2", T0)), ["time_order"], 1),
    Fault("negative message count", "heartbeats-count.jsonl", jsonl(heartbeat(T0, messages=-3), heartbeat(T0 + timedelta(minutes=1))), ["out_of_range"], 1),
    Fault("outcomes as CSV (accepted)", "outcomes-csv.csv", lambda p: write_csv(p, [outcome("E-o5", T0), outcome("E-o6", T0)]), [], 2),
    # --- prediction logs, CSV
    Fault("CSV header lacks a required column", "predictions-header.csv", lambda p: write_csv(p, [_without(P(), "scored_at")]), file_error="lacks required column(s) scored_at"),
    Fault("CSV header repeats a column", "predictions-repeat.csv", raw_bytes(b"prediction_id,site,site\nx,UMC,UMC\n"), file_error="repeats column(s) site"),
    Fault("CSV row with too many cells", "predictions-cells.csv", lambda p: (write_csv(p, [P(), P()]), p.write_text(p.read_text() + p.read_text().splitlines()[1] + ",extra,cells\n")), ["wrong_column_count"], 2),
    Fault("CSV empty score cell", "predictions-empty-cell.csv", lambda p: write_csv(p, [P(score=None), P()]), ["missing_field"], 1),
    Fault("CSV score is text", "predictions-text.csv", lambda p: write_csv(p, [P(), P(score="abc")]), ["invalid_type"], 1),
    Fault("CSV unbalanced quote", "predictions-quote.csv", lambda p: (write_csv(p, [P()]), p.write_text(p.read_text() + 'x,"unclosed\n')), ["invalid_csv"], 1),
    # --- prediction logs, Parquet
    Fault("corrupt Parquet", "predictions-corrupt.parquet", lambda p: (write_parquet(p, [P(), P()]), p.write_bytes(p.read_bytes()[:-40])), file_error="not a readable Parquet file"),
    Fault("Parquet naive timestamps", "predictions-naive.parquet", lambda p: write_parquet(p, [P(), P()], naive=True), ["naive_timestamp", "naive_timestamp"], 0),
    Fault("Parquet NaN score", "predictions-nan.parquet", lambda p: write_parquet(p, [P(), P(score=float("nan")), P()]), ["not_finite"], 2),
    Fault("Parquet lacks a column", "predictions-schema.parquet", lambda p: write_parquet(p, [_without(P(), "model")]), file_error="schema lacks required column(s) model"),
    # --- FHIR RiskAssessment NDJSON
    Fault("FHIR resource of the wrong type", "riskassessment-type.ndjson", lambda p: write_ndjson(p, [{"resourceType": "Observation", "id": "o1", "status": "final"}, risk_assessment(next(_counter))]), ["wrong_resource_type"], 1),
    Fault("FHIR resource without status", "riskassessment-invalid.ndjson", lambda p: write_ndjson(p, [_without(risk_assessment(next(_counter)), "status"), risk_assessment(next(_counter))]), ["invalid_fhir"], 1),
    Fault("FHIR resource without encounter", "riskassessment-encounter.ndjson", lambda p: write_ndjson(p, [_without(risk_assessment(next(_counter)), "encounter"), risk_assessment(next(_counter))]), ["missing_field"], 1),
    Fault("FHIR probability 1.7", "riskassessment-score.ndjson", lambda p: write_ndjson(p, [risk_assessment(next(_counter), prediction=[{"probabilityDecimal": 1.7}]), risk_assessment(next(_counter))]), ["out_of_range"], 1),
    Fault("FHIR time without zone", "riskassessment-naive.ndjson", lambda p: write_ndjson(p, [risk_assessment(next(_counter), occurrenceDateTime="2026-09-01T03:00:00"), risk_assessment(next(_counter))]), ["invalid_fhir"], 1),
    Fault("FHIR entered-in-error", "riskassessment-status.ndjson", lambda p: write_ndjson(p, [risk_assessment(next(_counter), status="entered-in-error"), risk_assessment(next(_counter))]), ["invalid_value"], 1),
    Fault("FHIR line not JSON", "riskassessment-json.ndjson", lambda p: write_ndjson(p, ['{"resourceType": "RiskAss', risk_assessment(next(_counter))]), ["invalid_json"], 1),
    # --- HL7 v2 ADT
    Fault("wrong HL7 segment", "adt-segment.hl7", lambda p: write_hl7(p, [_hl7_good[0], adt_message(3, extra=["P!D|garbage"])]), ["invalid_segment"], 1),
    Fault("HL7 file without MSH", "adt-nomsh.hl7", raw_bytes(b"PID|1||123\rPV1|1|I\r"), file_error="not HL7 v2"),
    Fault("HL7 segments before the first MSH", "adt-stray.hl7", lambda p: p.write_bytes(b"BHS|^~\\&|EPIC\rPID|1||MRN1\r" + "\r".join(_hl7_good).encode() + b"\r"), ["missing_msh"], 2),
    Fault("HL7 message that is not ADT", "adt-oru.hl7", lambda p: write_hl7(p, [adt_message(4, message_type="ORU^R01"), _hl7_good[1]]), ["unsupported_message"], 1),
    Fault("ADT message without EVN", "adt-noevn.hl7", lambda p: write_hl7(p, [adt_message(5, evn=False), _hl7_good[1]]), ["missing_segment"], 1),
    Fault("HL7 time without minutes", "adt-time.hl7", lambda p: write_hl7(p, [adt_message(6, msh7="2026"), _hl7_good[1]]), ["invalid_timestamp"], 1),
    Fault("HL7 unknown sending facility", "adt-facility.hl7", lambda p: write_hl7(p, [adt_message(7, facility="NOWHERE"), _hl7_good[1]]), ["unknown_site"], 1),
    Fault("HL7 event in the future", "adt-future.hl7", lambda p: write_hl7(p, [adt_message(8, evn2=hl7_time(NOW + timedelta(days=2))), _hl7_good[1]]), ["future_timestamp"], 1),
    Fault("HL7 header the parser cannot read", "adt-header.hl7", raw_bytes(b"MSH|\r" + "\r".join(_hl7_good).encode() + b"\r"), ["invalid_hl7"], 2),
    Fault("MLLP frame cut off", "adt-mllp-cut.hl7", lambda p: (write_hl7(p, _hl7_good, mllp=True), p.write_bytes(p.read_bytes() + b"\x0b" + adt_message(9).encode()[:40])), ["truncated_message"], 2),
    Fault("bytes between MLLP frames", "adt-mllp-junk.hl7", lambda p: p.write_bytes(b"\x0b" + _hl7_good[0].encode() + b"\x1c\rjunk between frames\r\n\x0b" + _hl7_good[1].encode() + b"\x1c\r"), ["framing_error"], 2),
]  # fmt: skip

FAULTS_WITH_REASON = [f for f in FAULTS if f.reasons or f.file_error]


def _location_number(location: str) -> int:
    return int(re.search(r"\d+", location).group())  # type: ignore[union-attr]


def _quarantine_by_file(engine: Engine) -> dict[str, list[str]]:
    Q = table_of(Quarantine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Q.c.source_file, Q.c.location, Q.c.reason)).all()
    found: dict[str, list[tuple[int, str]]] = {}
    for source_file, location, reason in rows:
        found.setdefault(Path(source_file).name, []).append((_location_number(location), reason))
    return {name: [reason for _, reason in sorted(items)] for name, items in found.items()}


def _write_corpus(folder: Path) -> list[Path]:
    folder.mkdir()
    loose = []
    for fault in FAULTS:
        path = folder / fault.file
        fault.write(path)
        if fault.loose:
            loose.append(path)
    return loose


def test_the_corpus_has_at_least_thirty_distinct_faults() -> None:
    assert len({f.name for f in FAULTS}) == len(FAULTS)
    assert len(FAULTS_WITH_REASON) >= 30
    used = {r for f in FAULTS for r in f.reasons}
    assert used <= REASONS.keys()


def test_every_fault_ends_in_its_reason_or_file_error_and_every_good_row_lands(
    engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "corpus"
    loose = _write_corpus(folder)
    results: dict[str, IngestResult | FileUnreadable] = {
        r.path.name: r
        for r in collect_files(engine, [folder, *loose], secret=SECRET, now=lambda: NOW)
    }
    quarantined = _quarantine_by_file(engine)
    observed: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for fault in FAULTS:
        result = results[fault.file]
        if fault.file_error is not None:
            expected[fault.name] = ("file error", fault.file_error, [])
            problem = result.problem if isinstance(result, FileUnreadable) else repr(result)
            shown = fault.file_error if fault.file_error in problem else problem
            observed[fault.name] = ("file error", shown, quarantined.get(fault.file, []))
        else:
            expected[fault.name] = (fault.reasons, fault.landed)
            inserted = result.inserted if isinstance(result, IngestResult) else repr(result)
            observed[fault.name] = (quarantined.get(fault.file, []), inserted)
    assert observed == expected
    # Nothing of an unreadable file was written: no quarantine rows (checked above) and no
    # checkpoint; the message names the file.
    with engine.connect() as conn:
        checkpointed = {
            Path(p).name
            for p in conn.execute(sa.select(table_of(IngestCheckpoint).c.path)).scalars()
        }
        stored = conn.execute(
            sa.select(sa.func.count()).select_from(table_of(Prediction))
        ).scalar_one()
    for fault in FAULTS:
        if fault.file_error is not None:
            assert fault.file not in checkpointed
            assert fault.file in str(results[fault.file])
    prediction_files = [f for f in FAULTS if f.file.startswith(("predictions", "riskassessment"))]
    assert stored == sum(f.landed for f in prediction_files if f.file_error is None)


def test_the_corpus_ingested_again_adds_nothing(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    loose = _write_corpus(folder)

    def counts() -> tuple[int, int]:
        with engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(sa.select(sa.func.count()).select_from(table_of(m))).scalar_one()
                for m in (Prediction, Quarantine)
            )

    list(collect_files(engine, [folder, *loose], secret=SECRET, now=lambda: NOW))
    first = counts()
    again = list(collect_files(engine, [folder, *loose], secret=SECRET, now=lambda: NOW))
    assert counts() == first
    assert all(r.skipped for r in again if isinstance(r, IngestResult))
