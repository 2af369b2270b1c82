"""The tools function: the tool registry, listed, invoked, exported, and managed.

GET    /api/tools                   the effective registry: each tool's newest version, its source  (tools)
GET    /api/tools/export            ?format=openai&strict=true: the `tools` array for an LLM     (tools)
GET    /api/tools/{name[@version]}  one tool: its definition, etag, source, versions           (tools)
POST   /api/tools/{name}/invoke     {"arguments": {…}} -> {"status", "result", "duration_ms"}  (tools)
POST   /api/tools                   register a definition (an immutable name@version)          (admin)
DELETE /api/tools/{name[@version]}  delete a registered tool (not one of the file's)           (admin)

Bad arguments are a 422 listing every error with its path; a tool that is not
configured is a 503 naming the setting; the logic is core/tools/.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from core.auth import Principal, Scope
from core.services import Services
from core.tools.export import openai_tools
from core.tools.invoke import ArgumentsInvalid, ToolUnavailable, invoke
from core.tools.kinds import CallContext
from core.tools.registry import ToolConflict, ToolDefinitionError, ToolNotFound
from functions.http import ApiError, JSONResponse, create_app, entry_points, require, services

TOOLS = Depends(require(Scope.tools))
ADMIN = Depends(require(Scope.admin))
router = APIRouter(prefix="/api/tools", tags=["tools"])


class InvokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, Any] = Field(default_factory=dict)


def _not_found(exc: ToolNotFound) -> ApiError:
    return ApiError(404, str(exc), type="not_found", param="name", code="unknown_tool")


def context(svc: Services, caller: Principal, *, idempotency_key: str | None = None) -> CallContext:
    """What a tool call by `caller` may use: llm tools route through this orchestrator."""
    return CallContext(settings=svc.settings, environ=os.environ, orchestrator=svc.orchestrator,
                       caller=None if caller.kind == "open" else caller.id, tenant=caller.tenant,
                       limits=caller.limits, idempotency_key=idempotency_key)


@router.get("", dependencies=[TOOLS])
async def listed(svc: Services = Depends(services)) -> dict[str, Any]:
    entries = await svc.tools.entries()
    return {"tools": [entry.describe() for entry in entries], "count": len(entries)}


@router.get("/export", dependencies=[TOOLS])
async def export(format: Literal["openai"] = Query(default="openai"),  # noqa: A002 - the API's word
                 strict: StrictBool = Query(default=False), svc: Services = Depends(services)) -> dict[str, Any]:
    return {"format": format, **openai_tools(await svc.tools.entries(), strict=strict)}


@router.get("/{ref}", dependencies=[TOOLS])
async def one(ref: str, svc: Services = Depends(services)) -> dict[str, Any]:
    try:
        entry = await svc.tools.get(ref)
    except ToolNotFound as exc:
        raise _not_found(exc) from None
    versions = await svc.tools.versions(entry.tool.name)
    return {**entry.describe(), "versions": [v.tool.version for v in versions]}


@router.post("/{ref}/invoke")
async def call(ref: str, body: InvokeBody = Body(default_factory=InvokeBody), svc: Services = Depends(services),
               caller: Principal = TOOLS) -> Any:
    try:
        entry = await svc.tools.get(ref)
        outcome = await invoke(entry, body.arguments, context(svc, caller), kv=svc.kv, db=svc.db)
    except ToolNotFound as exc:
        raise _not_found(exc) from None
    except ArgumentsInvalid as exc:
        return JSONResponse({"error": {"type": "invalid_request_error", "message": str(exc), "param": "arguments",
                                       "code": "invalid_arguments", "details": exc.errors}}, status_code=422)
    except ToolUnavailable as exc:
        raise ApiError(503, str(exc), type="service_unavailable", code="tool_unavailable") from None
    return {"tool": entry.tool.ref, **outcome.to_json()}


@router.post("", status_code=201)
async def register(definition: dict[str, Any] = Body(...), svc: Services = Depends(services),
                   caller: Principal = ADMIN) -> Any:
    try:
        entry, created = await svc.tools.register(definition, created_by=caller.id)
    except ToolDefinitionError as exc:
        return JSONResponse({"error": {"type": "invalid_request_error", "message": str(exc), "param": None,
                                       "code": "invalid_tool", "details": exc.problems}}, status_code=422)
    except ToolConflict as exc:
        raise ApiError(409, str(exc), type="conflict", param="name", code="tool_conflict") from None
    return JSONResponse(entry.describe(), status_code=201 if created else 200)


@router.delete("/{ref}", dependencies=[ADMIN])
async def delete(ref: str, svc: Services = Depends(services)) -> dict[str, Any]:
    try:
        return {"deleted": await svc.tools.delete(ref)}
    except ToolNotFound as exc:
        raise _not_found(exc) from None
    except ToolConflict as exc:
        raise ApiError(409, str(exc), type="conflict", param="name", code="tool_conflict") from None


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity tools", loads_tools=True))
