"""The Redis state store and its Lua, against the session's real Redis."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from core.dwa import DWAConfig, Outcome, OutcomeKind, ProviderProfile, RedisDWAStore, baseline_key
from core.dwa.breaker import CircuitState, circuit_state
from core.dwa.store import state_key
from core.kv import KV

T0 = 1_700_000_000.0
OK, FAIL, RATE, CLIENT = OutcomeKind.SUCCESS, OutcomeKind.FAILURE, OutcomeKind.RATE_LIMITED, OutcomeKind.CLIENT_ERROR


@pytest.fixture
def ns() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def make_store(kv: KV, ns: str, instance: str | None = None, **config) -> RedisDWAStore:
    profiles = [ProviderProfile("a", priority=1, input_price_per_1k=0.001, output_price_per_1k=0.002),
                ProviderProfile("b", priority=2)]
    return RedisDWAStore(kv, profiles, DWAConfig(**config), namespace=ns, instance_id=instance)


async def record(store: RedisDWAStore, name: str, kind: OutcomeKind, now: float, latency: float = 1.0,
                 **extra) -> None:
    store.start(name)
    await store.record(Outcome(name, kind, latency, now, **extra))


async def test_read_of_a_provider_never_seen_is_the_prior(kv: KV, ns: str) -> None:
    store = make_store(kv, ns)
    snap = await store.read(["a", "b"], T0)
    a = snap.states["a"]
    assert (a.successes, a.failures, a.latency_weight, a.tripped, a.in_flight) == (0, 0, 0, False, 0)
    assert snap.order == ("a", "b") and snap.rr_counter is None


async def test_an_outcome_round_trips_and_decays_with_time(kv: KV, ns: str) -> None:
    store = make_store(kv, ns)
    await record(store, "a", OK, T0, latency=2.0, input_tokens=1000, output_tokens=160)
    snap = await store.read(["a"], T0)
    a = snap.states["a"]
    assert a.successes == pytest.approx(1.0)
    assert a.latency_weight == pytest.approx(1.0)
    assert a.latency_norm == pytest.approx(2.0 / (160 + DWAConfig().ttft_tokens))
    later = (await store.read(["a"], T0 + DWAConfig().availability_half_life_s)).states["a"]
    assert later.successes == pytest.approx(0.5)
    assert later.latency_norm == pytest.approx(a.latency_norm)  # a mean does not decay, its weight does
    details = (await store.read_details(["a"], T0)).states["a"].details
    assert details is not None
    assert float(details["c"]) == pytest.approx((1000 * 0.001 + 160 * 0.002) / 1000)
    assert (details["ti"], details["to"], details["n"], details["ok"]) == ("1000", "160", "1", "1")


async def test_an_outcome_out_of_order_is_not_decayed_twice(kv: KV, ns: str) -> None:
    store = make_store(kv, ns)
    await record(store, "a", OK, T0 + 10)
    await record(store, "a", FAIL, T0)  # another instance finished earlier, recorded later
    a = (await store.read(["a"], T0 + 10)).states["a"]
    assert a.successes == pytest.approx(1.0)
    assert a.failures == pytest.approx(1.0)


async def test_one_read_is_one_round_trip_with_everything_folded_in(kv: KV, ns: str) -> None:
    store = make_store(kv, ns)
    commands = store.read_commands(["a", "b"], round_robin=True)
    assert len(commands) == 2 * 2 + 3  # per provider HMGET + HGETALL, baselines, INCR + EXPIRE
    await kv.execute("HSET", baseline_key(ns), "a", "0.25")
    snap = store.parse(["a", "b"], await kv.pipeline(commands), T0, round_robin=True)
    assert snap.states["a"].baseline == 0.25 and snap.states["b"].baseline is None
    assert snap.rr_counter == 1


async def test_100_concurrent_outcomes_lose_no_update(kv: KV, ns: str) -> None:
    store = make_store(kv, ns)
    kinds = [OK] * 70 + [FAIL] * 20 + [CLIENT] * 10
    for _ in kinds:
        store.start("a")
    await asyncio.gather(*(store.record(Outcome("a", kind, 0.5, T0, input_tokens=10, output_tokens=20))
                           for kind in kinds))
    details = (await store.read_details(["a"], T0)).states["a"].details
    assert details is not None
    assert (details["n"], details["ok"], details["ko"], details["ce"]) == ("100", "70", "20", "10")
    assert details["ti"] == "1000" and details["to"] == "2000"
    assert store.local_in_flight("a") == 0


async def test_the_breaker_opens_then_half_opens_then_closes(kv: KV, ns: str) -> None:
    store = make_store(kv, ns, failure_threshold=3, cooldown_s=5.0, cooldown_max_s=12.0)
    for i in range(2):
        await record(store, "a", FAIL, T0 + i, error="http_503")
    assert circuit_state((await store.read(["a"], T0 + 2)).states["a"], T0 + 2) is CircuitState.CLOSED
    await record(store, "a", FAIL, T0 + 2, error="timeout")
    a = (await store.read(["a"], T0 + 3)).states["a"]
    assert circuit_state(a, T0 + 3) is CircuitState.OPEN
    assert a.open_until == pytest.approx(T0 + 2 + 5.0)
    assert circuit_state(a, T0 + 8) is CircuitState.HALF_OPEN

    # the probe fails: open again, for twice as long; then capped
    assert await store.claim_probe("a", T0 + 8)
    await record(store, "a", FAIL, T0 + 9)
    a = (await store.read(["a"], T0 + 9)).states["a"]
    assert circuit_state(a, T0 + 9) is CircuitState.OPEN and a.open_until == pytest.approx(T0 + 19)
    assert await store.claim_probe("a", T0 + 19)
    await record(store, "a", FAIL, T0 + 20)
    a = (await store.read(["a"], T0 + 20)).states["a"]
    assert a.open_until == pytest.approx(T0 + 32)  # 20 s, capped at 12

    # the probe succeeds: closed, and the next trip starts from the short cooldown again
    assert await store.claim_probe("a", T0 + 32)
    await record(store, "a", OK, T0 + 33)
    a = (await store.read(["a"], T0 + 33)).states["a"]
    assert circuit_state(a, T0 + 33) is CircuitState.CLOSED
    details = (await store.read_details(["a"], T0 + 33)).states["a"].details
    assert details is not None and details["cf"] == "0" and details["tr"] == "0"


async def test_failures_while_open_do_not_sink_availability(kv: KV, ns: str) -> None:
    store = make_store(kv, ns, failure_threshold=2)
    for i in range(2):
        await record(store, "a", FAIL, T0)
    for i in range(20):  # calls already in flight when it opened, then failed probes
        await record(store, "a", FAIL, T0 + 1)
    a = (await store.read(["a"], T0 + 1)).states["a"]
    assert a.failures == pytest.approx(2.0, abs=0.05)


async def test_exactly_one_probe_across_instances(kv: KV, ns: str) -> None:
    one, two = make_store(kv, ns, "one", failure_threshold=1), make_store(kv, ns, "two", failure_threshold=1)
    await record(one, "a", FAIL, T0)
    now = T0 + DWAConfig().cooldown_s + 0.1
    claims = await asyncio.gather(*(store.claim_probe("a", now) for store in (one, two, one, two)))
    assert sorted(claims) == [False, False, False, True]
    # the claim expires if the prober never reports
    assert await two.claim_probe("a", now + DWAConfig().probe_timeout_s + 0.1)


async def test_a_429_cools_down_until_retry_after_without_counting_as_an_outage(kv: KV, ns: str) -> None:
    store = make_store(kv, ns, failure_threshold=2)
    for i in range(5):
        await record(store, "a", RATE, T0 + i, latency=0.05, error="http_429", retry_after_s=30.0)
    a = (await store.read(["a"], T0 + 5)).states["a"]
    assert a.rate_limited_until == pytest.approx(T0 + 4 + 30.0)
    assert not a.tripped and a.failures == 0
    assert circuit_state(a, T0 + 5) is CircuitState.CLOSED
    # without Retry-After: the default cooldown
    await record(store, "b", RATE, T0, latency=0.05)
    b = (await store.read(["b"], T0)).states["b"]
    assert b.rate_limited_until == pytest.approx(T0 + DWAConfig().rate_limit_default_s)


async def test_a_client_error_does_not_open_the_circuit(kv: KV, ns: str) -> None:
    store = make_store(kv, ns, failure_threshold=2)
    for i in range(10):
        await record(store, "a", CLIENT, T0 + i, error="http_400")
    a = (await store.read_details(["a"], T0 + 10)).states["a"]
    assert not a.tripped and a.failures == 0 and a.consecutive_failures == 0
    assert a.details is not None and a.details["ec"] == "http_400"


async def test_in_flight_is_exact_locally_and_shared_approximately(kv: KV, ns: str) -> None:
    one, two = make_store(kv, ns, "one"), make_store(kv, ns, "two")
    for _ in range(3):
        one.start("a")
    two.start("a")
    assert (await one.read(["a"], T0)).states["a"].in_flight == 3  # two has not reported yet
    two.start("a")
    await two.record(Outcome("a", OK, 1.0, T0))  # two: 1 left, reported with its outcome
    assert (await one.read(["a"], T0 + 1)).states["a"].in_flight == 3 + 1
    assert (await two.read(["a"], T0 + 1)).states["a"].in_flight == 1  # its own count, exact
    stale = T0 + DWAConfig().in_flight_max_age_s + 5
    assert (await one.read(["a"], stale)).states["a"].in_flight == 3  # old reports are ignored


async def test_reset_restores_the_priors(kv: KV, ns: str) -> None:
    store = make_store(kv, ns, failure_threshold=1)
    await record(store, "a", FAIL, T0)
    await record(store, "b", OK, T0)
    assert (await store.read(["a"], T0)).states["a"].tripped
    await store.reset(["a"])
    a, b = (await store.read(["a", "b"], T0)).states.values()
    assert (a.successes, a.failures, a.tripped) == (0, 0, False)
    assert b.successes == pytest.approx(1.0)  # others untouched


async def test_the_script_is_resent_after_a_script_flush(kv: KV, ns: str) -> None:
    store = make_store(kv, ns)
    await kv.execute("SCRIPT", "FLUSH")
    await record(store, "a", OK, T0)
    await kv.execute("SCRIPT", "FLUSH")
    assert await store.claim_probe("a", T0)  # closed: nothing to claim, allowed
    assert await kv.execute("HGET", state_key("a", ns), "ok") == "1"


async def test_the_python_update_matches_the_lua_field_for_field(kv: KV, ns: str) -> None:
    """update.py (for a store without Redis) and the outcome script agree exactly."""
    from core.dwa.update import apply_outcome

    config = DWAConfig(failure_threshold=3, cooldown_s=2.0, cooldown_max_s=5.0)
    store = make_store(kv, ns, failure_threshold=3, cooldown_s=2.0, cooldown_max_s=5.0)
    rng = random.Random(7)
    python: dict[str, str] = {}
    now = T0
    kinds = [OK] * 6 + [FAIL] * 3 + [RATE, CLIENT, OutcomeKind.CANCELLED]
    for _ in range(300):
        now += rng.choice([-3.0, 0.0, 0.01, 0.5, 2.0, 9.0])  # out of order sometimes
        kind = rng.choice(kinds)
        outcome = Outcome("a", kind, rng.uniform(0.0, 4.0), now, input_tokens=rng.randint(0, 900),
                          output_tokens=rng.choice([0, 1, 50, 400]),
                          ttft_s=rng.choice([None, rng.uniform(0.05, 1.0)]),
                          error=None if kind is OK else rng.choice(["timeout", "http_503"]),
                          retry_after_s=rng.choice([None, 0.0, 3.0, 30.0]), fresh=rng.random() < 0.1,
                          load=rng.randint(0, 40))
        store.start("a")
        if kind is OutcomeKind.CANCELLED:
            store.finish("a")  # when it was cancelled (Orchestrator._attempt)
        await store.record(outcome)
        python = apply_outcome(python, outcome, store.profile("a").cost(outcome.input_tokens,
                                                                        outcome.output_tokens), config)
        if rng.random() < 0.05 and await store.claim_probe("a", now):  # a probe claim now and then
            python = dict(python, pu=(await kv.execute("HGET", state_key("a", ns), "pu")) or "0")
        assert await kv.hgetall(state_key("a", ns)) == python
    assert python["ho"] in ("0", "1") and int(python["n"]) == 300
