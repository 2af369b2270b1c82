"""The reference forwarder: the floor a Python gateway reaches on this machine.

FastAPI on uvicorn (the same server and worker count as Orchesity's gateway) and one
shared async HTTP client, `httpx2.AsyncClient` (what the openai SDK 3.x sends through,
so what Orchesity's provider adapter uses), or `httpx` when httpx2 is missing. No
routing, no auth, no logging, no cache: read the body, look at `stream`, forward the
bytes to the upstream, return its bytes (`REFERENCE_CLIENT=httpx` picks httpx instead). Anything a real gateway does costs on top.

    UPSTREAM=http://127.0.0.1:9100/v1 uvicorn bench.overhead.reference:app \
        --host 127.0.0.1 --port 9200 --no-access-log
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask


def _client_module() -> Any:
    """httpx2 unless REFERENCE_CLIENT=httpx (or httpx2 is not installed)."""
    if os.environ.get("REFERENCE_CLIENT", "httpx2") == "httpx2":
        try:
            import httpx2

            return httpx2
        except ImportError:  # pragma: no cover - depends on the environment
            pass
    import httpx

    return httpx


_FORWARDED = ("content-type", "authorization")


def make_app(upstream: str) -> FastAPI:
    httpx_mod = _client_module()
    url = upstream.rstrip("/") + "/chat/completions"
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = httpx_mod.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx_mod.AsyncClient(timeout=30.0, limits=limits) as client:
            state["client"] = client
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.body()
        stream = json.loads(body).get("stream") is True
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED}
        client = state["client"]
        if not stream:
            reply = await client.post(url, content=body, headers=headers)
            return Response(reply.content, status_code=reply.status_code,
                            media_type=reply.headers.get("content-type"))
        upstream_request = client.build_request("POST", url, content=body, headers=headers)
        reply = await client.send(upstream_request, stream=True)
        return StreamingResponse(reply.aiter_raw(), status_code=reply.status_code,
                                 media_type=reply.headers.get("content-type"),
                                 background=BackgroundTask(reply.aclose))

    return app


def __getattr__(name: str) -> Any:
    # `uvicorn bench.overhead.reference:app` builds the app on first access, from UPSTREAM
    if name == "app":
        return make_app(os.environ["UPSTREAM"])
    raise AttributeError(name)
