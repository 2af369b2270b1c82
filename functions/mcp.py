"""The MCP function: the tool registry as an MCP server.

POST /mcp   MCP over stateless streamable HTTP: tools/list, tools/call   (tools)

An MCP client sends its key as `Authorization: Bearer <key>` (a key with the tools
scope). Each POST is one exchange answered with one JSON body, so the function runs
the same under uvicorn and as a Lambda behind Mangum with lifespan off. A stateless
server has no session to stream (GET) or end (DELETE): both are 405. The Host a request
names must be one the deployment answers to (MCP_ALLOWED_HOSTS; 421 otherwise). The
logic is core/tools/mcp_server.py; the SDK it needs (~0.5 s to import) is loaded by the
first call, not by importing this module.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.types import Message

from core.auth import Principal, Scope
from core.services import Services
from core.settings import Settings
from functions.http import create_app, entry_points, require, services
from functions.tools import context

router = APIRouter(tags=["mcp"])


@router.post("/mcp")
async def exchange(request: Request, svc: Services = Depends(services),
                   caller: Principal = Depends(require(Scope.tools))) -> Response:
    from core.tools.mcp_server import Call, handle, transport_security

    call = Call(svc.tools, context(svc, caller), kv=svc.kv, db=svc.db)
    start: Message = {}
    body = bytearray()

    async def collect(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            body.extend(message.get("body", b""))

    # The SDK answers on the ASGI channel; in JSON mode its answer is one whole body,
    # gathered here so this stays a FastAPI route (its key check, errors, OpenAPI entry).
    await handle(call, request.scope, request.receive, collect, security=transport_security(svc.settings),
                 max_body_bytes=svc.settings.MAX_REQUEST_BYTES)
    response = Response(bytes(body), status_code=start["status"])
    response.raw_headers = list(start.get("headers", ()))
    return response


def build_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    return create_app(router, title="Orchesity MCP", settings=settings, services=services, loads_tools=True)


__getattr__ = entry_points(build_app)
