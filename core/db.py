"""The async database: one SQLAlchemy engine on psycopg 3, sessions, and health.

`Database.from_settings` connects to DATABASE_URL, or starts (or attaches to) the
embedded PostgreSQL when none is set. Supabase's transaction pooler (port 6543,
PgBouncer in transaction mode) hands each transaction a different server connection,
so pooling on our side and server-side prepared statements both break there: such
URLs get NullPool and psycopg's `prepare_threshold=None`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from core.embedded import EmbeddedPostgres, start_postgres
from core.settings import Settings, database_scheme

DRIVER = "postgresql+psycopg"
POOLER_PORT = 6543  # Supabase's transaction pooler; the session pooler is on 5432

# asyncpg spells the TLS option `ssl=`; libpq (psycopg) rejects that and wants `sslmode=`.
_ASYNCPG_SSL = {"true": "require", "false": "disable"}


def normalise_url(url: str) -> str:
    """Return `url` as a `postgresql+psycopg://` URL.

    Accepts postgres://, postgresql://, postgresql+asyncpg:// (the seed's driver) and
    postgresql+psycopg://. Errors name DATABASE_URL but never repeat the URL itself,
    which usually carries the password.
    """
    try:
        scheme = database_scheme(url)
    except ValueError as exc:
        raise ValueError(f"DATABASE_URL {exc}") from None
    rest = url.strip().partition("://")[2]
    try:
        parsed = make_url(f"{DRIVER}://{rest}")
    except (ArgumentError, ValueError):  # ArgumentError's message repeats the URL
        raise ValueError("DATABASE_URL is not a valid database URL") from None
    ssl = parsed.query.get("ssl")
    if scheme == "postgresql+asyncpg" and isinstance(ssl, str):
        parsed = parsed.difference_update_query(["ssl"]).update_query_dict(
            {"sslmode": _ASYNCPG_SSL.get(ssl.lower(), ssl)}
        )
    return parsed.render_as_string(hide_password=False)


def is_transaction_pooler(url: str | URL) -> bool:
    """True for a PgBouncer-style transaction pooler: port 6543 or `pgbouncer=true`."""
    parsed = make_url(url)
    flag = parsed.query.get("pgbouncer")
    return parsed.port == POOLER_PORT or (isinstance(flag, str) and flag.lower() == "true")


def make_engine(url: str, settings: Settings | None = None) -> AsyncEngine:
    """An async engine for `url` (any accepted scheme).

    Pooling follows the DB_POOL_* settings; with no settings (one-shot use such as a
    migration) or behind a transaction pooler there is no pool of our own.
    """
    parsed = make_url(normalise_url(url))
    pooler = is_transaction_pooler(parsed)
    # psycopg passes unknown query parameters to libpq, which rejects `pgbouncer`.
    parsed = parsed.difference_update_query(["pgbouncer"])
    options: dict[str, Any] = {"echo": settings.DATABASE_ECHO if settings else False}
    if pooler:
        options.update(poolclass=NullPool, connect_args={"prepare_threshold": None})
    elif settings is None:
        options.update(poolclass=NullPool)
    else:
        options.update(
            pool_size=settings.DB_POOL_SIZE,
            max_overflow=settings.DB_MAX_OVERFLOW,
            pool_timeout=settings.DB_POOL_TIMEOUT,
            pool_recycle=settings.DB_POOL_RECYCLE,
            pool_pre_ping=True,
        )
    return create_async_engine(parsed, **options)


class Database:
    """An engine, its session factory and, when embedded, the server it started."""

    def __init__(self, engine: AsyncEngine, embedded: EmbeddedPostgres | None = None) -> None:
        self.engine = engine
        self.embedded = embedded
        self.sessionmaker = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Connect to DATABASE_URL, or to the embedded server under ORCHESITY_DATA_DIR.

        Starting the embedded server blocks for a few seconds the first time (initdb);
        call this from a thread if an event loop must stay responsive meanwhile.
        """
        if settings.DATABASE_URL is not None:
            return cls(make_engine(settings.DATABASE_URL.get_secret_value(), settings))
        embedded = start_postgres(settings.ORCHESITY_DATA_DIR)
        return cls(make_engine(embedded.url, settings), embedded)

    @property
    def url(self) -> str:
        """The connection URL, password included (use repr(db) to show it)."""
        return self.engine.url.render_as_string(hide_password=False)

    def __repr__(self) -> str:
        where = "embedded" if self.embedded else "external"
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r}, {where})"

    def session(self) -> AsyncSession:
        """A new session; use as `async with db.session() as session:` and commit yourself."""
        return self.sessionmaker()

    async def ping(self) -> float:
        """Seconds to get a connection and run SELECT 1; raises if the database is down."""
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return time.perf_counter() - started

    async def close(self) -> None:
        """Dispose of the engine. An embedded server keeps running for this process.

        pgserver keeps one handle per data directory per process and stops the server
        when the last process attached to it exits, so `orchesity serve`'s migration
        step and the app that follows share one running server instead of restarting it.
        """
        await self.engine.dispose()
