"""The async database: one SQLAlchemy engine on psycopg 3, sessions, and health.

`Database.from_settings` connects to DATABASE_URL, or starts (or attaches to) the
embedded PostgreSQL when none is set. Supabase's transaction pooler (port 6543,
PgBouncer in transaction mode) hands each transaction a different server connection,
so pooling on our side and server-side prepared statements both break there: such
URLs get NullPool and psycopg's `prepare_threshold=None`.

SQLAlchemy and the driver (about 0.2 s to import) are loaded when the engine is first
used, not when this module is: the gateway's hot path needs only Redis, and a function
whose requests never reach Postgres should not pay for it in its cold start.

A server that accepts a statement and never answers (frozen, a pooler stalled on a full
pool, a network that drops packets while the kernel on our side still waits) would hold
its caller forever: psycopg has no client-side statement timeout, and a server-side
`statement_timeout` needs the server to run. So an engine made with settings connects
with libpq's `connect_timeout` (DB_CONNECT_TIMEOUT_SECONDS) on a psycopg AsyncConnection
whose `wait`, through which every statement's round trip goes, gets a deadline
(DB_STATEMENT_TIMEOUT_SECONDS): past it the connection is closed and the statement fails
with an OperationalError, which callers already take for a database they cannot reach
(503 naming it; the pool drops the closed connection). psycopg `wait(…, timeout)` and its
`_WaitTimeout` are what psycopg's own cancellation uses; psycopg is pinned in uv.lock.
`unbounded()` lifts the deadline for work that may rightly take long (migrations, an
index build).

Postgres text and jsonb cannot hold NUL, which text from outside may (a caller's input,
a provider's reply, a tool's result); the engine removes it from what it sends, so such
a value is stored without it rather than failing the write: from JSON it serialises
(`json_text`, which raw SQL uses too) and from string parameters.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.embedded import EmbeddedPostgres, start_postgres
from core.settings import Settings, database_scheme

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession

DRIVER = "postgresql+psycopg"
POOLER_PORT = 6543  # Supabase's transaction pooler; the session pooler is on 5432

# asyncpg spells the TLS option `ssl=`; libpq (psycopg) rejects that and wants `sslmode=`.
_ASYNCPG_SSL = {"true": "require", "false": "disable"}


def unusable(exc: BaseException) -> str | None:
    """When `exc` means the database cannot be used now, why, in one line: it cannot be
    reached ("cannot reach the database …"), or its schema is behind ("… run `orchesity
    migrate`"). None for any other error. psycopg's messages name the host and port,
    never the password."""
    sa_exc = sys.modules.get("sqlalchemy.exc")  # loaded by whoever touched the database
    if sa_exc is None or not isinstance(exc, sa_exc.DBAPIError):
        return None
    reason = str(exc.orig or type(exc).__name__).strip().splitlines()[0][:300]
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return f"cannot reach the database (DATABASE_URL): {reason}"
    if isinstance(exc, sa_exc.ProgrammingError) and "does not exist" in reason:
        return f"the database schema is behind ({reason}): run `orchesity migrate`"
    return None


def load_driver() -> None:
    """Load SQLAlchemy's asyncio engine and psycopg now.

    For a function whose every request reaches Postgres (health, the request log, keys,
    cron), at import: a new container's init phase, rather than inside its first request.
    """
    import psycopg  # noqa: F401
    import sqlalchemy.ext.asyncio  # noqa: F401
    import sqlmodel.ext.asyncio.session  # noqa: F401


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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    flag = parsed.query.get("pgbouncer")
    return parsed.port == POOLER_PORT or (isinstance(flag, str) and flag.lower() == "true")


def make_engine(url: str, settings: Settings | None = None) -> AsyncEngine:
    """An async engine for `url` (any accepted scheme).

    Pooling follows the DB_POOL_* settings; with no settings (one-shot use such as a
    migration) or behind a transaction pooler there is no pool of our own.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    parsed = make_url(normalise_url(url))
    pooler = is_transaction_pooler(parsed)
    # psycopg passes unknown query parameters to libpq, which rejects `pgbouncer`.
    parsed = parsed.difference_update_query(["pgbouncer"])
    options: dict[str, Any] = {"echo": settings.DATABASE_ECHO if settings else False}
    connect_args: dict[str, Any] = {"prepare_threshold": None} if pooler else {}
    if settings is not None:
        connect_args.update(connect_timeout=settings.DB_CONNECT_TIMEOUT_SECONDS,
                            async_creator_fn=_deadline_connection(settings.DB_STATEMENT_TIMEOUT_SECONDS))
    if pooler or settings is None:
        options.update(poolclass=NullPool)
    else:
        options.update(
            pool_size=settings.DB_POOL_SIZE,
            max_overflow=settings.DB_MAX_OVERFLOW,
            pool_timeout=settings.DB_POOL_TIMEOUT,
            pool_recycle=settings.DB_POOL_RECYCLE,
            pool_pre_ping=True,
        )
    engine = create_async_engine(parsed, json_serializer=json_text, connect_args=connect_args, **options)
    event.listen(engine.sync_engine, "before_cursor_execute", _without_nul, retval=True)
    return engine


_unbounded: contextvars.ContextVar[bool] = contextvars.ContextVar("orchesity_db_unbounded", default=False)


@contextlib.contextmanager
def unbounded() -> Iterator[None]:
    """Statements run in this context have no client-side deadline (a migration, an
    index build: work that may rightly take minutes)."""
    token = _unbounded.set(True)
    try:
        yield
    finally:
        _unbounded.reset(token)


def _deadline_connection(deadline: float) -> Any:
    """psycopg's AsyncConnection.connect for a connection whose statements fail after
    `deadline` seconds without an answer (the module docstring)."""
    import psycopg
    from psycopg import errors

    class DeadlineConnection(psycopg.AsyncConnection):  # type: ignore[type-arg]
        async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if timeout is not None or _unbounded.get():
                return await super().wait(gen, interval, timeout)
            try:
                return await super().wait(gen, interval, deadline)
            except errors._WaitTimeout:
                self.pgconn.finish()  # mid-statement: its state is unknown, so it goes
                raise psycopg.OperationalError(f"the database did not answer within {deadline:g} s") from None

    return DeadlineConnection.connect


def json_text(value: Any) -> str | None:
    """`value` as JSON text Postgres can store (None stays None, SQL NULL)."""
    return None if value is None else fastjson.without_nul(fastjson.dumps(value).decode())


def _without_nul(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> tuple[str, Any]:
    """A statement's parameters with NUL removed from their strings."""
    if executemany and isinstance(parameters, list):
        return statement, [_params_without_nul(p) for p in parameters]
    return statement, _params_without_nul(parameters)


def _params_without_nul(parameters: Any) -> Any:
    if isinstance(parameters, dict):
        if any(type(v) is str and "\x00" in v for v in parameters.values()):
            return {k: v.replace("\x00", "") if type(v) is str else v for k, v in parameters.items()}
    elif isinstance(parameters, tuple | list) and any(type(v) is str and "\x00" in v for v in parameters):
        return type(parameters)(v.replace("\x00", "") if type(v) is str else v for v in parameters)
    return parameters


class Database:
    """A database URL and, built on first use, its engine and session factory; when
    embedded, the server it started."""

    def __init__(self, url: str, settings: Settings | None = None,
                 embedded: EmbeddedPostgres | None = None) -> None:
        self._url = url
        self._settings = settings
        self.embedded = embedded
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = make_engine(self._url, self._settings)
            if self.embedded is not None:
                from sqlalchemy import event

                event.listen(self._engine.sync_engine, "handle_error", self._on_error)
        return self._engine

    def _on_error(self, context: Any) -> None:
        """A connection to the embedded server that failed or broke: it may have died;
        start it again (in the background, `Reviver`), so the next request finds it."""
        import psycopg

        if isinstance(context.original_exception, psycopg.OperationalError) and (
                context.is_disconnect or context.connection is None):
            try:
                self.embedded.reviver.soon()  # type: ignore[union-attr]
            except RuntimeError:  # no event loop running (a one-shot CLI command)
                pass

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self._sessionmaker is None:
            from sqlalchemy.ext.asyncio import async_sessionmaker
            from sqlmodel.ext.asyncio.session import AsyncSession

            self._sessionmaker = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        return self._sessionmaker

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Connect to DATABASE_URL, or to the embedded server under ORCHESITY_DATA_DIR.

        Starting the embedded server blocks for a few seconds the first time (initdb);
        call this from a thread if an event loop must stay responsive meanwhile.
        """
        if settings.DATABASE_URL is not None:
            return cls(settings.DATABASE_URL.get_secret_value(), settings)
        embedded = start_postgres(settings.ORCHESITY_DATA_DIR)
        return cls(embedded.url, settings, embedded)

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
        from sqlalchemy import text

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
        if self._engine is not None:
            await self._engine.dispose()
