"""The audit log: append-only and hash-chained, so an edited or deleted event is detected.

Each event's hash is sha256(prev_hash + canonical JSON of the event). Appends are serialised
by locking the chain's one-row head (an UPDATE, so it is the transaction's first write on
SQLite as on PostgreSQL); the head also records the count and the last hash, so deleting
events at the end of the chain is detected as surely as editing one in the middle. The
database refuses UPDATE and DELETE on `auditevent` (triggers, migration 0005).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from store.models import AuditEvent, AuditHead, table_of, utcnow

AE = table_of(AuditEvent)
AH = table_of(AuditHead)
GENESIS = "0" * 64
HEAD_ID = 1


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return _timestamp(value)
    return str(value)


def normalise_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """The detail exactly as JSON will store and return it (datetimes as ISO text)."""
    return json.loads(json.dumps(detail or {}, default=_json_default))


def canonical_event(
    *, at: datetime, actor: str, role: str, action: str, target: str, detail: dict[str, Any]
) -> str:
    """Canonical JSON of an event: sorted keys, no whitespace, UTC microsecond timestamp."""
    return json.dumps(
        {
            "at": _timestamp(at),
            "actor": actor,
            "role": role,
            "action": action,
            "target": target,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def event_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def lock_chain(conn: Connection) -> tuple[int, str]:
    """Lock the chain for this transaction and return (events so far, last hash).

    Call it first in a transaction that will append, before reading the state the action
    depends on: the UPDATE takes PostgreSQL's row lock and SQLite's write lock, so actions
    that change clinical behaviour run one at a time and each reads what the last committed.
    """
    now = utcnow()
    locked = conn.execute(sa.update(AH).where(AH.c.id == HEAD_ID).values(updated_at=now)).rowcount
    if not locked:  # a store created without migration 0005's head row
        conn.execute(sa.insert(AH).values(id=HEAD_ID, events=0, hash=GENESIS, updated_at=now))
    row = conn.execute(sa.select(AH.c.events, AH.c.hash).where(AH.c.id == HEAD_ID)).one()
    return int(row.events), str(row.hash)


def append(
    conn: Connection,
    *,
    actor: str,
    role: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> str:
    """Append one event inside the caller's transaction; returns its hash."""
    events, prev_hash = lock_chain(conn)
    at = (at or utcnow()).astimezone(UTC)
    stored_detail = normalise_detail(detail)
    digest = event_hash(
        prev_hash,
        canonical_event(
            at=at, actor=actor, role=role, action=action, target=target, detail=stored_detail
        ),
    )
    conn.execute(
        sa.insert(AE).values(
            at=at,
            actor=actor,
            role=role,
            action=action,
            target=target,
            detail=stored_detail,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    conn.execute(
        sa.update(AH)
        .where(AH.c.id == HEAD_ID)
        .values(events=events + 1, hash=digest, updated_at=at)
    )
    return digest


@dataclass(frozen=True)
class ChainReport:
    """The result of verifying the chain: ok, or the first broken link and why."""

    ok: bool
    events: int
    head_hash: str
    broken_at: int | None = None  # id of the first event whose link is broken
    problem: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.events} events, head {self.head_hash}"
        where = f"event #{self.broken_at}" if self.broken_at is not None else "the chain's end"
        return f"audit chain BROKEN at {where}: {self.problem}"


def _read_head(conn: Connection) -> tuple[int, str]:
    head = conn.execute(sa.select(AH.c.events, AH.c.hash).where(AH.c.id == HEAD_ID)).first()
    return (int(head.events), str(head.hash)) if head is not None else (0, GENESIS)


def verify_chain(engine: Engine) -> ChainReport:
    """Walk the chain from the start; report the first edited, deleted, inserted or missing
    event, and any event stored past the head (a forged tail).

    The head is read again after each pass: events appended while the chain is walked are
    walked too, so a live store verifies without a false alarm and without a snapshot.
    """
    prev, count, last_id = GENESIS, 0, 0
    with engine.connect() as conn:
        initial_events, _ = _read_head(conn)
        past_head: dict[int, int] = {}  # position → event id, for positions past the first head
        for _attempt in range(5):
            walked = 0
            rows = conn.execution_options(yield_per=1000).execute(
                sa.select(AE).where(AE.c.id > last_id).order_by(AE.c.id)
            )
            for row in rows:
                if row.prev_hash != prev:
                    rows.close()
                    return ChainReport(
                        False,
                        count,
                        prev,
                        row.id,
                        "its prev_hash does not match the hash of the event before it: "
                        "an earlier event was deleted or rewritten",
                    )
                recomputed = event_hash(
                    prev,
                    canonical_event(
                        at=row.at,
                        actor=row.actor,
                        role=row.role,
                        action=row.action,
                        target=row.target,
                        detail=normalise_detail(row.detail),
                    ),
                )
                if recomputed != row.hash:
                    rows.close()
                    return ChainReport(
                        False,
                        count,
                        prev,
                        row.id,
                        "its content does not match its hash: the event was edited",
                    )
                prev, count, last_id, walked = row.hash, count + 1, row.id, walked + 1
                if count > initial_events:
                    past_head[count] = row.id
            rows.close()
            expected_events, expected_head = _read_head(conn)
            if count > expected_events:
                return ChainReport(
                    False,
                    expected_events,
                    expected_head,
                    past_head.get(expected_events + 1),
                    f"the chain holds {count - expected_events} event(s) past its head, which "
                    f"records {expected_events}: events were added without the head",
                )
            if count == expected_events or walked == 0:
                break  # done, or nothing new arrived: a shorter chain is a deleted tail
    if count != expected_events or prev != expected_head:
        return ChainReport(
            False,
            count,
            prev,
            None,
            f"the chain holds {count} events ending in {prev[:12]}, but its head records "
            f"{expected_events} ending in {expected_head[:12]}: events at the end were deleted "
            "or the last one was edited",
        )
    return ChainReport(True, count, prev)


def recent_events(
    engine: Engine, *, limit: int = 100, target_contains: str | None = None
) -> list[dict[str, Any]]:
    """The newest audit events first (for the incident console's timeline)."""
    query = sa.select(
        AE.c.id, AE.c.at, AE.c.actor, AE.c.role, AE.c.action, AE.c.target, AE.c.detail
    )
    if target_contains:
        query = query.where(AE.c.target.contains(target_contains, autoescape=True))
    query = query.order_by(AE.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
