"""The `orchesity` command: serve the gateway, migrate the database, inspect routing.

Settings come from the environment and `.env` (see `.env.example`); with none set,
Orchesity runs on an embedded PostgreSQL and Redis under `.orchesity/`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from core.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help=(
        "Orchesity: a multi-LLM orchestration service. It routes each LLM call to the "
        "provider serving best right now (the Dynamic Weight Algorithm), caches what "
        "can be cached and logs every request to Postgres.\n\n"
        "Configuration is read from the environment and .env (see .env.example). "
        "With nothing configured it runs on an embedded PostgreSQL + pgvector and an "
        "embedded Redis under .orchesity/."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"orchesity: {exc}", err=True)
        raise typer.Exit(2) from None


async def _migrate(settings: Settings, revision: str, down: bool) -> str | None:
    from core.db import Database
    from core.migrate import current, downgrade, upgrade

    db = Database.from_settings(settings)
    try:
        await (downgrade(db, revision) if down else upgrade(db, revision))
        return await current(db)
    finally:
        await db.close()


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to REVISION instead.")] = False,
) -> None:
    """Bring the database schema to REVISION (default: the latest)."""
    settings = _settings()
    now = asyncio.run(_migrate(settings, revision, down))
    typer.echo(f"database at revision {now or 'base'}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate",
                                                help="Upgrade the schema before serving.")] = True,
) -> None:
    """Serve every function (the gateway) with uvicorn; migrates the database first."""
    import uvicorn

    settings = _settings()
    if migrate_first:
        # With no DATABASE_URL this starts the embedded Postgres; it keeps running
        # for the workers, which attach to it, and stops when the last one exits.
        asyncio.run(_migrate(settings, "head", down=False))
    uvicorn.run("functions.gateway:app", host=host, port=port, workers=workers,
                log_level=settings.LOG_LEVEL.value.lower())


async def _drain(settings: Settings, batch: int) -> tuple[int, int]:
    from core import requestlog
    from core.services import Services

    services = await Services.open(settings)
    try:
        if services.kv is None:
            return 0, 0
        moved = await requestlog.drain(services.kv, services.db, batch=batch)
        return moved, await requestlog.pending(services.kv)
    finally:
        await services.close()


@app.command()
def drain(batch: Annotated[int, typer.Option(min=1, max=10_000, help="Records per insert.")] = 500) -> None:
    """Move the request log queued in Redis into Postgres (what the cron function does)."""
    settings = _settings()
    moved, left = asyncio.run(_drain(settings, batch))
    typer.echo(f"moved {moved} request-log records to Postgres; {left} still queued")


def main() -> None:  # pragma: no cover - the console script
    sys.exit(app())
