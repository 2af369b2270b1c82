"""GET /api/health: is this instance able to serve, and what is degraded.

The one route that needs no key (load balancers and uptime checks call it). The
machine's own figures (memory, disk, the process) are shown to admins only; everyone
sees each dependency's status and whether keys are enforced.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from core import __version__
from core.auth import Scope
from core.db import load_driver
from core.health import check_all
from core.services import Services
from functions.http import ApiError, JSONResponse, authenticate, bearer, create_app, entry_points, services

load_driver()  # every request here reaches Postgres: load its stack at import
router = APIRouter(tags=["health"])


async def _is_admin(request: Request, svc: Services, open_access: bool) -> bool:
    if open_access:
        return True  # every caller is (authenticate's OPEN)
    if bearer(request) is None:
        return False
    try:
        return (await authenticate(request, svc)).allows(Scope.admin)
    except ApiError:  # a bad key on the open route: just no admin figures
        return False


@router.get("/api/health")
async def health(request: Request, svc: Services = Depends(services)) -> JSONResponse:
    report = await check_all(svc)
    services_report = report["services"]
    open_access = await svc.authenticator.open()
    if not await _is_admin(request, svc, open_access):
        system = services_report["system"]
        services_report["system"] = {"status": system["status"]}
    auth: dict[str, str] = {"mode": "keys"}
    if open_access:
        until = " until one is created" if not svc.settings.OPEN_ACCESS else ""
        auth = {"mode": "open", "note": f"no API key is needed{until}: local use only (orchesity serve on loopback)"}
    # Rate limits and budgets live in Redis; without it they fail open.
    auth["limits"] = "enforced" if services_report["cache"]["status"] in ("healthy", "degraded") else \
        "not enforced: Redis is unavailable (requests are let through)"
    body = {"status": report["status"], "version": __version__, "timestamp": time.time(),
            "auth": auth, "services": services_report}
    # 503 only when the instance cannot serve at all, so a load balancer drops it;
    # a degraded cache still serves (from Postgres fallbacks).
    return JSONResponse(body, status_code=503 if report["status"] == "unhealthy" else 200)


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity health"))
