"""Per-encounter event counts of each canary's arms, kept up to date by the canary monitor

The canary judge corrects its variances for scores that share a patient (design effects),
which needs, per arm, the sum of each encounter's event count and of its square over the
canary period (and over the planned analysis's window, until that is judged). Read from raw predictions, that is every row of the period at the site, every
cycle: a read that grows with the canary's age. This table holds each encounter's counts;
each run recomputes only the encounters whose predictions arrived or settled since the last
(monitors/canary_clusters.py). It starts empty: a canary's first run fills it.

Revision ID: 0011_canary_encounters
Revises: 0010_conclusive
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel

from alembic import op

revision: str = "0011_canary_encounters"
down_revision: str | None = "0010_conclusive"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = (
    "scores", "alerts", "errors", "late", "degraded", "positives", "alerts_settled",
    "alert_positives",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "canaryencounter",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("control_version_id", sa.Integer(), nullable=False),
        sa.Column("period", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("encounter_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("arm", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        *[sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS],
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_canaryencounter_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["site.id"], name=op.f("fk_canaryencounter_site_id_site")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canaryencounter")),
        sa.UniqueConstraint(
            "model_id",
            "site_id",
            "version_id",
            "control_version_id",
            "period",
            "encounter_key",
            "arm",
            name=op.f("uq_canaryencounter_model_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("canaryencounter")
