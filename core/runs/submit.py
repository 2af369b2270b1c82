"""Starting a run: what POST /api/runs and `orchesity run` call.

A request gives a pipeline (inline, or the name of one in the pipelines file) or a
`goal` in plain words that the planner turns into one (core/runs/planner.py), its
`inputs` (a goal is also `inputs.goal`), and optionally a `callback_url` and a
`deadline_seconds`; `dry_run` checks (or plans) without starting anything. The pipeline is
checked (core/runs/pipeline.py: every problem named, nothing stored) and pinned: each
tool step's `tool` becomes the exact `name@version` the registry resolved, so a tool
registered later does not change a run already started. The run is stored queued with
its `run.queued` event; a `delivery_id` seen before (a webhook's id, an
Idempotency-Key) returns the run it started instead of a second one.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core import progress
from core.db import json_text
from core.runs.executor import EVENT_SQL, event_row
from core.runs.pipeline import Pipeline, RunInvalid, Step, check, check_inputs, parse

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from core.limits import Limits
    from core.runs.planner import Planned
    from core.services import Services
    from core.settings import Settings


class RunRequest(BaseModel):
    """The body of POST /api/runs."""

    model_config = ConfigDict(extra="forbid")

    pipeline: dict[str, Any] | str | None = Field(
        default=None, description="a pipeline ({\"steps\": [...]}) or a named pipeline's name; without it, "
                                  "the goal is planned into one")
    goal: str | None = Field(default=None, min_length=1, max_length=4000, description="what the run is for")
    inputs: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(default=None, max_length=2048)
    deadline_seconds: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    dry_run: bool = Field(default=False, description="check (or plan) the pipeline, start nothing")

    @model_validator(mode="after")
    def _something_to_run(self) -> RunRequest:
        if self.pipeline is None and self.goal is None:
            raise ValueError("pipeline: give a pipeline, a named pipeline, or a goal to plan one")
        if self.goal is not None and not self.goal.strip():
            raise ValueError("goal: it is blank")
        given = self.inputs.get("goal")
        if self.goal is not None and given is not None and given != self.goal:
            raise ValueError("inputs.goal: differs from goal (the goal is inputs.goal)")
        return self

    def run_inputs(self) -> dict[str, Any]:
        """The run's inputs: the goal among them, as inputs.goal."""
        return {**self.inputs, "goal": self.goal} if self.goal is not None else self.inputs

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, url: str | None) -> str | None:
        parts = urlsplit(url or "http://x")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return url


@dataclass(frozen=True)
class Caller:
    """Whose run it is: its LLM calls are logged under `id`, read `tenant`'s cache and count
    against `limits` (its key's, as they were when the run started)."""

    id: str
    tenant: str | None = None
    limits: Limits | None = None


@dataclass(frozen=True)
class Prepared:
    pipeline: Pipeline  # checked and pinned
    planned: Planned | None  # how the goal was planned, when it was


@dataclass(frozen=True)
class Submitted:
    id: uuid.UUID
    new: bool  # False: the delivery id was seen before, and this is the run it started
    read_token: str
    status: str
    planned: Planned | None = None  # how its goal was planned, when it was (and it is new)


def resolve(svc: Services, pipeline: dict[str, Any] | str) -> Pipeline:
    """The pipeline a request names or gives (RunInvalid when it names none)."""
    if isinstance(pipeline, str):
        named = svc.pipelines
        if pipeline not in named:
            known = ", ".join(sorted(named)) or "none: ORCHESITY_PIPELINES_FILE has no pipelines"
            raise RunInvalid([f"pipeline: there is no pipeline named {pipeline!r} (named pipelines: {known})"])
        return named[pipeline]
    return parse(pipeline)


async def pin(svc: Services, pipeline: Pipeline) -> Pipeline:
    """`pipeline`, checked, with each tool step (and each agent's tools) naming the exact
    version it will call."""
    entries = await check(pipeline, svc.tools, svc.settings)
    if not entries:
        return pipeline

    def pinned(step: Step) -> Step:
        if step.id in entries:
            return step.model_copy(update={"tool": entries[step.id].tool.ref})
        if step.tools:
            return step.model_copy(update={"tools": [entries[f"{step.id}.tools[{i}]"].tool.ref
                                                     for i in range(len(step.tools))]})
        return step

    return pipeline.model_copy(update={"steps": [pinned(step) for step in pipeline.steps]})


async def prepare(svc: Services, request: RunRequest, *, caller: Caller) -> Prepared:
    """The request's pipeline, checked and pinned, planned from its goal when it gives
    none (with `caller`'s past runs as examples): RunInvalid, naming each problem."""
    if request.callback_url is not None:
        _check_callback(svc.settings, request.callback_url)
    if request.pipeline is not None:
        pipeline = await pin(svc, resolve(svc, request.pipeline))
        check_inputs(pipeline, request.run_inputs())
        return Prepared(pipeline, None)
    from core.runs.planner import plan

    assert request.goal is not None  # the request's validator saw to it
    planned = await plan(svc, request.goal, request.inputs, caller=caller, owner=caller.id)
    return Prepared(planned.pipeline, planned)


async def submit(svc: Services, request: RunRequest, *, caller: Caller,
                 delivery_id: str | None = None) -> Submitted:
    """Check (or plan), pin and store a run (RunInvalid, naming each problem, stores nothing)."""
    if delivery_id is not None:
        async with svc.db.engine.connect() as conn:
            seen = await _receipt(conn, delivery_id)
        if seen is not None:
            return seen
    prepared = await prepare(svc, request, caller=caller)
    inputs = request.run_inputs()
    goal = inputs.get("goal") if isinstance(inputs.get("goal"), str) else None
    run = await create_run(svc, prepared.pipeline, inputs, caller=caller,
                           spec=request.model_dump(mode="json", exclude_none=True),
                           deadline_seconds=request.deadline_seconds, callback_url=request.callback_url,
                           delivery_id=delivery_id, goal=goal)
    return replace(run, planned=prepared.planned) if run.new else run


def _check_callback(settings: Settings, url: str) -> None:
    """Refuse a callback that could not be signed, or written to a private address, now,
    not at its first attempt (a name is checked by the guard when it is resolved, at
    every attempt)."""
    from core.outbound import literal_refusal

    if not settings.webhook_secrets:
        raise RunInvalid(["callback_url: callbacks are signed with WEBHOOK_SECRETS, which this deployment "
                          "does not set"])
    host = urlsplit(url).hostname or ""
    refusal = None if host in settings.callback_allow_hosts else literal_refusal(host)
    if refusal:
        raise RunInvalid([f"callback_url: {host} is {refusal}: a callback never goes to a private address "
                          "(CALLBACK_ALLOW_HOSTS lists the hosts that may)"])


async def _receipt(conn: AsyncConnection, delivery_id: str) -> Submitted | None:
    """The run a delivery id started, if it started one."""
    from sqlalchemy import text

    row = (await conn.execute(text(
        "SELECT r.id, r.read_token, r.status FROM webhook_receipts w JOIN runs r ON r.id = w.run_id "
        "WHERE w.delivery_id = :d"), {"d": delivery_id})).first()
    return Submitted(row.id, False, row.read_token, row.status) if row else None


async def create_run(svc: Services, pipeline: Pipeline, inputs: Mapping[str, Any], *, caller: Caller,
                     spec: Mapping[str, Any], deadline_seconds: float | None = None,
                     callback_url: str | None = None, delivery_id: str | None = None,
                     goal: str | None = None) -> Submitted:
    """Store a queued run and its run.queued event (then published to Redis)."""
    from sqlalchemy import text

    run_id, token = uuid.uuid4(), secrets.token_urlsafe(24)
    deadline = datetime.now(UTC) + timedelta(seconds=deadline_seconds or svc.settings.RUN_DEFAULT_DEADLINE_SECONDS)
    queued = progress.Event(1, "run.queued", f"queued: {len(pipeline.steps)} steps", progress.now(), 0.0,
                            {"pipeline": pipeline.name, "digest": pipeline.digest})
    async with svc.db.engine.begin() as conn:
        if delivery_id is not None:
            # the receipt first (its foreign key is checked at commit): a second delivery
            # of the same id waits here for the first to commit, then gets its run
            claimed = (await conn.execute(text(
                "INSERT INTO webhook_receipts (delivery_id, run_id) VALUES (:delivery, :run) "
                "ON CONFLICT DO NOTHING RETURNING run_id"), {"delivery": delivery_id, "run": run_id})).first()
            if claimed is None:
                seen = await _receipt(conn, delivery_id)
                assert seen is not None  # committed by the other delivery, with its run
                return seen
        await conn.execute(text(
            "INSERT INTO runs (id, spec, status, pipeline, pipeline_name, pipeline_digest, inputs, caller, tenant, "
            "caller_limits, read_token, deadline, callback_url, event_seq, goal) VALUES (:id, CAST(:spec AS jsonb), "
            "'queued', CAST(:pipeline AS jsonb), :name, :digest, CAST(:inputs AS jsonb), :caller, :tenant, "
            "CAST(:limits AS jsonb), :token, :deadline, :callback, 1, :goal)"),
            {"id": run_id, "spec": json_text(dict(spec)),
             "pipeline": json_text(pipeline.model_dump(mode="json", exclude_none=True)), "name": pipeline.name,
             "digest": pipeline.digest, "inputs": json_text(dict(inputs)), "caller": caller.id,
             "tenant": caller.tenant, "limits": json_text(asdict(caller.limits)) if caller.limits else None,
             "token": token, "deadline": deadline, "callback": callback_url, "goal": goal})
        await conn.execute(text(EVENT_SQL), event_row(run_id, queued))
    await progress.publish(svc.kv, run_id, [queued], {"status": "queued", "progress": 0.0})
    return Submitted(run_id, True, token, "queued")
