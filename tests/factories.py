"""Factories for source records and files, with sensible defaults a test overrides."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def prediction(n: int = 1, **overrides: Any) -> dict[str, Any]:
    scored = overrides.pop("scored", T0 + timedelta(hours=n))
    record: dict[str, Any] = {
        "prediction_id": f"det-UMC-{n:06d}",
        "model": "deterioration",
        "model_version": "2.0.0",
        "site": "UMC",
        "unit": "4W",
        "encounter_id": f"UMC-E{n:07d}",
        "trigger_at": iso(scored - timedelta(seconds=60)),
        "scored_at": iso(scored),
        "delivered_at": iso(scored + timedelta(seconds=3)),
        "score": 0.01,
        "threshold": 0.02,
        "alert": False,
        "arm": "control",
        "status": "ok",
        "inputs": {"heart_rate": 80.0, "lactate": 1.1},
    }
    record.update(overrides)
    return record


def outcome(encounter_id: str, at: datetime, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "encounter_id": encounter_id,
        "site": "UMC",
        "outcome": "deterioration",
        "outcome_at": iso(at),
        "recorded_at": iso(at + timedelta(hours=1)),
    }
    record.update(overrides)
    return record


def encounter(encounter_id: str, discharged: datetime, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "encounter_id": encounter_id,
        "site": "UMC",
        "unit": "4W",
        "admitted_at": iso(discharged - timedelta(days=3)),
        "discharged_at": iso(discharged),
        "recorded_at": iso(discharged + timedelta(hours=1)),
    }
    record.update(overrides)
    return record


def heartbeat(at: datetime, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "feed": "ADT",
        "site": "UMC",
        "last_event_at": iso(at - timedelta(seconds=30)),
        "received_at": iso(at),
        "messages": 12,
        "errors": 0,
    }
    record.update(overrides)
    return record


def write_jsonl(path: Path, records: list[dict[str, Any] | str | bytes]) -> Path:
    """Write records (dicts as JSON, str/bytes verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for record in records:
            if isinstance(record, dict):
                handle.write(json.dumps(record).encode() + b"\n")
            elif isinstance(record, str):
                handle.write(record.encode() + b"\n")
            else:
                handle.write(record)
    return path
