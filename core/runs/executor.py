"""The durable executor: a run advanced by whoever holds its lease, checkpoint by checkpoint.

Postgres is the coordination engine (DBOS Transact's model, on plain SQL; DESIGN.md says
why not DBOS itself):
- the run id is the idempotency key, the pipeline is pinned on the run row, and each
  step's output is stored under (run, step) once it has one;
- `advance(run_id, budget)` claims the run's lease (only if nobody holds it, or it
  expired), runs the steps that are ready, concurrently, and ends at its budget;
- every checkpoint (steps started, a step's output or error, the run's end) is one
  statement, fenced on the lease: it moves the lease on, and only if this owner still
  holds it writes the step rows and their events. An owner that lost its lease writes
  nothing, ever. What happens at once goes in one checkpoint (a step's end and the start
  of the steps it unblocks), so a chain of steps costs one round trip per step;
- while a step runs, a renewer keeps the lease; if it cannot (the run was taken over),
  or the run was asked to cancel, it cancels the running steps. It renews every third of
  the lease, and at once when this process is asked to cancel a run it advances (`nudge`),
  so a cancel that lands where its run runs stops it in one round trip;
- cancellation and the deadline are checked at every step boundary.

A crash (of a worker, of the function that advanced a run inline) leaves the run
leased to nobody once its lease expires; the next `advance` (a worker, the cron sweep)
re-runs only the step that was interrupted. Each step carries the idempotency key
`run_id:step` (http tools send it as Idempotency-Key), so a side effect the interrupted
attempt already caused lands once. Events go to Redis after each commit (core/progress.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core import progress, templates
from core.db import json_text
from core.limits import Limits
from core.runs.pipeline import Pipeline, Step

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from core.services import Services

    # How a running step checkpoints its progress: save(partial output, message, event data).
    Save = Callable[[Any, str, dict[str, Any]], Awaitable[None]]

log = logging.getLogger("orchesity.runs")

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled", "timed_out")
DONE_STEPS = ("succeeded", "failed", "cancelled")
HOLD_SECONDS = 0.05  # an advance keeps its connection while its steps end within this


class LeaseLost(RuntimeError):
    """This owner no longer holds the run's lease: it must write nothing more."""


class StepFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message

    def to_json(self) -> dict[str, str]:
        return {"type": self.kind, "message": self.message[:2000]}


@dataclass
class StepState:
    status: str = "pending"
    output: Any = None
    attempts: int = 0
    failures: int = 0
    next_attempt_at: float | None = None  # epoch seconds
    error: dict[str, Any] | None = None


@dataclass
class RunState:
    id: uuid.UUID
    pipeline: Pipeline
    inputs: dict[str, Any]
    status: str
    caller: str | None
    tenant: str | None
    limits: Limits | None  # the starting key's: its LLM calls count against them
    deadline: float
    cancel_requested: bool
    calls_back: bool  # it has a callback_url, called once it ends
    steps: dict[str, StepState] = field(default_factory=dict)

    def progress(self) -> float:
        done = sum(1 for s in self.steps.values() if s.status in DONE_STEPS)
        return round(100.0 * done / len(self.pipeline.steps), 1)

    def context(self) -> dict[str, Any]:
        """What templates read: the inputs and each finished step's output."""
        return {"inputs": self.inputs,
                "steps": {name: {"output": s.output, "status": s.status} for name, s in self.steps.items()}}


# --- SQL ----------------------------------------------------------------------------------

# A claim takes the lease and answers with what the executor needs of the run: its row
# and its steps' rows, in the same round trip (on psycopg's connection, in autocommit).
_LOADED = """
RETURNING id, pipeline, inputs, status, caller, tenant, caller_limits, deadline, cancel_requested,
  callback_url IS NOT NULL,
  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', s.name, 'status', s.status, 'output', s.output,
                                                'attempts', s.attempts, 'failures', s.failures, 'error', s.error,
                                                'next_at', extract(epoch FROM s.next_attempt_at))), '[]'::jsonb)
   FROM run_steps s WHERE s.run_id = runs.id)"""

_CLAIM = """
UPDATE runs SET lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(ttl)s),
  attempt = attempt + CASE WHEN lease_owner IS DISTINCT FROM %(owner)s THEN 1 ELSE 0 END
WHERE id = %(run)s AND status IN ('queued', 'running')
  AND (lease_until IS NULL OR lease_until < now() OR lease_owner = %(owner)s)""" + _LOADED

_CLAIM_NEXT = """
UPDATE runs SET lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(ttl)s), attempt = attempt + 1
WHERE id = (SELECT id FROM runs WHERE status IN ('queued', 'running')
              AND (lease_until IS NULL OR lease_until < now())
            AND (wake_at IS NULL OR wake_at <= now() OR deadline <= now())
            ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)""" + _LOADED

_RELEASE = """
UPDATE runs SET lease_owner = NULL, lease_until = NULL, wake_at = :wake
WHERE id = :run AND lease_owner = :owner"""

# One checkpoint, one statement (atomic on its own, so it runs in autocommit: one round
# trip): the lease moved on and n event numbers reserved, only for the owner that still
# holds it; then, only if that matched, the steps' rows and the events. `steps` and
# `events` are JSON arrays; each event carries its index `i` (1..n) among the reserved
# numbers. In psycopg's own placeholders: it runs on the driver's connection (below).
_CHECKPOINT = """
WITH fence AS (
  UPDATE runs SET lease_until = now() + make_interval(secs => %(ttl)s), event_seq = event_seq + %(n)s, updated_at = now()
    {finish}
  WHERE id = %(run)s AND lease_owner = %(owner)s AND lease_until > now()
  RETURNING event_seq, cancel_requested
), steps AS (
  INSERT INTO run_steps (run_id, index, name, status, output, attempts, failures, next_attempt_at, error,
                         started_at, finished_at)
  SELECT %(run)s, s.index, s.name, s.status, s.output, s.attempts, s.failures, to_timestamp(s.next_at), s.error,
         CASE WHEN s.status = 'running' THEN now() END,
         CASE WHEN s.status IN ('succeeded', 'failed', 'cancelled') THEN now() END
  FROM fence, jsonb_to_recordset(%(steps)s::jsonb) AS s(index int, name text, status text, output jsonb,
                                                             attempts int, failures int, next_at float8, error jsonb)
  ON CONFLICT (run_id, name) DO UPDATE SET status = excluded.status, output = excluded.output,
    attempts = excluded.attempts, failures = excluded.failures, next_attempt_at = excluded.next_attempt_at,
    error = excluded.error, started_at = coalesce(excluded.started_at, run_steps.started_at),
    finished_at = excluded.finished_at
), made AS (
  INSERT INTO events (run_id, seq, timestamp, event_type, message, progress_percentage, data)
  SELECT %(run)s, fence.event_seq - %(n)s + e.i, to_timestamp(e.at), e.type, e.message, e.progress, e.data
  FROM fence, jsonb_to_recordset(%(events)s::jsonb) AS e(i int, at float8, type text, message text,
                                                              progress float8, data jsonb)
)
SELECT event_seq, cancel_requested FROM fence"""

# The run's status moved on (running, or its end); an ending makes its callback due.
_FINISH = """, status = %(status)s::text, result = %(result)s::jsonb, error = %(error)s::jsonb,
    judge_score = %(judge)s::float8, quality_score = %(judge)s::float8,
    started_at = coalesce(started_at, now()),
    finished_at = CASE WHEN %(status)s::text IN ('succeeded', 'failed', 'cancelled', 'timed_out') THEN now() END,
    callback_status = CASE WHEN callback_url IS NOT NULL
                           AND %(status)s::text IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                           THEN 'pending' END,
    callback_next_at = CASE WHEN callback_url IS NOT NULL
                            AND %(status)s::text IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                            THEN now() END"""

EVENT_SQL = """
INSERT INTO events (run_id, seq, timestamp, event_type, message, progress_percentage, data)
VALUES (:run, :seq, to_timestamp(:at), :type, :message, :progress, CAST(:data AS jsonb))"""


@functools.cache
def _statement(finishing: bool) -> str:
    """The checkpoint statement (with the run's end, or without)."""
    return _CHECKPOINT.format(finish=_FINISH if finishing else "")


@contextlib.asynccontextmanager
async def autocommit(svc: Services) -> AsyncIterator[Any]:
    """psycopg's own connection, checked out of SQLAlchemy's pool, in autocommit. The
    checkpoints run on it: measured (bench/runs), SQLAlchemy's execution path and the
    pool's pre-ping cost more than the statement itself."""
    async with svc.db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield (await conn.get_raw_connection()).driver_connection


async def _fenced(driver: Any, finishing: bool, params: dict[str, Any]) -> tuple[int, bool] | None:
    async with driver.cursor() as cursor:
        await cursor.execute(_statement(finishing), params)
        return await cursor.fetchone()


async def _shielded(work: Any) -> Any:
    """Await `work` to its end even if the awaiting task is cancelled meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _state(row: tuple[Any, ...]) -> RunState:
    """A run's state from a claim's answer (_LOADED)."""
    run_id, pipeline_json, inputs, status, caller, tenant, limits, deadline, cancel_requested, calls_back, steps = row
    pipeline = Pipeline.model_validate(pipeline_json)
    state = RunState(run_id, pipeline, inputs, status, caller, tenant, Limits(**limits) if limits else None,
                     deadline.timestamp(), cancel_requested, calls_back, {step.id: StepState() for step in pipeline.steps})
    for step in steps:
        # a step found "running" was interrupted (its owner is gone): it runs again
        state.steps[step["name"]] = StepState("pending" if step["status"] == "running" else step["status"],
                                              step["output"], step["attempts"], step["failures"], step["next_at"],
                                              step["error"])
    return state


def event_row(run_id: uuid.UUID, event: progress.Event) -> dict[str, Any]:
    return {"run": run_id, "seq": event.seq, "at": event.at, "type": event.type, "message": event.message,
            "progress": event.progress, "data": json_text(event.data)}


# --- advancing -----------------------------------------------------------------------------


_advancing: dict[uuid.UUID, set[_Advance]] = {}  # this process's advances, by run


def nudge(run_id: uuid.UUID) -> None:
    """The run was asked to cancel: an advance of it in this process renews its lease
    now (and so sees the request) instead of within a third of the lease."""
    for advance in _advancing.get(run_id, ()):
        advance.nudged.set()


class Executor:
    """Advances runs on behalf of one owner (a worker, a function instance)."""

    def __init__(self, svc: Services, owner: str | None = None) -> None:
        self.svc = svc
        self.owner = owner or f"{svc.settings.redis_backend or 'pg'}:{uuid.uuid4().hex[:12]}"
        self.ttl = svc.settings.RUN_LEASE_SECONDS

    async def claim_next(self) -> RunState | None:
        """Take the lease of the oldest run that is ready and held by nobody; its state."""
        return await self._claim(_CLAIM_NEXT, {"owner": self.owner, "ttl": self.ttl})

    async def _claim(self, statement: str, params: dict[str, Any]) -> RunState | None:
        async with autocommit(self.svc) as driver, driver.cursor() as cursor:
            await cursor.execute(statement, params)
            row = await cursor.fetchone()
        return None if row is None else _state(row)

    async def advance(self, run: uuid.UUID | RunState, budget: float, *,
                      stop: asyncio.Event | None = None) -> str | None:
        """Run what is ready of `run` (an id, or the state `claim_next` gave) for up to
        `budget` seconds (or until `stop` is set: no step starts after it, the running
        ones end); its status after, or None if another owner holds it (or it has ended)."""
        if isinstance(run, RunState):
            state = run
        else:
            claimed = await self._claim(_CLAIM, {"run": run, "owner": self.owner, "ttl": self.ttl})
            if claimed is None:
                return None
            state = claimed
        wake: float | None = None
        try:
            wake = await _Advance(self, state, time.monotonic() + budget, stop).run()
        except LeaseLost:
            log.warning("run %s: lease lost to another owner; stopping", state.id)
            return None
        except Exception:
            wake = time.time() + self.ttl  # Postgres away, or a defect: not again at once
            raise
        finally:
            if state.status in ACTIVE:  # let go now, so another owner need not wait the lease out
                await _shielded(self._release(state.id, wake))
        if state.status in FINISHED and state.calls_back:
            await self._after_finish(state)
        return state.status

    async def _release(self, run_id: uuid.UUID, wake: float | None) -> None:
        from sqlalchemy import text

        async with self.svc.db.engine.begin() as conn:
            await conn.execute(text(_RELEASE), {"run": run_id, "owner": self.owner,
                                                "wake": datetime.fromtimestamp(wake, UTC) if wake else None})

    async def checkpoint(self, state: RunState, events: list[tuple[str, str, dict[str, Any]]], *,
                         steps: Sequence[str], finish: dict[str, Any] | None, connection: Any) -> None:
        """One fenced statement on `connection` (psycopg's, in autocommit: `autocommit`):
        the lease moved on, the rows of `steps` (and the run's end) written, the events
        numbered and stored; then the events go to Redis. A checkpoint under way is
        finished even if its caller is cancelled (a worker stopping)."""
        await _shielded(self._checkpoint(state, events, steps, finish, connection))

    async def _checkpoint(self, state: RunState, events: list[tuple[str, str, dict[str, Any]]],
                          steps: Sequence[str], finish: dict[str, Any] | None, connection: Any) -> None:
        status = finish["status"] if finish is not None else state.status
        at, percent = progress.now(), state.progress()
        order = state.pipeline.index()
        rows = [{"index": order[name], "name": name, "status": s.status, "output": s.output, "attempts": s.attempts,
                 "failures": s.failures, "next_at": s.next_attempt_at, "error": s.error}
                for name in steps for s in (state.steps[name],)]
        params = {"run": state.id, "owner": self.owner, "ttl": self.ttl, "n": len(events), "steps": json_text(rows),
                  "events": json_text([{"i": i + 1, "at": at, "type": kind, "message": message, "progress": percent,
                                        "data": data} for i, (kind, message, data) in enumerate(events)])}
        if finish is not None:
            params.update(status=finish["status"], result=json_text(finish.get("result")),
                          error=json_text(finish.get("error")), judge=finish.get("judge"))
        fenced = await _fenced(connection, finish is not None, params)
        if fenced is None:
            raise LeaseLost(str(state.id))
        event_seq, cancel_requested = fenced
        state.status = status
        state.cancel_requested = state.cancel_requested or cancel_requested
        first = event_seq - len(events) + 1
        made = [progress.Event(first + i, kind, message, at, percent, data)
                for i, (kind, message, data) in enumerate(events)]
        await progress.publish(self.svc.kv, state.id, made, {"status": state.status, "progress": percent})

    async def renew(self, state: RunState) -> bool:
        """Keep the lease while steps run; False once it is lost or the run is to cancel."""
        from sqlalchemy import text

        async with self.svc.db.engine.begin() as conn:
            row = (await conn.execute(text(
                "UPDATE runs SET lease_until = now() + make_interval(secs => :ttl) WHERE id = :run "
                "AND lease_owner = :owner AND lease_until > now() RETURNING cancel_requested"),
                {"run": state.id, "owner": self.owner, "ttl": self.ttl})).first()
        if row is None:
            return False
        state.cancel_requested = state.cancel_requested or row.cancel_requested
        return not state.cancel_requested

    async def _after_finish(self, state: RunState) -> None:
        from core.runs.callbacks import deliver_due

        await deliver_due(self.svc, run_id=state.id)

    # -- running one step --------------------------------------------------------------------
    async def execute(self, state: RunState, step: Step, save: Save) -> Any:
        """The step's output, or StepFailed. `save(partial, message, data)` checkpoints a
        step's progress while it runs (an agent's turns and tool calls): `partial` is
        stored as its output, and given back in `state` when the step is run again."""
        context = state.context()
        key = f"{state.id}:{step.id}"
        try:
            async with asyncio.timeout(step.timeout):
                if step.kind == "llm":
                    return await self._llm(state, step, context)
                if step.kind in ("agent", "aggregate", "evaluate"):
                    from core.runs import steps

                    rendered = templates.render_value(step.template(), context)
                    run = {"agent": steps.agent, "aggregate": steps.aggregate, "evaluate": steps.evaluate}[step.kind]
                    return await run(self, state, step, rendered, save)
                arguments = templates.render_value(step.arguments, context)
                if step.kind == "tool":
                    return await self._tool(state, step, arguments, key)
                from core.tools.kinds import ToolFailed, call_entry

                try:
                    return await call_entry(step.entry or "", arguments)
                except ToolFailed as exc:
                    raise StepFailed(exc.kind, exc.message) from None
        except TimeoutError:
            raise StepFailed("timeout", f"step {step.id!r} gave no output within {step.timeout:g}s") from None
        except templates.TemplateError as exc:
            raise StepFailed("template", str(exc)) from None

    async def chat(self, state: RunState, step: Step, messages: list[dict[str, Any]], **fields: Any) -> Any:
        """One model call of `step` through the gateway's orchestrator (the DWA routes it),
        logged under the run's caller and counted against its key's limits."""
        from core.tools.kinds import ToolFailed, chat

        try:
            return await chat(self.svc.orchestrator, messages, model=step.model, max_tokens=step.max_tokens,
                              temperature=step.temperature, endpoint="run", caller=state.caller,
                              tenant=state.tenant, limits=state.limits, timeout=step.timeout, **fields)
        except ToolFailed as exc:
            raise StepFailed(exc.kind, exc.message) from None

    async def _llm(self, state: RunState, step: Step, context: dict[str, Any]) -> Any:
        messages = [{**m, "content": templates.render(m.get("content", ""), context)} for m in step.messages or []]
        return (await self.chat(state, step, messages)).text

    async def invoke_tool(self, state: RunState, entry: Any, arguments: Any, key: str) -> Any:
        """A registry tool called for the run (ArgumentsInvalid, ToolUnavailable, or its
        Outcome), with `key` as its idempotency key."""
        import os

        from core.tools.invoke import invoke
        from core.tools.kinds import CallContext

        ctx = CallContext(settings=self.svc.settings, environ=os.environ, orchestrator=self.svc.orchestrator,
                          caller=state.caller, tenant=state.tenant, limits=state.limits, idempotency_key=key)
        return await invoke(entry, arguments, ctx, kv=self.svc.kv, db=self.svc.db)

    async def _tool(self, state: RunState, step: Step, arguments: Any, key: str) -> Any:
        from core.tools.invoke import ArgumentsInvalid, ToolUnavailable

        try:
            entry = await self.svc.tools.get(step.tool or "")
            outcome = await self.invoke_tool(state, entry, arguments, key)
        except (ArgumentsInvalid, ToolUnavailable) as exc:
            raise StepFailed("tool_refused", str(exc)) from None
        if outcome.status != "ok":
            error = outcome.error or {}
            raise StepFailed(str(error.get("type")), str(error.get("message")))
        return outcome.result


class _Advance:
    """One `advance`: its loop, its running steps, its lease renewer.

    What changed since the last checkpoint (steps that ended, steps about to start, their
    events) waits in `changed` and `events` and goes out in one checkpoint, so a step
    ending and the step it unblocks starting cost one round trip between them, not two."""

    def __init__(self, executor: Executor, state: RunState, end: float, stop: asyncio.Event | None) -> None:
        self.ex, self.state, self.end = executor, state, end
        self.stop = stop or asyncio.Event()
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.changed: list[str] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.status_change: dict[str, Any] | None = None  # the run's, for the next checkpoint
        self.held: contextlib.AsyncExitStack | None = None  # a connection kept while steps end quickly
        self.driver: Any = None
        self.using = asyncio.Lock()  # the loop and running steps (their saves) share the connection
        self.save_failed: BaseException | None = None  # a step's save could not checkpoint: the advance ends
        self.nudged = asyncio.Event()  # renew now: a cancel was asked of this process (nudge)

    def _budget_left(self) -> float:
        return 0.0 if self.stop.is_set() else self.end - time.monotonic()

    def _note(self, step_id: str | None, kind: str, message: str, data: dict[str, Any]) -> None:
        if step_id is not None and step_id not in self.changed:
            self.changed.append(step_id)
        self.events.append((kind, message, data))

    async def _flush(self, finish: dict[str, Any] | None = None) -> None:
        """Checkpoint what changed (with the run's end, when given)."""
        async with self.using:
            finish = finish or self.status_change
            if not self.events and finish is None:
                return
            events, changed = self.events, self.changed
            self.events, self.changed, self.status_change = [], [], None
            if self.held is None:
                self.held = contextlib.AsyncExitStack()
                self.driver = await self.held.enter_async_context(autocommit(self.ex.svc))
            try:
                await self.ex.checkpoint(self.state, events, steps=changed, finish=finish, connection=self.driver)
            except BaseException:
                await self._release_connection()  # a connection that failed goes back to the pool, which checks it
                raise

    async def _let_go(self) -> None:
        """Back to the pool with the connection (when steps take a while, and at the end)."""
        async with self.using:
            await self._release_connection()

    async def _release_connection(self) -> None:
        held, self.held, self.driver = self.held, None, None
        if held is not None:
            await _shielded(held.aclose())

    def _saver(self, step_id: str) -> Save:
        async def save(partial: Any, message: str, data: dict[str, Any]) -> None:
            self.state.steps[step_id].output = partial
            self._note(step_id, "step.progress", f"{step_id}: {message}", {"step": step_id, **data})
            try:
                await self._flush()
            except Exception as exc:  # a cancelled step is not a failed checkpoint
                self.save_failed = exc
                raise

        return save

    async def run(self) -> float | None:
        """Advance until the run ends or the budget does; when to wake it next (a retry)."""
        state = self.state
        if await self._stopped():
            return None
        if state.status == "queued":  # goes out with its first steps' start
            self._note(None, "run.started", "started", {})
            self.status_change = {"status": "running"}
        renewer = asyncio.create_task(self._renew())
        _advancing.setdefault(state.id, set()).add(self)
        try:
            while True:
                if await self._stopped():
                    return None
                ready, wait_until = self._ready()
                budget_left = self._budget_left()
                if not self.running and not ready:
                    if wait_until is None:
                        await self._finish()
                        return None
                    if wait_until - time.time() > budget_left:
                        await self._flush()
                        return min(wait_until, state.deadline)  # a retry after this budget: wake then
                starting = ready if budget_left > 0 else []
                for step in starting:
                    s = state.steps[step.id]
                    s.status, s.attempts = "running", s.attempts + 1
                    self._note(step.id, "step.started", f"{step.id}: started (attempt {s.attempts})",
                               {"step": step.id, "attempt": s.attempts, "kind": step.kind})
                await self._flush()  # the steps that ended and the ones they let start, at once
                for step in starting:
                    self.running[step.id] = asyncio.create_task(self.ex.execute(state, step, self._saver(step.id)))
                if not self.running and budget_left <= 0:
                    return wait_until or time.time()
                await self._wait(wait_until)
        finally:
            advances = _advancing.get(state.id)
            if advances is not None:
                advances.discard(self)
                if not advances:
                    del _advancing[state.id]
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            await self._let_go()

    def _ready(self) -> tuple[list[Step], float | None]:
        """Steps that may start now, and the earliest time a waiting retry may."""
        steps, now = self.state.steps, time.time()
        ready, wait = [], None
        for step in self.state.pipeline.steps:
            s = steps[step.id]
            if step.id in self.running or s.status in DONE_STEPS:
                continue
            # a dependency that ended may be used (failed with on_error continue: its output is null)
            if not all(steps[d].status == "succeeded" or (steps[d].status == "failed" and self._continues(d))
                       for d in step.dependencies()):
                continue
            if s.status == "retrying" and s.next_attempt_at and s.next_attempt_at > now:
                wait = s.next_attempt_at if wait is None else min(wait, s.next_attempt_at)
                continue
            ready.append(step)
        return ready, wait

    def _continues(self, step_id: str) -> bool:
        return self.state.pipeline.by_id()[step_id].on_error == "continue"

    async def _wait(self, wait_until: float | None) -> None:
        """Until a running step ends, a retry is due, the budget ends or the deadline
        comes; then note each step that ended. Past the budget, the steps already running
        are waited for (their timeouts and the deadline bound that)."""
        now = time.time()
        limits = [self.state.deadline - now]
        budget_left = self._budget_left()
        if budget_left > 0:
            limits.append(budget_left)
            if wait_until is not None:
                limits.append(wait_until - now)
        elif not self.running:
            limits.append(0.0)
        timeout = max(0.0, min(limits))
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            waiting = [*self.running.values(), stopping]
            done, _ = await asyncio.wait(waiting, timeout=min(timeout, HOLD_SECONDS),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done and timeout > HOLD_SECONDS:  # a slow step: nobody else need wait for this connection
                await self._let_go()
                done, _ = await asyncio.wait(waiting, timeout=timeout - HOLD_SECONDS,
                                             return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        for step_id, task in list(self.running.items()):
            if task in done:
                del self.running[step_id]
                self._ended(self.state.pipeline.by_id()[step_id], task)

    def _ended(self, step: Step, task: asyncio.Task[Any]) -> None:
        s = self.state.steps[step.id]
        if task.cancelled():
            s.status = "pending"  # stopped by a cancel or a lost lease: decided elsewhere
            return
        if self.save_failed is not None:  # its checkpoint failed (the lease lost, Postgres away)
            raise self.save_failed
        error = task.exception()
        if error is None:
            s.status, s.output, s.error, s.next_attempt_at = "succeeded", task.result(), None, None
            self._note(step.id, "step.completed", f"{step.id}: done", {"step": step.id})
            return
        failure = error if isinstance(error, StepFailed) else StepFailed("internal_error", type(error).__name__)
        if not isinstance(error, StepFailed):
            log.error("run %s step %s failed unexpectedly", self.state.id, step.id, exc_info=error)
        s.failures += 1
        s.error = failure.to_json()
        if s.failures <= step.retries:
            delay = step.backoff_seconds * 2 ** (s.failures - 1) * random.uniform(0.5, 1.5)
            s.status, s.next_attempt_at = "retrying", time.time() + delay
            self._note(step.id, "step.retrying", f"{step.id}: {failure.message[:200]}; retrying in {delay:.2f}s",
                       {"step": step.id, "error": s.error, "delay_s": round(delay, 3)})
            return
        s.status, s.output = "failed", None  # whatever it saved on the way is not an output
        self._note(step.id, "step.failed", f"{step.id}: {failure.message[:200]}", {"step": step.id, "error": s.error})

    async def _renew(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.nudged.wait(), self.ex.ttl / 3)
            self.nudged.clear()
            if not await self.ex.renew(self.state):
                for task in self.running.values():  # taken over, or to cancel: stop the steps
                    task.cancel()
                return

    async def _stopped(self) -> bool:
        """Cancel requested or deadline passed: end the run (True)."""
        state = self.state
        if state.cancel_requested:
            await self._halt("cancelled", "run.cancelled", "cancelled on request")
            return True
        if time.time() >= state.deadline:
            await self._halt("timed_out", "run.timed_out", "past its deadline")
            return True
        return False

    def _cancel_the_rest(self) -> None:
        for step in self.state.pipeline.steps:
            s = self.state.steps[step.id]
            if s.status in ("pending", "running", "retrying"):
                s.status = "cancelled"
                if step.id not in self.changed:
                    self.changed.append(step.id)

    async def _halt(self, status: str, event: str, message: str) -> None:
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        self.running.clear()
        self._cancel_the_rest()
        self._note(None, event, message, {})
        await self._flush({"status": status, "error": {"type": status, "message": message}})

    async def _finish(self) -> None:
        state = self.state
        failed = [step.id for step in state.pipeline.steps
                  if state.steps[step.id].status == "failed" and not self._continues(step.id)]
        outputs = {name: s.output for name, s in state.steps.items()}
        if failed:
            error = {"type": "step_failed", "step": failed[0], **(state.steps[failed[0]].error or {})}
            self._cancel_the_rest()  # what could not run after the failure
            self._note(None, "run.failed", f"failed at step {failed[0]!r}: {error.get('message', '')[:200]}",
                       {"error": error})
            await self._flush({"status": "failed", "error": error, "result": {"steps": outputs}})
        else:
            judged = [state.steps[step.id].output for step in state.pipeline.steps if step.kind == "evaluate"]
            judge = next((j["score"] for j in reversed(judged) if isinstance(j, dict)), None)
            self._note(None, "run.succeeded", "succeeded" if judge is None else f"succeeded (judged {judge:.2f})",
                       {} if judge is None else {"score": judge})
            answer = next((step.id for step in reversed(state.pipeline.steps) if step.kind != "evaluate"),
                          state.pipeline.steps[-1].id)  # the result is what was judged, not the judgement
            await self._flush({"status": "succeeded", "judge": judge,
                               "result": {"output": outputs[answer], "steps": outputs}})
