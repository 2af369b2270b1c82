"""The weight recompute on the session's real Postgres and Redis.

The request-log rows are written in a window of their own (in 2031), so rows other tests
log at the current time never enter it, and the Redis hash is namespaced.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import Database
from core.dwa import ProviderProfile, RedisDWAStore, Router, baseline_key
from core.dwa.pg_store import PostgresDWAStore
from core.dwa.recompute import BUCKET_SECONDS, baseline_weights, history, recompute, window_end
from core.kv import KV
from core.models import ProviderWeight, RequestLog

NOW = datetime(2031, 1, 1, 12, 0, 30, tzinfo=UTC)
END = datetime(2031, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
async def _forget_the_future(db: Database) -> Any:
    """This module's request-log rows are dated 2031: gone after each test, so they never
    pass for the latest requests of the tests that come after."""
    yield
    from sqlalchemy import delete

    async with db.session() as session:
        await session.exec(delete(RequestLog).where(RequestLog.created_at >= END - timedelta(days=1)))
        await session.commit()


def rows(provider: str, count: int, *, latency_ms: float = 100.0, status: str = "ok", ago_s: float = 600.0,
         **extra: Any) -> list[RequestLog]:
    """`count` attempts of `provider`, spread over a few minutes ending `ago_s` before END."""
    found = []
    for i in range(count):
        created = END - timedelta(seconds=ago_s + i)
        found.append(RequestLog(log_id=uuid.uuid4().hex, request_id=uuid.uuid4().hex, created_at=created,
                                endpoint="test", provider=provider, status=status,
                                latency_ms=latency_ms * (1 + (i % 5) / 10), total_tokens=100,
                                cost=0.001 if status == "ok" else 0.0, final=status == "ok", **extra))
    return found


async def test_recompute_is_idempotent_orders_providers_and_feeds_the_router(db: Database, kv: KV) -> None:
    tag = uuid.uuid4().hex[:8]
    fast, slow, erring, few = (f"rc-{tag}-{n}" for n in ("fast", "slow", "erring", "few"))
    async with db.session() as session:
        session.add_all([
            *rows(fast, 40, latency_ms=100.0),
            *rows(fast, 10, status="error", error_class="client_error"),  # the caller's fault
            *rows(fast, 10, status="error", error_class="timeout", ago_s=2 * 3600),  # before the window
            *rows(slow, 40, latency_ms=200.0),
            *rows(slow, 20, latency_ms=0.0, cached=True),  # cache hits: no provider was called
            *rows(erring, 20, latency_ms=100.0),
            *rows(erring, 20, status="error", error_class="unavailable"),
            *rows(few, 2, latency_ms=50.0),
        ])
        # a failed request's final row repeats its last attempt's error: not an attempt of its own
        session.add(RequestLog(log_id=uuid.uuid4().hex, request_id="r", created_at=END - timedelta(seconds=5),
                               endpoint="test", provider=slow, status="error", error_class="timeout", final=True))
        await session.commit()

    ns = f"rc-{tag}"
    first, second = await asyncio.gather(recompute(db, kv, now=NOW, namespace=ns),
                                         recompute(db, kv, now=NOW + timedelta(seconds=20), namespace=ns))
    ours = {fast, slow, erring, few}
    by_name = {row["provider"]: row for row in first if row["provider"] in ours}
    assert {row["provider"]: row["weight"] for row in second if row["provider"] in ours} == \
        {name: row["weight"] for name, row in by_name.items()}
    assert set(by_name) == ours

    weights = {name: row["weight"] for name, row in by_name.items()}
    assert weights[fast] > weights[slow] > weights[erring] > 0.0
    assert weights[few] is None  # two samples say nothing
    assert by_name[fast]["samples"] == 40 and by_name[fast]["error_rate"] == 0.0
    assert by_name[slow]["samples"] == 40 and by_name[slow]["p50_latency_ms"] == pytest.approx(240.0)
    assert by_name[erring]["error_rate"] == pytest.approx(0.5)
    assert by_name[fast]["cost_per_1k_tokens"] == pytest.approx(0.01)  # $0.001 per 100 tokens
    assert by_name[fast]["window_end"] == END and by_name[fast]["p95_latency_ms"] >= by_name[fast]["p50_latency_ms"]

    # exactly one history row per provider for the window, whatever the overlap
    async with db.session() as session:
        counts = (await session.exec(
            select(ProviderWeight.provider, func.count())  # type: ignore[call-overload]
            .where(ProviderWeight.provider.in_(ours))  # type: ignore[attr-defined]
            .group_by(ProviderWeight.provider))).all()
    assert dict(counts) == {name: 1 for name in ours}
    charted = await history(db, fast)
    assert [(r["provider"], r["window_end"], r["weight"]) for r in charted] == [(fast, END, weights[fast])]

    # the Redis hash holds the weights (and expires); routers on either store see them
    stored = await kv.hgetall(baseline_key(ns))
    assert {name: float(value) for name, value in stored.items() if name in ours} == \
        {name: w for name, w in weights.items() if w is not None}
    assert await kv.execute("TTL", baseline_key(ns)) > 3600
    names = sorted(ours)
    profiles = [ProviderProfile(name) for name in names]
    for store in (RedisDWAStore(kv, profiles, namespace=ns), PostgresDWAStore(db, profiles)):
        states = (await store.read(names, NOW.timestamp())).states
        assert {name: states[name].baseline for name in names} == pytest.approx(weights), type(store)
        stats = await Router(store).stats(names, NOW.timestamp())
        assert stats[fast]["baseline_weight"] == pytest.approx(weights[fast])


async def test_a_window_without_traffic_clears_the_redis_baselines(db: Database, kv: KV) -> None:
    ns = f"rc-{uuid.uuid4().hex[:8]}"
    await kv.execute("HSET", baseline_key(ns), "gone", "0.9")
    quiet = datetime(2031, 6, 1, tzinfo=UTC)  # nothing logged in the hour before
    assert await recompute(db, kv, now=quiet, namespace=ns) == []
    assert await kv.hgetall(baseline_key(ns)) == {}


def test_window_end_is_rounded_down_to_the_bucket() -> None:
    assert window_end(NOW) == END and window_end(END) == END
    assert window_end(END.timestamp() + BUCKET_SECONDS - 0.001) == END
    assert window_end().tzinfo is UTC


def test_the_formula() -> None:
    def figures(p50: float | None, error_rate: float = 0.0, price: float | None = None, samples: int = 100) -> dict:
        return {"samples": samples, "error_rate": error_rate, "p50_latency_ms": p50,
                "p95_latency_ms": None if p50 is None else 2 * p50, "cost_per_1k_tokens": price}

    fast, slow, flaky, cheap_slow, dead, new = baseline_weights([
        figures(100.0, price=0.01), figures(200.0, price=0.01), figures(100.0, 0.1, price=0.01),
        figures(200.0, price=0.001), figures(None, 1.0), figures(50.0, samples=3),
    ])
    tenfold = ((0.001 + 0.0001) / (0.01 + 0.0001)) ** 0.02  # ten times the cheapest: the live score's factor
    assert tenfold == pytest.approx(0.957, abs=0.001)
    assert fast == pytest.approx(tenfold)
    assert slow == pytest.approx(0.5 * tenfold)  # twice as slow: half the weight
    assert flaky == pytest.approx(0.81 * tenfold)  # (1 - 0.1)²
    assert cheap_slow == pytest.approx(0.5)
    assert dead == 0.0 and new is None  # `new` does not count as the fastest either
