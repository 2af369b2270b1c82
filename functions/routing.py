"""LeanRoute: FastAPI's APIRoute with a shorter path for the LLM routes' well-formed requests.

FastAPI's handler reads the body, decides its content type through `email.message`,
solves each dependency (a cache key, an exit stack and the parameter checks per node)
and validates, whatever the route's shape. Measured in-process on this 2-core machine,
an endpoint with a model body and two dependencies cost 85 µs of CPU per request, a
Starlette route in the same FastAPI app 26 µs; on the gateway's chat route this path
took a request from 2.20 to 1.86 million instructions (`bench.overhead.instructions`).

The route stays a FastAPI route (its OpenAPI schema, its dependencies as declared, its
tests' view of who owns it); only the handler behind `get_route_handler` (FastAPI's
documented hook for a custom route class) changes, and only for a route of this shape:

- one body parameter, a pydantic model (not embedded), and no path, query, header or
  cookie parameters, no `Response`/`BackgroundTasks`/security parameters, no response
  model;
- dependencies, its router's and its inclusion's too, that are coroutine functions
  taking at most the `Request` and other such dependencies (`services`, the
  `require(scope)` principals).

A request takes the short path only when its body is JSON that the model accepts and no
OpenTelemetry provider is observing it (FastAPI's telemetry then wants its operation
spans). Anything else (no body, another content type, broken JSON, a body the model
refuses) goes to FastAPI's own handler, which answers exactly as it always has; the body
read once is cached by Starlette's Request, so it is not read twice. The short path
solves the dependencies in FastAPI's order, each once per request, before the endpoint
runs, so a request without a valid key is refused as before; a result that is not a
Response is encoded as FastAPI would, with the app's or router's response class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi import routing as fastapi_routing
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response

from core import fastjson

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _plain(dependant: Dependant, *, body: bool = False) -> bool:
    """True if `dependant` is a coroutine function taking nothing but the request, other
    such dependencies and (with `body`) its body."""
    return (not (dependant.path_params or dependant.query_params or dependant.header_params
                 or dependant.cookie_params or (dependant.body_params and not body))
            and dependant.websocket_param_name is None and dependant.http_connection_param_name is None
            and dependant.response_param_name is None and dependant.background_tasks_param_name is None
            and dependant.security_scopes_param_name is None and dependant.use_cache
            and inspect.iscoroutinefunction(dependant.call)
            and all(_plain(sub) for sub in dependant.dependencies))


def _served(route: APIRoute) -> Any:
    """What FastAPI serves `route` with: while it builds the handler of an inclusion
    (FastAPI 0.16x's `include_router` keeps one route and builds a handler per inclusion,
    under a context variable), that inclusion's dependant, response class and status,
    which hold what the inclusion adds; otherwise the route's own."""
    context_var = getattr(fastapi_routing, "_effective_route_context_var", None)
    context = context_var.get() if context_var is not None else None
    return context if context is not None and getattr(context, "original_route", None) is route else route


def _model(served: Any) -> type[BaseModel] | None:
    """The body model if what is served has the short path's shape, else None."""
    dependant = getattr(served, "dependant", None)
    if (dependant is None or len(dependant.body_params) != 1
            or getattr(served, "response_model", None) not in (None, Any)
            or getattr(served, "_embed_body_fields", True) or not _plain(dependant, body=True)):
        return None
    annotation = dependant.body_params[0].field_info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


async def _arguments(dependant: Dependant, request: Request, solved: dict[Any, Any]) -> dict[str, Any]:
    """`dependant`'s request and dependencies, each dependency called once per request."""
    kwargs: dict[str, Any] = {}
    if dependant.request_param_name:
        kwargs[dependant.request_param_name] = request
    for sub in dependant.dependencies:
        if sub.call in solved:
            value = solved[sub.call]
        else:
            value = solved[sub.call] = await sub.call(**await _arguments(sub, request, solved))  # type: ignore[misc]
        if sub.name:
            kwargs[sub.name] = value
    return kwargs


def _json(content_type: str | None) -> bool:
    if not content_type:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class LeanRoute(APIRoute):
    """An APIRoute whose well-formed JSON requests skip FastAPI's generic handler (above)."""

    def get_route_handler(self) -> Handler:
        standard = super().get_route_handler()
        served = _served(self)
        model = _model(served)
        if model is None:
            return standard
        dependant: Dependant = served.dependant
        body_name = dependant.body_params[0].name
        status_code = served.status_code
        response_class = getattr(served.response_class, "value", served.response_class)  # FastAPI's Default(...)

        async def handler(request: Request) -> Response:
            if request.scope.get("fastapi.telemetry") is not None:
                return await standard(request)
            raw = await request.body()
            if not raw or not _json(request.headers.get("content-type")):
                return await standard(request)
            try:
                body = model.model_validate(fastjson.loads(raw))
            except ValueError:  # broken JSON (orjson.JSONDecodeError) or a ValidationError
                return await standard(request)  # its errors, worded as FastAPI words them
            kwargs = await _arguments(dependant, request, {})
            result = await dependant.call(**kwargs, **{body_name: body})  # type: ignore[misc]
            if isinstance(result, Response):
                return result
            extra = {"status_code": status_code} if status_code is not None else {}
            return response_class(jsonable_encoder(result), **extra)

        return handler
