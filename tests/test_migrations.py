"""Migrations on the session's real Postgres: schema, pgvector, round trips, races.

Other modules migrate this same database to head for their own tests, so every test
here that goes down puts it back, and the module ends at head.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import delete, text
from sqlmodel import select

from core.db import Database, make_engine
from core.embedded import EmbeddedPostgres
from core.migrate import alembic_config, current, downgrade, upgrade
from core.models import Run
from core.settings import Settings

TABLES = {"runs", "run_steps", "events", "request_log", "provider_weights", "dwa_provider_state",
          "dwa_counters", "api_keys", "tool_registrations", "tool_calls", "webhook_receipts",
          "stored_responses"}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_settings(settings)
    await upgrade(database)
    yield database
    await upgrade(database)  # whatever a failed test left, hand over at head
    await database.close()


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        )
        return set(rows.scalars()) & TABLES


async def test_upgrade_creates_the_schema(db: Database) -> None:
    assert await current(db) == HEAD
    assert await _tables(db) == TABLES
    async with db.engine.connect() as conn:
        column_type = await conn.scalar(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'runs'::regclass AND attname = 'embedding'"
            )
        )
    assert column_type == "vector"  # any dimension: each embedding model has its own index


def _run(**fields: object) -> Run:
    """A run row with the engine's required columns filled (its spec in `spec`)."""
    from datetime import UTC, datetime, timedelta

    defaults = {"pipeline": {"steps": []}, "pipeline_digest": "test", "inputs": {}, "read_token": "t",
                "deadline": datetime.now(UTC) + timedelta(hours=1)}
    return Run(**{**defaults, **fields})


def _unit(axis: int) -> list[float]:
    vector = [0.0] * 8  # any dimension: the column has none
    vector[axis] = 1.0
    return vector


async def test_runs_order_by_cosine_distance(db: Database) -> None:
    query = _unit(0)
    near = _unit(0)
    near[1] = 0.2
    runs = {
        "same": _run(spec={"q": "same"}, status="succeeded", embedding=_unit(0)),
        "near": _run(spec={"q": "near"}, status="succeeded", embedding=near),
        "orthogonal": _run(spec={"q": "orthogonal"}, status="succeeded", embedding=_unit(1)),
    }
    async with db.session() as session:
        session.add_all(runs.values())
        await session.commit()
    ids = [run.id for run in runs.values()]
    try:
        async with db.session() as session:
            distance = Run.embedding.cosine_distance(query)  # type: ignore[union-attr]
            rows = await session.exec(
                select(Run.spec["q"].astext, distance).where(Run.id.in_(ids)).order_by(distance)  # type: ignore[attr-defined]
            )
            ordered = rows.all()
        assert [name for name, _ in ordered] == ["same", "near", "orthogonal"]
        assert ordered[0][1] == pytest.approx(0.0, abs=1e-6)
        assert ordered[2][1] == pytest.approx(1.0)
        async with db.session() as session:
            stored = await session.get(Run, runs["near"].id)
            assert stored is not None and stored.embedding == pytest.approx(near)
    finally:
        async with db.session() as session:
            await session.exec(delete(Run).where(Run.id.in_(ids)))  # type: ignore[attr-defined]
            await session.commit()


def test_models_match_the_migrations(postgres: EmbeddedPostgres) -> None:
    # `alembic check` autogenerates against the migrated database and fails on any
    # difference. With no connection given, env.py opens its own (asyncio.run), which
    # is why this test is synchronous.
    command.check(alembic_config(postgres.url))


async def test_downgrade_to_base_and_up_again(db: Database) -> None:
    await downgrade(db, "base")
    assert await current(db) is None
    assert await _tables(db) == set()
    async with db.engine.connect() as conn:  # the extension outlives the tables
        assert await conn.scalar(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'"))

    await upgrade(db)
    await upgrade(db)  # already at head: nothing to do, no error
    assert await current(db) == HEAD
    assert await _tables(db) == TABLES


async def test_concurrent_upgrades_take_turns(db: Database, postgres: EmbeddedPostgres) -> None:
    await downgrade(db, "base")
    engines = [make_engine(postgres.url), make_engine(postgres.url)]
    try:
        # Without the advisory lock both would CREATE TABLE runs and one would fail.
        await asyncio.gather(*(upgrade(engine) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert await current(db) == HEAD
    assert await _tables(db) == TABLES


async def test_upgrade_from_a_url(db: Database, postgres: EmbeddedPostgres) -> None:
    await upgrade(postgres.url)
    assert await current(postgres.url) == HEAD
    run_id = uuid.uuid4()
    async with db.session() as session:  # the schema is usable, not merely present
        session.add(_run(id=run_id, spec={}, status="queued"))
        await session.commit()
        await session.exec(delete(Run).where(Run.id == run_id))  # type: ignore[arg-type]
        await session.commit()
