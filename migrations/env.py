"""Alembic environment: async engine on psycopg 3, one advisory-locked transaction.

`core.migrate` passes an open connection in `config.attributes["connection"]` (the
Alembic cookbook's "programmatic API use with asyncio" pattern). Commands run without
one (revision --autogenerate, check) connect to `config.attributes["url"]`, or to what
the settings name, embedded Postgres included.
"""

from __future__ import annotations

import asyncio

from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from core.db import Database
from core.migrate import lock_migrations
from core.settings import load_settings

config = context.config


def _modelled(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Whether autogenerate compares `obj`: not the per-embedding-model HNSW indexes,
    which core/runs/knowledge.py makes at run time, one per model in use."""
    return not (type_ == "index" and reflected and (name or "").startswith("ix_runs_embedding_"))


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=SQLModel.metadata, compare_type=True, include_object=_modelled
    )
    with context.begin_transaction():
        lock_migrations(connection)  # returns at once if core.migrate already holds it
        context.run_migrations()


async def run_standalone() -> None:
    url = config.attributes.get("url")
    db = Database(url) if url else Database.from_settings(load_settings())
    try:
        async with db.engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await db.close()


if context.is_offline_mode():
    raise CommandError("offline (--sql) migrations are not supported; run them online")

connection = config.attributes.get("connection")
if connection is None:
    asyncio.run(run_standalone())
else:
    run_migrations(connection)
