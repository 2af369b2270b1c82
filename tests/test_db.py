"""core.db against the session's real Postgres: URLs, pooler mode, ping, embedded reuse."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import literal
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool
from sqlmodel import select

from core.db import Database, is_transaction_pooler, normalise_url
from core.embedded import EmbeddedPostgres
from core.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db.example.com:5432/app", "postgresql+psycopg://u:p@db.example.com:5432/app"),
        ("postgresql://u:p@db.example.com/app", "postgresql+psycopg://u:p@db.example.com/app"),
        ("POSTGRESQL://u:p@db.example.com/app", "postgresql+psycopg://u:p@db.example.com/app"),
        ("postgresql+psycopg://u:p@db.example.com/app", "postgresql+psycopg://u:p@db.example.com/app"),
        # The seed's asyncpg URL: same server, and asyncpg's `ssl=` becomes libpq's `sslmode=`.
        ("postgresql+asyncpg://u:p@db.example.com/app", "postgresql+psycopg://u:p@db.example.com/app"),
        ("postgresql+asyncpg://u:p@h/app?ssl=require", "postgresql+psycopg://u:p@h/app?sslmode=require"),
        ("postgresql+asyncpg://u:p@h/app?ssl=true", "postgresql+psycopg://u:p@h/app?sslmode=require"),
        # A password with reserved characters stays encoded.
        ("postgres://u:p%40ss%2Fw@h/app", "postgresql+psycopg://u:p%40ss%2Fw@h/app"),
        ("  postgres://u:p@h/app\n", "postgresql+psycopg://u:p@h/app"),
    ],
)
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mysql://admin:s3cret-pw@db.example.com/app",
        "postgresql+psycopg2://admin:s3cret-pw@db.example.com/app",
        "admin:s3cret-pw@db.example.com/app",
        "admin:s3cret-pw@postgres://db.example.com/app",
        "postgresql://admin:s3cret-pw@db.example.com:port/app",
    ],
)
def test_normalise_url_rejects_without_leaking_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL") as caught:
        normalise_url(url)
    assert "s3cret-pw" not in str(caught.value)


def test_bad_scheme_message_names_the_accepted_schemes() -> None:
    with pytest.raises(ValueError) as caught:
        normalise_url("mysql://u:p@h/app")
    message = str(caught.value)
    assert "mysql://" in message
    for scheme in ("postgres://", "postgresql://", "postgresql+asyncpg://", "postgresql+psycopg://"):
        assert scheme in message


@pytest.mark.parametrize(
    ("url", "pooler"),
    [
        ("postgresql+psycopg://u:p@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("postgresql+psycopg://u:p@aws-0-eu.pooler.supabase.com:5432/postgres", False),
        ("postgresql+psycopg://u:p@db.example.com/app?pgbouncer=true", True),
        ("postgresql+psycopg://u:p@db.example.com/app?pgbouncer=false", False),
        ("postgresql+psycopg://postgres@/postgres?host=/tmp/pg", False),
    ],
)
def test_is_transaction_pooler(url: str, pooler: bool) -> None:
    assert is_transaction_pooler(url) is pooler


async def test_pooled_engine_follows_the_settings(settings: Settings) -> None:
    db = Database.from_settings(settings.model_copy(update={"DB_POOL_SIZE": 3}))
    try:
        assert isinstance(db.engine.pool, AsyncAdaptedQueuePool)
        assert db.engine.pool.size() == 3
        async with db.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None and driver.prepare_threshold == 5  # psycopg's default
    finally:
        await db.close()


async def test_transaction_pooler_gets_nullpool_and_no_prepared_statements(
    postgres: EmbeddedPostgres, data_dir: Path
) -> None:
    # The real server stands in for PgBouncer: what matters is our side of the wire.
    pooler = load_settings(
        _env_file=None, DATABASE_URL=f"{postgres.url}&pgbouncer=true", ORCHESITY_DATA_DIR=data_dir
    )
    db = Database.from_settings(pooler)
    try:
        assert isinstance(db.engine.pool, NullPool)
        assert "pgbouncer" not in db.url  # psycopg would reject it
        async with db.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None and driver.prepare_threshold is None
        assert await db.ping() > 0
    finally:
        await db.close()


async def test_ping_and_session(settings: Settings) -> None:
    db = Database.from_settings(settings)
    try:
        assert 0 < await db.ping() < 5
        async with db.session() as session:
            assert (await session.exec(select(literal(1)))).one() == 1
    finally:
        await db.close()


async def test_ping_raises_when_the_server_is_unreachable() -> None:
    db = Database("postgresql://postgres@/postgres?host=/nonexistent-orchesity")
    try:
        with pytest.raises(OperationalError):
            await db.ping()
    finally:
        await db.close()


def test_repr_masks_the_password() -> None:
    db = Database("postgres://app:s3cret-pw@db.example.com:5432/app")
    assert "s3cret-pw" not in repr(db)
    assert "s3cret-pw" in db.url  # the property is for connecting, not for logs


def test_a_second_process_attaches_to_the_embedded_server(
    postgres: EmbeddedPostgres, data_dir: Path
) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sqlalchemy import create_engine, text\n"
        "from core.embedded import start_postgres\n"
        "pg = start_postgres(Path(sys.argv[1]))\n"
        "engine = create_engine(pg.url)\n"
        "with engine.connect() as conn:\n"
        "    print(pg.url)\n"
        "    print(conn.execute(text('SELECT 1')).scalar())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    url, one = done.stdout.split()
    assert url == postgres.url
    assert one == "1"


@pytest.fixture
def own_data_dir() -> Iterator[Path]:
    # Not tmp_path. As root, pgserver runs postgres as an unprivileged user and opens
    # up the parent directories for it, but every pytest start resets
    # /tmp/pytest-of-root to 0700, locking out a server another run is starting.
    with tempfile.TemporaryDirectory(prefix="orchesity-test-") as tmp:
        yield Path(tmp)


async def test_embedded_database_when_no_url_is_set(own_data_dir: Path) -> None:
    settings = load_settings(_env_file=None, ORCHESITY_DATA_DIR=own_data_dir)
    db = Database.from_settings(settings)
    assert db.embedded is not None
    try:
        assert await db.ping() > 0
        assert db.url == normalise_url(db.embedded.url)
    finally:
        await db.close()
    # Closing a Database leaves the server up for the next one in this process (the
    # migration step of `serve`, then its app): same server, no restart.
    again = Database.from_settings(settings)
    try:
        assert again.embedded.server is db.embedded.server
        assert await again.ping() > 0
    finally:
        await again.close()
        again.embedded.stop()
