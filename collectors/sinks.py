"""One sink per source kind: translate validated records into store rows.

Every sink is idempotent on its natural key, so a file read twice adds nothing: predictions on
`prediction_id` (a known id with other content is refused as `duplicate_conflict`, never
overwritten), outcomes on (encounter, outcome, time), closures on the encounter, heartbeats on
(feed, site, received_at). HL7 feed counts accumulate per (feed, site, received_at) in the
same transaction as the file's checkpoint, so they are exact across a crash too.
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from collectors.base import Batch, IngestResult, Prepared
from collectors.bulkload import PYDANTIC_UTC, insert_rows, utc_text
from collectors.contracts import (
    AdtMessage,
    ContractViolation,
    EncounterRecord,
    HeartbeatRecord,
    OutcomeRecord,
    PredictionRecord,
)
from collectors.hl7v2 import FeedFault
from collectors.prediction_lines import PredictionValues
from collectors.pseudonym import EncounterKeys
from store.bulk import insert_ignoring_conflicts
from store.models import (
    LATENCY_BIN_EDGES,
    SCORE_BIN_EDGES,
    SCORE_BINS,
    Encounter,
    FeedStatus,
    Outcome,
    Prediction,
    table_of,
    utcnow,
)
from store.partitions import PREDICTION_KEY, partitioned, stored_horizon
from store.registry import RegistryLookup

PREDICTIONS = table_of(Prediction)
OUTCOMES = table_of(Outcome)
ENCOUNTERS = table_of(Encounter)
FEEDS = table_of(FeedStatus)

# The prediction columns a collector writes; label and settled_at start NULL (pending).
PREDICTION_COLUMNS = (
    "prediction_id",
    "model_id",
    "version_id",
    "site_id",
    "unit",
    "arm",
    "encounter_key",
    "trigger_at",
    "scored_at",
    "delivered_at",
    "scored_hour",
    "horizon_end",
    "score",
    "score_bin",
    "score_logit",
    "threshold",
    "alert",
    "status",
    "latency_seconds",
    "latency_bin",
    "degraded",
    "inputs",
    "content_hash",
    "ingested_at",
)
_HASH = PREDICTION_COLUMNS.index("content_hash")
_HOUR = PREDICTION_COLUMNS.index("scored_hour")
_IN_LIST = 5000  # prediction ids per IN (...) lookup


def _unknown_site(code: str) -> ContractViolation:
    return ContractViolation("unknown_site", f"site {code!r} is not in the registry")


@dataclass
class PredictionSink:
    """Prediction records → `prediction`, idempotent on prediction_id."""

    registry: RegistryLookup
    secret: str
    kind: str = "predictions"
    _keys: EncounterKeys = field(init=False, repr=False)
    # model name → (id, horizon, horizon in whole hours or None)
    _models: dict[str, tuple[int, timedelta, int | None]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = EncounterKeys(self.secret)
        self._models = {
            name: (model.id or 0, timedelta(hours=model.horizon_hours), _whole(model.horizon_hours))
            for name, model in self.registry.models.items()
        }

    def prepare(self, batch: Batch[PredictionRecord | PredictionValues]) -> Prepared:
        """Store rows (PREDICTION_COLUMNS order); refused: unknown names and conflicting
        duplicates within the batch."""
        prepared = Prepared()
        refused, rows, origin = prepared.refused, prepared.rows, prepared.origin
        seen: dict[str, int] = {}
        models, versions, sites = self._models, self.registry.versions, self.registry.sites
        keys, known = self._keys, self._keys.known
        blake2b, log, bisect = hashlib.blake2b, math.log, bisect_right
        score_edges, latency_edges, last_bin = SCORE_BIN_EDGES, LATENCY_BIN_EDGES, SCORE_BINS - 1
        hours: dict[str, int] = {}
        hour_texts: dict[int, str] = {}
        threshold_texts: dict[float, str] = {}
        utc = PYDANTIC_UTC
        ingested = utc_text(utcnow())
        for index, rec in enumerate(batch.records):
            model = models.get(rec.model)
            if model is None:
                refused.append((index, ContractViolation("unknown_model", rec.model)))
                continue
            version_id = versions.get((rec.model, rec.model_version))
            if version_id is None:
                detail = f"{rec.model} {rec.model_version} is not a registered version"
                refused.append((index, ContractViolation("unknown_version", detail)))
                continue
            site_id = sites.get(rec.site)
            if site_id is None:
                refused.append((index, _unknown_site(rec.site)))
                continue
            encounter = known.get(rec.encounter_id) or keys(rec.encounter_id)
            prediction_id = rec.prediction_id
            if rec.encounter_id in prediction_id:  # an id built from the encounter id
                prediction_id = scrub_encounter(prediction_id, rec.encounter_id, encounter)
            trigger_at, scored_at, delivered_at = rec.trigger_at, rec.scored_at, rec.delivered_at
            if type(rec) is PredictionValues:  # the fast lane cut the UTC texts already
                trigger, scored, delivered = rec.trigger_text, rec.scored_text, rec.delivered_text
            else:  # utc_text, written out: three timestamps per row
                if trigger_at.tzinfo is not utc:
                    trigger_at = trigger_at.astimezone(UTC)
                if scored_at.tzinfo is not utc:
                    scored_at = scored_at.astimezone(UTC)
                trigger = trigger_at.isoformat(" ", "microseconds")[:26]
                scored = scored_at.isoformat(" ", "microseconds")[:26]
                if delivered_at is None:
                    delivered = None
                else:
                    if delivered_at.tzinfo is not utc:
                        delivered_at = delivered_at.astimezone(UTC)
                    delivered = delivered_at.isoformat(" ", "microseconds")[:26]
            hour = hours.get(scored[:13])
            if hour is None:
                hour = hours[scored[:13]] = int(scored_at.timestamp() // 3600)
            if model[2] is None:
                horizon_end = (scored_at + model[1]).isoformat(" ", "microseconds")[:26]
            else:  # whole hours later: the same minutes and seconds, another hour
                end_hour = hour + model[2]
                end_text = hour_texts.get(end_hour)
                if end_text is None:
                    end_text = hour_texts[end_hour] = utc_text(
                        datetime.fromtimestamp(end_hour * 3600, UTC)
                    )[:13]
                horizon_end = end_text + scored[13:]
            # min() and max() written out as conditions: they run for every row
            if delivered_at is None:
                latency = lat_bin = None
            else:
                latency = (delivered_at - trigger_at).total_seconds()
                lat_bin = bisect(latency_edges, latency) - 1  # latency_bin
                if lat_bin < 0:
                    lat_bin = 0
            score = rec.score
            if score is None:
                bin_ = logit = None
            else:
                bin_ = bisect(score_edges, score) - 1  # score_bin
                if bin_ > last_bin:
                    bin_ = last_bin
                # score_logit, of the score clipped to [1e-6, 1 - 1e-6]
                clipped = 1e-6 if score < 1e-6 else 1 - 1e-6 if score > 1 - 1e-6 else score
                logit = log(clipped / (1 - clipped))
            inputs = rec.inputs
            inputs_json = None if inputs is None else inputs_text(inputs)
            # repr() of the few thresholds in use, remembered (not for 0.0: -0.0 is equal to it)
            threshold = rec.threshold
            threshold_text = threshold_texts.get(threshold) if threshold else None
            if threshold_text is None:
                threshold_text = repr(threshold)
                if threshold and type(threshold) is float and len(threshold_texts) < 1000:
                    threshold_texts[threshold] = threshold_text
            content = (
                f"{prediction_id}\x1f{rec.model}\x1f{rec.model_version}\x1f{rec.site}\x1f"
                f"{rec.unit}\x1f{encounter}\x1f{trigger}\x1f{scored}\x1f{delivered}\x1f"
                f"{score!r}\x1f{threshold_text}\x1f{'1' if rec.alert else '0'}\x1f{rec.arm}"
                f"\x1f{rec.status}"
                f"\x1f{inputs_json}"
            )
            digest = blake2b(content.encode(), digest_size=16).hexdigest()
            earlier = seen.get(prediction_id)
            if earlier is not None:
                if rows[earlier][_HASH] == digest:
                    prepared.duplicates += 1
                else:
                    refused.append((index, _conflict()))
                continue
            seen[prediction_id] = len(rows)
            origin.append(index)
            rows.append(
                (
                    prediction_id,
                    model[0],
                    version_id,
                    site_id,
                    rec.unit,
                    rec.arm,
                    encounter,
                    trigger,
                    scored,
                    delivered,
                    hour,
                    horizon_end,
                    score,
                    bin_,
                    logit,
                    rec.threshold,
                    rec.alert,
                    rec.status,
                    latency,
                    lat_bin,
                    False,
                    inputs_json,
                    digest,
                    ingested,
                )
            )
        return prepared

    def apply(
        self, conn: Connection, prepared: Prepared, result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        rows, origin = prepared.rows, prepared.origin
        refused: list[tuple[int, ContractViolation]] = []
        horizon = stored_horizon(conn)
        if horizon is not None and rows and min(row[_HOUR] for row in rows) < horizon:
            rows, origin, refused = _refuse_expired(rows, origin, horizon)
        inserted = insert_rows(conn, PREDICTIONS, PREDICTION_COLUMNS, rows)
        result.inserted += inserted
        if inserted < len(rows):
            # Some ids were stored before: the same content is a duplicate, other content a
            # conflict. (Rows inserted just now match their own hash.)
            stored = _stored_hashes(conn, [row[0] for row in rows])
            conflicts = 0
            for row, index in zip(rows, origin, strict=True):
                if stored.get(row[0]) != row[_HASH]:
                    refused.append((index, _conflict()))
                    conflicts += 1
            result.duplicates += len(rows) - inserted - conflicts
        return refused


_INPUTS_JSON = msgspec.json.Encoder(order="sorted").encode
_POSITIVE_EXPONENT = re.compile(rb"[0-9]e[0-9]").search
_EXPONENT_LIKE = re.compile(rb"e[0-9]").search  # a cheaper first look (a literal first byte)


def scrub_encounter(prediction_id: str, encounter_id: str, encounter_key: str) -> str:
    """A prediction id that embeds the raw encounter id (`det-E123-004`) with the encounter's
    pseudonym in its place, so the stored id carries no patient identifier. Deterministic, so a
    rerun still finds the same id."""
    if not encounter_id:
        return prediction_id
    return prediction_id.replace(encounter_id, f"~{encounter_key[:20]}")


def inputs_text(inputs: dict[str, float | None]) -> str:
    """Named inputs as stored (and hashed): compact JSON, keys sorted, as pydantic writes it.

    msgspec writes the same text faster, except for floats of 1e16 and more ("1e16", where
    pydantic writes "1e+16"); those take pydantic's way.
    """
    text = _INPUTS_JSON(inputs)
    if _EXPONENT_LIKE(text) and _POSITIVE_EXPONENT(text):
        text = to_json(dict(sorted(inputs.items())))
    return text.decode()


def _whole(hours: float) -> int | None:
    return int(hours) if float(hours).is_integer() else None


def _conflict() -> ContractViolation:
    return ContractViolation(
        "duplicate_conflict", "prediction_id already stored with different content; kept the first"
    )


def _refuse_expired(
    rows: list[tuple[Any, ...]], origin: list[int], horizon: int
) -> tuple[list[tuple[Any, ...]], list[int], list[tuple[int, ContractViolation]]]:
    """Rows scored at or after the retention horizon, their origins, and the others refused:
    their month's raw predictions were removed, so storing them would rebuild that hour's
    rollups from these few rows alone."""
    kept, kept_origin, refused = [], [], []
    when = datetime.fromtimestamp(horizon * 3600, UTC).date()
    for row, index in zip(rows, origin, strict=True):
        if row[_HOUR] >= horizon:
            kept.append(row)
            kept_origin.append(index)
        else:
            detail = f"scored before {when}: raw predictions before then are removed"
            refused.append((index, ContractViolation("expired", detail)))
    return kept, kept_origin, refused


def _stored_hashes(conn: Connection, ids: list[str]) -> dict[str, str]:
    """The content hash stored for each known id: from `prediction_key` on PostgreSQL, whose
    partitioned `prediction` may hold an id's row in any month."""
    keys = PREDICTION_KEY if partitioned(conn) else PREDICTIONS
    found: dict[str, str] = {}
    for start in range(0, len(ids), _IN_LIST):
        part = ids[start : start + _IN_LIST]
        query = sa.select(keys.c.prediction_id, keys.c.content_hash).where(
            keys.c.prediction_id.in_(part)
        )
        found.update((pid, digest) for pid, digest in conn.execute(query).all())
    return found


class _InsertNew:
    """`apply` for sinks whose rows are dicts inserted idempotently on a unique key."""

    table: sa.Table

    def apply(
        self, conn: Connection, prepared: Prepared, result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        added = insert_ignoring_conflicts(conn, self.table, prepared.rows)
        result.inserted += added
        result.duplicates += len(prepared.rows) - added
        return []


@dataclass
class OutcomeSink(_InsertNew):
    """Outcome records → `outcome`, idempotent on (encounter, outcome, time)."""

    registry: RegistryLookup
    secret: str
    kind: str = "outcomes"
    table = OUTCOMES

    def __post_init__(self) -> None:
        self._keys = EncounterKeys(self.secret)
        self._outcomes = {m.outcome for m in self.registry.models.values()}

    def prepare(self, batch: Batch[OutcomeRecord]) -> Prepared:
        prepared = Prepared()
        now = utcnow()
        for index, rec in enumerate(batch.records):
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                prepared.refused.append((index, _unknown_site(rec.site)))
            elif rec.outcome not in self._outcomes:
                detail = f"no registered model predicts {rec.outcome!r}"
                prepared.refused.append((index, ContractViolation("unknown_outcome", detail)))
            else:
                prepared.rows.append(
                    {
                        "encounter_key": self._keys(rec.encounter_id),
                        "site_id": site_id,
                        "outcome": rec.outcome,
                        "outcome_at": rec.outcome_at,
                        "recorded_at": rec.recorded_at,
                        "ingested_at": now,
                    }
                )
        return prepared


@dataclass
class EncounterSink(_InsertNew):
    """Encounter closures → `encounter`, idempotent on the encounter."""

    registry: RegistryLookup
    secret: str
    kind: str = "encounters"
    table = ENCOUNTERS

    def __post_init__(self) -> None:
        self._keys = EncounterKeys(self.secret)

    def prepare(self, batch: Batch[EncounterRecord]) -> Prepared:
        prepared = Prepared()
        now = utcnow()
        for index, rec in enumerate(batch.records):
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                prepared.refused.append((index, _unknown_site(rec.site)))
                continue
            prepared.rows.append(
                {
                    "encounter_key": self._keys(rec.encounter_id),
                    "site_id": site_id,
                    "unit": rec.unit,
                    "admitted_at": rec.admitted_at,
                    "discharged_at": rec.discharged_at,
                    "recorded_at": rec.recorded_at,
                    "ingested_at": now,
                }
            )
        return prepared


@dataclass
class HeartbeatSink(_InsertNew):
    """Interface-engine heartbeats → `feedstatus`, idempotent on (feed, site, received_at)."""

    registry: RegistryLookup
    kind: str = "heartbeats"
    table = FEEDS

    def prepare(self, batch: Batch[HeartbeatRecord]) -> Prepared:
        prepared = Prepared()
        for index, rec in enumerate(batch.records):
            site_id = self.registry.sites.get(rec.site)
            if site_id is None:
                prepared.refused.append((index, _unknown_site(rec.site)))
                continue
            prepared.rows.append(
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
        return prepared


@dataclass
class AdtFeedSink:
    """HL7 ADT messages → one `feedstatus` row per (feed, site) per ingest of a file.

    `received_at` is when the collector read the file; messages and errors (messages refused
    by their contract) add up over the file's chunks, and last_event_at is the latest event.
    """

    registry: RegistryLookup
    received_at: datetime
    kind: str = "adt"

    def prepare(self, batch: Batch[AdtMessage | FeedFault]) -> Prepared:
        prepared = Prepared()
        feeds: dict[tuple[str, int], list[Any]] = {}
        for index, rec in enumerate(batch.records):
            site = rec.site if isinstance(rec, FeedFault) else rec.sending_facility
            site_id = self.registry.sites.get(site)
            if site_id is None:
                prepared.refused.append((index, _unknown_site(site)))
                continue
            entry = feeds.setdefault((rec.feed, site_id), [0, 0, None])
            entry[0] += 1
            if isinstance(rec, FeedFault):
                entry[1] += 1
                prepared.refused.append((index, rec.violation))
                continue
            if entry[2] is None or rec.last_event_at > entry[2]:
                entry[2] = rec.last_event_at
        prepared.rows = [
            {
                "feed": feed,
                "site_id": site_id,
                "last_event_at": last,
                "received_at": self.received_at,
                "messages": messages,
                "errors": errors,
                "source": "hl7",
            }
            for (feed, site_id), (messages, errors, last) in feeds.items()
        ]
        return prepared

    def apply(
        self, conn: Connection, prepared: Prepared, result: IngestResult
    ) -> list[tuple[int, ContractViolation]]:
        if prepared.rows:
            _accumulate_feeds(conn, prepared.rows)
        result.inserted += sum(row["messages"] - row["errors"] for row in prepared.rows)
        return []


def _accumulate_feeds(conn: Connection, rows: list[dict[str, Any]]) -> None:
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(FEEDS)
        latest = sa.func.greatest(FEEDS.c.last_event_at, stmt.excluded.last_event_at)
    else:
        stmt = sqlite.insert(FEEDS)
        mine, theirs = FEEDS.c.last_event_at, stmt.excluded.last_event_at
        # SQLite's two-argument max() is NULL if either is; timestamps compare as text.
        latest = sa.func.max(sa.func.coalesce(mine, theirs), sa.func.coalesce(theirs, mine))
    stmt = stmt.on_conflict_do_update(
        index_elements=["feed", "site_id", "received_at"],
        set_={
            "messages": FEEDS.c.messages + stmt.excluded.messages,
            "errors": FEEDS.c.errors + stmt.excluded.errors,
            "last_event_at": latest,
        },
    )
    conn.execute(stmt, rows)
