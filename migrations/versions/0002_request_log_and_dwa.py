"""request log, provider weight history, DWA state fallback

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_text = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("log_id", _text(), nullable=False),
        sa.Column("request_id", _text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", _text(), nullable=False),
        sa.Column("provider", _text(), nullable=True),
        sa.Column("model", _text(), nullable=True),
        sa.Column("status", _text(), nullable=False),
        sa.Column("error_class", _text(), nullable=True),
        sa.Column("error", _text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("caller_key_id", _text(), nullable=True),
        sa.Column("strategy", _text(), nullable=True),
        sa.Column("selection_reason", _text(), nullable=True),
        sa.Column("dwa_score", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_request_log_log_id", "request_log", ["log_id"], unique=True)
    op.create_index("ix_request_log_request_id", "request_log", ["request_id"])
    op.create_index("ix_request_log_created_at", "request_log", ["created_at"])
    op.create_index("ix_request_log_provider_created_at", "request_log", ["provider", "created_at"])
    op.create_table(
        "provider_weights",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("provider", _text(), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("p50_latency_ms", sa.Float(), nullable=True),
        sa.Column("p95_latency_ms", sa.Float(), nullable=True),
        sa.Column("error_rate", sa.Float(), nullable=False),
        sa.Column("cost_per_1k_tokens", sa.Float(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "window_end", name="uq_provider_weights_window"),
    )
    op.create_index("ix_provider_weights_provider", "provider_weights", ["provider"])
    op.create_index("ix_provider_weights_window_end", "provider_weights", ["window_end"])
    op.create_table(
        "dwa_provider_state",
        sa.Column("provider", _text(), nullable=False),
        sa.Column("state", postgresql.JSONB(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("provider"),
    )


def downgrade() -> None:
    op.drop_table("dwa_provider_state")
    op.drop_table("provider_weights")
    op.drop_table("request_log")
