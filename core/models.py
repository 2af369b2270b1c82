"""The Postgres tables: runs, steps and events (seed `004_…`), the request log, DWA state,
API keys, the tool registry and its call log, and stored responses (when Redis is off).

Every change here needs a migration in `migrations/versions/`; the test suite checks
that these models and the migrated schema agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, UniqueConstraint, Uuid, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TEXT
from sqlmodel import Field, SQLModel


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


def _moment() -> Any:
    """An optional timestamp column (a fresh Column per field)."""
    return Field(default=None, sa_column=Column(DateTime(timezone=True)))


class Run(SQLModel, table=True):
    """One run: its pinned pipeline and inputs, where it stands, who holds it, what it made.

    The executor (core/runs/executor.py) owns the lease columns: `lease_owner` holds the
    run until `lease_until`, and every checkpoint is fenced on them. `event_seq` numbers
    the run's events; `wake_at` is when a run waiting on a retry should be advanced.
    """

    __tablename__ = "runs"
    # the runs a worker may claim, oldest first; on no column a checkpoint changes, so the
    # fenced update of every checkpoint stays a HOT update (the table has room: fillfactor)
    __table_args__ = (Index("ix_runs_ready", "created_at", postgresql_where=text("status IN ('queued', 'running')")),
                      Index("ix_runs_caller_created_at", "caller", "created_at"),
                      Index("ix_runs_learned", "embedding_model", "finished_at",
                            postgresql_where=text("status = 'succeeded'")))

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    created_at: datetime = Field(default_factory=_now, sa_column=Column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True))
    updated_at: datetime = _timestamp(onupdate=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))  # what was submitted
    status: str = Field(index=True)  # queued | running | succeeded | failed | cancelled | timed_out
    pipeline: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))  # pinned, tools resolved
    pipeline_name: str | None = None
    pipeline_digest: str
    inputs: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    caller: str | None = None  # whose it is: a key's id, "user:<sub>", "webhook", "open" (admins read all)
    tenant: str | None = None  # whose response cache its LLM calls read (None: the shared one)
    caller_limits: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))  # its key's, at the start
    read_token: str  # the capability in its status/events/stream URLs (a browser's EventSource sends no key)
    lease_owner: str | None = None
    lease_until: datetime | None = _moment()
    wake_at: datetime | None = _moment()
    deadline: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    cancel_requested: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    attempt: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    event_seq: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    started_at: datetime | None = _moment()
    finished_at: datetime | None = _moment()
    callback_url: str | None = None
    callback_status: str | None = None
    callback_attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    callback_next_at: datetime | None = _moment()
    callback_error: str | None = None  # why the last attempt failed
    goal: str | None = None  # what it was for, in words (a planned run's, or its inputs.goal)
    feedback: str | None = None  # the comment of its feedback
    feedback_rating: int | None = None  # 1..5
    judge_score: float | None = None  # 0..1, from its evaluate step
    quality_score: float | None = None  # 0..1, from the two above: how the knowledge base ranks it
    # its goal, pipeline and outcome embedded (any dimension: per-model HNSW indexes, core/runs/knowledge.py)
    embedding: list[float] | None = Field(default=None, sa_column=Column(Vector()))
    embedding_model: str | None = None


class RunStep(SQLModel, table=True):
    """A step of a run and its checkpoint: a finished step's output is never recomputed."""

    __tablename__ = "run_steps"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_run_steps_run_id_name"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    run_id: uuid.UUID = Field(foreign_key="runs.id", ondelete="CASCADE")
    index: int  # position of the step within its pipeline
    name: str   # the step's id
    status: str  # pending | running | retrying | succeeded | failed | cancelled
    output: dict[str, Any] | list[Any] | str | int | float | bool | None = Field(
        default=None, sa_column=Column(JSONB))
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime | None = _moment()
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    started_at: datetime | None = _moment()
    finished_at: datetime | None = _moment()
    created_at: datetime = _timestamp()


class Event(SQLModel, table=True):
    """A run's progress event, numbered by `seq` within its run.

    Written with the checkpoint it reports (the source of truth, which readers poll when
    Redis is absent) and then copied to the run's Redis stream. No foreign key to runs:
    the events are an archive that need not die with the run row.
    """

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_events_run_id_seq"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    run_id: uuid.UUID  # found through (run_id, seq)
    seq: int
    timestamp: datetime = _timestamp()
    event_type: str
    message: str
    progress_percentage: float | None = None
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))


class WebhookReceipt(SQLModel, table=True):
    """A webhook delivery (or Idempotency-Key) already turned into a run: the same id
    again returns that run, never a second one."""

    __tablename__ = "webhook_receipts"

    delivery_id: str = Field(primary_key=True)
    # deferred: the receipt is claimed first, and its run inserted in the same transaction
    run_id: uuid.UUID = Field(sa_column=Column(Uuid, ForeignKey("runs.id", ondelete="CASCADE", deferrable=True,
                                                                  initially="DEFERRED"), nullable=False))
    received_at: datetime = _timestamp()


class RequestLog(SQLModel, table=True):
    """One provider attempt of one LLM request (cache hits are a row too).

    A request that failed over has a row per attempt; `final` marks the one whose result
    went back to the caller. `log_id` (request id + attempt) makes draining the Redis
    stream idempotent: a batch inserted twice stays one set of rows.
    """

    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_provider_created_at", "provider", "created_at"),
                      Index("ix_request_log_caller_key_id_created_at", "caller_key_id", "created_at"))

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    log_id: str = Field(unique=True, index=True)
    request_id: str = Field(index=True)
    created_at: datetime = Field(
        default_factory=_now,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True),
    )
    endpoint: str
    provider: str | None = None
    model: str | None = None
    status: str  # ok | error
    error_class: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    final: bool = True
    caller_key_id: str | None = None
    strategy: str | None = None
    selection_reason: str | None = None
    dwa_score: float | None = None


class ProviderWeight(SQLModel, table=True):
    """A provider's windowed figures and baseline weight, as one recompute found them.

    One row per provider and window end: two cron invocations computing the same window
    write the same row (upsert), so overlapping runs are harmless.
    """

    __tablename__ = "provider_weights"
    __table_args__ = (UniqueConstraint("provider", "window_end", name="uq_provider_weights_window"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    provider: str = Field(index=True)
    window_end: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    window_seconds: int
    samples: int
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    error_rate: float
    cost_per_1k_tokens: float | None = None
    weight: float | None = None  # None: too few samples for a baseline (see core/dwa/recompute.py)
    computed_at: datetime = _timestamp()


class ProviderStateRow(SQLModel, table=True):
    """A provider's live DWA state when there is no Redis (the Postgres fallback)."""

    __tablename__ = "dwa_provider_state"

    provider: str = Field(primary_key=True)
    state: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    updated_at: datetime = _timestamp(onupdate=True)


class DWACounter(SQLModel, table=True):
    """A shared counter when there is no Redis: the round-robin rotation of a candidate
    set (core/dwa/pg_store.py), advanced with one atomic upsert per read."""

    __tablename__ = "dwa_counters"

    key: str = Field(primary_key=True)
    value: int = Field(sa_type=BigInteger)
    updated_at: datetime = _timestamp(onupdate=True)


class ApiKey(SQLModel, table=True):
    """An API key: its lookup prefix and hash (never the key), who it is, what it may do.

    The key itself is shown once when created (core/auth.py); `prefix` finds the row and
    `key_hash` (SHA-256 of the whole key) proves the caller has it. Limits are per key and
    optional (core/limits.py); `shared_cache` lets its cached answers be read by other
    keys that opt in too, rather than only by itself.
    """

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    prefix: str = Field(unique=True, index=True)
    key_hash: str
    name: str
    scopes: list[str] = Field(sa_column=Column(ARRAY(TEXT), nullable=False))
    created_at: datetime = _timestamp()
    created_by: str
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    shared_cache: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd_per_day: float | None = None
    budget_usd_per_month: float | None = None


class ToolRegistration(SQLModel, table=True):
    """A tool registered through the API: one immutable definition per name@version.

    Tools from tools.json are not stored here (the file is their source). Deleting a
    tool marks its versions deleted; the name@version stays taken by that definition.
    """

    __tablename__ = "tool_registrations"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_tool_registrations_name_version"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    name: str = Field(index=True)
    version: str
    definition: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    etag: str
    created_at: datetime = _timestamp()
    created_by: str
    deleted_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class ToolCallLog(SQLModel, table=True):
    """One tool invocation: which tool, who called, a hash of the arguments, how it went.

    Queued in Redis and drained like the request log (core/journal.py); `call_id`
    makes the drain idempotent.
    """

    __tablename__ = "tool_calls"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    call_id: str = Field(unique=True, index=True)
    created_at: datetime = Field(
        default_factory=_now,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True),
    )
    tool: str = Field(index=True)  # name@version
    source: str                   # file | api
    caller: str | None = None
    arguments_sha256: str
    status: str                   # ok | error
    error_class: str | None = None
    error: str | None = None
    latency_ms: float
    response_bytes: int = 0
    truncated: bool = False
    idempotency_key: str | None = None


class StoredResponse(SQLModel, table=True):
    """A response of POST /v1/responses kept for `previous_response_id`, when Redis could
    not take it (off, or unreachable at the time): core/response_store.py.

    `conversation` is every item it answered (its chain's, flattened) and `response` the
    Response object; `owner` is the caller's id, the only one who may read it. Rows past
    `expires_at` are never read and are deleted by the cron tick.
    """

    __tablename__ = "stored_responses"

    id: str = Field(primary_key=True)  # resp_…
    owner: str
    created_at: datetime = _timestamp()
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    conversation: list[Any] = Field(sa_column=Column(JSONB, nullable=False))
    response: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
