"""Partition the prediction table by month on PostgreSQL, with a key table for idempotency

PostgreSQL only (SQLite keeps its one table). `prediction` becomes PARTITION BY RANGE
(scored_hour): one partition per calendar month (`prediction_2026_09`), a DEFAULT partition
for rows of a month without one, primary key (id, scored_hour), the same secondary and partial
indexes (created on the parent, so every partition has them), and the same id sequence, so ids
keep increasing. A partitioned table can only enforce keys that contain the partition key:
`prediction_key (prediction_id PRIMARY KEY, content_hash, scored_hour)` holds every stored id
once, and the collectors insert there first (store/partitions.py). Existing rows and their
keys are copied. Downgrade restores the plain table with its unique prediction_id.

Revision ID: 0008_partition
Revises: 0007_ingest
"""

from collections.abc import Sequence
from datetime import UTC, datetime

from alembic import op

revision: str = "0008_partition"
down_revision: str | None = "0007_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The secondary indexes of `prediction` as migration 0007_ingest left them.
_INDEXES = (
    "CREATE INDEX ix_prediction_alerts ON {table} (model_id, encounter_key, scored_at, "
    "scored_hour, site_id, unit, arm, alert) WHERE alert",
    "CREATE INDEX ix_prediction_encounter_key ON {table} (encounter_key)",
    "CREATE INDEX ix_prediction_hour ON {table} (model_id, scored_hour)",
    "CREATE INDEX ix_prediction_model_site_scored ON {table} (model_id, site_id, scored_at)",
    "CREATE INDEX ix_prediction_pending ON {table} (model_id, horizon_end) WHERE label IS NULL",
    "CREATE INDEX ix_prediction_settled ON {table} (settled_at) WHERE settled_at IS NOT NULL",
)
_INDEX_NAMES = [sql.split()[2] for sql in _INDEXES]
_FOREIGN_KEYS = (
    "ALTER TABLE prediction ADD CONSTRAINT fk_prediction_model_id_model "
    "FOREIGN KEY (model_id) REFERENCES model (id)",
    "ALTER TABLE prediction ADD CONSTRAINT fk_prediction_site_id_site "
    "FOREIGN KEY (site_id) REFERENCES site (id)",
    "ALTER TABLE prediction ADD CONSTRAINT fk_prediction_version_id_modelversion "
    "FOREIGN KEY (version_id) REFERENCES modelversion (id)",
)


def _month_start_hour(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) // 3600


def _following(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _drop_secondary(table: str) -> None:
    for name in _INDEX_NAMES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for sql in _FOREIGN_KEYS:
        name = sql.split()[5]
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    conn = op.get_bind()
    op.execute("ALTER TABLE prediction RENAME TO prediction_plain")
    _drop_secondary("prediction_plain")  # names are reused below; the copy is faster without
    op.execute("ALTER TABLE prediction_plain DROP CONSTRAINT pk_prediction")
    op.execute("ALTER TABLE prediction_plain DROP CONSTRAINT uq_prediction_prediction_id")
    op.execute(
        "CREATE TABLE prediction (LIKE prediction_plain INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (scored_hour)"
    )
    op.execute("ALTER TABLE prediction ADD CONSTRAINT pk_prediction PRIMARY KEY (id, scored_hour)")
    # The sequence follows the new column (dropping the old table would drop it otherwise).
    op.execute("ALTER SEQUENCE prediction_id_seq OWNED BY prediction.id")
    op.execute("CREATE TABLE prediction_default PARTITION OF prediction DEFAULT")
    hours = conn.exec_driver_sql(
        "SELECT DISTINCT scored_hour / 24 * 24 FROM prediction_plain"
    ).scalars()
    now = datetime.now(UTC)
    months = {(now.year, now.month), _following(now.year, now.month)}
    for hour in hours:
        day = datetime.fromtimestamp(int(hour) * 3600, UTC)
        months.add((day.year, day.month))
    for year, month in sorted(months):
        low = _month_start_hour(year, month)
        high = _month_start_hour(*_following(year, month))
        op.execute(
            f"CREATE TABLE prediction_{year:04d}_{month:02d} PARTITION OF prediction "
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
    op.execute("INSERT INTO prediction SELECT * FROM prediction_plain")
    op.execute(
        "CREATE TABLE prediction_key (prediction_id VARCHAR(128) NOT NULL, "
        "content_hash VARCHAR(32) NOT NULL, scored_hour INTEGER NOT NULL, "
        "CONSTRAINT pk_prediction_key PRIMARY KEY (prediction_id))"
    )
    op.execute(
        "INSERT INTO prediction_key (prediction_id, content_hash, scored_hour) "
        "SELECT prediction_id, content_hash, scored_hour FROM prediction_plain"
    )
    op.execute("DROP TABLE prediction_plain")
    for sql in _INDEXES:
        op.execute(sql.format(table="prediction"))
    for sql in _FOREIGN_KEYS:
        op.execute(sql)
    # Each partition's indexes named after the parent's: ix_prediction_pending_2026_09.
    pairs = conn.exec_driver_sql(
        "SELECT c.relname, p.relname, t.relname FROM pg_index AS x "
        "JOIN pg_class AS c ON c.oid = x.indexrelid "
        "JOIN pg_class AS t ON t.oid = x.indrelid "
        "JOIN pg_inherits AS i ON i.inhrelid = x.indexrelid "
        "JOIN pg_class AS p ON p.oid = i.inhparent "
        "WHERE p.relname IN ('pk_prediction', " + ", ".join(f"'{n}'" for n in _INDEX_NAMES) + ")"
    ).all()
    for child, parent, table in pairs:
        op.execute(f'ALTER INDEX "{child}" RENAME TO "{parent}_{table[len("prediction_") :]}"')
    op.execute("ANALYZE prediction")
    op.execute("ANALYZE prediction_key")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE prediction RENAME TO prediction_parted")
    op.execute("CREATE TABLE prediction (LIKE prediction_parted INCLUDING DEFAULTS)")
    op.execute("INSERT INTO prediction SELECT * FROM prediction_parted")
    op.execute("ALTER SEQUENCE prediction_id_seq OWNED BY prediction.id")
    op.execute("DROP TABLE prediction_parted")  # its partitions, indexes and keys with it
    op.execute("DROP TABLE prediction_key")
    op.execute("ALTER TABLE prediction ADD CONSTRAINT pk_prediction PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE prediction ADD CONSTRAINT uq_prediction_prediction_id UNIQUE (prediction_id)"
    )
    for sql in _INDEXES:
        op.execute(sql.format(table="prediction"))
    for sql in _FOREIGN_KEYS:
        op.execute(sql)
