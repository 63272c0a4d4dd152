"""Operational monitors: hourly alert counts with a patient's repeat alerts suppressed

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import store.models  # noqa: F401  (custom column types)

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alertburdenhour",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("unit", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("n_alert", sa.Integer(), nullable=False),
        sa.Column("n_shown", sa.Integer(), nullable=False),
        sa.Column("updated_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_alertburdenhour_model_id_model")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_alertburdenhour_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alertburdenhour")),
        sa.UniqueConstraint(
            "model_id", "site_id", "unit", "arm", "hour", name=op.f("uq_alertburdenhour_model_id")
        ),
    )
    with op.batch_alter_table("alertburdenhour", schema=None) as batch_op:
        batch_op.create_index(
            "ix_alertburden_model_site_hour", ["model_id", "site_id", "hour"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("alertburdenhour", schema=None) as batch_op:
        batch_op.drop_index("ix_alertburden_model_site_hour")
    op.drop_table("alertburdenhour")
