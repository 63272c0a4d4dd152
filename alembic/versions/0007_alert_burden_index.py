"""Alert burden: a partial index of alerting predictions by model, patient and time

Recounting an hour's shown alerts reads the earlier alerts of the patients alerting in it;
this index serves those reads without touching the patients' other predictions. It holds
every column the recount reads, so a pass over a model's alerts in patient order reads the
index alone.

Revision ID: 0007_alert_index
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007_alert_index"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_prediction_alerts",
        "prediction",
        # `alert` too: SQLite counts an index as covering only if it holds every column named.
        [
            "model_id",
            "encounter_key",
            "scored_at",
            "scored_hour",
            "site_id",
            "unit",
            "arm",
            "alert",
        ],
        unique=False,
        sqlite_where=sa.text("alert = 1"),
        postgresql_where=sa.text("alert"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_prediction_alerts",
        table_name="prediction",
        sqlite_where=sa.text("alert = 1"),
        postgresql_where=sa.text("alert"),
    )
