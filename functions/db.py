"""The db function: the request log, its statistics, and the response cache.

GET    /api/db/stats              totals, cache hit rate, response times, provider health
GET    /api/db/requests/recent    the latest request-log rows (?limit=&provider=)
GET    /api/db/cache/stats        hits, misses and entries of the response cache
DELETE /api/db/cache/clear        delete the cache's entries (?namespace=), nothing else

Every route is the admin's: the request log says who called what.

The two request-log reads first move what is still queued in Redis into Postgres, so
they include the calls made a moment ago; with Redis down they answer from Postgres
alone and say so. The cache lives in Redis: without it, its routes answer 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from core import cache, requestlog
from core.auth import Scope
from core.db import load_driver
from core.kv import KVError
from core.providers.config import NAME_PATTERN
from core.services import Services
from functions.http import create_app, entry_points, require, services

load_driver()  # every request here reaches Postgres: load its stack at import
router = APIRouter(tags=["db"], dependencies=[Depends(require(Scope.admin))])

CATCH_UP_BATCHES = 4  # at most this many drain batches before a read (2,000 records)


async def catch_up(svc: Services) -> bool:
    """Drain what is queued before reading; False when Redis could not be read."""
    if svc.kv is None:
        return True
    try:
        await requestlog.drain(svc.kv, svc.db, max_batches=CATCH_UP_BATCHES)
    except KVError:
        return False
    return True


@router.get("/api/db/stats")
async def db_stats(svc: Services = Depends(services)) -> dict[str, Any]:
    redis_up = await catch_up(svc)
    summary = await requestlog.summary(svc.db)
    summary["log_pending_in_redis"] = await requestlog.pending(svc.kv) if redis_up else None
    if not redis_up:
        summary["note"] = "Redis is unavailable: records still queued there are not counted"
    return summary


@router.get("/api/db/requests/recent")
async def recent_requests(
    limit: int = Query(default=50, ge=1, le=1000),
    provider: str | None = Query(default=None, pattern=NAME_PATTERN),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    await catch_up(svc)
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
