"""A partial index of conclusive metric points, for the newest one of a key

Alert sync asks, for every key a monitor touched, for the newest metric point that is not
insufficient-data. Through the lookup index that walks back over every insufficient point
since (on a store with a year of daily points and labels still settling, most of them); the
partial index holds only conclusive points, with the arm before the window end, so the
question is one seek.

Revision ID: 0010_conclusive
Revises: 0009_daily
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010_conclusive"
down_revision: str | None = "0009_daily"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONCLUSIVE = "status <> 'insufficient-data'"


def upgrade() -> None:
    op.create_index(
        "ix_metricpoint_conclusive",
        "metricpoint",
        ["monitor", "model_id", "site_id", "arm", "window_end"],
        unique=False,
        sqlite_where=sa.text(CONCLUSIVE),
        postgresql_where=sa.text(CONCLUSIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_metricpoint_conclusive", table_name="metricpoint")
