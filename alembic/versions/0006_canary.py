"""Canary versus control: the judge's verdicts over time and the release-stage history

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import store.models  # noqa: F401  (custom column types)

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "canaryjudgement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("control_version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("evaluated_hour", sa.Integer(), nullable=False),
        sa.Column("window_start", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_end", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("verdict", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("recommendation", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("sequential_rejected", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("computed_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_canaryjudgement_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["site.id"], name=op.f("fk_canaryjudgement_site_id_site")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["modelversion.id"],
            name=op.f("fk_canaryjudgement_version_id_modelversion"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canaryjudgement")),
        sa.UniqueConstraint(
            "model_id",
            "site_id",
            "version_id",
            "kind",
            "evaluated_hour",
            name=op.f("uq_canaryjudgement_model_id"),
        ),
    )
    op.create_table(
        "stagechange",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("from_stage", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("to_stage", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("audit_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_stagechange_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["modelversion.id"],
            name=op.f("fk_stagechange_version_id_modelversion"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stagechange")),
    )
    with op.batch_alter_table("stagechange", schema=None) as batch_op:
        batch_op.create_index(
            "ix_stagechange_model_version", ["model_id", "version_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("stagechange", schema=None) as batch_op:
        batch_op.drop_index("ix_stagechange_model_version")
    op.drop_table("stagechange")
    op.drop_table("canaryjudgement")
