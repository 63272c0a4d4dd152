"""Factories for the collectors' other formats: CSV, Parquet, FHIR NDJSON and HL7 v2 files."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.factories import T0, prediction

NOW = T0 + timedelta(days=30)  # the collectors' clock in these tests
SECRET = "test-secret"


def write_csv(path: Path, records: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Records as CSV; `inputs` becomes `inputs.<name>` columns; None is an empty cell."""
    flat = []
    for record in records:
        row = {k: v for k, v in record.items() if k != "inputs"}
        for name, value in (record.get("inputs") or {}).items():
            row[f"inputs.{name}"] = value
        flat.append(row)
    if columns is None:
        columns = list(dict.fromkeys(k for row in flat for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow(
            {
                k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v)
                for k, v in row.items()
            }
        )
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def write_parquet(
    path: Path, records: list[dict[str, Any]], *, naive: bool = False, row_group_size: int = 4
) -> Path:
    """Prediction records as Parquet: timestamp[us, UTC] columns (naive ones if asked) and an
    `inputs` struct column."""
    zone = None if naive else "UTC"
    columns: dict[str, list[Any]] = {}
    for record in records:
        for key, value in record.items():
            if key.endswith("_at") and isinstance(value, str):
                moment = _parse(value).astimezone(UTC)
                value = moment.replace(tzinfo=None) if naive else moment
            columns.setdefault(key, []).append(value)
    arrays = {}
    for key, values in columns.items():
        if key.endswith("_at"):
            arrays[key] = pa.array(values, type=pa.timestamp("us", tz=zone))
        else:
            arrays[key] = pa.array(values)
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)
    return path


def risk_assessment(n: int = 1, **overrides: Any) -> dict[str, Any]:
    """A RiskAssessment resource carrying what `prediction(n)` carries."""
    p = prediction(n)
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": f"ra-{n}",
        "identifier": [
            {"system": "urn:vigil:prediction-id", "value": f"fhir-{p['prediction_id']}"}
        ],
        "status": "final",
        "subject": {"reference": f"Patient/MRN{n:07d}"},
        "encounter": {"reference": f"Encounter/{p['encounter_id']}"},
        "occurrenceDateTime": p["scored_at"],
        "method": {
            "coding": [
                {"system": "urn:vigil:model", "code": p["model"], "version": p["model_version"]}
            ]
        },
        "prediction": [{"probabilityDecimal": p["score"]}],
        "extension": [
            {"url": "urn:vigil:site", "valueCode": p["site"]},
            {"url": "urn:vigil:unit", "valueString": p["unit"]},
            {"url": "urn:vigil:trigger-at", "valueDateTime": p["trigger_at"]},
            {"url": "urn:vigil:delivered-at", "valueDateTime": p["delivered_at"]},
            {"url": "urn:vigil:threshold", "valueDecimal": p["threshold"]},
            {"url": "urn:vigil:alert", "valueBoolean": p["alert"]},
            {"url": "urn:vigil:arm", "valueCode": p["arm"]},
            {
                "url": "urn:vigil:inputs",
                "extension": [
                    {"url": name, "valueDecimal": value} for name, value in p["inputs"].items()
                ],
            },
        ],
    }
    resource.update(overrides)
    return resource


def write_ndjson(path: Path, resources: Sequence[dict[str, Any] | str]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for resource in resources:
            handle.write((resource if isinstance(resource, str) else json.dumps(resource)) + "\n")
    return path


def hl7_time(moment: datetime, offset: str = "+0000") -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + offset


def adt_message(
    n: int = 1,
    *,
    facility: str = "UMC",
    sent: datetime | None = None,
    event: datetime | None = None,
    message_type: str = "ADT^A01^ADT_A01",
    msh7: str | None = None,
    evn2: str | None = None,
    extra: list[str] | None = None,
    evn: bool = True,
) -> str:
    """An ADT message with patient data in PID and PV1 (segments separated by CR)."""
    sent = sent or T0 + timedelta(minutes=n)
    event = event or sent - timedelta(seconds=30)
    segments = [
        f"MSH|^~\\&|EPIC|{facility}^2.16.840.1.113883.3.1^ISO|VIGIL|VIGIL|"
        f"{msh7 if msh7 is not None else hl7_time(sent)}||{message_type}|MSG{n:06d}|P|2.5.1",
    ]
    if evn:
        segments.append(f"EVN|A01|{evn2 if evn2 is not None else hl7_time(event)}")
    segments += [
        f"PID|1||MRN{n:07d}^^^{facility}^MR||DOE^JANE^Q||19700101|F",
        f"PV1|1|I|4W^401^1|||||||||||||||{facility}-E{n:07d}",
    ]
    segments += extra or []
    return "\r".join(segments)


def write_hl7(path: Path, messages: list[str], *, mllp: bool = False) -> Path:
    if mllp:
        data = b"".join(b"\x0b" + m.encode() + b"\r\x1c\r" for m in messages)
    else:
        data = b"".join(m.encode() + b"\r\n" for m in messages)
    path.write_bytes(data)
    return path
