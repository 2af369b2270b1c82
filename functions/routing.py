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
Response is encoded as FastAPI would, with the app's or router's response class. While
the app has dependency overrides set (`app.dependency_overrides`), FastAPI's handler
serves every request, as it is the one that applies them.

StaticPaths, in front of the app's router, spares a request to a static path FastAPI's
route matching (0.16x keeps each included router as a branch and walks them all, twice
for the branch that matches: 1.36 → 1.21 million instructions per chat request). It
learns from FastAPI: the first request to a method and path is matched by FastAPI, and
if that chose an APIRoute without path parameters, what the matching wrote into the
scope and the inclusion's handler are remembered and replayed for the next requests to
that method and path. Everything else (a path FastAPI did not match, a 405, a path with
parameters, a request an OpenTelemetry provider observes) is matched by FastAPI every
time. The app's routes are taken as fixed once it serves: `include_router` appends, and
FastAPI's first match could not move to a route added later either.
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
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

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


def json_type(content_type: str | None) -> bool:
    """Whether a Content-Type says JSON (application/json, application/*+json)."""
    kind = (content_type or "").partition(";")[0].strip().lower()
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
        overrides = getattr(served, "dependency_overrides_provider", None)  # the app, whose overrides apply

        async def handler(request: Request) -> Response:
            if request.scope.get("fastapi.telemetry") is not None or getattr(overrides, "dependency_overrides", None):
                return await standard(request)
            raw = await request.body()
            if not raw or not json_type(request.headers.get("content-type")):
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


# FastAPI's own scope keys (private; without them nothing is learnt and FastAPI matches
# every request, as a test notices).
_FASTAPI_SCOPE = getattr(fastapi_routing, "_FASTAPI_SCOPE_KEY", None)
_FASTAPI_CONTEXT = getattr(fastapi_routing, "_FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY", None)
_DECIDED = ("router", "endpoint", "route")  # what matching writes at the scope's top level


class StaticPaths:
    """The app's router, with FastAPI's choice for each static path remembered (above)."""

    def __init__(self, router: Router) -> None:
        self.standard: ASGIApp = router.middleware_stack
        self.known: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, Any], ASGIApp]] = {}

    @classmethod
    def install(cls, router: Router) -> None:
        """In front of `router`, unless it has middleware of its own (which a replay
        would skip)."""
        if _FASTAPI_SCOPE is not None and _FASTAPI_CONTEXT is not None and router.middleware_stack == router.app:
            router.middleware_stack = cls(router)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("fastapi.telemetry") is not None:
            return await self.standard(scope, receive, send)
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        known = self.known.get(key)
        if known is None:
            await self.standard(scope, receive, send)
            self._learn(key, scope)
            return
        decided, fastapi_state, app = known
        scope.update(decided)
        scope["path_params"] = {}
        scope.setdefault(_FASTAPI_SCOPE, {}).update(fastapi_state)  # in place, as FastAPI's matching does
        await app(scope, receive, send)

    def _learn(self, key: tuple[str, str, str], scope: ASGIScope) -> None:
        """Remember what FastAPI chose for `scope`, if it chose a static APIRoute and ran it."""
        route, fastapi_state = scope.get("route"), scope.get(_FASTAPI_SCOPE)
        context = fastapi_state.get(_FASTAPI_CONTEXT) if isinstance(fastapi_state, dict) else None
        app = getattr(context, "app", None)
        if (isinstance(route, APIRoute) and scope.get("path_params") == {} and app is not None
                and getattr(context, "original_route", None) is route
                and scope["method"] in (getattr(context, "methods", None) or ())):
            self.known[key] = ({name: scope[name] for name in _DECIDED}, dict(fastapi_state), app)
