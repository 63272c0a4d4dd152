"""Read the quarantine: counts per source and reason, and the latest refused rows."""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from store.models import Quarantine, table_of

Q = table_of(Quarantine)


def _filtered(query: Any, source: str | None, reason: str | None) -> Any:
    if source:
        query = query.where(Q.c.source_kind == source)
    if reason:
        query = query.where(Q.c.reason == reason)
    return query


def quarantine_counts(
    *, engine: Engine, source: str | None = None, reason: str | None = None
) -> pd.DataFrame:
    """Rows quarantined per source and reason, with the files they came from and the latest."""
    query = _filtered(
        sa.select(
            Q.c.source_kind.label("source"),
            Q.c.reason,
            sa.func.count().label("rows"),
            sa.func.count(sa.distinct(Q.c.source_file)).label("files"),
            sa.func.max(Q.c.quarantined_at).label("latest"),
        )
        .group_by(Q.c.source_kind, Q.c.reason)
        .order_by(sa.func.count().desc(), Q.c.source_kind, Q.c.reason),
        source,
        reason,
    )
    return _frame(engine, query)


def recent_quarantine(
    *, engine: Engine, source: str | None = None, reason: str | None = None, limit: int = 100
) -> pd.DataFrame:
    """The latest quarantined rows: where they came from, why, and the redacted row."""
    query = _filtered(
        sa.select(
            Q.c.quarantined_at,
            Q.c.source_kind.label("source"),
            Q.c.reason,
            Q.c.source_file.label("file"),
            Q.c.location,
            Q.c.detail,
            Q.c.raw,
        )
        .order_by(Q.c.id.desc())
        .limit(limit),
        source,
        reason,
    )
    return _frame(engine, query)


def _frame(engine: Engine, query: Any) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.all(), columns=list(result.keys()))
