"""The DWA and cron functions end to end, over the gateway app on real Postgres and Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tests.conftest import providers_file

SEED_FIELDS = {"accuracy", "speed", "cost", "availability", "consecutive_failures", "last_success_time",
               "last_error", "weight"}
OURS = {"circuit_state", "in_flight", "p95_latency_ms", "samples"}
FAST = {"latency_ms": 1, "ms_per_token": 0, "jitter": 0, "seed": 1, "reply_tokens": 10}


def two_providers(tmp: Path) -> Path:
    return providers_file(tmp, [
        {"name": "flaky", "kind": "simulated", "model": "f", "priority": 1,
         "simulation": {**FAST, "failure_rate": 1.0, "failure_mode": "unavailable"}},
        {"name": "steady", "kind": "simulated", "model": "s", "priority": 2, "simulation": FAST},
    ])


async def test_stats_reset_and_best_provider(open_gateway: Any, tmp_path: Path) -> None:
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=two_providers(tmp_path), DWA_ROUTING_STRATEGY="priority") as gw:
        for i in range(3):
            assert (await gw.client.post("/api/llm/orchestrate", json={"prompt": f"q{i}"})).status_code == 200
        stats = (await gw.client.get("/api/llm/dwa/stats")).json()
        best = (await gw.client.get("/api/llm/dwa/best-provider")).json()
        reset = await gw.client.post("/api/llm/dwa/reset", params={"provider": "flaky"})
        after = (await gw.client.get("/api/llm/dwa/stats")).json()["provider_stats"]
        unknown = await gw.client.post("/api/llm/dwa/reset", params={"provider": "nope"})

    assert stats["strategy"] == "priority" and stats["state_store"] == "redis"
    flaky, steady = stats["provider_stats"]["flaky"], stats["provider_stats"]["steady"]
    assert SEED_FIELDS | OURS <= set(flaky) and SEED_FIELDS | OURS <= set(steady)
    assert flaky["consecutive_failures"] == 3 and flaky["last_error"] == "unavailable"
    assert flaky["accuracy"] == 0.0 and steady["accuracy"] == 1.0 and steady["samples"] == 3
    assert 0.0 < flaky["availability"] < steady["availability"] <= 1.0  # one bad run, not a blacklist
    assert steady["last_success_time"] is not None and steady["p95_latency_ms"] > 0
    assert best["provider"] == "steady" and 0.0 <= best["dwa_score"] <= 1.0

    assert reset.status_code == 200 and reset.json() == {"reset": ["flaky"]}
    assert after["flaky"]["consecutive_failures"] == 0 and after["flaky"]["samples"] == 0
    assert after["steady"]["samples"] == 3  # only the named provider was reset
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]


async def test_cron_needs_its_secret_and_drains(open_gateway: Any) -> None:
    from core.auth import create_key

    async with open_gateway(CRON_SECRET=SecretStr("cron-s3cret"), OPEN_ACCESS=False) as gw:
        key, _ = await create_key(gw.services.db, name="cron-test", scopes=["llm"], created_by="test")
        called = await gw.client.post("/api/llm/orchestrate", json={"prompt": "to be drained"},
                                      headers={"authorization": f"Bearer {key}"})
        assert called.status_code == 200
        refused = await gw.client.post("/api/cron/drain-logs")
        wrong = await gw.client.post("/api/cron/drain-logs", headers={"authorization": "Bearer nope"})
        drained = await gw.client.post("/api/cron/drain-logs", headers={"authorization": "Bearer cron-s3cret"})
    assert refused.status_code == 401 and wrong.status_code == 401
    assert "cron-s3cret" not in refused.text
    assert drained.status_code == 200 and drained.json()["moved"] >= 1 and drained.json()["pending"] == 0


async def test_cron_tick_drains_then_recomputes_baselines(open_gateway: Any, tmp_path: Path) -> None:
    # no knowledge base: its embeddings of earlier tests' runs would be requests of their own
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=two_providers(tmp_path), DWA_ROUTING_STRATEGY="priority",
                            KNOWLEDGE_BATCH=0) as gw:
        for i in range(12):
            await gw.client.post("/api/llm/orchestrate", json={"prompt": f"tick {i}"})
        tick = await gw.client.post("/api/cron/tick")
        again = await gw.client.post("/api/cron/tick")  # overlapping or repeated runs are harmless
        stats = (await gw.client.get("/api/llm/dwa/stats")).json()["provider_stats"]
    assert tick.status_code == 200, tick.text
    assert tick.json()["drain"]["moved"] >= 12
    weights = {row["provider"]: row["weight"] for row in tick.json()["recompute"]["providers"]}
    assert weights["steady"] > weights["flaky"]
    assert again.json()["drain"]["moved"] == 0
    assert {row["provider"]: row["weight"] for row in again.json()["recompute"]["providers"]} == weights
    assert stats["steady"]["weight"] > stats["flaky"]["weight"]


def _qstash_signature(key: str, url: str, body: bytes, **claims: Any) -> str:
    import base64
    import hashlib
    import time

    import jwt

    now = int(time.time())
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode().rstrip("=")
    payload = {"iss": "Upstash", "sub": url, "exp": now + 300, "nbf": now - 5, "iat": now, "body": digest,
               "jti": "msg_1", **claims}
    return jwt.encode(payload, key, algorithm="HS256")


async def test_a_qstash_schedule_is_let_in_by_its_signature_and_nothing_else(open_gateway: Any) -> None:
    current, following = "sig_current_" + "c" * 32, "sig_next_" + "n" * 32
    url = "https://orchesity.example.com/api/cron/drain-logs"
    body = b'{"from": "qstash"}'
    async with open_gateway(OPEN_ACCESS=False, QSTASH_CURRENT_SIGNING_KEY=SecretStr(current),
                            QSTASH_NEXT_SIGNING_KEY=SecretStr(following),
                            PUBLIC_URL="https://orchesity.example.com") as gw:
        async def call(signature: str, content: bytes = body) -> Any:
            return await gw.client.post("/api/cron/drain-logs", content=content,
                                        headers={"upstash-signature": signature})

        signed = await call(_qstash_signature(current, url, body))
        rotated = await call(_qstash_signature(following, url, body))  # signed with the next key
        tampered = await call(_qstash_signature(current, url, body), content=b'{"from": "someone"}')
        elsewhere = await call(_qstash_signature(current, "https://evil.example/api/cron/drain-logs", body))
        forged = await call(_qstash_signature("not-our-key-" + "x" * 32, url, body))
    assert signed.status_code == 200 and rotated.status_code == 200
    for refused in (tampered, elsewhere, forged):
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_qstash_signature"
