"""Keys, scopes, limits and budgets through the real gateway (Postgres, Redis, HTTP)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from core.auth import create_key
from core.limits import Limits
from core.settings import Settings
from functions.gateway import build_app
from tests.conftest import providers_file

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}


async def test_no_key_a_bad_key_and_the_wrong_scope(keyed: Any) -> None:
    async with keyed(caller=dict(scopes=["llm"]), runner=dict(scopes=["runs"])) as k:
        client = k.gw.client
        missing = await client.post("/v1/chat/completions", json=CHAT)
        bogus = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer osk_nope_x"})
        wrong = await client.post("/v1/chat/completions", json=CHAT, headers=k.headers("runner"))
        allowed = await client.post("/v1/chat/completions", json=CHAT, headers=k.headers("caller"))
        anthropic_style = await client.get("/v1/models", headers={"x-api-key": k.keys["caller"]})
        admin_route = await client.get("/api/db/stats", headers=k.headers("caller"))
        health = await client.get("/api/health")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert bogus.status_code == 401 and bogus.json()["error"]["code"] == "invalid_api_key"
    assert wrong.status_code == 403 and "'llm' scope" in wrong.json()["error"]["message"]
    assert allowed.status_code == 200 and anthropic_style.status_code == 200
    assert admin_route.status_code == 403 and admin_route.json()["error"]["code"] == "insufficient_scope"
    assert health.status_code == 200 and health.json()["auth"]["mode"] == "keys"
    assert "memory_percent" not in health.json()["services"]["system"]  # the machine is the admin's


async def test_the_key_is_in_the_request_log_and_never_in_an_answer(keyed: Any) -> None:
    async with keyed(caller=dict(scopes=["llm"]), boss=dict(scopes=["admin"])) as k:
        client = k.gw.client
        reply = await client.post("/v1/chat/completions", json=CHAT, headers=k.headers("caller"))
        recent = await client.get("/api/db/requests/recent", headers=k.headers("boss"))
        listed = await client.get("/api/keys", headers=k.headers("boss"))
    request_id = reply.json()["orchesity"]["request_id"]
    row = next(r for r in recent.json()["requests"] if r["request_id"] == request_id)
    assert row["caller_key_id"] == k.ids["caller"]
    for response in (reply, recent, listed):
        assert k.keys["caller"] not in response.text and k.keys["boss"] not in response.text
        assert "key_hash" not in response.text


async def test_a_revoked_key_stops_working_within_the_revocation_window(keyed: Any) -> None:
    async with keyed({"AUTH_CACHE_SECONDS": 0.3}, caller=dict(scopes=["llm"]), boss=dict(scopes=["admin"])) as k:
        client = k.gw.client
        assert (await client.get("/v1/models", headers=k.headers("caller"))).status_code == 200
        prefix = k.keys["caller"].split("_")[1]
        revoked = await client.delete(f"/api/keys/{prefix}", headers=k.headers("boss"))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        deadline = time.monotonic() + 2
        while (status := (await client.get("/v1/models", headers=k.headers("caller"))).status_code) == 200:
            assert time.monotonic() < deadline, "the revoked key still works"
            await asyncio.sleep(0.05)
        final = await client.get("/v1/models", headers=k.headers("caller"))
    assert status == 401 and final.json()["error"]["code"] == "revoked_api_key"


async def test_an_expired_key_is_refused(keyed: Any) -> None:
    from datetime import UTC, datetime, timedelta

    past = datetime.now(UTC) - timedelta(seconds=1)
    async with keyed(old=dict(scopes=["llm"], expires_at=past)) as k:
        response = await k.gw.client.get("/v1/models", headers=k.headers("old"))
    assert response.status_code == 401 and response.json()["error"]["code"] == "expired_api_key"


async def test_a_key_never_reads_another_keys_cached_answer(keyed: Any) -> None:
    async with keyed(alice=dict(scopes=["llm"]), bob=dict(scopes=["llm"]),
                     team_a=dict(scopes=["llm"], shared_cache=True),
                     team_b=dict(scopes=["llm"], shared_cache=True)) as k:
        client = k.gw.client

        async def cached(name: str) -> bool:
            reply = await client.post("/v1/chat/completions", json=CHAT, headers=k.headers(name))
            assert reply.status_code == 200, reply.text
            return reply.json()["orchesity"]["cached"]

        assert [await cached("alice"), await cached("alice"), await cached("bob")] == [False, True, False]
        assert [await cached("team_a"), await cached("team_b")] == [False, True]  # both opted in


async def test_requests_per_minute_answer_429_with_retry_after(keyed: Any) -> None:
    async with keyed(slow=dict(scopes=["llm"], limits=Limits(requests_per_minute=3))) as k:
        replies = [await k.gw.client.post("/v1/chat/completions", json=CHAT, headers=k.headers("slow"))
                   for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    assert replies[0].headers["x-ratelimit-limit-requests"] == "3"
    assert replies[1].headers["x-ratelimit-remaining-requests"] == "1"
    refused = replies[3]
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert "3 requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert 0 < int(refused.headers["retry-after-ms"]) <= 20_000


def test_the_openai_sdk_waits_out_a_429_and_succeeds(gateway_settings: Settings) -> None:
    import openai

    from tests.servers import serve

    settings = gateway_settings.model_copy(update={"OPEN_ACCESS": False})

    async def issue() -> str:
        from core.db import Database

        db = Database.from_settings(settings)
        try:
            key, _ = await create_key(db, name="sdk", scopes=["llm"], created_by="test",
                                      limits=Limits(requests_per_minute=30))  # one every 2 s, 30 at once
            return key
        finally:
            await db.close()

    key = asyncio.run(issue())
    with serve(build_app(settings=settings)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            for _ in range(1000):  # 30 at once, then one every 2 s: refused well before 1,000
                client.chat.completions.create(**CHAT)
        patient = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=2)
        reply = patient.chat.completions.with_raw_response.create(**CHAT)
    # Refused at first, it slept the Retry-After it was told (under 2 s), then got through. (At one
    # every 0.5 s, a busy machine sometimes let the patient client's first try through unrefused.)
    assert reply.http_response.status_code == 200 and reply.retries_taken >= 1


async def test_a_spent_budget_answers_429_naming_it(keyed: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [{"name": "priced", "kind": "simulated", "price_input_per_1k": 1.0,
                                      "price_output_per_1k": 1.0, "simulation": {"latency_ms": 1, "seed": 1}}])
    async with keyed({"ORCHESITY_PROVIDERS_FILE": path}, free=dict(scopes=["llm"]),
                     thrifty=dict(scopes=["llm"], limits=Limits(budget_usd_per_day=0.05))) as k:
        replies = []
        for i in range(10):
            replies.append(await k.gw.client.post("/v1/chat/completions", headers=k.headers("thrifty"), json={
                **CHAT, "messages": [{"role": "user", "content": f"spend {i}"}]}))
            if replies[-1].status_code == 429:
                break
        # Other traffic goes on, and Redis with it (an INCRBYFLOAT from Lua once corrupted
        # the embedded Redis's heap under its append-only file, a few requests later).
        others = [await k.gw.client.post("/v1/chat/completions", headers=k.headers("free"), json={
            **CHAT, "messages": [{"role": "user", "content": f"other {i}"}]}) for i in range(40)]
        assert await k.gw.services.kv.ping()
    assert {r.status_code for r in others} == {200}
    refused = replies[-1]
    assert replies[0].status_code == 200 and refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "insufficient_quota" and "daily budget of $0.05" in error["message"]
    assert int(refused.headers["retry-after"]) > 0


async def test_with_redis_down_limits_fail_open_and_health_says_so(keyed: Any, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from core.embedded import start_redis

    own = start_redis(tmp_path)
    async with keyed({"REDIS_URL": SecretStr(f"unix://{own.socket_path}"), "REDIS_DB": 0},
                     capped=dict(scopes=["llm"], limits=Limits(requests_per_minute=1))) as k:
        client = k.gw.client
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=k.headers("capped"))).status_code == 200
        own.kill()
        through = [await client.post("/v1/chat/completions", json=CHAT, headers=k.headers("capped"))
                   for _ in range(3)]
        health = (await client.get("/api/health")).json()
    assert [r.status_code for r in through] == [200, 200, 200]
    assert health["auth"]["limits"].startswith("not enforced")


async def test_providers_show_their_addresses_to_admins_only(keyed: Any) -> None:
    async with keyed(caller=dict(scopes=["llm"]), boss=dict(scopes=["admin"])) as k:
        plain = (await k.gw.client.get("/api/llm/providers", headers=k.headers("caller"))).json()
        admin = (await k.gw.client.get("/api/llm/providers", headers=k.headers("boss"))).json()
    assert all("base_url" not in p and "api_key_env" not in p for p in plain["providers"])
    assert all("base_url" in p for p in admin["providers"])


async def test_keys_through_the_api(keyed: Any) -> None:
    async with keyed(boss=dict(scopes=["admin"])) as k:
        client = k.gw.client
        made = await client.post("/api/keys", headers=k.headers("boss"), json={
            "name": "frontend", "scopes": ["llm", "runs"], "expires_in_days": 30,
            "limits": {"requests_per_minute": 100}})
        bad = await client.post("/api/keys", headers=k.headers("boss"), json={"name": "x", "scopes": ["root"]})
        huge = await client.post("/api/keys", headers=k.headers("boss"), json={  # more than its column holds
            "name": "huge", "scopes": ["llm"], "limits": {"tokens_per_minute": 2**70}})
        new_key = made.json()["key"]
        works = await client.get("/v1/models", headers={"authorization": f"Bearer {new_key}"})
        listed = (await client.get("/api/keys", headers=k.headers("boss"))).json()
    assert made.status_code == 201 and new_key.startswith("osk_")
    assert made.json()["limits"] == {"requests_per_minute": 100} and made.json()["expires_at"]
    assert bad.status_code == 422 and "root" in bad.json()["error"]["message"]
    assert huge.status_code == 422 and huge.json()["error"]["param"] == "limits.tokens_per_minute"
    assert works.status_code == 200
    assert {row["name"] for row in listed["keys"]} >= {"boss", "frontend"}
    assert new_key not in str(listed)


async def test_cors_is_closed_unless_an_origin_is_listed(open_gateway: Any) -> None:
    preflight = {"origin": "https://evil.example", "access-control-request-method": "DELETE"}
    async with open_gateway() as gw:  # the default: no origins
        closed = await gw.client.options("/api/db/cache/clear", headers=preflight)
    async with open_gateway(CORS_ALLOW_ORIGINS="https://app.example") as gw:
        refused = await gw.client.options("/api/db/cache/clear", headers=preflight)
        listed = await gw.client.options("/api/db/cache/clear", headers={**preflight, "origin": "https://app.example"})
    for response in (closed, refused):
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code >= 400
    assert listed.headers["access-control-allow-origin"] == "https://app.example"


def test_every_route_but_health_has_an_owner() -> None:
    from functions import cron
    from functions.gateway import ROUTERS

    routes = [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    unowned = []
    for route in routes:
        if route.path == "/api/health" or getattr(route.endpoint, "public", False):  # the dashboard's page
            continue
        calls = [d.call for d in route.dependant.dependencies]
        calls += [d.call for sub in route.dependant.dependencies for d in sub.dependencies]
        if not any(getattr(call, "scope", None) is not None or call is cron.authorised for call in calls):
            unowned.append(f"{sorted(route.methods)} {route.path}")
    assert len(routes) >= 25  # every function's routes were looked at
    assert unowned == []


# --- Supabase Auth session JWTs -----------------------------------------------------------------

SUPABASE = "https://abcd.supabase.co"


@pytest.fixture(scope="module")
def signing_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _jwks(key: Any) -> dict[str, Any]:
    import json

    from jwt.algorithms import ECAlgorithm

    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}


def _session(key: Any, **claims: Any) -> str:
    import jwt

    now = int(time.time())
    payload = {"iss": f"{SUPABASE}/auth/v1", "aud": "authenticated", "role": "authenticated",
               "sub": "9b1c7e2a-0000-4000-8000-000000000001", "email": "ada@example.com",
               "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": "k1"})


async def test_a_supabase_session_jwt_is_verified_and_logged(keyed: Any, signing_key: Any, httpx_mock: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    httpx_mock.add_response(url=f"{SUPABASE}/auth/v1/.well-known/jwks.json", json=_jwks(signing_key),
                            is_reusable=True)
    other = ec.generate_private_key(ec.SECP256R1())
    async with keyed({"SUPABASE_URL": SUPABASE, "SUPABASE_JWT_ROLE_SCOPES": "authenticated=llm"},
                     boss=dict(scopes=["admin"])) as k:
        client = k.gw.client

        async def call(token: str) -> httpx.Response:
            return await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"})

        good = await call(_session(signing_key))
        forged = await call(_session(other))
        foreign = await call(_session(signing_key, iss="https://evil.supabase.co/auth/v1"))
        anonymous = await call(_session(signing_key, role="anon"))
        stale = await call(_session(signing_key, exp=int(time.time()) - 10))
        runs = await client.get("/api/db/stats", headers={"authorization": f"Bearer {_session(signing_key)}"})
        recent = await client.get("/api/db/requests/recent", headers=k.headers("boss"))
    assert good.status_code == 200, good.text
    assert [r.status_code for r in (forged, foreign, stale)] == [401, 401, 401]
    assert anonymous.status_code == 403 and "anon" in anonymous.json()["error"]["message"]
    assert runs.status_code == 403  # the role maps to llm only
    request_id = good.json()["orchesity"]["request_id"]
    row = next(r for r in recent.json()["requests"] if r["request_id"] == request_id)
    assert row["caller_key_id"] == "user:9b1c7e2a-0000-4000-8000-000000000001"
    assert len(httpx_mock.get_requests()) == 1  # the signing keys were fetched once, then cached
