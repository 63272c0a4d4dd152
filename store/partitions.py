"""The prediction table's monthly partitions (PostgreSQL) and raw-prediction retention.

On PostgreSQL `prediction` is partitioned by range of `scored_hour`, one partition per
calendar month (`prediction_2026_09`), plus `prediction_default` for a row whose month has no
partition yet (a row written outside the collectors, or while a partition could not be made).
`prediction_key` holds every stored `prediction_id` once, with its content hash and hour: a
partitioned table can only enforce keys that contain the partition key, so the collectors'
idempotency across months lives there (migration 0008). On SQLite `prediction` stays one
table with its unique `prediction_id`.

Partitions are created before rows of their month are written: the write path asks for the
months of each batch (cached per process), and the daily `partitions` job creates the coming
months ahead of time and moves any rows that landed in the default partition. Creation runs
on its own short transaction (create the table, move the month's rows out of the default
partition, attach), serialised between processes by an advisory lock, with a lock timeout: a
month that cannot be made at once is made by a later batch or the daily job, and its rows
wait in the default partition meanwhile.

Retention (`prediction_retention_days`, None keeps everything) removes raw predictions of
whole months that ended before the horizon: PostgreSQL drops the month's partition and deletes
its keys in one transaction; SQLite deletes the rows in bounded batches. Rollups and
histograms are never touched: monitors read those, and they keep the whole history.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from store.models import JobState, Model, Prediction, table_of, utcnow
from store.rollups import set_state

logger = logging.getLogger(__name__)
UNIQUE_PREDICTION_ID = "uq_prediction_prediction_id"  # the model's; SQLite keeps it

P = table_of(Prediction)
# PostgreSQL only (migration 0008): not a model, so SQLite's schema has no such table.
PREDICTION_KEY = sa.table(
    "prediction_key",
    sa.column("prediction_id", sa.String),
    sa.column("content_hash", sa.String),
    sa.column("scored_hour", sa.Integer),
)
DEFAULT_PARTITION = "prediction_default"
PARTITION_NAME = re.compile(r"^prediction_(\d{4})_(\d{2})$")
# Serialises partition changes between processes (pg_advisory_xact_lock; any constant).
PARTITION_LOCK = 0x76_69_67_69_6C_70  # "vigilp"
LOCK_TIMEOUT = "2s"  # a writer that waits longer for the locks lets its rows use the default
# The daily job waits longer: dropping a partition locks `prediction` exclusively, and a job
# that cannot have the locks fails (recorded like any job error) and tries again next run.
MAINTENANCE_LOCK_TIMEOUT = "10s"
MONTHS_AHEAD = 2  # the daily job keeps this month and the next MONTHS_AHEAD partitions ready
SQLITE_DELETE_BATCH = 20_000  # rows per transaction when SQLite deletes expired predictions
# The first scored hour still kept (JobState): the collectors refuse older predictions as
# `expired`, so a file replayed after its month was removed cannot bring back a few of its
# rows and make the rollup refresh rebuild that hour from them.
HORIZON_STATE = "retention.prediction_horizon_hour"

Month = tuple[int, int]  # (year, month)


@lru_cache(maxsize=1 << 16)
def month_of_hour(hour: int) -> Month:
    """The calendar month (UTC) of an epoch hour."""
    moment = datetime.fromtimestamp(hour * 3600, UTC)
    return moment.year, moment.month


def month_start_hour(month: Month) -> int:
    return int(datetime(month[0], month[1], 1, tzinfo=UTC).timestamp()) // 3600


def next_month(month: Month) -> Month:
    year, number = month
    return (year + 1, 1) if number == 12 else (year, number + 1)


def partition_name(month: Month) -> str:
    return f"prediction_{month[0]:04d}_{month[1]:02d}"


def is_partition_object(name: str | None) -> bool:
    """Whether a table name is one of PostgreSQL's physical prediction tables (a partition or
    the key table), which no model describes."""
    return bool(name) and (
        name in (DEFAULT_PARTITION, "prediction_key") or bool(PARTITION_NAME.match(name or ""))
    )


def modelled(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's `include_name` hook: leave out PostgreSQL's physical prediction tables (month
    partitions, the default partition, prediction_key), which no model describes, so that
    comparing the models with a database (autogenerate, tests/store/test_schema.py) does not
    propose dropping them."""
    if type_ == "table":
        return not is_partition_object(name)
    if type_ in ("index", "unique_constraint", "column", "foreign_key_constraint"):
        return not is_partition_object(parent_names.get("table_name"))
    return True


def modelled_on_postgresql(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's `include_object` hook on PostgreSQL: `prediction_id` is unique through
    `prediction_key` there, since the partitioned table cannot hold the model's constraint."""
    return not (type_ == "unique_constraint" and name == UNIQUE_PREDICTION_ID)


def partitioned(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _exists(conn: Connection, name: str) -> bool:
    return conn.exec_driver_sql(f"SELECT to_regclass('public.{name}')").scalar() is not None


def create_month_partition(conn: Connection, month: Month) -> int:
    """Create (if missing) and attach the partition of `month`, moving its rows out of the
    default partition; returns how many rows moved. The caller holds PARTITION_LOCK."""
    name = partition_name(month)
    if _exists(conn, name):
        return 0
    low, high = month_start_hour(month), month_start_hour(next_month(month))
    in_month = f"scored_hour >= {low} AND scored_hour < {high}"
    # Nobody writes into the default partition while its rows of this month move.
    conn.exec_driver_sql(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
    conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE prediction INCLUDING DEFAULTS)")
    # The bound as a constraint lets ATTACH skip checking the rows (PostgreSQL's advice).
    conn.exec_driver_sql(f"ALTER TABLE {name} ADD CONSTRAINT {name}_month CHECK ({in_month})")
    moved = conn.exec_driver_sql(
        f"INSERT INTO {name} SELECT * FROM {DEFAULT_PARTITION} WHERE {in_month}"
    ).rowcount
    if moved:
        conn.exec_driver_sql(f"DELETE FROM {DEFAULT_PARTITION} WHERE {in_month}")
    # ATTACH locks the parent only SHARE UPDATE EXCLUSIVE (CREATE … PARTITION OF would lock it
    # exclusively); what this short transaction holds exclusively is the default partition.
    conn.exec_driver_sql(
        f"ALTER TABLE prediction ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})"
    )
    conn.exec_driver_sql(f"ALTER TABLE {name} DROP CONSTRAINT {name}_month")
    name_partition_indexes(conn, name)
    logger.info("created partition %s (%d rows moved from the default partition)", name, moved)
    return int(moved)


def name_partition_indexes(conn: Connection, partition: str) -> None:
    """Name a partition's indexes after the parent's (`ix_prediction_pending_2026_09`), so a
    plan names the index it uses whichever month it reads."""
    suffix = partition.removeprefix("prediction_")
    pairs = conn.exec_driver_sql(
        "SELECT c.relname, p.relname FROM pg_index AS x "
        "JOIN pg_class AS c ON c.oid = x.indexrelid "
        "JOIN pg_inherits AS i ON i.inhrelid = x.indexrelid "
        "JOIN pg_class AS p ON p.oid = i.inhparent "
        f"WHERE x.indrelid = to_regclass('public.{partition}')"
    ).all()
    for child, parent in pairs:
        if child != f"{parent}_{suffix}":
            conn.exec_driver_sql(f'ALTER INDEX "{child}" RENAME TO "{parent}_{suffix}"')


def _lock(conn: Connection, timeout: str = LOCK_TIMEOUT) -> None:
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{timeout}'")
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PARTITION_LOCK})")


# Months whose partition this process has seen, per database URL.
_READY: set[tuple[str, Month]] = set()


def ensure_partitions_for_write(conn: Connection, hours: set[int]) -> None:
    """Make sure the months of `hours` have partitions before `conn` writes rows of them.

    Runs on a separate connection, committed at once, so the writer's transaction holds no
    lock on the new table. Skipped (the rows then go to the default partition until the next
    batch or the daily job) when the writer itself already holds a lock on the default
    partition, or when the locks are not granted within LOCK_TIMEOUT.
    """
    url = conn.engine.url.render_as_string(hide_password=True)
    months = {month_of_hour(hour) for hour in hours}
    missing = sorted(m for m in months if (url, m) not in _READY)
    if not missing:
        return
    held = conn.exec_driver_sql(
        "SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() "
        f"AND relation = to_regclass('public.{DEFAULT_PARTITION}') LIMIT 1"
    ).first()
    if held is not None:
        return
    try:
        with conn.engine.connect() as side:
            _lock(side)
            for month in missing:
                create_month_partition(side, month)
            side.commit()
    except sa.exc.OperationalError as exc:  # lock timeout: a later batch or the job makes it
        logger.warning("partitions %s not created now: %s", missing, exc.orig)
        return
    _READY.update((url, m) for m in missing)


def forget_partition_cache() -> None:
    """Forget which partitions exist (after dropping some, or in tests)."""
    _READY.clear()


@dataclass
class PartitionReport:
    """What one maintenance run did; partitions by name, never prediction ids."""

    created: list[str] = field(default_factory=list)
    moved_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # partition → predictions dropped
    deleted_rows: int = 0  # expired predictions deleted row by row (SQLite, default partition)
    horizon_hour: int | None = None  # predictions scored before it are gone


def stored_horizon(conn: Connection) -> int | None:
    """The retention horizon in force (an epoch hour), or None while nothing was removed."""
    J = table_of(JobState)
    value = conn.execute(sa.select(J.c.value).where(J.c.key == HORIZON_STATE)).scalar()
    return None if value is None else int(value)


def _store_horizon(conn: Connection, horizon: int) -> int:
    """Move the stored horizon forward to `horizon` (never back: what was removed is gone);
    returns the horizon in force."""
    current = stored_horizon(conn)
    if current is None or horizon > current:
        set_state(conn, HORIZON_STATE, str(horizon))
        return horizon
    return current


def retention_horizon(now: datetime, retention_days: int) -> int:
    """The first hour kept: the start of the month holding now - retention_days (only whole
    months are dropped, so the horizon is a month's start on every backend)."""
    cutoff = now - timedelta(days=retention_days)
    return month_start_hour((cutoff.year, cutoff.month))


def maintain_partitions(
    engine: Engine,
    *,
    retention_days: int | None,
    now: datetime | None = None,
    months_ahead: int = MONTHS_AHEAD,
) -> PartitionReport:
    """Create the coming months' partitions and drop (or delete) expired raw predictions."""
    now = now or utcnow()
    report = PartitionReport()
    horizon = None if retention_days is None else retention_horizon(now, retention_days)
    report.horizon_hour = horizon
    if engine.dialect.name == "postgresql":
        _maintain_postgres(engine, report, now=now, months_ahead=months_ahead)
    elif horizon is not None:
        with engine.begin() as conn:  # first: no expired row is accepted while deleting
            horizon = report.horizon_hour = _store_horizon(conn, horizon)
        report.deleted_rows = _delete_expired_sqlite(engine, horizon)
    if report.dropped or report.deleted_rows:
        logger.info(
            "retention: predictions before %s removed: %s partitions %s, %d rows deleted",
            datetime.fromtimestamp((report.horizon_hour or 0) * 3600, UTC).date(),
            len(report.dropped),
            ", ".join(f"{name} ({n})" for name, n in report.dropped.items()) or "-",
            report.deleted_rows,
        )
    return report


def _maintain_postgres(engine: Engine, report: PartitionReport, *, now: datetime,
                       months_ahead: int) -> None:  # fmt: skip
    horizon = report.horizon_hour
    with engine.begin() as conn:
        _lock(conn, MAINTENANCE_LOCK_TIMEOUT)
        if horizon is not None:
            horizon = report.horizon_hour = _store_horizon(conn, horizon)
        wanted = [(now.year, now.month)]
        for _ in range(months_ahead):
            wanted.append(next_month(wanted[-1]))
        # Months that have rows waiting in the default partition get their partition too.
        waiting = conn.exec_driver_sql(
            f"SELECT DISTINCT scored_hour FROM {DEFAULT_PARTITION}"
        ).scalars()
        wanted += sorted({month_of_hour(hour) for hour in waiting})
        for month in sorted(set(wanted)):
            if horizon is not None and month_start_hour(next_month(month)) <= horizon:
                continue  # expired: its rows are deleted below, not given a partition
            if not _exists(conn, partition_name(month)):
                report.moved_rows += create_month_partition(conn, month)
                report.created.append(partition_name(month))
        if horizon is None:
            return
        for name in month_partitions(conn):
            match = PARTITION_NAME.match(name)
            assert match is not None
            month = (int(match.group(1)), int(match.group(2)))
            if month_start_hour(next_month(month)) > horizon:
                continue
            gone = conn.exec_driver_sql(
                f"DELETE FROM prediction_key AS k USING {name} AS p "
                "WHERE k.prediction_id = p.prediction_id"
            ).rowcount
            conn.exec_driver_sql(f"DROP TABLE {name}")
            report.dropped[name] = int(gone)
        report.deleted_rows = conn.exec_driver_sql(
            f"WITH gone AS (DELETE FROM {DEFAULT_PARTITION} WHERE scored_hour < {int(horizon)} "
            "RETURNING prediction_id) "
            "DELETE FROM prediction_key WHERE prediction_id IN (SELECT prediction_id FROM gone)"
        ).rowcount
    if report.dropped:
        forget_partition_cache()


def month_partitions(conn: Connection) -> list[str]:
    """The names of the prediction table's month partitions, oldest first."""
    names = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass('public.prediction')"
    ).scalars()
    return sorted(name for name in names if PARTITION_NAME.match(name))


def _delete_expired_sqlite(engine: Engine, horizon: int) -> int:
    """Delete predictions scored before `horizon`, SQLITE_DELETE_BATCH rows per transaction
    (through the (model_id, scored_hour) index), so collectors are never held up for long."""
    deleted = 0
    with engine.connect() as conn:
        models = list(conn.execute(sa.select(table_of(Model).c.id)).scalars())
    for model_id in models:
        expired = (
            sa.select(P.c.id)
            .where(P.c.model_id == model_id, P.c.scored_hour < horizon)
            .limit(SQLITE_DELETE_BATCH)
            .scalar_subquery()
        )
        while True:
            with engine.begin() as conn:
                count = conn.execute(sa.delete(P).where(P.c.id.in_(expired))).rowcount
            deleted += count
            if count < SQLITE_DELETE_BATCH:
                break
    return deleted
