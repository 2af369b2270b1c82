"""Session fixtures: a real embedded PostgreSQL (pgvector) and a real Redis.

Both run from a temporary data directory of their own and are stopped at the end.
Nothing here mocks Postgres or Redis; pytest-httpx is only for third-party HTTP.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
from core.services import Services
from core.settings import Settings, load_settings

# Keep a developer's own .env and environment out of the test run.
for _name in list(os.environ):
    if _name in Settings.model_fields:
        del os.environ[_name]


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="orchesity-test-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def postgres(data_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = start_postgres(data_dir, cleanup_mode="delete")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(data_dir: Path) -> Iterator[EmbeddedRedis]:
    server = start_redis(data_dir)
    yield server
    server.kill()  # whatever client is still connected, the server goes with the session


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return f"unix://{redis_server.socket_path}"


@pytest.fixture(scope="session")
def settings(postgres: EmbeddedPostgres, redis_url: str, data_dir: Path) -> Settings:
    """Settings pointing at the session's real Postgres and Redis."""
    return load_settings(
        _env_file=None,
        DATABASE_URL=postgres.url,
        REDIS_URL=redis_url,
        ORCHESITY_DATA_DIR=data_dir,
        OPEN_ACCESS=True,  # as `orchesity serve` runs locally; tests of keys turn it off
    )


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> None:
    """The session database at the latest schema."""
    from core.db import Database
    from core.migrate import upgrade

    db = Database.from_settings(settings)
    try:
        await upgrade(db)
    finally:
        await db.close()


@pytest.fixture(scope="session")
async def db(settings: Settings, migrated: None) -> AsyncIterator[Any]:
    """The session database, migrated (a module may define its own `db`)."""
    from core.db import Database

    database = Database.from_settings(settings)
    yield database
    await database.close()


@pytest.fixture(scope="session")
async def kv(redis_url: str) -> AsyncIterator[Any]:
    """A KV on the session Redis (test_kv.py overrides it with every backend)."""
    from core.kv import RedisKV

    client = RedisKV.from_url(redis_url)
    yield client
    await client.close()


@dataclass
class Gateway:
    client: httpx.AsyncClient
    services: Services


@pytest.fixture
async def gateway_settings(settings: Settings, migrated: None) -> Settings:
    """Settings for a gateway under test: Redis database 1, emptied for each test, and
    a fast simulated provider when no providers file is given."""
    from core.kv import open_kv

    own = settings.model_copy(update={"REDIS_DB": 1, "SIMULATED_LATENCY_MS": 2.0,
                                      "SIMULATED_MS_PER_TOKEN": 0.0, "SIMULATED_SEED": 7})
    kv = open_kv(own)
    assert kv is not None
    await kv.execute("FLUSHDB")  # test Redis only; the product never flushes
    await kv.close()
    return own


@pytest.fixture
def open_gateway(gateway_settings: Settings,
                 request: pytest.FixtureRequest) -> Callable[..., AbstractAsyncContextManager[Gateway]]:
    """`async with open_gateway(**setting_overrides) as gw:` the gateway app on real
    Postgres and Redis, called in-process through its ASGI interface.

    In a test that uses pytest-httpx, provider calls go through httpx2's stock transport,
    the one pytest-httpx answers for; otherwise each deployment's own (real sockets).
    """
    from functions.gateway import build_app

    @asynccontextmanager
    async def _open(**overrides: Any) -> AsyncIterator[Gateway]:
        mocked = httpx.AsyncHTTPTransport() if "httpx_mock" in request.fixturenames else None
        services = await Services.open(gateway_settings.model_copy(update=overrides), provider_transport=mocked)
        try:
            app = build_app(services=services)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Gateway(client, services)
        finally:
            await services.close()
            if mocked is not None:
                await mocked.aclose()

    return _open


def providers_file(directory: Path, deployments: list[dict[str, Any]]) -> Path:
    """A providers file (JSON) with exactly these deployments."""
    path = directory / "providers.json"
    path.write_text(json.dumps({"include_defaults": False, "deployments": deployments}))
    return path
