"""runs engine: pinned pipelines, leases, steps with attempts, sequenced events, webhook receipts

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_text = sqlmodel.sql.sqltypes.AutoString
_json = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    # No run existed before this engine: the new NOT NULL columns need no backfill.
    op.execute("DELETE FROM events")
    op.execute("DELETE FROM runs")
    for column in (
        sa.Column("pipeline", _json, nullable=False),
        sa.Column("pipeline_name", _text(), nullable=True),
        sa.Column("pipeline_digest", _text(), nullable=False),
        sa.Column("inputs", _json, nullable=False),
        sa.Column("error", _json, nullable=True),
        sa.Column("caller", _text(), nullable=True),
        sa.Column("tenant", _text(), nullable=True),
        sa.Column("caller_limits", _json, nullable=True),
        sa.Column("read_token", _text(), nullable=False),
        sa.Column("lease_owner", _text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("event_seq", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("callback_url", _text(), nullable=True),
        sa.Column("callback_status", _text(), nullable=True),
        sa.Column("callback_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("callback_error", _text(), nullable=True),
    ):
        op.add_column("runs", column)
    # on no column a checkpoint's fenced update changes: it stays a HOT update, with room
    # left in each page for it
    op.create_index("ix_runs_ready", "runs", ["created_at"], postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.execute("ALTER TABLE runs SET (fillfactor = 70)")
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_index("ix_runs_caller_created_at", "runs", ["caller", "created_at"])

    op.drop_constraint("uq_run_steps_run_id_index", "run_steps", type_="unique")
    op.alter_column("run_steps", "checkpoint", new_column_name="output")
    for column in (
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", _json, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    ):
        op.add_column("run_steps", column)
    op.create_unique_constraint("uq_run_steps_run_id_name", "run_steps", ["run_id", "name"])

    op.add_column("events", sa.Column("seq", sa.Integer(), nullable=False))
    op.add_column("events", sa.Column("data", _json, nullable=True))
    op.create_unique_constraint("uq_events_run_id_seq", "events", ["run_id", "seq"])
    op.drop_index("ix_events_run_id", table_name="events")  # (run_id, seq) serves: one index less per event

    op.create_table(
        "webhook_receipts",
        sa.Column("delivery_id", _text(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        # deferred: a receipt is claimed first, and its run inserted in the same transaction
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE", deferrable=True, initially="DEFERRED"),
        sa.PrimaryKeyConstraint("delivery_id"),
    )


def downgrade() -> None:
    op.drop_table("webhook_receipts")
    op.execute("DELETE FROM events")
    op.execute("DELETE FROM runs")
    op.create_index("ix_events_run_id", "events", ["run_id"])
    op.drop_constraint("uq_events_run_id_seq", "events", type_="unique")
    op.drop_column("events", "data")
    op.drop_column("events", "seq")
    op.drop_constraint("uq_run_steps_run_id_name", "run_steps", type_="unique")
    for name in ("finished_at", "started_at", "error", "next_attempt_at", "failures", "attempts"):
        op.drop_column("run_steps", name)
    op.alter_column("run_steps", "output", new_column_name="checkpoint")
    op.create_unique_constraint("uq_run_steps_run_id_index", "run_steps", ["run_id", "index"])
    op.drop_index("ix_runs_caller_created_at", table_name="runs")
    op.drop_index("ix_runs_created_at", table_name="runs")
    op.drop_index("ix_runs_ready", table_name="runs")
    op.execute("ALTER TABLE runs RESET (fillfactor)")
    for name in ("callback_error", "callback_next_at", "callback_attempts", "callback_status", "callback_url", "finished_at",
                 "started_at", "event_seq", "attempt", "cancel_requested", "deadline", "wake_at", "lease_until",
                 "lease_owner", "read_token", "caller_limits", "tenant", "caller", "error", "inputs", "pipeline_digest", "pipeline_name", "pipeline"):
        op.drop_column("runs", name)
