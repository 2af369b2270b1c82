"""The runs function: runs started by webhooks (or keys), watched live, cancelled.

POST /api/runs                  {"pipeline" | "goal", "inputs", "callback_url", "deadline_seconds",
                                 "dry_run"} -> 202 {"id", "status", "status_url", "events_url",
                                "stream_url", "planned"} (a Standard Webhooks signature, or a key
                                with `runs`); a goal without a pipeline is planned into one;
                                dry_run: 200 with the (planned) pipeline, nothing started
GET  /api/runs                  ?status=&limit=&before=: the caller's runs, newest first (runs)
GET  /api/runs/similar          ?q=&limit=: the caller's succeeded runs most like q, with their
                                pipelines, scores and feedback (runs; admins: everyone's)
POST /api/runs/{id}/feedback    {"rating": 1..5, "comment"}: feeds the run's quality score (runs)
GET  /api/runs/{id}             status, progress %, current steps, each step, result, error
GET  /api/runs/{id}/events      ?after=SEQ&wait=SECONDS: the events after SEQ (a long poll)
GET  /api/runs/{id}/stream      Server-Sent Events, `id:` = seq, resumable with Last-Event-ID
                                (or ?after=), a keep-alive comment every 15 s, closed after
                                the final event
POST /api/runs/{id}/cancel      stop the run at its next step boundary (runs)

Who may read a run: the key (or Supabase user) that started it, an admin, or anyone
holding its read token, which the URLs of the 202 carry (`?token=`), so a browser's
EventSource, which cannot send a key, can follow a run a backend started. The same
`webhook-id`, or the same `Idempotency-Key` from the same key, returns the run it
started (200) instead of starting another. After the 202 the run is advanced here for
up to RUN_INLINE_BUDGET_SECONDS (not on Lambda, which freezes after answering); the
rest is done by `orchesity worker`, the server's own background worker, or the cron
sweep. The engine is core/runs/, the events core/progress.py.
"""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Path, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import progress
from core.auth import Principal, Scope
from core.db import load_driver
from core.runs import views
from core.runs.pipeline import Pipeline, PlanUnavailable, RunInvalid
from core.runs.submit import Caller, RunRequest, Submitted, prepare, submit
from core.runs.webhooks import WebhookRefused, signed, verify
from core.services import Services
from functions.http import ApiError, JSONResponse, authenticate, create_app, entry_points, require, services

if TYPE_CHECKING:
    from core.runs.planner import Planned

load_driver()  # every request here reaches Postgres: load its stack at import
RUNS = Depends(require(Scope.runs))
router = APIRouter(prefix="/api/runs", tags=["runs"])

_ON_LAMBDA = "AWS_LAMBDA_FUNCTION_NAME" in os.environ
LONG_POLL_MAX_S = 30.0  # a long poll answers within this, events or not
RunId = Annotated[uuid.UUID, Path(description="the run's id")]


# --- who may start and read runs ---------------------------------------------------------------

async def starter(request: Request, svc: Services = Depends(services)) -> tuple[Caller, str | None]:
    """(whose run it is, its delivery id): a valid signed webhook, or a caller with `runs`
    (whose key's limits its LLM calls then count against)."""
    if signed(request.headers):
        try:
            delivery = verify(svc.settings, request.headers, await request.body())
        except WebhookRefused as exc:
            raise ApiError(401, str(exc), type="authentication_error", code="invalid_webhook_signature") from None
        return Caller("webhook"), f"webhook:{delivery}"
    caller = await authenticate(request, svc)
    if not caller.allows(Scope.runs):
        raise ApiError(403, "starting a run needs the 'runs' scope (or a signed webhook)",
                       type="permission_error", code="insufficient_scope")
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable characters", param="Idempotency-Key",
                       code="invalid_idempotency_key")
    return Caller(caller.id, caller.tenant, caller.limits), f"key:{caller.id}:{key}" if key else None


starter.scope = Scope.runs  # type: ignore[attr-defined]  # its owner, for the route-owner test


async def readable(run_id: RunId, request: Request, svc: Services = Depends(services)) -> Any:
    """The run's row, if the caller may read it: its read token, its owner, an admin."""
    row = await views.run_row(svc, run_id)
    token = request.query_params.get("token")
    if row is not None and token is not None and hmac.compare_digest(token.encode(), row.read_token.encode()):
        return row
    caller = await authenticate(request, svc)
    if not caller.allows(Scope.runs):
        raise ApiError(403, "reading a run needs the 'runs' scope or the run's read token",
                       type="permission_error", code="insufficient_scope")
    if row is None or not _owns(caller, row):  # another's run is not shown to exist
        raise ApiError(404, f"there is no run {run_id}", type="not_found", param="id", code="unknown_run")
    return row


readable.scope = Scope.runs  # type: ignore[attr-defined]


def _owns(caller: Principal, row: Any) -> bool:
    return caller.allows(Scope.admin) or row.caller == caller.id


# --- starting ---------------------------------------------------------------------------------

@router.post("", status_code=202, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": RunRequest.model_json_schema()}}}})
async def start(request: Request, background: BackgroundTasks, svc: Services = Depends(services),
                who: tuple[Caller, str | None] = Depends(starter)) -> JSONResponse:
    caller, delivery = who
    try:
        body = RunRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _invalid_body(exc) from None
    try:
        if body.dry_run:
            prepared = await prepare(svc, body, caller=caller)
            return JSONResponse({"dry_run": True, "pipeline": _pipeline_json(prepared.pipeline),
                                 "planned": _planned_json(prepared.planned)})
        run = await submit(svc, body, caller=caller, delivery_id=delivery)
    except RunInvalid as exc:
        param = exc.problems[0].split(":")[0] if exc.problems else None
        raise ApiError(422, str(exc), param=param, code="invalid_run", details=exc.problems) from None
    except PlanUnavailable as exc:
        raise ApiError(exc.status, f"the goal could not be planned: {exc}", param="goal",
                       type="rate_limit_exceeded" if exc.status == 429 else "service_unavailable",
                       code="planner_unavailable") from None
    if run.new and svc.settings.RUN_INLINE_BUDGET_SECONDS > 0 and not _ON_LAMBDA:
        background.add_task(_advance, svc, run.id)
    return JSONResponse(_started(svc, request, run), status_code=202 if run.new else 200,
                        headers={"location": f"/api/runs/{run.id}",
                                 **({} if run.new else {"idempotent-replayed": "true"})})


def _invalid_body(exc: ValidationError) -> ApiError:
    problems = []
    for error in exc.errors(include_url=False):
        if error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON: {(error.get('ctx') or {}).get('error', 'invalid')}")
        else:
            where = ".".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
    return ApiError(422, "; ".join(problems), param=".".join(map(str, first)) or None, code="validation_error",
                    details=problems)


async def _advance(svc: Services, run_id: uuid.UUID) -> None:
    from core.runs.executor import Executor

    try:
        await Executor(svc).advance(run_id, svc.settings.RUN_INLINE_BUDGET_SECONDS)
    except Exception:  # noqa: BLE001 - a worker or the sweep takes it over when the lease ends
        import logging

        logging.getLogger("orchesity.runs").exception("run %s: the inline advance failed", run_id)


def _started(svc: Services, request: Request, run: Submitted) -> dict[str, Any]:
    base = (svc.settings.PUBLIC_URL or str(request.base_url)).rstrip("/") + f"/api/runs/{run.id}"
    query = f"?token={run.read_token}"
    return {"id": str(run.id), "status": run.status, "replayed": not run.new,
            "status_url": base + query, "events_url": f"{base}/events{query}", "stream_url": f"{base}/stream{query}",
            "cancel_url": f"{base}/cancel", **({"planned": _planned_json(run.planned)} if run.planned else {})}


def _pipeline_json(pipeline: Pipeline) -> dict[str, Any]:
    return pipeline.model_dump(mode="json", exclude_none=True)


def _planned_json(planned: Planned | None) -> dict[str, Any] | None:
    if planned is None:
        return None
    return {"pipeline": _pipeline_json(planned.pipeline), "examples": planned.examples, "repaired": planned.repaired}


# --- reading ----------------------------------------------------------------------------------

@router.get("")
async def listed(status: Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"] | None = None,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50, before: datetime | None = None,
                 svc: Services = Depends(services), caller: Principal = RUNS) -> dict[str, Any]:
    owner = None if caller.allows(Scope.admin) else caller.id
    runs = await views.list_runs(svc, owned_by=owner, status=status, limit=limit, before=before)
    return {"runs": runs, "count": len(runs)}


@router.get("/similar")
async def similar(q: Annotated[str, Query(min_length=1, max_length=4000, description="a goal, in words")],
                  limit: Annotated[int, Query(ge=1, le=50)] = 5,
                  svc: Services = Depends(services), caller: Principal = RUNS) -> dict[str, Any]:
    from core.runs.knowledge import KnowledgeUnavailable, similar

    if not q.strip():
        raise ApiError(422, "q: it is blank", param="q", code="validation_error")
    owner = None if caller.allows(Scope.admin) else caller.id
    try:
        found = await similar(svc, q, limit=limit, owned_by=owner,
                              caller=Caller(caller.id, caller.tenant, caller.limits))
    except KnowledgeUnavailable as exc:
        raise ApiError(503, f"the embedding model cannot be reached: {exc}", type="service_unavailable",
                       code="embeddings_unavailable") from None
    return {"runs": [s.to_json() for s in found], "count": len(found)}


@router.get("/{run_id}")
async def one(row: Any = Depends(readable), svc: Services = Depends(services)) -> dict[str, Any]:
    return await views.describe(svc, row)


@router.get("/{run_id}/events")
async def events(row: Any = Depends(readable), after: Annotated[int, Query(ge=0)] = 0,
                 wait: Annotated[float, Query(ge=0, le=LONG_POLL_MAX_S)] = 0.0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 500,
                 svc: Services = Depends(services)) -> dict[str, Any]:
    found = await progress.wait_events(svc.db, svc.kv, svc.watcher, row.id, after, wait, limit)
    last = found[-1].seq if found else after
    return {"events": [e.to_json() for e in found], "next_after": last,
            "done": any(e.final for e in found) or (row.status in views.FINISHED and last >= row.event_seq)}


def _resume_after(after: Annotated[int | None, Query(ge=0)] = None,
                  last_event_id: Annotated[str | None, Header()] = None) -> int:
    """The seq a stream resumes after: `?after=`, else Last-Event-ID, else 0. A dependency,
    so that a bad one is a 400 before the stream's 200 goes out."""
    if after is not None:
        return after
    if last_event_id is None:
        return 0
    if not last_event_id.strip().isdigit():
        raise ApiError(400, "Last-Event-ID must be the seq of the last event received (an integer)",
                       param="Last-Event-ID", code="invalid_last_event_id")
    return int(last_event_id)


@router.get("/{run_id}/stream", response_class=EventSourceResponse)
async def stream(row: Any = Depends(readable), seq: int = Depends(_resume_after),
                 svc: Services = Depends(services)) -> AsyncIterator[ServerSentEvent]:
    if row.status in views.FINISHED and seq >= row.event_seq:
        return  # the client has everything: close at once
    while True:
        found = await progress.wait_events(svc.db, svc.kv, svc.watcher, row.id, seq, LONG_POLL_MAX_S)
        for event in found:
            yield ServerSentEvent(data=event.to_json(), event=event.type, id=str(event.seq))
            seq = event.seq
            if event.final:
                return


# --- feedback -------------------------------------------------------------------------------

class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: int = Field(ge=1, le=5, description="1 (useless) to 5 (exactly right)")
    comment: str | None = Field(default=None, max_length=2000)


@router.post("/{run_id}/feedback")
async def feedback(run_id: RunId, body: Feedback, svc: Services = Depends(services),
                   caller: Principal = RUNS) -> dict[str, Any]:
    from core.runs import knowledge

    row = await views.run_row(svc, run_id)
    if row is None or not _owns(caller, row):
        raise ApiError(404, f"there is no run {run_id}", type="not_found", param="id", code="unknown_run")
    if row.status not in views.FINISHED:
        raise ApiError(409, f"run {run_id} has not ended ({row.status}): feedback is on its outcome",
                       code="run_not_finished")
    return await knowledge.feedback(svc, run_id, body.rating, body.comment)


# --- cancelling -------------------------------------------------------------------------------

@router.post("/{run_id}/cancel", status_code=202)
async def cancel(run_id: RunId, svc: Services = Depends(services), caller: Principal = RUNS) -> dict[str, Any]:
    row = await views.run_row(svc, run_id)
    if row is None or not _owns(caller, row):
        raise ApiError(404, f"there is no run {run_id}", type="not_found", param="id", code="unknown_run")
    if row.status in views.FINISHED:
        raise ApiError(409, f"run {run_id} has already ended ({row.status})", code="run_finished")
    status = await views.request_cancel(svc, run_id)
    return {"id": str(run_id), "status": status, "cancel_requested": True}


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity runs", routes_llm=True, loads_tools=True,
                                              advances_runs=True))
