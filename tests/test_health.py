"""GET /api/health end to end, on the real Postgres and Redis, and when they fail."""

from __future__ import annotations


from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from core.embedded import start_redis
from core.services import Services
from core.settings import Settings
from functions.gateway import build_app


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    services = await Services.open(settings)
    app = build_app(services=services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client
    finally:
        await services.close()


async def test_healthy_on_real_postgres_and_redis(settings: Settings) -> None:
    async with client_for(settings) as client:
        response = await client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["version"]
    database, cache, system = (body["services"][name] for name in ("database", "cache", "system"))
    assert database["status"] == "healthy" and database["latency_ms"] >= 0
    assert cache["status"] == "healthy" and cache["backend"] == "redis"
    assert 0 <= system["memory_percent"] <= 100 and system["process_rss_mb"] > 0
    dwa = body["services"]["dwa"]  # the seed's field
    assert dwa["status"] == "healthy" and dwa["active_providers"] == dwa["providers"] == 1


async def test_redis_stopped_mid_test_reports_degraded_not_500(settings: Settings, tmp_path: Path) -> None:
    own_redis = start_redis(tmp_path)  # not the session's server: this one gets killed
    own = settings.model_copy(update={"REDIS_URL": settings.REDIS_URL.__class__(f"unix://{own_redis.socket_path}")})
    async with client_for(own) as client:
        assert (await client.get("/api/health")).json()["status"] == "healthy"
        own_redis.kill()  # Redis dies under the instance
        response = await client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["services"]["cache"]["status"] == "down"
    assert body["services"]["database"]["status"] == "healthy"


async def test_redis_turned_off_is_healthy_with_cache_disabled(settings: Settings, migrated: None) -> None:
    # (routing state then lives in Postgres: its tables must exist, whichever test ran first)
    async with client_for(settings.model_copy(update={"REDIS_ENABLED": False})) as client:
        body = (await client.get("/api/health")).json()
    assert body["status"] == "healthy"
    assert body["services"]["cache"]["status"] == "disabled"


async def test_database_down_is_503_unhealthy(settings: Settings) -> None:
    from pydantic import SecretStr

    dead = settings.model_copy(update={"DATABASE_URL": SecretStr("postgresql://nobody:pw@127.0.0.1:9/none")})
    async with client_for(dead) as client:
        response = await client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["database"]["status"] == "down"
    assert "pw" not in response.text


async def test_unknown_path_and_oversized_body_get_json_errors(settings: Settings) -> None:
    async with client_for(settings) as client:
        missing = await client.get("/api/nope")
        huge = await client.post("/api/health", content=b"x" * (settings.MAX_REQUEST_BYTES + 1))
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
