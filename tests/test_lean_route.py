"""LeanRoute and StaticPaths (functions/routing.py): the short paths answer as FastAPI does.

Each test builds the same endpoint twice, once as FastAPI's APIRoute and once as a
LeanRoute (or once with FastAPI's route matching and once with StaticPaths in front of
it), and sends both the same requests: whatever the short path takes or hands back to
FastAPI, the caller must not be able to tell the two apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from opentelemetry import trace
from pydantic import BaseModel, Field

from functions.http import JSONResponse
from functions.routing import LeanRoute, StaticPaths


class Item(BaseModel):
    name: str = Field(min_length=1)
    count: int = 1


async def store(request: Request) -> dict[str, Any]:
    return {"store": request.headers.get("x-store", "main")}


async def caller(request: Request, where: dict[str, Any] = Depends(store)) -> str:
    if request.headers.get("authorization") != "Bearer good":
        raise HTTPException(401, "no key")
    return f"{where['store']}:caller"


def _router(route_class: type) -> APIRouter:
    router = APIRouter(route_class=route_class)

    @router.post("/items")
    async def add(item: Item, where: dict[str, Any] = Depends(store), who: str = Depends(caller)) -> Any:
        if item.name == "plain":  # not a Response: serialised by the route
            return {"name": item.name, "who": who}
        return JSONResponse({"name": item.name, "count": item.count, "who": who, **where}, status_code=201)

    return router


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


class Marked(JSONResponse):
    """The app's default response class: what a route's plain (non-Response) result takes."""

    media_type = "application/x-marked+json"


def _app(route_class: type, *, static_paths: bool = False, **include: Any) -> FastAPI:
    app = FastAPI(default_response_class=Marked)
    app.include_router(_router(route_class), **include)
    if static_paths:
        StaticPaths.install(app.router)
    return app


KEY = {"authorization": "Bearer good"}
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("content,headers", [
    (b'{"name": "a", "count": 2}', {**KEY, **JSON}),
    (b'{"name": "a"}', {**KEY, "content-type": "Application/JSON; charset=utf-8", "x-store": "east"}),
    (b'{"name": "a"}', {**KEY, "content-type": "application/vnd.items+json"}),
    (b'{"name": "plain"}', {**KEY, **JSON}),
    (b'{"name": "a"}', JSON),  # no key
    (b'{"name": "a"}', {"authorization": "Bearer bad", **JSON}),
    (b'{"name": ""}', {**KEY, **JSON}),  # the model refuses it
    (b'{"name": "a", "count": "many"}', {**KEY, **JSON}),
    (b'[{"name": "a"}]', {**KEY, **JSON}),
    (b'{"name": "a",,}', {**KEY, **JSON}),  # broken JSON
    (b'{"name": "a", "note": NaN}', {**KEY, **JSON}),  # Python's json takes NaN, orjson does not
    (b"", {**KEY, **JSON}),
    (b'{"name": "a"}', KEY),  # no content type
    (b'{"name": "a"}', {**KEY, "content-type": "text/plain"}),
])
async def test_a_lean_route_answers_every_request_as_fastapi_does(content: bytes, headers: dict[str, str]) -> None:
    async with _client(_app(LeanRoute)) as lean, _client(_app(APIRoute)) as standard:
        ours = await lean.post("/items", content=content, headers=headers)
        theirs = await standard.post("/items", content=content, headers=headers)
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
    assert ours.headers.get("content-type") == theirs.headers.get("content-type")


@pytest.mark.parametrize("static_paths", [False, True])
async def test_a_dependency_added_where_a_lean_router_is_included_still_guards_it(static_paths: bool) -> None:
    async def closed() -> None:
        raise HTTPException(403, "closed")

    guarded = _app(LeanRoute, static_paths=static_paths, dependencies=[Depends(closed)])
    async with _client(guarded) as client, _client(_app(LeanRoute, static_paths=static_paths)) as open_client:
        for _ in range(2):  # the second, with StaticPaths, replays the first's matching
            refused = await client.post("/items", json={"name": "a"}, headers=KEY)
            served = await open_client.post("/items", json={"name": "a"}, headers=KEY)
            assert refused.status_code == 403
            assert served.status_code == 201 and served.json()["who"] == "main:caller"


@pytest.mark.parametrize("route_class", [LeanRoute, APIRoute])
async def test_dependency_overrides_apply_to_a_lean_route(route_class: type) -> None:
    app = _app(route_class)
    app.dependency_overrides[store] = lambda: {"store": "override"}
    async with _client(app) as client:
        response = await client.post("/items", json={"name": "a"}, headers=KEY)
    assert (response.status_code, response.json()["store"], response.json()["who"]) == (201, "override",
                                                                                         "override:caller")


def _routed(static_paths: bool) -> FastAPI:
    """An app with a lean route, a route with a path parameter, a GET route, and a path
    that two methods share, each on its own router."""
    app = _app(LeanRoute, static_paths=False)
    other = APIRouter()

    @other.get("/things/{thing}")
    async def thing(thing: str) -> dict[str, str]:
        return {"thing": thing}

    @other.get("/items")
    async def list_items() -> list[str]:
        return ["a"]

    @other.get("/ping")
    async def ping(request: Request) -> dict[str, Any]:
        return {"route": request.scope["route"].path, "params": request.path_params}

    app.include_router(other)
    if static_paths:
        StaticPaths.install(app.router)
    return app


ROUTED = [("POST", "/items", {"name": "a"}, KEY), ("POST", "/items", {"name": "a"}, {}),
          ("POST", "/items", {"name": ""}, KEY), ("GET", "/items", None, {}), ("PUT", "/items", None, {}),
          ("POST", "/items/", {"name": "a"}, KEY), ("GET", "/things/x", None, {}), ("GET", "/things/y", None, {}),
          ("GET", "/ping", None, {}), ("HEAD", "/ping", None, {}), ("GET", "/missing", None, {}),
          ("DELETE", "/ping", None, {})]


async def test_static_paths_answer_every_request_as_fastapis_matching_does() -> None:
    async with _client(_routed(True)) as ours, _client(_routed(False)) as theirs:
        for _ in range(3):  # first learnt, then replayed
            for method, path, body, headers in ROUTED:
                a = await ours.request(method, path, json=body, headers=headers)
                b = await theirs.request(method, path, json=body, headers=headers)
                assert (a.status_code, a.content, a.headers.get("content-type"), a.headers.get("allow"),
                        a.headers.get("location")) == (b.status_code, b.content, b.headers.get("content-type"),
                                                       b.headers.get("allow"), b.headers.get("location")), (method, path)


async def test_static_paths_match_a_path_once_and_a_path_with_parameters_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of StaticPaths (its cost is measured in bench/overhead)."""
    import fastapi.routing

    matched: list[str] = []
    match = fastapi.routing._IncludedRouter._match

    def counting(self: Any, scope: dict[str, Any]) -> Any:
        result = match(self, scope)
        if result[2] is not None:
            matched.append(f"{scope['method']} {scope['path']}")
        return result

    monkeypatch.setattr(fastapi.routing._IncludedRouter, "_match", counting)
    async with _client(_routed(True)) as client:
        for _ in range(3):
            assert (await client.post("/items", json={"name": "a"}, headers=KEY)).status_code == 201
            assert (await client.get("/things/x")).json() == {"thing": "x"}
            assert (await client.get("/ping")).json() == {"route": "/ping", "params": {}}
            assert (await client.put("/items")).status_code == 405
    each = matched.count("GET /things/x") // 3  # FastAPI's matching of one request (it matches twice)
    assert each >= 1 and matched.count("GET /things/x") == 3 * each
    assert matched.count("GET /ping") == matched.count("POST /items") == each  # the first request only
    assert matched.count("PUT /items") >= 3  # a 405 is not learnt


class _Span(trace.NonRecordingSpan):
    """Keeps the names a span is given (FastAPI renames a request's span to its route)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(trace.INVALID_SPAN_CONTEXT)
        self.names = names

    def update_name(self, name: str) -> None:
        self.names.append(name)


class _Tracer(trace.NoOpTracer):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.names.append(name)
        return _Span(self.names)

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        self.names.append(name)
        yield _Span(self.names)


class _Provider(trace.TracerProvider):
    def __init__(self) -> None:
        self.names: list[str] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _Tracer(self.names)


async def test_under_opentelemetry_a_lean_route_keeps_fastapis_operation_spans() -> None:
    provider = _Provider()
    app = FastAPI(telemetry={"tracer_provider": provider})  # type: ignore[call-arg]
    app.include_router(_router(LeanRoute))
    StaticPaths.install(app.router)
    async with _client(app) as client:
        for _ in range(2):
            response = await client.post("/items", json={"name": "a"}, headers=KEY)
            assert response.status_code == 201
    assert provider.names.count("POST /items") == 2  # each request's span, named for its route
    assert provider.names.count("fastapi.dependencies") == 2  # FastAPI's own handler served both


async def test_a_well_formed_request_skips_fastapis_dependency_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the short path (its cost is measured in bench/overhead): a request
    that parses is served without FastAPI's solver, one that does not is served by it."""
    import fastapi.routing

    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    async with _client(_app(LeanRoute)) as client:
        served = await client.post("/items", json={"name": "a"}, headers=KEY)
        assert (served.status_code, solved) == (201, [])
        refused = await client.post("/items", json={"name": ""}, headers=KEY)
    assert (refused.status_code, solved) == (422, ["/items"])
