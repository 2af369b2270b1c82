"""What readers are shown of runs (GET /api/runs…, `orchesity runs`), and cancelling one.

A run belongs to its `caller` (a key's id, "user:<sub>", "webhook", "open"); `owned_by`
is the filter a non-admin reader gets. The view never carries the run's read token:
only the answer that created the run does, inside its URLs.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.runs.executor import FINISHED

if TYPE_CHECKING:
    from core.services import Services

__all__ = ["FINISHED", "describe", "list_runs", "request_cancel", "run_row", "step_outputs", "summary"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def run_row(svc: Services, run_id: uuid.UUID) -> Any:
    """The run's row (caller and read token included, for access checks), or None."""
    from sqlalchemy import text

    async with svc.db.engine.connect() as conn:
        return (await conn.execute(text(
            "SELECT id, status, pipeline, pipeline_name, pipeline_digest, caller, read_token, result, error, attempt, "
            "event_seq, cancel_requested, created_at, started_at, finished_at, deadline, callback_url, "
            "callback_status, callback_attempts, callback_error, goal, quality_score, judge_score, feedback_rating, "
            "feedback FROM runs WHERE id = :id"), {"id": run_id})).first()


async def describe(svc: Services, row: Any) -> dict[str, Any]:
    """The run as GET /api/runs/{id} shows it: status, progress, current steps, each step, result, error."""
    from sqlalchemy import text

    async with svc.db.engine.connect() as conn:
        steps = {r.name: r for r in (await conn.execute(text(
            "SELECT name, status, attempts, failures, next_attempt_at, error, started_at, finished_at "
            "FROM run_steps WHERE run_id = :id"), {"id": row.id})).all()}
    order = [step["id"] for step in row.pipeline["steps"]]
    shown = []
    for name in order:
        step = steps.get(name)
        shown.append({"id": name, "status": step.status if step else "pending",
                      "attempts": step.attempts if step else 0, "error": step.error if step else None,
                      "next_attempt_at": _iso(step.next_attempt_at) if step else None,
                      "started_at": _iso(step.started_at) if step else None,
                      "finished_at": _iso(step.finished_at) if step else None})
    ended = sum(1 for s in shown if s["status"] in ("succeeded", "failed", "cancelled"))
    return {
        **summary(row),
        "progress": round(100.0 * ended / len(order), 1) if order else 100.0,
        "current_steps": [s["id"] for s in shown if s["status"] in ("running", "retrying")],
        "steps": shown,
        "result": row.result,
        "error": row.error,
        "attempt": row.attempt,
        "events": row.event_seq,
        "cancel_requested": row.cancel_requested,
        "deadline": _iso(row.deadline),
        "goal": row.goal,
        "quality": {"score": row.quality_score, "judge_score": row.judge_score,
                    "feedback": None if row.feedback_rating is None else {"rating": row.feedback_rating,
                                                                         "comment": row.feedback}},
        "callback": None if row.callback_url is None else {
            "status": row.callback_status, "attempts": row.callback_attempts, "error": row.callback_error},
    }


async def step_outputs(svc: Services, run_id: uuid.UUID) -> dict[str, Any]:
    """Each step's checkpointed output, by step id (steps that have none are left out)."""
    from sqlalchemy import text

    async with svc.db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT name, output FROM run_steps WHERE run_id = :id AND output IS NOT NULL"),
                                   {"id": run_id})).all()
    return {row.name: row.output for row in rows}


def summary(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "status": row.status, "pipeline": row.pipeline_name,
            "pipeline_digest": row.pipeline_digest, "caller": row.caller,
            "created_at": _iso(row.created_at), "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at)}


async def list_runs(svc: Services, *, owned_by: str | None, status: str | None, limit: int,
                    before: datetime | None = None) -> list[dict[str, Any]]:
    """The newest runs first (of `owned_by`'s, or everyone's when None)."""
    from sqlalchemy import text

    where = ["TRUE"]
    if owned_by is not None:
        where.append("caller = :owner")
    if status is not None:
        where.append("status = :status")
    if before is not None:
        where.append("created_at < :before")
    query = ("SELECT id, status, pipeline_name, pipeline_digest, caller, created_at, started_at, finished_at "
             f"FROM runs WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT :limit")
    async with svc.db.engine.connect() as conn:
        rows = (await conn.execute(text(query), {"owner": owned_by, "status": status, "limit": limit,
                                                 "before": before})).all()
    return [summary(row) for row in rows]


async def request_cancel(svc: Services, run_id: uuid.UUID) -> str | None:
    """Ask the run to stop at its next step boundary; its status after (None: no such run).

    A run nobody is advancing is cancelled here and now; one that is being advanced is
    stopped by its owner, at once if that is this process (executor.nudge), else when its
    lease renewal sees the request, within a third of the lease (RUN_LEASE_SECONDS).
    """
    from sqlalchemy import text

    from core.runs.executor import Executor, nudge

    async with svc.db.engine.begin() as conn:
        status = (await conn.execute(text(
            "UPDATE runs SET cancel_requested = status IN ('queued', 'running') OR cancel_requested "
            "WHERE id = :id RETURNING status"), {"id": run_id})).scalar()
    if status in ("queued", "running"):
        nudge(run_id)
        status = await Executor(svc, owner=f"cancel:{uuid.uuid4().hex[:12]}").advance(run_id, 0.0) or status
    return status
