"""Bulk writes through SQLAlchemy Core: one executemany per batch, never an ORM object per row."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def insert_ignoring_conflicts(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> int:
    """INSERT rows, skipping any that collide with a unique key; returns how many were new."""
    if not rows:
        return 0
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(conn.dialect.name)
    # rowcount is -1 for executemany on psycopg; RETURNING counts exactly on both databases.
    key = next(iter(table.primary_key.columns))
    return len(conn.execute(stmt.returning(key), list(rows)).all())


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> None:
    """INSERT rows, or UPDATE the `update` columns where the `key` columns already exist."""
    if not rows:
        return
    stmt = _upsert_statement(conn.dialect.name, table, tuple(key), tuple(update))
    conn.execute(stmt, rows if isinstance(rows, list) else list(rows))


@lru_cache(maxsize=128)
def _upsert_statement(
    dialect: str, table: sa.Table, key: tuple[str, ...], update: tuple[str, ...]
) -> Any:
    """One statement object per dialect, table and columns: built, cache-keyed and compiled
    once (SQLAlchemy's compiled cache), not again for every batch."""
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover
        raise NotImplementedError(dialect)
    return stmt.on_conflict_do_update(
        index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
    )
