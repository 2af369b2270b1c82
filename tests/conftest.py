"""Session fixtures: a real embedded PostgreSQL (pgvector) and a real Redis.

Both run from a temporary data directory of their own and are stopped at the end.
Nothing here mocks Postgres or Redis; pytest-httpx is only for third-party HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from core.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
from core.services import Services
from core.settings import Settings, load_settings
from tests.servers import serve

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


@pytest.fixture(scope="module")
def admin_key(settings: Settings, migrated: None) -> str:
    """An admin key in the session database, for a module's real servers (which open their
    own connections: it is issued from outside any running event loop)."""
    from core.auth import create_key
    from core.db import Database

    async def issue() -> str:
        db = Database.from_settings(settings)
        try:
            return (await create_key(db, name="test admin", scopes=["admin"], created_by="test"))[0]
        finally:
            await db.close()

    return asyncio.run(issue())


@dataclass
class Keyed:
    gw: Gateway
    keys: dict[str, str]   # name -> the key
    ids: dict[str, str]    # name -> its id

    def headers(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}


@pytest.fixture
def keyed(open_gateway: Callable[..., AbstractAsyncContextManager[Gateway]]) -> Callable[..., Any]:
    """`async with keyed(name=dict(scopes=..., ...), ...) as k:` a gateway that enforces keys."""

    @asynccontextmanager
    async def _open(settings: dict[str, Any] | None = None, **keys: dict[str, Any]) -> AsyncIterator[Keyed]:
        from core.auth import create_key

        async with open_gateway(OPEN_ACCESS=False, **(settings or {})) as gw:
            made, ids = {}, {}
            for name, options in keys.items():
                made[name], row = await create_key(gw.services.db, name=name, created_by="test", **options)
                ids[name] = row["id"]
            yield Keyed(gw, made, ids)

    return _open


@pytest.fixture(scope="session")
def schema_validator() -> Callable[[Any, str], None]:
    """validate(instance, name): `instance` against the schema `name` of the structural
    subset of OpenAI's spec committed beside the tests (scripts/openai_schemas.py)."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    document = json.loads((Path(__file__).with_name("openai_schemas.json")).read_text(encoding="utf-8"))
    registry = Registry().with_resource(
        "urn:openai", Resource.from_contents(document, default_specification=DRAFT202012))

    def validate(instance: Any, name: str) -> None:
        schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(instance)

    return validate


def providers_file(directory: Path, deployments: list[dict[str, Any]]) -> Path:
    """A providers file (JSON) with exactly these deployments."""
    path = directory / "providers.json"
    path.write_text(json.dumps({"include_defaults": False, "deployments": deployments}))
    return path


# --- runs (tests/test_runs.py, tests/test_runs_learn.py) ------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"orchesity-test-webhook-secret-32").decode()
TEST_MODULES = "core.tools.builtin,tests.tool_functions"
ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def runs_settings(gateway_settings: Settings) -> Settings:
    return gateway_settings.model_copy(update={
        "WEBHOOK_SECRETS": SecretStr(SECRET), "ORCHESITY_TOOL_MODULES": TEST_MODULES, "RUN_LEASE_SECONDS": 2.0,
        "WORKER_POLL_SECONDS": 0.1})


@pytest.fixture
def effects() -> Iterator[tuple[str, dict[str, Any]]]:
    """A local HTTP server standing for a payment API: POST /effect?delay= applies an effect
    once per Idempotency-Key (as such APIs do) and records every request with its timing."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen: dict[str, Any] = {"requests": [], "applied": {}}

    async def effect(request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key", "")
        record = {"key": key, "start": time.monotonic(), "end": None}
        seen["requests"].append(record)
        await asyncio.sleep(float(request.query_params.get("delay", "0")))
        seen["applied"][key] = seen["applied"].get(key, 0) or 1  # applied once, whoever repeats it
        record["end"] = time.monotonic()
        return JSONResponse({"applied": key})

    with serve(Starlette(routes=[Route("/effect", effect, methods=["POST"])])) as url:
        yield url.replace("127.0.0.1", "localhost"), seen


@pytest.fixture
def worker_env(runs_settings: Settings, effects: tuple[str, dict[str, Any]], tmp_path: Path) -> dict[str, str]:
    """Settings for `orchesity worker` and the test's own services: the session's Postgres,
    Redis db 1, and the sample tools with the `effect` http tool."""
    url, _ = effects
    tools = tmp_path / "tools.json"
    sample = json.loads((ROOT / "tools.json").read_text())["tools"]
    tools.write_text(json.dumps({"tools": sample + [{
        "name": "effect", "description": "applies an effect once per Idempotency-Key", "kind": "http",
        "http": {"method": "POST", "url": url + "/effect?delay={{ delay }}", "allow_hosts": ["localhost"]},
        "timeout": 30, "parameters": {"type": "object", "properties": {"delay": {"type": "number"}}}}]}))
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "DATABASE_URL": runs_settings.DATABASE_URL.get_secret_value(),
            "REDIS_URL": runs_settings.REDIS_URL.get_secret_value(), "REDIS_DB": "1",
            "ORCHESITY_TOOLS_FILE": str(tools), "ORCHESITY_TOOL_MODULES": TEST_MODULES,
            "RUN_LEASE_SECONDS": "2", "WORKER_POLL_SECONDS": "0.1", "LOG_LEVEL": "INFO"}
