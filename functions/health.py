"""GET /api/health: is this instance able to serve, and what is degraded."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from core import __version__
from core.health import check_all
from core.services import Services
from functions.http import JSONResponse, create_app, entry_points, services

router = APIRouter(tags=["health"])


@router.get("/api/health")
async def health(svc: Services = Depends(services)) -> JSONResponse:
    report = await check_all(svc)
    body = {"status": report["status"], "version": __version__, "timestamp": time.time(),
            "services": report["services"]}
    # 503 only when the instance cannot serve at all, so a load balancer drops it;
    # a degraded cache still serves (from Postgres fallbacks).
    return JSONResponse(body, status_code=503 if report["status"] == "unhealthy" else 200)


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity health"))
