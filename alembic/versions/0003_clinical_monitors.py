"""Clinical-quality monitors: CUSUM control limits and each site's drift reference histograms

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import store.models  # noqa: F401  (custom column types)

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cusumlimit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("direction", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("odds_ratio", sa.Float(), nullable=False),
        sa.Column("target_arl_days", sa.Float(), nullable=False),
        sa.Column("limit", sa.Float(), nullable=False),
        sa.Column("simulated_arl_days", sa.Float(), nullable=False),
        sa.Column("out_of_control_arl_days", sa.Float(), nullable=True),
        sa.Column("predictions_per_day", sa.Float(), nullable=False),
        sa.Column("design_effect", sa.Float(), nullable=False),
        sa.Column("reference_start", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reference_end", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("paths", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("computed_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_cusumlimit_model_id_model")),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_cusumlimit_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cusumlimit")),
        sa.UniqueConstraint(
            "model_id", "site_id", "direction", name=op.f("uq_cusumlimit_model_id")
        ),
    )
    op.create_table(
        "driftreference",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("feature", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("reference_start", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reference_end", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_driftreference_model_id_model")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_driftreference_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_driftreference")),
        sa.UniqueConstraint(
            "model_id", "site_id", "feature", "bin", name=op.f("uq_driftreference_model_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("driftreference")
    op.drop_table("cusumlimit")
