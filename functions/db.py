"""The db function: the request log, its statistics, and the response cache.

GET    /api/db/stats              totals, cache hit rate, response times, provider health
GET    /api/db/requests/recent    the latest request-log rows (?limit=&provider=)
GET    /api/db/cache/stats        hits, misses and entries of the response cache
DELETE /api/db/cache/clear        delete the cache's entries (?namespace=), nothing else
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from core import cache, requestlog
from core.services import Services
from functions.http import create_app, entry_points, services

router = APIRouter(tags=["db"])


@router.get("/api/db/stats")
async def db_stats(svc: Services = Depends(services)) -> dict[str, Any]:
    summary = await requestlog.summary(svc.db)
    summary["log_pending_in_redis"] = await requestlog.pending(svc.kv)
    return summary


@router.get("/api/db/requests/recent")
async def recent_requests(
    limit: int = Query(default=50, ge=1, le=1000),
    provider: str | None = Query(default=None, min_length=1, max_length=128),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    rows = await requestlog.recent(svc.db, limit=limit, provider=provider)
    return {"requests": rows, "count": len(rows)}


@router.get("/api/db/cache/stats")
async def cache_stats(svc: Services = Depends(services)) -> dict[str, Any]:
    return await cache.stats(svc.kv)


@router.delete("/api/db/cache/clear")
async def cache_clear(
    namespace: str | None = Query(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    deleted = await cache.clear(svc.kv, namespace)
    return {"cleared": deleted, "namespace": namespace}


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity db"))
