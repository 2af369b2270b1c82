"""Runs end to end: signed webhooks start them over real HTTP (uvicorn), the engine
advances them on real Postgres and Redis, and the three readers (status, long poll, SSE)
follow them; workers are real `orchesity worker` subprocesses, killed for real."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from core.settings import Settings
from tests.servers import serve

SECRET = "whsec_" + base64.b64encode(b"orchesity-test-webhook-secret-32").decode()
TEST_MODULES = "core.tools.builtin,tests.tool_functions"
FINAL = {"run.succeeded", "run.failed", "run.cancelled", "run.timed_out"}


def sign(body: str, *, delivery: str | None = None, secret: str = SECRET,
         at: datetime | None = None) -> dict[str, str]:
    from standardwebhooks.webhooks import Webhook

    delivery = delivery or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    return {"webhook-id": delivery, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery, at, body), "content-type": "application/json"}


async def start_run(client: httpx.AsyncClient, body: dict[str, Any], **signing: Any) -> httpx.Response:
    text = json.dumps(body)
    return await client.post("/api/runs", content=text, headers=sign(text, **signing))


def python(step_id: str, entry: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "python", "entry": f"tests.tool_functions:{entry}", **fields}


@pytest.fixture
def runs_settings(gateway_settings: Settings) -> Settings:
    return gateway_settings.model_copy(update={
        "WEBHOOK_SECRETS": SecretStr(SECRET), "ORCHESITY_TOOL_MODULES": TEST_MODULES, "RUN_LEASE_SECONDS": 2.0,
        "WORKER_POLL_SECONDS": 0.1})


@contextmanager
def gateway(settings: Settings, **overrides: Any) -> Iterator[httpx.AsyncClient]:
    """The gateway under uvicorn on loopback (its own services, its background worker)."""
    from functions.gateway import build_app

    with serve(build_app(settings=settings.model_copy(update=overrides))) as url:
        yield httpx.AsyncClient(base_url=url, timeout=30)


async def sse(client: httpx.AsyncClient, url: str, **headers: str) -> AsyncIterator[dict[str, Any]]:
    """Each Server-Sent Event of `url` as {"id", "event", "data"} until the server closes."""
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if not line:
                if "data" in event:
                    yield event
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = json.loads(value) if name == "data" else value.strip()


async def collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event async for event in events]


async def long_poll(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every event of a run through /events?after=&wait=, until it says done."""
    seen, after = [], 0
    while True:
        page = (await client.get(url, params={"after": after, "wait": 5})).json()
        seen += page["events"]
        after = page["next_after"]
        if page["done"]:
            return seen


async def finished(client: httpx.AsyncClient, status_url: str, timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        run = (await client.get(status_url)).json()
        if run["status"] not in ("queued", "running"):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"the run did not end: {run}")


# --- a webhook starts a run; every reader sees the same events ------------------------------------


async def test_a_signed_webhook_runs_a_pipeline_and_every_reader_sees_its_events_in_order(
        runs_settings: Settings) -> None:
    body = {"pipeline": {"steps": [
        {"id": "a", "kind": "llm", "messages": [{"role": "user", "content": "Summarise: {{ inputs.text }}"}]},
        {"id": "b", "kind": "tool", "tool": "text_stats", "arguments": {"text": "{{ steps.a.output }}"}},
        python("c", "slow", arguments={"seconds": 0.3}),
        python("d", "shout", arguments={"text": "{{ inputs.text }}"}, needs=["b", "c"]),
    ]}, "inputs": {"text": "the quick brown fox"}}
    with gateway(runs_settings) as client:
        started = await start_run(client, body)
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["status"] == "queued" and set(run) >= {"id", "status_url", "events_url", "stream_url"}
        async with asyncio.timeout(30):
            streamed, polled = await asyncio.gather(
                collect(sse(client, run["stream_url"])), long_poll(client, run["events_url"]))
        status = await finished(client, run["status_url"])
    assert status["status"] == "succeeded", status
    assert status["progress"] == 100 and status["result"]["output"] == {"text": "THE QUICK BROWN FOX"}
    assert status["result"]["steps"]["b"]["words"] >= 1  # the tool read the llm step's output
    assert [s["status"] for s in status["steps"]] == ["succeeded"] * 4
    events = [e["data"] for e in streamed]
    assert [int(e["id"]) for e in streamed] == [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events == polled  # the long poll and the stream: the same events, once each, in order
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["run.queued", "run.started"] and kinds[-1] == "run.succeeded"
    for step in "abcd":
        assert [e["type"] for e in events if e.get("data", {}).get("step") == step] == \
            ["step.started", "step.completed"]
    at = {(e["type"], e["data"].get("step")): i for i, e in enumerate(events)}
    assert at[("step.started", "d")] > max(at[("step.completed", "b")], at[("step.completed", "c")])  # needs

async def test_only_a_valid_fresh_signature_starts_a_run_and_a_replay_returns_the_same_run(
        runs_settings: Settings, db: Any) -> None:
    from sqlalchemy import text

    async def count() -> int:
        async with db.engine.connect() as conn:
            return (await conn.execute(text("SELECT count(*) FROM runs"))).scalar_one()

    body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "hi"})]}}
    before = await count()
    with gateway(runs_settings, OPEN_ACCESS=False) as client:
        forged = await start_run(client, body, secret="whsec_" + base64.b64encode(b"x" * 32).decode())
        stale = await start_run(client, body, at=datetime.now(UTC) - timedelta(minutes=6))
        text_body = json.dumps(body)
        tampered = await client.post("/api/runs", content=text_body.replace("hi", "ho"), headers=sign(text_body))
        unsigned = await client.post("/api/runs", json=body)
        assert await count() == before  # nothing refused was stored
        first = await start_run(client, body, delivery="msg_replayed")
        again = await start_run(client, body, delivery="msg_replayed")
    for refused in (forged, stale, tampered):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_webhook_signature"
    assert "matches none of the secrets" in forged.json()["error"]["message"]
    assert "6 minutes" in stale.json()["error"]["message"] or "in the past" in stale.json()["error"]["message"]
    assert unsigned.status_code == 401  # neither signed nor keyed
    assert first.status_code == 202 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert await count() == before + 1
    assert SECRET not in forged.text + stale.text


async def test_a_key_with_runs_starts_runs_once_per_idempotency_key_and_sees_only_its_own(
        runs_settings: Settings) -> None:
    from core.auth import create_key
    from core.db import Database

    database = Database.from_settings(runs_settings)
    try:
        alice, bob, llm_only = [(await create_key(database, name=name, scopes=[scope], created_by="test"))[0]
                                for name, scope in (("alice", "runs"), ("bob", "runs"), ("llm", "llm"))]
    finally:
        await database.close()
    body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "{{ inputs.who }}"})]},
            "inputs": {"who": "alice"}}
    with gateway(runs_settings, OPEN_ACCESS=False) as client:
        def as_(key: str, **headers: str) -> dict[str, str]:
            return {"authorization": f"Bearer {key}", **headers}

        first = await client.post("/api/runs", json=body, headers=as_(alice, **{"idempotency-key": "order-42"}))
        again = await client.post("/api/runs", json=body, headers=as_(alice, **{"idempotency-key": "order-42"}))
        other = await client.post("/api/runs", json=body, headers=as_(bob, **{"idempotency-key": "order-42"}))
        refused = await client.post("/api/runs", json=body, headers=as_(llm_only))
        run_id = first.json()["id"]
        ended = await finished(client, first.json()["status_url"])
        mine = (await client.get("/api/runs", headers=as_(alice))).json()
        peek = await client.get(f"/api/runs/{run_id}", headers=as_(bob))
        own = await client.get(f"/api/runs/{run_id}", headers=as_(alice))
        by_token = await client.get(first.json()["status_url"])  # no key: the read token
    assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == run_id
    assert other.status_code == 202 and other.json()["id"] != run_id  # keys do not share idempotency keys
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert ended["status"] == "succeeded" and ended["result"]["output"] == {"text": "ALICE"}
    assert [r["id"] for r in mine["runs"]] == [run_id]
    assert peek.status_code == 404 and own.status_code == 200 and by_token.status_code == 200


@pytest.mark.parametrize(("steps", "named"), [
    ([{"id": "a", "kind": "tool", "tool": "no_such_tool"}], ["steps[0] ('a'): tool:"]),
    ([{"id": "a", "kind": "llm", "messages": [{"role": "user", "content": "{{ steps.ghost.output }}"}]}],
     ["steps[0] ('a'): {{ steps.ghost.output }}: there is no step 'ghost'"]),
    ([python("a", "shout", needs=["b"]), python("b", "shout", needs=["a"])], ["('a'): needs:", "cycle"]),
    ([{"id": "a", "kind": "python", "entry": "os:system", "arguments": {"command": "true"}}],
     ["steps[0] ('a'): entry: os is not under an allowed module prefix"]),
    ([{"id": "a", "kind": "llm"}], ["steps[0] ('a'): messages:"]),
])
async def test_a_malformed_pipeline_is_refused_naming_the_step_and_field(
        runs_settings: Settings, steps: list[dict[str, Any]], named: list[str]) -> None:
    with gateway(runs_settings) as client:
        answer = await start_run(client, {"pipeline": {"steps": steps}})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_run"
    for part in named:
        assert any(part in problem for problem in error["details"]), error


async def test_bodies_that_are_not_runs_get_422_naming_the_field(runs_settings: Settings) -> None:
    with gateway(runs_settings) as client:
        async def send(text: str) -> dict[str, Any]:
            answer = await client.post("/api/runs", content=text, headers=sign(text))
            assert answer.status_code == 422, answer.text
            return answer.json()["error"]

        not_json = await send("{not json")
        unknown = await send(json.dumps({"pipeline": {"steps": []}, "surprise": 1}))
        private = await send(json.dumps({"pipeline": {"steps": [python("a", "shout", arguments={"text": "x"})]},
                                         "callback_url": "http://169.254.169.254/latest"}))
        unnamed = await send(json.dumps({"pipeline": "no_such_pipeline"}))
    assert "not valid JSON" in not_json["message"]
    assert "surprise" in unknown["message"]
    assert private["details"][0].startswith("callback_url:")
    assert "no pipeline named 'no_such_pipeline'" in unnamed["message"] and "summarize" in unnamed["message"]


async def test_cancel_stops_a_run_mid_step(runs_settings: Settings) -> None:
    body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "x"}),
                                   python("b", "slow", arguments={"seconds": 30}, timeout=60, needs=["a"]),
                                   python("c", "shout", arguments={"text": "y"}, needs=["b"])]}}
    with gateway(runs_settings) as client:
        run = (await start_run(client, body)).json()
        async with asyncio.timeout(20):
            async for event in sse(client, run["stream_url"]):
                if event["event"] == "step.started" and event["data"]["data"]["step"] == "b":
                    asked = time.monotonic()
                    cancelled = await client.post(run["cancel_url"])
                    assert cancelled.status_code == 202, cancelled.text
                last = event
        ended = await finished(client, run["status_url"])
        again = await client.post(run["cancel_url"])
    assert last["event"] == "run.cancelled" and time.monotonic() - asked < 5
    assert ended["status"] == "cancelled"
    assert {s["id"]: s["status"] for s in ended["steps"]} == {"a": "succeeded", "b": "cancelled", "c": "cancelled"}
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"


async def test_a_failing_step_retries_with_backoff_then_fails_the_run_with_its_error(runs_settings: Settings) -> None:
    body = {"pipeline": {"steps": [python("flaky", "broken", retries=2, backoff_seconds=0.2),
                                   python("after", "shout", arguments={"text": "x"}, needs=["flaky"])]}}
    with gateway(runs_settings) as client:
        run = (await start_run(client, body)).json()
        async with asyncio.timeout(20):
            events = [e["data"] for e in await collect(sse(client, run["stream_url"]))]
        ended = await finished(client, run["status_url"])
    kinds = [e["type"] for e in events if e["data"].get("step") == "flaky"]
    assert kinds == ["step.started", "step.retrying", "step.started", "step.retrying", "step.started", "step.failed"]
    started = [e["at"] for e in events if e["type"] == "step.started"]
    assert started[2] - started[1] > started[1] - started[0] > 0.05  # backed off, longer each time
    assert events[-1]["type"] == "run.failed"
    assert ended["status"] == "failed"
    assert ended["error"]["step"] == "flaky" and "the tool fell over" in ended["error"]["message"]
    assert {s["id"]: s["status"] for s in ended["steps"]} == {"flaky": "failed", "after": "cancelled"}
    assert next(s for s in ended["steps"] if s["id"] == "flaky")["attempts"] == 3


async def test_a_run_past_its_deadline_times_out(runs_settings: Settings) -> None:
    body = {"pipeline": {"steps": [python("a", "slow", arguments={"seconds": 30}, timeout=60)]},
            "deadline_seconds": 1}
    with gateway(runs_settings) as client:
        run = (await start_run(client, body)).json()
        ended = await finished(client, run["status_url"], timeout=10)
    assert ended["status"] == "timed_out" and ended["error"]["type"] == "timed_out"
