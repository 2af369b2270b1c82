"""What every function shares: the app factory, its services, and JSON error bodies.

Errors always have OpenAI's shape, so a client of `/v1` and a client of `/api` read
them the same way: `{"error": {"type", "message", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _StarletteJSON
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import __version__, fastjson, heap
from core.services import Services
from core.settings import Settings, load_settings

log = logging.getLogger("orchesity.http")


class JSONResponse(_StarletteJSON):
    """Starlette's JSONResponse, encoded with orjson (see core/fastjson.py)."""

    def render(self, content: Any) -> bytes:
        return fastjson.dumps(content)


class ApiError(Exception):
    """An error the caller can act on; becomes a 4xx/5xx JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "param": param, "code": code, **extra}}


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, type=exc.type, param=exc.param, code=exc.code),
                        status_code=exc.status)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
        problems.append({"param": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    first = problems[0] if problems else {"param": None, "message": "invalid request"}
    message = "; ".join(f"{p['param']}: {p['message']}" if p["param"] else p["message"] for p in problems)
    return JSONResponse(
        error_body(message, type="invalid_request_error", param=first["param"],
                   code="validation_error", details=problems),
        status_code=422,
    )


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), type=kind), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The message may hold anything (a URL with a password, a provider's reply): log
    # it, return only its class.
    log.exception("unhandled error")
    return JSONResponse(error_body(f"internal error ({type(exc).__name__})", type="internal_error"),
                        status_code=500)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, before they are buffered."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._refuse(send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            error_body(f"request body is larger than {self.limit} bytes (MAX_REQUEST_BYTES)",
                       type="invalid_request_error", code="request_too_large"),
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
    return {"type": "http.disconnect"}


class ServiceHolder:
    """Opens the process's Services on first use and keeps them.

    Lazy, because Mangum runs with lifespan="off" (its lifespan would run on every
    invocation) and a warm Lambda keeps the opened connections for the next call.
    """

    def __init__(self, settings: Settings, services: Services | None = None) -> None:
        self.settings = settings
        self._services = services
        self._owned = services is None
        self._lock = asyncio.Lock()

    async def get(self) -> Services:
        if self._services is None:
            async with self._lock:
                if self._services is None:
                    self._services = await Services.open(self.settings)
                    heap.settle()
        return self._services

    async def close(self) -> None:
        if self._owned and self._services is not None:
            await self._services.close()
            self._services = None


async def services(request: Request) -> Services:
    """FastAPI dependency: the process's shared Services."""
    return await request.app.state.services.get()


def create_app(*routers: APIRouter, title: str, settings: Settings | None = None,
               services: Services | None = None) -> FastAPI:
    """A FastAPI app serving `routers`, with Orchesity's errors, limits and CORS.

    `services` is for tests and the gateway, which open them once; otherwise they are
    opened from `settings` (or the environment) on first use.
    """
    settings = settings or (services.settings if services else load_settings())
    holder = ServiceHolder(settings, services)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await holder.close()

    app = FastAPI(title=title, version=__version__, lifespan=lifespan, default_response_class=JSONResponse)
    app.state.services = holder
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    for router in routers:
        app.include_router(router)
    origins = [o.strip() for o in settings.CORS_ALLOW_ORIGINS.split(",") if o.strip()]
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-orchesity-overhead-ms"])
    app.add_middleware(BodyLimit, limit=settings.MAX_REQUEST_BYTES)
    return app


def entry_points(build: Callable[[], FastAPI]) -> Callable[[str], Any]:
    """A module `__getattr__` giving a function module its `app` and Lambda `handler`.

    Built on first access rather than at import, so importing a function module (the
    gateway does, for its router) reads no settings and opens nothing.
    `uvicorn functions.health:app` and a Lambda handler `functions.health.handler`
    both resolve through it. The handler is Mangum with lifespan off: Mangum would
    otherwise run the lifespan on every invocation (see ServiceHolder).
    """
    built: dict[str, Any] = {}

    def __getattr__(name: str) -> Any:
        if name not in ("app", "handler"):
            raise AttributeError(name)
        if "app" not in built:
            built["app"] = build()
        if name == "handler" and "handler" not in built:
            from mangum import Mangum

            built["handler"] = Mangum(built["app"], lifespan="off")
        return built[name]

    return __getattr__
