"""tool registry: API-registered definitions, and the tool-call log

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_text = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "tool_registrations",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", _text(), nullable=False),
        sa.Column("version", _text(), nullable=False),
        sa.Column("definition", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("etag", _text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_by", _text(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_tool_registrations_name_version"),
    )
    op.create_index("ix_tool_registrations_name", "tool_registrations", ["name"])
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("call_id", _text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tool", _text(), nullable=False),
        sa.Column("source", _text(), nullable=False),
        sa.Column("caller", _text(), nullable=True),
        sa.Column("arguments_sha256", _text(), nullable=False),
        sa.Column("status", _text(), nullable=False),
        sa.Column("error_class", _text(), nullable=True),
        sa.Column("error", _text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("response_bytes", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", _text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tool_calls_call_id", "tool_calls", ["call_id"], unique=True)
    op.create_index("ix_tool_calls_created_at", "tool_calls", ["created_at"])
    op.create_index("ix_tool_calls_tool", "tool_calls", ["tool"])


def downgrade() -> None:
    op.drop_index("ix_tool_calls_tool", table_name="tool_calls")
    op.drop_index("ix_tool_calls_created_at", table_name="tool_calls")
    op.drop_index("ix_tool_calls_call_id", table_name="tool_calls")
    op.drop_table("tool_calls")
    op.drop_index("ix_tool_registrations_name", table_name="tool_registrations")
    op.drop_table("tool_registrations")
