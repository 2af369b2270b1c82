"""Faults a deployed gateway meets: clients that vanish, deadlines callers choose,
Redis or Postgres failing under it. Each must be survived with nothing lost."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from core import requestlog
from core.settings import Settings
from functions.gateway import build_app
from tests.conftest import providers_file
from tests.servers import serve


async def _wait_for_row(kv: Any, request_id: str, deadline_s: float = 5.0) -> dict[str, Any] | None:
    """The queued request-log record of `request_id`, once it is in the Redis stream."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for _, fields in await kv.xrange(requestlog.STREAM):
            entry = json.loads(fields["e"])
            if entry["request_id"] == request_id:
                return entry
        await asyncio.sleep(0.02)
    return None


async def test_a_client_that_disconnects_mid_stream_still_gets_its_log_record(
        gateway_settings: Settings, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [{"name": "slow", "kind": "simulated", "simulation": {
        "latency_ms": 1, "ms_per_token": 20, "jitter": 0, "reply_tokens": 200, "seed": 1}}])
    settings = gateway_settings.model_copy(update={"ORCHESITY_PROVIDERS_FILE": path})
    with serve(build_app(settings=settings)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            async with client.stream("POST", "/v1/chat/completions", json={
                    "model": "slow", "stream": True,
                    "messages": [{"role": "user", "content": "a long story"}]}) as response:
                request_id = response.headers["x-orchesity-request-id"]
                async for _ in response.aiter_bytes():
                    break  # the first chunk, then hang up
        from core.kv import open_kv

        kv = open_kv(settings)
        try:
            row = await _wait_for_row(kv, request_id)
        finally:
            await kv.close()
    assert row is not None, "no request-log record for a stream the client abandoned"
    assert row["status"] == "error" and row["error_class"] == "client_disconnected"


def _sim(name: str, priority: int = 100, **simulation: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simulated", "priority": priority,
            "simulation": {"latency_ms": 30, "ms_per_token": 0, "jitter": 0, "seed": 2, **simulation}}


async def test_a_callers_short_deadline_does_not_open_a_healthy_providers_circuit(
        open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [_sim("healthy", 1), _sim("other", 2)])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        hurried = [await gw.client.post("/api/llm/orchestrate", json={
            "prompt": f"quick {i}", "providers": ["healthy"], "timeout": 0.001}) for i in range(10)]
        orchestrator = gw.services.orchestrator
        stats = await orchestrator.router.stats(orchestrator.registry.names, time.time())
        after = [await gw.client.post("/api/llm/orchestrate", json={"prompt": f"calm {i}"}) for i in range(5)]
    assert {r.status_code for r in hurried} == {504}
    error = hurried[0].json()["error"]
    assert error["code"] == "deadline_exceeded" and "deadline" in error["message"]
    assert stats["healthy"]["circuit_state"] == "closed"
    assert stats["healthy"]["consecutive_failures"] == 0 and stats["healthy"]["failures"] == 0
    assert [r.json()["results"][0]["provider"] for r in after] == ["healthy"] * 5


async def test_a_caller_cannot_ask_for_more_time_than_the_operator_allows(
        open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [_sim("slow", latency_ms=1500)])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, REQUEST_TIMEOUT_SECONDS=0.2) as gw:
        started = time.perf_counter()
        response = await gw.client.post("/api/llm/orchestrate", json={"prompt": "take your time",
                                                                      "timeout": 600})
        elapsed = time.perf_counter() - started
    assert response.status_code == 504, response.text
    assert elapsed < 1.0  # the operator's 0.2 s, not the caller's 600 s


async def test_without_redis_a_postgres_outage_still_answers(open_gateway: Any) -> None:
    from pydantic import SecretStr

    dead = SecretStr("postgresql://nobody:pw@127.0.0.1:9/none")
    async with open_gateway(REDIS_ENABLED=False, DATABASE_URL=dead) as gw:
        responses = [await gw.client.post("/api/llm/orchestrate", json={"prompt": f"pg down {i}"})
                     for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200], responses[0].text
    assert all(r.json()["results"][0]["response"] for r in responses)
    assert {r.json()["metadata"]["database_logged"] for r in responses} == {False}


async def test_with_redis_down_every_route_answers_and_the_outage_is_logged_once(
        open_gateway: Any, tmp_path: Path, caplog: Any) -> None:
    import logging

    from pydantic import SecretStr

    from core.embedded import start_redis

    own_redis = start_redis(tmp_path)  # not the session's server: this one gets killed
    async with open_gateway(REDIS_URL=SecretStr(f"unix://{own_redis.socket_path}"), REDIS_DB=0) as gw:
        client = gw.client
        assert (await client.post("/api/llm/orchestrate", json={"prompt": "before"})).status_code == 200
        own_redis.kill()
        with caplog.at_level(logging.WARNING, logger="orchesity"):
            served = [await client.post("/api/llm/orchestrate", json={"prompt": f"during {i}"}) for i in range(20)]
        stats = await client.get("/api/db/stats")
        tick = await client.post("/api/cron/tick")
        health = await client.get("/api/health")
        refused = {path: await client.request(method, path) for method, path in [
            ("GET", "/api/db/cache/stats"), ("DELETE", "/api/db/cache/clear"), ("GET", "/api/llm/dwa/stats"),
            ("GET", "/api/llm/dwa/best-provider"), ("POST", "/api/llm/dwa/reset"), ("POST", "/api/cron/drain-logs")]}
    assert [r.status_code for r in served] == [200] * 20
    assert all(r.json()["metadata"]["database_logged"] for r in served)  # straight to Postgres
    outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_lines) == 1, [r.getMessage() for r in caplog.records]
    assert stats.status_code == 200 and stats.json()["total_requests"] >= 20
    assert stats.json()["log_pending_in_redis"] is None and "Redis" in stats.json()["note"]
    assert tick.status_code == 200 and "Redis" in tick.json()["drain"]["error"]
    assert tick.json()["recompute"]["baselines_published"] is False
    assert health.status_code == 200 and health.json()["services"]["dwa"]["status"] == "degraded"
    for path, response in refused.items():
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "redis_unavailable", path


async def test_with_redis_frozen_calls_answer_at_their_usual_speed_after_one_timeout_and_redis_comes_back(
        open_gateway: Any) -> None:
    """A Redis that holds its connections and answers nothing (SIGSTOP). Each request
    reads and records through Redis: without a hold, every one waited the timeout twice.
    Twelve requests in a row cost one timeout (and a probe), not twenty-four; they are
    logged to Postgres, and once Redis answers again it is used again."""
    import signal

    from pydantic import SecretStr

    from tests.servers import RedisProcess

    server = RedisProcess()
    server.start()
    try:
        async with open_gateway(REDIS_URL=SecretStr(server.url), REDIS_DB=0, REDIS_TIMEOUT_SECONDS=1.0) as gw:
            client = gw.client
            assert (await client.post("/api/llm/orchestrate", json={"prompt": "before"})).status_code == 200
            server.signal(signal.SIGSTOP)
            started = time.monotonic()
            served = [await client.post("/api/llm/orchestrate", json={"prompt": f"frozen {i}"}) for i in range(12)]
            frozen_s = time.monotonic() - started
            server.signal(signal.SIGCONT)
            deadline = time.monotonic() + 20
            while (await client.get("/api/health")).json()["services"]["cache"]["status"] != "healthy":
                assert time.monotonic() < deadline, "Redis was not used again"
                await asyncio.sleep(0.2)
            after = [await client.post("/api/llm/orchestrate", json={"prompt": "after", "temperature": 0})
                     for _ in range(2)]
    finally:
        server.signal(signal.SIGCONT)
        server.kill()
    assert [r.status_code for r in served] == [200] * 12
    assert all(r.json()["metadata"]["database_logged"] for r in served)  # straight to Postgres
    assert frozen_s < 8, frozen_s  # one timeout and a probe or two, not 24 s of timeouts
    assert after[1].json()["metadata"]["cached_response"] is True  # Redis serves the cache again


async def test_a_full_redis_serves_every_call_logs_it_to_postgres_and_says_so_once(
        open_gateway: Any, caplog: Any) -> None:
    """Redis at its maxmemory (noeviction: a full Upstash database, say) answers reads and
    refuses every write. Calls are answered and logged to Postgres, and the refusals are
    one warning, not a failure and a recovery per request; freeing memory is one more."""
    import logging

    from pydantic import SecretStr

    from tests.servers import RedisProcess

    server = RedisProcess()
    server.start()
    try:
        async with open_gateway(REDIS_URL=SecretStr(server.url), REDIS_DB=0) as gw:
            client, kv = gw.client, gw.services.kv
            assert (await client.post("/api/llm/orchestrate", json={"prompt": "before"})).status_code == 200
            await kv.execute("CONFIG", "SET", "maxmemory-policy", "noeviction")
            await kv.execute("CONFIG", "SET", "maxmemory", "1")
            with caplog.at_level(logging.WARNING, logger="orchesity"):
                served = [await client.post("/api/llm/orchestrate", json={"prompt": f"full {i}"}) for i in range(8)]
                full = [r.getMessage() for r in caplog.records if "with errors" in r.getMessage()]
                await kv.execute("CONFIG", "SET", "maxmemory", "0")
                after = [await client.post("/api/llm/orchestrate", json={"prompt": "after", "temperature": 0})
                         for _ in range(2)]
                freed = [r.getMessage() for r in caplog.records if "with errors" in r.getMessage()][len(full):]
    finally:
        server.kill()
    assert [r.status_code for r in served] == [200] * 8
    assert all(r.json()["metadata"]["database_logged"] for r in served)  # straight to Postgres
    assert len(full) == 1 and "is failing" in full[0] and "OOM" in full[0], full
    assert len(freed) == 1 and "is back" in freed[0] and "8 failed calls" in freed[0], freed
    assert after[1].json()["metadata"]["cached_response"] is True  # Redis keeps answers again


async def test_redis_killed_under_load_loses_no_logged_request_and_comes_back(
        gateway_settings: Settings, tmp_path: Path) -> None:
    import os
    import signal

    from sqlalchemy import func, select

    from core.models import RequestLog
    from core.services import Services

    # No Redis configured: the gateway starts (and must restart) the embedded one itself.
    settings = gateway_settings.model_copy(update={"REDIS_URL": None, "REDIS_DB": 0,
                                                   "ORCHESITY_DATA_DIR": tmp_path})
    services = await Services.open(settings)
    try:
        assert services.kv is not None and services.kv.backend == "embedded"
        app = build_app(services=services)
        answers: list[dict[str, Any]] = []
        killed = False
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            async def caller(n: int) -> None:
                nonlocal killed
                for i in range(25):
                    if n == 0 and i == 10 and not killed:
                        killed = True
                        os.kill(services.kv._embedded.server.pid, signal.SIGKILL)
                    reply = await client.post("/api/llm/orchestrate", json={"prompt": f"load {n} {i}"})
                    assert reply.status_code == 200, reply.text
                    answers.append(reply.json())

            await asyncio.gather(*(caller(n) for n in range(8)))
            deadline = time.monotonic() + 10
            while True:  # the embedded Redis comes back without anyone restarting it by hand
                health = (await client.get("/api/health")).json()
                if health["services"]["cache"]["status"] == "healthy":
                    break
                assert time.monotonic() < deadline, health
                await asyncio.sleep(0.1)
            after = await client.post("/api/llm/orchestrate", json={"prompt": "after", "temperature": 0})
            again = await client.post("/api/llm/orchestrate", json={"prompt": "after", "temperature": 0})
        await requestlog.drain(services.kv, services.db)
        logged = [a["request_id"] for a in answers if a["metadata"]["database_logged"]]
        async with services.db.engine.connect() as conn:
            found = (await conn.execute(select(func.count(func.distinct(RequestLog.request_id))).where(
                RequestLog.request_id.in_(logged)))).scalar_one()
    finally:
        await services.close()
    assert len(answers) == 200 and len(logged) == 200
    assert found == len(logged)  # every request that said database_logged has its row
    assert again.json()["metadata"]["cached_response"] is True  # the cache works again
    assert after.json()["metadata"]["database_logged"] is True


async def test_a_record_postgres_refuses_does_not_hold_back_the_log(kv: Any, db: Any) -> None:
    from sqlalchemy import select

    from core.models import RequestLog
    from core.requestlog import LogEntry, append_command

    good = LogEntry(log_id="nul-1:0", request_id="nul-1", endpoint="test", status="error",
                    created_at=time.time(), error="the provider said \x00 here")
    also = LogEntry(log_id="nul-2:0", request_id="nul-2", endpoint="test", status="ok", created_at=time.time())
    bad = append_command(also)
    bad[-1] = bad[-1].replace('"prompt_tokens":0', '"prompt_tokens":"many"')  # a type Postgres refuses
    bad[-1] = bad[-1].replace("nul-2", "nul-3")
    await kv.pipeline([append_command(good), bad, ["XADD", requestlog.STREAM, "*", "x", "not ours"],
                       append_command(also)])
    await requestlog.drain(kv, db)
    async with db.engine.connect() as conn:
        rows = {r.log_id: r for r in (await conn.execute(select(RequestLog).where(
            RequestLog.request_id.in_(["nul-1", "nul-2", "nul-3"])))).all()}
    assert set(rows) == {"nul-1:0", "nul-2:0"}  # the refused one dropped, the others in
    assert rows["nul-1:0"].error == "the provider said  here"
    assert await requestlog.pending(kv) == 0


async def test_with_postgres_down_its_routes_answer_503_naming_it_and_calls_go_on(open_gateway: Any) -> None:
    from pydantic import SecretStr

    dead = SecretStr("postgresql://nobody:hunter2@127.0.0.1:9/none")
    async with open_gateway(DATABASE_URL=dead) as gw:
        stats = await gw.client.get("/api/db/stats")
        recent = await gw.client.get("/api/db/requests/recent")
        call = await gw.client.post("/api/llm/orchestrate", json={"prompt": "postgres is down"})
    for response in (stats, recent):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "database_unavailable" and "DATABASE_URL" in error["message"]
        assert "hunter2" not in response.text
    assert call.status_code == 200 and call.json()["metadata"]["database_logged"] is True  # queued in Redis


async def test_with_postgres_frozen_its_routes_answer_503_in_seconds_and_calls_go_on(
        open_gateway: Any, tmp_path: Path) -> None:
    """A Postgres that keeps its sockets open and answers nothing (SIGSTOP: a stalled
    pooler, a network that drops packets). Its routes answer 503 naming the database once
    the connection or statement deadline passes, instead of hanging; health says it is
    down within its own check time; LLM calls go on; it is used again once it answers."""
    import os
    import signal

    import psutil
    from pydantic import SecretStr

    from core.db import Database
    from core.embedded import start_postgres
    from core.migrate import upgrade

    server = start_postgres(tmp_path)  # the test's own, to freeze
    database = Database(server.url)
    await upgrade(database)
    await database.close()
    postmaster = psutil.Process(int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0]))
    try:
        async with open_gateway(DATABASE_URL=SecretStr(server.url), DB_CONNECT_TIMEOUT_SECONDS=2,
                                DB_STATEMENT_TIMEOUT_SECONDS=2) as gw:
            assert (await gw.client.get("/api/runs")).status_code == 200
            frozen = [postmaster, *postmaster.children()]
            for process in frozen:
                os.kill(process.pid, signal.SIGSTOP)
            try:
                timings = {}
                for name, method, path, body in [
                        ("runs", "GET", "/api/runs", None), ("stats", "GET", "/api/db/stats", None),
                        ("health", "GET", "/api/health", None),
                        ("llm", "POST", "/api/llm/orchestrate", {"prompt": "postgres is frozen"})]:
                    started = time.monotonic()
                    response = await gw.client.request(method, path, json=body)
                    timings[name] = (response, time.monotonic() - started)
            finally:
                for process in frozen:
                    os.kill(process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 20
            while (after := await gw.client.get("/api/runs")).status_code != 200:
                assert time.monotonic() < deadline, after.text
                await asyncio.sleep(0.2)
    finally:
        server.stop()
    for name in ("runs", "stats"):
        response, seconds = timings[name]
        assert response.status_code == 503 and response.json()["error"]["code"] == "database_unavailable", name
        assert seconds < 12, (name, seconds)  # a deadline's 2 s (and psycopg's cleanup), not forever
    health, seconds = timings["health"]
    assert health.json()["services"]["database"]["status"] == "down" and seconds < 6, (health.text, seconds)
    assert timings["llm"][0].status_code == 200
