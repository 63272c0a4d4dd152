"""Incident response: the kill switch, the audit chain's head, and append-only audit events

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import store.models  # noqa: F401  (custom column types)

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64

# The audit log refuses UPDATE and DELETE in the database itself; `vigil audit verify`
# still detects a row changed by someone who drops these triggers first.
POSTGRES_APPEND_ONLY = [
    """
    CREATE OR REPLACE FUNCTION vigil_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'auditevent is append-only (% refused)', TG_OP;
    END
    $$
    """,
    """
    CREATE TRIGGER auditevent_append_only BEFORE UPDATE OR DELETE ON auditevent
    FOR EACH ROW EXECUTE FUNCTION vigil_audit_append_only()
    """,
    """
    CREATE TRIGGER auditevent_no_truncate BEFORE TRUNCATE ON auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION vigil_audit_append_only()
    """,
]
SQLITE_APPEND_ONLY = [
    """
    CREATE TRIGGER auditevent_no_update BEFORE UPDATE ON auditevent
    BEGIN SELECT RAISE(ABORT, 'auditevent is append-only (UPDATE refused)'); END
    """,
    """
    CREATE TRIGGER auditevent_no_delete BEFORE DELETE ON auditevent
    BEGIN SELECT RAISE(ABORT, 'auditevent is append-only (DELETE refused)'); END
    """,
]


def upgrade() -> None:
    op.create_table(
        "audithead",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("updated_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audithead")),
    )
    op.create_table(
        "killswitch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("incident_id", sa.Integer(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("changed_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incident.id"], name=op.f("fk_killswitch_incident_id_incident")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_killswitch_model_id_model")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_killswitch")),
        sa.UniqueConstraint(
            "model_id", "site_id", "version_id", name=op.f("uq_killswitch_model_id")
        ),
    )
    # The head of an empty chain. A store that already holds audit events (written before
    # this revision) gets its head from them, so verification starts consistent.
    conn = op.get_bind()
    audit = sa.table(
        "auditevent", sa.column("id", sa.Integer()), sa.column("hash", sa.String())
    )
    count = conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar() or 0
    last = conn.execute(sa.select(audit.c.hash).order_by(audit.c.id.desc()).limit(1)).scalar()
    head = sa.table(
        "audithead",
        sa.column("id", sa.Integer()),
        sa.column("events", sa.Integer()),
        sa.column("hash", sa.String()),
        sa.column("updated_at", store.models.UTCDateTime(timezone=True)),
    )
    conn.execute(
        sa.insert(head).values(
            id=1, events=count, hash=last or GENESIS, updated_at=store.models.utcnow()
        )
    )
    statements = POSTGRES_APPEND_ONLY if conn.dialect.name == "postgresql" else SQLITE_APPEND_ONLY
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS auditevent_no_truncate ON auditevent")
        op.execute("DROP TRIGGER IF EXISTS auditevent_append_only ON auditevent")
        op.execute("DROP FUNCTION IF EXISTS vigil_audit_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS auditevent_no_update")
        op.execute("DROP TRIGGER IF EXISTS auditevent_no_delete")
    op.drop_table("killswitch")
    op.drop_table("audithead")
