"""Runs end to end: signed webhooks start them over real HTTP (uvicorn), the engine
advances them on real Postgres and Redis, and the three readers (status, long poll, SSE)
follow them; workers are real `orchesity worker` subprocesses, killed for real."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from core.settings import Settings
from tests.servers import serve

from tests.conftest import ROOT, SECRET, TEST_MODULES
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
        unfed = await send(json.dumps({"pipeline": {"steps": [  # it would only fail once the step ran
            python("a", "shout", arguments={"text": "{{ inputs.text }}"})]}, "inputs": {"txt": "typo"}}))
    assert "not valid JSON" in not_json["message"]
    assert unfed["details"] == ["inputs: steps[0] ('a') reads {{ inputs.text }}, which the run's inputs do not hold"]
    assert "surprise" in unknown["message"]
    assert private["details"][0].startswith("callback_url:")
    assert "no pipeline named 'no_such_pipeline'" in unnamed["message"] and "summarize" in unnamed["message"]



async def test_text_holding_nul_runs_and_is_stored_without_it(runs_settings: Settings) -> None:
    """JSON may hold NUL, Postgres text cannot: a webhook's inputs with one, and a step
    whose output has one, run to the end instead of failing the write; a backslash
    followed by "u0000" is text, kept as it is."""
    body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "{{ inputs.text }}"})]},
            "inputs": {"text": "nul\x00here \\u0000", "goal": "a goal\x00", "key\x00": "\x00"}}
    with gateway(runs_settings) as client:
        started = await start_run(client, body)
        assert started.status_code == 202, started.text
        status = await finished(client, started.json()["status_url"])
    assert status["status"] == "succeeded", status
    assert status["result"]["output"] == {"text": "NULHERE \\U0000"}

async def test_a_stream_resumes_after_last_event_id_and_a_malformed_one_is_a_400(runs_settings: Settings) -> None:
    body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "hi"})]}}
    with gateway(runs_settings) as client:
        run = (await start_run(client, body)).json()
        await finished(client, run["status_url"])
        resumed = await collect(sse(client, run["stream_url"], **{"last-event-id": "2"}))
        malformed = await client.get(run["stream_url"], headers={"last-event-id": "zzz"})
    assert resumed and resumed[0]["data"]["seq"] == 3 and resumed[-1]["data"]["type"] == "run.succeeded"
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "Last-Event-ID"


async def test_a_cancel_asked_where_the_run_runs_stops_it_at_once_not_at_the_next_lease_renewal(
        runs_settings: Settings) -> None:
    """With a 30 s lease the renewer looks at the run every 10 s; a cancel that reaches the
    process advancing the run wakes it, and the run ends cancelled within a round trip."""
    settings = runs_settings.model_copy(update={"RUN_LEASE_SECONDS": 30.0})
    body = {"pipeline": {"steps": [python("b", "slow", arguments={"seconds": 30}, timeout=60)]}}
    with gateway(settings) as client:
        run = (await start_run(client, body)).json()
        async with asyncio.timeout(20):
            async for event in sse(client, run["stream_url"]):
                if event["event"] == "step.started":
                    await asyncio.sleep(0.5)  # well into the step, past any renewal at its start
                    asked = time.monotonic()
                    assert (await client.post(run["cancel_url"])).status_code == 202
                last = event
        took = time.monotonic() - asked
    assert last["event"] == "run.cancelled" and took < 3, took


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
    delays = [e["data"]["delay_s"] for e in events if e["type"] == "step.retrying"]
    for n, delay in enumerate(delays):  # exponential from backoff_seconds, with jitter of ±50%
        assert 0.2 * 2 ** n * 0.5 <= delay <= 0.2 * 2 ** n * 1.5
        assert started[n + 1] - started[n] >= delay  # and waited out
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


# --- workers: real subprocesses, killed for real; Redis stopped under a reader ----------------------

ORCHESITY = str(Path(sys.executable).parent / "orchesity")


@contextmanager
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([ORCHESITY, "worker"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def submit_runs(env: dict[str, str], bodies: list[dict[str, Any]]) -> tuple[Any, list[uuid.UUID]]:
    """Open services as the workers do and queue `bodies` as runs; (services, run ids)."""
    from core.runs.submit import Caller, RunRequest, submit
    from core.services import Services
    from core.settings import load_settings

    svc = await Services.open(load_settings(_env_file=None, **{k: v for k, v in env.items() if k in Settings.model_fields}))
    ids = [(await submit(svc, RunRequest.model_validate(body), caller=Caller("test"), delivery_id=None)).id for body in bodies]
    return svc, ids


async def wait_ended(svc: Any, run_ids: list[uuid.UUID], timeout: float) -> dict[uuid.UUID, dict[str, Any]]:
    from core.runs import views

    end = time.monotonic() + timeout
    while True:
        shown = {run_id: await views.describe(svc, await views.run_row(svc, run_id)) for run_id in run_ids}
        if all(run["status"] in views.FINISHED for run in shown.values()) or time.monotonic() > end:
            return shown
        await asyncio.sleep(0.1)


def effect_step(step_id: str, delay: float, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "tool", "tool": "effect", "arguments": {"delay": delay}, **fields}


async def test_a_worker_killed_mid_step_is_taken_over_and_the_side_effect_lands_once(
        worker_env: dict[str, str], effects: tuple[str, dict[str, Any]]) -> None:
    _, seen = effects
    body = {"pipeline": {"steps": [python("before", "shout", arguments={"text": "x"}),
                                   effect_step("charge", 2.0, needs=["before"]),
                                   python("after", "shout", arguments={"text": "y"}, needs=["charge"])]}}
    svc, [run_id] = await submit_runs(worker_env, [body])
    try:
        key = f"{run_id}:charge"
        with worker(worker_env) as first:
            end = time.monotonic() + 30
            while not any(r["key"] == key for r in seen["requests"]):
                assert first.poll() is None and time.monotonic() < end, "the first worker never reached the step"
                await asyncio.sleep(0.02)
            first.kill()  # SIGKILL, mid-request: no release, no checkpoint
            first.wait()
        killed = time.monotonic()
        with worker(worker_env):
            shown = (await wait_ended(svc, [run_id], timeout=30))[run_id]
        from core.progress import events_after

        events = await events_after(svc.db, svc.kv, run_id)
    finally:
        await svc.close()
    assert shown["status"] == "succeeded", shown
    requests = [r for r in seen["requests"] if r["key"] == key]
    assert len(requests) == 2 and seen["applied"][key] == 1  # sent again with the same key: applied once
    assert requests[1]["start"] - killed < float(worker_env["RUN_LEASE_SECONDS"]) + 3  # once the lease ran out
    started = [e.data["step"] for e in events if e.type == "step.started"]
    assert started == ["before", "charge", "charge", "after"]  # only the interrupted step ran again
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert next(s for s in shown["steps"] if s["id"] == "charge")["attempts"] == 2


async def test_two_workers_never_run_the_same_step(worker_env: dict[str, str],
                                                   effects: tuple[str, dict[str, Any]]) -> None:
    _, seen = effects
    body = {"pipeline": {"steps": [effect_step("one", 0.05), effect_step("two", 0.05, needs=["one"]),
                                   effect_step("three", 0.05, needs=["one"])]}}
    svc, run_ids = await submit_runs(worker_env, [body] * 20)
    try:
        with worker(worker_env), worker(worker_env):
            shown = await wait_ended(svc, run_ids, timeout=60)
    finally:
        await svc.close()
    assert all(run["status"] == "succeeded" for run in shown.values()), shown
    keys = [r["key"] for r in seen["requests"]]
    wanted = {f"{run_id}:{step}" for run_id in run_ids for step in ("one", "two", "three")}
    assert sorted(keys) == sorted(wanted)  # every step requested exactly once, by one worker


async def test_redis_stopped_mid_run_progress_goes_on_through_postgres_and_sse_sees_every_event_once(
        runs_settings: Settings, tmp_path: Path) -> None:
    from tests.servers import RedisProcess

    redis = RedisProcess(tmp_path)
    redis.start()
    steps = [python("s0", "slow", arguments={"seconds": 0.3})]
    steps += [python(f"s{i}", "slow", arguments={"seconds": 0.3}, needs=[f"s{i - 1}"]) for i in range(1, 6)]
    try:
        with gateway(runs_settings, REDIS_URL=SecretStr(redis.url), REDIS_DB=0) as client:
            run = (await start_run(client, {"pipeline": {"steps": steps}})).json()
            streamed = []
            async with asyncio.timeout(40):
                async for event in sse(client, run["stream_url"]):
                    streamed.append(event["data"])
                    if event["event"] == "step.completed" and event["data"]["data"]["step"] == "s1":
                        redis.kill()
            ended = await finished(client, run["status_url"])
            polled = await long_poll(client, run["events_url"])
    finally:
        redis.kill()
    assert ended["status"] == "succeeded"
    assert [e["seq"] for e in streamed] == list(range(1, len(streamed) + 1))
    assert streamed == polled and streamed[-1]["type"] == "run.succeeded"
    assert len([e for e in streamed if e["type"] == "step.completed"]) == 6


def test_orchesity_run_starts_a_run_and_follows_it_to_its_end(worker_env: dict[str, str], tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(json.dumps({"steps": [python("loud", "shout", arguments={"text": "{{ inputs.text }}"}),
                                              python("fail", "broken", needs=["loud"])]}))
    good = subprocess.run([ORCHESITY, "run", "--pipeline", "summarize", "--input", "text=one two three"],
                          env=worker_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    bad = subprocess.run([ORCHESITY, "run", "--pipeline", str(pipeline), "--input", "text=hello"],
                         env=worker_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    refused = subprocess.run([ORCHESITY, "run", "--pipeline", "no_such_pipeline"],
                             env=worker_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and good.stdout.startswith("succeeded"), good.stdout + good.stderr
    assert "summary_stats" in good.stderr  # the live step list
    assert bad.returncode == 1 and bad.stdout.startswith("failed: failed at step 'fail'"), bad.stdout
    assert "the tool fell over" in bad.stdout + bad.stderr
    assert refused.returncode != 0 and "no pipeline named 'no_such_pipeline'" in refused.stderr
    run_id = good.stdout.split()[1]

    def runs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ORCHESITY, "runs", *args], env=worker_env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60)

    shown, listed, cancel, unknown = runs("show", run_id), runs("list", "--limit", "200"), runs("cancel", run_id), \
        runs("show", "not-a-run")
    assert json.loads(shown.stdout)["status"] == "succeeded" and run_id[:8] in listed.stdout
    assert cancel.stdout.strip() == f"{run_id}: succeeded"  # already ended: nothing to cancel
    assert unknown.returncode != 0 and "'not-a-run' is not a run id" in unknown.stderr


async def test_a_callback_is_signed_retried_after_a_failure_and_delivered_once(
        runs_settings: Settings, db: Any) -> None:
    from sqlalchemy import text
    from standardwebhooks.webhooks import Webhook
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=503 if len(received) == 1 else 204)  # down once, then up

    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hook_url:
        callback = hook_url.replace("127.0.0.1", "localhost") + "/hook"
        body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "done"})]}, "callback_url": callback}
        with gateway(runs_settings, CALLBACK_ALLOW_HOSTS="localhost", CRON_SECRET=SecretStr("c" * 40),
                     OPEN_ACCESS=False) as client:
            run = (await start_run(client, body)).json()
            await finished(client, run["status_url"])
            end = time.monotonic() + 10
            while time.monotonic() < end:  # the first attempt, made by the advance that finished the run
                async with db.engine.begin() as conn:  # then its retry's time has come (it was 5 s away)
                    row = (await conn.execute(text(
                        "UPDATE runs SET callback_next_at = now() WHERE id = :id AND callback_attempts = 1 "
                        "RETURNING callback_status, callback_attempts, callback_error"), {"id": run["id"]})).first()
                if row is not None:
                    break
                await asyncio.sleep(0.05)
            swept = await client.post("/api/cron/sweep-runs", headers={"authorization": "Bearer " + "c" * 40})
            again = await client.post("/api/cron/sweep-runs", headers={"authorization": "Bearer " + "c" * 40})
        async with db.engine.connect() as conn:
            final = (await conn.execute(text("SELECT callback_status, callback_attempts FROM runs WHERE id = :id"),
                                        {"id": run["id"]})).one()
    assert (row.callback_status, row.callback_attempts, row.callback_error) == ("pending", 1, "HTTP 503")
    assert swept.status_code == 200 and swept.json()["callbacks_delivered"] == 1, swept.text
    assert again.json()["callbacks_delivered"] == 0 and len(received) == 2  # delivered once
    assert tuple(final) == ("delivered", 2)
    headers, payload = received[-1]
    Webhook(SECRET).verify(payload, headers)  # raises unless signed with the deployment's secret
    assert headers["webhook-id"] == received[0][0]["webhook-id"] == f"run_{run['id']}"  # stable: dedupe by it
    assert json.loads(payload) == {"type": "run.succeeded", "data": {
        "id": run["id"], "status": "succeeded", "error": None,
        "result": {"output": {"text": "DONE"}, "steps": {"a": {"text": "DONE"}}}}}


async def test_a_callback_that_could_not_be_signed_is_refused_up_front(runs_settings: Settings) -> None:
    body = {"pipeline": {"steps": [python("a", "shout", arguments={"text": "x"})]},
            "callback_url": "https://hooks.example.com/done"}
    with gateway(runs_settings, WEBHOOK_SECRETS=None) as client:
        answer = await client.post("/api/runs", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"]["details"] == [
        "callback_url: callbacks are signed with WEBHOOK_SECRETS, which this deployment does not set"]


async def test_a_run_outliving_the_inline_budget_is_released_and_the_cron_sweep_finishes_it(
        runs_settings: Settings, db: Any) -> None:
    from sqlalchemy import text

    steps = [python("a", "slow", arguments={"seconds": 0.6}), python("b", "shout", arguments={"text": "x"}, needs=["a"])]
    with gateway(runs_settings, RUN_INLINE_BUDGET_SECONDS=0.2, RUN_BACKGROUND_WORKER=False,
                 CRON_SECRET=SecretStr("c" * 40), OPEN_ACCESS=False) as client:
        run = (await start_run(client, {"pipeline": {"steps": steps}})).json()
        end = time.monotonic() + 10
        while time.monotonic() < end:  # the inline advance ends its budget once step a has ended
            async with db.engine.connect() as conn:
                held = (await conn.execute(text("SELECT status, lease_owner FROM runs WHERE id = :id"),
                                           {"id": run["id"]})).one()
            steps_done = (await client.get(run["status_url"])).json()["steps"]
            if steps_done[0]["status"] == "succeeded" and held.lease_owner is None:
                break
            await asyncio.sleep(0.05)
        swept = await client.post("/api/cron/sweep-runs", headers={"authorization": "Bearer " + "c" * 40})
        ended = (await client.get(run["status_url"])).json()
    assert held.status == "running" and held.lease_owner is None  # released at once, not left to expire
    assert [s["status"] for s in steps_done] == ["succeeded", "pending"]
    assert swept.status_code == 200 and swept.json()["runs"] == {run["id"]: "succeeded"}, swept.text
    assert ended["status"] == "succeeded" and ended["steps"][0]["attempts"] == 1  # a was not run again


async def test_sigterm_lets_the_running_step_checkpoint_then_releases_the_run(worker_env: dict[str, str]) -> None:
    from sqlalchemy import text

    from core.progress import events_after

    body = {"pipeline": {"steps": [python("a", "slow", arguments={"seconds": 1.0}),
                                   python("b", "shout", arguments={"text": "x"}, needs=["a"])]}}
    svc, [run_id] = await submit_runs(worker_env, [body])
    try:
        with worker(worker_env) as first:
            end = time.monotonic() + 30
            while not any(e.type == "step.started" for e in await events_after(svc.db, svc.kv, run_id)):
                assert time.monotonic() < end and first.poll() is None
                await asyncio.sleep(0.02)
            first.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            assert first.wait(20) == 0
        took = time.monotonic() - stopped
        async with svc.db.engine.connect() as conn:
            left = (await conn.execute(text("SELECT status, lease_owner FROM runs WHERE id = :id"), {"id": run_id})).one()
        paused = (await wait_ended(svc, [run_id], timeout=0))[run_id]
        with worker(worker_env):
            shown = (await wait_ended(svc, [run_id], timeout=30))[run_id]
        events = await events_after(svc.db, svc.kv, run_id)
    finally:
        await svc.close()
    assert took < 5 and left.status == "running" and left.lease_owner is None  # released, not left to expire
    assert [s["status"] for s in paused["steps"]] == ["succeeded", "pending"]  # a's output was checkpointed
    assert shown["status"] == "succeeded"
    assert [e.data["step"] for e in events if e.type == "step.started"] == ["a", "b"]  # nothing ran twice


async def test_a_runs_llm_steps_count_against_the_limits_of_the_key_that_started_it(runs_settings: Settings) -> None:
    from core.auth import create_key
    from core.db import Database
    from core.limits import Limits

    database = Database.from_settings(runs_settings)
    try:
        key, _ = await create_key(database, name="one-a-minute", scopes=["runs"], created_by="test",
                                  limits=Limits(requests_per_minute=1))
    finally:
        await database.close()
    ask = [{"role": "user", "content": "{{ inputs.q }}"}]
    body = {"pipeline": {"steps": [{"id": "first", "kind": "llm", "messages": ask},
                                   {"id": "second", "kind": "llm", "messages": ask, "needs": ["first"]}]},
            "inputs": {"q": "hello"}}
    with gateway(runs_settings, OPEN_ACCESS=False) as client:
        run = (await client.post("/api/runs", json=body, headers={"authorization": f"Bearer {key}"})).json()
        ended = await finished(client, run["status_url"])
    assert ended["status"] == "failed", ended
    assert [s["status"] for s in ended["steps"]] == ["succeeded", "failed"]
    assert ended["error"]["step"] == "second" and ended["error"]["type"] == "requests_per_minute"
    assert ended["error"]["message"].startswith("rate limit reached: 1 requests per minute for this key")


async def test_with_postgres_down_runs_answer_503_naming_it(open_gateway: Any) -> None:
    dead = SecretStr("postgresql://nobody:hunter2@127.0.0.1:9/none")
    body = json.dumps({"pipeline": {"steps": [python("a", "shout", arguments={"text": "x"})]}})
    async with open_gateway(DATABASE_URL=dead, WEBHOOK_SECRETS=SecretStr(SECRET),
                            ORCHESITY_TOOL_MODULES=TEST_MODULES) as gw:
        started = await gw.client.post("/api/runs", content=body, headers=sign(body))
        listed = await gw.client.get("/api/runs")
        one = await gw.client.get(f"/api/runs/{uuid.uuid4()}")
        similar = await gw.client.get("/api/runs/similar", params={"q": "anything"})
        rated = await gw.client.post(f"/api/runs/{uuid.uuid4()}/feedback", json={"rating": 4})
        planned = await gw.client.post("/api/runs", json={"goal": "plan me", "dry_run": True})
    for answer in (started, listed, one, similar, rated, planned):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable" and "hunter2" not in answer.text


async def test_postgres_killed_mid_run_the_worker_waits_it_out_and_finishes_the_run(
        worker_env: dict[str, str], tmp_path: Path) -> None:
    from core.db import Database
    from core.embedded import start_postgres
    from core.migrate import upgrade
    from core.progress import events_after

    server = start_postgres(tmp_path)  # the test's own, to kill
    database = Database(server.url)
    await upgrade(database)
    await database.close()
    env = {**worker_env, "DATABASE_URL": server.url}
    steps = [python("s0", "slow", arguments={"seconds": 0.3})]
    steps += [python(f"s{i}", "slow", arguments={"seconds": 0.3}, needs=[f"s{i - 1}"]) for i in range(1, 5)]
    svc, [run_id] = await submit_runs(env, [{"pipeline": {"steps": steps}}])
    try:
        with worker(env) as running:
            end = time.monotonic() + 30
            while sum(e.type == "step.completed" for e in await events_after(svc.db, None, run_id)) < 2:
                assert time.monotonic() < end
                await asyncio.sleep(0.05)
            pid = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # Postgres dies mid-step, and stays away for a while
            await asyncio.sleep(2.0)
            assert running.poll() is None  # the worker outlives it
            with suppress(Exception):
                server.stop()  # pgserver forgets its handle of the dead server
            server = start_postgres(tmp_path)
            shown = (await wait_ended(svc, [run_id], timeout=60))[run_id]
            events = await events_after(svc.db, None, run_id)
    finally:
        await svc.close()
        server.stop()
    assert shown["status"] == "succeeded", shown
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # nothing half-written
    completed = [e.data["step"] for e in events if e.type == "step.completed"]
    assert completed == [f"s{i}" for i in range(5)]  # each step's output recorded once
