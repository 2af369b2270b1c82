"""Health of what one instance depends on: the database, the cache, the router and the machine.

Each check reports `healthy`, `degraded` or `down` with its latency. The overall status
is `unhealthy` when the database (required) is down, `degraded` when anything else is
not healthy, else `healthy`. A check never raises: a failing dependency is a result.

The router (`dwa`, the seed's field) counts the providers that can take a request now
(closed circuit, not rate limited): all of them is healthy, some degraded, none down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from core.services import Services

CHECK_TIMEOUT_SECONDS = 2.0
SLOW_SECONDS = 0.5  # a dependency answering slower than this is degraded


def _status_for(latency: float) -> str:
    return "healthy" if latency < SLOW_SECONDS else "degraded"


async def _timed(check: Any) -> tuple[float, Any]:
    """(seconds, result) of `check`; TimeoutError after CHECK_TIMEOUT_SECONDS. A check
    that overruns is cancelled but not waited for: cancelling a statement on a frozen
    database takes psycopg up to 10 s more, and a health check answers in its own time."""
    start = time.perf_counter()
    task = asyncio.ensure_future(check)
    await asyncio.wait([task], timeout=CHECK_TIMEOUT_SECONDS)
    if not task.done():
        task.cancel()
        task.add_done_callback(_retrieved)
        raise TimeoutError(f"no answer within {CHECK_TIMEOUT_SECONDS:g} s")
    return time.perf_counter() - start, task.result()


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Take the outcome of a check left to end on its own, so none is reported unretrieved."""
    if not task.cancelled():
        task.exception()


async def check_database(services: Services) -> dict[str, Any]:
    try:
        latency, _ = await _timed(services.db.ping())
    except Exception as exc:  # noqa: BLE001 - any failure is "down", named by class only
        return {"status": "down", "error": type(exc).__name__}
    return {"status": _status_for(latency), "latency_ms": round(latency * 1000, 2),
            "embedded": services.db.embedded is not None}


async def check_cache(services: Services) -> dict[str, Any]:
    if services.kv is None:
        return {"status": "disabled", "backend": None,
                "note": "REDIS_ENABLED=false; Postgres fallbacks in use"}
    backend = services.kv.backend
    try:
        latency, ok = await _timed(services.kv.ping())
    except Exception as exc:  # noqa: BLE001
        return {"status": "down", "backend": backend, "error": type(exc).__name__}
    if not ok:
        return {"status": "down", "backend": backend, "error": "unexpected PING reply"}
    return {"status": _status_for(latency), "backend": backend, "latency_ms": round(latency * 1000, 2)}


async def check_dwa(services: Services) -> dict[str, Any]:
    try:
        orchestrator = services.orchestrator
    except Exception as exc:  # noqa: BLE001 - a providers file it cannot use
        return {"status": "down", "active_providers": 0, "error": str(exc)}
    names = orchestrator.registry.names
    try:
        _, stats = await _timed(orchestrator.router.stats(names, time.time()))
    except Exception as exc:  # noqa: BLE001 - state unreadable: requests route on priors
        return {"status": "degraded", "active_providers": len(names), "providers": len(names),
                "strategy": orchestrator.router.strategy.value,
                "error": f"routing state unreadable ({type(exc).__name__}); routing on priors"}
    active = sum(1 for row in stats.values()
                 if row["circuit_state"] == "closed" and row["rate_limited_until"] is None)
    status = "healthy" if active == len(names) else ("degraded" if active else "down")
    return {"status": status, "active_providers": active, "providers": len(names),
            "strategy": orchestrator.router.strategy.value}


def check_system() -> dict[str, Any]:
    import psutil

    start = time.perf_counter()
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    process = psutil.Process()
    figures = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "memory_percent": memory.percent,
        "memory_available_mb": round(memory.available / 2**20, 1),
        "disk_percent": disk.percent,
        "process_rss_mb": round(process.memory_info().rss / 2**20, 1),
    }
    pressed = memory.percent > 90 or disk.percent > 95
    return {"status": "degraded" if pressed else "healthy",
            "latency_ms": round((time.perf_counter() - start) * 1000, 2), **figures}


async def check_all(services: Services) -> dict[str, Any]:
    database, cache, dwa = await asyncio.gather(check_database(services), check_cache(services),
                                                check_dwa(services))
    checks = {"database": database, "cache": cache, "dwa": dwa, "system": check_system()}
    if database["status"] == "down":
        overall = "unhealthy"
    elif all(c["status"] in ("healthy", "disabled") for c in checks.values()):
        overall = "healthy"
    else:
        overall = "degraded"
    return {"status": overall, "services": checks}
