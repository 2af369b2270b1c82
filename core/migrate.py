"""Run the Alembic migrations from async code (the app lifespan, the CLI, tests).

Alembic itself is synchronous; each command here runs on an AsyncEngine connection
through `run_sync`, so it works inside a running event loop.

Several instances may start at once and all try to migrate. A Postgres advisory lock
held for the migration transaction makes them take turns. It is transaction-scoped
(`pg_advisory_xact_lock`) because a session lock would not survive PgBouncer's
transaction pooling. The lock is taken here, before Alembic starts, and not only in
`migrations/env.py`: Alembic's `context` and `op` are process-wide module proxies, so
two migrations in one process must not even overlap inside Alembic while one waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from core.db import Database, make_engine, unbounded

Target = Database | AsyncEngine | str

# Any fixed bigint will do, as long as every Orchesity instance uses the same one.
MIGRATION_LOCK_KEY = 0x6F72636865736974  # b"orchesit"


def lock_migrations(connection: Connection) -> None:
    """Wait for, then hold until commit, the lock that serialises migrations."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config for the packaged `migrations/`, with no alembic.ini.

    `url` is for commands that open their own connection (revision --autogenerate,
    check); without it env.py connects per the settings.
    """
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        config.attributes["url"] = url
    return config


async def upgrade(target: Target, revision: str = "head") -> None:
    """Migrate the database up to `revision`."""
    await _run_command(target, command.upgrade, revision)


async def downgrade(target: Target, revision: str) -> None:
    """Migrate the database down to `revision` ("base" removes every table)."""
    await _run_command(target, command.downgrade, revision)


async def current(target: Target) -> str | None:
    """The revision the database is at, or None before the first migration."""
    async with _engine(target) as engine, engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


@asynccontextmanager
async def _engine(target: Target) -> AsyncIterator[AsyncEngine]:
    if isinstance(target, Database):
        yield target.engine
    elif isinstance(target, AsyncEngine):
        yield target
    else:
        engine = make_engine(target)
        try:
            yield engine
        finally:
            await engine.dispose()


async def _run_command(
    target: Target, alembic_command: Callable[[Config, str], None], revision: str
) -> None:
    # A migration may rightly take minutes (an index build, another instance's migration
    # holding the lock): no statement deadline (core.db.unbounded).
    with unbounded():
        async with _engine(target) as engine, engine.connect() as conn:
            # Waiting here awaits the event loop, outside Alembic. The transaction this
            # begins is also the migration's: Alembic sees it and leaves the commit to us.
            await conn.run_sync(lock_migrations)
            await conn.run_sync(_invoke, alembic_command, revision)
            await conn.commit()


def _invoke(
    connection: Connection, alembic_command: Callable[[Config, str], None], revision: str
) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    alembic_command(config, revision)
