"""DWA without Redis: round-robin counters; a baseline weight may be absent

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dwa_counters",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    # A window with too few samples records its figures but no weight.
    op.alter_column("provider_weights", "weight", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM provider_weights WHERE weight IS NULL")
    op.alter_column("provider_weights", "weight", existing_type=sa.Float(), nullable=False)
    op.drop_table("dwa_counters")
