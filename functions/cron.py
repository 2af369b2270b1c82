"""The cron function: what scheduled invocations run.

POST /api/cron/recompute-weights  windowed provider figures -> DWA baseline weights
POST /api/cron/drain-logs         the request log queued in Redis -> Postgres
POST /api/cron/sweep-runs         runs nobody advances, advanced; due run callbacks sent
POST /api/cron/tick               all three (one schedule is enough)

The work is core/cron.py's (`orchesity cron tick` runs it from a shell). A call is
authorised by any of:
`Authorization: Bearer <CRON_SECRET>` (Fly scheduled machines, any cron), an
`Upstash-Signature` from QStash (checked with QSTASH_CURRENT_SIGNING_KEY and
QSTASH_NEXT_SIGNING_KEY, the body's hash included, by the `qstash` package's Receiver),
or an admin key. See core/cron.py for what each answers when Redis is down.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from core import cron
from core.auth import Scope
from core.db import load_driver
from core.services import Services
from functions.http import ApiError, authenticate, bearer, create_app, entry_points, services

load_driver()  # every request here reaches Postgres: load its stack at import
router = APIRouter(prefix="/api/cron", tags=["cron"])

_REFUSED = ("cron calls need Authorization: Bearer <CRON_SECRET>, an Upstash-Signature from QStash, "
            "or an admin key")


async def authorised(request: Request, svc: Services = Depends(services)) -> Services:
    settings = svc.settings
    if await svc.authenticator.open():
        return svc
    token = bearer(request)
    secret = settings.CRON_SECRET
    if token is not None and secret is not None and hmac.compare_digest(
            token.encode(), secret.get_secret_value().encode()):
        return svc
    signature = request.headers.get("upstash-signature")
    if signature is not None:
        await _verify_qstash(request, svc, signature)
        return svc
    if token is not None and token != (secret.get_secret_value() if secret else None):
        caller = await authenticate(request, svc)
        if caller.allows(Scope.admin):
            return svc
    raise ApiError(401, _REFUSED, type="authentication_error", code="invalid_cron_credentials",
                   headers={"www-authenticate": "Bearer"})


async def _verify_qstash(request: Request, svc: Services, signature: str) -> None:
    settings = svc.settings
    if settings.QSTASH_CURRENT_SIGNING_KEY is None:
        raise ApiError(401, "a QStash signature came, but QSTASH_CURRENT_SIGNING_KEY is not set",
                       type="authentication_error", code="invalid_cron_credentials")
    from qstash import Receiver
    from qstash.errors import SignatureError

    current = settings.QSTASH_CURRENT_SIGNING_KEY.get_secret_value()
    following = settings.QSTASH_NEXT_SIGNING_KEY.get_secret_value() if settings.QSTASH_NEXT_SIGNING_KEY else current
    # The URL QStash called: behind a proxy that is the public one, not the one we see.
    url = str(request.url)
    if settings.PUBLIC_URL:
        url = settings.PUBLIC_URL.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    body = (await request.body()).decode("utf-8", "replace")
    try:
        Receiver(current_signing_key=current, next_signing_key=following).verify(
            signature=signature, body=body, url=url)
    except SignatureError as exc:
        raise ApiError(401, f"the QStash signature does not match: {exc}", type="authentication_error",
                       code="invalid_qstash_signature") from None


WINDOW = Query(default=3600, ge=60, le=7 * 24 * 3600, description="Aggregation window, seconds.")


@router.post("/recompute-weights")
async def recompute_weights(window_seconds: int = WINDOW, svc: Services = Depends(authorised)) -> dict[str, Any]:
    return await cron.recompute_weights(svc, window_seconds)


@router.post("/drain-logs")
async def drain_logs(svc: Services = Depends(authorised)) -> dict[str, Any]:
    return await cron.drain(svc)


@router.post("/sweep-runs")
async def sweep_runs(budget_seconds: float | None = Query(default=None, gt=0, le=900, description="Seconds to advance "
                                                   "runs for (RUN_SWEEP_BUDGET_SECONDS)."),
                     svc: Services = Depends(authorised)) -> dict[str, Any]:
    return await cron.sweep_runs(svc, budget_seconds or svc.settings.RUN_SWEEP_BUDGET_SECONDS)


@router.post("/tick")
async def tick(window_seconds: int = WINDOW, svc: Services = Depends(authorised)) -> dict[str, Any]:
    return await cron.tick(svc, window_seconds)


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity cron"))
