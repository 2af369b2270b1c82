"""The Postgres state store: the same answers as the Redis one, and safe under concurrency.

Real Postgres (the session database) and real Redis; provider names are unique per test,
since the database is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from core.db import Database
from core.dwa import DWAConfig, Outcome, OutcomeKind, ProviderProfile, RedisDWAStore, Router, baseline_key
from core.dwa.pg_store import PostgresDWAStore
from core.dwa.store import BASELINE_TTL_WINDOWS, DWAStore
from core.kv import KV
from core.models import ProviderWeight
from core.settings import RoutingStrategy

T0 = 1_700_000_000.0
OK, FAIL, RATE, CLIENT = OutcomeKind.SUCCESS, OutcomeKind.FAILURE, OutcomeKind.RATE_LIMITED, OutcomeKind.CLIENT_ERROR
CONFIG = DWAConfig(failure_threshold=3, cooldown_s=5.0, cooldown_max_s=12.0)


@pytest.fixture
def names() -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"pg-{tag}-a", f"pg-{tag}-b"]


def profiles(names: list[str]) -> list[ProviderProfile]:
    return [ProviderProfile(names[0], priority=1, input_price_per_1k=0.001, output_price_per_1k=0.002),
            ProviderProfile(names[1], priority=2, input_price_per_1k=0.0005, output_price_per_1k=0.0005)]


def pg_store(db: Database, names: list[str], instance: str | None = None, config: DWAConfig = CONFIG
             ) -> PostgresDWAStore:
    return PostgresDWAStore(db, profiles(names), config, instance_id=instance)


async def record(store: DWAStore, name: str, kind: OutcomeKind, now: float, latency: float = 1.0,
                 **extra: Any) -> None:
    store.start(name)
    await store.record(Outcome(name, kind, latency, now, **extra))


# -- the contract: the same outcomes, the same answers ------------------------------------------

def assert_same(redis: Any, postgres: Any, where: str) -> None:
    """Equal, floats within tolerance, recursively through dicts and lists."""
    if isinstance(redis, float) and isinstance(postgres, float):
        assert postgres == pytest.approx(redis, rel=1e-9, abs=1e-12, nan_ok=True), where
    elif isinstance(redis, dict) and isinstance(postgres, dict):
        assert redis.keys() == postgres.keys(), where
        for key in redis:
            assert_same(redis[key], postgres[key], f"{where}.{key}")
    else:
        assert redis == postgres, where


class Pair:
    """One Redis-backed and one Postgres-backed router, fed the same outcomes."""

    def __init__(self, kv: KV, db: Database, names: list[str]) -> None:
        ns = f"pgc-{uuid.uuid4().hex[:10]}"
        self.ns = ns
        self.names = names
        self.redis = RedisDWAStore(kv, profiles(names), CONFIG, namespace=ns, instance_id="contract")
        self.postgres = pg_store(db, names, "contract")
        self.routers = [Router(store, strategy=RoutingStrategy.priority, rng=random.Random(1))
                        for store in (self.redis, self.postgres)]

    async def record(self, name: str, kind: OutcomeKind, now: float, latency: float = 1.0, **extra: Any) -> None:
        for store in (self.redis, self.postgres):
            await record(store, name, kind, now, latency, **extra)

    async def both(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [await getattr(store, method)(*args, **kwargs) for store in (self.redis, self.postgres)]

    async def check(self, now: float, circuits: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Router.stats and the read snapshot agree; returns the stats."""
        redis, postgres = [await router.stats(self.names, now) for router in self.routers]
        assert_same(redis, postgres, f"stats@{now - T0:g}")
        reads = await self.both("read", self.names, now)
        for name in self.names:
            a, b = (dataclasses.asdict(snapshot.states[name]) for snapshot in reads)
            assert_same(a, b, f"read@{now - T0:g}.{name}")
        for name, circuit in (circuits or {}).items():
            assert postgres[name]["circuit_state"] == circuit, (now - T0, name)
        return postgres


async def test_redis_and_postgres_agree_on_the_same_outcomes(kv: KV, db: Database, names: list[str]) -> None:
    a, b = names
    pair = Pair(kv, db, names)
    await pair.check(T0, {a: "closed", b: "closed"})  # priors

    rng = random.Random(11)
    now = T0
    for i in range(30):  # traffic: successes with usage, a stream now and then, a client error
        now += rng.choice([0.0, 0.2, 1.5])
        name = names[i % 2]
        kind = CLIENT if i == 13 else OK
        await pair.record(name, kind, now, rng.uniform(0.2, 2.0), input_tokens=rng.randint(10, 900), load=rng.randint(0, 9),
                          output_tokens=rng.choice([0, 40, 300]), ttft_s=rng.choice([None, 0.3]),
                          error="client_error" if kind is CLIENT else None)
    await pair.check(now + 3.0)

    # breaker: open after 3 failures, half-open after the cooldown, one probe, closed on success
    for i in range(3):
        await pair.record(a, FAIL, now + 1 + i, 5.0, error="timeout")
    opened = now + 3
    stats = await pair.check(opened + 1, {a: "open", b: "closed"})
    assert stats[a]["consecutive_failures"] == 3 and stats[a]["last_error"] == "timeout"
    half_open = opened + CONFIG.cooldown_s + 0.5
    await pair.check(half_open, {a: "half_open"})
    decisions = [await router.pick(names, half_open) for router in pair.routers]
    assert [(d.provider, d.reason, d.probe) for d in decisions if d] == [(a, "half_open_probe", True)] * 2
    assert await pair.both("claim_probe", a, half_open) == [False, False]  # held by the pick's claim
    stats = await pair.check(half_open + 0.1, {a: "half_open"})
    assert stats[a]["probe_in_flight"] is True
    await pair.record(a, FAIL, half_open + 1, 5.0, error="http_503")  # the probe fails: reopened, longer
    await pair.check(half_open + 2, {a: "open"})
    retry = half_open + 1 + 2 * CONFIG.cooldown_s + 0.5
    assert await pair.both("claim_probe", a, retry) == [True, True]
    await pair.record(a, OK, retry + 0.5, 0.4, input_tokens=100, output_tokens=50)
    stats = await pair.check(retry + 1, {a: "closed"})
    assert stats[a]["consecutive_failures"] == 0

    # a 429: cooldown until Retry-After, not an outage; then one without Retry-After
    await pair.record(b, RATE, retry + 2, 0.05, error="rate_limited", retry_after_s=30.0)
    stats = await pair.check(retry + 3)
    assert stats[b]["rate_limited_until"] == pytest.approx(retry + 32) and stats[b]["circuit_state"] == "closed"
    decisions = [await router.pick(names, retry + 3) for router in pair.routers]
    assert [d.provider for d in decisions if d] == [a, a]
    await pair.record(b, RATE, retry + 40, 0.05)
    await pair.check(retry + 41)

    # out of order (an instance recorded late), decay over a long quiet spell, in-flight
    await pair.record(b, OK, retry + 20, 0.8, output_tokens=100)
    for store in (pair.redis, pair.postgres):
        store.start(a)
    await pair.check(retry + 45)
    await pair.check(retry + 600)

    # baselines: the Redis hash and the provider_weights table say the same
    await kv.execute("HSET", baseline_key(pair.ns), a, "0.75")
    await _weight_row(db, a, datetime.now(UTC), 0.75)
    stats = await pair.check(retry + 601)
    assert stats[a]["baseline_weight"] == 0.75 and stats[b]["baseline_weight"] is None

    # round robin: both rotate from 1
    counters = [[(await store.read(names, retry, round_robin=True)).rr_counter for _ in range(3)]
                for store in (pair.redis, pair.postgres)]
    assert counters == [[1, 2, 3], [1, 2, 3]]

    # reset: back to the priors (baselines stay)
    await pair.both("reset", [a])
    stats = await pair.check(retry + 602, {a: "closed"})
    assert stats[a]["samples"] == 0 and stats[b]["samples"] > 0 and stats[a]["baseline_weight"] == 0.75


async def _weight_row(db: Database, provider: str, window_end: datetime, weight: float | None,
                      window_seconds: int = 3600) -> None:
    async with db.session() as session:
        session.add(ProviderWeight(provider=provider, window_end=window_end, window_seconds=window_seconds,
                                   samples=10, error_rate=0.0, weight=weight))
        await session.commit()


# -- Postgres-specific: concurrency, expiry, baselines -----------------------------------------

async def test_50_concurrent_records_from_two_instances_lose_no_update(db: Database, names: list[str]) -> None:
    a = names[0]
    one, two = pg_store(db, names, "one"), pg_store(db, names, "two")
    kinds = [OK] * 30 + [FAIL] * 2 + [RATE] * 8 + [CLIENT] * 10
    stores = [one if i % 2 else two for i in range(len(kinds))]
    for store in stores:
        store.start(a)
    await asyncio.gather(*(store.record(Outcome(a, kind, 0.5, T0, input_tokens=10, output_tokens=20))
                           for store, kind in zip(stores, kinds)))
    state = (await one.read_details([a], T0)).states[a]
    details = state.details
    assert details is not None
    assert (details["n"], details["ok"], details["ko"], details["rlc"], details["ce"]) == ("50", "30", "2", "8", "10")
    assert (details["ti"], details["to"]) == ("500", "1000")
    assert state.successes == pytest.approx(30.0) and state.failures == pytest.approx(2.0)
    assert one.local_in_flight(a) == 0 and two.local_in_flight(a) == 0


async def test_exactly_one_probe_across_concurrent_claimers(db: Database, names: list[str]) -> None:
    a = names[0]
    config = DWAConfig(failure_threshold=1)
    stores = [pg_store(db, names, f"i{i}", config) for i in range(4)]
    assert await stores[0].claim_probe(a, T0)  # never recorded: closed, nothing to claim
    await record(stores[0], a, FAIL, T0)
    now = T0 + config.cooldown_s + 0.1
    assert not await stores[1].claim_probe(a, T0 + 1)  # still open
    claims = await asyncio.gather(*(store.claim_probe(a, now) for store in stores * 3))
    assert sorted(claims) == [False] * 11 + [True]
    assert await stores[2].claim_probe(a, now + config.probe_timeout_s + 0.1)  # an abandoned claim expires


async def test_round_robin_rotates_exactly_across_two_instances(db: Database, names: list[str]) -> None:
    routers = [Router(pg_store(db, names, instance), strategy=RoutingStrategy.round_robin)
               for instance in ("one", "two")]
    picks = [await routers[i % 3 % 2].pick(names, T0 + i) for i in range(6)]
    assert [d.provider for d in picks if d] == names * 3
    counters = await asyncio.gather(*(routers[i % 2].store.read(names, T0, round_robin=True) for i in range(20)))
    assert sorted(s.rr_counter or 0 for s in counters) == list(range(7, 27))  # each read one step, none lost


async def test_the_baseline_is_the_latest_fresh_weight_row(db: Database, names: list[str]) -> None:
    a, b = names
    store = pg_store(db, names)
    now = datetime.now(UTC)
    stale = now - timedelta(hours=BASELINE_TTL_WINDOWS + 1)
    await _weight_row(db, a, stale - timedelta(hours=1), 0.2)
    await _weight_row(db, a, now - timedelta(minutes=2), 0.6)
    await _weight_row(db, b, stale, 0.9)  # the cron job stopped hours ago: no baseline
    states = (await store.read(names, T0)).states
    assert states[a].baseline == 0.6 and states[b].baseline is None
    await _weight_row(db, a, now - timedelta(minutes=1), None)  # too few samples this window
    assert (await store.read(names, T0)).states[a].baseline is None


async def test_state_unused_for_the_ttl_reads_as_the_priors_and_restarts(db: Database, names: list[str]) -> None:
    a = names[0]
    store = pg_store(db, names)
    await record(store, a, FAIL, T0, error="timeout")
    await record(store, a, OK, T0)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE dwa_provider_state SET updated_at = now() - make_interval(secs => :age) "
                                "WHERE provider = :name"), {"age": CONFIG.state_ttl_s + 60, "name": a})
    state = (await store.read([a], T0)).states[a]
    assert (state.successes, state.failures, state.latency_weight) == (0, 0, 0)
    await record(store, a, OK, T0 + 1)
    details = (await store.read_details([a], T0 + 1)).states[a].details
    assert details is not None and (details["n"], details["ko"]) == ("1", "0")


async def test_reset_restores_the_priors_and_scripts_is_empty(db: Database, names: list[str]) -> None:
    a, b = names
    store = pg_store(db, names, config=DWAConfig(failure_threshold=1))
    await record(store, a, FAIL, T0)
    await record(store, b, OK, T0, latency=0.3)
    assert (await store.read([a], T0)).states[a].tripped
    await store.reset([a])
    states = (await store.read(names, T0)).states
    assert (states[a].successes, states[a].failures, states[a].tripped) == (0, 0, False)
    assert states[b].successes == pytest.approx(1.0) and not math.isnan(states[b].latency_norm)
    assert dict(store.scripts) == {} and (await store.read([], T0)).states == {}
