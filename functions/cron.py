"""The cron function: what scheduled invocations run.

POST /api/cron/recompute-weights  windowed provider figures -> DWA baseline weights
POST /api/cron/drain-logs         the request log queued in Redis -> Postgres
POST /api/cron/tick               both (one schedule is enough)

Each is idempotent and safe to overlap with itself. With CRON_SECRET set, a call must
carry `Authorization: Bearer <CRON_SECRET>`.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Header, Query

from core import requestlog
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
    from core.dwa.recompute import recompute

    weights = await recompute(svc.db, svc.kv, window_seconds=window_seconds)
    return {"window_seconds": window_seconds, "providers": weights}


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
    drained = await _drain(svc)
    return {"drain": drained, "recompute": await _recompute(svc, window_seconds)}


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity cron"))
