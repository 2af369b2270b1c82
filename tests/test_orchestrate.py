"""The orchestrate function end to end: real Postgres and Redis, providers simulated or
mocked at their HTTP boundary (pytest-httpx) or served by a local fake over real TCP."""

from __future__ import annotations

import json
from collections import Counter
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core import requestlog
from core.db import Database
from core.models import RequestLog
from tests.conftest import providers_file
from tests.fake_openai import SEPARATED_WORDS, FakeOpenAI

OPENAI_URL = "https://api.openai.com/v1/chat/completions"
SIM = {"latency_ms": 1, "ms_per_token": 0, "jitter": 0, "seed": 3, "reply_tokens": 12}


def sim(name: str, priority: int = 100, **simulation: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simulated", "model": f"{name}-model", "priority": priority,
            "simulation": {**SIM, **simulation}}


def openai_first(tmp: Path) -> Path:
    """OpenAI (mocked at HTTP) tried first, a simulated backup behind it."""
    return providers_file(tmp, [
        {"name": "openai", "provider": "openai", "model": "gpt-4o-mini", "priority": 1,
         "api_key_env": "OPENAI_API_KEY"},
        sim("backup", priority=2),
    ])


def openai_reply(text: str = "Hi from OpenAI", usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    return body


async def dwa_stats(gw: Any) -> dict[str, Any]:
    orchestrator = gw.services.orchestrator
    return await orchestrator.router.stats(orchestrator.registry.names, time.time())


# --- the seed API -------------------------------------------------------------------------------


async def test_dwa_picks_logs_and_caches(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        first = await gw.client.post("/api/llm/orchestrate", json={"prompt": "Say hello", "temperature": 0})
        again = await gw.client.post("/api/llm/orchestrate", json={"prompt": "Say hello", "temperature": 0})
        seeded = await gw.client.post("/api/llm/orchestrate", json={"prompt": "Say hello", "seed": 4})
        sampled = [await gw.client.post("/api/llm/orchestrate", json={"prompt": "Say hello", "temperature": 1.5})
                   for _ in range(2)]
        stats = (await gw.client.get("/api/db/cache/stats")).json()

    assert first.status_code == 200, first.text
    body = first.json()
    result = body["results"][0]
    assert result["provider"] == "simulated" and result["response"]
    assert result["tokens_used"] > 0 and result["cached"] is False and result["error"] is None
    assert 0.0 <= result["dwa_score"] <= 1.0
    meta = body["metadata"]
    assert meta["database_logged"] is True and meta["cached_response"] is False
    assert meta["dwa_selection_reason"] == "only_available" and meta["providers_tried"] == ["simulated"]
    assert float(first.headers["x-orchesity-overhead-ms"]) >= 0
    assert body["request_id"] != again.json()["request_id"]

    hit = again.json()
    assert hit["results"][0]["cached"] is True and hit["metadata"]["cached_response"] is True
    assert hit["results"][0]["response"] == result["response"]
    assert seeded.json()["results"][0]["cached"] is False  # the seed is part of the key
    # A sampled request asks for a fresh draw every time: never cached, never looked up.
    assert [r.json()["results"][0]["cached"] for r in sampled] == [False, False]
    assert (stats["hits"], stats["misses"]) == (1, 2)


async def test_cache_options_and_clear_leaves_other_keys(open_gateway: Any) -> None:
    body = {"prompt": "Cache me", "temperature": 0, "cache": {"namespace": "docs"}}
    async with open_gateway() as gw:
        kv = gw.services.kv
        await kv.pipeline([["SET", "orchesity:not-cache", "keep"], ["SET", "someone-else:key", "keep"]])
        await gw.client.post("/api/llm/orchestrate", json=body)
        assert (await gw.client.post("/api/llm/orchestrate", json=body)).json()["results"][0]["cached"]
        no_cache = await gw.client.post("/api/llm/orchestrate", json={**body, "cache": {"namespace": "docs",
                                                                                         "no_cache": True}})
        assert no_cache.json()["results"][0]["cached"] is False
        dwa_keys_before = [k async for k in kv.scan_iter("orchesity:dwa:*")]

        cleared = await gw.client.delete("/api/db/cache/clear")
        after = await gw.client.post("/api/llm/orchestrate", json=body)

        assert cleared.status_code == 200 and cleared.json()["cleared"] >= 1
        assert after.json()["results"][0]["cached"] is False
        assert await kv.execute("MGET", "orchesity:not-cache", "someone-else:key") == ["keep", "keep"]
        assert dwa_keys_before and await kv.execute("EXISTS", *dwa_keys_before) == len(dwa_keys_before)


async def test_failover_to_the_next_provider_is_recorded(open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("flaky", 1, failure_rate=1.0, failure_mode="unavailable"),
                                     sim("steady", 2)])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/api/llm/orchestrate", json={"prompt": "fail over please"})
        stats = await dwa_stats(gw)
    body = response.json()
    assert response.status_code == 200
    assert body["results"][0]["provider"] == "steady"
    assert body["metadata"]["providers_tried"] == ["flaky", "steady"]
    assert body["metadata"]["dwa_selection_reason"] == "fallback_after_error"
    assert stats["flaky"]["consecutive_failures"] == 1 and stats["flaky"]["last_error"] == "unavailable"
    assert stats["steady"]["samples"] == 1 and stats["steady"]["consecutive_failures"] == 0


async def test_several_providers_all_and_race(open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("fast", latency_ms=1), sim("slow", latency_ms=300)])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        everything = await gw.client.post("/api/llm/orchestrate",
                                          json={"prompt": "both", "providers": ["fast", "slow"]})
        race = await gw.client.post("/api/llm/orchestrate",
                                    json={"prompt": "race", "providers": ["slow", "fast"], "mode": "race"})
        stats = await dwa_stats(gw)
    assert stats["slow"]["in_flight"] == 0  # the race's loser was cancelled, not left in flight
    assert [r["provider"] for r in everything.json()["results"]] == ["fast", "slow"]
    assert all(r["response"] and r["error"] is None for r in everything.json()["results"])
    raced = race.json()
    assert [r["provider"] for r in raced["results"]] == ["fast"]
    assert raced["metadata"]["total_response_time"] < 0.3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "   "}, 422, "prompt"),
        ({"prompt": "hi", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "hi", "temperature": 3}, 422, "temperature"),
        ({}, 422, None),
        ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 422, None),
        ({"prompt": "hi", "providers": ["nonexistent"]}, 400, "providers"),
        ({"prompt": "hi", "strategy": "intelligent"}, 422, "strategy"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(open_gateway: Any, body: dict[str, Any], status: int,
                                          param: str | None) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/api/llm/orchestrate", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if status == 400:
        assert "nonexistent" in error["message"] and "simulated" in error["message"]


async def test_a_10_mb_body_is_refused_before_it_is_read(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/api/llm/orchestrate", content=b'{"prompt": "' + b"x" * (10 * 2**20) + b'"}',
                                        headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


# --- provider HTTP at its boundary ----------------------------------------------------------------


async def test_openai_success_uses_the_reported_usage(open_gateway: Any, tmp_path: Path, httpx_mock: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    httpx_mock.add_response(url=OPENAI_URL, json=openai_reply())
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=openai_first(tmp_path),
                            DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/api/llm/orchestrate", json={"prompt": "hello", "providers": ["openai"]})
    result = response.json()["results"][0]
    assert (result["provider"], result["response"], result["tokens_used"]) == ("openai", "Hi from OpenAI", 16)
    sent = httpx_mock.get_requests()[0]
    assert sent.headers["authorization"] == "Bearer sk-test-secret-123"
    assert json.loads(sent.content)["model"] == "gpt-4o-mini"
    assert "sk-test-secret-123" not in response.text


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        ({"status_code": 429, "headers": {"retry-after": "7"}, "json": {"error": {"message": "slow down"}}},
         "rate_limited"),
        ({"status_code": 500, "json": {"error": {"message": "boom"}}}, "unavailable"),
        ({"status_code": 200, "content": b"{not json", "headers": {"content-type": "application/json"}},
         "bad_response"),
        (None, "timeout"),
    ],
)
async def test_retryable_provider_failures_fail_over(open_gateway: Any, tmp_path: Path, httpx_mock: Any,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     reply: dict[str, Any] | None, error_class: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    if reply is None:
        httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=OPENAI_URL)
    else:
        httpx_mock.add_response(url=OPENAI_URL, **reply)
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=openai_first(tmp_path),
                            DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/api/llm/orchestrate", json={"prompt": "hello"})
        stats = await dwa_stats(gw)
    body = response.json()
    assert response.status_code == 200
    assert body["results"][0]["provider"] == "backup"
    assert body["metadata"]["providers_tried"] == ["openai", "backup"]
    assert stats["openai"]["last_error"] == error_class
    if error_class == "rate_limited":  # a cooldown until Retry-After, not an outage
        assert stats["openai"]["rate_limited_until"] > time.time() + 5
        assert stats["openai"]["consecutive_failures"] == 0
    else:
        assert stats["openai"]["consecutive_failures"] == 1


async def test_a_provider_400_goes_back_to_the_caller(open_gateway: Any, tmp_path: Path, httpx_mock: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    httpx_mock.add_response(url=OPENAI_URL, status_code=400,
                            json={"error": {"message": "max_tokens is too large for this model",
                                            "type": "invalid_request_error"}})
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=openai_first(tmp_path),
                            DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/api/llm/orchestrate", json={"prompt": "hello"})
        stats = await dwa_stats(gw)
    assert response.status_code == 400
    assert "max_tokens is too large" in response.json()["error"]["message"]
    assert response.json()["metadata"]["providers_tried"] == ["openai"]
    assert stats["openai"]["consecutive_failures"] == 0  # the request's fault, not the provider's


async def test_rate_limit_retry_after_is_honoured_within_the_deadline(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    httpx_mock.add_response(url=OPENAI_URL, status_code=429, headers={"retry-after-ms": "50"},
                            json={"error": {"message": "slow down"}})
    httpx_mock.add_response(url=OPENAI_URL, json=openai_reply("after waiting"))
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=openai_first(tmp_path)) as gw:
        response = await gw.client.post("/api/llm/orchestrate",
                                        json={"prompt": "hello", "providers": ["openai"], "timeout": 5})
    body = response.json()
    assert body["results"][0]["response"] == "after waiting"
    assert body["metadata"]["providers_tried"] == ["openai", "openai"]


async def test_a_rate_limited_fleet_answers_429_with_retry_after_and_keeps_the_cooldown(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After longer than RATE_LIMIT_MAX_WAIT_SECONDS goes back to the caller at
    once, as a 429 with Retry-After (which the OpenAI SDK waits out by itself), not a
    502 after sleeping it out; until then the deployment is not called again, whether
    the DWA picks it or the request names it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    httpx_mock.add_response(url=OPENAI_URL, status_code=429, headers={"retry-after": "30"},
                            json={"error": {"message": "slow down"}})
    only = providers_file(tmp_path, [{"name": "openai", "provider": "openai", "model": "gpt-4o-mini",
                                      "api_key_env": "OPENAI_API_KEY"}])
    chat = {"messages": [{"role": "user", "content": "hello"}]}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=only) as gw:
        first = await gw.client.post("/v1/chat/completions", json={"model": "auto", **chat})
        routed = await gw.client.post("/v1/chat/completions", json={"model": "auto", **chat})
        named = await gw.client.post("/api/llm/orchestrate", json={"prompt": "hello", "providers": ["openai"]})
    assert [r.status_code for r in (first, routed, named)] == [429] * 3
    assert first.json()["error"]["type"] == "rate_limit_exceeded" and "slow down" in first.json()["error"]["message"]
    assert [int(r.headers["retry-after"]) for r in (first, routed, named)] == sorted(
        [int(r.headers["retry-after"]) for r in (first, routed, named)], reverse=True)
    assert 25 <= int(named.headers["retry-after"]) <= 30
    assert len(httpx_mock.get_requests()) == 1  # the cooldown was kept


# --- streams, over a real socket ------------------------------------------------------------------


def fake_pair(tmp: Path, base_url: str, first_model: str) -> Path:
    return providers_file(tmp, [
        {"name": "fake", "base_url": base_url, "model": first_model, "priority": 1},
        sim("backup", priority=2),
    ])


async def sse(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_stream_cut_before_the_first_token_fails_over(open_gateway: Any, tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        path = fake_pair(tmp_path, server.base_url, "cut-before-first-token")
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            response = await gw.client.post("/v1/chat/completions", json={
                "model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
            stats = await dwa_stats(gw)
    events = await sse(response)
    assert response.status_code == 200 and response.headers["x-orchesity-provider"] == "backup"
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    assert stats["fake"]["consecutive_failures"] == 1 and stats["fake"]["last_error"] == "stream_cut"


async def test_stream_cut_after_the_first_token_ends_with_an_error_event(open_gateway: Any,
                                                                         tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        path = fake_pair(tmp_path, server.base_url, "cut-after-first-token")
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            response = await gw.client.post("/v1/chat/completions", json={
                "model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
            stats = await dwa_stats(gw)
    events = await sse(response)
    assert events[0]["choices"][0]["delta"]["content"]
    assert "[DONE]" not in events and events[-1]["error"]["code"] == "stream_cut"
    assert stats["fake"]["consecutive_failures"] == 1


async def test_a_stream_whose_first_token_is_overdue_fails_over_long_before_the_provider_timeout(
        open_gateway: Any, tmp_path: Path) -> None:
    """STREAM_FIRST_TOKEN_TIMEOUT "auto": once a deployment has streamed, a stream it
    accepts and then leaves silent is another deployment's after a few of its usual
    first-token times (at least 2 s), not after its 30 s timeout."""
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with FakeOpenAI() as server:
        path = providers_file(tmp_path, [
            {"name": "fake", "base_url": server.base_url, "model": "ok", "priority": 1, "timeout_seconds": 30},
            sim("backup", priority=2)])
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            for _ in range(3):  # its first tokens come in milliseconds
                response = await gw.client.post("/v1/chat/completions", json=body)
                assert response.headers["x-orchesity-provider"] == "fake"
            server.hang = True  # from now on it accepts calls and sends nothing
            started = time.perf_counter()
            response = await gw.client.post("/v1/chat/completions", json=body)
            waited = time.perf_counter() - started
            stats = await dwa_stats(gw)
    events = await sse(response)
    assert response.status_code == 200 and response.headers["x-orchesity-provider"] == "backup"
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0
    assert waited < 10, waited  # the 2 s floor and the backup's reply, not fake's 30 s timeout
    assert stats["fake"]["last_error"] == "timeout" and stats["fake"]["consecutive_failures"] == 1


async def test_a_deployments_first_token_timeout_applies_while_another_can_answer_and_never_to_the_last(
        open_gateway: Any, tmp_path: Path) -> None:
    """first_token_timeout_seconds in the providers file, before any history: a silent
    stream fails over after it; the only deployment left is given its whole timeout."""
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with FakeOpenAI() as server:
        path = providers_file(tmp_path, [
            {"name": "fake", "base_url": server.base_url, "model": "slow:1", "priority": 1,
             "first_token_timeout_seconds": 0.2},
            sim("backup", priority=2)])
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            failed_over = await gw.client.post("/v1/chat/completions", json=body)
            between = (await dwa_stats(gw))["fake"]
            alone = await gw.client.post("/v1/chat/completions", json={**body, "model": "fake"})
    assert failed_over.headers["x-orchesity-provider"] == "backup"
    assert between["last_error"] == "timeout" and between["consecutive_failures"] == 1
    assert alone.status_code == 200 and alone.headers["x-orchesity-provider"] == "fake"
    assert (await sse(alone))[-1] == "[DONE]"  # waited out its 1 s first token


@pytest.mark.parametrize("model, stream", [("endless", False), ("gzip-bomb", False), ("endless-event", True),
                                           ("endless-error", True)])
async def test_a_reply_past_the_size_limit_is_cut_off_and_the_call_fails_over(
        open_gateway: Any, tmp_path: Path, model: str, stream: bool) -> None:
    """An upstream that sends without end (or a small gzip that decodes to 64 MiB, a
    stream event that never ends, an error status to a stream with a body without end:
    the openai SDK read that whole) is cut off at PROVIDER_MAX_REPLY_BYTES: the call goes
    to the next deployment and, asked for by name, fails naming the setting, instead of
    the gateway buffering until the provider timeout."""
    body = {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    with FakeOpenAI() as server:
        path = fake_pair(tmp_path, server.base_url, model)
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority",
                                PROVIDER_MAX_REPLY_BYTES=1024 * 1024) as gw:
            failed_over = await gw.client.post("/v1/chat/completions", json=body)
            stats = await dwa_stats(gw)
            named = await gw.client.post("/v1/chat/completions", json={**body, "model": "fake"})
    assert failed_over.status_code == 200 and failed_over.headers["x-orchesity-provider"] == "backup"
    assert stats["fake"]["last_error"] == "bad_response"
    error = named.json()["error"]  # a stream that failed before its first token: a JSON error too
    assert error["code"] == "bad_response" and "PROVIDER_MAX_REPLY_BYTES" in error["message"], error


async def test_stream_text_holding_unicode_line_separators_arrives_whole(open_gateway: Any, tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 inside a stream's JSON, unescaped (vLLM's and Node's
    encoders leave them so), with event lines ending in CRLF and CR: each event is
    split where SSE says lines end, and the text arrives as the model wrote it."""
    with FakeOpenAI() as server:
        path = fake_pair(tmp_path, server.base_url, "line-separators")
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            response = await gw.client.post("/v1/chat/completions", json={
                "model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200 and response.headers["x-orchesity-provider"] == "fake"
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.split("\n\n")
              if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) \
        == "".join(SEPARATED_WORDS)


# --- the request log ------------------------------------------------------------------------------


async def log_rows(db: Database, request_ids: list[str]) -> int:
    async with db.engine.connect() as conn:
        query = select(func.count()).select_from(RequestLog).where(
            RequestLog.request_id.in_(request_ids), RequestLog.final.is_(True))
        return (await conn.execute(query)).scalar_one()


async def test_every_request_reaches_postgres_after_a_drain(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        ids = []
        for i in range(5):
            response = await gw.client.post("/api/llm/orchestrate", json={"prompt": f"log me {i}", "temperature": 0})
            ids.append(response.json()["request_id"])
        ids.append((await gw.client.post("/api/llm/orchestrate", json={"prompt": "log me 0", "temperature": 0})).json()["request_id"])
        assert await log_rows(gw.services.db, ids) == 0  # queued in Redis, not yet in Postgres
        moved = await requestlog.drain(gw.services.kv, gw.services.db)
        assert moved >= 6 and await log_rows(gw.services.db, ids) == 6
        assert await requestlog.drain(gw.services.kv, gw.services.db) == 0
        recent = (await gw.client.get("/api/db/requests/recent", params={"limit": 6})).json()["requests"]
        stats = (await gw.client.get("/api/db/stats")).json()
    assert {r["request_id"] for r in recent} == set(ids)
    assert any(r["cached"] for r in recent)
    assert stats["total_requests"] >= 6 and stats["providers"]["simulated"]["attempts"] >= 5


async def test_no_record_is_lost_when_postgres_is_down_during_requests(open_gateway: Any,
                                                                       settings: Any) -> None:
    from pydantic import SecretStr

    dead = SecretStr("postgresql://nobody:pw@127.0.0.1:9/none")
    async with open_gateway(DATABASE_URL=dead) as gw:
        ids = []
        for i in range(4):
            response = await gw.client.post("/api/llm/orchestrate", json={"prompt": f"pg is down {i}"})
            assert response.status_code == 200 and response.json()["metadata"]["database_logged"] is True
            ids.append(response.json()["request_id"])
        kv = gw.services.kv
        with pytest.raises(Exception):  # draining now fails and keeps the records
            await requestlog.drain(kv, gw.services.db)
        assert await requestlog.pending(kv) >= 4
        back = Database.from_settings(settings)  # Postgres is back
        try:
            await requestlog.drain(kv, back)
            assert await log_rows(back, ids) == 4
        finally:
            await back.close()


async def test_without_redis_requests_are_logged_straight_to_postgres(open_gateway: Any) -> None:
    async with open_gateway(REDIS_ENABLED=False) as gw:
        before = (await dwa_stats(gw))["simulated"]["samples"]  # Postgres outlives a test; Redis does not
        response = await gw.client.post("/api/llm/orchestrate", json={"prompt": "no redis"})
        again = await gw.client.post("/api/llm/orchestrate", json={"prompt": "no redis"})
        assert response.status_code == 200 and response.json()["metadata"]["database_logged"] is True
        assert again.json()["results"][0]["cached"] is False  # no cache without Redis
        assert await log_rows(gw.services.db, [response.json()["request_id"]]) == 1
        stats = await dwa_stats(gw)
    assert stats["simulated"]["samples"] == before + 2  # DWA state kept in Postgres


# --- what a request names ---------------------------------------------------------------------


async def test_a_model_name_reaches_the_deployments_serving_it(open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [{**sim("east"), "model": "shared-model"},
                                     {**sim("west"), "model": "shared-model"}, sim("other")])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        served = [await gw.client.post("/v1/chat/completions", json={
            "model": "shared-model", "messages": [{"role": "user", "content": f"hi {i}"}]}) for i in range(6)]
    assert {r.status_code for r in served} == {200}
    assert {r.json()["orchesity"]["provider"] for r in served} <= {"east", "west"}


@pytest.mark.parametrize(("body", "setting"), [
    ({"prompt": "hi", "providers": ["openai"]}, "OPENAI_API_KEY"),
    ({"prompt": "hi", "providers": ["claude-3-5-haiku-latest"]}, "ANTHROPIC_API_KEY"),
])
async def test_an_unconfigured_provider_says_which_setting_enables_it(
        open_gateway: Any, body: dict[str, Any], setting: str) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/api/llm/orchestrate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert setting in error["message"] and "ORCHESITY_PROVIDERS_FILE" in error["message"]
    assert error["param"] == "providers" and error["code"] == "unknown_provider"


async def test_a_race_answer_is_not_served_for_mode_all(open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("fast", latency_ms=1), sim("slow", latency_ms=50)])
    body = {"prompt": "same words", "providers": ["fast", "slow"], "temperature": 0}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        raced = await gw.client.post("/api/llm/orchestrate", json={**body, "mode": "race"})
        everything = await gw.client.post("/api/llm/orchestrate", json={**body, "mode": "all"})
        again = await gw.client.post("/api/llm/orchestrate", json={**body, "mode": "all"})
    assert len(raced.json()["results"]) == 1
    assert everything.json()["metadata"]["cached_response"] is False
    assert [r["provider"] for r in everything.json()["results"]] == ["fast", "slow"]
    assert again.json()["metadata"]["cached_response"] is True and len(again.json()["results"]) == 2


@pytest.mark.parametrize(("mode", "cached"), [("all", True), ("off", False)])
async def test_cache_mode_setting(open_gateway: Any, mode: str, cached: bool) -> None:
    body = {"prompt": "sampled", "temperature": 1.5}
    async with open_gateway(CACHE_MODE=mode) as gw:
        await gw.client.post("/api/llm/orchestrate", json=body)
        again = await gw.client.post("/api/llm/orchestrate", json=body)
        zero = [await gw.client.post("/api/llm/orchestrate", json={"prompt": "z", "temperature": 0})
                for _ in range(2)]
    assert again.json()["metadata"]["cached_response"] is cached
    assert zero[1].json()["metadata"]["cached_response"] is cached


LOGPROBS = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]


async def test_logprobs_come_back_plain_and_streamed(open_gateway: Any, tmp_path: Path, httpx_mock: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    reply = openai_reply("Hi")
    reply["choices"][0]["logprobs"] = {"content": LOGPROBS, "refusal": None}
    httpx_mock.add_response(url=OPENAI_URL, json=reply)
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None,
                          "logprobs": {"content": LOGPROBS, "refusal": None}}]}
    last = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    events = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (chunk, last)) + b"data: [DONE]\n\n"
    httpx_mock.add_response(url=OPENAI_URL, content=events, headers={"content-type": "text/event-stream"})
    request = {"model": "openai", "logprobs": True, "messages": [{"role": "user", "content": "hi"}]}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=openai_first(tmp_path)) as gw:
        plain = await gw.client.post("/v1/chat/completions", json=request)
        streamed = await gw.client.post("/v1/chat/completions", json={**request, "stream": True})
    assert json.loads(httpx_mock.get_requests()[0].content)["logprobs"] is True
    assert plain.json()["choices"][0]["logprobs"]["content"] == LOGPROBS
    deltas = [e for e in await sse(streamed) if e != "[DONE]" and e["choices"]]
    assert deltas[0]["choices"][0]["logprobs"]["content"] == LOGPROBS


async def test_streams_are_routed_on_time_to_first_token(open_gateway: Any, tmp_path: Path) -> None:
    """`early`: first token at once, then slow; `late`: a long wait, then the whole reply.
    A plain call is quicker on `late`, a stream's first token on `early`: each kind of
    request goes where it is served best."""
    path = providers_file(tmp_path, [
        {"name": "early", "kind": "simulated", "simulation": {"latency_ms": 2, "ms_per_token": 4, "jitter": 0,
                                                              "reply_tokens": 40, "seed": 1}},
        {"name": "late", "kind": "simulated", "simulation": {"latency_ms": 60, "ms_per_token": 0, "jitter": 0,
                                                             "reply_tokens": 40, "seed": 2}}])
    picked: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="latency") as gw:
        for i in range(24):
            for stream in (True, False):
                body = {"model": "auto", "messages": [{"role": "user", "content": f"q {i} {stream}"}],
                        "stream": stream}
                answer = await gw.client.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                picked[stream][answer.headers["x-orchesity-provider"]] += 1
    assert picked[True]["early"] >= 18, picked  # streams: the quick first token
    assert picked[False]["late"] >= 18, picked  # plain calls: the quick whole answer


async def test_long_streams_that_are_answering_do_not_count_against_their_provider(
        gateway_settings: Any, tmp_path: Path) -> None:
    """`writer` answers short calls in 70 ms; three long stories stream from it for
    seconds, far past its usual latency. Their tokens are coming, so they are answers in
    progress, not failures in progress: the short calls sent meanwhile still go to
    `writer`, not to the four-times slower `other` (before: every one went to `other`)."""
    import asyncio

    from functions.gateway import build_app
    from tests.servers import serve

    path = providers_file(tmp_path, [
        sim("writer", latency_ms=20, ms_per_token=5, reply_tokens=800),
        sim("other", latency_ms=250, ms_per_token=5, reply_tokens=800)])
    settings = gateway_settings.model_copy(update={"ORCHESITY_PROVIDERS_FILE": path,
                                                   "DWA_ROUTING_STRATEGY": "latency"})

    def short(model: str, i: int) -> dict[str, Any]:
        return {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": f"short {i}"}]}

    with serve(build_app(settings=settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for i in range(6):
                for model in ("writer", "other"):
                    assert (await client.post("/v1/chat/completions", json=short(model, i))).status_code == 200

            async def story(i: int, opened: asyncio.Event, done: asyncio.Event) -> int:
                body = {"model": "writer", "stream": True, "messages": [{"role": "user", "content": f"story {i}"}]}
                chunks = 0
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_lines():
                        chunks += 1
                        opened.set()
                        if done.is_set():
                            break
                return chunks

            done = asyncio.Event()
            opened = [asyncio.Event() for _ in range(3)]
            stories = [asyncio.create_task(story(i, opened[i], done)) for i in range(3)]
            for event in opened:
                await asyncio.wait_for(event.wait(), 5)
            await asyncio.sleep(1.5)  # every story now runs far past writer's usual 70 ms
            picked = Counter()
            for i in range(8):
                answer = await client.post("/v1/chat/completions", json=short("auto", 100 + i))
                assert answer.status_code == 200, answer.text
                picked[answer.headers["x-orchesity-provider"]] += 1
            done.set()
            assert all(chunks > 10 for chunks in await asyncio.gather(*stories))
    assert picked["writer"] == 8, picked


async def test_long_replies_asked_for_do_not_count_against_their_provider(
        gateway_settings: Any, tmp_path: Path) -> None:
    """The same, not streamed: four whole stories of up to 1,500 tokens run for
    seconds at `writer`, which answers short calls in 70 ms. They asked for that long a
    reply, so they are not late yet, and the short calls meanwhile stay on `writer`
    (before: 3 of 8 went to `other`)."""
    import asyncio

    from functions.gateway import build_app
    from tests.servers import serve

    path = providers_file(tmp_path, [
        sim("writer", latency_ms=20, ms_per_token=5, reply_tokens=800),
        sim("other", latency_ms=250, ms_per_token=5, reply_tokens=800)])
    settings = gateway_settings.model_copy(update={"ORCHESITY_PROVIDERS_FILE": path,
                                                   "DWA_ROUTING_STRATEGY": "latency"})

    def ask(model: str, prompt: str, tokens: int) -> dict[str, Any]:
        return {"model": model, "max_tokens": tokens, "messages": [{"role": "user", "content": prompt}]}

    with serve(build_app(settings=settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for i in range(6):
                for model in ("writer", "other"):
                    assert (await client.post("/v1/chat/completions", json=ask(model, f"short {i}", 10))
                            ).status_code == 200
            stories = [asyncio.create_task(client.post("/v1/chat/completions",
                                                       json=ask("writer", f"story {i}", 1500)))
                       for i in range(4)]
            await asyncio.sleep(1.5)  # far past writer's usual 70 ms
            picked = Counter()
            for i in range(8):
                answer = await client.post("/v1/chat/completions", json=ask("auto", f"short {100 + i}", 10))
                assert answer.status_code == 200, answer.text
                picked[answer.headers["x-orchesity-provider"]] += 1
            told = [(await story).json()["usage"]["completion_tokens"] for story in stories]
    assert min(told) > 300, told  # they were long
    assert picked["writer"] == 8, picked


async def test_streams_hanging_before_their_first_token_send_the_next_ones_elsewhere(
        gateway_settings: Any, tmp_path: Path) -> None:
    """`fake` starts a stream within milliseconds and trickles it over 2.4 s; `backup`
    starts in 300 ms. Then `fake` hangs, sending nothing. 1.5 s into three streams
    waiting on it (far past its usual first token, not past its usual whole stream),
    they count as failures in progress, and the next streams go to `backup` without
    trying `fake` (before: judged against the whole streams' 2.4 s, they went to `fake`)."""
    import asyncio

    from functions.gateway import build_app
    from tests.servers import serve

    with FakeOpenAI() as server:
        path = providers_file(tmp_path, [{"name": "fake", "base_url": server.base_url, "model": "trickle:0.4"},
                                         sim("backup", latency_ms=300)])
        settings = gateway_settings.model_copy(update={"ORCHESITY_PROVIDERS_FILE": path,
                                                       "DWA_ROUTING_STRATEGY": "latency"})

        def story(model: str, i: int, timeout: float) -> dict[str, Any]:
            return {"model": model, "stream": True, "timeout": timeout,
                    "messages": [{"role": "user", "content": f"story {i}"}]}

        with serve(build_app(settings=settings)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                async def told(model: str, i: int, timeout: float = 20) -> str:
                    response = await client.post("/v1/chat/completions", json=story(model, i, timeout))
                    assert response.status_code == 200 and "[DONE]" in response.text, response.text
                    return response.headers["x-orchesity-provider"]

                await asyncio.gather(*(told(model, i) for i in range(6) for model in ("fake", "backup")))
                server.hang = True
                sent = len(server.requests)
                hanging = [asyncio.create_task(told("auto", 100 + i, 6)) for i in range(3)]
                while len(server.requests) < sent + 3:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.5)
                after = [await told("auto", 200 + i) for i in range(4)]
                reached_fake = len(server.requests) - sent
                for task in hanging:
                    task.cancel()
                await asyncio.gather(*hanging, return_exceptions=True)
    assert after == ["backup"] * 4
    assert reached_fake == 3  # only the three that were hanging already


async def test_the_deployment_a_call_fails_over_to_is_not_taken_for_one_hanging_since_the_request_began(
        open_gateway: Any, tmp_path: Path) -> None:
    """`a` answers in milliseconds and `b` in 0.8 s; then `a` hangs until its 1.5 s
    timeout and the call fails over to `b`. While `b` answers it, `b` is a call 0 s old,
    not one running since the request began 1.5 s ago: far past `b`'s usual 0.8 s, that
    would count as a failure in progress and mark down the deployment serving the caller."""
    import asyncio

    with FakeOpenAI() as server_a, FakeOpenAI() as server_b:
        path = providers_file(tmp_path, [
            {"name": "a", "base_url": server_a.base_url, "model": "ok", "timeout_seconds": 1.5},
            {"name": "b", "base_url": server_b.base_url, "model": "slow:0.8"}])
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="latency") as gw:
            for model in ("a", "b") * 3:
                response = await gw.client.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "warm up"}]})
                assert response.status_code == 200
            server_a.hang = True
            call = asyncio.create_task(gw.client.post("/v1/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": "fail me over"}]}))
            while len(server_b.requests) < 4:  # the failover reached b
                await asyncio.sleep(0.01)
            during = (await dwa_stats(gw))["b"]
            response = await call
    assert response.status_code == 200 and response.headers["x-orchesity-provider"] == "b"
    assert during["in_flight"] == 1 and during["availability"] > 0.9, during


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_call_asking_for_a_low_p95_goes_to_the_steady_deployment(
        gateway_settings: Any, tmp_path: Path, stream: bool) -> None:
    """`spread` answers (streams: starts) in 50 ms on average but anywhere from 3 to 98
    ms; `steady` takes 70 ms, give or take 1. On the mean, calls go to `spread`; a call
    that asks for `latency_quantile: 0.95` goes to `steady`, whose p95 is the lower. Out
    of range, it is a 422 naming the field."""
    from functions.gateway import build_app
    from tests.servers import serve

    path = providers_file(tmp_path, [sim("spread", latency_ms=50, jitter=0.95, seed=5),
                                     sim("steady", latency_ms=70, jitter=0.02, seed=6)])
    settings = gateway_settings.model_copy(update={"ORCHESITY_PROVIDERS_FILE": path,
                                                   "DWA_ROUTING_STRATEGY": "latency"})

    def ask(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream, **extra}

    async def routed(**extra: Any) -> Counter[str]:
        picked: Counter[str] = Counter()
        for i in range(8):
            answer = await client.post("/v1/chat/completions", json=ask("auto", f"{extra} {i}", **extra))
            assert answer.status_code == 200, answer.text
            picked[answer.headers["x-orchesity-provider"]] += 1
        return picked

    with serve(build_app(settings=settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for i in range(20):
                for model in ("spread", "steady"):
                    assert (await client.post("/v1/chat/completions", json=ask(model, f"warm {i}"))
                            ).status_code == 200
            on_mean = await routed()
            on_p95 = await routed(latency_quantile=0.95)
            wrong = await client.post("/v1/chat/completions", json=ask("auto", "hi", latency_quantile=0.3))
    assert on_mean["spread"] == 8, on_mean
    assert on_p95["steady"] == 8, on_p95
    assert wrong.status_code == 422, wrong.text
    assert "latency_quantile" in wrong.text and wrong.json()["error"]


async def test_a_request_one_protocol_cannot_express_goes_to_a_deployment_that_can(
        open_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic's Messages API has no response_format: a structured-output request the
    DWA sends there first is answered by the next deployment, and the native one is not
    held to have failed; asked for by name, it is a 400 naming the field."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    path = providers_file(tmp_path, [
        {"name": "claude", "provider": "anthropic", "priority": 1, "api_key_env": "ANTHROPIC_API_KEY"},
        sim("backup", priority=2)])
    body = {"messages": [{"role": "user", "content": "colours, as JSON"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "colours", "schema": {
            "type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}}},
            "required": ["colours"]}}}}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        routed = await gw.client.post("/v1/chat/completions", json={"model": "auto", **body})
        named = await gw.client.post("/v1/chat/completions", json={"model": "claude", **body})
        stats = await dwa_stats(gw)
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-orchesity-provider"] == "backup"
    assert json.loads(routed.json()["choices"][0]["message"]["content"])["colours"] is not None
    assert named.status_code == 400 and "response_format" in named.json()["error"]["message"]
    assert stats["claude"]["failures"] == 0 and stats["claude"]["circuit_state"] == "closed"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_reply_saying_no_request_is_left_rests_the_deployment_before_any_429(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-limits")
    limits = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "0",
              "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-remaining-tokens": "90000"}
    if stream:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
        last = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        events = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (chunk, last)) + b"data: [DONE]\n\n"
        httpx_mock.add_response(url=OPENAI_URL, content=events,
                                headers={"content-type": "text/event-stream", **limits})
    else:
        httpx_mock.add_response(url=OPENAI_URL, json=openai_reply(), headers=limits)
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=openai_first(tmp_path),
                            DWA_ROUTING_STRATEGY="priority") as gw:
        first = await gw.client.post("/v1/chat/completions", json={"model": "auto", "stream": stream, "messages": [
            {"role": "user", "content": "first"}]})
        assert first.status_code == 200 and "Hi" in first.text
        after = [await gw.client.post("/v1/chat/completions", json={"model": "auto", "messages": [
            {"role": "user", "content": f"and then {i}"}]}) for i in range(3)]
        stats = await dwa_stats(gw)
    assert first.headers["x-orchesity-provider"] == "openai"
    assert [r.headers["x-orchesity-provider"] for r in after] == ["backup"] * 3  # not one 429 met
    assert len(httpx_mock.get_requests()) == 1
    assert stats["openai"]["rate_limited_until"] == pytest.approx(time.time() + 360, abs=30)
    assert stats["openai"]["rate_limited"] == 0 and stats["openai"]["failures"] == 0


async def test_a_hedged_request_is_answered_by_a_second_deployment_when_the_first_is_slow(
        open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("slowpoke", priority=1, latency_ms=1500), sim("quick", priority=2)])
    body = {"model": "auto", "messages": [{"role": "user", "content": "hedge me"}], "cache": {"no_cache": True}}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        hedged = await gw.client.post("/v1/chat/completions", json={**body, "hedge_after_ms": 50})
        plain = await gw.client.post("/v1/chat/completions", json=body)
        stats = await dwa_stats(gw)
        bad = await gw.client.post("/v1/chat/completions", json={**body, "hedge_after_ms": 0})
        streamed = await gw.client.post("/v1/chat/completions", json={**body, "hedge_after_ms": 50, "stream": True})
        vague = await gw.client.post("/v1/chat/completions", json={**body, "hedge_after_ms": "soon"})
    assert hedged.status_code == 200, hedged.text
    assert hedged.headers["x-orchesity-provider"] == "quick"
    assert hedged.json()["orchesity"]["dwa_selection_reason"] == "hedged"
    assert plain.headers["x-orchesity-provider"] == "slowpoke"  # off by default: the first pick answers
    assert stats["slowpoke"]["failures"] == 0 and stats["slowpoke"]["in_flight"] == 0  # cancelled, not failed
    assert bad.status_code in (400, 422) and "hedge_after_ms" in bad.text
    assert streamed.status_code in (400, 422) and "not streams" in streamed.text  # refused, not silently unhedged
    assert vague.status_code in (400, 422) and 'milliseconds (1 to 600000), or \\"auto\\"' in vague.text


@pytest.mark.parametrize("path, body", [
    ("/v1/messages", {"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": "hedge me"}]}),
    ("/v1/responses", {"model": "auto", "input": "hedge me"}),
], ids=["messages", "responses"])
async def test_the_messages_and_responses_apis_take_the_same_routing_fields(
        open_gateway: Any, tmp_path: Path, path: str, body: dict[str, Any]) -> None:
    """hedge_after_ms, latency_quantile, strategy, cache and timeout mean on Anthropic's
    and OpenAI's newer APIs what they mean on chat completions, and are refused alike."""
    providers = providers_file(tmp_path, [sim("slowpoke", priority=1, latency_ms=1500), sim("quick", priority=2)])
    body = {**body, "cache": {"no_cache": True}}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=providers) as gw:
        hedged = await gw.client.post(path, json={**body, "strategy": "priority", "hedge_after_ms": 50})
        ranked = await gw.client.post(path, json={**body, "latency_quantile": 0.95, "timeout": 30})
        streamed = await gw.client.post(path, json={**body, "hedge_after_ms": 50, "stream": True})
        vague = await gw.client.post(path, json={**body, "latency_quantile": 2})
    assert hedged.status_code == 200, hedged.text
    assert hedged.headers["x-orchesity-provider"] == "quick"  # priority picked slowpoke; the hedge answered
    assert ranked.status_code == 200, ranked.text
    assert streamed.status_code in (400, 422) and "not streams" in streamed.text  # each API's validation status
    assert vague.status_code in (400, 422) and "latency_quantile" in vague.text
