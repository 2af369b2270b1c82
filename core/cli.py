"""The `orchesity` command: serve the gateway, migrate the database, inspect routing.

The runs commands (`run`, `runs`, `worker`) are core/cli_runs.py's.

Settings come from the environment and `.env` (see `.env.example`); with none set,
Orchesity runs on an embedded PostgreSQL and Redis under `.orchesity/`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from core.limits import MAX_PER_MINUTE
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


T = TypeVar("T")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"orchesity: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise _fail(str(exc)) from None


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; a database or Redis it cannot reach ends the command with one clear
    line (naming the setting), not a traceback."""
    from core.kv import KVUnavailable

    try:
        return asyncio.run(work)
    except KVUnavailable as exc:
        raise _fail(f"Redis is unavailable ({exc}); check UPSTASH_REDIS_REST_URL or REDIS_URL", 1) from None
    except (OSError, ValueError) as exc:
        raise _fail(str(exc), 1) from None
    except Exception as exc:
        from core.db import unusable

        reason = unusable(exc)
        if reason is None:
            raise
        raise _fail(reason, 1) from None


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
    now = _run(_migrate(settings, revision, down))
    typer.echo(f"database at revision {now or 'base'}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate",
                                                help="Upgrade the schema before serving.")] = True,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log",
                                             help="uvicorn's line per request (the request log "
                                                  "in Postgres has every LLM call anyway).")] = False,
) -> None:
    """Serve every function (the gateway) with uvicorn; migrates the database first."""
    import uvicorn

    from core.providers.config import load_deployments
    from core.runs.pipelines_file import named_pipelines
    from functions.serving import log_config

    settings = _settings()
    try:  # a providers, tools or pipelines file it cannot use stops it here, naming the file, entry, field
        load_deployments(settings)
        _check_tools_file(settings)
        named_pipelines(settings)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    if migrate_first:
        # With no DATABASE_URL this starts the embedded Postgres; it keeps running
        # for the workers, which attach to it, and stops when the last one exits.
        _run(_migrate(settings, "head", down=False))
    _decide_access(settings, host, port)
    # uvicorn shuts down gracefully on SIGTERM (what Fly, systemd and Docker send), then
    # re-raises it; with the default handler that ends the process before its exit
    # hooks run. As an exit instead, they run: the embedded servers are let go of.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run("functions.gateway:app", host=host, port=port, workers=workers,
                http="functions.serving:HeadDeadlineProtocol",
                log_level=settings.LOG_LEVEL.value.lower(), access_log=access_log,
                log_config=log_config(settings.LOG_LEVEL.value))


def _check_tools_file(settings: Settings) -> None:
    from core.tools.registry import ToolRegistry

    ToolRegistry.from_settings(settings, None)  # type: ignore[arg-type]  # reads the file; no database yet


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _decide_access(settings: Settings, host: str, port: int) -> None:
    """Open on loopback while no key exists (the two-command quick start), keys otherwise:
    the first key created while it serves closes it (core/auth.py, `Authenticator.open`).
    OPEN_ACCESS=true keeps it open whatever keys exist.

    The choice reaches the workers through the environment (OPEN_ACCESS_UNTIL_KEY).
    """
    from core.auth import any_active_key

    keys_exist = _run(_with_database(settings, any_active_key))
    how = "create one with `orchesity keys create NAME --scopes admin` (it prints the key)"
    if settings.OPEN_ACCESS or (not keys_exist and not settings.SUPABASE_URL):
        if not _loopback(host):
            reason = "OPEN_ACCESS=true" if settings.OPEN_ACCESS else "no API key exists"
            raise _fail(f"{reason}, so anyone who can reach --host {host} could spend the provider keys: "
                        f"{how}, or serve on 127.0.0.1")
        os.environ["OPEN_ACCESS" if settings.OPEN_ACCESS else "OPEN_ACCESS_UNTIL_KEY"] = "true"
        until = "" if settings.OPEN_ACCESS else " until one exists"
        typer.echo(f"orchesity: OPEN ACCESS on http://{host}:{port}: no key is needed{until} (local use only); "
                   f"to require keys, {how}", err=True)
        return
    if not _loopback(host) and settings.CRON_SECRET is None and settings.QSTASH_CURRENT_SIGNING_KEY is None:
        # (on loopback an admin key will do for the odd manual tick)
        raise _fail(f"serving --host {host} with keys enforced, the scheduler needs a credential of its own: "
                    "set CRON_SECRET (a long random value, e.g. `openssl rand -hex 32`) or "
                    "QSTASH_CURRENT_SIGNING_KEY")


async def _with_database(settings: Settings, work: Any) -> Any:
    from core.db import Database

    db = Database.from_settings(settings)
    try:
        return await work(db)
    finally:
        await db.close()


@app.command()
def drain() -> None:
    """Move the logs queued in Redis (requests, tool calls) into Postgres, as the cron work does."""
    from core import cron

    result = _run(_with_services(_settings(), cron.drain))
    parts = ", ".join(f"{name}: {moved}" for name, moved in result.get("journals", {}).items()) or "no Redis"
    typer.echo(f"moved {result['moved']} records to Postgres ({parts}); {result['pending']} still queued")


dwa = typer.Typer(help="Inspect and steer the Dynamic Weight Algorithm (provider routing).",
                  no_args_is_help=True)
app.add_typer(dwa, name="dwa")


async def _with_services(settings: Settings, work: Any) -> Any:
    from core.services import Services

    services = await Services.open(settings)
    try:
        return await work(services)
    finally:
        await services.close()


def _figure(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}"
    return str(value)


@dwa.command("stats")
def dwa_stats() -> None:
    """Each provider's live routing figures, as GET /api/llm/dwa/stats returns them."""
    import time

    from rich.console import Console
    from rich.table import Table

    async def work(services: Any) -> dict[str, Any]:
        orchestrator = services.orchestrator
        return await orchestrator.router.stats(orchestrator.registry.names, time.time())

    stats = asyncio.run(_with_services(_settings(), work))
    table = Table(title="DWA provider stats")
    columns = [("provider", None), ("weight", "weight"), ("availability", "availability"),
               ("accuracy", "accuracy"), ("speed", "speed"), ("cost", "cost"),
               ("p95 ms", "p95_latency_ms"), ("samples", "samples"), ("in flight", "in_flight"),
               ("circuit", "circuit_state"), ("fails", "consecutive_failures"), ("last error", "last_error")]
    for title, _ in columns:
        table.add_column(title, justify="left" if title in ("provider", "circuit", "last error") else "right")
    for name, row in stats.items():
        table.add_row(name, *[_figure(row.get(key), digits=1 if key == "p95_latency_ms" else 3)
                              for _, key in columns[1:]])
    Console().print(table)


@dwa.command("reset")
def dwa_reset(provider: Annotated[str | None, typer.Argument(help="One provider; all when omitted.")] = None) -> None:
    """Forget what the DWA learned: the provider(s) start again from the priors."""

    async def work(services: Any) -> list[str]:
        names = services.orchestrator.registry.names
        if provider is not None and provider not in names:
            typer.echo(f"orchesity: unknown provider {provider!r}; configured: {', '.join(names)}", err=True)
            raise typer.Exit(2)
        chosen = [provider] if provider else names
        await services.orchestrator.router.reset(chosen)
        return chosen

    typer.echo("reset: " + ", ".join(asyncio.run(_with_services(_settings(), work))))


@dwa.command("recompute")
def dwa_recompute(
    window: Annotated[int, typer.Option(min=60, help="Aggregation window in seconds.")] = 3600,
) -> None:
    """Recompute baseline weights from the request log (what the cron function runs)."""
    from core.dwa.recompute import recompute

    async def work(services: Any) -> list[dict[str, Any]]:
        return await recompute(services.db, services.kv, window_seconds=window)

    for row in asyncio.run(_with_services(_settings(), work)):
        typer.echo(", ".join(f"{k}={_figure(v)}" for k, v in row.items()))


cron_app = typer.Typer(help="What a scheduler runs (the cron function's work, from a shell).", no_args_is_help=True)
app.add_typer(cron_app, name="cron")


@cron_app.command("tick")
def cron_tick(
    window: Annotated[int, typer.Option(min=60, help="Weights' aggregation window in seconds.")] = 3600,
    every: Annotated[float | None, typer.Option(min=1, help="Tick again every this many seconds, "
                                                            "until stopped (a scheduler process).")] = None,
) -> None:
    """Drain the request log, recompute routing weights, reconcile budgets, delete expired
    stored responses: one JSON line a tick."""
    import json

    from core import cron

    async def loop(services: Any) -> None:
        while True:
            typer.echo(json.dumps(await cron.tick(services, window), default=str))
            if every is None:
                return
            await asyncio.sleep(every)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stopped scheduler exits cleanly
    _run(_with_services(_settings(), loop))


tools_app = typer.Typer(help="The tool registry: list, validate a tools file, invoke a tool.", no_args_is_help=True)
app.add_typer(tools_app, name="tools")


@tools_app.command("validate")
def tools_validate(path: Annotated[Path, typer.Argument(help="A tools file (JSON).")]) -> None:
    """Check a tools file: every problem, each naming the tool and the field; exit 1 if any."""
    from core.tools.loader import ToolsFileError, read_tools_file

    try:
        loaded = read_tools_file(path, _settings())
    except ToolsFileError as exc:
        raise _fail(str(exc), 1) from None
    for item in loaded:
        state = "ok" if item.unavailable is None else f"unavailable: {item.unavailable}"
        typer.echo(f"{item.tool.ref:32} {item.tool.kind:7} {state}")
    typer.echo(f"{len(loaded)} tools, no problems")


@tools_app.command("list")
def tools_list() -> None:
    """The effective registry: the tools file's tools and those registered through the API."""
    from rich.console import Console
    from rich.table import Table

    async def work(services: Any) -> list[Any]:
        return await services.tools.entries()

    table = Table(title="tools")
    for column in ("ref", "kind", "source", "available", "description"):
        table.add_column(column)
    for entry in _run(_with_services(_settings(), work)):
        table.add_row(entry.tool.ref, entry.tool.kind, entry.source,
                      "yes" if entry.unavailable is None else entry.unavailable, entry.tool.description[:60])
    Console().print(table)


@tools_app.command("invoke")
def tools_invoke(
    ref: Annotated[str, typer.Argument(help="name or name@version")],
    arguments: Annotated[str, typer.Argument(help="The arguments, a JSON object.")] = "{}",
) -> None:
    """Call a tool and print its outcome as JSON (exit 1 unless it succeeded)."""
    import json
    import os

    from core.tools.invoke import ArgumentsInvalid, ToolUnavailable, invoke
    from core.tools.kinds import CallContext
    from core.tools.registry import ToolNotFound

    try:
        parsed = json.loads(arguments)
    except ValueError as exc:
        raise _fail(f"ARGUMENTS is not JSON: {exc}") from None

    async def work(services: Any) -> dict[str, Any]:
        entry = await services.tools.get(ref)
        ctx = CallContext(settings=services.settings, environ=os.environ, orchestrator=services.orchestrator,
                          caller="cli")
        outcome = await invoke(entry, parsed, ctx, kv=services.kv, db=services.db)
        return {"tool": entry.tool.ref, **outcome.to_json()}

    try:
        answer = _run(_with_services(_settings(), work))
    except (ToolNotFound, ArgumentsInvalid, ToolUnavailable) as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(json.dumps(answer, indent=2, default=str))
    if answer["status"] != "ok":
        raise typer.Exit(1)


keys = typer.Typer(help="API keys: create (the key is shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for (shown in lists and logs).")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: llm, runs, tools, admin.")],
    expires_in_days: Annotated[float | None, typer.Option(min=0.001, help="Expire after this many days.")] = None,
    shared_cache: Annotated[bool, typer.Option(help="Share cached answers with other shared keys.")] = False,
    rpm: Annotated[int | None, typer.Option(min=1, max=MAX_PER_MINUTE, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, max=MAX_PER_MINUTE, help="LLM tokens per minute.")] = None,
    budget_day: Annotated[float | None, typer.Option(min=0.0001, help="USD per UTC day.")] = None,
    budget_month: Annotated[float | None, typer.Option(min=0.0001, help="USD per UTC month.")] = None,
) -> None:
    """Issue a key. Its details first; the key itself alone on the last line (shown once)."""
    import getpass
    import socket
    from datetime import UTC, datetime, timedelta

    from core.auth import create_key, parse_scopes
    from core.limits import Limits

    try:
        chosen = parse_scopes(scopes)
    except ValueError as exc:
        raise _fail(f"--scopes: {exc}") from None
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None

    async def work(db: Any) -> tuple[str, dict[str, Any]]:
        return await create_key(db, name=name, scopes=chosen, created_by=f"cli:{getpass.getuser()}@{socket.gethostname()}",
                                expires_at=expires, shared_cache=shared_cache,
                                limits=Limits(rpm, tpm, budget_day, budget_month))

    key, row = _run(_with_database(_settings(), work))
    typer.echo(f"created key {row['prefix']} ({row['id']}) named {name!r}, scopes {', '.join(row['scopes'])}"
               + (f", expires {row['expires_at']}" if row["expires_at"] else ""))
    typer.echo("the key is shown this once; keep it now:")
    typer.echo(key)


@keys.command("list")
def keys_list(include_revoked: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False) -> None:
    """The keys (never a key itself)."""
    from rich.console import Console
    from rich.table import Table

    from core.auth import list_keys

    rows = _run(_with_database(_settings(), lambda db: list_keys(db, include_revoked=include_revoked)))
    table = Table(title="API keys")
    for column in ("prefix", "name", "scopes", "created", "expires", "revoked", "limits"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["prefix"], row["name"], ",".join(row["scopes"]), row["created_at"] or "-",
                      row["expires_at"] or "-", row["revoked_at"] or "-",
                      ", ".join(f"{k}={v}" for k, v in row["limits"].items()) or "-")
    Console().print(table)


@keys.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or prefix.")]) -> None:
    """Revoke a key: refused everywhere within AUTH_CACHE_SECONDS."""
    from core.auth import revoke_key

    row = _run(_with_services(_settings(), lambda svc: revoke_key(svc.db, svc.kv, key)))
    if row is None:
        raise _fail(f"no key has the id or prefix {key!r}", 1)
    typer.echo(f"revoked key {row['prefix']} ({row['name']})")


from core import cli_runs  # noqa: E402,F401 - registers `run`, `runs` and `worker` on `app`


def main() -> None:  # pragma: no cover - the console script
    sys.exit(app())
