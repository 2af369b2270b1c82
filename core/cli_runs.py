"""The `orchesity` commands for runs: `run`, `runs list|show|cancel`, `worker`.

They work on the database and Redis directly (like `orchesity keys`), so they need no
server: `orchesity run` advances the run it starts itself, and leaves it to whoever
holds it when a server's worker got there first.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from core.cli import _fail, _run, _settings, _with_services, app

runs_app = typer.Typer(help="Runs: list them, show one, cancel one.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def _inputs(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; a value that is JSON (a number, true, an object) is taken as such."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--input {pair!r}: expected key=value")
        try:
            inputs[key] = json.loads(value)
        except ValueError:
            inputs[key] = value
    return inputs


def _pipeline(given: str) -> dict[str, Any] | str:
    """A pipeline file's content, or (when no such file exists) a named pipeline's name."""
    path = Path(given)
    if not path.exists():
        return given
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise _fail(f"--pipeline {given}: not valid JSON: {exc}") from None


@app.command("run")
def run(
    goal: Annotated[str | None, typer.Argument(help="What the run is for, in words: planned into a pipeline "
                                                     "when no --pipeline is given.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="A pipeline file (JSON), or a named pipeline's name.")] = None,
    inputs: Annotated[list[str] | None, typer.Option("--input", help="key=value (repeat it); JSON values allowed.")] = None,
    detach: Annotated[bool, typer.Option(help="Print the run's id and leave it to a worker.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show the (planned) pipeline; start nothing.")] = False,
) -> None:
    """Start a run (planning GOAL into a pipeline when no --pipeline is given), show its
    plan, and follow it live (a progress bar and the step list) until it ends."""
    from pydantic import ValidationError

    from core.runs.pipeline import PlanUnavailable, RunInvalid
    from core.runs.submit import Caller, RunRequest, prepare, submit

    try:
        request = RunRequest(pipeline=_pipeline(pipeline) if pipeline else None, goal=goal,
                             inputs=_inputs(inputs or []), dry_run=dry_run)
    except ValidationError as exc:
        raise _fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None

    async def work(services: Any) -> str:
        if dry_run:
            prepared = await prepare(services, request, caller=Caller("cli"))
            return json.dumps(prepared.pipeline.model_dump(mode="json", exclude_none=True), indent=2)
        submitted = await submit(services, request, caller=Caller("cli"))
        if submitted.planned is not None:
            _show_plan(submitted.planned)
        if detach:
            return str(submitted.id)
        return await _follow(services, submitted.id)

    try:
        outcome = _run(_with_services(_settings(), work))
    except RunInvalid as exc:
        raise _fail("the run cannot start:\n  " + "\n  ".join(exc.problems)) from None
    except PlanUnavailable as exc:
        raise _fail(f"the goal could not be planned: {exc}") from None
    typer.echo(outcome)
    if not detach and not dry_run and not outcome.startswith("succeeded"):
        raise typer.Exit(1)


def _show_plan(planned: Any) -> None:
    """The planned steps, on stderr (stdout keeps the outcome)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plan" + (" (repaired once)" if planned.repaired else ""), title_justify="left")
    for column in ("step", "kind", "needs", "does"):
        table.add_column(column)
    for step in planned.pipeline.steps:
        does = step.tool or ", ".join(step.tools or []) or step.instructions or \
            " ".join(m.get("content", "") for m in step.messages or [])
        table.add_row(step.id, step.kind, ", ".join(sorted(step.dependencies())), does[:80])
    console = Console(stderr=True)
    console.print(table)
    if planned.examples:
        console.print(f"examples: {len(planned.examples)} similar past runs")


async def _follow(services: Any, run_id: uuid.UUID) -> str:
    """Advance the run here (unless another owner holds it) and show its events; its end."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn
    from rich.table import Table

    from core import progress
    from core.runs import views
    from core.runs.executor import Executor

    row = await views.run_row(services, run_id)
    steps = {step["id"]: "pending" for step in row.pipeline["steps"]}
    bar = Progress(TextColumn("run " + str(run_id)[:8]), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    task = bar.add_task("run", total=100)
    console = Console(stderr=True)

    def view() -> Group:
        table = Table(show_header=False, box=None)
        for name, status in steps.items():
            table.add_row(name, status)
        return Group(bar, table)

    stop = asyncio.Event()

    async def advance() -> None:
        executor = Executor(services, owner=f"cli:{uuid.uuid4().hex[:12]}")
        while not stop.is_set():
            status = await executor.advance(run_id, 30.0, stop=stop)
            if status in views.FINISHED:
                return
            await asyncio.sleep(0.5)  # held elsewhere, or waiting for a retry

    advancing = asyncio.create_task(advance())
    seq, final = 0, "running"
    try:
        with Live(view(), console=console, refresh_per_second=8) as live:
            while True:
                for event in await progress.wait_events(services.db, services.kv, services.watcher, run_id, seq, 5.0):
                    seq = event.seq
                    step = event.data.get("step")
                    if step in steps:
                        steps[step] = event.type.removeprefix("step.")
                    if event.type == "log" or event.type.endswith(("failed", "retrying")):
                        console.print(event.message)
                    bar.update(task, completed=event.progress or 0)
                    if event.final:
                        final = event.type.removeprefix("run.") + (f": {event.message}" if event.type != "run.succeeded"
                                                                    else "")
                    live.update(view())
                if final != "running":
                    break
    finally:
        stop.set()
        await asyncio.gather(advancing, return_exceptions=True)
    row = await views.run_row(services, run_id)
    if row.status == "succeeded":
        output = (row.result or {}).get("output")
        return f"succeeded {run_id}\n" + (output if isinstance(output, str) else json.dumps(output, indent=2))
    return f"{final} ({run_id})"


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled, timed_out")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
) -> None:
    """The newest runs, whoever started them."""
    from rich.console import Console
    from rich.table import Table

    from core.runs import views

    async def work(services: Any) -> list[dict[str, Any]]:
        return await views.list_runs(services, owned_by=None, status=status, limit=limit)

    table = Table(title="runs")
    for column in ("id", "status", "pipeline", "caller", "created"):
        table.add_column(column)
    for item in _run(_with_services(_settings(), work)):
        table.add_row(item["id"], item["status"], item["pipeline"] or "-", item["caller"] or "-", item["created_at"])
    Console().print(table)


def _run_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _fail(f"{value!r} is not a run id (a UUID)") from None


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """A run as GET /api/runs/{id} shows it, as JSON."""
    from core.runs import views

    ident = _run_id(run_id)

    async def work(services: Any) -> dict[str, Any] | None:
        row = await views.run_row(services, ident)
        return None if row is None else await views.describe(services, row)

    shown = _run(_with_services(_settings(), work))
    if shown is None:
        raise _fail(f"there is no run {run_id}", 1)
    typer.echo(json.dumps(shown, indent=2, default=str))


@runs_app.command("cancel")
def runs_cancel(run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Stop a run at its next step boundary."""
    from core.runs import views

    ident = _run_id(run_id)
    status = _run(_with_services(_settings(), lambda services: views.request_cancel(services, ident)))
    if status is None:
        raise _fail(f"there is no run {run_id}", 1)
    typer.echo(f"{run_id}: {status}" + ("" if status in views.FINISHED else " (cancel requested)"))


@app.command("worker")
def worker(
    concurrency: Annotated[int | None, typer.Option(min=1, help="Runs advanced at once (WORKER_CONCURRENCY).")] = None,
) -> None:
    """Advance runs until stopped (SIGTERM or Ctrl-C: the running steps end, the runs are released)."""
    import logging

    from core.runs.worker import work

    settings = _settings()
    # a worker's only output is its log: Orchesity's records, at LOG_LEVEL, on stderr
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("orchesity").setLevel(settings.LOG_LEVEL.value)

    async def loop(services: Any) -> int:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        return await work(services, stop, concurrency=concurrency or services.settings.WORKER_CONCURRENCY)

    advances = _run(_with_services(settings, loop))
    typer.echo(f"worker stopped after {advances} advances", err=True)
