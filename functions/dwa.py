"""The DWA function: what the router knows about each provider, and a reset.

GET  /api/llm/dwa/stats          per provider: the seed's fields and ours       (llm)
POST /api/llm/dwa/reset          ?provider= one, or every provider: back to the priors (admin)
GET  /api/llm/dwa/best-provider  the provider the DWA would pick now, with its score (llm)
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Depends, Query

from core.auth import Scope
from core.providers.config import NAME_PATTERN
from core.services import Services
from functions.http import ApiError, create_app, entry_points, require, services

router = APIRouter(tags=["dwa"])


def finite(value: Any) -> Any:
    """JSON has no inf/NaN: a figure that is not a number yet is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value


def _names(svc: Services, provider: str | None) -> list[str]:
    names = svc.orchestrator.registry.names
    if provider is None:
        return names
    if provider not in names:
        raise ApiError(404, f"unknown provider {provider!r}; configured: {', '.join(names)}",
                       type="not_found", param="provider", code="unknown_provider")
    return [provider]


@router.get("/api/llm/dwa/stats", dependencies=[Depends(require(Scope.llm))])
async def dwa_stats(svc: Services = Depends(services)) -> dict[str, Any]:
    orchestrator = svc.orchestrator
    stats = await orchestrator.router.stats(orchestrator.registry.names, time.time())
    return {
        "strategy": orchestrator.router.strategy.value,
        "state_store": "redis" if svc.kv is not None else "postgres",
        "provider_stats": finite(stats),
        "timestamp": time.time(),
    }


@router.post("/api/llm/dwa/reset", dependencies=[Depends(require(Scope.admin))])
async def dwa_reset(provider: str | None = Query(default=None, pattern=NAME_PATTERN),
                    svc: Services = Depends(services)) -> dict[str, Any]:
    names = _names(svc, provider)
    await svc.orchestrator.router.reset(names)
    return {"reset": names}


@router.get("/api/llm/dwa/best-provider", dependencies=[Depends(require(Scope.llm))])
async def best_provider(svc: Services = Depends(services)) -> dict[str, Any]:
    orchestrator = svc.orchestrator
    decision = await orchestrator.router.best(orchestrator.registry.names, time.time())
    if decision is None:
        raise ApiError(503, "no provider is configured", type="provider_error", code="no_provider")
    return {"provider": decision.provider, "dwa_score": round(decision.score, 4),
            "dwa_selection_reason": decision.reason, "strategy": decision.strategy.value}


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity DWA", routes_llm=True))
