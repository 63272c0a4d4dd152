"""Closures by discharge time: label settlement finds the closures whose lag just passed

Revision ID: 0007_cycle
Revises: 0007_alert_index
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_cycle"
down_revision: str | None = "0007_alert_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("encounter", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_encounter_discharged_at"), ["discharged_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("encounter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_encounter_discharged_at"))
