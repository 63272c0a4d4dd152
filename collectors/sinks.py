"""One sink per JSON Lines source kind: translate validated records into store rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collectors.base import IngestResult, Located
from collectors.contracts import (
    ContractViolation,
    EncounterRecord,
    HeartbeatRecord,
    OutcomeRecord,
    PredictionRecord,
)
from collectors.pseudonym import encounter_key
from store.bulk import insert_ignoring_conflicts
from store.models import (
    Encounter,
    FeedStatus,
    Outcome,
    Prediction,
    latency_bin,
    score_bin,
    score_logit,
    table_of,
    utcnow,
)
from store.registry import RegistryLookup

PREDICTIONS = table_of(Prediction)
OUTCOMES = table_of(Outcome)
ENCOUNTERS = table_of(Encounter)
FEEDS = table_of(FeedStatus)


def _unknown_site(code: str) -> ContractViolation:
    return ContractViolation("unknown_site", f"site {code!r} is not in the registry")


@dataclass
class PredictionSink:
    """Prediction log rows → `prediction`, idempotent on prediction_id."""

    registry: RegistryLookup
    secret: str
    kind: str = "predictions"
    contract: type[PredictionRecord] = PredictionRecord

    def write(
        self, conn: Connection, batch: list[Located[PredictionRecord]], result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        refused: list[tuple[int, ContractViolation]] = []
        rows: dict[str, dict[str, Any]] = {}
        now = utcnow()
        for item in batch:
            rec = item.record
            model = self.registry.models.get(rec.model)
            if model is None:
                refused.append((item.line, ContractViolation("unknown_model", rec.model)))
                continue
            version_id = self.registry.versions.get((rec.model, rec.model_version))
            if version_id is None:
                detail = f"{rec.model} {rec.model_version} is not a registered version"
                refused.append((item.line, ContractViolation("unknown_version", detail)))
                continue
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                refused.append((item.line, _unknown_site(rec.site)))
                continue
            digest = hashlib.sha256(rec.model_dump_json().encode()).hexdigest()[:32]
            if rec.prediction_id in rows:
                self._duplicate(
                    item.line, rows[rec.prediction_id]["content_hash"], digest, refused, result
                )
                continue
            latency = None
            if rec.delivered_at is not None:
                latency = (rec.delivered_at - rec.trigger_at).total_seconds()
            rows[rec.prediction_id] = {
                "prediction_id": rec.prediction_id,
                "model_id": model.id,
                "version_id": version_id,
                "site_id": site_id,
                "unit": rec.unit,
                "arm": rec.arm,
                "encounter_key": encounter_key(rec.encounter_id, self.secret),
                "trigger_at": rec.trigger_at,
                "scored_at": rec.scored_at,
                "delivered_at": rec.delivered_at,
                "scored_hour": int(rec.scored_at.timestamp() // 3600),
                "horizon_end": rec.scored_at + timedelta(hours=model.horizon_hours),
                "score": rec.score,
                "score_bin": None if rec.score is None else score_bin(rec.score),
                "score_logit": None if rec.score is None else score_logit(rec.score),
                "threshold": rec.threshold,
                "alert": rec.alert,
                "status": rec.status,
                "latency_seconds": latency,
                "latency_bin": None if latency is None else latency_bin(latency),
                "degraded": False,
                "inputs": rec.inputs,
                "content_hash": digest,
                "label": None,
                "settled_at": None,
                "ingested_at": now,
                "_line": item.line,
            }
        if rows:
            existing = dict(
                conn.execute(
                    sa.select(PREDICTIONS.c.prediction_id, PREDICTIONS.c.content_hash).where(
                        PREDICTIONS.c.prediction_id.in_(list(rows))
                    )
                ).all()
            )
            for pid, known_hash in existing.items():
                row = rows.pop(pid)
                self._duplicate(row["_line"], known_hash, row["content_hash"], refused, result)
            fresh = [{k: v for k, v in r.items() if k != "_line"} for r in rows.values()]
            insert_ignoring_conflicts(conn, PREDICTIONS, fresh)
            result.inserted += len(fresh)
        return refused

    @staticmethod
    def _duplicate(
        line: int,
        known_hash: str,
        new_hash: str,
        refused: list[tuple[int, ContractViolation]],
        result: IngestResult,
    ) -> None:
        if known_hash == new_hash:
            result.duplicates += 1
        else:
            detail = "prediction_id already stored with different content; kept the first"
            refused.append((line, ContractViolation("duplicate_conflict", detail)))


def _count_new(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    return insert_ignoring_conflicts(conn, table, rows)


@dataclass
class OutcomeSink:
    """Outcome rows → `outcome`, idempotent on (encounter, outcome, time)."""

    registry: RegistryLookup
    secret: str
    kind: str = "outcomes"
    contract: type[OutcomeRecord] = OutcomeRecord

    def write(
        self, conn: Connection, batch: list[Located[OutcomeRecord]], result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        refused: list[tuple[int, ContractViolation]] = []
        outcomes = {m.outcome for m in self.registry.models.values()}
        rows = []
        now = utcnow()
        for item in batch:
            rec = item.record
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                refused.append((item.line, _unknown_site(rec.site)))
            elif rec.outcome not in outcomes:
                detail = f"no registered model predicts {rec.outcome!r}"
                refused.append((item.line, ContractViolation("unknown_outcome", detail)))
            else:
                rows.append(
                    {
                        "encounter_key": encounter_key(rec.encounter_id, self.secret),
                        "site_id": site_id,
                        "outcome": rec.outcome,
                        "outcome_at": rec.outcome_at,
                        "recorded_at": rec.recorded_at,
                        "ingested_at": now,
                    }
                )
        added = _count_new(conn, OUTCOMES, rows)
        result.inserted += added
        result.duplicates += len(rows) - added
        return refused


@dataclass
class EncounterSink:
    """Encounter closures → `encounter`, idempotent on the encounter."""

    registry: RegistryLookup
    secret: str
    kind: str = "encounters"
    contract: type[EncounterRecord] = EncounterRecord

    def write(
        self, conn: Connection, batch: list[Located[EncounterRecord]], result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        refused: list[tuple[int, ContractViolation]] = []
        rows = []
        now = utcnow()
        for item in batch:
            rec = item.record
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                refused.append((item.line, _unknown_site(rec.site)))
                continue
            rows.append(
                {
                    "encounter_key": encounter_key(rec.encounter_id, self.secret),
                    "site_id": site_id,
                    "unit": rec.unit,
                    "admitted_at": rec.admitted_at,
                    "discharged_at": rec.discharged_at,
                    "recorded_at": rec.recorded_at,
                    "ingested_at": now,
                }
            )
        added = _count_new(conn, ENCOUNTERS, rows)
        result.inserted += added
        result.duplicates += len(rows) - added
        return refused


@dataclass
class HeartbeatSink:
    """Interface-engine heartbeats → `feedstatus`, idempotent on (feed, site, received_at)."""

    registry: RegistryLookup
    kind: str = "heartbeats"
    contract: type[HeartbeatRecord] = HeartbeatRecord

    def write(
        self, conn: Connection, batch: list[Located[HeartbeatRecord]], result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        refused: list[tuple[int, ContractViolation]] = []
        rows = []
        for item in batch:
            rec = item.record
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                refused.append((item.line, _unknown_site(rec.site)))
                continue
            rows.append(
                {
                    "feed": rec.feed.upper(),
                    "site_id": site_id,
                    "last_event_at": rec.last_event_at,
                    "received_at": rec.received_at,
                    "messages": rec.messages,
                    "errors": rec.errors,
                    "source": "heartbeat",
                }
            )
        added = _count_new(conn, FEEDS, rows)
        result.inserted += added
        result.duplicates += len(rows) - added
        return refused
