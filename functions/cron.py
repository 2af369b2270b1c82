"""The cron function: what scheduled invocations run.

POST /api/cron/recompute-weights  windowed provider figures -> DWA baseline weights
POST /api/cron/drain-logs         the request log queued in Redis -> Postgres
POST /api/cron/tick               both (one schedule is enough)

Each is idempotent and safe to overlap with itself. With CRON_SECRET set, a call must
carry `Authorization: Bearer <CRON_SECRET>`. With Redis down, drain-logs answers 503
(the records wait in Redis), recompute-weights still writes the weights to Postgres and
says the Redis baselines were not published, and tick answers both parts as they went.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Header, Query

from core import requestlog
from core.kv import KVUnavailable
from core.services import Services
from functions.http import ApiError, create_app, entry_points, services

router = APIRouter(prefix="/api/cron", tags=["cron"])


async def authorised(authorization: str | None = Header(default=None),
                     svc: Services = Depends(services)) -> Services:
    secret = svc.settings.CRON_SECRET
    if secret is not None:
        given = (authorization or "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, secret.get_secret_value().encode()):
            raise ApiError(401, "cron calls need Authorization: Bearer <CRON_SECRET>",
                           type="authentication_error", code="invalid_cron_secret")
    return svc


async def _recompute(svc: Services, window_seconds: int) -> dict[str, Any]:
    from core.dwa.recompute import publish, recompute

    weights = await recompute(svc.db, None, window_seconds=window_seconds)
    answer: dict[str, Any] = {"window_seconds": window_seconds, "providers": weights,
                              "baselines_published": False}
    if svc.kv is not None:
        try:
            await publish(svc.kv, weights, window_seconds)
            answer["baselines_published"] = True
        except KVUnavailable as exc:
            answer["note"] = f"Redis is unavailable ({exc}): weights kept in Postgres only"
    return answer


async def _drain(svc: Services) -> dict[str, Any]:
    if svc.kv is None:
        return {"moved": 0, "pending": 0, "note": "no Redis: requests are logged straight to Postgres"}
    moved = await requestlog.drain(svc.kv, svc.db)
    return {"moved": moved, "pending": await requestlog.pending(svc.kv)}


WINDOW = Query(default=3600, ge=60, le=7 * 24 * 3600, description="Aggregation window, seconds.")


@router.post("/recompute-weights")
async def recompute_weights(window_seconds: int = WINDOW, svc: Services = Depends(authorised)) -> dict[str, Any]:
    return await _recompute(svc, window_seconds)


@router.post("/drain-logs")
async def drain_logs(svc: Services = Depends(authorised)) -> dict[str, Any]:
    return await _drain(svc)


@router.post("/tick")
async def tick(window_seconds: int = WINDOW, svc: Services = Depends(authorised)) -> dict[str, Any]:
    # Drain first, so the recompute sees the requests that were still queued.
    try:
        drained = await _drain(svc)
    except KVUnavailable as exc:
        drained = {"moved": 0, "pending": None, "error": f"Redis is unavailable ({exc})"}
    return {"drain": drained, "recompute": await _recompute(svc, window_seconds)}


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity cron"))
