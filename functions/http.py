"""What every function shares: the app factory, its services, and JSON error bodies.

Errors always have OpenAI's shape, so a client of `/v1` and a client of `/api` read
them the same way: `{"error": {"type", "message", "param", "code"}}`. A dependency
that is down is a 503 naming it (Redis, the database), never a bare 500; an unexpected
error is a 500 that names only the exception's class, and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _StarletteJSON
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from core import __version__, fastjson, heap
from core.auth import OPEN, AuthError, Principal, Scope
from core.db import unusable
from core.kv import KVUnavailable
from core.services import Services
from core.settings import Settings, SettingsError, load_settings
from functions.routing import StaticPaths, json_type

log = logging.getLogger("orchesity.http")


class JSONResponse(_StarletteJSON):
    """Starlette's JSONResponse, encoded with orjson (see core/fastjson.py)."""

    def render(self, content: Any) -> bytes:
        return fastjson.dumps(content)


class ApiError(Exception):
    """An error the caller can act on; becomes a 4xx/5xx JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers, self.details = headers, details


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "param": param, "code": code, **extra}}


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    extra = {"details": exc.details} if exc.details is not None else {}
    return JSONResponse(error_body(exc.message, type=exc.type, param=exc.param, code=exc.code, **extra),
                        status_code=exc.status, headers=exc.headers)


def validation_problems(request: Request, exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each problem of a request that failed validation: {"param", "message"}."""
    problems: list[dict[str, Any]] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # its loc is the byte offset, not a parameter
            position = err.get("loc", ("body", "?"))[-1]
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            problems.append({"param": None, "message": f"the body is not valid JSON: {reason} at byte {position}"})
            continue
        content_type = request.headers.get("content-type")
        if tuple(err.get("loc", ())) == ("body",) and isinstance(err.get("input"), bytes | str) \
                and not json_type(content_type):  # FastAPI read a body not sent as JSON as bytes
            came = f"it came as {content_type!r}" if content_type else "it came with none"
            problems.append({"param": None, "message": "the body must be a JSON object sent with "
                                                       f"Content-Type: application/json ({came})"})
            continue
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
        problems.append({"param": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    return problems or [{"param": None, "message": "invalid request"}]


def problems_text(problems: list[dict[str, Any]]) -> str:
    return "; ".join(f"{p['param']}: {p['message']}" if p["param"] else p["message"] for p in problems)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = validation_problems(request, exc)
    return JSONResponse(
        error_body(problems_text(problems), type="invalid_request_error", param=problems[0]["param"],
                   code="validation_error", details=problems),
        status_code=422,
    )


def http_error_message(exc: StarletteHTTPException) -> str:
    """What an HTTPException says; for FastAPI's "There was an error parsing the body", why."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid JSON: it is not UTF-8 (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: it is nested too deeply"
    return str(exc.detail)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(http_error_message(exc), type=kind), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def dependency_down(exc: BaseException) -> ApiError | None:
    """The 503 for a dependency that failed under a request, or None if `exc` is not one."""
    if isinstance(exc, KVUnavailable):
        return ApiError(503, f"Redis is unavailable ({exc}); try again shortly", type="service_unavailable",
                        code="redis_unavailable")
    if isinstance(exc, SettingsError):  # e.g. a providers file a Lambda found broken on first use
        return ApiError(503, str(exc), type="service_unavailable", code="configuration_error")
    reason = unusable(exc)
    if reason is not None:
        return ApiError(503, reason, type="service_unavailable", code="database_unavailable")
    return None


async def _send_error(send: Send, error: ApiError) -> None:
    response = JSONResponse(error_body(error.message, type=error.type, param=error.param, code=error.code),
                            status_code=error.status)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
    return {"type": "http.disconnect"}


class Guard:
    """The outermost layer of every function: what no request may get past.

    - A body over `limit` bytes is refused with 413 before it is buffered, whether the
      client declared its length or sent it chunked.
    - A body that does not arrive within `receive_timeout` seconds is answered 408, so a
      client sending half a request does not hold a connection (the head's own deadline
      is the server's: functions/serving.py).
    - An exception no handler took becomes a JSON 500 (a 503 for a dependency that is
      down) and is logged; it is not re-raised, so the server keeps the keep-alive
      connection instead of resetting it under a pooled client's next request.
    """

    def __init__(self, app: ASGIApp, limit: int, receive_timeout: float) -> None:
        self.app, self.limit, self.receive_timeout = app, limit, receive_timeout

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        if declared is not None and declared > self.limit:
            return await _send_error(send, self._too_large())
        try:
            body = await self._body(receive, declared)
        except ApiError as error:
            return await _send_error(send, error)
        started = False

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            return await receive()  # after the body: only a disconnect can come

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, watch)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if started:  # a streamed response broke half-way: nothing left to answer with
                raise
            error = dependency_down(exc)
            if error is None:
                # The message may hold anything (a URL with a password, a provider's
                # reply): log it, answer only its class.
                log.exception("unhandled error")
                error = ApiError(500, f"internal error ({type(exc).__name__})", type="internal_error")
            await _send_error(send, error)

    async def _body(self, receive: Receive, declared: int | None) -> bytes | None:
        """The whole body, within the size and time limits (None: the client left)."""
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.receive_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limit:
                        raise self._too_large()
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(parts)
        except TimeoutError:
            got = f"{size} of {declared}" if declared is not None else f"{size}"
            raise ApiError(408, f"the request body did not arrive within {self.receive_timeout:g}s "
                                f"({got} bytes received)", code="request_timeout") from None

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body is larger than {self.limit} bytes (MAX_REQUEST_BYTES)",
                        code="request_too_large")


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
            embedded = self._services.db.embedded
            await self._services.close()
            self._services = None
            if embedded is not None:
                # This process is done with the embedded server: let go of it now, not
                # at exit, which a uvicorn process stopped by SIGTERM never reaches (it
                # re-raises the signal once shut down). The last one out stops it.
                await asyncio.to_thread(embedded.stop)


async def services(request: Request) -> Services:
    """FastAPI dependency: the process's shared Services."""
    return await request.app.state.services.get()


def bearer(request: Request) -> str | None:
    """The credential a request carries: `Authorization: Bearer …` (the OpenAI SDK's way)
    or `x-api-key` (the Anthropic SDK's)."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request, svc: Services) -> Principal:
    """The verified caller of `request`; ApiError 401 when it has no valid credential."""
    if await svc.authenticator.open():
        return OPEN
    token = bearer(request)
    if token is None:
        raise ApiError(401, "this route needs an API key: send Authorization: Bearer <key> (or x-api-key)",
                       type="authentication_error", code="missing_api_key",
                       headers={"www-authenticate": "Bearer"})
    try:
        return await svc.authenticator.authenticate(token)
    except AuthError as exc:
        kind = "authentication_error" if exc.status == 401 else "permission_error"
        raise ApiError(exc.status, exc.message, type=kind, code=exc.code,
                       headers={"www-authenticate": "Bearer"} if exc.status == 401 else None) from None


def require(scope: Scope) -> Callable[..., Any]:
    """FastAPI dependency: the caller, verified and holding `scope` (an admin holds all)."""

    async def principal(request: Request, svc: Services = Depends(services)) -> Principal:
        caller = await authenticate(request, svc)
        if not caller.allows(scope):
            raise ApiError(403, f"this key may not do this: it needs the {scope.value!r} scope "
                                f"(it has: {', '.join(sorted(caller.scopes))})",
                           type="permission_error", code="insufficient_scope")
        return caller

    principal.scope = scope  # type: ignore[attr-defined]  # what tests read to check every route's owner
    return principal


def create_app(*routers: APIRouter, title: str, settings: Settings | None = None,
               services: Services | None = None, routes_llm: bool = False,
               drains_log: bool = False, loads_tools: bool = False, advances_runs: bool = False) -> FastAPI:
    """A FastAPI app serving `routers`, with Orchesity's errors, limits and CORS.

    `services` is for tests and the gateway, which open them once; otherwise they are
    opened from `settings` (or the environment) on first use. Under a long-running
    server (uvicorn runs the lifespan; Mangum does not) they are opened at start-up,
    and so are the provider registry when `routes_llm` and the tool registry when
    `loads_tools` (with the named pipelines), so a configuration the app cannot use stops
    it from starting; with `drains_log` the logs are moved from Redis into Postgres in the
    background for as long as it runs, and with `advances_runs` (and RUN_BACKGROUND_WORKER)
    a worker advances runs in the background (core/runs/worker.py), stopped with the app.
    """
    settings = settings or (services.settings if services else load_settings())
    # Orchesity's own loggers follow LOG_LEVEL wherever the app runs; their records reach
    # the handlers of the host (uvicorn's, functions/serving.py; Lambda's root logger).
    logging.getLogger("orchesity").setLevel(settings.LOG_LEVEL.value)
    holder = ServiceHolder(settings, services)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        svc = await holder.get()
        if routes_llm:
            from core.providers import tokens

            for adapter in svc.orchestrator.registry:  # builds it: a broken providers file raises here
                tokens.preload(adapter.spec.model)  # in the background; Lambda loads on first count
        if loads_tools:
            svc.tools  # noqa: B018 - reads the tools file: one it cannot use raises here
            svc.pipelines  # noqa: B018 - and the pipelines file
        drainer = None
        if drains_log and svc.kv is not None and settings.LOG_DRAIN_INTERVAL_SECONDS > 0:
            from core.journal import drain_continuously

            drainer = asyncio.create_task(
                drain_continuously(svc.kv, svc.db, interval=settings.LOG_DRAIN_INTERVAL_SECONDS))
        stop_worker, worker = asyncio.Event(), None
        if advances_runs and settings.RUN_BACKGROUND_WORKER:
            from core.runs.worker import work

            worker = asyncio.create_task(work(svc, stop_worker, concurrency=settings.WORKER_CONCURRENCY))
        try:
            yield
        finally:
            stop_worker.set()
            if drainer is not None:
                drainer.cancel()
            await asyncio.gather(*(t for t in (drainer, worker) if t is not None), return_exceptions=True)
            await holder.close()

    app = FastAPI(title=title, version=__version__, lifespan=lifespan, default_response_class=JSONResponse)
    app.state.services = holder
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for router in routers:
        app.include_router(router)
    origins = [o.strip() for o in settings.CORS_ALLOW_ORIGINS.split(",") if o.strip()]
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-orchesity-overhead-ms"])
    app.add_middleware(Guard, limit=settings.MAX_REQUEST_BYTES, receive_timeout=settings.RECEIVE_TIMEOUT_SECONDS)
    StaticPaths.install(app.router)
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
