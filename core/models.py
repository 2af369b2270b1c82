"""The Postgres tables (seed `004_…`): runs, their step checkpoints, and run events.

Every change here needs a migration in `migrations/versions/`; the test suite checks
that these models and the migrated schema agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Column, DateTime, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 and friends


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(*, onupdate: bool = False) -> Any:
    # A fresh Column per field: SQLAlchemy binds a Column to exactly one table.
    return Field(
        default_factory=_now,
        sa_column=Column(
            DateTime(timezone=True),
            nullable=False,
            server_default=func.now(),
            onupdate=func.now() if onupdate else None,
        ),
    )


class Run(SQLModel, table=True):
    """One run: its spec, where it stands, what it produced, and how good it was."""

    __tablename__ = "runs"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp(onupdate=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    status: str = Field(index=True)
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    feedback: str | None = None
    quality_score: float | None = None
    embedding: list[float] | None = Field(
        default=None, sa_column=Column(Vector(EMBEDDING_DIM))
    )


class RunStep(SQLModel, table=True):
    """A step of a run and its checkpoint, so a resumed run skips finished steps."""

    __tablename__ = "run_steps"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_run_steps_run_id_index"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    run_id: uuid.UUID = Field(foreign_key="runs.id", ondelete="CASCADE")
    index: int  # position of the step within its run
    name: str
    status: str
    checkpoint: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    created_at: datetime = _timestamp()


class Event(SQLModel, table=True):
    """A progress event: the fallback when Redis is absent, and the archive.

    No foreign key to runs: events are written on the hot path of a run and are kept
    as an archive, neither of which should wait on or die with the run row.
    """

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    run_id: uuid.UUID = Field(index=True)
    timestamp: datetime = _timestamp()
    event_type: str
    message: str
    progress_percentage: float | None = None
