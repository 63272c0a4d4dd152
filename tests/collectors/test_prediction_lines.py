"""The fast lane for prediction lines gives the contract's answer, or none at all.

Every line here goes both ways: through the lane (msgspec and the shared rules) and through
the contract alone (pydantic). Where the lane takes a line, the contract must take it too,
with the same values; where it does not, the reader's answer must be the contract's own,
reason and detail.
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic_core import to_json

from collectors.base import Batch, Prepared, PreparedChunk, _packed, _unpacked
from collectors.bulkload import utc_text
from collectors.contracts import (
    ContractViolation,
    PredictionRecord,
    validate_json,
    validation_context,
)
from collectors.formats import JsonLines
from collectors.prediction_lines import PredictionLines, PredictionValues
from collectors.sinks import PredictionSink, inputs_text
from store.models import Model
from store.registry import RegistryLookup
from tests.factories import T0, prediction

NOW = T0 + timedelta(days=30)
CONTEXT = validation_context(NOW)
FIELDS = [f.name for f in fields(PredictionRecord)]

# One field at a time, set to something the lane must take, refuse or leave to the contract.
VARIANTS: dict[str, list[Any]] = {
    "prediction_id": [
        "p1",
        " p1",
        "p1 ",
        "",
        "x" * 128,
        "x" * 129,
        123,
        None,
        "p\u00a0",
        "p\x1f",
        "\u2003p",
        "p\u0085",
        "é-1",
        "p\x00",
    ],
    "model": ["deterioration", "Deterioration", " deterioration", "det!", "", "a" * 65, 1],
    "model_version": ["2.0.0", "2.0.0 ", "2_0-0", "v2 0"],
    "site": ["UMC", "umc", "U MC", "UMC\n", "ÜMC"],
    "encounter_id": ["E1", " E1", "E1\t", "", "e" * 129, 7],
    "unit": ["", "7S", " 7S", "x" * 32, "x" * 33, None, 7],
    "trigger_at": [
        "2026-09-01T03:59:00Z",
        "2026-09-01T03:59:00.5Z",
        "2026-09-01T03:59:00.123456Z",
        "2026-09-01T03:59:00.1234567Z",
        "2026-09-01T03:59:00.9999995Z",
        "2026-09-01 03:59:00Z",
        "2026-09-01t03:59:00z",
        "2026-09-01T03:59:00+02:00",
        "2026-09-01T03:59:00-05:30",
        "2026-09-01T03:59:00-00:00",
        "2026-09-01T03:59:00+0200",
        "2026-09-01T03:59Z",
        "2026-09-01T03:59:00",
        "2026-02-30T03:59:00Z",
        "2026-09-01T24:00:00Z",
        "2026-09-01T23:59:60Z",
        "2026-09-01T03:59:00,5Z",
        "2026-09-01T03:59:00+24:00",
        "2026-09-01T03:59:00+23:59",
        "2026-09-01T03:59:00.Z",
        "0000-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
        "2026-09-01T04:06:00Z",
        "２026-09-01T03:59:00Z",
        "2026-0a-01T03:59:00Z",
        "2026-09-01T0 :59:00Z",
        "+026-09-01T03:59:00Z",
        "2026-09-01T03:59:0+Z",
        "2026-09-01T03:60:00Z",
        "2026-09-01T03:59:00z",
        "20260901T035900Z",
        "2026-W35-2T03:59Z",
        1788235140,
        None,
    ],
    "scored_at": [
        "2026-09-01T04:00:00Z",
        "2026-09-01T03:50:00Z",
        "2026-09-01T03:53:00Z",
        "2026-09-01T06:00:00+02:00",
        "2026-10-01T00:04:59Z",
        "2026-10-01T00:05:01Z",
    ],
    "delivered_at": [
        None,
        "2026-09-01T04:00:03Z",
        "2026-09-01T03:54:00Z",
        "2026-09-01T03:56:00Z",
        "2026-09-01T04:00:03.000001+01:00",
        "2026-09-01T04:00:03",
        "",
    ],
    "score": [0, 1, 0.5, -0.0, 1.0000001, -1e-9, "0.5", True, None, 5e-324, 1e-7],
    "threshold": [None, 0.02, 2, "0.02", False],
    "alert": [True, False, 1, 0, "true", None],
    "arm": ["control", "canary", "shadow", "Control", " canary", "x", None],
    "status": ["ok", "error", "timeout", "suppressed", "OK", "ok "],
    "inputs": [
        None,
        {},
        {"a": 1},
        {"a": None},
        {" a": 1.0},
        {"a ": 1.0},
        {"a": "1"},
        {"a": True},
        {"a": 1e300},
        {"é": 2.5, "\x1f": 1.0, 'q"': 0.1},
        [],
        "x",
    ],
}
RAW_LINES = [
    b'{"prediction_id": "p1", "prediction_id": "p2", "model": "deterioration", '
    b'"model_version": "2.0.0", "site": "UMC", "encounter_id": "E", '
    b'"trigger_at": "2026-09-01T03:59:00Z", "scored_at": "2026-09-01T04:00:00Z", "score": 0.1}',
    b'{"prediction_id": "p1", "model": "deterioration", "model_version": "2.0.0", "site": "UMC", '
    b'"encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": 0.1, "inputs": {"a": 1, "a": 2}}',
    b'{"prediction_id": "p1", "model": "deterioration", "model_version": "2.0.0", "site": "UMC", '
    b'"encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": NaN}',
    b'{"prediction_id": "p1", "model": "deterioration", "model_version": "2.0.0", "site": "UMC", '
    b'"encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": 0.1, "inputs": {"a": 1e999}}',
    b'{"prediction_id": "p\\ud800", "model": "deterioration", "model_version": "2.0.0", '
    b'"site": "UMC", "encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": 0.1}',
    b'{"prediction_id": "p\xfc", "model": "deterioration", "model_version": "2.0.0", '
    b'"site": "UMC", "encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": 0.1}',
    b'{"prediction_id": "p1", "model": "deterioration", "model_version": "2.0.0", "site": "UMC", '
    b'"encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": 0.1, "mrn": "123", "extra": [1, {}]}\r',
    b'{"prediction_id": "p1", "model": "deterioration", "model_version": "2.0.0", "site": "UMC", '
    b'"encounter_id": "E", "trigger_at": "2026-09-01T03:59:00Z", '
    b'"scored_at": "2026-09-01T04:00:00Z", "score": 0.1,}',
    b'{"prediction_id": "p1", "model": "deterioration"} trailing',
    b"[1, 2]",
    b'"text"',
    b"",
    b"   ",
    b"{",
]


def _lines() -> list[bytes]:
    lines = [json.dumps(prediction(1)).encode()]
    for name, values in VARIANTS.items():
        for value in values:
            lines.append(json.dumps(prediction(1, **{name: value})).encode())
        lines.append(json.dumps({k: v for k, v in prediction(1).items() if k != name}).encode())
    return lines + RAW_LINES


def _same_record(values: PredictionValues, record: PredictionRecord) -> None:
    for name in FIELDS:
        mine, theirs = getattr(values, name), getattr(record, name)
        assert mine == theirs, name
        assert type(mine) is type(theirs), name
    assert values.trigger_text == utc_text(record.trigger_at)
    assert values.scored_text == utc_text(record.scored_at)
    expected = None if record.delivered_at is None else utc_text(record.delivered_at)
    assert values.delivered_text == expected


def test_the_lane_takes_only_what_the_contract_takes_with_the_same_values() -> None:
    lane = PredictionLines()
    reader = JsonLines(PredictionRecord)
    taken = 0
    lines = _lines()
    for line in lines:
        contract = validate_json(PredictionRecord, line, CONTEXT)
        fast = lane(line, CONTEXT["latest"])
        decoded = reader.decode(line, CONTEXT)
        if fast is not None:
            taken += 1
            assert isinstance(contract, PredictionRecord), line
            _same_record(fast, contract)
            assert decoded == fast
        elif isinstance(contract, ContractViolation) and line.strip():
            assert decoded == contract, line  # the contract's reason and detail
        elif isinstance(contract, PredictionRecord):
            assert decoded == contract, line
    # The lane is not a stub: it takes the ordinary line and the many ordinary variants.
    assert lane(lines[0], CONTEXT["latest"]) is not None
    assert taken >= 50


def test_a_timestamp_the_lane_takes_means_the_same_instant_and_store_text() -> None:
    rng = random.Random(7)
    lane = PredictionLines()
    taken = 0
    for _ in range(3000):
        moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(0, 200_000_000), microseconds=rng.randrange(0, 1_000_000)
        )
        digits = rng.choice([0, 1, 3, 6, 7, 9])
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if digits:
            text += "." + f"{moment.microsecond:06d}{rng.randrange(1000):03d}"[:digits]
        offset = rng.choice(["Z", "+00:00", "+05:30", "-08:00", "-00:00", "z", "+0100"])
        line = json.dumps(prediction(1, trigger_at=text + offset, scored_at=text + offset))
        contract = validate_json(PredictionRecord, line.encode(), {"latest": None})
        fast = lane(line.encode(), None)
        if fast is not None:
            taken += 1
            assert isinstance(contract, PredictionRecord)
            _same_record(fast, contract)
    assert taken > 1000


def test_inputs_are_stored_as_pydantic_writes_them() -> None:
    rng = random.Random(3)
    values = [0.0, -0.0, 1e16, 9999999999999998.0, 1e-5, 5e-324, 1.7976931348623157e308, 0.1]
    values += [rng.random() * 10 ** rng.randint(-30, 30) * rng.choice([1, -1]) for _ in range(5000)]
    values += [
        struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(5000)
    ]
    names = ["heart_rate", "a1e2", "é", 'q"', "\x1f", "b/", "Z", "\u2028"]
    for start in range(0, len(values), 5):
        inputs: dict[str, float | None] = {
            rng.choice(names) + str(i): v
            for i, v in enumerate(values[start : start + 5])
            if math.isfinite(v)
        }
        inputs["none"] = None
        assert inputs_text(inputs) == to_json(dict(sorted(inputs.items()))).decode()


def test_rows_cross_from_a_helper_process_unchanged() -> None:
    rows = [("p1", 1, 0.25, None, True, False, "2026-09-01 04:00:00.000000", -5.5, 10**15)]
    item = PreparedChunk(
        chunk=None,  # type: ignore[arg-type]
        units=1,
        prepared=Prepared(rows=list(rows), origin=[0]),
        numbers=[1],
        payloads=[b"{}"],
        refused=[],
    )
    packed = _packed(item)
    assert packed.prepared.rows == [] and packed.prepared.packed
    back = _unpacked(packed).prepared.rows
    assert back == rows
    assert [type(v) for v in back[0]] == [type(v) for v in rows[0]]


@pytest.mark.parametrize("hours", [12.0, 1.5])
def test_horizon_end_is_scored_at_plus_the_horizon(hours: float) -> None:
    registry = RegistryLookup(
        models={
            "deterioration": Model(
                id=1, name="deterioration", title="", outcome="x", horizon_hours=hours
            )
        },
        versions={("deterioration", "2.0.0"): 1},
        sites={"UMC": 1},
    )
    sink = PredictionSink(registry, "secret")
    lane = PredictionLines()
    scored = [T0 + timedelta(minutes=37 * n, microseconds=n) for n in range(200)]
    records: list[Any] = []
    for n, moment in enumerate(scored):
        line = json.dumps(
            prediction(n, scored_at=moment.isoformat(), trigger_at=moment.isoformat())
        ).encode()
        records.append(lane(line, None) if n % 2 else validate_json(PredictionRecord, line, {}))
    prepared = sink.prepare(Batch(records=records, units=list(range(200)), payloads=[b""] * 200))
    ends = [row[11] for row in prepared.rows]
    assert ends == [utc_text(m + timedelta(hours=hours)) for m in scored]


@pytest.mark.parametrize("alert", [True, False])
@pytest.mark.parametrize(
    ("threshold", "text"), [(0.02, "0.02"), (0.0, "0.0"), (-0.0, "-0.0"), (None, "None")]
)
def test_the_content_hash_is_the_digest_of_the_stored_values_by_either_way_in(
    alert: bool, threshold: float | None, text: str
) -> None:
    """A stored id is compared by this digest when it comes again: it must not change between
    releases, nor between the fast lane and the contract, for any alert or threshold."""
    import hashlib

    from collectors.pseudonym import encounter_key

    registry = RegistryLookup(
        models={
            "deterioration": Model(
                id=1, name="deterioration", title="", outcome="x", horizon_hours=12.0
            )
        },
        versions={("deterioration", "2.0.0"): 1},
        sites={"UMC": 1},
    )
    line = json.dumps(prediction(5, alert=alert, threshold=threshold, score=0.1234)).encode()
    lane = PredictionLines()(line, None)
    assert lane is not None
    contract = validate_json(PredictionRecord, line, {})
    key = encounter_key("UMC-E0000005", "secret")
    scored = T0 + timedelta(hours=5)
    content = "\x1f".join(
        [
            "det-UMC-000005",
            "deterioration",
            "2.0.0",
            "UMC",
            "4W",
            key,
            utc_text(scored - timedelta(seconds=60)),
            utc_text(scored),
            utc_text(scored + timedelta(seconds=3)),
            "0.1234",
            text,
            "1" if alert else "0",
            "control",
            "ok",
            '{"heart_rate":80.0,"lactate":1.1}',
        ]
    )
    expected = hashlib.blake2b(content.encode(), digest_size=16).hexdigest()
    for records in ([lane], [contract], [lane, contract]):
        sink = PredictionSink(registry, "secret")
        batch = Batch(records=records, units=[1] * len(records), payloads=[line] * len(records))
        prepared = sink.prepare(batch)
        assert [row[-2] for row in prepared.rows] == [expected]
        assert prepared.duplicates == len(records) - 1 and not prepared.refused
