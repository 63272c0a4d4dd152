"""Daily sums of the rollups: prediction sums, score and input histograms per model × site × day

Monitors read 28-day (and 7-day) windows of whole days; these tables hold each day's sums so
such a window reads one row per day (and bin) instead of every hourly row of every unit, arm
and version. They start empty: the first read fills them from the hourly rollups
(store/rollups.py `sync_daily`), and every later read brings the days whose hourly rows
changed up to date.

Revision ID: 0009_daily
Revises: 0008_partition
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

from alembic import op

revision: str = "0009_daily"
down_revision: str | None = "0008_partition"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _keys(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("id", _ID, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f(f"fk_{table}_model_id_model")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f(f"fk_{table}_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    ]


def upgrade() -> None:
    op.create_table(
        "dailyrollup",
        *_keys("dailyrollup"),
        sa.Column("n_ok", sa.Integer(), nullable=False),
        sa.Column("n_on_time", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("n_settled", sa.Integer(), nullable=False),
        sa.Column("n_positive", sa.Integer(), nullable=False),
        sa.Column("sum_p_settled", sa.Float(), nullable=False),
        sa.Column("sum_p2_settled", sa.Float(), nullable=False),
        sa.Column("sum_yp_settled", sa.Float(), nullable=False),
        sa.Column("n_alert_settled", sa.Integer(), nullable=False),
        sa.Column("n_alert_positive", sa.Integer(), nullable=False),
        sa.UniqueConstraint("model_id", "site_id", "day", name=op.f("uq_dailyrollup_model_id")),
    )
    op.create_table(
        "dailyscorehistogram",
        *_keys("dailyscorehistogram"),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_settled", sa.Integer(), nullable=False),
        sa.Column("n_positive", sa.Integer(), nullable=False),
        sa.Column("sum_p_settled", sa.Float(), nullable=False),
        sa.Column("sum_logit_settled", sa.Float(), nullable=False),
        sa.UniqueConstraint(
            "model_id", "site_id", "day", "bin", name=op.f("uq_dailyscorehistogram_model_id")
        ),
    )
    op.create_table(
        "dailyinputhistogram",
        *_keys("dailyinputhistogram"),
        sa.Column("feature", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.UniqueConstraint(
            "model_id",
            "site_id",
            "day",
            "feature",
            "bin",
            name=op.f("uq_dailyinputhistogram_model_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("dailyinputhistogram")
    op.drop_table("dailyscorehistogram")
    op.drop_table("dailyrollup")
