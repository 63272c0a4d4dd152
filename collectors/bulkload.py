"""The fast write path: tuples of database-ready values, one statement per batch.

SQLite: one `executemany` of an INSERT … ON CONFLICT DO NOTHING compiled once per table, with
values already in the store's storage form, so no per-value type processing runs in Python;
the driver's rowcount counts the new rows exactly. PostgreSQL: COPY into a temporary table,
then one INSERT … SELECT … ON CONFLICT DO NOTHING, whose rowcount is exact too (predictions:
their ids into `prediction_key` first, see `_prediction_insert` and store/partitions.py).

Timestamps are passed as UTC text in the form SQLAlchemy's SQLite dialect stores
(`utc_text`); PostgreSQL reads the same text in a transaction whose time zone is UTC.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from store.partitions import ensure_partitions_for_write

if TYPE_CHECKING:
    import psycopg


PREDICTION_TABLE = "prediction"  # on PostgreSQL: month partitions and `prediction_key`

# pydantic gives every timestamp written with "Z" this one time zone object: a timestamp that
# has it needs no conversion (an identity test is far cheaper than utcoffset()).
PYDANTIC_UTC = TypeAdapter(datetime).validate_json(b'"2000-01-01T00:00:00Z"').tzinfo


def utc_text(moment: datetime) -> str:
    """An aware timestamp as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC (the store's SQLite form)."""
    if moment.tzinfo is not PYDANTIC_UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]


# A bigger page cache for bulk loads: the prediction table's indexes (one on a random 64-hex
# key) outgrow SQLite's default 2 MiB quickly, and then every insert rereads index pages.
SQLITE_CACHE_PRAGMA = "PRAGMA cache_size = -65536"
# While a large file is written, the write-ahead log is copied into the database every 128 MiB
# of it (4 KiB pages) rather than SQLite's 4 MiB, and once at the end: a random-keyed index's
# pages, rewritten by every transaction, are copied (and the files synced) a few times per file,
# not once per transaction. Measured on a 200,000-prediction file: 4 syncs instead of 31.
SQLITE_BULK_CHECKPOINT_PAGES = 32768
SQLITE_BULK_PRAGMAS = (
    SQLITE_CACHE_PRAGMA,
    f"PRAGMA wal_autocheckpoint = {SQLITE_BULK_CHECKPOINT_PAGES}",
)
SQLITE_BULK_END = "PRAGMA wal_checkpoint(PASSIVE)"


@contextmanager
def bulk_load(conn: Connection) -> Iterator[None]:
    """`conn` set up for writing one large file (SQLite; as it is elsewhere).

    Commit the last transaction inside the block: the log is then checkpointed, and the
    connection's own checkpoint interval restored (also when the block raises).
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = conn.connection.dbapi_connection
    assert driver is not None
    before = driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    for pragma in SQLITE_BULK_PRAGMAS:
        driver.execute(pragma)
    try:
        yield
        driver.execute(SQLITE_BULK_END)
    finally:
        with contextlib.suppress(sqlite3.Error):  # a broken connection is not reused anyway
            driver.execute(f"PRAGMA wal_autocheckpoint = {int(before)}")


@cache
def _sqlite_insert(table: sa.Table, columns: tuple[str, ...]) -> str:
    stmt = sqlite.insert(table).on_conflict_do_nothing()
    compiled = stmt.compile(dialect=sqlite.dialect(), column_keys=list(columns))
    return str(compiled)


def insert_rows(
    conn: Connection, table: sa.Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> int:
    """Insert `rows` (values in `columns` order), skipping unique-key conflicts; returns how
    many rows are new."""
    if not rows:
        return 0
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(SQLITE_CACHE_PRAGMA)
        result = conn.exec_driver_sql(_sqlite_insert(table, columns), list(rows))
        return int(result.rowcount)
    if conn.dialect.name == "postgresql":
        return _copy_insert(conn, table, columns, rows)
    raise NotImplementedError(conn.dialect.name)  # pragma: no cover


def _copy_insert(
    conn: Connection, table: sa.Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> int:
    names = ", ".join(f'"{c}"' for c in columns)
    stage = f"vigil_stage_{table.name}"
    if table.name == PREDICTION_TABLE:
        hour = columns.index("scored_hour")
        ensure_partitions_for_write(conn, {row[hour] for row in rows})
    driver = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    with driver.cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f'SELECT {names} FROM "{table.name}" WITH NO DATA'
        )
        with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if table.name == PREDICTION_TABLE:
            cursor.execute(_prediction_insert(stage, columns))
        else:
            cursor.execute(
                f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM {stage} '
                "ON CONFLICT DO NOTHING"
            )
        inserted = int(cursor.rowcount)
        cursor.execute(f"TRUNCATE {stage}")
    return inserted


def _prediction_insert(stage: str, columns: tuple[str, ...]) -> str:
    """PostgreSQL: the partitioned `prediction` enforces no unique prediction_id, so the ids go
    into `prediction_key` first and only the rows whose id it accepted are inserted. The
    statement's rowcount is theirs. The stage's prediction ids are distinct (the sink refuses
    an id repeated within a batch)."""
    names = ", ".join(f'"{c}"' for c in columns)
    staged = ", ".join(f's."{c}"' for c in columns)
    return (
        "WITH accepted AS ("
        "INSERT INTO prediction_key (prediction_id, content_hash, scored_hour) "
        f"SELECT prediction_id, content_hash, scored_hour FROM {stage} "
        "ON CONFLICT DO NOTHING RETURNING prediction_id) "
        f"INSERT INTO prediction ({names}) SELECT {staged} FROM {stage} AS s "
        "JOIN accepted AS a ON a.prediction_id = s.prediction_id"
    )
