"""Ingest: the settlement-time index of predictions only over settled rows

`settled_at` is set when a label settles and is only ever looked up by value (the rows one
refresh settled). Indexed only where it is set, a newly ingested (pending) prediction adds no
entry to it: one index fewer to update on every insert.

Revision ID: 0007_ingest
Revises: 0007_cycle
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_ingest"
down_revision: str | None = "0007_cycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SETTLED = "settled_at IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_prediction_settled_at", table_name="prediction")
    op.create_index(
        "ix_prediction_settled",
        "prediction",
        ["settled_at"],
        unique=False,
        sqlite_where=sa.text(_SETTLED),
        postgresql_where=sa.text(_SETTLED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_prediction_settled",
        table_name="prediction",
        sqlite_where=sa.text(_SETTLED),
        postgresql_where=sa.text(_SETTLED),
    )
    op.create_index("ix_prediction_settled_at", "prediction", ["settled_at"], unique=False)
