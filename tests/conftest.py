"""Session fixtures: a real embedded PostgreSQL (pgvector) and a real Redis.

Both run from a temporary data directory of their own and are stopped at the end.
Nothing here mocks Postgres or Redis; pytest-httpx is only for third-party HTTP.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
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
    )
