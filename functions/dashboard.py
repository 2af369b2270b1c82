"""The dashboard function: the page at /dashboard, and the reads its views need.

GET  /dashboard                                the page (public: it holds no data; it signs in)
GET  /dashboard/assets/{name}                  its script and style sheet (public)
GET  /api/dashboard/providers                  each deployment's live state, share of the last
                                               minute's traffic and cost                (llm)
POST /api/dashboard/providers/stream-token     a read token for the stream below        (llm)
GET  /api/dashboard/providers/stream?token=    Server-Sent Events: the same, every few seconds
GET  /api/dashboard/weights?hours=&provider=   the weight history the cron recompute writes (llm)
GET  /api/dashboard/requests?provider=&status=&key=&cached=&limit=  the request log  (admin)
GET  /api/dashboard/spend?days=                spend per key per UTC day               (admin)
GET  /api/dashboard/pipelines                  the named pipelines and the inputs they read (runs)
POST /api/dashboard/runs/{id}/stream-token     a read token for that run's stream (its owner, an admin)
GET  /api/dashboard/runs/{id}/stream?token=    Server-Sent Events: the run (steps, outputs) and
                                               its new events, on every change; closed when it ends

The page calls the other functions' routes too (keys, runs, tools, DWA reset), with the
key it was signed in with. A stream's `?token=` is a short-lived read token
(core/stream_tokens.py), never a key: EventSource cannot send headers. A dependency
that is down is a 503 naming it (functions/http.py); on a stream it is an
`unavailable` event, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from core import progress, requestlog, stream_tokens
from core.auth import Principal, Scope
from core.db import load_driver
from core.providers.config import NAME_PATTERN
from core.runs import views
from core.services import Services
from functions.db import catch_up
from functions.dwa import finite
from functions.http import ApiError, create_app, dependency_down, entry_points, require, services

load_driver()  # most requests here reach Postgres: load its stack at import
router = APIRouter(tags=["dashboard"])

LLM, RUNS, ADMIN = Depends(require(Scope.llm)), Depends(require(Scope.runs)), Depends(require(Scope.admin))
TRAFFIC_WINDOW_S = 60  # "the last minute's traffic"
PUSH_S = 2.0  # how often the providers stream sends a snapshot
WAIT_S = 15.0  # a run stream waits this long for an event before checking its token
RunId = Annotated[uuid.UUID, Path(description="the run's id")]

# --- the page -----------------------------------------------------------------------------------

ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# Everything the page loads is its own: no other host, no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'")
PAGE_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and a digest of them (what its URL carries, so it can be cached for good)."""
    body = resources.files("functions").joinpath("dashboard_assets", name).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:12]


@cache
def _page() -> bytes:
    page = _asset("index.html")[0].decode()
    for name in ASSETS:
        page = page.replace(f"{{{{{name}}}}}", f"/dashboard/assets/{name}?v={_asset(name)[1]}")
    return page.encode()


def _public(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a route as needing no key (the route-owner test reads the mark): the page and its
    assets hold no data, and a browser navigating to them cannot send a key."""
    endpoint.public = True  # type: ignore[attr-defined]
    return endpoint


@router.get("/dashboard", include_in_schema=False)
@_public
async def page() -> Response:
    # Revalidated on every load, so a new release's asset URLs are picked up at once.
    return Response(_page(), media_type="text/html; charset=utf-8",
                    headers={**PAGE_HEADERS, "cache-control": "no-cache"})


@router.get("/dashboard/assets/{name}", include_in_schema=False)
@_public
async def asset(name: str, request: Request, v: str | None = None) -> Response:
    if name not in ASSETS:
        raise ApiError(404, f"no dashboard asset {name!r}", type="not_found", param="name", code="unknown_asset")
    body, digest = _asset(name)
    # The page asks for ?v=<digest>: that URL's bytes never change. Any other is revalidated.
    headers = {"cache-control": "public, max-age=31536000, immutable" if v == digest else "no-cache",
               "x-content-type-options": "nosniff", "etag": f'"{digest}"'}
    if request.headers.get("if-none-match") == headers["etag"]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=ASSETS[name], headers=headers)


# --- stream tokens --------------------------------------------------------------------------------

def _granted(resource: Callable[..., str], scope: Scope) -> Callable[..., Any]:
    """FastAPI dependency: the grant of the request's `?token=` for `resource`'s stream."""

    async def grant(request: Request, svc: Services = Depends(services),
                    name: str = Depends(resource)) -> stream_tokens.Grant:
        token = request.query_params.get("token")
        if token is None:
            raise ApiError(401, "this stream needs ?token=: ask POST …/stream-token for one (with your key)",
                           type="authentication_error", param="token", code="missing_stream_token")
        try:
            return stream_tokens.verify(svc.settings, token, name, time.time())
        except stream_tokens.TokenRefused as exc:
            raise ApiError(401, str(exc), type="authentication_error", param="token",
                           code="invalid_stream_token") from None

    grant.scope = scope  # type: ignore[attr-defined]  # the owner: whoever could get the token
    return grant


def _providers_resource() -> str:
    return "providers"


def _run_resource(run_id: RunId) -> str:
    return f"run:{run_id}"


def _token(svc: Services, caller: Principal, resource: str, stream_url: str) -> dict[str, Any]:
    token, expires = stream_tokens.issue(svc.settings, caller, resource, time.time())
    return {"token": token, "expires_at": expires, "stream_url": f"{stream_url}?token={token}",
            "note": "a read token for this stream only; it expires at expires_at (epoch seconds)"}


def _unavailable(exc: Exception) -> ServerSentEvent:
    """What a stream says when a dependency fails under it: the same words as the 503."""
    error = dependency_down(exc)
    if error is None:
        raise exc
    return ServerSentEvent(data={"code": error.code, "message": error.message}, event="unavailable")


# --- providers ------------------------------------------------------------------------------------

async def _providers(svc: Services) -> dict[str, Any]:
    orchestrator = svc.orchestrator
    now = time.time()
    stats = finite(await orchestrator.router.stats(orchestrator.registry.names, now))
    since = datetime.fromtimestamp(now - TRAFFIC_WINDOW_S, UTC)
    await catch_up(svc)  # count what is still queued in Redis too
    traffic = await requestlog.traffic(svc.db, since=since)
    total = sum(traffic[name]["attempts"] for name in orchestrator.registry.names if name in traffic)
    deployments = []
    for adapter in orchestrator.registry:
        spec, recent = adapter.spec, traffic.get(adapter.spec.name, {"attempts": 0, "cost": 0.0})
        deployments.append({"name": spec.name, "kind": spec.kind, "model": spec.model, **stats.get(spec.name, {}),
                            "attempts_last_minute": recent["attempts"], "cost_last_minute": recent["cost"],
                            "traffic_share": round(recent["attempts"] / total, 4) if total else 0.0})
    return {"strategy": orchestrator.router.strategy.value, "window_seconds": TRAFFIC_WINDOW_S,
            "timestamp": now, "providers": deployments}


@router.get("/api/dashboard/providers", dependencies=[LLM])
async def providers(svc: Services = Depends(services)) -> dict[str, Any]:
    return await _providers(svc)


@router.post("/api/dashboard/providers/stream-token")
async def providers_token(svc: Services = Depends(services), caller: Principal = LLM) -> dict[str, Any]:
    return _token(svc, caller, "providers", "/api/dashboard/providers/stream")


@router.get("/api/dashboard/providers/stream", response_class=EventSourceResponse)
async def providers_stream(grant: stream_tokens.Grant = Depends(_granted(_providers_resource, Scope.llm)),
                           svc: Services = Depends(services)) -> AsyncIterator[ServerSentEvent]:
    while time.time() < grant.expires_at:  # then the page asks for a new token, with its key
        try:
            yield ServerSentEvent(data=await _providers(svc), event="providers")
        except Exception as exc:  # noqa: BLE001 - a dependency down: say so and try again
            yield _unavailable(exc)
        await asyncio.sleep(min(PUSH_S, max(0.0, grant.expires_at - time.time())))


@router.get("/api/dashboard/weights", dependencies=[LLM])
async def weights(hours: Annotated[int, Query(ge=1, le=24 * 30)] = 24,
                  provider: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                  svc: Services = Depends(services)) -> dict[str, Any]:
    from core.dwa.recompute import history

    since = datetime.now(UTC) - timedelta(hours=hours)
    rows = await history(svc.db, provider, limit=5000, since=since)
    points = [{"provider": r["provider"], "window_end": r["window_end"].isoformat(), "weight": r["weight"],
               "samples": r["samples"], "error_rate": r["error_rate"], "p95_latency_ms": r["p95_latency_ms"]}
              for r in reversed(rows)]
    return {"since": since.isoformat(), "points": points, "count": len(points)}


# --- requests -------------------------------------------------------------------------------------

@router.get("/api/dashboard/requests", dependencies=[ADMIN])
async def requests(provider: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
                   status: Literal["ok", "error", "incomplete"] | None = None,
                   key: Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                                    description="the caller's key id")] = None,
                   cached: bool | None = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   svc: Services = Depends(services)) -> dict[str, Any]:
    note = None if await catch_up(svc) else "Redis is unavailable: records still queued there are not shown"
    rows = await requestlog.recent(svc.db, limit=limit, provider=provider, status=status, key=key, cached=cached)
    return {"requests": rows, "count": len(rows), **({"note": note} if note else {})}


@router.get("/api/dashboard/spend", dependencies=[ADMIN])
async def spend(days: Annotated[int, Query(ge=1, le=366)] = 7, svc: Services = Depends(services)) -> dict[str, Any]:
    from core.auth import list_keys

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=days - 1)
    names = {k["id"]: k["name"] for k in await list_keys(svc.db, include_revoked=True)}
    rows = await requestlog.spend_by_key_day(svc.db, since=since)
    for row in rows:
        row["key_name"] = names.get(row["key"]) if row["key"] else None
    return {"since": since.date().isoformat(), "days": days, "spend": rows,
            "total_cost": round(sum(r["cost"] for r in rows), 6)}


# --- runs -----------------------------------------------------------------------------------------

@router.get("/api/dashboard/pipelines", dependencies=[RUNS])
async def pipelines(svc: Services = Depends(services)) -> dict[str, Any]:
    from core.runs.pipelines_file import input_names

    named = [{"name": name, "version": p.version, "inputs": input_names(p),
              "steps": [{"id": s.id, "kind": s.kind} for s in p.steps]} for name, p in svc.pipelines.items()]
    return {"pipelines": named, "count": len(named)}


async def _readable_run(svc: Services, run_id: uuid.UUID, subject: str, admin: bool) -> Any:
    row = await views.run_row(svc, run_id)
    if row is None or not (admin or row.caller == subject):  # another's run is not shown to exist
        raise ApiError(404, f"there is no run {run_id}", type="not_found", param="id", code="unknown_run")
    return row


@router.post("/api/dashboard/runs/{run_id}/stream-token")
async def run_token(run_id: RunId, svc: Services = Depends(services), caller: Principal = RUNS) -> dict[str, Any]:
    await _readable_run(svc, run_id, caller.id, caller.allows(Scope.admin))
    return _token(svc, caller, f"run:{run_id}", f"/api/dashboard/runs/{run_id}/stream")


async def _run_view(svc: Services, run_id: uuid.UUID) -> dict[str, Any]:
    row = await views.run_row(svc, run_id)
    return {**await views.describe(svc, row), "outputs": await views.step_outputs(svc, run_id)}


async def _run_grant(run_id: RunId, grant: stream_tokens.Grant = Depends(_granted(_run_resource, Scope.runs)),
                     svc: Services = Depends(services)) -> stream_tokens.Grant:
    """The stream's grant, its run found readable: a dependency, so that a 404 goes out
    before the stream's 200."""
    await _readable_run(svc, run_id, grant.subject, grant.admin)
    return grant


@router.get("/api/dashboard/runs/{run_id}/stream", response_class=EventSourceResponse)
async def run_stream(run_id: RunId, after: Annotated[int, Query(ge=0)] = 0,
                     grant: stream_tokens.Grant = Depends(_run_grant),
                     svc: Services = Depends(services)) -> AsyncIterator[ServerSentEvent]:
    seq, view = after, None
    while view is None or time.time() < grant.expires_at:
        wait = 0.0 if view is None else min(WAIT_S, max(0.0, grant.expires_at - time.time()))
        try:
            found = await progress.wait_events(svc.db, svc.kv, svc.watcher, run_id, seq, wait)
            if found or view is None:
                view = await _run_view(svc, run_id)
                seq = found[-1].seq if found else seq
                yield ServerSentEvent(data={"run": view, "events": [e.to_json() for e in found]},
                                      event="run", id=str(seq))
        except Exception as exc:  # noqa: BLE001 - a dependency down: say so and try again
            yield _unavailable(exc)
            if time.time() >= grant.expires_at:
                return
            await asyncio.sleep(PUSH_S)
            continue
        if view["status"] in views.FINISHED and seq >= view["events"]:
            return  # everything is said: the page closes its EventSource on a finished run


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity dashboard", routes_llm=True))
