"""LeanRoute (functions/routing.py): the LLM routes' short path answers as FastAPI does.

Each test builds the same endpoint twice, once as FastAPI's APIRoute and once as a
LeanRoute, and sends both the same requests: whatever the short path takes or hands
back to FastAPI, the caller must not be able to tell the two apart.
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
from functions.routing import LeanRoute


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


def _app(route_class: type, **include: Any) -> FastAPI:
    app = FastAPI(default_response_class=Marked)
    app.include_router(_router(route_class), **include)
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


async def test_a_dependency_added_where_a_lean_router_is_included_still_guards_it() -> None:
    async def closed() -> None:
        raise HTTPException(403, "closed")

    guarded = _app(LeanRoute, dependencies=[Depends(closed)])
    async with _client(guarded) as client, _client(_app(LeanRoute)) as open_client:
        refused = await client.post("/items", json={"name": "a"}, headers=KEY)
        served = await open_client.post("/items", json={"name": "a"}, headers=KEY)
    assert refused.status_code == 403
    assert served.status_code == 201 and served.json()["who"] == "main:caller"


class _Tracer(trace.NoOpTracer):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.names.append(name)
        return super().start_span(name, *args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        self.names.append(name)
        yield trace.INVALID_SPAN


class _Provider(trace.TracerProvider):
    def __init__(self) -> None:
        self.names: list[str] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _Tracer(self.names)


async def test_under_opentelemetry_a_lean_route_keeps_fastapis_operation_spans() -> None:
    provider = _Provider()
    app = FastAPI(telemetry={"tracer_provider": provider})  # type: ignore[call-arg]
    app.include_router(_router(LeanRoute))
    async with _client(app) as client:
        response = await client.post("/items", json={"name": "a"}, headers=KEY)
    assert response.status_code == 201
    assert "POST" in " ".join(provider.names)  # the request's span
    assert "fastapi.dependencies" in provider.names  # FastAPI's own handler served it


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
