"""A test-only server speaking Upstash's REST protocol on top of a real Redis.

It lets the Upstash backend run against real Redis semantics: every command goes to the
Redis behind it, and only the transport is Upstash's:

- POST `/` with a JSON command array -> `{"result": …}`, or HTTP 400 `{"error": "ERR …"}`
- POST `/pipeline` with an array of commands -> an array of `{"result"}` / `{"error"}`
- POST `/multi-exec` -> the same, run as one MULTI/EXEC transaction
- `Authorization: Bearer <token>`, else HTTP 401 `{"error": "Unauthorized"}`
- `Upstash-Encoding: base64` -> every string in a result base64-encoded (recursively),
  except the exact string "OK", which is what `upstash_redis.http.decode` expects.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import serve


_ERROR_CODES = {
    "NoScriptError": "NOSCRIPT",
    "ExecAbortError": "EXECABORT",
    "ReadOnlyError": "READONLY",
    "BusyLoadingError": "LOADING",
    "OutOfMemoryError": "OOM",
    "NoPermissionError": "NOPERM",
}


def redis_error_text(exc: Exception) -> str:
    """The error reply as Redis sent it ("NOSCRIPT …", "ERR …", "WRONGTYPE …").

    redis-py drops the leading code of the replies it maps to exception classes
    ("NOSCRIPT No matching script" arrives as NoScriptError("No matching script")), and
    drops "ERR " from generic errors; other codes (WRONGTYPE, BUSYGROUP) it keeps. Put
    the code back so every backend reports the same text and NOSCRIPT can be detected.
    """
    message = str(exc)
    code = _ERROR_CODES.get(type(exc).__name__)
    if code is not None:
        return f"{code} {message}"
    first = message.split(" ", 1)[0]
    if first.isalpha() and first.isupper():  # a code redis-py left in place
        return message
    return f"ERR {message}"


def _b64(value: Any) -> Any:
    if isinstance(value, str):
        return value if value == "OK" else base64.b64encode(value.encode()).decode()
    if isinstance(value, list):
        return [_b64(item) for item in value]
    return value  # integers and null


def _is_command(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(
        isinstance(part, (str, int, float)) and not isinstance(part, bool) for part in value))


def create_app(redis_url: str, token: str) -> Starlette:
    """The REST endpoint; it opens its own client to `redis_url` in its own event loop."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(redis_url, protocol=2, decode_responses=True)
        client.response_callbacks.clear()  # raw RESP2 replies, as Upstash sends them
        app.state.redis = client
        yield
        await client.aclose()

    async def handle(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        encode = _b64 if request.headers.get("upstash-encoding") == "base64" else (lambda v: v)
        try:
            body = await request.json()
        except ValueError:
            body = None
        path = request.url.path
        batch = path in ("/pipeline", "/multi-exec")
        commands = body if batch else [body]
        if not (isinstance(commands, list) and commands and all(map(_is_command, commands))):
            return JSONResponse({"error": "ERR failed to parse command"}, status_code=400)
        client = request.app.state.redis
        try:
            if not batch:
                return JSONResponse({"result": encode(await client.execute_command(*body))})
            pipe = client.pipeline(transaction=path == "/multi-exec")
            for command in body:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        except ResponseError as exc:  # a command, or a whole transaction, was refused
            return JSONResponse({"error": redis_error_text(exc)}, status_code=400)
        return JSONResponse([
            {"error": redis_error_text(reply)} if isinstance(reply, ResponseError)
            else {"result": encode(reply)}
            for reply in replies
        ])

    routes = [Route(path, handle, methods=["POST"]) for path in ("/", "/pipeline", "/multi-exec")]
    return Starlette(routes=routes, lifespan=lifespan)


def serve_upstash(redis_url: str, token: str) -> contextlib.AbstractContextManager[str]:
    """`with serve_upstash(redis_url, token) as url:` an Upstash REST endpoint at `url`."""
    return serve(create_app(redis_url, token))
